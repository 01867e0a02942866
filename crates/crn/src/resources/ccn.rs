//! The CCN as this node reads it: messages by hash, the newest amend of one, and
//! files by hash. Plain HTTP against the reference's API, so any CCN will do.

use crate::error::ProgramError;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[derive(Clone)]
pub struct CcnClient {
    base: String,
    http: reqwest::Client,
}

/// A processed message, as the CCN serves it.
#[derive(Debug, Clone)]
pub struct Message {
    pub item_hash: String,
    pub message_type: String,
    pub sender: String,
    pub content: Value,
}

impl Message {
    pub fn owner(&self) -> &str {
        self.content
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or(&self.sender)
    }

    fn from_json(message: &Value) -> Option<Self> {
        Some(Self {
            item_hash: message.get("item_hash")?.as_str()?.to_string(),
            message_type: message.get("type")?.as_str()?.to_string(),
            sender: message.get("sender")?.as_str()?.to_string(),
            content: message.get("content")?.clone(),
        })
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ProgramError {
    ProgramError::Unavailable(format!("cannot read {what} from the CCN: {e}"))
}

impl CcnClient {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("a default HTTP client");
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The processed message `hash`; `None` when the CCN has none (or it is pending,
    /// rejected or forgotten: nothing to run).
    pub async fn message(&self, hash: &str) -> Result<Option<Message>, ProgramError> {
        let url = format!("{}/api/v0/messages/{hash}", self.base);
        let response = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| unavailable("a message", e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(unavailable("a message", response.status()));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| unavailable("a message", e))?;
        if body.get("status").and_then(Value::as_str) != Some("processed") {
            return Ok(None);
        }
        Ok(body.get("message").and_then(Message::from_json))
    }

    /// Messages matching a `messages.json` query, newest first.
    async fn newest(&self, query: &[(&str, &str)]) -> Result<Vec<Message>, ProgramError> {
        let url = format!("{}/api/v0/messages.json", self.base);
        let response = self
            .http
            .get(&url)
            .query(query)
            .query(&[("sortBy", "time"), ("sortOrder", "-1")])
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| unavailable("messages", e))?;
        if !response.status().is_success() {
            return Err(unavailable("messages", response.status()));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| unavailable("messages", e))?;
        Ok(body
            .get("messages")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(Message::from_json).collect())
            .unwrap_or_default())
    }

    /// The newest STORE by `owner` whose content `ref`ers to `original` (a new
    /// version of a file), or `original` itself.
    pub async fn latest_store(&self, original: &str, owner: &str) -> Result<String, ProgramError> {
        let found = self
            .newest(&[
                ("msgTypes", "STORE"),
                ("refs", original),
                ("owners", owner),
                ("pagination", "1"),
            ])
            .await?;
        Ok(found
            .into_iter()
            .next()
            .map_or_else(|| original.to_string(), |m| m.item_hash))
    }

    /// The newest PROGRAM by `owner` that `replaces` the program `original`.
    pub async fn latest_program_amend(
        &self,
        original: &str,
        owner: &str,
    ) -> Result<Option<Message>, ProgramError> {
        // The CCN indexes `ref` but not `replaces`: list the owner's programs.
        let found = self
            .newest(&[
                ("msgTypes", "PROGRAM"),
                ("owners", owner),
                ("pagination", "200"),
            ])
            .await?;
        Ok(found
            .into_iter()
            .find(|m| m.content.get("replaces").and_then(Value::as_str) == Some(original)))
    }

    /// Downloads file `file_hash` to `dest`, checking its sha256 on the way; the
    /// file appears at `dest` only when complete and verified.
    pub async fn download(&self, file_hash: &str, dest: &Path) -> Result<u64, ProgramError> {
        let url = format!("{}/api/v0/storage/raw/{file_hash}", self.base);
        let mut response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unavailable("a file", e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(ProgramError::Unavailable(format!(
                "the CCN does not have file {file_hash}"
            )));
        }
        if !response.status().is_success() {
            return Err(unavailable("a file", response.status()));
        }
        let partial = dest.with_extension(format!("partial-{}", std::process::id()));
        let io = |e: std::io::Error| ProgramError::internal(format!("{}: {e}", partial.display()));
        let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let result = async {
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| unavailable("a file", e))?
            {
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            let got = hex::encode(hasher.finalize());
            if got != file_hash {
                return Err(ProgramError::Unavailable(format!(
                    "file {file_hash} from the CCN hashes to {got}"
                )));
            }
            tokio::fs::rename(&partial, dest).await.map_err(io)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result.map(|()| size)
    }
}
