//! A file of this machine published as a STORE on the devnet's CCN, once: a
//! devnet restarted on the same data keeps the STORE (and skips copying the
//! file) when the file did not change.
//!
//! The file goes into the CCN's store by a library call (`Ccn::add_local_file`,
//! recorded as an upload is), not over HTTP: the CCN runs in this process, and
//! images outgrow the 100 MiB upload limit.

use super::messages::submit;
use aleph_ccn::CcnHandle;
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

/// Stores `path` on the CCN and returns the hash of a processed STORE of it,
/// signed by `signer`: `previous` when that STORE already pins the same file,
/// else a new one. `what` names the file in messages.
pub async fn store_file(
    ccn: &CcnHandle,
    signer: &Signer,
    path: &Path,
    previous: Option<&str>,
    what: &str,
) -> Result<String> {
    let start = Instant::now();
    let file_hash = put_file(ccn, path)
        .await
        .with_context(|| format!("storing {what} ({}) on the CCN", path.display()))?;
    let stored_in = start.elapsed();
    let store_hash = match previous {
        Some(previous) if pins(ccn, previous, &file_hash).await => previous.to_owned(),
        _ => {
            let store = signer.sign(
                MessageType::Store,
                json!({"item_type": "storage", "item_hash": file_hash, "payment": {"type": "credit"}}),
                None,
            )?;
            submit(ccn, store, &format!("the STORE of {what}")).await?
        }
    };
    tracing::info!(
        "{what}: file {file_hash} in the CCN's store in {stored_in:.1?}, STORE {store_hash} ({:.1?} in all)",
        start.elapsed()
    );
    Ok(store_hash)
}

/// The file in the CCN's store; returns its sha256. Files of the image store
/// are named by their sha256 (`DATA/images/sha256/<hex>`): when the CCN already
/// holds that hash with that size, the copy (a full read and write, seconds
/// for an instance root filesystem) is skipped.
async fn put_file(ccn: &CcnHandle, path: &Path) -> Result<String> {
    if let Some(hash) = named_by_sha256(path) {
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if ccn.ccn().files.size(&hash).await == Some(size) {
            return Ok(hash);
        }
    }
    ccn.ccn().add_local_file(path).await
}

/// The file's name when it is a sha256 in lowercase hex.
fn named_by_sha256(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    (name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| name.to_owned())
}

/// Whether `store_hash` is a processed STORE of `file_hash`.
async fn pins(ccn: &CcnHandle, store_hash: &str, file_hash: &str) -> bool {
    let status: Option<Value> = async {
        reqwest::get(format!("{}/api/v0/messages/{store_hash}", ccn.url()))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
    .await;
    status.is_some_and(|status| {
        status["status"] == "processed"
            && status["message"]["type"] == "STORE"
            && status["message"]["content"]["item_hash"] == file_hash
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_names_are_taken_for_hashes() {
        let hex = "201dde3af6d6b14e5fe59e0ffa40cd39ad785ebcc7fcd17df8db89171e861bcf";
        let blob = Path::new("/data/images/sha256").join(hex);
        assert_eq!(named_by_sha256(&blob).as_deref(), Some(hex));
        assert_eq!(named_by_sha256(Path::new("/data/rootfs.ext4")), None);
        assert_eq!(
            named_by_sha256(&blob.with_file_name(hex.to_uppercase())),
            None
        );
        assert_eq!(named_by_sha256(&blob.with_file_name(&hex[1..])), None);
    }
}
