//! HTTP routes: parse the request, call the node's logic, map the result to JSON.

mod aggregates;
mod balances;
mod body;
mod messages;
mod posts;
mod prices;
mod storage;
mod ws;

use crate::Ccn;
use crate::error::ApiError;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::sync::Arc;

pub type State = axum::extract::State<Arc<Ccn>>;

/// All routes of the CCN API. Bodies are read by the handlers with their own
/// limits (so oversized bodies get a JSON 413), hence no default limit here.
pub fn router(ccn: Arc<Ccn>) -> Router {
    Router::new()
        .route("/api/v0/messages", post(messages::post))
        .route("/api/v0/messages.json", get(messages::list))
        .route("/api/v0/messages/{hash}", get(messages::get))
        .route("/api/v0/messages/{hash}/status", get(messages::status))
        .route("/api/v0/posts.json", get(posts::v0))
        .route("/api/v1/posts.json", get(posts::v1))
        .route("/api/v0/storage/add_file", post(storage::add_file))
        .route("/api/v0/storage/add_json", post(storage::add_json))
        .route("/api/v0/storage/raw/{hash}", get(storage::raw))
        .route(
            "/api/v0/storage/by-message-hash/{hash}",
            get(storage::by_message_hash),
        )
        .route("/api/v0/storage/by-ref/{*reference}", get(storage::by_ref))
        .route(
            "/api/v0/addresses/{address}/files",
            get(storage::files_of_address),
        )
        .route("/api/v0/aggregates/{address}", get(aggregates::get))
        .route("/api/v0/addresses/{address}/balance", get(balances::get))
        .route("/api/v0/price/estimate", post(prices::estimate))
        .route("/api/v0/price/{hash}", get(prices::get))
        .route("/api/ws0/messages", get(ws::messages))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(json_errors))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ccn)
}

/// Extractor rejections of axum (bad path, missing upgrade headers…) answer in
/// plain text; this turns every error that is not JSON yet into `{"error": "..."}`.
async fn json_errors(response: axum::response::Response) -> axum::response::Response {
    let is_error = response.status().is_client_error() || response.status().is_server_error();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_error || is_json {
        return response;
    }
    let status = response.status();
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    axum::response::IntoResponse::into_response(ApiError::new(status, message))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Query parameters as a map; a malformed query string is a 400 in JSON.
pub(crate) fn query_map(
    uri: &axum::http::Uri,
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    axum::extract::Query::try_from_uri(uri)
        .map(|axum::extract::Query(map)| map)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
}

pub(crate) fn iso_time(epoch: f64) -> String {
    chrono::DateTime::from_timestamp_micros((epoch * 1e6) as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
