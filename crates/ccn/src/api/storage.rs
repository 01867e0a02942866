//! Files: `add_file` (multipart with an optional signed STORE, or a raw body),
//! `add_json`, and `raw/{hash}` (GET and HEAD).

use super::{State, body, messages::outcome_response};
use crate::Ccn;
use crate::error::{ApiError, code};
use crate::files::{
    FileStore, KIND_FILE, KIND_JSON, MAX_AUTHENTICATED_FILE_SIZE, MAX_UNAUTHENTICATED_FILE_SIZE,
    ReceivedFile,
};
use crate::intake::Outcome;
use crate::intake::envelope::ItemType;
use crate::store::files;
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

const MAX_METADATA_BYTES: usize = 1024 * 1024;

fn too_large(limit: u64, signed: bool) -> ApiError {
    let hint = if signed {
        String::new()
    } else {
        format!(
            "; files up to {} MiB are accepted with a signed STORE message in `metadata`",
            MAX_AUTHENTICATED_FILE_SIZE / (1024 * 1024)
        )
    };
    ApiError::too_large(format!(
        "file larger than {} MiB{hint}",
        limit / (1024 * 1024)
    ))
}

/// Undoes `Ccn::keep_file` for a file that only a rejected STORE wanted.
async fn forget_new_file(ccn: &Ccn, hash: &str) {
    let _writer = ccn.write_lock().await;
    if let Err(e) = files::delete(&ccn.db.pool, hash).await {
        tracing::warn!("cannot drop file record {hash}: {e}");
    }
    if let Err(e) = ccn.files.remove(hash).await {
        tracing::warn!("cannot remove file {hash}: {e}");
    }
}

pub async fn add_file(
    axum::extract::State(ccn): State,
    request: Request,
) -> Result<Response, ApiError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !is_multipart {
        let received = receive_raw(&ccn.files, request.into_body()).await?;
        ccn.keep_file(&received, KIND_FILE).await?;
        return Ok(Json(json!({"status": "success", "hash": received.hash})).into_response());
    }
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
    let mut received: Option<ReceivedFile> = None;
    let mut metadata: Option<Value> = None;
    let result =
        async {
            while let Some(mut field) = multipart
                .next_field()
                .await
                .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?
            {
                match field.name() {
                    Some("file") => {
                        let mut incoming = ccn.files.begin().await?;
                        loop {
                            let chunk = match field.chunk().await {
                                Ok(Some(chunk)) => chunk,
                                Ok(None) => break,
                                Err(e) => {
                                    incoming.abort().await;
                                    return Err(ApiError::bad_request(format!(
                                        "cannot read file: {e}"
                                    )));
                                }
                            };
                            if incoming.size() + chunk.len() as u64 > MAX_AUTHENTICATED_FILE_SIZE {
                                incoming.abort().await;
                                return Err(too_large(MAX_AUTHENTICATED_FILE_SIZE, true));
                            }
                            incoming.write(&chunk).await?;
                        }
                        if let Some(previous) = received.replace(incoming.finish().await?) {
                            FileStore::discard(&previous).await;
                        }
                    }
                    Some("metadata") => {
                        let mut bytes = Vec::new();
                        while let Some(chunk) = field.chunk().await.map_err(|e| {
                            ApiError::bad_request(format!("cannot read metadata: {e}"))
                        })? {
                            if bytes.len() + chunk.len() > MAX_METADATA_BYTES {
                                return Err(ApiError::too_large("metadata larger than 1 MiB"));
                            }
                            bytes.extend_from_slice(&chunk);
                        }
                        metadata = Some(body::parse_json(&bytes)?);
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        .await;
    if let Err(e) = result {
        if let Some(file) = &received {
            FileStore::discard(file).await;
        }
        return Err(e);
    }
    let Some(received) = received else {
        return Err(ApiError::unprocessable(
            "multipart body has no `file` field",
        ));
    };
    let Some(metadata) = metadata else {
        if received.size > MAX_UNAUTHENTICATED_FILE_SIZE {
            FileStore::discard(&received).await;
            return Err(too_large(MAX_UNAUTHENTICATED_FILE_SIZE, false));
        }
        ccn.keep_file(&received, KIND_FILE).await?;
        return Ok(Json(json!({"status": "success", "hash": received.hash})).into_response());
    };
    match store_with_message(&ccn, &received, &metadata).await {
        Ok(response) => Ok(response),
        Err(e) => {
            FileStore::discard(&received).await;
            Err(e)
        }
    }
}

/// A file with a signed STORE: the STORE must be valid and name this file; the
/// file is kept only if the STORE is not rejected.
async fn store_with_message(
    ccn: &Ccn,
    received: &ReceivedFile,
    metadata: &Value,
) -> Result<Response, ApiError> {
    let message = metadata.get("message").cloned().ok_or_else(|| {
        ApiError::unprocessable("metadata needs a `message` (a signed STORE)")
            .with_code(code::FORMAT)
    })?;
    let sync = metadata
        .get("sync")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let envelope = ccn.verify(&message).map_err(|r| ApiError::rejected(&r))?;
    if envelope.type_name() != "STORE" {
        return Err(ApiError::unprocessable(format!(
            "metadata message must be a STORE, got {}",
            envelope.type_name()
        ))
        .with_code(code::FORMAT));
    }
    if envelope.item_type != ItemType::Inline {
        return Err(
            ApiError::unprocessable("the STORE message in metadata must be inline")
                .with_code(code::FORMAT),
        );
    }
    let content: Value = serde_json::from_str(envelope.item_content.as_deref().unwrap_or(""))
        .map_err(|e| {
            ApiError::unprocessable(format!("STORE content is not JSON: {e}"))
                .with_code(code::FORMAT)
        })?;
    let named = content
        .get("item_hash")
        .and_then(Value::as_str)
        .unwrap_or("");
    if named != received.hash {
        return Err(ApiError::unprocessable(format!(
            "the STORE names file {named:?} but the uploaded file's hash is {}",
            received.hash
        ))
        .with_code(code::FORMAT));
    }
    let new = ccn.keep_file(received, KIND_FILE).await?;
    let outcome = ccn.submit(message, sync).await;
    if let Outcome::Rejected(_) = &outcome
        && new
    {
        forget_new_file(ccn, &received.hash).await;
    }
    let hash = received.hash.clone();
    let status = outcome.status();
    let response = outcome_response(outcome)?;
    let code = response.status();
    Ok((
        code,
        Json(json!({"status": "success", "hash": hash, "message_status": status})),
    )
        .into_response())
}

async fn receive_raw(store: &FileStore, body: Body) -> Result<ReceivedFile, ApiError> {
    let mut incoming = store.begin().await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                incoming.abort().await;
                return Err(ApiError::bad_request(format!("cannot read body: {e}")));
            }
        };
        if incoming.size() + chunk.len() as u64 > MAX_UNAUTHENTICATED_FILE_SIZE {
            incoming.abort().await;
            return Err(too_large(MAX_UNAUTHENTICATED_FILE_SIZE, false));
        }
        incoming.write(&chunk).await?;
    }
    Ok(incoming.finish().await?)
}

pub async fn add_json(
    axum::extract::State(ccn): State,
    request: Body,
) -> Result<Response, ApiError> {
    let bytes = body::read_limited(request, MAX_UNAUTHENTICATED_FILE_SIZE as usize).await?;
    body::parse_json(&bytes)?;
    let received = ccn.files.put(&bytes).await?;
    ccn.keep_file(&received, KIND_JSON).await?;
    Ok(Json(json!({"status": "success", "hash": received.hash})).into_response())
}

pub async fn raw(
    axum::extract::State(ccn): State,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    if !FileStore::is_valid_hash(&hash) {
        return Err(ApiError::bad_request(format!(
            "{hash:?} is not a sha256 file hash"
        )));
    }
    let path = ccn.files.path(&hash);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(format!("file {hash} not found")));
        }
        Err(e) => return Err(e.into()),
    };
    let size = file.metadata().await?.len();
    let stream = tokio_util::io::ReaderStream::new(file);
    let mut response = Body::from_stream(stream).into_response();
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{hash}\"")).map_err(ApiError::internal)?,
    );
    Ok(response)
}

fn file_metadata(file: &crate::store::messages::StoredFile) -> Value {
    json!({
        "ref": file.content_ref.clone().unwrap_or_else(|| file.store_hash.clone()),
        "owner": file.owner,
        "file_hash": file.file_hash,
        "size": file.size,
        "item_hash": file.store_hash,
    })
}

/// `GET /api/v0/storage/by-message-hash/{hash}`: the file a STORE points at.
pub async fn by_message_hash(
    axum::extract::State(ccn): State,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let file = crate::store::messages::file_of_store(&ccn.db.pool, &hash)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no processed STORE message {hash}")))?;
    Ok(Json(file_metadata(&file)))
}

/// `GET /api/v0/storage/by-ref/{ref}` or `by-ref/{owner}/{ref}`: the newest STORE with that `ref`.
pub async fn by_ref(
    axum::extract::State(ccn): State,
    Path(path): Path<String>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let params = super::query_map(&uri)?;
    let (owner, reference) = match (params.get("owner"), path.split_once('/')) {
        (Some(owner), _) => (Some(owner.as_str()), path.as_str()),
        (None, Some((owner, reference))) if owner.starts_with("0x") => (Some(owner), reference),
        _ => (None, path.as_str()),
    };
    let file = crate::store::messages::file_by_ref(&ccn.db.pool, reference, owner)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no file with ref {reference:?}")))?;
    Ok(Json(file_metadata(&file)))
}

/// `GET /api/v0/addresses/{address}/files`: the owner's stored files (page or cursor mode).
pub async fn files_of_address(
    axum::extract::State(ccn): State,
    Path(address): Path<String>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let params = super::query_map(&uri)?;
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        match params.get(name).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid {name}: {v:?}"))),
        }
    };
    let ascending = params
        .get("sort_order")
        .or(params.get("sortOrder"))
        .is_some_and(|v| v == "1");
    let per_page = number("pagination", 100)?.clamp(1, 1000);
    let files = crate::store::messages::files_of(&ccn.db.pool, &address, ascending).await?;
    if files.is_empty() {
        return Err(ApiError::not_found(format!("no files stored by {address}")));
    }
    let total_size: i64 = files.iter().map(|f| f.size).sum();
    let offset = match params.get("cursor") {
        Some(cursor) => number("cursor", 0)
            .map_err(|_| ApiError::bad_request(format!("invalid cursor {cursor:?}")))?,
        None => (number("page", 1)?.max(1) - 1) * per_page,
    };
    let page: Vec<Value> = files
        .iter()
        .skip(offset as usize)
        .take(per_page as usize)
        .map(|f| {
            json!({
                "file_hash": f.file_hash, "size": f.size, "type": "file",
                "created": f.created, "item_hash": f.store_hash,
            })
        })
        .collect();
    let next = offset + page.len() as u64;
    let next_cursor = (next < files.len() as u64).then(|| next.to_string());
    Ok(Json(json!({
        "address": address,
        "total_size": total_size as f64,
        "files": page,
        "next_cursor": next_cursor,
        "pagination_page": offset / per_page + 1,
        "pagination_total": files.len(),
        "pagination_per_page": per_page,
        "pagination_item": "files",
    })))
}
