//! `aleph node list`: the compute nodes the scheduler knows, with their health.

use crate::context::Context;
use aleph_protocol::scheduler::NodeEntry;
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// The CRNs registered on the CCN, as the scheduler sees them: status, last
    /// heartbeat and the persistent VMs allocated to each.
    List,
}

pub async fn run(ctx: &Context, command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::List => list(ctx).await,
    }
}

async fn list(ctx: &Context) -> Result<()> {
    let scheduler = ctx.scheduler()?;
    let nodes = scheduler.nodes().await?;
    let value = serde_json::to_value(&nodes)?;
    ctx.out.result(&value, || {
        if nodes.resource_nodes.is_empty() {
            return format!(
                "the scheduler at {} knows no node (CRNs are registered by corechan-operation POSTs on the CCN)",
                scheduler.base()
            );
        }
        table(&nodes.resource_nodes)
    });
    Ok(())
}

/// One line per node under a header, columns padded to their widest cell.
fn table(nodes: &[NodeEntry]) -> String {
    let header = ["HASH", "NAME", "ADDRESS", "STATUS", "LAST HEARTBEAT", "VMS"].map(str::to_owned);
    let rows: Vec<[String; 6]> = nodes
        .iter()
        .map(|node| {
            [
                node.hash.clone(),
                non_empty(&node.name),
                non_empty(&node.address),
                node.status.clone(),
                node.last_heartbeat
                    .clone()
                    .unwrap_or_else(|| "never".into()),
                node.vms.len().to_string(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            row.iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn non_empty(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(hash: &str, name: &str, heartbeat: Option<&str>, vms: usize) -> NodeEntry {
        NodeEntry {
            hash: hash.into(),
            name: name.into(),
            address: format!("http://127.0.0.1:40{}", hash.len()),
            owner: "0xabc".into(),
            status: "active".into(),
            score: 1.0,
            last_heartbeat: heartbeat.map(str::to_owned),
            resources: None,
            vms: (0..vms).map(|i| format!("vm{i}")).collect(),
        }
    }

    #[test]
    fn the_table_aligns_columns_and_says_never_for_a_silent_node() {
        let text = table(&[
            node("aaaa", "first", Some("2026-11-23T11:00:00Z"), 2),
            node("bb", "", None, 0),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("HASH  NAME   ADDRESS"), "{text}");
        assert!(
            lines[1]
                .starts_with("aaaa  first  http://127.0.0.1:404  active  2026-11-23T11:00:00Z  2"),
            "{text}"
        );
        assert!(lines[2].starts_with("bb    -      "), "{text}");
        assert!(lines[2].contains("never"), "{text}");
        assert!(lines[2].ends_with('0'), "{text}");
    }
}
