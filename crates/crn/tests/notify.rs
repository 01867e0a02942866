//! `POST /control/allocation/notify` against a real CCN in process (signed INSTANCE and
//! PROGRAM messages) and a CRN that boots nothing (its images do not exist, and no
//! instance is ever allocated to run): the checks of the body and the message, the
//! wait for the allocation, and the answer of a node that may not run what it is given.
//! Needs neither root nor QEMU.

mod common;

use aleph_crn::execution::prepare::BootImages;
use aleph_crn::{CrnConfig, CrnHandle};
use aleph_protocol::scheduler::Allocation;
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use common::deploy::{Network, init_logs, program_content};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// This node's hash, and another node's.
fn node_hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// An INSTANCE paid in credits, pinned to `node` (as the official clients post it).
fn pinned_instance(rootfs: &str, node: &str) -> Value {
    json!({
        "allow_amend": false,
        "resources": {"vcpus": 1, "memory": 512, "seconds": 30},
        "environment": {"internet": true, "aleph_api": true, "hypervisor": "qemu"},
        "rootfs": {"parent": {"ref": rootfs, "use_latest": true},
                   "persistence": "host", "size_mib": 2048},
        "volumes": [],
        "payment": {"type": "credit"},
        "requirements": {"node": {"node_hash": node}},
    })
}

/// A CRN on `ccn_url` known as `node_hash`, waiting `wait_seconds` for allocations;
/// its heartbeats go nowhere, so it holds no lease.
async fn start_bare(data_dir: &Path, ccn_url: String, node_hash: String) -> CrnHandle {
    let (_, node_key) = Signer::generate();
    aleph_crn::start_with_images(
        CrnConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.to_path_buf(),
            ccn_url,
            watch_updates: false,
            scheduler_url: Some("http://127.0.0.1:9".into()),
            node_hash: Some(node_hash),
            node_key: Some(node_key),
            allocation_wait_seconds: 1,
            ..CrnConfig::default()
        },
        BootImages {
            kernel: "/nonexistent/vmlinuz".into(),
            initramfs: "/nonexistent/initramfs".into(),
        },
    )
    .await
    .expect("the CRN starts")
}

/// Posts `body` to the route; the status and the JSON answer.
async fn notify(crn: &CrnHandle, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/control/allocation/notify", crn.url()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("*"),
        "browsers may call it"
    );
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, body)
}

async fn notify_instance(crn: &CrnHandle, hash: &str) -> (u16, Value) {
    notify(crn, &json!({"instance": hash}).to_string()).await
}

fn error_of(answer: &Value) -> &str {
    answer["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_checked_and_wait_for_the_allocation() {
    init_logs();
    let network = Network::start().await;
    let here = node_hash(1);
    let rootfs = network.store(b"not really a disk", None).await;
    let code = network.store(b"not really a zip", None).await;
    let program = network
        .post(MessageType::Program, program_content(&rootfs, &code))
        .await;
    let ours = network
        .post(MessageType::Instance, pinned_instance(&rootfs, &here))
        .await;
    let theirs = network
        .post(
            MessageType::Instance,
            pinned_instance(&rootfs, &node_hash(2)),
        )
        .await;

    let work = tempfile::tempdir().unwrap();
    let crn = start_bare(work.path(), network.ccn.url(), here.clone()).await;

    // 400: bodies that are not {"instance": HASH}.
    for bad in [
        "",
        "not json",
        "{}",
        r#"{"instance": 7}"#,
        r#"{"instance": "abc"}"#,
    ] {
        let (status, answer) = notify(&crn, bad).await;
        assert_eq!(status, 400, "{bad:?}: {answer}");
        assert!(error_of(&answer).contains("bad notification"), "{answer}");
    }

    // 404: no such message on the CCN.
    let (status, answer) = notify_instance(&crn, &"cd".repeat(32)).await;
    assert_eq!(status, 404, "{answer}");
    assert!(error_of(&answer).contains("no message"), "{answer}");

    // 400: a PROGRAM, and an INSTANCE pinned to another node.
    let (status, answer) = notify_instance(&crn, &program).await;
    assert_eq!(status, 400, "{answer}");
    assert!(error_of(&answer).contains("not an INSTANCE"), "{answer}");
    let (status, answer) = notify_instance(&crn, &theirs).await;
    assert_eq!(status, 400, "{answer}");
    assert!(error_of(&answer).contains("wrong node"), "{answer}");

    // 503 after the wait: pinned here, but the scheduler has not allocated it.
    let asked = Instant::now();
    let (status, answer) = notify_instance(&crn, &ours.to_uppercase()).await;
    assert_eq!(status, 503, "{answer}");
    assert!(asked.elapsed() >= Duration::from_secs(1), "it waited");
    assert!(error_of(&answer).contains("not allocated"), "{answer}");
    assert!(error_of(&answer).contains("ask again"), "{answer}");
    assert_eq!(answer["success"], false, "{answer}");
    assert_eq!(answer["failing"], json!([ours]), "{answer}");
    assert!(answer["errors"][&ours].is_string(), "{answer}");

    // Allocated, but this node holds no lease: it may not run it, and says so.
    crn.persistent()
        .apply(Allocation {
            instances: vec![ours.clone()],
            allocation_version: Some(1),
            ..Allocation::default()
        })
        .await
        .unwrap();
    let (status, answer) = notify_instance(&crn, &ours).await;
    assert_eq!(status, 503, "{answer}");
    assert!(error_of(&answer).contains("may not run"), "{answer}");
    assert_eq!(answer["failing"], json!([ours]), "{answer}");
    assert!(
        !crn.persistent().instances().is_running(&ours),
        "nothing was started by the notification"
    );

    // A browser's preflight.
    let preflight = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/control/allocation/notify", crn.url()),
        )
        .header("origin", "https://console.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    crn.shutdown().await;
}
