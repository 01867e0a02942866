//! Every rejection path: HTTP status, rejection code, and no row left behind.

mod common;

use common::{TestNode, Wallet, assert_rejected, sha256_hex};
use serde_json::{Value, json};

on_both_backends!(
    bad_signature,
    hash_mismatch,
    unknown_chain,
    unauthorized_delegate,
    insufficient_credit,
    insufficient_hold_balance,
    oversized_body,
    oversized_inline_content,
    malformed_json,
    unknown_message_type,
    forget_of_a_forget,
    missing_store_file_is_pending_then_rejected,
    missing_vm_reference,
);

fn post(wallet: &Wallet, text: &str) -> Value {
    wallet.message("POST", json!({"type": "note", "content": {"text": text}}))
}

async fn assert_untouched(node: &TestNode, before: &common::Rows, item_hash: &str) {
    assert_eq!(&node.rows().await, before, "a row was left behind");
    assert!(
        !node.has_rows_for(item_hash).await,
        "{item_hash} left a row"
    );
}

async fn bad_signature(node: TestNode) {
    let alice = Wallet::random();
    let mallory = Wallet::random();
    let mut message = post(&alice, "hello");
    mallory.sign(&mut message); // signed by someone else than the sender
    let before = node.rows().await;
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 1);
    assert_eq!(body["message_status"], "rejected");
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    assert_untouched(&node, &before, message["item_hash"].as_str().unwrap()).await;

    let mut garbage = post(&alice, "x");
    garbage["signature"] = json!("0x1234");
    let (status, body) = node.post_message(&garbage, true).await;
    assert_rejected(status, &body, 422, 1);
    assert_untouched(&node, &before, garbage["item_hash"].as_str().unwrap()).await;
}

async fn hash_mismatch(node: TestNode) {
    let alice = Wallet::random();
    let mut message = post(&alice, "hello");
    let other_hash = sha256_hex(b"something else");
    message["item_hash"] = json!(other_hash);
    alice.sign(&mut message); // a valid signature over the wrong hash
    let before = node.rows().await;
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 0);
    assert!(
        body["error"].as_str().unwrap().contains("item_hash"),
        "{body}"
    );
    assert_untouched(&node, &before, &other_hash).await;
}

async fn unknown_chain(node: TestNode) {
    let alice = Wallet::random();
    let mut message = post(&alice, "hello");
    message["chain"] = json!("NOTACHAIN");
    alice.sign(&mut message);
    let before = node.rows().await;
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 0);
    assert!(
        body["error"].as_str().unwrap().contains("unknown chain"),
        "{body}"
    );
    assert_untouched(&node, &before, message["item_hash"].as_str().unwrap()).await;
}

async fn unauthorized_delegate(node: TestNode) {
    let owner = Wallet::random();
    let delegate = Wallet::random();
    // Without any authorization.
    let message = delegate.message(
        "POST",
        json!({"type": "note", "address": owner.address(), "content": {}}),
    );
    let before = node.rows().await;
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 2);
    assert_untouched(&node, &before, message["item_hash"].as_str().unwrap()).await;

    // Authorized for POSTs of type "note" only.
    node.accept(&owner.message(
        "AGGREGATE",
        json!({"key": "security", "content": {"authorizations": [
            {"address": delegate.address(), "types": ["POST"], "post_types": ["note"]}
        ]}}),
    ))
    .await;
    node.accept(&message).await;
    let (_, got) = node
        .get_json(&format!(
            "/api/v0/messages/{}",
            message["item_hash"].as_str().unwrap()
        ))
        .await;
    assert_eq!(got["message"]["content"]["address"], json!(owner.address()));

    let before = node.rows().await;
    for forbidden in [
        delegate.message("POST", json!({"type": "blog", "address": owner.address()})),
        delegate.message(
            "AGGREGATE",
            json!({"key": "profile", "address": owner.address(), "content": {"a": 1}}),
        ),
        // A delegate may never rewrite the owner's permissions.
        delegate.message(
            "AGGREGATE",
            json!({"key": "security", "address": owner.address(), "content": {"authorizations": []}}),
        ),
    ] {
        let (status, body) = node.post_message(&forbidden, true).await;
        assert_rejected(status, &body, 422, 2);
        assert_untouched(&node, &before, forbidden["item_hash"].as_str().unwrap()).await;
    }
}

/// An instance paid with credits, on a rootfs STORE the owner uploaded.
async fn credit_instance(node: &TestNode, owner: &Wallet, payment: &str, vcpus: u64) -> Value {
    let rootfs = node.upload_stored(owner, b"rootfs image".to_vec()).await;
    owner.message(
        "INSTANCE",
        json!({
            "allow_amend": false,
            "resources": {"vcpus": vcpus, "memory": 2048 * vcpus, "seconds": 30},
            "environment": {"internet": true, "aleph_api": true, "hypervisor": "qemu"},
            "rootfs": {"parent": {"ref": rootfs, "use_latest": true}, "persistence": "host", "size_mib": 20480},
            "payment": {"type": payment},
            "requirements": {"node": {"node_hash": "a".repeat(64)}},
            "volumes": []
        }),
    )
}

async fn insufficient_credit(node: TestNode) {
    let owner = Wallet::random();
    // 1 CU of instance is 14,250 credits/h: 24 h need 342,000.
    node.fund(&owner, 0.0, 300_000).await;
    let node = &node;
    let message = credit_instance(node, &owner, "credit", 1).await;
    let before = node.rows().await;
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 6);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("insufficient credit"),
        "{body}"
    );
    assert_untouched(node, &before, message["item_hash"].as_str().unwrap()).await;
    let (_, status_body) = node
        .get_json(&format!(
            "/api/v0/messages/{}",
            message["item_hash"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status_body["status"], "rejected");
    assert_eq!(status_body["error_code"], 6);
    let (_, listed) = node
        .get_json("/api/v0/messages.json?msgStatuses=rejected&msgTypes=INSTANCE")
        .await;
    assert_eq!(listed["pagination_total"], 1, "{listed}");
    assert_eq!(listed["messages"][0]["item_hash"], message["item_hash"]);
}

async fn insufficient_hold_balance(node: TestNode) {
    let owner = Wallet::random();
    node.fund(&owner, 999.0, 0).await;
    let message = credit_instance(&node, &owner, "hold", 1).await;
    let before = node.rows().await;
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 5);
    assert_untouched(&node, &before, message["item_hash"].as_str().unwrap()).await;
}

async fn oversized_body(node: TestNode) {
    let before = node.rows().await;
    let huge = json!({"sync": true, "message": {"padding": "x".repeat(2 * 1024 * 1024)}});
    let response = node
        .http
        .post(node.url("/api/v0/messages"))
        .body(huge.to_string())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_rejected(status, &body, 413, 0);
    assert_eq!(node.rows().await, before);

    // Files: over 25 MiB without a signed STORE.
    let big = vec![7u8; 25 * 1024 * 1024 + 1];
    let big_hash = sha256_hex(&big);
    let response = node
        .http
        .post(node.url("/api/v0/storage/add_file"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("25 MiB"), "{body}");
    assert_eq!(node.rows().await, before);
    let (status, _) = node
        .get_json(&format!("/api/v0/storage/raw/{big_hash}"))
        .await;
    assert_eq!(status, 404);
}

async fn oversized_inline_content(node: TestNode) {
    let alice = Wallet::random();
    let message = post(&alice, &"y".repeat(200_001));
    let before = node.rows().await;
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 0);
    assert!(body["error"].as_str().unwrap().contains("200000"), "{body}");
    assert_untouched(&node, &before, message["item_hash"].as_str().unwrap()).await;
}

async fn malformed_json(node: TestNode) {
    let before = node.rows().await;
    let response = node
        .http
        .post(node.url("/api/v0/messages"))
        .header("content-type", "application/json")
        .body("{\"sync\": true, \"message\": {")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_rejected(status, &body, 422, 0);
    assert!(
        body["error"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );
    assert_eq!(node.rows().await, before);

    // Valid envelope, content that is not JSON.
    let alice = Wallet::random();
    let mut message = post(&alice, "x");
    let bad_content = "{not json";
    message["item_content"] = json!(bad_content);
    message["item_hash"] = json!(sha256_hex(bad_content.as_bytes()));
    alice.sign(&mut message);
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 0);
    assert_untouched(&node, &before, message["item_hash"].as_str().unwrap()).await;
}

async fn unknown_message_type(node: TestNode) {
    let alice = Wallet::random();
    let mut message = post(&alice, "x");
    message["type"] = json!("TELEPORT");
    alice.sign(&mut message);
    let before = node.rows().await;
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 0);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown message type"),
        "{body}"
    );
    assert_untouched(&node, &before, message["item_hash"].as_str().unwrap()).await;
}

async fn forget_of_a_forget(node: TestNode) {
    let alice = Wallet::random();
    let note = post(&alice, "to forget");
    node.accept(&note).await;
    let forget = alice.message(
        "FORGET",
        json!({"hashes": [note["item_hash"]], "reason": "test"}),
    );
    node.accept(&forget).await;

    let forget_forget = alice.message("FORGET", json!({"hashes": [forget["item_hash"]]}));
    let before = node.rows().await;
    let (status, body) = node.post_message(&forget_forget, true).await;
    assert_rejected(status, &body, 422, 502);
    assert_untouched(&node, &before, forget_forget["item_hash"].as_str().unwrap()).await;
    // The first FORGET is untouched and still processed.
    let (_, got) = node
        .get_json(&format!(
            "/api/v0/messages/{}",
            forget["item_hash"].as_str().unwrap()
        ))
        .await;
    assert_eq!(got["status"], "processed");
}

async fn missing_store_file_is_pending_then_rejected(node: TestNode) {
    let alice = Wallet::random();
    let store = alice.store(&sha256_hex(b"never uploaded"));
    let hash = store["item_hash"].as_str().unwrap().to_string();
    let (status, body) = node.post_message(&store, true).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["message_status"], "pending");
    assert_eq!(body["details"]["error_code"], 4);
    let pending = node.wait_status(&hash, "pending").await;
    assert_eq!(pending["details"]["error_code"], 4);
    // The retry window of the test node is 1.5 s.
    let rejected = node.wait_status(&hash, "rejected").await;
    assert_eq!(rejected["error_code"], 4);
    assert!(!node.has_rows_for(&hash).await);
    assert_eq!(node.rows().await.messages, 0);
}

async fn missing_vm_reference(node: TestNode) {
    let alice = Wallet::random();
    let program = alice.message(
        "PROGRAM",
        json!({
            "type": "vm-function", "allow_amend": false,
            "code": {"encoding": "zip", "entrypoint": "main:app", "ref": "b".repeat(64), "use_latest": false},
            "runtime": {"ref": "c".repeat(64), "use_latest": true, "comment": "python"},
            "on": {"http": true}, "environment": {"internet": false, "aleph_api": false, "reproducible": false, "shared_cache": false},
            "resources": {"vcpus": 1, "memory": 128, "seconds": 30},
            "volumes": []
        }),
    );
    let before = node.rows().await;
    let (status, body) = node.post_message(&program, true).await;
    assert_rejected(status, &body, 422, 300);
    assert_untouched(&node, &before, program["item_hash"].as_str().unwrap()).await;
}
