//! Where an instance runs: its CRN (given, placed by the scheduler, or pinned),
//! that CRN's executions list and the host port its SSH port is forwarded to.

use super::nodes::NodeDirectory;
use super::{SSH_PORT, SSH_USER};
use crate::context::Context;
use aleph_protocol::scheduler::VmEntry;
use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// How to log into an instance.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SshEndpoint {
    pub(super) host: String,
    pub(super) port: u16,
}

impl SshEndpoint {
    pub(super) fn to_json(&self) -> Value {
        json!({"host": self.host, "port": self.port, "user": SSH_USER})
    }

    pub(super) fn command_line(&self) -> String {
        format!("ssh {SSH_USER}@{} -p {}", self.host, self.port)
    }
}

/// An instance's entry in a CRN's `/v2/about/executions/list`.
#[derive(Debug, Deserialize)]
pub(super) struct ExecutionEntry {
    #[serde(default)]
    pub(super) running: bool,
    #[serde(default)]
    networking: Option<Networking>,
}

#[derive(Debug, Deserialize)]
struct Networking {
    #[serde(default)]
    mapped_ports: Option<HashMap<String, MappedPort>>,
}

#[derive(Debug, Deserialize)]
struct MappedPort {
    host: u16,
    #[serde(default = "yes")]
    tcp: bool,
}

fn yes() -> bool {
    true
}

impl ExecutionEntry {
    /// The host port the guest's port 22 is forwarded to, once it is.
    pub(super) fn ssh_port(&self) -> Option<u16> {
        let mapped = self.networking.as_ref()?.mapped_ports.as_ref()?;
        mapped.get(SSH_PORT).filter(|p| p.tcp).map(|p| p.host)
    }
}

pub(super) fn crn_http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(concat!("aleph-rust-cli/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The CRN's executions list, keyed by VM hash.
pub(super) async fn executions(
    http: &reqwest::Client,
    crn: &str,
) -> Result<HashMap<String, Value>> {
    let url = format!("{}/v2/about/executions/list", crn.trim_end_matches('/'));
    let response = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach the CRN at {crn}"))?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!(
            "the CRN at {crn} answered HTTP {status} for its executions list: {}",
            body.trim()
        );
    }
    serde_json::from_str(&body)
        .with_context(|| format!("the CRN at {crn} sent an unexpected executions list: {body}"))
}

/// `hash`'s entry in the CRN's executions list, if it has one.
pub(super) async fn execution(
    http: &reqwest::Client,
    crn: &str,
    hash: &str,
) -> Result<Option<ExecutionEntry>> {
    match executions(http, crn).await?.remove(hash) {
        Some(entry) => Ok(Some(serde_json::from_value(entry).with_context(|| {
            format!("the CRN at {crn} lists {hash} in an unexpected shape")
        })?)),
        None => Ok(None),
    }
}

/// The host to SSH to: the CRN URL's (its forwarded ports are on that address).
pub(super) fn crn_host(crn: &str) -> Result<String> {
    let url = reqwest::Url::parse(crn).with_context(|| format!("{crn:?} is not a URL"))?;
    match url.host_str() {
        // ssh takes an IPv6 address without the URL's brackets.
        Some(host) => Ok(host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()),
        None => bail!("the CRN URL {crn:?} has no host"),
    }
}

/// The CRN `hash` runs on: `--crn`, else the one the scheduler allocated it
/// to, else the node its message pins (`requirements.node.node_hash`).
pub(super) async fn crn_of(ctx: &Context, hash: &str, given: Option<String>) -> Result<String> {
    if let Some(crn) = given {
        return Ok(crn);
    }
    let scheduler = ctx.scheduler()?;
    let placed = match scheduler.vm(hash).await {
        Ok(Some(VmEntry {
            allocated_url: Some(url),
            ..
        })) => return Ok(url),
        Ok(Some(vm)) => format!(
            "the scheduler has it {}{}",
            vm.status,
            vm.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ),
        Ok(None) => format!("the scheduler at {} does not track it", scheduler.base()),
        Err(e) => format!("{e:#}"),
    };
    let client = ctx.client()?;
    let pinned = match client.message(hash).await? {
        Some(status) => status["message"]["content"]["requirements"]["node"]["node_hash"]
            .as_str()
            .map(str::to_owned),
        None => bail!("the CCN does not know the message {hash}"),
    };
    if let Some(node) = pinned {
        let directory = NodeDirectory::load(&scheduler, &client).await;
        return match directory.url_of(&node) {
            Some(url) => Ok(url.to_owned()),
            None => bail!(
                "instance {hash} is pinned to node {node}, whose URL is unknown{}: name its CRN with --crn URL",
                directory.caveat()
            ),
        };
    }
    bail!(
        "instance {hash} is on no CRN yet ({placed}): see `aleph instance list`, or name its CRN with --crn URL"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssh_port_is_read_from_the_executions_list_shape() {
        let entry: ExecutionEntry = serde_json::from_value(json!({
            "networking": {"ipv4_network": "172.16.3.0/24", "ipv4_ip": "172.16.3.2",
                "host_ipv4": null, "ipv6_network": null, "ipv6_ip": null,
                "mapped_ports": {"22": {"host": 24000, "tcp": true, "udp": false}}},
            "running": true, "vm_type": "instance", "status": {"started_at": "x"},
        }))
        .unwrap();
        assert!(entry.running);
        assert_eq!(entry.ssh_port(), Some(24000));
        let unmapped: ExecutionEntry =
            serde_json::from_value(json!({"networking": {"mapped_ports": null}, "running": true}))
                .unwrap();
        assert_eq!(unmapped.ssh_port(), None);
        let bare: ExecutionEntry = serde_json::from_value(json!({"running": false})).unwrap();
        assert_eq!(bare.ssh_port(), None);
    }

    #[test]
    fn the_crn_host_is_what_ssh_connects_to() {
        assert_eq!(crn_host("http://127.0.0.1:4020").unwrap(), "127.0.0.1");
        assert_eq!(
            crn_host("https://crn.example.org/").unwrap(),
            "crn.example.org"
        );
        assert_eq!(crn_host("http://[::1]:4020").unwrap(), "::1");
        assert!(crn_host("not a url").is_err());
    }
}
