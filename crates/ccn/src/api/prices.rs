//! `GET /api/v0/price/{hash}` and `POST /api/v0/price/estimate`.

use super::{State, body};
use crate::Ccn;
use crate::error::{ApiError, code};
use crate::intake::envelope::{self, ItemType};
use crate::pricing::{self, Cost};
use crate::store::messages::{self, status};
use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use serde_json::{Map, Value};

async fn cost_of(
    ccn: &Ccn,
    message_type: &str,
    content: &Map<String, Value>,
) -> Result<Cost, ApiError> {
    match message_type {
        "PROGRAM" | "INSTANCE" => Ok(pricing::vm_cost(message_type, content)),
        "STORE" => {
            let size = match content.get("size").and_then(Value::as_u64) {
                Some(size) => size,
                None => {
                    let hash = content
                        .get("item_hash")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    ccn.files.size(hash).await.unwrap_or(0)
                }
            };
            Ok(pricing::file_cost(size, content))
        }
        other => Err(ApiError::bad_request(format!(
            "{other} messages have no price (only PROGRAM, INSTANCE and STORE)"
        ))),
    }
}

pub async fn get(
    axum::extract::State(ccn): State,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = messages::get(&ccn.db.pool, &hash)
        .await?
        .filter(|r| r.status == status::PROCESSED)
        .ok_or_else(|| ApiError::not_found(format!("no processed message {hash}")))?;
    let content = record
        .content
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    Ok(Json(
        cost_of(&ccn, &record.message_type, &content)
            .await?
            .to_json(),
    ))
}

/// Prices a message without checking its signature or storing it.
pub async fn estimate(
    axum::extract::State(ccn): State,
    request: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = body::read_limited(request, body::MAX_MESSAGE_BODY).await?;
    let body = body::parse_json(&bytes)?;
    let message = body.get("message").unwrap_or(&body);
    let envelope = envelope::parse(message).map_err(|r| ApiError::rejected(&r))?;
    let content_bytes = match envelope.item_type {
        ItemType::Inline => envelope
            .item_content
            .clone()
            .unwrap_or_default()
            .into_bytes(),
        ItemType::Storage => ccn.files.read(&envelope.item_hash).await?.ok_or_else(|| {
            ApiError::unprocessable("content file not found").with_code(code::CONTENT_UNAVAILABLE)
        })?,
        ItemType::Ipfs => {
            return Err(
                ApiError::unprocessable("IPFS content is not available on this node")
                    .with_code(code::CONTENT_UNAVAILABLE),
            );
        }
    };
    let content = crate::intake::content::parse(envelope.message_type, &content_bytes)
        .map_err(|r| ApiError::rejected(&r))?;
    Ok(Json(
        cost_of(&ccn, envelope.type_name(), &content.value)
            .await?
            .to_json(),
    ))
}
