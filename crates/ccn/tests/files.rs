//! Files: multipart and raw uploads, add_json, raw downloads, STOREs with their file.

mod common;

use common::{TestNode, Wallet, sha256_hex};
use serde_json::{Value, json};

on_both_backends!(
    upload_and_download,
    upload_with_signed_store,
    large_file_needs_a_signed_store,
    store_rejected_with_its_file_keeps_nothing,
    store_after_file_is_processed,
    file_lookups_by_message_ref_and_owner,
    local_file_is_stored_as_an_upload,
);

async fn upload_and_download(node: TestNode) {
    let bytes = b"hello aleph".to_vec();
    let hash = node.upload(bytes.clone()).await;
    assert_eq!(hash, sha256_hex(&bytes));
    let response = node
        .http
        .get(node.url(&format!("/api/v0/storage/raw/{hash}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let head = node
        .http
        .head(node.url(&format!("/api/v0/storage/raw/{hash}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(
        head.headers()["content-length"],
        bytes.len().to_string().as_str()
    );

    // A plain body.
    let raw = node
        .http
        .post(node.url("/api/v0/storage/add_file"))
        .body(b"raw body".to_vec())
        .send()
        .await
        .unwrap();
    let raw: Value = raw.json().await.unwrap();
    assert_eq!(raw["status"], "success");
    assert_eq!(raw["hash"], sha256_hex(b"raw body"));

    // JSON documents.
    let doc = br#"{"a": [1, 2]}"#;
    let response = node
        .http
        .post(node.url("/api/v0/storage/add_json"))
        .body(doc.to_vec())
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["hash"], sha256_hex(doc));
    let response = node
        .http
        .post(node.url("/api/v0/storage/add_json"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);

    assert_eq!(node.rows().await.files, 3);
    let (status, body) = node
        .get_json(&format!("/api/v0/storage/raw/{}", "e".repeat(64)))
        .await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    let (status, _) = node
        .get_json("/api/v0/storage/raw/..%2F..%2Fetc%2Fpasswd")
        .await;
    assert_eq!(status, 400);
}

async fn upload_with_signed_store(node: TestNode) {
    let alice = Wallet::random();
    let bytes = b"stored file".to_vec();
    let store_hash = node.upload_stored(&alice, bytes.clone()).await;
    let (_, got) = node
        .get_json(&format!("/api/v0/messages/{store_hash}"))
        .await;
    assert_eq!(got["status"], "processed");
    assert_eq!(got["message"]["content"]["item_hash"], sha256_hex(&bytes));
    assert_eq!(got["message"]["content"]["size"], bytes.len());
    // The official types read a STORE as served, with the fields the CCN adds.
    let parsed: aleph_types::message::Message =
        serde_json::from_value(got["message"].clone()).unwrap();
    parsed.verify_signature().unwrap();
    let (_, by_content) = node
        .get_json(&format!(
            "/api/v0/messages.json?contentHashes={}",
            sha256_hex(&bytes)
        ))
        .await;
    assert_eq!(by_content["pagination_total"], 1);
}

async fn large_file_needs_a_signed_store(node: TestNode) {
    let alice = Wallet::random();
    let big = vec![1u8; 26 * 1024 * 1024];
    // Beyond the free size, a file is held for at 1/3 ALEPH per MiB: 26 MiB need 8.67.
    let store = alice.store(&sha256_hex(&big));
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(big.clone()))
        .text(
            "metadata",
            json!({"message": store, "sync": true}).to_string(),
        );
    let before = node.rows().await;
    let response = node
        .http
        .post(node.url("/api/v0/storage/add_file"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], 5, "{body}");
    assert_eq!(node.rows().await, before);

    node.fund(&alice, 9.0, 0).await;
    let store_hash = node.upload_stored(&alice, big.clone()).await;
    let (_, balance) = node
        .get_json(&format!("/api/v0/addresses/{}/balance", alice.address()))
        .await;
    assert!(
        (balance["locked_amount"].as_f64().unwrap() - 26.0 / 3.0).abs() < 1e-6,
        "{balance}"
    );
    let (_, got) = node
        .get_json(&format!("/api/v0/messages/{store_hash}"))
        .await;
    assert_eq!(got["message"]["content"]["size"], big.len());
    let head = node
        .http
        .head(node.url(&format!("/api/v0/storage/raw/{}", sha256_hex(&big))))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.headers()["content-length"],
        big.len().to_string().as_str()
    );

    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![2u8; 26 * 1024 * 1024]),
    );
    let response = node
        .http
        .post(node.url("/api/v0/storage/add_file"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
}

async fn store_rejected_with_its_file_keeps_nothing(node: TestNode) {
    let alice = Wallet::random();
    let mallory = Wallet::random();
    let bytes = b"orphan".to_vec();
    let mut store = alice.store(&sha256_hex(&bytes));
    mallory.sign(&mut store);
    let before = node.rows().await;
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(bytes.clone()))
        .text(
            "metadata",
            json!({"message": store, "sync": true}).to_string(),
        );
    let response = node
        .http
        .post(node.url("/api/v0/storage/add_file"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], 1);
    assert_eq!(node.rows().await, before);
    let (status, _) = node
        .get_json(&format!("/api/v0/storage/raw/{}", sha256_hex(&bytes)))
        .await;
    assert_eq!(status, 404);

    // A STORE naming another file than the one uploaded.
    let wrong = alice.store(&sha256_hex(b"another file"));
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(bytes.clone()))
        .text(
            "metadata",
            json!({"message": wrong, "sync": true}).to_string(),
        );
    let response = node
        .http
        .post(node.url("/api/v0/storage/add_file"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    assert_eq!(node.rows().await, before);
}

async fn store_after_file_is_processed(node: TestNode) {
    let alice = Wallet::random();
    let hash = node.upload(b"first the file".to_vec()).await;
    let store = alice.store(&hash);
    node.accept(&store).await;
    let (_, got) = node
        .get_json(&format!(
            "/api/v0/messages/{}",
            store["item_hash"].as_str().unwrap()
        ))
        .await;
    assert_eq!(got["message"]["content"]["size"], 14);
}

async fn file_lookups_by_message_ref_and_owner(node: TestNode) {
    let alice = Wallet::random();
    let first = node.upload_stored(&alice, b"v1".to_vec()).await;
    let v2 = node.upload(b"version 2".to_vec()).await;
    let named = alice.message(
        "STORE",
        json!({"item_type": "storage", "item_hash": v2, "ref": "reports/q4"}),
    );
    node.accept(&named).await;

    let (status, meta) = node
        .get_json(&format!("/api/v0/storage/by-message-hash/{first}"))
        .await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["file_hash"], sha256_hex(b"v1"));
    assert_eq!(meta["size"], 2);
    assert_eq!(meta["owner"], json!(alice.address()));

    let (status, by_ref) = node
        .get_json(&format!(
            "/api/v0/storage/by-ref/{}/reports/q4",
            alice.address()
        ))
        .await;
    assert_eq!(status, 200, "{by_ref}");
    assert_eq!(by_ref["file_hash"], v2);
    assert_eq!(by_ref["ref"], "reports/q4");
    let (_, by_ref) = node
        .get_json(&format!(
            "/api/v0/storage/by-ref/reports/q4?owner={}",
            alice.address()
        ))
        .await;
    assert_eq!(by_ref["file_hash"], v2);
    let (status, _) = node
        .get_json(&format!(
            "/api/v0/storage/by-ref/{}/reports/q4",
            Wallet::random().address()
        ))
        .await;
    assert_eq!(status, 404);

    let (status, listed) = node
        .get_json(&format!(
            "/api/v0/addresses/{}/files?cursor=&pagination=1",
            alice.address()
        ))
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["files"][0]["file_hash"], v2);
    assert_eq!(listed["total_size"], 11.0);
    let cursor = listed["next_cursor"].as_str().unwrap().to_string();
    let (_, rest) = node
        .get_json(&format!(
            "/api/v0/addresses/{}/files?cursor={cursor}&pagination=1",
            alice.address()
        ))
        .await;
    assert_eq!(rest["files"][0]["item_hash"], first);
    assert!(rest["next_cursor"].is_null());
    let (status, _) = node
        .get_json(&format!(
            "/api/v0/addresses/{}/files",
            Wallet::random().address()
        ))
        .await;
    assert_eq!(status, 404);
}

/// `Ccn::add_local_file`: the operator's way in, with no size limit, recorded as
/// an upload; a STORE naming the file is then processed.
async fn local_file_is_stored_as_an_upload(node: TestNode) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runtime.squashfs");
    let bytes = b"a local runtime".to_vec();
    std::fs::write(&path, &bytes).unwrap();
    let before = node.rows().await;

    let hash = node.ccn().add_local_file(&path).await.unwrap();
    assert_eq!(hash, sha256_hex(&bytes));
    let response = node
        .http
        .get(node.url(&format!("/api/v0/storage/raw/{hash}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let record = aleph_ccn::store::files::get(&node.ccn().db.pool, &hash)
        .await
        .unwrap()
        .expect("the file is recorded");
    assert_eq!(record.size, bytes.len() as i64);
    assert_eq!(record.kind, "file");
    // Again: the same hash, one file.
    assert_eq!(node.ccn().add_local_file(&path).await.unwrap(), hash);
    assert_eq!(node.rows().await.files, before.files + 1);

    let alice = Wallet::random();
    let store = alice.store(&hash);
    node.accept(&store).await;
    let (_, got) = node
        .get_json(&format!(
            "/api/v0/messages/{}",
            store["item_hash"].as_str().unwrap()
        ))
        .await;
    assert_eq!(got["message"]["content"]["size"], bytes.len());

    // Past the largest upload (a sparse file: zeros, cheap to write and read).
    let big_path = dir.path().join("big");
    let big_size = aleph_ccn::files::MAX_AUTHENTICATED_FILE_SIZE + 1;
    std::fs::File::create(&big_path)
        .unwrap()
        .set_len(big_size)
        .unwrap();
    let big = node.ccn().add_local_file(&big_path).await.unwrap();
    let head = node
        .http
        .head(node.url(&format!("/api/v0/storage/raw/{big}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(
        head.headers()["content-length"],
        big_size.to_string().as_str()
    );

    // A missing file, or one that fails while read (a directory opens but
    // cannot be read), is an error and leaves nothing behind.
    let rows = node.rows().await;
    for path in [dir.path().join("missing"), dir.path().to_path_buf()] {
        assert!(node.ccn().add_local_file(&path).await.is_err(), "{path:?}");
    }
    assert_eq!(node.rows().await, rows);
    let temp = node.ccn().files.root().join("tmp");
    assert_eq!(std::fs::read_dir(temp).unwrap().count(), 0);
}
