//! `aleph message get|list|forget`: the messages a CCN holds.

use super::publish;
use crate::context::Context;
use crate::rejection;
use aleph_types::item_hash::ItemHash;
use aleph_types::message::{ForgetContent, MessageType};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum MessageCommand {
    /// Show a message with its status (processed, pending, rejected, forgotten).
    Get { hash: String },
    /// List messages, newest first.
    List(ListFilters),
    /// Forget messages you own: their content is dropped from the network.
    Forget {
        /// Item hashes of the messages to forget.
        #[arg(required = true)]
        hashes: Vec<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        channel: Option<String>,
    },
}

/// The filters of `messages.json`; each list is comma separated.
#[derive(Args)]
pub struct ListFilters {
    /// Senders.
    #[arg(long, value_delimiter = ',')]
    addresses: Vec<String>,
    /// Owners (content.address).
    #[arg(long, value_delimiter = ',')]
    owners: Vec<String>,
    /// Message types (POST, AGGREGATE, STORE, PROGRAM, INSTANCE, FORGET).
    #[arg(long = "types", value_delimiter = ',')]
    types: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    refs: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    hashes: Vec<String>,
    /// Statuses (processed, pending, rejected, forgotten, ...).
    #[arg(long, value_delimiter = ',')]
    statuses: Vec<String>,
    /// Messages per page.
    #[arg(long, default_value_t = 20)]
    per_page: u32,
    /// Page number, from 1.
    #[arg(long, default_value_t = 1)]
    page: u32,
}

impl ListFilters {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        let mut list = |name: &'static str, values: &[String]| {
            if !values.is_empty() {
                query.push((name, values.join(",")));
            }
        };
        list("addresses", &self.addresses);
        list("owners", &self.owners);
        let types: Vec<String> = self.types.iter().map(|t| t.to_uppercase()).collect();
        list("msgTypes", &types);
        list("channels", &self.channels);
        list("refs", &self.refs);
        list("hashes", &self.hashes);
        list("msgStatuses", &self.statuses);
        query.push(("pagination", self.per_page.to_string()));
        query.push(("page", self.page.to_string()));
        query
    }
}

pub async fn run(ctx: &Context, command: MessageCommand) -> Result<()> {
    match command {
        MessageCommand::Get { hash } => get(ctx, &hash).await,
        MessageCommand::List(filters) => list(ctx, &filters).await,
        MessageCommand::Forget {
            hashes,
            reason,
            channel,
        } => forget(ctx, &hashes, reason, channel).await,
    }
}

async fn get(ctx: &Context, hash: &str) -> Result<()> {
    let Some(status) = ctx.client()?.message(hash).await? else {
        bail!("the CCN does not know the message {hash}");
    };
    ctx.out.result(&status, || describe_status(&status));
    Ok(())
}

fn describe_status(status: &Value) -> String {
    let state = status["status"].as_str().unwrap_or("unknown");
    let mut text = format!("{}: {state}", status["item_hash"].as_str().unwrap_or("?"));
    match state {
        "rejected" => {
            if let Some(code) = status["error_code"].as_i64() {
                text.push_str(&format!(", {}", rejection::describe(code)));
            }
            if let Some(details) = status.get("details").filter(|d| !d.is_null()) {
                text.push_str(&format!("\ndetails: {details}"));
            }
        }
        "forgotten" => {
            if let Some(by) = status.get("forgotten_by") {
                text.push_str(&format!(" by {by}"));
            }
        }
        _ => {}
    }
    if let Some(message) = status.get("message").filter(|m| m.is_object()) {
        text.push('\n');
        text.push_str(&serde_json::to_string_pretty(message).expect("JSON values serialize"));
    }
    text
}

async fn list(ctx: &Context, filters: &ListFilters) -> Result<()> {
    let page = ctx.client()?.messages(&filters.query()).await?;
    ctx.out.result(&page, || {
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        let mut lines: Vec<String> = messages
            .iter()
            .map(|m| {
                format!(
                    "{}  {:<9} {}  {}",
                    m["item_hash"].as_str().unwrap_or("?"),
                    m["type"].as_str().unwrap_or("?"),
                    m["sender"].as_str().unwrap_or("?"),
                    m["time"]
                )
            })
            .collect();
        lines.push(format!(
            "page {} ({} shown, {} in all)",
            page["pagination_page"],
            messages.len(),
            page["pagination_total"]
        ));
        lines.join("\n")
    });
    Ok(())
}

async fn forget(
    ctx: &Context,
    hashes: &[String],
    reason: Option<String>,
    channel: Option<String>,
) -> Result<()> {
    let signer = ctx.signer()?;
    let targets = hashes
        .iter()
        .map(|h| ItemHash::try_from(h.as_str()).with_context(|| format!("{h} is not an item hash")))
        .collect::<Result<Vec<_>>>()?;
    let content = ForgetContent::new(targets, Vec::new(), reason);
    let client = ctx.client()?;
    let (message, accepted) =
        publish(&client, &signer, MessageType::Forget, &content, channel).await?;
    let value = json!({
        "item_hash": message.item_hash.to_string(),
        "status": accepted.status,
        "pending_reason": accepted.pending_reason,
        "targets": hashes,
    });
    ctx.out.result(&value, || {
        format!(
            "FORGET {} posted ({}) for {}",
            message.item_hash,
            accepted.describe(),
            hashes.join(", ")
        )
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_status_shows_code_and_meaning() {
        let status = json!({"status": "rejected", "item_hash": "ab", "error_code": 5,
                            "details": {"errors": ["short"]}});
        let text = describe_status(&status);
        assert!(
            text.starts_with("ab: rejected, code 5 (insufficient balance)"),
            "{text}"
        );
        assert!(text.contains("short"), "{text}");
    }

    #[test]
    fn list_filters_map_to_query_names() {
        let filters = ListFilters {
            addresses: vec!["0xa".into(), "0xb".into()],
            owners: vec![],
            types: vec!["store".into()],
            channels: vec![],
            refs: vec![],
            hashes: vec![],
            statuses: vec![],
            per_page: 5,
            page: 2,
        };
        let query = filters.query();
        assert!(query.contains(&("addresses", "0xa,0xb".into())));
        assert!(query.contains(&("msgTypes", "STORE".into())));
        assert!(query.contains(&("pagination", "5".into())));
        assert!(query.contains(&("page", "2".into())));
        assert!(!query.iter().any(|(name, _)| *name == "owners"));
    }
}
