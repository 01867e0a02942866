//! HTTP routes: parse, call the state, answer JSON; errors are `{"error": ...}`.
//!
//! - `POST /api/v1/heartbeat` (signed `Aleph-EIP191-V1` by the node's owner)
//! - `GET /api/v1/vms?owner=&vm_hash=&page=&per_page=`
//! - `GET /api/v1/nodes`, `GET /api/v1/nodes/{hash}`
//! - `GET /api/v0/allocation/{vm_hash}`
//! - `GET /api/v1/status`

use crate::Inner;
use crate::state::HeartbeatRefusal;
use aleph_protocol::auth::eip191_v1;
use aleph_protocol::scheduler::{Heartbeat, HeartbeatReply, NodeList};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Default and largest `per_page` of `/api/v1/vms`.
pub const DEFAULT_PER_PAGE: u64 = 50;
pub const MAX_PER_PAGE: u64 = 500;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {error}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {error}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

pub fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/api/v1/heartbeat", post(heartbeat))
        .route("/api/v1/vms", get(vms))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{hash}", get(node))
        .route("/api/v0/allocation/{vm_hash}", get(allocation))
        .route("/api/v1/status", get(status))
        .fallback(|uri: Uri| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no route for {}", uri.path()),
            )
        })
        .layer(DefaultBodyLimit::max(eip191_v1::MAX_BODY))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(inner)
}

/// axum's own rejections (body too large, wrong method…) answer in plain text; this
/// turns every error that is not JSON yet into `{"error": "..."}`.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    ApiError::new(status, message).into_response()
}

async fn heartbeat(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let now = chrono::Utc::now().timestamp();
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let auth_error = |e: eip191_v1::AuthError| {
        ApiError::new(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            e.to_string(),
        )
    };
    let verified = eip191_v1::verify(header, "POST", uri.path(), uri.query(), &body, now, &[])
        .map_err(auth_error)?;
    let heartbeat: Heartbeat = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid heartbeat: {e}")))?;
    let mut core = inner.core.lock().await;
    core.check_heartbeat(&heartbeat.node_hash, &verified.signer)
        .map_err(|refusal| match refusal {
            HeartbeatRefusal::UnknownNode(_) => {
                ApiError::new(StatusCode::NOT_FOUND, refusal.to_string())
            }
            HeartbeatRefusal::NotOwner { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, refusal.to_string())
            }
        })?;
    inner.replay.check(&verified, now).map_err(auth_error)?;
    let instant = Instant::now();
    let was_lost = core.heartbeat(&heartbeat, instant);
    core.place_pending(instant);
    inner.commit(&mut core).await.map_err(ApiError::internal)?;
    let node = core
        .node(&heartbeat.node_hash)
        .ok_or_else(|| ApiError::internal("node vanished"))?;
    let reply = HeartbeatReply {
        lease_seconds: core.settings().lease_seconds,
        allocation_version: node.allocation_version,
        lost: was_lost,
    };
    if heartbeat.allocation_version < node.allocation_version
        && let Some(job) = core.push_job(&heartbeat.node_hash)
    {
        inner.pushers.send(job);
    }
    Ok(Json(reply))
}

fn query_map(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    axum::extract::Query::try_from_uri(uri)
        .map(|axum::extract::Query(map)| map)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid query string: {e}"),
            )
        })
}

fn number(params: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, ApiError> {
    match params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid {name}: {v:?}"))),
    }
}

async fn vms(State(inner): State<Arc<Inner>>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let params = query_map(&uri)?;
    let page = number(&params, "page", 1)?;
    let per_page = number(&params, "per_page", DEFAULT_PER_PAGE)?;
    if page == 0 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "page starts at 1"));
    }
    if per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("per_page must be 1..={MAX_PER_PAGE}"),
        ));
    }
    let filter = |name: &str| params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let core = inner.core.lock().await;
    let page = core.vm_page(filter("owner"), filter("vm_hash"), page, per_page);
    Ok(Json(
        serde_json::to_value(page).map_err(ApiError::internal)?,
    ))
}

async fn nodes(State(inner): State<Arc<Inner>>) -> Json<NodeList> {
    let core = inner.core.lock().await;
    Json(NodeList {
        resource_nodes: core.node_entries(),
    })
}

async fn node(
    State(inner): State<Arc<Inner>>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let core = inner.core.lock().await;
    let node = core
        .node(&hash)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no node {hash}")))?;
    Ok(Json(core.node_entry(node)).into_response())
}

async fn allocation(
    State(inner): State<Arc<Inner>>,
    Path(vm_hash): Path<String>,
) -> Result<Response, ApiError> {
    let core = inner.core.lock().await;
    match core.allocation_entry(&vm_hash) {
        Some(entry) => Ok(Json(entry).into_response()),
        None => {
            let why = match core.vm(&vm_hash) {
                None => format!("{vm_hash} is not a persistent VM known to this scheduler"),
                Some(vm) => format!(
                    "{vm_hash} is not allocated ({}{})",
                    vm.status,
                    vm.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
            };
            Err(ApiError::new(StatusCode::NOT_FOUND, why))
        }
    }
}

async fn status(State(inner): State<Arc<Inner>>) -> Json<Value> {
    let core = inner.core.lock().await;
    let (nodes, vms) = core.counts();
    Json(json!({
        "address": inner.signer.address(),
        "ccn": inner.config.ccn_url,
        "allocation_version": core.version(),
        "grace_seconds": core.settings().grace.as_secs_f64(),
        "lease_seconds": core.settings().lease_seconds,
        "policy": core.settings().policy,
        "nodes": nodes,
        "vms": vms,
    }))
}
