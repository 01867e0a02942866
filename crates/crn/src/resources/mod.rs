//! A program's message and files, fetched from the CCN, verified by hash and cached on
//! disk by hash (`DATA/cache/files/<sha256>`), so programs that share a runtime or a
//! volume share one file and a restarted node downloads nothing again.
//!
//! References are resolved here: `use_latest` follows a STORE to its newest amend
//! (a STORE by the same owner whose `ref` is the original), and a PROGRAM to the
//! newest PROGRAM that `replaces` it when it allows amends.

pub mod ccn;
pub mod instance;
pub mod program;

use crate::error::ProgramError;
use ccn::{CcnClient, Message};
use instance::InstanceMessage;
use program::ProgramContent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A PROGRAM as it will run: the message asked for, and the content in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramMessage {
    /// The hash the program is reached by.
    pub item_hash: String,
    /// The message whose content is used (an amend, or `item_hash` itself).
    pub content_hash: String,
    pub content: ProgramContent,
}

/// A STORE's file, present in the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFile {
    /// The STORE message (after `use_latest`).
    pub store_hash: String,
    /// sha256 of the bytes.
    pub file_hash: String,
    pub path: PathBuf,
    pub size: u64,
}

pub struct Resources {
    ccn: CcnClient,
    files: PathBuf,
    /// One download per file at a time; later askers wait and find it cached.
    downloads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A sha256 item hash, in the form the CCN indexes (lower-case hex).
pub fn check_hash(reference: &str) -> Result<String, ProgramError> {
    if reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(reference.to_ascii_lowercase())
    } else {
        Err(ProgramError::BadReference(format!(
            "{reference:?} is not an item hash (64 hexadecimal characters)"
        )))
    }
}

impl Resources {
    pub fn new(ccn: CcnClient, data_dir: &Path) -> std::io::Result<Self> {
        let files = data_dir.join("cache").join("files");
        std::fs::create_dir_all(&files)?;
        Ok(Self {
            ccn,
            files,
            downloads: Mutex::new(HashMap::new()),
        })
    }

    pub fn ccn(&self) -> &CcnClient {
        &self.ccn
    }

    /// The program `item_hash`, its newest amend applied.
    pub async fn program(&self, item_hash: &str) -> Result<ProgramMessage, ProgramError> {
        let item_hash = check_hash(item_hash)?;
        let message =
            self.ccn.message(&item_hash).await?.ok_or_else(|| {
                ProgramError::NotFound(format!("no program {item_hash} on the CCN"))
            })?;
        if message.message_type != "PROGRAM" {
            return Err(ProgramError::NotFound(format!(
                "{item_hash} is a {} message, not a PROGRAM",
                message.message_type
            )));
        }
        let mut in_force = message.clone();
        if message.content.get("allow_amend").and_then(Value::as_bool) == Some(true)
            && let Some(amend) = self
                .ccn
                .latest_program_amend(&item_hash, message.owner())
                .await?
        {
            in_force = amend;
        }
        let content: ProgramContent = parse_content(&in_force)?;
        Ok(ProgramMessage {
            item_hash,
            content_hash: in_force.item_hash,
            content,
        })
    }

    /// The instance `item_hash` (instances are not amended: the message is the content).
    pub async fn instance(&self, item_hash: &str) -> Result<InstanceMessage, ProgramError> {
        let item_hash = check_hash(item_hash)?;
        let message =
            self.ccn.message(&item_hash).await?.ok_or_else(|| {
                ProgramError::NotFound(format!("no instance {item_hash} on the CCN"))
            })?;
        if message.message_type != "INSTANCE" {
            return Err(ProgramError::NotFound(format!(
                "{item_hash} is a {}, not an INSTANCE",
                message.message_type
            )));
        }
        let content = serde_json::from_value(message.content).map_err(|e| {
            ProgramError::Unsupported(format!("instance {item_hash}: unreadable content: {e}"))
        })?;
        Ok(InstanceMessage { item_hash, content })
    }

    /// The file of STORE `store_hash` (its newest version when `use_latest`), downloaded
    /// unless cached.
    pub async fn store_file(
        &self,
        store_hash: &str,
        use_latest: bool,
        owner: &str,
    ) -> Result<StoredFile, ProgramError> {
        let store_hash = check_hash(store_hash).map_err(|_| {
            ProgramError::Unsupported(format!(
                "{store_hash:?}: only sha256 STORE references are supported (no IPFS)"
            ))
        })?;
        let store_hash = if use_latest {
            self.ccn.latest_store(&store_hash, owner).await?
        } else {
            store_hash
        };
        let store = self.ccn.message(&store_hash).await?.ok_or_else(|| {
            ProgramError::Unavailable(format!("STORE {store_hash} is not on the CCN"))
        })?;
        if store.message_type != "STORE" {
            return Err(ProgramError::Unsupported(format!(
                "{store_hash} is a {}, not a STORE",
                store.message_type
            )));
        }
        let file_hash = store
            .content
            .get("item_hash")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if store.content.get("item_type").and_then(Value::as_str) != Some("storage")
            || check_hash(&file_hash).is_err()
        {
            return Err(ProgramError::Unsupported(format!(
                "STORE {store_hash} does not hold a file in the CCN's storage (IPFS is not supported)"
            )));
        }
        let (path, size) = self.cached(&file_hash).await?;
        Ok(StoredFile {
            store_hash,
            file_hash,
            path,
            size,
        })
    }

    /// Path and size of file `file_hash`, downloading it when missing.
    pub async fn cached(&self, file_hash: &str) -> Result<(PathBuf, u64), ProgramError> {
        let path = self.files.join(file_hash);
        let lock = self
            .downloads
            .lock()
            .expect("downloads lock")
            .entry(file_hash.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        if let Ok(meta) = tokio::fs::metadata(&path).await {
            return Ok((path, meta.len()));
        }
        let size = self.ccn.download(file_hash, &path).await?;
        Ok((path, size))
    }

    pub fn files_dir(&self) -> &Path {
        &self.files
    }
}

fn parse_content(message: &Message) -> Result<ProgramContent, ProgramError> {
    serde_json::from_value(message.content.clone()).map_err(|e| {
        ProgramError::Unsupported(format!("PROGRAM {} cannot be read: {e}", message.item_hash))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_hex_references() {
        let hash = "AB".repeat(32);
        assert_eq!(check_hash(&hash).unwrap(), "ab".repeat(32));
        for bad in [
            "",
            "abc",
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
            &"g".repeat(64),
        ] {
            assert!(matches!(
                check_hash(bad),
                Err(ProgramError::BadReference(_))
            ));
        }
    }
}
