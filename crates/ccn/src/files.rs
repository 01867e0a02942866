//! Content-addressed files on disk: `files/<first two hex>/<sha256 hex>`.
//! Uploads are written to a temporary file while hashed, then renamed into place,
//! so a file at its hash's path is always complete.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;

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
