//! Messages the devnet signs itself (its images, its nodes' registrations),
//! processed by its CCN at once rather than queued.

use aleph_ccn::{CcnHandle, Outcome};
use aleph_types::message::pending::PendingMessage;
use anyhow::{Result, bail};

/// Processes a message on the CCN now; anything but processed is an error.
pub async fn submit(ccn: &CcnHandle, message: PendingMessage, what: &str) -> Result<String> {
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
