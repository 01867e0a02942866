//! The `vm-images` aggregate of the devnet's first account: which STOREs hold
//! the images VMs boot from, in the public network's shape:
//!
//! ```json
//! {"runtimes": {"python3-debian12": {"hash": STORE, "display_name": "..."}},
//!  "rootfs": {"debian12": {"hash": STORE, "display_name": "..."}},
//!  "defaults": {"runtime": "python3-debian12", "rootfs": "debian12"}}
//! ```
//!
//! `aleph program upload` takes its default runtime from there, and instances
//! their default root filesystem. `rootfs` is empty (and `defaults` names no
//! rootfs) when the devnet has none: the aggregate merges key by key, so an
//! entry left out would keep an older one alive.

use super::messages::submit;
use super::stores::store_file;
use aleph_ccn::CcnHandle;
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;

/// The aggregate key clients read the images from.
pub const VM_IMAGES_KEY: &str = "vm-images";
/// The name of the Python runtime in that aggregate.
pub const RUNTIME_NAME: &str = "python3-debian12";
const RUNTIME_DISPLAY_NAME: &str = "Debian 12 with Python 3, FastAPI and uvicorn (devnet)";
/// The name of the instance root filesystem in that aggregate.
pub const ROOTFS_NAME: &str = "debian12";
const ROOTFS_DISPLAY_NAME: &str = "Debian 12 with systemd, cloud-init and sshd (devnet)";

/// The STOREs the aggregate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub runtime: String,
    pub rootfs: Option<String>,
}

/// The aggregate as it stands on the CCN, and the key that signs its updates.
pub struct VmImages<'a> {
    ccn: &'a CcnHandle,
    signer: Signer,
    /// Its merged content; null when there is none yet.
    current: Value,
}

impl<'a> VmImages<'a> {
    /// Reads the aggregate of the account of `private_key` (`0x` + 64 hex).
    pub async fn read(ccn: &'a CcnHandle, private_key: &str) -> Result<Self> {
        let signer = Signer::from_hex(private_key).context("devnet key")?;
        let current = current_content(ccn, signer.address()).await;
        Ok(Self {
            ccn,
            signer,
            current,
        })
    }

    /// The Python runtime squashfs as a STORE (the one named already when the
    /// file did not change).
    pub async fn store_runtime(&self, squashfs: &Path) -> Result<String> {
        let previous = self.current["runtimes"][RUNTIME_NAME]["hash"].as_str();
        store_file(
            self.ccn,
            &self.signer,
            squashfs,
            previous,
            "the Python runtime",
        )
        .await
    }

    /// The instance root filesystem as a STORE (the one named already when the
    /// file did not change).
    pub async fn store_rootfs(&self, image: &Path) -> Result<String> {
        let previous = self.current["rootfs"][ROOTFS_NAME]["hash"].as_str();
        store_file(
            self.ccn,
            &self.signer,
            image,
            previous,
            "the Debian 12 root filesystem",
        )
        .await
    }

    /// Names `published` in the aggregate; posts nothing when it already does.
    pub async fn name(&self, published: &Published) -> Result<()> {
        let content = content(published);
        if names_already(&self.current, &content) {
            return Ok(());
        }
        let aggregate = self.signer.sign(
            MessageType::Aggregate,
            json!({"key": VM_IMAGES_KEY, "content": content}),
            None,
        )?;
        submit(self.ccn, aggregate, "the vm-images aggregate").await?;
        Ok(())
    }
}

/// What the aggregate holds once `published` is named.
fn content(published: &Published) -> Value {
    let mut rootfs = json!({});
    let mut defaults = json!({"runtime": RUNTIME_NAME});
    if let Some(hash) = &published.rootfs {
        rootfs = json!({ROOTFS_NAME: {"hash": hash, "display_name": ROOTFS_DISPLAY_NAME}});
        defaults["rootfs"] = json!(ROOTFS_NAME);
    }
    json!({
        "runtimes": {RUNTIME_NAME: {"hash": published.runtime, "display_name": RUNTIME_DISPLAY_NAME}},
        "rootfs": rootfs,
        "defaults": defaults,
    })
}

/// Whether every top-level key of `content` already has that value in `current`.
fn names_already(current: &Value, content: &Value) -> bool {
    content
        .as_object()
        .is_some_and(|keys| keys.iter().all(|(key, value)| &current[key] == value))
}

/// The merged `vm-images` content of `address`; null when there is none.
async fn current_content(ccn: &CcnHandle, address: &str) -> Value {
    let answer: Option<Value> = async {
        reqwest::Client::new()
            .get(format!("{}/api/v0/aggregates/{address}.json", ccn.url()))
            .query(&[("keys", VM_IMAGES_KEY)])
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()
    }
    .await;
    answer.map_or(Value::Null, |a| a["data"][VM_IMAGES_KEY].clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aleph_ccn::{CcnConfig, FundedAccount};
    use sha2::{Digest, Sha256};
    use std::net::{Ipv4Addr, SocketAddr};

    const KEY: &str = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";

    /// A CCN on a free loopback port, with the signer of [`KEY`] funded.
    async fn ccn(dir: &Path) -> (CcnHandle, String) {
        let address = Signer::from_hex(KEY).unwrap().address().to_owned();
        let ccn = aleph_ccn::start(CcnConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            data_dir: dir.join("ccn"),
            database_url: None,
            funded: vec![FundedAccount {
                address: address.clone(),
                balance: 1_000_000.0,
                credit_balance: 1_000_000_000_000,
            }],
        })
        .await
        .unwrap();
        (ccn, address)
    }

    async fn get(url: String) -> Value {
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }

    /// How many AGGREGATE messages `address` has posted.
    async fn aggregate_posts(ccn: &CcnHandle, address: &str) -> usize {
        let page = get(format!(
            "{}/api/v0/messages.json?msgTypes=AGGREGATE&addresses={address}",
            ccn.url()
        ))
        .await;
        page["messages"].as_array().map_or(0, Vec::len)
    }

    /// Writes `bytes` to `dir/name` and returns the path.
    fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    async fn publish(ccn: &CcnHandle, runtime: &Path, rootfs: Option<&Path>) -> Published {
        let images = VmImages::read(ccn, KEY).await.unwrap();
        let runtime = images.store_runtime(runtime).await.unwrap();
        let rootfs = match rootfs {
            Some(path) => Some(images.store_rootfs(path).await.unwrap()),
            None => None,
        };
        let published = Published { runtime, rootfs };
        images.name(&published).await.unwrap();
        published
    }

    /// The STORE's pinned file hash, checking it was processed.
    async fn pinned(ccn: &CcnHandle, store: &str) -> String {
        let status = get(format!("{}/api/v0/messages/{store}", ccn.url())).await;
        assert_eq!(status["status"], "processed", "{status}");
        status["message"]["content"]["item_hash"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn names_both_images_and_keeps_them_while_the_files_stay_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (ccn, address) = ccn(dir.path()).await;
        let runtime = file(dir.path(), "runtime.squashfs", b"a runtime");
        let rootfs = file(dir.path(), "rootfs.ext4", b"a root filesystem");

        let first = publish(&ccn, &runtime, Some(&rootfs)).await;
        let images = get(format!(
            "{}/api/v0/aggregates/{address}.json?keys={VM_IMAGES_KEY}",
            ccn.url()
        ))
        .await;
        assert_eq!(
            images["data"][VM_IMAGES_KEY],
            json!({
                "runtimes": {RUNTIME_NAME: {"hash": first.runtime, "display_name": RUNTIME_DISPLAY_NAME}},
                "rootfs": {ROOTFS_NAME: {"hash": first.rootfs, "display_name": ROOTFS_DISPLAY_NAME}},
                "defaults": {"runtime": RUNTIME_NAME, "rootfs": ROOTFS_NAME},
            })
        );
        let rootfs_sha256 = hex::encode(Sha256::digest(b"a root filesystem"));
        assert_eq!(
            pinned(&ccn, first.rootfs.as_deref().unwrap()).await,
            rootfs_sha256
        );
        assert_eq!(
            pinned(&ccn, &first.runtime).await,
            hex::encode(Sha256::digest(b"a runtime"))
        );
        let served = reqwest::get(format!("{}/api/v0/storage/raw/{rootfs_sha256}", ccn.url()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&served[..], b"a root filesystem");

        // Started again on the same files: the same STOREs, no new aggregate.
        let again = publish(&ccn, &runtime, Some(&rootfs)).await;
        assert_eq!(again, first);
        assert_eq!(aggregate_posts(&ccn, &address).await, 1);

        // A new root filesystem: a new STORE, the runtime's stays.
        std::fs::write(&rootfs, b"another root filesystem").unwrap();
        let changed = publish(&ccn, &runtime, Some(&rootfs)).await;
        assert_eq!(changed.runtime, first.runtime);
        assert_ne!(changed.rootfs, first.rootfs);
        assert_eq!(aggregate_posts(&ccn, &address).await, 2);

        // None this time: the aggregate stops naming one (merging would keep it).
        publish(&ccn, &runtime, None).await;
        let images = get(format!(
            "{}/api/v0/aggregates/{address}.json?keys={VM_IMAGES_KEY}",
            ccn.url()
        ))
        .await;
        let images = &images["data"][VM_IMAGES_KEY];
        assert_eq!(images["rootfs"], json!({}));
        assert_eq!(images["defaults"], json!({"runtime": RUNTIME_NAME}));
        assert_eq!(images["runtimes"][RUNTIME_NAME]["hash"], first.runtime);
        ccn.shutdown().await;
    }

    /// An image-store blob (named by its sha256) the CCN already holds is not
    /// read again: what counts is the CCN's copy.
    #[tokio::test]
    async fn a_blob_named_by_its_hash_is_not_copied_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (ccn, _) = ccn(dir.path()).await;
        let runtime = file(dir.path(), "runtime.squashfs", b"a runtime");
        let sha256 = hex::encode(Sha256::digest(b"a root filesystem"));
        let blob = file(dir.path(), &sha256, b"a root filesystem");
        let first = publish(&ccn, &runtime, Some(&blob)).await;
        // Same size, other bytes: a copy would hash to something else.
        std::fs::write(&blob, b"A ROOT FILESYSTEM").unwrap();
        let again = publish(&ccn, &runtime, Some(&blob)).await;
        assert_eq!(again, first);
        assert_eq!(pinned(&ccn, again.rootfs.as_deref().unwrap()).await, sha256);
        ccn.shutdown().await;
    }
}
