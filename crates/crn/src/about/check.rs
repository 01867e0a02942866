//! `/status/check/fastapi`: runs the diagnostic program (`crates/crn/diagnostic/`)
//! through the same path as user requests and checks one feature per route. A failed
//! check is reported as failed, never skipped: `internet` is true only when the
//! diagnostic program asked for the internet (`environment.internet`) and its VM
//! reaches 9.9.9.9 (the devnet publishes it without, so as not to touch the host's
//! network for a status check).

use crate::pool::Pool;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::sync::Arc;

async fn call(
    pool: &Arc<Pool>,
    hash: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, Value)> {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_string())))
        .ok()?;
    let (response, _) = pool.forward(hash, request).await.ok()?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Each check by name, and whether all passed.
pub async fn fastapi(pool: &Arc<Pool>, hash: &str) -> (bool, Value) {
    let label = aleph_protocol::hostname::encode(hash).unwrap_or_default();
    let mut checks = serde_json::Map::new();
    let index = call(pool, hash, "GET", "/", "").await;
    checks.insert(
        "index".into(),
        json!(matches!(&index, Some((200, v)) if v["diagnostic"] == true)),
    );
    let environ = call(pool, hash, "GET", "/environ", "").await;
    checks.insert(
        "environ".into(),
        json!(matches!(&environ, Some((200, v)) if v.is_object() && v.get("PATH").is_some())),
    );
    let hostname = call(pool, hash, "GET", "/hostname", "").await;
    checks.insert(
        "hostname".into(),
        json!(matches!(&hostname, Some((200, v)) if v["hostname"] == label.as_str())),
    );
    let lifespan = call(pool, hash, "GET", "/lifespan", "").await;
    checks.insert(
        "lifespan".into(),
        json!(matches!(&lifespan, Some((200, v)) if v["started"] == true)),
    );
    let echo = call(pool, hash, "POST", "/echo?check=1", "ping").await;
    checks.insert(
        "post_body_and_query".into(),
        json!(matches!(&echo, Some((200, v)) if v["body"] == "ping" && v["query"]["check"] == "1")),
    );
    let first = call(pool, hash, "GET", "/state/increment", "").await;
    let second = call(pool, hash, "GET", "/state/increment", "").await;
    let counter = |r: &Option<(u16, Value)>| r.as_ref().and_then(|(_, v)| v["counter"].as_u64());
    checks.insert(
        "warm_state".into(),
        json!(matches!((counter(&first), counter(&second)), (Some(a), Some(b)) if b == a + 1)),
    );
    let raised = call(pool, hash, "GET", "/raise", "").await;
    checks.insert(
        "app_error_is_500".into(),
        json!(matches!(raised, Some((500, _)))),
    );
    let internet = call(pool, hash, "GET", "/internet", "").await;
    checks.insert(
        "internet".into(),
        json!(matches!(&internet, Some((200, v)) if v["result"] == true)),
    );
    let all = checks.values().all(|v| v == &json!(true));
    (all, Value::Object(checks))
}
