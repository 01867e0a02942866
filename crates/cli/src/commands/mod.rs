//! One module per command group; each has its clap subcommand enum and `run`.

pub mod account;
pub mod aggregate;
pub mod file;
pub mod message;
pub mod program;

use crate::client::{Accepted, CcnClient};
use crate::signing::Signer;
use aleph_types::message::MessageType;
use aleph_types::message::pending::PendingMessage;
use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::{Map, Value};

/// Signs `content` and posts it, waiting for the CCN to process it. A rejected
/// message comes back as an error carrying the rejection code.
pub async fn publish(
    client: &CcnClient,
    signer: &Signer,
    message_type: MessageType,
    content: &impl Serialize,
    channel: Option<String>,
) -> Result<(PendingMessage, Accepted)> {
    let message = signer.sign(message_type, to_object(content)?, channel)?;
    let accepted = client.post_message(&message).await?;
    Ok((message, accepted))
}

/// A typed message content as the JSON object it is on the wire.
pub fn to_object(content: &impl Serialize) -> Result<Map<String, Value>> {
    match serde_json::to_value(content)? {
        Value::Object(map) => Ok(map),
        other => bail!("message content must be a JSON object, got {other}"),
    }
}
