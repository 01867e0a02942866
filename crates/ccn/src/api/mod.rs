//! HTTP routes: parse the request, call the node's logic, map the result to JSON.

mod aggregates;
mod balances;
mod body;
mod messages;
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
        .route("/api/v0/storage/add_file", post(storage::add_file))
        .route("/api/v0/storage/add_json", post(storage::add_json))
        .route("/api/v0/storage/raw/{hash}", get(storage::raw))
        .route("/api/v0/aggregates/{address}", get(aggregates::get))
        .route("/api/v0/addresses/{address}/balance", get(balances::get))
        .route("/api/v0/price/estimate", post(prices::estimate))
        .route("/api/v0/price/{hash}", get(prices::get))
        .route("/api/ws0/messages", get(ws::messages))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .with_state(ccn)
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
