//! Reading request bodies with a size limit, answering 413/422 in JSON.

use crate::error::{ApiError, code};
use axum::body::Body;
use futures::StreamExt;

/// Largest body of `POST /api/v0/messages` (an inline item is at most 200,000
/// characters; escaping can double it).
pub const MAX_MESSAGE_BODY: usize = 1024 * 1024;

pub async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(
                ApiError::too_large(format!("request body larger than {limit} bytes"))
                    .with_code(code::FORMAT),
            );
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::unprocessable(format!("malformed JSON body: {e}")).with_code(code::FORMAT)
    })
}
