//! `aleph aggregate post|get`: per-address key-value documents.

use super::publish;
use crate::context::Context;
use aleph_types::message::{AggregateContent, AggregateKey, MessageType};
use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde_json::{Map, Value, json};
use std::io::Read;

#[derive(Subcommand)]
pub enum AggregateCommand {
    /// Merge a JSON object into the aggregate KEY of the signing account.
    Post {
        key: String,
        /// A JSON object, or `-` to read it from stdin.
        content: String,
        #[arg(long)]
        channel: Option<String>,
    },
    /// Print the aggregate KEY of an address.
    Get {
        key: String,
        /// Owner of the aggregate; default: the signing account.
        #[arg(long)]
        address: Option<String>,
    },
}

pub async fn run(ctx: &Context, command: AggregateCommand) -> Result<()> {
    match command {
        AggregateCommand::Post {
            key,
            content,
            channel,
        } => post(ctx, key, &content, channel).await,
        AggregateCommand::Get { key, address } => get(ctx, key, address).await,
    }
}

async fn post(ctx: &Context, key: String, content: &str, channel: Option<String>) -> Result<()> {
    let signer = ctx.signer()?;
    let content = parse_object(content)?;
    let aggregate = AggregateContent {
        key: AggregateKey::String(key.clone()),
        content,
    };
    let client = ctx.client()?;
    let (message, accepted) = publish(
        &client,
        &signer,
        MessageType::Aggregate,
        &aggregate,
        channel,
    )
    .await?;
    let value = json!({
        "item_hash": message.item_hash.to_string(),
        "status": accepted.status,
        "pending_reason": accepted.pending_reason,
        "address": signer.address(),
        "key": key,
    });
    ctx.out.result(&value, || {
        format!(
            "aggregate {key} of {} posted: {} ({})",
            signer.address(),
            message.item_hash,
            accepted.describe()
        )
    });
    Ok(())
}

fn parse_object(text: &str) -> Result<Map<String, Value>> {
    let text = if text == "-" {
        let mut buffer = String::new();
        std::io::stdin()
            .read_to_string(&mut buffer)
            .context("reading the content from stdin")?;
        buffer
    } else {
        text.to_owned()
    };
    match serde_json::from_str(&text).context("the content is not valid JSON")? {
        Value::Object(map) => Ok(map),
        other => bail!("an aggregate's content must be a JSON object, got {other}"),
    }
}

async fn get(ctx: &Context, key: String, address: Option<String>) -> Result<()> {
    let address = ctx.address_or_own(address)?;
    let Some(value) = ctx.client()?.aggregate(&address, &key).await? else {
        bail!("{address} has no aggregate {key:?}");
    };
    ctx.out.result(&value, || {
        serde_json::to_string_pretty(&value).expect("JSON values serialize")
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_objects_are_aggregate_content() {
        assert_eq!(parse_object(r#"{"a":1}"#).unwrap()["a"], 1);
        assert!(parse_object("[1,2]").is_err());
        assert!(parse_object("{not json").is_err());
    }
}
