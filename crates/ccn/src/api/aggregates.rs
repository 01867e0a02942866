//! `GET /api/v0/aggregates/{address}.json?keys=a,b`.

use super::{State, query_map};
use crate::error::ApiError;
use crate::store::aggregates;
use axum::Json;
use axum::extract::Path;
use axum::http::Uri;
use serde_json::{Value, json};

pub async fn get(
    axum::extract::State(ccn): State,
    Path(file): Path<String>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let Some(address) = file.strip_suffix(".json") else {
        return Err(ApiError::not_found(format!(
            "no route for {}: use /api/v0/aggregates/{{address}}.json",
            uri.path()
        )));
    };
    let params = query_map(&uri)?;
    let keys: Vec<String> = params
        .get("keys")
        .map(|k| {
            k.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let data = aggregates::get(&ccn.db.pool, address, &keys).await?;
    if data.is_empty() {
        return Err(ApiError::not_found(if keys.is_empty() {
            format!("no aggregate found for {address}")
        } else {
            format!("no aggregate {} found for {address}", keys.join(", "))
        }));
    }
    Ok(Json(json!({"address": address, "data": data})))
}
