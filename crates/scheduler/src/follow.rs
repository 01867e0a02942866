//! Following the CCN: node registrations, persistent programs, instances, and what
//! forgets or replaces them, read from `GET /api/v0/messages.json` in ascending time.
//!
//! Each stream keeps a cursor (the newest message time seen, persisted) and asks again
//! from [`OVERLAP`] before it, so that a message processed a little after a newer one
//! is not skipped; reading a message twice changes nothing (everything is keyed by
//! item hash, and retired hashes never come back). A message whose `time` is more than
//! [`OVERLAP`] older than the newest one seen when it arrives is missed by the
//! increments; the first sync after a start reads each stream from the beginning.

use crate::state::{Event, INSTANCE, PERSISTENT_PROGRAM};
use aleph_protocol::scheduler::{
    CORECHAN_OPERATION, CREATE_RESOURCE_NODE, DROP_NODE, NodeOperation,
};
use serde_json::Value;
use std::time::Duration;

/// How far before its cursor each stream is read again.
pub const OVERLAP: Duration = Duration::from_secs(60);
/// Messages per page.
pub const PAGE_SIZE: usize = 200;

/// A followed stream: its cursor name and its query.
pub struct Stream {
    pub name: &'static str,
    pub query: &'static str,
}

pub const STREAMS: &[Stream] = &[
    Stream {
        name: "cursor:nodes",
        query: "msgTypes=POST&contentTypes=corechan-operation",
    },
    Stream {
        name: "cursor:programs",
        query: "msgTypes=PROGRAM",
    },
    Stream {
        name: "cursor:instances",
        query: "msgTypes=INSTANCE",
    },
    Stream {
        name: "cursor:forgets",
        query: "msgTypes=FORGET",
    },
];

/// The URL of one page of a stream.
pub fn page_url(ccn: &str, stream: &Stream, start: Option<f64>, page: usize) -> String {
    let mut url = format!(
        "{}/api/v0/messages.json?{}&sortOrder=1&pagination={PAGE_SIZE}&page={page}",
        ccn.trim_end_matches('/'),
        stream.query
    );
    if let Some(start) = start {
        url.push_str(&format!("&startDate={start}"));
    }
    url
}

fn text(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// What a message (as `messages.json` serves it) means to the scheduler.
pub fn interpret(message: &Value) -> Vec<Event> {
    let Some(hash) = text(message, "/item_hash") else {
        return Vec::new();
    };
    let sender = text(message, "/sender").unwrap_or_default();
    let content = message.get("content").cloned().unwrap_or(Value::Null);
    let owner = text(&content, "/address").unwrap_or_else(|| sender.clone());
    let time = message.get("time").and_then(Value::as_f64).unwrap_or(0.0);
    let mut events = Vec::new();
    match message.get("type").and_then(Value::as_str) {
        Some("POST") if content.get("type").and_then(Value::as_str) == Some(CORECHAN_OPERATION) => {
            let Some(operation) = content
                .get("content")
                .and_then(|c| serde_json::from_value::<NodeOperation>(c.clone()).ok())
            else {
                return events;
            };
            match operation.action.as_str() {
                CREATE_RESOURCE_NODE if !operation.details.address.is_empty() => {
                    events.push(Event::RegisterNode {
                        hash,
                        owner: sender,
                        name: operation.details.name,
                        address: operation.details.address,
                        time,
                    });
                }
                DROP_NODE => {
                    if let Some(node_hash) = text(&content, "/ref") {
                        events.push(Event::DropNode { node_hash, sender });
                    }
                }
                _ => {}
            }
        }
        Some(kind @ ("PROGRAM" | "INSTANCE")) => {
            if let Some(replaced) = text(&content, "/replaces") {
                events.push(Event::Retire {
                    hash: replaced,
                    why: format!("replaced by {hash}"),
                });
            }
            // Every instance is kept running; one pinned to a node
            // (`requirements.node.node_hash`, as instances paid by the hour are) is only
            // ever placed there.
            let persistent =
                kind == "INSTANCE" || content.pointer("/on/persistent") == Some(&Value::Bool(true));
            if persistent {
                events.push(Event::Vm {
                    hash,
                    vm_type: if kind == "PROGRAM" {
                        PERSISTENT_PROGRAM
                    } else {
                        INSTANCE
                    },
                    owner,
                    content,
                });
            }
        }
        Some("FORGET") => {
            for forgotten in content
                .get("hashes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                events.push(Event::Retire {
                    hash: forgotten.to_owned(),
                    why: format!("forgotten by {hash}"),
                });
            }
        }
        _ => {}
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_registrations_programs_instances_and_forgets() {
        let register = json!({"item_hash": "n1", "sender": "0xA", "type": "POST", "time": 5.0,
            "content": {"type": "corechan-operation", "address": "0xA", "content": {
                "action": "create-resource-node", "tags": [], "details": {"name": "crn", "address": "http://x"}}}});
        assert_eq!(
            interpret(&register),
            vec![Event::RegisterNode {
                hash: "n1".into(),
                owner: "0xA".into(),
                name: "crn".into(),
                address: "http://x".into(),
                time: 5.0
            }]
        );
        let drop = json!({"item_hash": "d", "sender": "0xA", "type": "POST",
            "content": {"type": "corechan-operation", "ref": "n1", "content": {"action": "drop-node"}}});
        assert_eq!(
            interpret(&drop),
            vec![Event::DropNode {
                node_hash: "n1".into(),
                sender: "0xA".into()
            }]
        );
        let on_demand =
            json!({"item_hash": "p", "type": "PROGRAM", "content": {"on": {"http": true}}});
        assert!(interpret(&on_demand).is_empty());
        let unpersist = json!({"item_hash": "p2", "type": "PROGRAM",
            "content": {"address": "0xB", "on": {"persistent": false}, "replaces": "p1"}});
        assert!(matches!(&interpret(&unpersist)[..], [Event::Retire { hash, .. }] if hash == "p1"));
        let persistent = json!({"item_hash": "p3", "type": "PROGRAM",
            "content": {"address": "0xB", "on": {"persistent": true}}});
        assert!(matches!(&interpret(&persistent)[..],
            [Event::Vm { hash, vm_type: PERSISTENT_PROGRAM, owner, .. }] if hash == "p3" && owner == "0xB"));
        let pinned = json!({"item_hash": "i", "type": "INSTANCE",
            "content": {"payment": {"type": "credit"}, "requirements": {"node": {"node_hash": "n1"}}}});
        assert!(matches!(
            &interpret(&pinned)[..],
            [Event::Vm {
                vm_type: INSTANCE,
                ..
            }]
        ));
        let held = json!({"item_hash": "i2", "type": "INSTANCE", "content": {}});
        assert!(matches!(
            &interpret(&held)[..],
            [Event::Vm {
                vm_type: INSTANCE,
                ..
            }]
        ));
        let forget =
            json!({"item_hash": "f", "type": "FORGET", "content": {"hashes": ["p3", "n1"]}});
        assert_eq!(interpret(&forget).len(), 2);
    }
}
