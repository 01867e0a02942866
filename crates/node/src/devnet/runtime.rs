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
use aleph_types::account::{EvmAccount, sign_message};
use aleph_types::chain::Chain;
use aleph_types::item_hash::{AlephItemHash, ItemHash};
use aleph_types::message::MessageType;
use aleph_types::message::item_type::ItemType;
use aleph_types::message::unsigned::UnsignedMessage;
use aleph_types::timestamp::Timestamp;
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
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
    let account = account(private_key)?;
    let address = aleph_types::account::Account::address(&account)
        .as_str()
        .to_owned();
    let file_hash = ccn
        .ccn()
        .add_local_file(squashfs)
        .await
        .context("storing the runtime on the CCN")?;

    if let Some(store_hash) = current_store(ccn, &address, &file_hash).await {
        return Ok(store_hash);
    }
    let store = sign(
        &account,
        MessageType::Store,
        json!({"item_type": "storage", "item_hash": file_hash, "payment": {"type": "credit"}}),
    )?;
    let store_hash = submit(ccn, store, "the runtime's STORE").await?;
    let images = json!({
        "key": VM_IMAGES_KEY,
        "content": {
            "runtimes": {RUNTIME_NAME: {"hash": store_hash, "display_name": RUNTIME_DISPLAY_NAME}},
            "defaults": {"runtime": RUNTIME_NAME},
        },
    });
    let aggregate = sign(&account, MessageType::Aggregate, images)?;
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

fn account(private_key: &str) -> Result<EvmAccount> {
    let key = hex::decode(private_key.trim_start_matches("0x")).context("devnet key")?;
    EvmAccount::new(Chain::Ethereum, &key).map_err(|e| anyhow::anyhow!("devnet key: {e}"))
}

/// A signed inline message whose content is `content` plus `address` and `time`.
fn sign(account: &EvmAccount, message_type: MessageType, content: Value) -> Result<Value> {
    let time = Timestamp::now();
    let mut full = Map::new();
    full.insert(
        "address".into(),
        json!(aleph_types::account::Account::address(account).as_str()),
    );
    full.insert("time".into(), serde_json::to_value(&time)?);
    let Value::Object(content) = content else {
        bail!("message content must be an object");
    };
    full.extend(content);
    let item_content = serde_json::to_string(&Value::Object(full))?;
    let unsigned = UnsignedMessage {
        message_type,
        item_type: ItemType::Inline,
        item_hash: ItemHash::Native(AlephItemHash::from_bytes(item_content.as_bytes())),
        item_content,
        time,
        channel: None,
    };
    let message = sign_message(account, unsigned).context("signing")?;
    Ok(serde_json::to_value(&message)?)
}

/// Processes a message on the CCN now; anything but processed is an error.
async fn submit(ccn: &CcnHandle, message: Value, what: &str) -> Result<String> {
    match ccn.ccn().submit(message, true).await {
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
