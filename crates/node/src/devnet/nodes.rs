//! The devnet's CRNs in the node registry: each is registered on the CCN by a
//! signed `corechan-operation` POST (`create-resource-node` with its URL), as a
//! node operator does on the public network, from its own operator key. The
//! scheduler reads those POSTs; the node's hash is the POST's item hash and its
//! owner the POST's sender, whose key the CRN then signs its heartbeats with.
//!
//! Operator keys are derived from fixed seeds, so a devnet restarted on the same
//! data finds its registrations again (same operator, same URL) instead of
//! piling up new nodes; a registration of that operator under another URL (the
//! ports changed) is dropped.

use aleph_ccn::CcnHandle;
use aleph_protocol::scheduler::{
    CORECHAN_OPERATION, CREATE_RESOURCE_NODE, DROP_NODE, NodeDetails, NodeOperation,
};
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The operator key of the devnet's CRN `index` (from 0): sha256("aleph-devnet-operator-{index}"),
/// hex without `0x`.
pub fn operator_key(index: usize) -> String {
    hex::encode(Sha256::digest(format!("aleph-devnet-operator-{index}")))
}

/// A node as registered: its hash (the POST's item hash) and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub node_hash: String,
    pub owner: String,
}

/// The node hash of `url` registered by `operator_key`: the existing registration
/// when there is one, else a new `create-resource-node` POST. Other live
/// registrations by the same operator (old URLs) are dropped.
pub async fn register(
    ccn: &CcnHandle,
    operator_key: &str,
    name: &str,
    url: &str,
) -> Result<Registration> {
    let signer = Signer::from_hex(operator_key).context("devnet operator key")?;
    let owner = signer.address().to_owned();
    let existing = registrations(&ccn.url(), &owner).await?;
    let mut found = None;
    for (hash, address) in existing {
        if address.trim_end_matches('/') == url.trim_end_matches('/') && found.is_none() {
            found = Some(hash);
        } else {
            let drop = signer.sign(
                MessageType::Post,
                json!({
                    "type": CORECHAN_OPERATION,
                    "ref": hash,
                    "content": {"action": DROP_NODE},
                }),
                None,
            )?;
            super::messages::submit(ccn, drop, "a stale node registration's drop")
                .await
                .with_context(|| format!("dropping the node {hash} ({address})"))?;
        }
    }
    if let Some(node_hash) = found {
        return Ok(Registration { node_hash, owner });
    }
    let operation = NodeOperation {
        action: CREATE_RESOURCE_NODE.into(),
        tags: vec!["devnet".into()],
        details: NodeDetails {
            name: name.into(),
            address: url.into(),
        },
    };
    let post = signer.sign(
        MessageType::Post,
        json!({"type": CORECHAN_OPERATION, "content": operation}),
        None,
    )?;
    let node_hash = super::messages::submit(ccn, post, "the node registration").await?;
    Ok(Registration { node_hash, owner })
}

/// Live `create-resource-node` registrations posted by `owner`, minus those it
/// dropped: `(node hash, URL)`, oldest first.
async fn registrations(ccn_url: &str, owner: &str) -> Result<Vec<(String, String)>> {
    let page: Value = reqwest::Client::new()
        .get(format!("{ccn_url}/api/v0/messages.json"))
        .query(&[
            ("msgTypes", "POST"),
            ("contentTypes", CORECHAN_OPERATION),
            ("addresses", owner),
            ("pagination", "500"),
        ])
        .send()
        .await
        .context("listing node registrations on the CCN")?
        .error_for_status()?
        .json()
        .await?;
    let messages = page["messages"].as_array().cloned().unwrap_or_default();
    Ok(live_registrations(&messages))
}

/// From POST messages, the created nodes not dropped afterwards.
fn live_registrations(messages: &[Value]) -> Vec<(String, String)> {
    let mut created: Vec<(String, String, f64)> = Vec::new();
    let mut dropped = Vec::new();
    for message in messages {
        let content = &message["content"];
        let Ok(operation) = serde_json::from_value::<NodeOperation>(content["content"].clone())
        else {
            continue;
        };
        let time = message["time"].as_f64().unwrap_or_default();
        match operation.action.as_str() {
            CREATE_RESOURCE_NODE => {
                if let Some(hash) = message["item_hash"].as_str() {
                    created.push((hash.to_owned(), operation.details.address, time));
                }
            }
            DROP_NODE => {
                if let Some(target) = content["ref"].as_str() {
                    dropped.push(target.to_owned());
                }
            }
            _ => {}
        }
    }
    created.sort_by(|a, b| a.2.total_cmp(&b.2));
    created
        .into_iter()
        .filter(|(hash, _, _)| !dropped.contains(hash))
        .map(|(hash, address, _)| (hash, address))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_keys_are_fixed_and_distinct() {
        assert_eq!(operator_key(0), operator_key(0));
        assert_ne!(operator_key(0), operator_key(1));
        assert!(Signer::from_hex(&operator_key(2)).is_ok());
    }

    #[test]
    fn dropped_and_foreign_operations_are_not_live() {
        let post = |hash: &str, time: f64, content: Value| json!({"item_hash": hash, "time": time, "content": content});
        let messages = [
            post(
                "b",
                2.0,
                json!({"type": CORECHAN_OPERATION, "content": {"action": CREATE_RESOURCE_NODE, "details": {"address": "http://127.0.0.1:2"}}}),
            ),
            post(
                "a",
                1.0,
                json!({"type": CORECHAN_OPERATION, "content": {"action": CREATE_RESOURCE_NODE, "details": {"address": "http://127.0.0.1:1"}}}),
            ),
            post(
                "c",
                3.0,
                json!({"type": CORECHAN_OPERATION, "content": {"action": CREATE_RESOURCE_NODE, "details": {"address": "http://127.0.0.1:3"}}}),
            ),
            post(
                "d",
                4.0,
                json!({"type": CORECHAN_OPERATION, "ref": "c", "content": {"action": DROP_NODE}}),
            ),
            post(
                "e",
                5.0,
                json!({"type": CORECHAN_OPERATION, "content": "x"}),
            ),
        ];
        assert_eq!(
            live_registrations(&messages),
            [
                ("a".to_owned(), "http://127.0.0.1:1".to_owned()),
                ("b".to_owned(), "http://127.0.0.1:2".to_owned()),
            ]
        );
    }

    /// A devnet restarted on the same data keeps its node hashes; one whose port
    /// changed gets a new registration and the old one is dropped.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_registration_is_reused_for_the_same_url_and_dropped_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let key = operator_key(7);
        let operator = Signer::from_hex(&key).unwrap().address().to_owned();
        let ccn = aleph_ccn::start(aleph_ccn::CcnConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_owned(),
            database_url: None,
            funded: vec![aleph_ccn::FundedAccount {
                address: operator.clone(),
                balance: 1000.0,
                credit_balance: 1_000_000_000,
            }],
        })
        .await
        .unwrap();
        let first = register(&ccn, &key, "n", "http://127.0.0.1:4020")
            .await
            .unwrap();
        assert_eq!(first.owner, operator);
        let again = register(&ccn, &key, "n", "http://127.0.0.1:4020/")
            .await
            .unwrap();
        assert_eq!(again, first);
        let moved = register(&ccn, &key, "n", "http://127.0.0.1:4025")
            .await
            .unwrap();
        assert_ne!(moved.node_hash, first.node_hash);
        let live = registrations(&ccn.url(), &operator).await.unwrap();
        assert_eq!(
            live,
            [(moved.node_hash.clone(), "http://127.0.0.1:4025".to_owned())]
        );
        ccn.shutdown().await;
    }
}
