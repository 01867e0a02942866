//! CRNs by node hash and URL: the scheduler's node list, then the CCN's node
//! registrations (so `--crn` still resolves while the scheduler is down).

use crate::client::CcnClient;
use crate::scheduler::SchedulerClient;
use aleph_protocol::scheduler::{CORECHAN_OPERATION, CREATE_RESOURCE_NODE, DROP_NODE};
use serde_json::Value;

/// A CRN by its node hash and URL.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KnownNode {
    pub(super) hash: String,
    pub(super) url: String,
}

/// The CRNs known by hash and URL: the scheduler's node list (the `corechannel`
/// aggregate's shape), then the CCN's registration messages that the scheduler
/// reads itself, so that a lookup still works while the scheduler is down.
pub(super) struct NodeDirectory {
    nodes: Vec<KnownNode>,
    /// Why a source could not be read, to explain a failed lookup.
    problems: Vec<String>,
}

impl NodeDirectory {
    pub(super) async fn load(scheduler: &SchedulerClient, client: &CcnClient) -> Self {
        let mut nodes = Vec::new();
        let mut problems = Vec::new();
        match scheduler.nodes().await {
            Ok(list) => nodes.extend(list.resource_nodes.into_iter().map(|n| KnownNode {
                hash: n.hash,
                url: n.address,
            })),
            Err(e) => problems.push(format!("{e:#}")),
        }
        let page = client
            .messages(&[
                ("msgTypes", "POST".to_owned()),
                ("contentTypes", CORECHAN_OPERATION.to_owned()),
                ("pagination", "500".to_owned()),
            ])
            .await;
        match page {
            Ok(page) => nodes.extend(registered_nodes(&page)),
            Err(e) => problems.push(format!("reading node registrations: {e:#}")),
        }
        Self { nodes, problems }
    }

    pub(super) fn hash_of(&self, url: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| same_url(&n.url, url))
            .map(|n| n.hash.as_str())
    }

    pub(super) fn url_of(&self, hash: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.hash == hash)
            .map(|n| n.url.as_str())
    }

    /// ` (why: …)` when a source could not be read, else nothing.
    pub(super) fn caveat(&self) -> String {
        if self.problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.problems.join("; "))
        }
    }
}

/// The nodes that `create-resource-node` POSTs register and no `drop-node`
/// removed, newest first.
fn registered_nodes(page: &Value) -> Vec<KnownNode> {
    let messages = page["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let operation = |m: &Value| {
        m["content"]["content"]["action"]
            .as_str()
            .map(str::to_owned)
    };
    let dropped: Vec<&str> = messages
        .iter()
        .filter(|m| operation(m).as_deref() == Some(DROP_NODE))
        .filter_map(|m| m["content"]["ref"].as_str())
        .collect();
    let mut created: Vec<&Value> = messages
        .iter()
        .filter(|m| operation(m).as_deref() == Some(CREATE_RESOURCE_NODE))
        .collect();
    created.sort_by(|a, b| {
        let time = |m: &Value| m["time"].as_f64().unwrap_or(0.0);
        time(b).total_cmp(&time(a))
    });
    created
        .into_iter()
        .filter_map(|m| {
            let hash = m["item_hash"].as_str()?;
            let url = m["content"]["content"]["details"]["address"].as_str()?;
            (!dropped.contains(&hash)).then(|| KnownNode {
                hash: hash.to_owned(),
                url: url.to_owned(),
            })
        })
        .collect()
}

fn same_url(a: &str, b: &str) -> bool {
    let normal = |u: &str| u.trim().trim_end_matches('/').to_ascii_lowercase();
    normal(a) == normal(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_is_found_by_its_registration_unless_dropped() {
        let register = |hash: &str, time: f64, address: &str| {
            json!({"item_hash": hash, "time": time, "content": {"type": "corechan-operation",
                "content": {"action": "create-resource-node", "details": {"name": "n", "address": address}}}})
        };
        let drop = |target: &str| {
            json!({"item_hash": "d", "time": 9.0, "content": {"type": "corechan-operation",
                "ref": target, "content": {"action": "drop-node"}}})
        };
        let directory = |messages: Vec<Value>| NodeDirectory {
            nodes: registered_nodes(&json!({"messages": messages})),
            problems: Vec::new(),
        };
        let mut messages = vec![
            register("old", 1.0, "http://127.0.0.1:4020"),
            register("new", 2.0, "http://127.0.0.1:4020/"),
            register("other", 3.0, "http://127.0.0.1:4021"),
        ];
        let nodes = directory(messages.clone());
        assert_eq!(nodes.hash_of("http://127.0.0.1:4020"), Some("new"));
        assert_eq!(nodes.url_of("other"), Some("http://127.0.0.1:4021"));
        messages.push(drop("new"));
        let nodes = directory(messages);
        assert_eq!(nodes.hash_of("HTTP://127.0.0.1:4020/"), Some("old"));
        assert_eq!(nodes.url_of("new"), None);
        assert_eq!(nodes.hash_of("http://127.0.0.1:9"), None);
        assert_eq!(nodes.caveat(), "");
    }
}
