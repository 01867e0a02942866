//! FORGET: content dropped, `forgotten_by` set, effects undone, rules enforced.

mod common;

use common::{TestNode, Wallet, assert_rejected, sha256_hex};
use serde_json::{Value, json};

on_both_backends!(
    forget_a_post,
    forget_an_aggregate_element,
    forget_a_store_removes_its_file,
    forget_rules,
);

fn hash(message: &Value) -> String {
    message["item_hash"].as_str().unwrap().to_string()
}

async fn forget_a_post(node: TestNode) {
    let alice = Wallet::random();
    let note = alice.message("POST", json!({"type": "note", "content": {"secret": 1}}));
    node.accept(&note).await;
    let forget = alice.message("FORGET", json!({"hashes": [hash(&note)], "reason": "oops"}));
    node.accept(&forget).await;

    let (status, got) = node
        .get_json(&format!("/api/v0/messages/{}", hash(&note)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["status"], "forgotten");
    assert_eq!(got["forgotten_by"], json!([hash(&forget)]));
    assert!(got["message"].get("content").is_none(), "{got}");
    assert!(got["message"].get("item_content").is_none(), "{got}");
    let (_, listed) = node.get_json("/api/v0/messages.json?msgTypes=POST").await;
    assert_eq!(listed["pagination_total"], 0);
    let (_, forgotten) = node
        .get_json("/api/v0/messages.json?msgStatuses=forgotten")
        .await;
    assert_eq!(forgotten["pagination_total"], 1);
    assert!(forgotten["messages"][0].get("content").is_none());

    // Amends go with the POST they amend.
    let original = alice.message("POST", json!({"type": "note", "content": {"v": 1}}));
    node.accept(&original).await;
    let amend = alice.message(
        "POST",
        json!({"type": "amend", "ref": hash(&original), "content": {"v": 2}}),
    );
    node.accept(&amend).await;
    node.accept(&alice.message("FORGET", json!({"hashes": [hash(&original)]})))
        .await;
    let (_, amend_status) = node
        .get_json(&format!("/api/v0/messages/{}/status", hash(&amend)))
        .await;
    assert_eq!(amend_status["status"], "forgotten");

    // Posting it again does not bring it back.
    let (status, body) = node.post_message(&note, true).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["message_status"], "forgotten");
    assert!(body["error"].is_string());
}

async fn forget_an_aggregate_element(node: TestNode) {
    let alice = Wallet::random();
    let first = alice.message(
        "AGGREGATE",
        json!({"key": "k", "time": 1.0, "content": {"a": 1, "b": 1}}),
    );
    let second = alice.message(
        "AGGREGATE",
        json!({"key": "k", "time": 2.0, "content": {"b": 2}}),
    );
    node.accept(&first).await;
    node.accept(&second).await;
    node.accept(&alice.message("FORGET", json!({"hashes": [hash(&second)]})))
        .await;
    let (_, body) = node
        .get_json(&format!("/api/v0/aggregates/{}.json", alice.address()))
        .await;
    assert_eq!(body["data"]["k"], json!({"a": 1, "b": 1}));
    // `aggregates` names a whole aggregate by one of its elements.
    let third = alice.message(
        "AGGREGATE",
        json!({"key": "k", "time": 3.0, "content": {"c": 3}}),
    );
    node.accept(&third).await;
    let other_key = alice.message("AGGREGATE", json!({"key": "other", "content": {"z": 1}}));
    node.accept(&other_key).await;
    let forget_key = alice.message(
        "FORGET",
        json!({"hashes": [], "aggregates": [hash(&first)]}),
    );
    node.accept(&forget_key).await;
    let (_, body) = node
        .get_json(&format!("/api/v0/aggregates/{}.json", alice.address()))
        .await;
    assert_eq!(body["data"], json!({"other": {"z": 1}}));
    let (_, third_status) = node
        .get_json(&format!("/api/v0/messages/{}", hash(&third)))
        .await;
    assert_eq!(third_status["status"], "forgotten");
    assert_eq!(third_status["forgotten_by"], json!([hash(&forget_key)]));
    assert_eq!(node.rows().await.aggregate_elements, 1);
}

async fn forget_a_store_removes_its_file(node: TestNode) {
    let alice = Wallet::random();
    let bytes = b"file to forget".to_vec();
    let store = node.upload_stored(&alice, bytes.clone()).await;
    node.accept(&alice.message("FORGET", json!({"hashes": [store]})))
        .await;
    let (status, _) = node
        .get_json(&format!("/api/v0/storage/raw/{}", sha256_hex(&bytes)))
        .await;
    assert_eq!(status, 404);
    assert_eq!(node.rows().await.files, 0);
}

async fn forget_rules(node: TestNode) {
    let alice = Wallet::random();
    let bob = Wallet::random();
    let note = alice.message("POST", json!({"type": "note"}));
    node.accept(&note).await;

    // Someone else's message: 503.
    let theft = bob.message("FORGET", json!({"hashes": [hash(&note)]}));
    let before = node.rows().await;
    let (status, body) = node.post_message(&theft, true).await;
    assert_rejected(status, &body, 422, 503);
    assert_eq!(node.rows().await, before);

    // No target at all: 500.
    let empty = alice.message("FORGET", json!({"hashes": []}));
    let (status, body) = node.post_message(&empty, true).await;
    assert_rejected(status, &body, 422, 500);

    // A STORE still used by a VM: 503.
    let runtime = node.upload_stored(&alice, b"runtime".to_vec()).await;
    let code = node.upload_stored(&alice, b"code".to_vec()).await;
    node.fund(&alice, 1000.0, 0).await;
    let program = alice.message(
        "PROGRAM",
        json!({
            "type": "vm-function", "allow_amend": false,
            "code": {"encoding": "zip", "entrypoint": "main:app", "ref": code, "use_latest": false},
            "runtime": {"ref": runtime, "use_latest": true, "comment": "python"},
            "on": {"http": true}, "environment": {"internet": false, "aleph_api": false, "reproducible": false, "shared_cache": false},
            "resources": {"vcpus": 1, "memory": 128, "seconds": 30},
            "volumes": []
        }),
    );
    node.accept(&program).await;
    let forget_runtime = alice.message("FORGET", json!({"hashes": [runtime]}));
    let (status, body) = node.post_message(&forget_runtime, true).await;
    assert_rejected(status, &body, 422, 503);
    assert!(
        body["error"].as_str().unwrap().contains(&hash(&program)),
        "{body}"
    );

    // Unknown target: pending (it may still arrive), then rejected with 501.
    let unknown = alice.message("FORGET", json!({"hashes": ["f".repeat(64)]}));
    let (status, body) = node.post_message(&unknown, true).await;
    assert_eq!(status, 202, "{body}");
    let rejected = node.wait_status(&hash(&unknown), "rejected").await;
    assert_eq!(rejected["error_code"], 501);
}
