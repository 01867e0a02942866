//! `POST /api/v0/messages`, `GET /api/v0/messages.json`, `GET /api/v0/messages/{hash}[/status]`.

use super::{State, body, iso_time, query_map};
use crate::error::{ApiError, code};
use crate::intake::Outcome;
use crate::store::messages::{self as stored, status};
use crate::store::query::{self, MessageFilter};
use crate::store::{pending, rejections};
use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub async fn post(axum::extract::State(ccn): State, request: Body) -> Result<Response, ApiError> {
    let bytes = body::read_limited(request, body::MAX_MESSAGE_BODY).await?;
    let body = body::parse_json(&bytes)?;
    let Some(message) = body.get("message").cloned() else {
        return Err(
            ApiError::unprocessable("body must be {\"sync\": bool, \"message\": {...}}")
                .with_code(code::FORMAT),
        );
    };
    let sync = match body.get("sync") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(sync)) => *sync,
        Some(_) => {
            return Err(ApiError::unprocessable("`sync` must be a boolean").with_code(code::FORMAT));
        }
    };
    outcome_response(ccn.submit(message, sync).await)
}

/// The answer to a submitted message: 200 processed, 202 pending, 410 forgotten,
/// 422 rejected (with its code).
pub(crate) fn outcome_response(outcome: Outcome) -> Result<Response, ApiError> {
    let publication = |ok: bool, failed: Vec<String>| json!({"status": if ok { "success" } else { "error" }, "failed": failed});
    match outcome {
        Outcome::Processed(_) => Ok((
            StatusCode::OK,
            Json(json!({
                "publication_status": publication(true, vec![]),
                "message_status": status::PROCESSED,
            })),
        )
            .into_response()),
        Outcome::Pending(reason) => {
            let mut body = json!({
                "publication_status": publication(true, vec![]),
                "message_status": status::PENDING,
            });
            if reason.code >= 0 {
                body["details"] = json!({"error_code": reason.code, "reason": reason.message});
            }
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Outcome::Forgotten(record) => {
            let mut error = ApiError::new(
                StatusCode::GONE,
                format!("message {} was forgotten", record.item_hash),
            );
            let mut extra = serde_json::Map::new();
            extra.insert("publication_status".into(), publication(true, vec![]));
            extra.insert("message_status".into(), json!(status::FORGOTTEN));
            extra.insert("forgotten_by".into(), json!(record.forgotten_by));
            error.extra = Some(extra);
            Err(error)
        }
        Outcome::Rejected(rejection) => {
            let mut error = ApiError::rejected(&rejection);
            let mut extra = serde_json::Map::new();
            extra.insert(
                "publication_status".into(),
                publication(false, vec![rejection.message.clone()]),
            );
            extra.insert("message_status".into(), json!(status::REJECTED));
            error.extra = Some(extra);
            Err(error)
        }
    }
}

pub async fn list(axum::extract::State(ccn): State, uri: Uri) -> Result<Json<Value>, ApiError> {
    let params = query_map(&uri)?;
    let (filter, page) = MessageFilter::from_params(&params).map_err(ApiError::bad_request)?;
    // Cursor mode (used by the SDK's iterators): the cursor is the offset of the next page.
    if let Some(cursor) = params.get("cursor") {
        let offset: u64 = if cursor.is_empty() {
            0
        } else {
            cursor
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid cursor {cursor:?}")))?
        };
        let (messages, total) = query::find(&ccn.db.pool, &filter, page.per_page, offset).await?;
        let next = offset + messages.len() as u64;
        let next_cursor = (next < total as u64 && !messages.is_empty()).then(|| next.to_string());
        return Ok(Json(json!({
            "messages": messages.iter().map(|m| m.to_api_json()).collect::<Vec<_>>(),
            "next_cursor": next_cursor,
            "pagination_per_page": page.per_page,
            "pagination_item": "messages",
        })));
    }
    let (messages, total) =
        query::find(&ccn.db.pool, &filter, page.per_page, page.offset()).await?;
    Ok(Json(json!({
        "messages": messages.iter().map(|m| m.to_api_json()).collect::<Vec<_>>(),
        "pagination_page": page.page,
        "pagination_total": total,
        "pagination_per_page": page.per_page,
        "pagination_item": "messages",
    })))
}

fn check_hash(hash: &str) -> Result<(), ApiError> {
    if crate::intake::envelope::is_native_hash(hash) || crate::intake::envelope::is_ipfs_cid(hash) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{hash:?} is not a message hash (sha256 hex or IPFS CID)"
        )))
    }
}

/// The message and its status, in the shape the SDKs read.
async fn describe(ccn: &crate::Ccn, hash: &str) -> Result<Value, ApiError> {
    check_hash(hash)?;
    if let Some(record) = stored::get(&ccn.db.pool, hash).await? {
        let mut body = json!({
            "status": record.status,
            "item_hash": record.item_hash,
            "reception_time": iso_time(record.reception_time),
        });
        if record.status == status::FORGOTTEN {
            body["message"] = record.to_forgotten_json();
            body["forgotten_by"] = json!(record.forgotten_by);
        } else {
            body["message"] = record.to_api_json();
        }
        return Ok(body);
    }
    if let Some(pending) = pending::get(&ccn.db.pool, hash).await? {
        let mut message = pending.message.clone();
        if let Some(time) = message.get("time").and_then(Value::as_f64) {
            message["time"] = json!(iso_time(time));
        }
        let mut body = json!({
            "status": status::PENDING,
            "item_hash": pending.item_hash,
            "reception_time": iso_time(pending.reception_time),
            "messages": [message],
        });
        if pending.last_code >= 0 {
            body["details"] =
                json!({"error_code": pending.last_code, "reason": pending.last_error});
        }
        return Ok(body);
    }
    if let Some(rejected) = rejections::get(&ccn.db.pool, hash).await? {
        return Ok(json!({
            "status": status::REJECTED,
            "item_hash": rejected.item_hash,
            "reception_time": iso_time(rejected.reception_time),
            "message": rejected.message,
            "error_code": rejected.error_code,
            "details": {"errors": [rejected.details]},
        }));
    }
    Err(ApiError::not_found(format!("message {hash} not found")))
}

pub async fn get(
    axum::extract::State(ccn): State,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    describe(&ccn, &hash).await.map(Json)
}

pub async fn status(
    axum::extract::State(ccn): State,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let full = describe(&ccn, &hash).await?;
    let mut body = json!({
        "status": full["status"],
        "item_hash": full["item_hash"],
        "reception_time": full["reception_time"],
    });
    for field in ["error_code", "details", "forgotten_by"] {
        if let Some(value) = full.get(field) {
            body[field] = value.clone();
        }
    }
    Ok(Json(body))
}
