//! The websocket stream: history first, then new matching messages.

mod common;

use common::{TestNode, Wallet};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(history_then_live_messages);

async fn next_json<S>(socket: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no websocket message within 10 s")
            .expect("websocket closed")
            .expect("websocket error");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn history_then_live_messages(node: TestNode) {
    let alice = Wallet::random();
    let bob = Wallet::random();
    let mut old = Vec::new();
    for i in 0..3 {
        let message = alice.message("POST", json!({"type": "note", "content": {"i": i}}));
        node.accept(&message).await;
        old.push(message["item_hash"].as_str().unwrap().to_string());
    }
    node.accept(&bob.message("POST", json!({"type": "note"})))
        .await;

    let url = format!(
        "ws://{}/api/ws0/messages?addresses={}&history=2",
        node.handle.addr(),
        alice.address()
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // The two newest of alice's messages, oldest first.
    assert_eq!(next_json(&mut socket).await["item_hash"], old[1]);
    assert_eq!(next_json(&mut socket).await["item_hash"], old[2]);

    // Bob's new message does not match; alice's does.
    node.accept(&bob.message("POST", json!({"type": "other"})))
        .await;
    let live = alice.message("AGGREGATE", json!({"key": "k", "content": {"v": 1}}));
    node.accept(&live).await;
    let received = next_json(&mut socket).await;
    assert_eq!(received["item_hash"], live["item_hash"]);
    assert_eq!(received["content"]["content"], json!({"v": 1}));
    let parsed: aleph_types::message::Message = serde_json::from_value(received).unwrap();
    parsed.verify_signature().unwrap();

    let (status, body) = node.get_json("/api/ws0/messages?history=nope").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("history"),
        "{body}"
    );
    // Not a websocket request: still a JSON error.
    let (status, body) = node.get_json("/api/ws0/messages").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
}
