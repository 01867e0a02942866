//! Content-addressed files on disk: `files/<first two hex>/<sha256 hex>`.
//! Uploads are written to a temporary file while hashed, then renamed into place,
//! so a file at its hash's path is always complete. `Ccn::keep_file` is the one
//! step that moves a received file into place and records it in the `files`
//! table; `Ccn::add_local_file` stores a file of the operator's machine.

use crate::Ccn;
use crate::store::files::{self as records, FileRecord};
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest file accepted without a signed STORE message.
pub const MAX_UNAUTHENTICATED_FILE_SIZE: u64 = 25 * 1024 * 1024;
/// Largest file accepted with a signed STORE message.
pub const MAX_AUTHENTICATED_FILE_SIZE: u64 = 100 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

/// An upload being received: bytes go to a temporary file and into the hasher.
pub struct IncomingFile {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
}

/// A fully received upload, not yet in the store.
#[derive(Debug)]
pub struct ReceivedFile {
    pub temp_path: PathBuf,
    pub hash: String,
    pub size: u64,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FileStore {
    pub async fn open(root: PathBuf) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(root.join("tmp")).await?;
        Ok(Self { root })
    }

    pub fn path(&self, hash: &str) -> PathBuf {
        self.root.join(&hash[..2.min(hash.len())]).join(hash)
    }

    pub fn is_valid_hash(hash: &str) -> bool {
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
    }

    pub async fn exists(&self, hash: &str) -> bool {
        Self::is_valid_hash(hash)
            && tokio::fs::try_exists(self.path(hash))
                .await
                .unwrap_or(false)
    }

    pub async fn read(&self, hash: &str) -> std::io::Result<Option<Vec<u8>>> {
        if !Self::is_valid_hash(hash) {
            return Ok(None);
        }
        match tokio::fs::read(self.path(hash)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn size(&self, hash: &str) -> Option<u64> {
        if !Self::is_valid_hash(hash) {
            return None;
        }
        tokio::fs::metadata(self.path(hash))
            .await
            .ok()
            .map(|m| m.len())
    }

    pub async fn begin(&self) -> std::io::Result<IncomingFile> {
        let name = format!(
            "upload-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.root.join("tmp").join(name);
        let file = tokio::fs::File::create(&path).await?;
        Ok(IncomingFile {
            path,
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Stores bytes already in memory; returns their hash.
    pub async fn put(&self, bytes: &[u8]) -> std::io::Result<ReceivedFile> {
        let mut incoming = self.begin().await?;
        incoming.write(bytes).await?;
        incoming.finish().await
    }

    /// Moves a received file to its hash's path. Returns whether it was new.
    pub async fn commit(&self, received: &ReceivedFile) -> std::io::Result<bool> {
        let target = self.path(&received.hash);
        if tokio::fs::try_exists(&target).await? {
            tokio::fs::remove_file(&received.temp_path).await.ok();
            return Ok(false);
        }
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::rename(&received.temp_path, &target).await?;
        Ok(true)
    }

    pub async fn discard(received: &ReceivedFile) {
        tokio::fs::remove_file(&received.temp_path).await.ok();
    }

    pub async fn remove(&self, hash: &str) -> std::io::Result<()> {
        if !Self::is_valid_hash(hash) {
            return Ok(());
        }
        match tokio::fs::remove_file(self.path(hash)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl IncomingFile {
    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.file.write_all(chunk).await
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn finish(mut self) -> std::io::Result<ReceivedFile> {
        self.file.flush().await?;
        self.file.sync_all().await.ok();
        Ok(ReceivedFile {
            temp_path: self.path,
            hash: hex::encode(self.hasher.finalize()),
            size: self.size,
        })
    }

    pub async fn abort(self) {
        drop(self.file);
        tokio::fs::remove_file(&self.path).await.ok();
    }
}

/// The `kind` of uploaded bytes in the `files` table.
pub const KIND_FILE: &str = "file";
/// The `kind` of a document stored by `add_json`.
pub const KIND_JSON: &str = "json";

impl Ccn {
    /// Moves a received file to its hash's path and records it in the `files`
    /// table, under the writer lock; returns whether it was new. Every way a file
    /// enters the node (`add_file`, `add_json`, `add_local_file`) ends here.
    pub(crate) async fn keep_file(
        &self,
        received: &ReceivedFile,
        kind: &str,
    ) -> anyhow::Result<bool> {
        let size = i64::try_from(received.size).context("file too large")?;
        let _writer = self.write_lock().await;
        let new = match self.files.commit(received).await {
            Ok(new) => new,
            Err(e) => {
                FileStore::discard(received).await;
                return Err(e).context("cannot move the file into the store");
            }
        };
        records::upsert(
            &self.db.pool,
            &FileRecord {
                file_hash: received.hash.clone(),
                size,
                kind: kind.into(),
            },
            crate::intake::now(),
        )
        .await
        .context("cannot record the file")?;
        Ok(new)
    }

    /// Copies a file of this machine into the store, streaming and hashing it,
    /// and records it exactly as an upload (`add_file` without a STORE); returns
    /// its sha256. For the operator, so there is no size limit: a devnet's
    /// runtime can outgrow what `add_file` accepts. A STORE naming the hash can
    /// follow.
    pub async fn add_local_file(&self, path: &Path) -> anyhow::Result<String> {
        let mut source = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut incoming = self.files.begin().await?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = match source.read(&mut buffer).await {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) => {
                    incoming.abort().await;
                    return Err(e).with_context(|| format!("cannot read {}", path.display()));
                }
            };
            if let Err(e) = incoming.write(&buffer[..read]).await {
                incoming.abort().await;
                return Err(e).context("cannot write into the file store");
            }
        }
        let received = incoming.finish().await?;
        self.keep_file(&received, KIND_FILE).await?;
        Ok(received.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_by_sha256_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().to_path_buf()).await.unwrap();
        let received = store.put(b"hello").await.unwrap();
        assert_eq!(
            received.hash,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(store.commit(&received).await.unwrap());
        assert_eq!(store.read(&received.hash).await.unwrap().unwrap(), b"hello");
        let again = store.put(b"hello").await.unwrap();
        assert!(!store.commit(&again).await.unwrap());
        assert!(!again.temp_path.exists());
        assert_eq!(store.read("../etc/passwd").await.unwrap(), None);
    }
}
