//! `DATA/images/`: files named by their SHA-256 (`sha256/<hex>`), a manifest saying
//! which blob is which image and what it was built from, readable names as links, and a
//! lock so that concurrent builders (parallel tests) take turns.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub kernel: Option<KernelEntry>,
    pub initramfs: Option<InitramfsEntry>,
    pub python_runtime: Option<RuntimeEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelEntry {
    /// `package=version` it was built from, and the modules chosen.
    pub key: String,
    pub kernel_version: String,
    pub vmlinuz: Blob,
    pub vmlinux: Blob,
    /// The modules as a cpio archive, ready to be appended to the initramfs.
    pub modules_cpio: Blob,
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitramfsEntry {
    /// The agent's SHA-256 and the modules archive's.
    pub key: String,
    pub agent_sha256: String,
    pub initramfs: Blob,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeEntry {
    /// The recipe it was built from.
    pub key: String,
    pub squashfs: Blob,
}

pub struct Store {
    pub root: PathBuf,
}

const MANIFEST: &str = "manifest.json";

pub fn sha256_file(path: &Path) -> Result<Blob> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Blob {
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}

impl Store {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("images"),
        }
    }

    pub fn blob_path(&self, blob: &Blob) -> PathBuf {
        self.root.join("sha256").join(&blob.sha256)
    }

    /// A scratch folder inside the store (same filesystem, so results move in by rename).
    pub fn scratch(&self) -> Result<tempfile::TempDir> {
        let tmp = self.root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        Ok(tempfile::tempdir_in(tmp)?)
    }

    /// Moves a finished file into the store under its hash.
    pub fn put_file(&self, path: &Path) -> Result<Blob> {
        let blob = sha256_file(path)?;
        let dest = self.blob_path(&blob);
        std::fs::create_dir_all(dest.parent().unwrap_or(&self.root))?;
        std::fs::rename(path, &dest).with_context(|| format!("storing {}", dest.display()))?;
        Ok(blob)
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Blob> {
        let dir = self.scratch()?;
        let path = dir.path().join("blob");
        std::fs::write(&path, bytes)?;
        self.put_file(&path)
    }

    /// Cheap check: the file is there with the right size.
    pub fn present(&self, blob: &Blob) -> bool {
        std::fs::metadata(self.blob_path(blob)).is_ok_and(|m| m.len() == blob.size)
    }

    /// Full check: the file's hash is its name.
    pub fn verify(&self, blob: &Blob) -> bool {
        self.present(blob) && sha256_file(&self.blob_path(blob)).is_ok_and(|b| b == *blob)
    }

    pub fn load(&self) -> Option<Manifest> {
        let text = std::fs::read(self.root.join(MANIFEST)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn save(&self, manifest: &Manifest) -> Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let tmp = self.root.join(format!("{MANIFEST}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(manifest)?)?;
        std::fs::rename(&tmp, self.root.join(MANIFEST))?;
        Ok(())
    }

    /// `DATA/images/<name>` → `sha256/<hex>`, for people and scripts.
    pub fn link(&self, name: &str, blob: &Blob) -> Result<()> {
        let link = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("sha256").join(&blob.sha256), &tmp)?;
        std::fs::rename(&tmp, &link)?;
        Ok(())
    }

    /// Held for the whole build; released when dropped.
    pub async fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        std::fs::create_dir_all(&self.root)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))?;
        tokio::task::spawn_blocking(move || {
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow::anyhow!("locking the image store: {e}"))
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_named_by_hash_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let blob = store.put_bytes(b"hello").unwrap();
        assert_eq!(
            blob.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(store.verify(&blob));
        store.link("greeting", &blob).unwrap();
        assert_eq!(
            std::fs::read(store.root.join("greeting")).unwrap(),
            b"hello"
        );
        std::fs::write(store.blob_path(&blob), b"jello").unwrap();
        assert!(store.present(&blob) && !store.verify(&blob));
    }

    #[test]
    fn manifest_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(store.load().is_none());
        let manifest = Manifest {
            python_runtime: Some(RuntimeEntry {
                key: "k".into(),
                squashfs: Blob {
                    sha256: "ab".into(),
                    size: 1,
                },
            }),
            ..Default::default()
        };
        store.save(&manifest).unwrap();
        assert_eq!(store.load().unwrap(), manifest);
    }
}
