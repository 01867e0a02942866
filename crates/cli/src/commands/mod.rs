//! One module per command group; each has its clap subcommand enum and `run`.

pub mod account;
pub mod aggregate;
pub mod file;
pub mod instance;
pub mod message;
pub mod node;
pub mod program;

use crate::client::{Accepted, CcnClient};
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use aleph_types::message::pending::PendingMessage;
use anyhow::Result;
use serde::Serialize;

/// Signs `content` and posts it, waiting for the CCN to process it. A rejected
/// message comes back as an error carrying the rejection code.
pub async fn publish(
    client: &CcnClient,
    signer: &Signer,
    message_type: MessageType,
    content: &impl Serialize,
    channel: Option<String>,
) -> Result<(PendingMessage, Accepted)> {
    let message = signer.sign(message_type, content, channel.as_deref())?;
    let accepted = client.post_message(&message).await?;
    Ok((message, accepted))
}
