//! Aggregates: per-key merge of top-level fields, last write (by content time) wins.

mod common;

use common::{TestNode, Wallet};
use serde_json::json;

on_both_backends!(aggregates_merge, aggregate_queries);

async fn aggregates_merge(node: TestNode) {
    let alice = Wallet::random();
    let at = |time: f64, content: serde_json::Value| {
        alice.message(
            "AGGREGATE",
            json!({"key": "profile", "time": time, "content": content}),
        )
    };
    node.accept(&at(10.0, json!({"name": "alice", "city": "Paris", "n": 1})))
        .await;
    node.accept(&at(30.0, json!({"city": "Lyon", "nested": {"a": 1}})))
        .await;
    // Arrives late but is older: it loses to the newer values.
    node.accept(&at(
        20.0,
        json!({"city": "Nice", "n": 2, "nested": {"b": 2}}),
    ))
    .await;

    let (status, body) = node
        .get_json(&format!("/api/v0/aggregates/{}.json", alice.address()))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["address"], json!(alice.address()));
    assert_eq!(
        body["data"]["profile"],
        json!({"name": "alice", "city": "Lyon", "n": 2, "nested": {"a": 1}})
    );
}

async fn aggregate_queries(node: TestNode) {
    let alice = Wallet::random();
    node.accept(&alice.message("AGGREGATE", json!({"key": "a", "content": {"x": 1}})))
        .await;
    node.accept(&alice.message("AGGREGATE", json!({"key": "b", "content": {"y": 2}})))
        .await;
    // Case of an EVM address does not matter.
    let lower = alice.address().to_lowercase();
    let (_, both) = node
        .get_json(&format!("/api/v0/aggregates/{lower}.json"))
        .await;
    assert_eq!(both["data"], json!({"a": {"x": 1}, "b": {"y": 2}}));
    let (_, only_b) = node
        .get_json(&format!(
            "/api/v0/aggregates/{}.json?keys=b",
            alice.address()
        ))
        .await;
    assert_eq!(only_b["data"], json!({"b": {"y": 2}}));
    let (status, none) = node
        .get_json(&format!(
            "/api/v0/aggregates/{}.json?keys=zzz",
            alice.address()
        ))
        .await;
    assert_eq!(status, 404);
    assert!(none["error"].is_string());
    let (status, _) = node
        .get_json(&format!(
            "/api/v0/aggregates/{}.json",
            Wallet::random().address()
        ))
        .await;
    assert_eq!(status, 404);
}
