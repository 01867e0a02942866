//! Persistent programs from the CLI: `program persist|unpersist` and `aleph
//! unpersist` against a real CCN in process (the copy they post and the FORGET
//! of the old one), and `program status` / `node list` against a stand-in
//! scheduler serving the read API's wire types.

mod common;

use aleph_protocol::scheduler::{
    AllocatedNode, AllocationEntry, NodeEntry, NodeList, Pagination, VmEntry, VmPage,
};
use axum::Json;
use axum::extract::{Path as UrlPath, Query};
use axum::http::StatusCode;
use axum::routing::get;
use common::{Network, file_bytes, key_and_address, stderr};
use serde_json::{Value, json};
use std::collections::HashMap;

const HELLO: &str = "from fastapi import FastAPI\n\napp = FastAPI()\n\n\n@app.get(\"/\")\nasync def root():\n    return {\"message\": \"Hello World\"}\n";

/// Uploads a program (`extra` flags appended) with a stand-in runtime; its JSON.
async fn upload(net: &Network, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime.squashfs");
    std::fs::write(&runtime, file_bytes(4096, &format!("runtime {extra:?}"))).unwrap();
    let stored = net
        .funded_json(&["file", "upload", runtime.to_str().unwrap()])
        .await;
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("main.py"), HELLO).unwrap();
    let mut args = vec![
        "program",
        "upload",
        app.to_str().unwrap(),
        "main:app",
        "--runtime",
        stored["item_hash"].as_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    net.funded_json(&args).await
}

async fn message(net: &Network, hash: &str) -> Value {
    net.json(&["message", "get", hash]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn persist_and_unpersist_repost_the_program_and_forget_the_old_one() {
    let net = Network::start().await;
    let uploaded = upload(&net, &["--vcpus", "2", "--memory", "512"]).await;
    let first = uploaded["item_hash"].as_str().unwrap().to_owned();
    assert_eq!(uploaded["persistent"], false);
    assert_eq!(uploaded["allocation_url"], Value::Null);
    let original = message(&net, &first).await["message"]["content"].clone();

    // Status of an on-demand program needs no scheduler.
    let status = net.json(&["program", "status", &first]).await;
    assert_eq!(status["status"], "on-demand");
    assert_eq!(status["persistent"], false);

    let persisted = net
        .funded_json(&[
            "--scheduler",
            "http://127.0.0.1:4999",
            "program",
            "persist",
            &first,
        ])
        .await;
    assert_eq!(persisted["old_hash"], first);
    assert_eq!(persisted["persistent"], true);
    let second = persisted["item_hash"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(
        persisted["allocation_url"],
        format!("http://127.0.0.1:4999/api/v0/allocation/{second}")
    );
    assert!(
        persisted["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/vm/{second}/"))
    );

    // The copy runs the same code, runtime and resources; only the flag and time differ.
    let copy = message(&net, &second).await;
    assert_eq!(copy["status"], "processed");
    let content = &copy["message"]["content"];
    assert_eq!(content["on"], json!({"http": true, "persistent": true}));
    for same in [
        "type",
        "code",
        "runtime",
        "resources",
        "environment",
        "payment",
        "volumes",
        "metadata",
        "address",
    ] {
        assert_eq!(content[same], original[same], "{same}");
    }
    assert_ne!(content["time"], original["time"]);
    let old = message(&net, &first).await;
    assert_eq!(old["status"], "forgotten", "{old}");
    assert_eq!(
        old["forgotten_by"],
        json!([persisted["forget_hash"]]),
        "{old}"
    );

    // Already persistent: refused, nothing posted.
    let again = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "program",
            "persist",
            &second,
        ])
        .await;
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already persistent"),
        "{}",
        stderr(&again)
    );
    // The old one is gone.
    let gone = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "program",
            "unpersist",
            &first,
        ])
        .await;
    assert!(!gone.status.success());
    assert!(stderr(&gone).contains("forgotten"), "{}", stderr(&gone));
    // Someone else's program.
    let (other_key, _) = key_and_address("aleph-cli-test-other");
    let theirs = net
        .aleph(&["--private-key", &other_key, "unpersist", &second])
        .await;
    assert!(!theirs.status.success());
    assert!(
        stderr(&theirs).contains("belongs to"),
        "{}",
        stderr(&theirs)
    );
    // Not a program, and not a message at all.
    let code_ref = uploaded["code_ref"].as_str().unwrap();
    let store = net
        .aleph(&["--private-key", &net.funded_key, "unpersist", code_ref])
        .await;
    assert!(
        stderr(&store).contains("not a PROGRAM"),
        "{}",
        stderr(&store)
    );
    let unknown = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "unpersist",
            &"cd".repeat(32),
        ])
        .await;
    assert!(
        stderr(&unknown).contains("does not know"),
        "{}",
        stderr(&unknown)
    );

    // The short form stops it: a copy on demand, the persistent one forgotten.
    let unpersisted = net.funded_json(&["unpersist", &second]).await;
    assert_eq!(unpersisted["old_hash"], second);
    assert_eq!(unpersisted["persistent"], false);
    let third = unpersisted["item_hash"].as_str().unwrap();
    assert_eq!(
        message(&net, third).await["message"]["content"]["on"],
        json!({"http": true, "persistent": false})
    );
    assert_eq!(message(&net, &second).await["status"], "forgotten");
    let already = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "program",
            "unpersist",
            third,
        ])
        .await;
    assert!(
        stderr(&already).contains("already on demand"),
        "{}",
        stderr(&already)
    );

    net.ccn.shutdown().await;
}

/// A scheduler's read API with one allocated VM and two nodes.
async fn stand_in_scheduler(vm_hash: String) -> String {
    let node = |hash: &str, port: u16, heartbeat: Option<&str>, vms: Vec<String>| NodeEntry {
        hash: hash.into(),
        name: format!("crn-{port}"),
        address: format!("http://127.0.0.1:{port}"),
        owner: "0xowner".into(),
        status: if heartbeat.is_some() {
            "active"
        } else {
            "waiting"
        }
        .into(),
        score: 1.0,
        last_heartbeat: heartbeat.map(str::to_owned),
        resources: None,
        vms,
    };
    let nodes = NodeList {
        resource_nodes: vec![
            node(
                "n1",
                4021,
                Some("2026-11-23T11:00:00Z"),
                vec![vm_hash.clone()],
            ),
            node("n2", 4022, None, Vec::new()),
        ],
    };
    let entry = VmEntry {
        vm_hash: vm_hash.clone(),
        vm_type: "persistent_program".into(),
        allocated_node: Some("n1".into()),
        allocated_url: Some("http://127.0.0.1:4021".into()),
        status: "dispatched".into(),
        owner: "0xowner".into(),
        since: Some("2026-11-23T11:00:02Z".into()),
        reason: None,
    };
    let known = vm_hash.clone();
    let app = axum::Router::new()
        .route("/api/v1/nodes", get(move || async move { Json(nodes) }))
        .route(
            "/api/v1/vms",
            get(
                move |Query(query): Query<HashMap<String, String>>| async move {
                    let items: Vec<VmEntry> = [entry]
                        .into_iter()
                        .filter(|e| query.get("vm_hash").is_none_or(|h| *h == e.vm_hash))
                        .collect();
                    let total = items.len() as u64;
                    Json(VmPage {
                        items,
                        pagination: Pagination {
                            page: 1,
                            per_page: 20,
                            total,
                        },
                    })
                },
            ),
        )
        .route(
            "/api/v0/allocation/{hash}",
            get(move |UrlPath(hash): UrlPath<String>| async move {
                if hash != known {
                    return Err((
                        StatusCode::NOT_FOUND,
                        Json(json!({"error": "not allocated"})),
                    ));
                }
                Ok(Json(AllocationEntry {
                    vm_hash: hash,
                    vm_type: "persistent_program".into(),
                    node: AllocatedNode {
                        node_id: "n1".into(),
                        url: "http://127.0.0.1:4021".into(),
                    },
                    allocation_version: 3,
                    since: "2026-11-23T11:00:02Z".into(),
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_node_list_read_the_scheduler() {
    let net = Network::start().await;
    let persistent = upload(&net, &["--persistent"]).await;
    let hash = persistent["item_hash"].as_str().unwrap().to_owned();
    assert_eq!(persistent["persistent"], true);
    assert_eq!(
        message(&net, &hash).await["message"]["content"]["on"],
        json!({"http": true, "persistent": true})
    );

    // No scheduler there: the error says how to point at one.
    let closed = format!("http://127.0.0.1:{}", common_free_port());
    let unreachable = net
        .aleph(&["--scheduler", &closed, "program", "status", &hash])
        .await;
    assert!(!unreachable.status.success());
    assert!(
        stderr(&unreachable).contains("cannot reach the scheduler")
            && stderr(&unreachable).contains("--scheduler"),
        "{}",
        stderr(&unreachable)
    );

    let scheduler = stand_in_scheduler(hash.clone()).await;
    let status = net
        .json(&["--scheduler", &scheduler, "program", "status", &hash])
        .await;
    assert_eq!(status["status"], "dispatched");
    assert_eq!(
        status["node"],
        json!({"hash": "n1", "url": "http://127.0.0.1:4021"})
    );
    assert_eq!(status["url"], format!("http://127.0.0.1:4021/vm/{hash}/"));
    assert_eq!(status["since"], "2026-11-23T11:00:02Z");
    assert_eq!(status["allocation_version"], 3);
    let text = net
        .aleph(&["--scheduler", &scheduler, "program", "status", &hash])
        .await;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("dispatched on node n1 (http://127.0.0.1:4021) since 2026-11-23T11:00:02Z"),
        "{text}"
    );

    // A persistent program the scheduler has not seen yet.
    let other = upload(&net, &["--persistent", "--name", "other"]).await;
    let unseen = net
        .json(&[
            "--scheduler",
            &scheduler,
            "program",
            "status",
            other["item_hash"].as_str().unwrap(),
        ])
        .await;
    assert_eq!(unseen["status"], "unknown");
    assert_eq!(unseen["node"], Value::Null);

    let nodes = net.json(&["--scheduler", &scheduler, "node", "list"]).await;
    assert_eq!(nodes["resource_nodes"][0]["hash"], "n1");
    assert_eq!(nodes["resource_nodes"][0]["vms"], json!([hash]));
    let table = net
        .aleph(&["--scheduler", &scheduler, "node", "list"])
        .await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("HASH"), "{table}");
    assert!(
        lines[1].contains("http://127.0.0.1:4021") && lines[1].contains("active"),
        "{table}"
    );
    assert!(lines[2].contains("never"), "{table}");

    net.ccn.shutdown().await;
}

fn common_free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Against the real scheduler in process, following the CCN: a node registered
/// by a `corechan-operation` POST but never heard from is listed as waiting, and
/// a persistent program that no active node can take is unschedulable, with a reason.
#[tokio::test(flavor = "multi_thread")]
async fn the_real_scheduler_lists_a_silent_node_and_says_why_nothing_is_placed() {
    use aleph_protocol::scheduler::{CORECHAN_OPERATION, CREATE_RESOURCE_NODE};
    use aleph_protocol::signing::Signer;
    use aleph_types::message::MessageType;
    use std::time::{Duration, Instant};

    let net = Network::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = aleph_scheduler::SchedulerConfig::new(net.ccn.url(), data.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.poll_interval = Duration::from_millis(200);
    let scheduler = aleph_scheduler::start(config).await.unwrap();
    let scheduler_url = scheduler.url();

    let operator = Signer::from_hex(&net.funded_key).unwrap();
    let registration = operator
        .sign(
            MessageType::Post,
            json!({
                "type": CORECHAN_OPERATION,
                "content": {
                    "action": CREATE_RESOURCE_NODE,
                    "tags": [],
                    "details": {"name": "silent", "address": "http://127.0.0.1:9"},
                },
            }),
            None,
        )
        .unwrap();
    let posted = reqwest::Client::new()
        .post(format!("{}/api/v0/messages", net.ccn.url()))
        .json(&json!({"sync": true, "message": registration}))
        .send()
        .await
        .unwrap();
    assert!(
        posted.status().is_success(),
        "{}",
        posted.text().await.unwrap()
    );
    let node_hash = registration.item_hash.to_string();

    let deadline = Instant::now() + Duration::from_secs(30);
    let nodes = loop {
        let nodes = net
            .json(&["--scheduler", &scheduler_url, "node", "list"])
            .await;
        if nodes["resource_nodes"]
            .as_array()
            .is_some_and(|n| !n.is_empty())
        {
            break nodes;
        }
        assert!(Instant::now() < deadline, "no node listed: {nodes}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let node = &nodes["resource_nodes"][0];
    assert_eq!(node["hash"], node_hash);
    assert_eq!(node["address"], "http://127.0.0.1:9");
    assert_eq!(node["owner"], net.funded_address);
    assert_eq!(node["status"], "waiting");
    let table = net
        .aleph(&["--scheduler", &scheduler_url, "node", "list"])
        .await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains(&node_hash) && table.contains("waiting") && table.contains("never"),
        "{table}"
    );

    let uploaded = upload(&net, &["--persistent"]).await;
    let hash = uploaded["item_hash"].as_str().unwrap().to_owned();
    let status = loop {
        let status = net
            .json(&["--scheduler", &scheduler_url, "program", "status", &hash])
            .await;
        if status["status"] == "unschedulable" {
            break status;
        }
        assert!(Instant::now() < deadline, "never unschedulable: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["node"], Value::Null);
    assert!(
        status["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{status}"
    );
    let text = net
        .aleph(&["--scheduler", &scheduler_url, "program", "status", &hash])
        .await;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("cannot be placed"), "{text}");

    scheduler.shutdown().await;
    net.ccn.shutdown().await;
}
