//! A small client for the CCN HTTP API (`/api/v0/...`): only the calls the
//! commands make, each returning the CCN's JSON, and every non-success answer
//! turned into a [`CcnError`] that keeps the CCN's words and rejection code.

use crate::rejection;
use aleph_types::message::pending::PendingMessage;
use anyhow::{Context, Result};
use futures::{Stream, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use serde_json::{Value, json};
use std::path::Path;

/// A CCN's answer that is not a success.
#[derive(Debug)]
pub struct CcnError {
    pub http_status: u16,
    pub error: String,
    /// The rejection code, when the CCN gave one (see [`rejection::meaning`]).
    pub code: Option<i64>,
    pub details: Option<Value>,
}

impl std::fmt::Display for CcnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(
                f,
                "the CCN rejected the request with {}: {}",
                rejection::describe(code),
                self.error
            )?,
            None => write!(
                f,
                "the CCN answered HTTP {}: {}",
                self.http_status, self.error
            )?,
        }
        match &self.details {
            Some(details) if !details.is_null() => write!(f, " (details: {details})"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for CcnError {}

impl CcnError {
    /// Reads the fields a CCN error body may carry: `{"error", "error_code" |
    /// "code", "details"}`; a body that is not JSON becomes the message.
    fn from_body(http_status: u16, body: &str) -> Self {
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).cloned();
        let code = field("error_code")
            .or_else(|| field("code"))
            .and_then(|c| c.as_i64());
        let error = field("error")
            .or_else(|| field("message"))
            .map(|e| match e {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .unwrap_or_else(|| {
                let trimmed = body.trim();
                if trimmed.is_empty() {
                    http_reason(http_status)
                } else {
                    trimmed.to_owned()
                }
            });
        Self {
            http_status,
            error,
            code,
            details: field("details"),
        }
    }
}

fn http_reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_lowercase()
}

/// What the CCN said about a posted message that it did not reject.
pub struct Accepted {
    /// `processed` or `pending`.
    pub status: String,
    /// Why a pending message waits (a missing target or file), as the CCN put it.
    pub pending_reason: Option<String>,
}

impl Accepted {
    /// `processed`, or `pending: code 501 (FORGET target not found): ...`.
    pub fn describe(&self) -> String {
        match &self.pending_reason {
            Some(reason) => format!("{}: {reason}", self.status),
            None => self.status.clone(),
        }
    }
}

pub struct CcnClient {
    base: String,
    http: reqwest::Client,
}

impl CcnClient {
    pub fn new(base_url: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("aleph-rust-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts a signed message and waits until the CCN has processed it.
    pub async fn post_message(&self, message: &PendingMessage) -> Result<Accepted> {
        let response = self
            .http
            .post(self.url("/api/v0/messages"))
            .json(&json!({"sync": true, "message": message}))
            .send()
            .await
            .with_context(|| format!("cannot reach the CCN at {}", self.base))?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            return Err(self
                .rejection_of(&message.item_hash.to_string(), status.as_u16(), &body)
                .await
                .into());
        }
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let status = answer["message_status"]
            .as_str()
            .unwrap_or(if status == reqwest::StatusCode::ACCEPTED {
                "pending"
            } else {
                "processed"
            })
            .to_owned();
        let details = &answer["details"];
        let pending_reason = match (details["error_code"].as_i64(), details["reason"].as_str()) {
            (Some(code), Some(reason)) => Some(format!("{}: {reason}", rejection::describe(code))),
            (Some(code), None) => Some(rejection::describe(code)),
            (None, Some(reason)) => Some(reason.to_owned()),
            (None, None) => None,
        };
        Ok(Accepted {
            status,
            pending_reason,
        })
    }

    /// Turns a refused post into an error with its rejection code: from the
    /// answer itself, or else from the message's recorded status (the public
    /// CCN answers a rejected post with its publication status only).
    async fn rejection_of(&self, item_hash: &str, http_status: u16, body: &str) -> CcnError {
        let mut error = CcnError::from_body(http_status, body);
        if error.code.is_some() {
            return error;
        }
        if let Ok(Some(recorded)) = self.message(item_hash).await
            && recorded["status"] == "rejected"
        {
            error.code = recorded["error_code"].as_i64();
            if error.details.is_none() {
                error.details = recorded.get("details").cloned();
            }
        }
        error
    }

    /// `GET /api/v0/messages/{hash}`; `None` when the CCN does not know it.
    pub async fn message(&self, item_hash: &str) -> Result<Option<Value>> {
        let response = self
            .get(&format!("/api/v0/messages/{item_hash}"), &[])
            .await?;
        match response {
            Answer::NotFound => Ok(None),
            Answer::Json(value) => Ok(Some(value)),
        }
    }

    /// `GET /api/v0/messages.json` with the given filters.
    pub async fn messages(&self, query: &[(&str, String)]) -> Result<Value> {
        match self.get("/api/v0/messages.json", query).await? {
            Answer::Json(value) => Ok(value),
            Answer::NotFound => Ok(json!({"messages": []})),
        }
    }

    /// The aggregate `key` of `address`, `None` when it does not exist.
    pub async fn aggregate(&self, address: &str, key: &str) -> Result<Option<Value>> {
        let path = format!("/api/v0/aggregates/{address}.json");
        match self.get(&path, &[("keys", key.to_owned())]).await? {
            Answer::NotFound => Ok(None),
            Answer::Json(value) => Ok(value.get("data").and_then(|d| d.get(key)).cloned()),
        }
    }

    /// `GET /api/v0/addresses/{address}/balance`.
    pub async fn balance(&self, address: &str) -> Result<Value> {
        match self
            .get(&format!("/api/v0/addresses/{address}/balance"), &[])
            .await?
        {
            Answer::Json(value) => Ok(value),
            Answer::NotFound => Ok(json!({"address": address, "balance": 0})),
        }
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Answer> {
        let response = self
            .http
            .get(self.url(path))
            .query(query)
            .send()
            .await
            .with_context(|| format!("cannot reach the CCN at {}", self.base))?;
        let status = response.status();
        let body = response.text().await?;
        // A forgotten message (410) still has a status document worth showing.
        if status.is_success() || status == reqwest::StatusCode::GONE {
            return serde_json::from_str(&body)
                .map(Answer::Json)
                .with_context(|| format!("the CCN sent invalid JSON for {path}"));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Answer::NotFound);
        }
        Err(CcnError::from_body(status.as_u16(), &body).into())
    }

    /// Streams the file at `path` to `storage/add_file` together with its
    /// signed STORE message, advancing `progress` as bytes leave.
    pub async fn upload_file(
        &self,
        path: &Path,
        store: &PendingMessage,
        progress: &ProgressBar,
    ) -> Result<Value> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata().await?.len();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let counted = count_progress(tokio_util::io::ReaderStream::new(file), progress.clone());
        let file_part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(counted), size)
                .file_name(file_name)
                .mime_str("application/octet-stream")?;
        let metadata = json!({"message": store, "sync": true}).to_string();
        let metadata_part =
            reqwest::multipart::Part::text(metadata).mime_str("application/json")?;
        let form = reqwest::multipart::Form::new()
            .part("metadata", metadata_part)
            .part("file", file_part);

        let response = self
            .http
            .post(self.url("/api/v0/storage/add_file"))
            .multipart(form)
            .send()
            .await
            .with_context(|| format!("cannot reach the CCN at {}", self.base))?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            return Err(self
                .rejection_of(&store.item_hash.to_string(), status.as_u16(), &body)
                .await
                .into());
        }
        serde_json::from_str(&body).context("the CCN sent invalid JSON for add_file")
    }

    /// Downloads a stored file; the stream of its bytes and its size when known.
    pub async fn download_file(
        &self,
        file_hash: &str,
    ) -> Result<(
        Option<u64>,
        impl Stream<Item = Result<bytes::Bytes>> + use<>,
    )> {
        let response = self
            .http
            .get(self.url(&format!("/api/v0/storage/raw/{file_hash}")))
            .send()
            .await
            .with_context(|| format!("cannot reach the CCN at {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(CcnError::from_body(status.as_u16(), &body).into());
        }
        let size = response.content_length();
        Ok((size, response.bytes_stream().map_err(anyhow::Error::from)))
    }
}

enum Answer {
    Json(Value),
    NotFound,
}

fn count_progress<S>(
    stream: S,
    progress: ProgressBar,
) -> impl Stream<Item = std::io::Result<bytes::Bytes>>
where
    S: Stream<Item = std::io::Result<bytes::Bytes>>,
{
    stream.inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            progress.inc(bytes.len() as u64);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_with_a_code_is_described() {
        let error = CcnError::from_body(
            422,
            r#"{"error":"not enough credits","error_code":6,"details":{"required":10}}"#,
        );
        assert_eq!(error.code, Some(6));
        let shown = error.to_string();
        assert!(shown.contains("code 6 (insufficient credit)"), "{shown}");
        assert!(shown.contains("not enough credits"), "{shown}");
        assert!(shown.contains("required"), "{shown}");
    }

    #[test]
    fn plain_text_and_empty_bodies_still_say_something() {
        let error = CcnError::from_body(413, "payload too large");
        assert_eq!(error.code, None);
        assert_eq!(
            error.to_string(),
            "the CCN answered HTTP 413: payload too large"
        );
        assert_eq!(
            CcnError::from_body(500, "").to_string(),
            "the CCN answered HTTP 500: internal server error"
        );
    }
}
