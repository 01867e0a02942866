//! Posting and querying messages: filters, pagination, statuses, asynchronous intake.

mod common;

use common::{TestNode, Wallet};
use serde_json::{Value, json};

on_both_backends!(
    post_then_get_and_status,
    filters_and_pagination,
    asynchronous_submission_is_processed_by_the_worker,
    resubmission_is_idempotent,
    storage_item_content,
    errors_are_json,
    posts_show_their_latest_amend,
);

fn hashes(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["item_hash"].as_str().unwrap().to_string())
        .collect()
}

async fn post_then_get_and_status(node: TestNode) {
    let alice = Wallet::random();
    let message = alice.message("POST", json!({"type": "note", "content": {"text": "hi"}}));
    let hash = message["item_hash"].as_str().unwrap();
    node.accept(&message).await;

    let (status, got) = node.get_json(&format!("/api/v0/messages/{hash}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["status"], "processed");
    assert_eq!(got["item_hash"], hash);
    assert_eq!(got["message"]["sender"], json!(alice.address()));
    assert_eq!(got["message"]["content"]["content"]["text"], "hi");
    assert_eq!(got["message"]["item_content"], message["item_content"]);
    assert_eq!(got["message"]["signature"], message["signature"]);
    // The official types parse what we serve.
    let parsed: aleph_types::message::Message =
        serde_json::from_value(got["message"].clone()).unwrap();
    parsed.verify_signature().unwrap();
    parsed.verify_item_hash().unwrap();

    let (status, st) = node
        .get_json(&format!("/api/v0/messages/{hash}/status"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(st["status"], "processed");
    assert!(st["reception_time"].as_str().is_some());

    let (status, missing) = node
        .get_json(&format!("/api/v0/messages/{}", "0".repeat(64)))
        .await;
    assert_eq!(status, 404);
    assert!(missing["error"].as_str().unwrap().contains("not found"));
    let (status, _) = node.get_json("/api/v0/messages/not-a-hash").await;
    assert_eq!(status, 400);
}

async fn filters_and_pagination(node: TestNode) {
    let alice = Wallet::random();
    let bob = Wallet::random();
    let mut posted = Vec::new();
    for i in 0..5 {
        let content = json!({"type": if i % 2 == 0 { "even" } else { "odd" },
                             "time": 1000.0 + i as f64,
                             "content": {"n": i, "tags": [format!("t{i}"), "all"]}});
        let mut message = alice.message_on(if i < 3 { "A" } else { "B" }, "POST", content);
        message["time"] = json!(1000.0 + i as f64);
        alice.sign(&mut message);
        node.accept(&message).await;
        posted.push(message["item_hash"].as_str().unwrap().to_string());
    }
    let bob_message = bob.message("AGGREGATE", json!({"key": "k", "content": {"x": 1}}));
    node.accept(&bob_message).await;

    let (_, all) = node.get_json("/api/v0/messages.json").await;
    assert_eq!(all["pagination_total"], 6);
    assert_eq!(all["pagination_per_page"], 20);
    assert_eq!(all["pagination_page"], 1);
    assert_eq!(all["pagination_item"], "messages");
    // Newest first by default.
    assert_eq!(hashes(&all)[0], bob_message["item_hash"].as_str().unwrap());

    let q = |query: String| {
        let node = &node;
        async move {
            node.get_json(&format!("/api/v0/messages.json?{query}"))
                .await
                .1
        }
    };
    let by_sender = q(format!("addresses={}", alice.address().to_lowercase())).await;
    assert_eq!(by_sender["pagination_total"], 5);
    let by_owner = q(format!("owners={}", bob.address())).await;
    assert_eq!(
        hashes(&by_owner),
        vec![bob_message["item_hash"].as_str().unwrap()]
    );
    assert_eq!(q("msgTypes=AGGREGATE".into()).await["pagination_total"], 1);
    assert_eq!(
        q("msgTypes=POST,AGGREGATE".into()).await["pagination_total"],
        6
    );
    assert_eq!(q("channels=B".into()).await["pagination_total"], 2);
    assert_eq!(q("contentTypes=even".into()).await["pagination_total"], 3);
    assert_eq!(q("contentKeys=k".into()).await["pagination_total"], 1);
    assert_eq!(q("tags=t1,t3".into()).await["pagination_total"], 2);
    assert_eq!(q("tags=all".into()).await["pagination_total"], 5);
    assert_eq!(q("chains=ETH".into()).await["pagination_total"], 6);
    assert_eq!(q("chains=SOL".into()).await["pagination_total"], 0);
    assert_eq!(
        q(format!("hashes={},{}", posted[0], posted[4])).await["pagination_total"],
        2
    );
    assert_eq!(
        q("startDate=1001&endDate=1003".into()).await["pagination_total"],
        2
    );
    assert_eq!(
        q("msgStatuses=forgotten".into()).await["pagination_total"],
        0
    );

    let page2 = q("msgTypes=POST&pagination=2&page=2&sortOrder=1".into()).await;
    assert_eq!(page2["pagination_total"], 5);
    assert_eq!(page2["pagination_page"], 2);
    assert_eq!(hashes(&page2), posted[2..4].to_vec());
    let page3 = q("msgTypes=POST&pagination=2&page=3&sortOrder=1".into()).await;
    assert_eq!(hashes(&page3), posted[4..5].to_vec());

    // Cursor mode, as the SDK's iterators use it.
    let first = q("msgTypes=POST&pagination=3&cursor=&sortOrder=1".into()).await;
    assert_eq!(hashes(&first), posted[0..3].to_vec());
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let second = q(format!(
        "msgTypes=POST&pagination=3&cursor={cursor}&sortOrder=1"
    ))
    .await;
    assert_eq!(hashes(&second), posted[3..5].to_vec());
    assert!(second["next_cursor"].is_null());

    for bad in [
        "page=0",
        "msgTypes=NOPE",
        "sortOrder=3",
        "pagination=100000",
        "startDate=x",
    ] {
        let (status, body) = node.get_json(&format!("/api/v0/messages.json?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string());
    }
}

async fn asynchronous_submission_is_processed_by_the_worker(node: TestNode) {
    let alice = Wallet::random();
    let message = alice.message("POST", json!({"type": "note"}));
    let hash = message["item_hash"].as_str().unwrap();
    let (status, body) = node.post_message(&message, false).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["message_status"], "pending");
    node.wait_status(hash, "processed").await;
    assert_eq!(node.rows().await.pending, 0);
}

async fn resubmission_is_idempotent(node: TestNode) {
    let alice = Wallet::random();
    let message = alice.message("POST", json!({"type": "note"}));
    node.accept(&message).await;
    node.accept(&message).await;
    assert_eq!(node.rows().await.messages, 1);
}

async fn storage_item_content(node: TestNode) {
    let alice = Wallet::random();
    let content =
        json!({"address": alice.address(), "time": 5.0, "type": "big", "content": {"x": "y"}});
    let bytes = serde_json::to_vec(&content).unwrap();
    let message = alice.storage_message("POST", &bytes);
    let hash = message["item_hash"].as_str().unwrap();
    // Content not uploaded yet: pending with code 3.
    let (status, body) = node.post_message(&message, true).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["details"]["error_code"], 3);
    let (_, listed) = node
        .get_json(&format!(
            "/api/v0/messages.json?msgStatuses=pending,processed&addresses={}",
            alice.address()
        ))
        .await;
    assert_eq!(listed["pagination_total"], 1, "{listed}");
    assert_eq!(hashes(&listed), vec![hash.to_string()]);
    let response = node
        .http
        .post(node.url("/api/v0/storage/add_json"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    let stored: Value = response.json().await.unwrap();
    assert_eq!(stored["hash"], hash);
    node.wait_status(hash, "processed").await;
    let (_, got) = node.get_json(&format!("/api/v0/messages/{hash}")).await;
    assert_eq!(got["message"]["content"]["type"], "big");
    assert_eq!(got["message"]["item_type"], "storage");
}

async fn errors_are_json(node: TestNode) {
    let (status, body) = node.get_json("/api/v0/nothing-here").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("/api/v0/nothing-here")
    );
    let response = node
        .http
        .delete(node.url("/api/v0/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string());
    let response = node
        .http
        .post(node.url("/api/v0/messages"))
        .body("{\"sync\": true}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], 0);
}

async fn posts_show_their_latest_amend(node: TestNode) {
    let alice = Wallet::random();
    let original = alice.message("POST", json!({"type": "blog", "content": {"title": "v1"}}));
    let hash = original["item_hash"].as_str().unwrap().to_string();
    node.accept(&original).await;
    node.accept(&alice.message("POST", json!({"type": "other", "content": {}})))
        .await;
    let amend = alice.message(
        "POST",
        json!({"type": "amend", "ref": hash, "content": {"title": "v2"}}),
    );
    node.accept(&amend).await;
    // Someone else cannot amend it.
    let mallory = Wallet::random();
    let hijack = mallory.message(
        "POST",
        json!({"type": "amend", "ref": hash, "content": {"title": "pwned"}}),
    );
    let (status, body) = node.post_message(&hijack, true).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error_code"], 2);

    let (status, v1) = node
        .get_json(&format!(
            "/api/v1/posts.json?types=blog&addresses={}",
            alice.address()
        ))
        .await;
    assert_eq!(status, 200, "{v1}");
    assert_eq!(v1["pagination_total"], 1, "{v1}");
    let post = &v1["posts"][0];
    assert_eq!(post["content"], json!({"title": "v2"}));
    assert_eq!(post["original_item_hash"], hash);
    assert_eq!(post["item_hash"], amend["item_hash"]);
    assert_eq!(post["original_type"], "blog");

    let (_, v0) = node
        .get_json("/api/v0/posts.json?cursor=&pagination=1")
        .await;
    assert_eq!(v0["posts"].as_array().unwrap().len(), 1);
    assert!(v0["next_cursor"].is_string(), "{v0}");
    let (_, all) = node.get_json("/api/v0/posts.json").await;
    assert_eq!(
        all["pagination_total"], 2,
        "amends are not listed as posts: {all}"
    );
}
