//! `aleph instance` against a real CCN in process: the INSTANCE it posts (the
//! public network's shape, accepted by the CCN), the root filesystem found by
//! name in the `vm-images` aggregate, key files refused before anything is
//! posted, volumes in the CRN's shape (and bad volume specs refused before
//! posting), list, delete, and a node pinned by its registration.
//!
//! What needs a CRN running instances (the wait in `create`, `ssh`, `logs`,
//! `stop`) is checked against stand-ins for the scheduler's read API and the
//! CRN's HTTP API: that tests this client's side only (which URLs it reads,
//! what it signs, what it prints), not a CRN. One test runs the real scheduler
//! to check that `create` stops waiting when the scheduler cannot place it.

mod common;

use aleph_protocol::auth::operator;
use aleph_protocol::scheduler::{
    CORECHAN_OPERATION, CREATE_RESOURCE_NODE, Pagination, VmEntry, VmPage,
};
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use axum::Json;
use axum::extract::{Path as UrlPath, Query};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{get, post};
use common::{Network, file_bytes, key_and_address, stderr};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where nothing listens: commands that must not depend on a scheduler get it.
const NO_SCHEDULER: &str = "http://127.0.0.1:1";

/// An SSH key pair made by the real `ssh-keygen`; `None` (the test skips) without it.
fn ssh_key(dir: &Path) -> Option<(PathBuf, String)> {
    let private = dir.join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "instance-test", "-f"])
        .arg(&private)
        .status();
    match made {
        Ok(status) if status.success() => {}
        other => {
            eprintln!("skipped: ssh-keygen is needed to make a key pair ({other:?})");
            return None;
        }
    }
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    Some((private, public.trim().to_owned()))
}

/// Stores a stand-in root filesystem and returns its STORE hash: the CCN only
/// needs the STORE to exist to accept an INSTANCE built on it.
async fn store_rootfs(net: &Network, seed: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rootfs.img");
    std::fs::write(&path, file_bytes(4096, seed)).unwrap();
    let stored = net
        .funded_json(&["file", "upload", path.to_str().unwrap()])
        .await;
    stored["item_hash"].as_str().unwrap().to_owned()
}

/// `aleph --ccn … --private-key FUNDED ARGS` with `HOME` set (where the
/// default key files are looked for).
async fn aleph_at_home(net: &Network, home: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_aleph"))
        .arg("--ccn")
        .arg(net.ccn.url())
        .args(["--private-key", &net.funded_key])
        .args(args)
        .env("ALEPH_CONFIG_DIR", net.config.path())
        .env("HOME", home)
        .env_remove("ALEPH_CCN")
        .env_remove("ALEPH_SCHEDULER_URL")
        .env_remove("ALEPH_IMAGES_ADDRESS")
        .output()
        .await
        .unwrap()
}

fn parsed(output: &Output) -> Value {
    assert!(output.status.success(), "failed: {}", stderr(output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

async fn message(net: &Network, hash: &str) -> Value {
    net.json(&["message", "get", hash]).await
}

/// The funded account's INSTANCE messages, by hash.
async fn instances_posted(net: &Network) -> Vec<String> {
    let page = net
        .json(&[
            "message",
            "list",
            "--addresses",
            &net.funded_address,
            "--types",
            "instance",
        ])
        .await;
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["item_hash"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_is_posted_listed_and_deleted() {
    let keys = tempfile::tempdir().unwrap();
    let Some((private, public)) = ssh_key(keys.path()) else {
        return;
    };
    let net = Network::start().await;
    let rootfs = store_rootfs(&net, "rootfs for the lifecycle").await;
    let public_file = private.with_extension("pub");

    let created = net
        .funded_json(&[
            "--scheduler",
            NO_SCHEDULER,
            "instance",
            "create",
            "--ssh-pubkey-file",
            public_file.to_str().unwrap(),
            "--rootfs",
            &rootfs,
            "--name",
            "box",
            "--vcpus",
            "2",
            "--memory",
            "4096",
            "--rootfs-size",
            "8192",
            "--no-wait",
        ])
        .await;
    assert_eq!(created["status"], "processed", "{created}");
    assert_eq!(created["rootfs"], rootfs);
    assert_eq!(created["crn_url"], Value::Null);
    assert_eq!(created["ssh"], Value::Null);
    let hash = created["item_hash"].as_str().unwrap().to_owned();

    // The INSTANCE as the CCN holds it has the public network's shape.
    let held = message(&net, &hash).await;
    assert_eq!(held["status"], "processed");
    assert_eq!(held["message"]["type"], "INSTANCE");
    let content = &held["message"]["content"];
    assert_eq!(content["address"], net.funded_address);
    assert!(content["time"].is_f64());
    assert_eq!(content["allow_amend"], false);
    assert_eq!(content["metadata"], json!({"name": "box"}));
    assert_eq!(content["authorized_keys"], json!([public]));
    assert_eq!(
        content["environment"],
        json!({"internet": true, "aleph_api": true, "hypervisor": "qemu", "reproducible": false, "shared_cache": false})
    );
    assert_eq!(
        content["resources"],
        json!({"vcpus": 2, "memory": 4096, "seconds": 30})
    );
    assert_eq!(
        content["rootfs"],
        json!({"parent": {"ref": rootfs, "use_latest": true}, "persistence": "host", "size_mib": 8192})
    );
    assert_eq!(content["volumes"], json!([]));
    // Not pinned to a node, so held: the CCN takes credit only with a node hash.
    assert_eq!(content["payment"], json!({"type": "hold"}));
    assert!(content.get("requirements").is_none_or(Value::is_null));

    // The defaults: 1 vCPU, 2 GiB, a 4 GiB root disk, named "instance".
    let plain = net
        .funded_json(&[
            "--scheduler",
            NO_SCHEDULER,
            "instance",
            "create",
            "--ssh-pubkey-file",
            public_file.to_str().unwrap(),
            "--rootfs",
            &rootfs,
            "--no-wait",
        ])
        .await;
    let plain_hash = plain["item_hash"].as_str().unwrap().to_owned();
    let plain_content = &message(&net, &plain_hash).await["message"]["content"];
    assert_eq!(
        plain_content["resources"],
        json!({"vcpus": 1, "memory": 2048, "seconds": 30})
    );
    assert_eq!(plain_content["rootfs"]["size_mib"], 4096);
    assert_eq!(plain_content["metadata"], json!({"name": "instance"}));

    let listed = net
        .funded_json(&["--scheduler", NO_SCHEDULER, "instance", "list"])
        .await;
    let mut hashes: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_hash"].as_str().unwrap())
        .collect();
    hashes.sort();
    let mut expected = vec![hash.as_str(), plain_hash.as_str()];
    expected.sort();
    assert_eq!(hashes, expected);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["item_hash"] == hash)
        .unwrap();
    assert_eq!(entry["name"], "box");
    assert_eq!(entry["vcpus"], 2);
    assert_eq!(entry["rootfs"], rootfs);
    // No scheduler to ask: where it runs is unknown, and said so.
    assert_eq!(entry["status"], "unknown");
    assert_eq!(entry["ssh"], Value::Null);
    let text = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "--scheduler",
            NO_SCHEDULER,
            "instance",
            "list",
        ])
        .await;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains(&hash) && text.contains("box"), "{text}");
    assert!(text.contains("where they run is unknown"), "{text}");

    // Someone else cannot delete it.
    let (other_key, _) = key_and_address("aleph-cli-test-other");
    let refused = net
        .aleph(&["--private-key", &other_key, "instance", "delete", &hash])
        .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("belongs to"),
        "{}",
        stderr(&refused)
    );

    let deleted = net.funded_json(&["instance", "delete", &hash]).await;
    assert_eq!(deleted["item_hash"], hash);
    let forget = deleted["forget_hash"].as_str().unwrap();
    assert_eq!(message(&net, forget).await["message"]["type"], "FORGET");
    assert_eq!(message(&net, &hash).await["status"], "forgotten");
    // The root filesystem is shared, not the instance's to forget.
    assert_eq!(message(&net, &rootfs).await["status"], "processed");
    let listed = net
        .funded_json(&["--scheduler", NO_SCHEDULER, "instance", "list"])
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["item_hash"], plain_hash);

    let again = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "instance",
            "delete",
            &hash,
        ])
        .await;
    assert!(!again.status.success());
    assert!(stderr(&again).contains("forgotten"), "{}", stderr(&again));
    // A program's hash is not an instance's.
    let not_instance = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "instance",
            "delete",
            &rootfs,
        ])
        .await;
    assert!(
        stderr(&not_instance).contains("not an INSTANCE"),
        "{}",
        stderr(&not_instance)
    );

    net.ccn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rootfs_name_resolves_through_the_vm_images_aggregate() {
    let home = tempfile::tempdir().unwrap();
    let ssh_dir = home.path().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    // The default key file: ~/.ssh/id_ed25519.pub.
    let Some((_, public)) = ssh_key(&ssh_dir) else {
        return;
    };
    let net = Network::start().await;
    let rootfs = store_rootfs(&net, "debian12 stand-in").await;
    let create = |extra: &'static [&'static str]| {
        let net = &net;
        let home = home.path().to_owned();
        async move {
            let mut args = vec![
                "--json",
                "--scheduler",
                NO_SCHEDULER,
                "instance",
                "create",
                "--images-address",
                &net.funded_address,
                "--no-wait",
            ];
            args.extend_from_slice(extra);
            aleph_at_home(net, &home, &args).await
        }
    };

    // No aggregate yet: a clear error that says how to give one, and nothing posted.
    let missing = create(&["--rootfs", "debian12"]).await;
    assert!(!missing.status.success());
    let error = stderr(&missing);
    assert!(error.contains("\"debian12\""), "{error}");
    assert!(error.contains("no \"vm-images\" aggregate"), "{error}");
    assert!(error.contains("--rootfs HASH"), "{error}");
    assert!(instances_posted(&net).await.is_empty());

    let images = json!({
        "runtimes": {},
        "rootfs": {"debian12": {"hash": rootfs, "display_name": "Debian 12 (test)"}},
        "defaults": {"rootfs": "debian12"},
    });
    net.funded_json(&["aggregate", "post", "vm-images", &images.to_string()])
        .await;

    // A name the aggregate lacks is refused with the names it has.
    let unknown = create(&["--rootfs", "ubuntu24"]).await;
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("it has: debian12"),
        "{}",
        stderr(&unknown)
    );

    // debian12 is the default; the key is the default key file's.
    let created = parsed(&create(&[]).await);
    assert_eq!(created["rootfs"], rootfs);
    let content =
        &message(&net, created["item_hash"].as_str().unwrap()).await["message"]["content"];
    assert_eq!(
        content["rootfs"]["parent"],
        json!({"ref": rootfs, "use_latest": true})
    );
    assert_eq!(content["authorized_keys"], json!([public]));

    // A root filesystem that is no STORE is the CCN's to refuse, with its code.
    let dangling = aleph_at_home(
        &net,
        home.path(),
        &[
            "--json",
            "instance",
            "create",
            "--rootfs",
            &"ab".repeat(32),
            "--no-wait",
        ],
    )
    .await;
    assert!(!dangling.status.success());
    let error: Value = serde_json::from_slice(&dangling.stdout).unwrap();
    assert_eq!(error["code"], 301, "{error}");

    net.ccn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_key_files_are_refused_before_anything_is_posted() {
    let keys = tempfile::tempdir().unwrap();
    let Some((private, _)) = ssh_key(keys.path()) else {
        return;
    };
    let net = Network::start().await;
    let rootfs = store_rootfs(&net, "rootfs for refusals").await;
    let home = tempfile::tempdir().unwrap();
    let create = |key: Option<PathBuf>| {
        let net = &net;
        let rootfs = rootfs.clone();
        let home = home.path().to_owned();
        async move {
            let mut args = vec![
                "instance".to_owned(),
                "create".to_owned(),
                "--rootfs".to_owned(),
                rootfs,
                "--no-wait".to_owned(),
            ];
            if let Some(key) = key {
                args.push("--ssh-pubkey-file".to_owned());
                args.push(key.to_str().unwrap().to_owned());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            aleph_at_home(net, &home, &args).await
        }
    };

    // The private half of a real key pair.
    let output = create(Some(private.clone())).await;
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(error.contains("is a private key"), "{error}");
    assert!(error.contains("id_ed25519.pub"), "{error}");

    let bad = keys.path().join("bad.pub");
    std::fs::write(&bad, "hello there\n").unwrap();
    let error = stderr(&create(Some(bad.clone())).await);
    assert!(error.contains("not an SSH public key"), "{error}");
    assert!(error.contains("line 1"), "{error}");

    // A key whose data was cut short.
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    let (kind, rest) = public.split_once(' ').unwrap();
    std::fs::write(&bad, format!("{kind} {}\n", &rest[..20])).unwrap();
    let error = stderr(&create(Some(bad.clone())).await);
    assert!(error.contains("not a ssh-ed25519 key"), "{error}");

    let error = stderr(&create(Some(keys.path().join("missing.pub"))).await);
    assert!(error.contains("missing.pub"), "{error}");

    // No key given and none in the (empty) home folder.
    let error = stderr(&create(None).await);
    assert!(error.contains("no SSH public key found"), "{error}");
    assert!(error.contains("--ssh-pubkey-file"), "{error}");

    // Credit needs a pinned node; said before posting.
    let credit = aleph_at_home(
        &net,
        home.path(),
        &[
            "instance",
            "create",
            "--rootfs",
            &rootfs,
            "--ssh-pubkey-file",
            private.with_extension("pub").to_str().unwrap(),
            "--payment",
            "credit",
            "--no-wait",
        ],
    )
    .await;
    assert!(
        stderr(&credit).contains("add --crn URL"),
        "{}",
        stderr(&credit)
    );

    assert!(instances_posted(&net).await.is_empty());
    net.ccn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn volumes_are_posted_in_the_crns_shape_and_listed() {
    let keys = tempfile::tempdir().unwrap();
    let Some((private, _)) = ssh_key(keys.path()) else {
        return;
    };
    let public_file = private.with_extension("pub");
    let public_file = public_file.to_str().unwrap();
    let net = Network::start().await;
    let rootfs = store_rootfs(&net, "rootfs for volumes").await;
    // An immutable volume must be a STORE the CCN holds.
    let library = store_rootfs(&net, "an ext4 library image").await;
    let immutable = format!("ref={library},mount=/opt/lib");
    let pinned = format!("ref={library},mount=/opt/pinned,use_latest=false");

    let created = net
        .funded_json(&[
            "--scheduler",
            NO_SCHEDULER,
            "instance",
            "create",
            "--ssh-pubkey-file",
            public_file,
            "--rootfs",
            &rootfs,
            "--persistent-volume",
            "name=data,size_mib=1024,mount=/data",
            "--persistent-volume",
            "persistence=host,name=db_2.x,size_mib=20,mount=/var/lib/db/",
            "--ephemeral-volume",
            "size_mib=100,mount=/tmp/x",
            "--immutable-volume",
            &immutable,
            "--immutable-volume",
            &pinned,
            "--no-wait",
        ])
        .await;
    assert_eq!(created["status"], "processed", "{created}");
    let hash = created["item_hash"].as_str().unwrap().to_owned();

    // The CRN's `Volume` (untagged: `ref` makes it immutable, `ephemeral` an
    // ephemeral one, else persistent with `name`, `size_mib`, `mount`) reads
    // exactly these; persistence is "host", the only one CRNs keep.
    let expected = json!([
        {"mount": "/data", "persistence": "host", "name": "data", "size_mib": 1024},
        {"mount": "/var/lib/db", "persistence": "host", "name": "db_2.x", "size_mib": 20},
        {"mount": "/tmp/x", "ephemeral": true, "size_mib": 100},
        {"mount": "/opt/lib", "ref": library, "use_latest": true},
        {"mount": "/opt/pinned", "ref": library, "use_latest": false},
    ]);
    let held = message(&net, &hash).await;
    assert_eq!(held["status"], "processed");
    assert_eq!(held["message"]["content"]["volumes"], expected);
    // The volumes leave the rest of the content as it was.
    assert_eq!(held["message"]["content"]["rootfs"]["size_mib"], 4096);

    let listed_kinds = json!([
        {"kind": "persistent", "name": "data", "size_mib": 1024, "mount": "/data", "persistence": "host"},
        {"kind": "persistent", "name": "db_2.x", "size_mib": 20, "mount": "/var/lib/db", "persistence": "host"},
        {"kind": "ephemeral", "size_mib": 100, "mount": "/tmp/x"},
        {"kind": "immutable", "ref": library, "use_latest": true, "mount": "/opt/lib"},
        {"kind": "immutable", "ref": library, "use_latest": false, "mount": "/opt/pinned"},
    ]);
    assert_eq!(created["volumes"], listed_kinds);
    let listed = net
        .funded_json(&["--scheduler", NO_SCHEDULER, "instance", "list"])
        .await;
    assert_eq!(listed[0]["item_hash"], hash);
    assert_eq!(listed[0]["volumes"], listed_kinds);
    let text = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "--scheduler",
            NO_SCHEDULER,
            "instance",
            "list",
        ])
        .await;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let short = &library[..8];
    assert!(
        text.contains(&format!(
            "volumes: data:1024MiB→/data, db_2.x:20MiB→/var/lib/db, ephemeral:100MiB→/tmp/x, ref {short}…→/opt/lib, ref {short}…→/opt/pinned"
        )),
        "{text}"
    );

    // Bad specs: each refused with the reason, before anything is posted.
    let refusals = [
        (
            "--persistent-volume",
            "size_mib=10,mount=/d".to_owned(),
            "name=… is missing",
        ),
        (
            "--persistent-volume",
            "name=d,size_mib=10".to_owned(),
            "mount=… is missing",
        ),
        (
            "--persistent-volume",
            "name=d,size_mib=1O,mount=/d".to_owned(),
            "not a whole number",
        ),
        (
            "--persistent-volume",
            "name=d,size_mib=10,mount=data".to_owned(),
            "relative",
        ),
        (
            "--persistent-volume",
            "name=my data,size_mib=10,mount=/d".to_owned(),
            "letters, digits",
        ),
        (
            "--persistent-volume",
            "name=.d,size_mib=10,mount=/d".to_owned(),
            "does not start with '.'",
        ),
        (
            "--persistent-volume",
            "name=d,size_mib=1953126,mount=/d".to_owned(),
            "1 to 1953125 MiB",
        ),
        (
            "--persistent-volume",
            "name=d,size_mib=10,mount=/d,persistence=store".to_owned(),
            "not supported",
        ),
        (
            "--ephemeral-volume",
            "size_mib=1001,mount=/t".to_owned(),
            "1 to 1000 MiB",
        ),
        (
            "--ephemeral-volume",
            "size_mib=10,mount=/t,colour=red".to_owned(),
            "unknown key",
        ),
        (
            "--immutable-volume",
            "ref=abc,mount=/o".to_owned(),
            "not an item hash",
        ),
        (
            "--immutable-volume",
            format!("ref={library}"),
            "mount=… is missing",
        ),
        (
            "--ephemeral-volume",
            "size_mib=10,mount=/data".to_owned(),
            "two volumes are mounted at /data",
        ),
    ];
    for (flag, spec, reason) in refusals {
        let output = net
            .aleph(&[
                "--private-key",
                &net.funded_key,
                "--scheduler",
                NO_SCHEDULER,
                "instance",
                "create",
                "--ssh-pubkey-file",
                public_file,
                "--rootfs",
                &rootfs,
                "--persistent-volume",
                "name=data,size_mib=1024,mount=/data",
                flag,
                &spec,
                "--no-wait",
            ])
            .await;
        assert!(!output.status.success(), "{flag} {spec} was accepted");
        let error = stderr(&output);
        assert!(error.contains(reason), "{flag} {spec}: {error}");
        assert!(error.contains(flag), "{flag} {spec}: {error}");
    }
    assert_eq!(instances_posted(&net).await, [hash]);
    net.ccn.shutdown().await;
}

/// Posts a `corechan-operation` registering a CRN at `url`; the node's hash.
async fn register_node(net: &Network, url: &str) -> String {
    let operator = Signer::from_hex(&net.funded_key).unwrap();
    let registration = operator
        .sign(
            MessageType::Post,
            json!({
                "type": CORECHAN_OPERATION,
                "content": {
                    "action": CREATE_RESOURCE_NODE,
                    "tags": [],
                    "details": {"name": "test crn", "address": url},
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
    registration.item_hash.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn crn_pins_the_node_registered_at_that_url() {
    let keys = tempfile::tempdir().unwrap();
    let Some((private, _)) = ssh_key(keys.path()) else {
        return;
    };
    let net = Network::start().await;
    let rootfs = store_rootfs(&net, "rootfs for pinning").await;
    let crn = "http://127.0.0.1:4999";
    let node_hash = register_node(&net, crn).await;
    let public_file = private.with_extension("pub");
    let create = |url: &'static str| {
        let net = &net;
        let rootfs = rootfs.clone();
        let key = public_file.to_str().unwrap().to_owned();
        async move {
            net.aleph(&[
                "--private-key",
                &net.funded_key,
                "--json",
                "--scheduler",
                NO_SCHEDULER,
                "instance",
                "create",
                "--rootfs",
                &rootfs,
                "--ssh-pubkey-file",
                &key,
                "--crn",
                url,
                "--no-wait",
            ])
            .await
        }
    };

    // The scheduler is down: the registration on the CCN names the node.
    let created = parsed(&create("http://127.0.0.1:4999/").await);
    assert_eq!(created["node_hash"], node_hash);
    let content =
        &message(&net, created["item_hash"].as_str().unwrap()).await["message"]["content"];
    assert_eq!(
        content["requirements"],
        json!({"node": {"node_hash": node_hash}})
    );
    assert_eq!(content["payment"], json!({"type": "credit"}));

    let unknown = create("http://127.0.0.1:4998").await;
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no CRN is registered at http://127.0.0.1:4998"),
        "{}",
        stderr(&unknown)
    );

    // `list` finds a pinned instance's CRN through the registration too.
    let listed = net
        .funded_json(&["--scheduler", NO_SCHEDULER, "instance", "list"])
        .await;
    assert_eq!(listed[0]["node_hash"], node_hash);
    assert_eq!(listed[0]["crn_url"], crn);

    net.ccn.shutdown().await;
}

/// What the stand-ins saw and answer.
#[derive(Default)]
struct StandIn {
    /// The instance the scheduler was asked about (the hash is only known once posted).
    vm_hash: Option<String>,
    /// How many times the scheduler was asked: the first answers are "not placed yet".
    asked: u32,
    /// Control requests that passed the signature check: `METHOD path`.
    controls: Vec<String>,
}

/// A scheduler read API and a CRN: the scheduler places any VM it is asked
/// about on the CRN after two questions; the CRN lists it running with port 22
/// forwarded to `ssh_port` and answers owner controls signed by `owner`.
async fn stand_ins(owner: String, ssh_port: u16) -> (String, String, Arc<Mutex<StandIn>>) {
    let state = Arc::new(Mutex::new(StandIn::default()));
    let crn_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let crn_url = format!("http://{}", crn_listener.local_addr().unwrap());

    let seen = state.clone();
    let placed_on = crn_url.clone();
    let scheduler = axum::Router::new().route(
        "/api/v1/vms",
        get(
            move |Query(query): Query<HashMap<String, String>>| async move {
                let hash = query.get("vm_hash").cloned().unwrap_or_default();
                let asked = {
                    let mut seen = seen.lock().unwrap();
                    seen.vm_hash = Some(hash.clone());
                    seen.asked += 1;
                    seen.asked
                };
                let items = if asked <= 1 {
                    Vec::new()
                } else {
                    vec![VmEntry {
                        vm_hash: hash,
                        vm_type: "instance".into(),
                        allocated_node: (asked > 2).then(|| "n1".into()),
                        allocated_url: (asked > 2).then(|| placed_on.clone()),
                        status: if asked > 2 { "dispatched" } else { "scheduled" }.into(),
                        owner: "0xowner".into(),
                        since: None,
                        reason: None,
                    }]
                };
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
    );

    let listed = state.clone();
    let controlled = state.clone();
    let crn = axum::Router::new()
        .route(
            "/v2/about/executions/list",
            get(move || async move {
                let hash = listed.lock().unwrap().vm_hash.clone().unwrap_or_default();
                Json(json!({hash: {
                    "networking": {"ipv4_network": "172.16.3.0/24", "ipv4_ip": "172.16.3.2",
                        "host_ipv4": null, "ipv6_network": null, "ipv6_ip": null,
                        "mapped_ports": {"22": {"host": ssh_port, "tcp": true, "udp": false}}},
                    "running": true, "vm_type": "instance", "status": {},
                }}))
            }),
        )
        .route(
            "/control/machine/{hash}/{action}",
            post(control_stand_in).get(control_stand_in),
        )
        .with_state((controlled, owner));

    let scheduler_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheduler_url = format!("http://{}", scheduler_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(scheduler_listener, scheduler).await });
    tokio::spawn(async move { axum::serve(crn_listener, crn).await });
    (scheduler_url, crn_url, state)
}

/// Checks the operator signature as a CRN would (domain: the Host without port).
async fn control_stand_in(
    axum::extract::State((state, owner)): axum::extract::State<(Arc<Mutex<StandIn>>, String)>,
    method: Method,
    headers: HeaderMap,
    UrlPath((hash, action)): UrlPath<(String, String)>,
) -> (StatusCode, Json<Value>) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let path = format!("/control/machine/{hash}/{action}");
    let verified = operator::verify(
        header(operator::SIGNED_PUBKEY_HEADER),
        header(operator::SIGNED_OPERATION_HEADER),
        method.as_str(),
        "127.0.0.1",
        &path,
        now,
    );
    match verified {
        Ok(v) if v.address.eq_ignore_ascii_case(&owner) => {}
        Ok(v) => {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({"error": format!("{} is not the owner", v.address)})),
            );
        }
        Err(e) => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": e.to_string()})),
            );
        }
    }
    state
        .lock()
        .unwrap()
        .controls
        .push(format!("{method} {path}"));
    match action.as_str() {
        "logs" => (
            StatusCode::OK,
            Json(json!([
                {"type": "stdout", "message": "Debian GNU/Linux 12 instance ttyS0"},
                {"type": "system", "message": "aleph-guest: ready"},
            ])),
        ),
        "stop" => (
            StatusCode::OK,
            Json(json!({"status": "stopped", "ref": hash})),
        ),
        _ => (
            StatusCode::NOT_IMPLEMENTED,
            Json(json!({"error": format!("{action} is not implemented here")})),
        ),
    }
}

/// A TCP server that greets like sshd (`SSH-2.0-…`) and hangs up.
async fn ssh_banner_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2 stand-in\r\n").await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn create_waits_for_placement_then_ssh_logs_and_stop_reach_the_crn() {
    let keys = tempfile::tempdir().unwrap();
    let Some((private, _)) = ssh_key(keys.path()) else {
        return;
    };
    let net = Network::start().await;
    let rootfs = store_rootfs(&net, "rootfs for the wait").await;
    let ssh_port = ssh_banner_server().await;
    let (scheduler, crn, state) = stand_ins(net.funded_address.clone(), ssh_port).await;
    let key = private.with_extension("pub");

    let created = net
        .funded_json(&[
            "--scheduler",
            &scheduler,
            "instance",
            "create",
            "--rootfs",
            &rootfs,
            "--ssh-pubkey-file",
            key.to_str().unwrap(),
            "--wait-timeout",
            "60",
        ])
        .await;
    let hash = created["item_hash"].as_str().unwrap().to_owned();
    assert_eq!(
        state.lock().unwrap().vm_hash.as_deref(),
        Some(hash.as_str())
    );
    assert!(state.lock().unwrap().asked >= 3);
    assert_eq!(created["crn_url"], crn);
    assert_eq!(created["node_hash"], "n1");
    assert_eq!(
        created["ssh"],
        json!({"host": "127.0.0.1", "port": ssh_port, "user": "root"})
    );
    assert_eq!(created["ssh_ready"], true);

    // For a person: the progress on stderr, the SSH line last on stdout.
    let human = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "--scheduler",
            &scheduler,
            "instance",
            "create",
            "--rootfs",
            &rootfs,
            "--ssh-pubkey-file",
            key.to_str().unwrap(),
            "--name",
            "second",
        ])
        .await;
    assert!(human.status.success(), "{}", stderr(&human));
    let text = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(
        text.trim_end()
            .ends_with(&format!("ssh root@127.0.0.1 -p {ssh_port}")),
        "{text}"
    );
    assert!(text.contains(&format!("CRN: {crn}")), "{text}");
    assert!(
        stderr(&human).contains("root filesystem"),
        "{}",
        stderr(&human)
    );
    let second = state.lock().unwrap().vm_hash.clone().unwrap();
    assert!(text.starts_with(&format!("instance {second}")), "{text}");
    let forgotten = net.funded_json(&["instance", "delete", &second]).await;
    assert_eq!(forgotten["item_hash"], second);
    // The stand-ins follow the instance asked about last: the first one again.
    state.lock().unwrap().vm_hash = Some(hash.clone());

    let listed = net
        .funded_json(&["--scheduler", &scheduler, "instance", "list"])
        .await;
    assert_eq!(listed[0]["item_hash"], hash);
    assert_eq!(listed[0]["status"], "dispatched");
    assert_eq!(listed[0]["running"], true);
    assert_eq!(listed[0]["ssh"], created["ssh"]);

    // `--json` before the `--`: what follows it is the remote command.
    let printed = parsed(
        &net.aleph(&[
            "--json",
            "--scheduler",
            &scheduler,
            "instance",
            "ssh",
            &hash,
            "-i",
            private.to_str().unwrap(),
            "--print-command",
            "--",
            "uname",
            "-a",
        ])
        .await,
    );
    let command: Vec<&str> = printed["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    let port = ssh_port.to_string();
    assert_eq!(command[..3], ["ssh", "-p", port.as_str()]);
    assert!(
        command.contains(&"StrictHostKeyChecking=accept-new"),
        "{command:?}"
    );
    assert!(command.contains(&private.to_str().unwrap()), "{command:?}");
    assert_eq!(
        command[command.len() - 3..],
        ["root@127.0.0.1", "uname", "-a"]
    );
    let known_hosts = format!(
        "UserKnownHostsFile={}",
        net.config.path().join("known_hosts").join(&hash).display()
    );
    assert!(command.contains(&known_hosts.as_str()), "{command:?}");

    let logs = net
        .funded_json(&["--scheduler", &scheduler, "instance", "logs", &hash])
        .await;
    assert_eq!(logs[1]["message"], "aleph-guest: ready");
    let text = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "--scheduler",
            &scheduler,
            "instance",
            "logs",
            &hash,
        ])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&text.stdout),
        "Debian GNU/Linux 12 instance ttyS0\naleph-guest: ready\n"
    );
    // `--crn` names the CRN without asking the scheduler.
    let stopped = net
        .funded_json(&[
            "--scheduler",
            NO_SCHEDULER,
            "instance",
            "stop",
            &hash,
            "--crn",
            &crn,
        ])
        .await;
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(
        state.lock().unwrap().controls,
        [
            format!("GET /control/machine/{hash}/logs"),
            format!("GET /control/machine/{hash}/logs"),
            format!("POST /control/machine/{hash}/stop"),
        ]
    );

    // Someone else's signature is refused by the CRN, and the CLI says so.
    let (other_key, _) = key_and_address("aleph-cli-test-other");
    let refused = net
        .aleph(&[
            "--private-key",
            &other_key,
            "instance",
            "reboot",
            &hash,
            "--crn",
            &crn,
        ])
        .await;
    assert!(!refused.status.success());
    let error = stderr(&refused);
    assert!(
        error.contains("HTTP 403") && error.contains("not the owner"),
        "{error}"
    );
    let unimplemented = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "instance",
            "erase",
            &hash,
            "--crn",
            &crn,
        ])
        .await;
    assert!(
        stderr(&unimplemented).contains("HTTP 501"),
        "{}",
        stderr(&unimplemented)
    );

    net.ccn.shutdown().await;
}

/// The real scheduler, following the CCN, with no node to place on: `create`
/// stops waiting as soon as the scheduler says it cannot place the instance.
#[tokio::test(flavor = "multi_thread")]
async fn create_stops_waiting_when_the_real_scheduler_cannot_place_it() {
    let keys = tempfile::tempdir().unwrap();
    let Some((private, _)) = ssh_key(keys.path()) else {
        return;
    };
    let net = Network::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = aleph_scheduler::SchedulerConfig::new(net.ccn.url(), data.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.poll_interval = Duration::from_millis(200);
    let scheduler = aleph_scheduler::start(config).await.unwrap();
    let rootfs = store_rootfs(&net, "rootfs for the real scheduler").await;

    let started = Instant::now();
    let output = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "--scheduler",
            &scheduler.url(),
            "instance",
            "create",
            "--rootfs",
            &rootfs,
            "--ssh-pubkey-file",
            private.with_extension("pub").to_str().unwrap(),
            "--wait-timeout",
            "60",
        ])
        .await;
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("will not run: the scheduler cannot place it"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "waited to the end"
    );
    // The progress went to stderr as plain lines (no terminal here).
    assert!(error.contains("root filesystem"), "{error}");

    scheduler.shutdown().await;
    net.ccn.shutdown().await;
}
