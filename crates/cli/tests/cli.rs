//! The real `aleph` binary against a real CCN started in process on a free
//! loopback port, each test with its own data and key folders.

mod common;

use common::{Network, file_bytes, key_and_address, sha256_hex, stderr};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn accounts_are_created_imported_listed_and_shown() {
    let net = Network::start().await;

    let alice = net.json(&["account", "create", "alice"]).await;
    assert_eq!(alice["name"], "alice");
    assert_eq!(alice["default"], true, "the first account is the default");
    let alice_address = alice["address"].as_str().unwrap().to_owned();
    assert!(alice_address.starts_with("0x") && alice_address.len() == 42);

    let bob = net
        .json(&["account", "import", "bob", &format!("0x{}", net.funded_key)])
        .await;
    assert_eq!(bob["address"], net.funded_address);
    assert_eq!(bob["default"], false);

    let duplicate = net.aleph(&["account", "create", "alice"]).await;
    assert!(!duplicate.status.success());
    assert!(
        stderr(&duplicate).contains("already exists"),
        "{}",
        stderr(&duplicate)
    );

    let list = net.json(&["account", "list"]).await;
    assert_eq!(
        list,
        json!([
            {"name": "alice", "address": alice_address, "chain": "ETH", "default": true},
            {"name": "bob", "address": net.funded_address, "chain": "ETH", "default": false},
        ])
    );

    // The key file is private to its owner.
    let key_file = net.config.path().join("accounts.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // `show` by name reads the balance from the CCN; with no name it shows the default.
    let shown = net.json(&["account", "show", "bob"]).await;
    assert_eq!(shown["address"], net.funded_address);
    assert_eq!(shown["balance"]["credit_balance"], 1_000_000_000_000u64);
    let default = net.json(&["account", "show"]).await;
    assert_eq!(default["name"], "alice");
    assert_eq!(default["address"], alice_address);
    let by_flag = net.json(&["--account", "bob", "account", "show"]).await;
    assert_eq!(by_flag["address"], net.funded_address);

    net.ccn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_uploads_and_downloads_unchanged() {
    let net = Network::start().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    let bytes = file_bytes(700_000, "round trip");
    std::fs::write(&source, &bytes).unwrap();

    let uploaded = net
        .funded_json(&["file", "upload", source.to_str().unwrap()])
        .await;
    assert_eq!(uploaded["file_hash"], sha256_hex(&bytes));
    assert_eq!(uploaded["size"], bytes.len());
    assert_eq!(uploaded["status"], "processed");

    // The STORE message is on the CCN, signed by the uploader.
    let item_hash = uploaded["item_hash"].as_str().unwrap();
    let message = net.json(&["message", "get", item_hash]).await;
    assert_eq!(message["status"], "processed");
    assert_eq!(message["message"]["type"], "STORE");
    assert_eq!(message["message"]["sender"], net.funded_address);
    assert_eq!(
        message["message"]["content"]["item_hash"],
        sha256_hex(&bytes)
    );

    let target = dir.path().join("copy.bin");
    let file_hash = uploaded["file_hash"].as_str().unwrap();
    let downloaded = net
        .json(&[
            "file",
            "download",
            file_hash,
            "-o",
            target.to_str().unwrap(),
        ])
        .await;
    assert_eq!(downloaded["size"], bytes.len());
    assert_eq!(std::fs::read(&target).unwrap(), bytes);

    let missing = net
        .aleph(&[
            "file",
            "download",
            &"0".repeat(64),
            "-o",
            dir.path().join("none").to_str().unwrap(),
        ])
        .await;
    assert!(!missing.status.success());
    assert!(!dir.path().join("none").exists());
    assert!(!dir.path().join(".none.part").exists());

    net.ccn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregates_merge_and_read_back() {
    let net = Network::start().await;

    let first = net
        .funded_json(&[
            "aggregate",
            "post",
            "profile",
            r#"{"name":"alice","langs":["rust"]}"#,
        ])
        .await;
    assert_eq!(first["status"], "processed");
    assert_eq!(first["address"], net.funded_address);
    net.funded_json(&["aggregate", "post", "profile", r#"{"age":3}"#])
        .await;

    let merged = net.funded_json(&["aggregate", "get", "profile"]).await;
    assert_eq!(
        merged,
        json!({"name": "alice", "langs": ["rust"], "age": 3})
    );
    // Anyone can read it by address.
    let by_address = net
        .json(&[
            "aggregate",
            "get",
            "profile",
            "--address",
            &net.funded_address,
        ])
        .await;
    assert_eq!(by_address, merged);

    let absent = net
        .aleph(&[
            "aggregate",
            "get",
            "nothing",
            "--address",
            &net.funded_address,
        ])
        .await;
    assert!(!absent.status.success());
    assert!(
        stderr(&absent).contains("no aggregate"),
        "{}",
        stderr(&absent)
    );

    let not_object = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "aggregate",
            "post",
            "k",
            "[1]",
        ])
        .await;
    assert!(!not_object.status.success());

    net.ccn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_are_listed_and_forgotten_and_a_rejection_shows_its_code() {
    let net = Network::start().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("note.txt");
    std::fs::write(&source, file_bytes(1000, "forget me")).unwrap();
    let uploaded = net
        .funded_json(&["file", "upload", source.to_str().unwrap()])
        .await;
    let store_hash = uploaded["item_hash"].as_str().unwrap().to_owned();

    let listed = net
        .json(&[
            "message",
            "list",
            "--addresses",
            &net.funded_address,
            "--types",
            "store",
        ])
        .await;
    let hashes: Vec<&str> = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["item_hash"].as_str().unwrap())
        .collect();
    assert_eq!(hashes, vec![store_hash.as_str()]);

    let forget = net
        .funded_json(&["message", "forget", &store_hash, "--reason", "test"])
        .await;
    assert_eq!(forget["status"], "processed");
    let forget_hash = forget["item_hash"].as_str().unwrap().to_owned();

    let forgotten = net.aleph(&["message", "get", &store_hash, "--json"]).await;
    let forgotten: Value = serde_json::from_slice(&forgotten.stdout).unwrap();
    assert_eq!(forgotten["status"], "forgotten");
    assert_eq!(forgotten["forgotten_by"], json!([forget_hash]));

    // A FORGET cannot be forgotten: the CCN rejects it with code 502.
    let human = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "message",
            "forget",
            &forget_hash,
        ])
        .await;
    assert!(!human.status.success());
    assert!(
        stderr(&human).contains("code 502 (cannot forget a FORGET)"),
        "{}",
        stderr(&human)
    );
    let machine = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "--json",
            "message",
            "forget",
            &forget_hash,
        ])
        .await;
    assert!(!machine.status.success());
    let error: Value = serde_json::from_slice(&machine.stdout).unwrap();
    assert_eq!(error["code"], 502);
    assert_eq!(error["meaning"], "cannot forget a FORGET");
    assert_eq!(error["http_status"], 422);

    let unknown = net.aleph(&["message", "get", &"ab".repeat(32)]).await;
    assert!(!unknown.status.success());

    // Forgetting a message the CCN has not seen yet waits for it, and says why.
    let waiting = net
        .funded_json(&["message", "forget", &"cd".repeat(32)])
        .await;
    assert_eq!(waiting["status"], "pending");
    let reason = waiting["pending_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("code 501 (FORGET target not found)"),
        "{reason}"
    );

    net.ccn.shutdown().await;
}

/// Storage beyond the free 25 MiB costs credits; an account without any is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_unfunded_large_upload_is_rejected_for_credit() {
    let net = Network::start().await;
    let (poor_key, _) = key_and_address("aleph-cli-test-unfunded");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big.bin");
    std::fs::write(&source, file_bytes(26 * 1024 * 1024, "too big for free")).unwrap();

    let output = net
        .aleph(&[
            "--private-key",
            &poor_key,
            "--json",
            "file",
            "upload",
            source.to_str().unwrap(),
        ])
        .await;
    assert!(!output.status.success(), "{}", stderr(&output));
    let error: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(error["code"], 6, "{error}");
    assert_eq!(error["meaning"], "insufficient credit");
    assert!(stderr(&output).contains("code 6 (insufficient credit)"));

    net.ccn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_without_a_key_says_how_to_get_one() {
    let net = Network::start().await;
    let output = net.aleph(&["aggregate", "post", "k", "{}"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("aleph account create"),
        "{}",
        stderr(&output)
    );
    let unknown = net
        .aleph(&["--account", "nobody", "aggregate", "post", "k", "{}"])
        .await;
    assert!(stderr(&unknown).contains("no account named \"nobody\""));
    net.ccn.shutdown().await;
}
