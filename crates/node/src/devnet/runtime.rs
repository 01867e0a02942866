//! Publishing the Python runtime on the devnet's CCN, so programs can name it:
//! the squashfs as a STORE, and the `vm-images` aggregate (the public network's
//! shape: `{runtimes: {NAME: {hash, display_name}}, defaults: {runtime: NAME}}`)
//! naming that STORE as the default, both under the devnet's first account.
//! `aleph program upload` reads that aggregate when no `--runtime` is given.
//!
//! The file goes into the CCN's store by a library call (`Ccn::add_local_file`,
//! recorded as an upload is), not over HTTP: the CCN runs in this process, and a
//! runtime can outgrow the 100 MiB upload limit.

use aleph_ccn::{CcnHandle, Outcome};
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use aleph_types::message::pending::PendingMessage;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::Path;

/// The aggregate key clients read the runtimes from.
pub const VM_IMAGES_KEY: &str = "vm-images";
/// The name of the Python runtime in that aggregate.
pub const RUNTIME_NAME: &str = "python3-debian12";
const RUNTIME_DISPLAY_NAME: &str = "Debian 12 with Python 3, FastAPI and uvicorn (devnet)";

/// Stores `squashfs` and names it the default runtime, signed with `private_key`
/// (`0x` + 64 hex). A devnet restarted on the same data keeps its runtime STORE
/// when the file did not change. Returns the STORE's hash.
pub async fn publish(ccn: &CcnHandle, private_key: &str, squashfs: &Path) -> Result<String> {
    let signer = Signer::from_hex(private_key).context("devnet key")?;
    let file_hash = ccn
        .ccn()
        .add_local_file(squashfs)
        .await
        .context("storing the runtime on the CCN")?;

    if let Some(store_hash) = current_store(ccn, signer.address(), &file_hash).await {
        return Ok(store_hash);
    }
    let store = signer.sign(
        MessageType::Store,
        json!({"item_type": "storage", "item_hash": file_hash, "payment": {"type": "credit"}}),
        None,
    )?;
    let store_hash = submit(ccn, store, "the runtime's STORE").await?;
    let images = json!({
        "key": VM_IMAGES_KEY,
        "content": {
            "runtimes": {RUNTIME_NAME: {"hash": store_hash, "display_name": RUNTIME_DISPLAY_NAME}},
            "defaults": {"runtime": RUNTIME_NAME},
        },
    });
    let aggregate = signer.sign(MessageType::Aggregate, images, None)?;
    submit(ccn, aggregate, "the vm-images aggregate").await?;
    Ok(store_hash)
}

/// The STORE the `vm-images` aggregate of `address` already names as its
/// default runtime, when it pins `file_hash` and is still processed.
async fn current_store(ccn: &CcnHandle, address: &str, file_hash: &str) -> Option<String> {
    let http = reqwest::Client::new();
    let images: Value = http
        .get(format!("{}/api/v0/aggregates/{address}.json", ccn.url()))
        .query(&[("keys", VM_IMAGES_KEY)])
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()?;
    let images = &images["data"][VM_IMAGES_KEY];
    let name = images["defaults"]["runtime"].as_str()?;
    let store_hash = images["runtimes"][name]["hash"].as_str()?.to_owned();
    let status: Value = http
        .get(format!("{}/api/v0/messages/{store_hash}", ccn.url()))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    (status["status"] == "processed" && status["message"]["content"]["item_hash"] == file_hash)
        .then_some(store_hash)
}

/// Processes a message on the CCN now; anything but processed is an error.
pub(super) async fn submit(ccn: &CcnHandle, message: PendingMessage, what: &str) -> Result<String> {
    match ccn
        .ccn()
        .submit(serde_json::to_value(&message)?, true)
        .await
    {
        Outcome::Processed(record) => Ok(record.item_hash),
        Outcome::Pending(r) | Outcome::Rejected(r) => {
            bail!(
                "the CCN did not process {what}: code {}: {}",
                r.code,
                r.message
            )
        }
        Outcome::Forgotten(record) => bail!("{what} {} was forgotten", record.item_hash),
    }
}
