//! A node's life: state survives a restart, shutdown closes websockets, and
//! concurrent messages cannot spend the same credit twice.

mod common;

use common::{TestNode, Wallet};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

on_both_backends!(
    state_survives_a_restart,
    shutdown_closes_websockets,
    concurrent_messages_cannot_overspend,
);

async fn state_survives_a_restart(node: TestNode) {
    let alice = Wallet::random();
    let note = alice.message("POST", json!({"type": "note"}));
    node.accept(&note).await;
    node.accept(&alice.message("AGGREGATE", json!({"key": "k", "content": {"a": 1}})))
        .await;
    let file = node.upload(b"kept".to_vec()).await;
    let before = node.rows().await;

    let node = node.restart().await;
    assert_eq!(node.rows().await, before);
    let (status, got) = node
        .get_json(&format!(
            "/api/v0/messages/{}",
            note["item_hash"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["status"], "processed");
    let (_, aggregate) = node
        .get_json(&format!("/api/v0/aggregates/{}.json", alice.address()))
        .await;
    assert_eq!(aggregate["data"]["k"], json!({"a": 1}));
    let (status, _) = node.get_json(&format!("/api/v0/storage/raw/{file}")).await;
    assert_eq!(status, 200);
}

async fn shutdown_closes_websockets(node: TestNode) {
    let url = format!("ws://{}/api/ws0/messages?history=0", node.handle.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let TestNode { handle, .. } = node;
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .expect("shutdown waited on an open websocket");
    // The server said goodbye (a close frame or the end of the stream).
    let end = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap();
    assert!(
        matches!(
            end,
            None | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | Some(Err(_))
        ),
        "{end:?}"
    );
}

async fn concurrent_messages_cannot_overspend(node: TestNode) {
    let alice = Wallet::random();
    let rootfs = node.upload_stored(&alice, b"image".to_vec()).await;
    // Enough credit for exactly two 1-CU instances for 24 h.
    node.fund(&alice, 0.0, 14_250 * 24 * 2).await;
    let instances: Vec<Value> = (0..6)
        .map(|i| {
            alice.message(
                "INSTANCE",
                json!({
                    "allow_amend": false, "metadata": {"i": i},
                    "resources": {"vcpus": 1, "memory": 2048, "seconds": 30},
                    "environment": {"internet": true, "aleph_api": true},
                    "rootfs": {"parent": {"ref": rootfs, "use_latest": true}, "persistence": "host", "size_mib": 20480},
                    "payment": {"type": "credit"},
                    "requirements": {"node": {"node_hash": "a".repeat(64)}},
                    "volumes": []
                }),
            )
        })
        .collect();
    let node = std::sync::Arc::new(node);
    let mut tasks = tokio::task::JoinSet::new();
    for message in instances {
        let node = node.clone();
        tasks.spawn(async move { node.post_message(&message, true).await });
    }
    let mut accepted = 0;
    let mut refused = 0;
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.unwrap();
        match status {
            200 => accepted += 1,
            422 => {
                assert_eq!(body["error_code"], 6, "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((accepted, refused), (2, 4));
    let (_, listed) = node
        .get_json("/api/v0/messages.json?msgTypes=INSTANCE")
        .await;
    assert_eq!(listed["pagination_total"], 2);
}
