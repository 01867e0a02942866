//! Applies the rules of `rules` to the kernel with the `nft` tool (JSON in, JSON out).
//!
//! Only our own table (`inet <table>`) is ever listed or changed. Each change is one
//! `nft -f` batch, which the kernel applies atomically: a VM's rules are replaced or
//! removed in one step, never half. `nft` runs in the calling thread's network
//! namespace.

use super::VmNet;
use super::config::NetworkConfig;
use super::error::{NetworkError, Result};
use super::rules::{self, PortForward, Protocol};
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables, Rule};
use nftables::types::NfFamily;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The `nft` program; a bare name is looked up in `PATH`.
const NFT: &str = "nft";

/// One rule of our table as `nft` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRule {
    pub chain: String,
    pub handle: u32,
    pub comment: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Firewall {
    table: String,
    pool: (Ipv4Addr, u8),
    pool_v6: Option<(Ipv6Addr, u8)>,
    uplink: Option<String>,
}

impl Firewall {
    pub fn new(config: &NetworkConfig) -> Self {
        Self {
            table: config.table.clone(),
            pool: config.ipv4_pool,
            pool_v6: config.ipv6_pool,
            uplink: config.uplink.clone(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates our table and base chains if they are missing; leaves the rules in them.
    pub async fn ensure_base(&self) -> Result<()> {
        let commands = rules::base(&self.table)
            .into_iter()
            .map(NfCmd::Add)
            .collect();
        apply("create the base table", commands).await
    }

    /// Installs the VM's filter and NAT rules, replacing any it had (its port forwards
    /// stay). A VM with an IPv6 side needs an IPv6 pool to be closed off from.
    pub async fn add_vm(&self, vm: &VmNet) -> Result<()> {
        if vm.ipv6.is_some() && self.pool_v6.is_none() {
            return Err(NetworkError::Nft {
                action: format!("add the rules of VM {}", vm.vm_id),
                detail: "it has an IPv6 address but no IPv6 pool is configured".into(),
            });
        }
        let tag = rules::vm_tag(&vm.vm_id);
        let mut commands = self.delete_where(|comment| comment == tag).await?;
        commands.extend(
            rules::vm_rules(
                &self.table,
                self.pool,
                self.pool_v6,
                self.uplink.as_deref(),
                vm,
            )
            .into_iter()
            .map(NfCmd::Add),
        );
        apply(&format!("add the rules of VM {}", vm.vm_id), commands).await
    }

    /// Removes every rule of the VM, its port forwards included; returns how many.
    pub async fn remove_vm(&self, vm_id: &str) -> Result<usize> {
        let commands = self
            .delete_where(|comment| rules::belongs_to(comment, vm_id))
            .await?;
        let removed = commands.len();
        if removed > 0 {
            apply(&format!("remove the rules of VM {vm_id}"), commands).await?;
        }
        Ok(removed)
    }

    /// Forwards `host_port` on the host's addresses to `guest_port` on the VM,
    /// replacing a forward of the same host port and protocol.
    pub async fn add_forward(
        &self,
        vm: &VmNet,
        protocol: Protocol,
        host_port: u16,
        guest_port: u16,
    ) -> Result<()> {
        let forward = PortForward {
            protocol,
            host_port,
            guest_port,
        };
        let mut commands = self
            .delete_where(|comment| is_forward_of(comment, &vm.vm_id, protocol, host_port))
            .await?;
        commands.push(NfCmd::Add(rules::forward_rule(&self.table, vm, &forward)));
        apply(
            &format!("forward {protocol}/{host_port} to VM {}", vm.vm_id),
            commands,
        )
        .await
    }

    /// Stops forwarding `host_port`; false if it was not forwarded to this VM.
    pub async fn remove_forward(
        &self,
        vm_id: &str,
        protocol: Protocol,
        host_port: u16,
    ) -> Result<bool> {
        let commands = self
            .delete_where(|comment| is_forward_of(comment, vm_id, protocol, host_port))
            .await?;
        if commands.is_empty() {
            return Ok(false);
        }
        apply(&format!("stop forwarding {protocol}/{host_port}"), commands).await?;
        Ok(true)
    }

    /// The VM's port forwards as installed (a restarted CRN re-adopts them).
    pub async fn forwards(&self, vm_id: &str) -> Result<Vec<PortForward>> {
        Ok(self
            .list_rules()
            .await?
            .iter()
            .filter_map(|rule| rules::parse_forward_tag(rule.comment.as_deref()?, vm_id))
            .collect())
    }

    /// Every rule in our table; empty if the table does not exist.
    pub async fn list_rules(&self) -> Result<Vec<ListedRule>> {
        if !self.table_exists().await? {
            return Ok(Vec::new());
        }
        let listing = run(&["-j", "list", "table", "inet", &self.table], None).await?;
        let listing: serde_json::Value =
            serde_json::from_slice(&listing).map_err(|e| NetworkError::Nft {
                action: format!("list table inet {}", self.table),
                detail: format!("unreadable JSON: {e}"),
            })?;
        Ok(listing["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|object| {
                let rule = object.get("rule")?;
                Some(ListedRule {
                    chain: rule["chain"].as_str()?.to_string(),
                    handle: u32::try_from(rule["handle"].as_u64()?).ok()?,
                    comment: rule["comment"].as_str().map(str::to_string),
                })
            })
            .collect())
    }

    pub async fn table_exists(&self) -> Result<bool> {
        let listing = run(&["-j", "list", "tables", "inet"], None).await?;
        let listing: serde_json::Value =
            serde_json::from_slice(&listing).map_err(|e| NetworkError::Nft {
                action: "list tables".to_string(),
                detail: format!("unreadable JSON: {e}"),
            })?;
        Ok(listing["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|object| object["table"]["name"] == self.table.as_str()))
    }

    /// Removes our table and everything in it; false if there was none.
    pub async fn teardown(&self) -> Result<bool> {
        if !self.table_exists().await? {
            return Ok(false);
        }
        let table = NfListObject::Table(nftables::schema::Table {
            family: NfFamily::INet,
            name: self.table.clone().into(),
            handle: None,
        });
        apply("delete our table", vec![NfCmd::Delete(table)]).await?;
        Ok(true)
    }

    /// Delete commands for the rules whose comment satisfies `select`.
    async fn delete_where(&self, select: impl Fn(&str) -> bool) -> Result<Vec<NfCmd<'static>>> {
        Ok(self
            .list_rules()
            .await?
            .into_iter()
            .filter(|rule| rule.comment.as_deref().is_some_and(&select))
            .map(|rule| {
                NfCmd::Delete(NfListObject::Rule(Rule {
                    family: NfFamily::INet,
                    table: self.table.clone().into(),
                    chain: rule.chain.into(),
                    expr: Vec::new().into(),
                    handle: Some(rule.handle),
                    index: None,
                    comment: None,
                }))
            })
            .collect())
    }
}

fn is_forward_of(comment: &str, vm_id: &str, protocol: Protocol, host_port: u16) -> bool {
    rules::parse_forward_tag(comment, vm_id)
        .is_some_and(|forward| forward.protocol == protocol && forward.host_port == host_port)
}

/// Runs one batch of commands through `nft -j -f -`.
async fn apply(action: &str, commands: Vec<NfCmd<'static>>) -> Result<()> {
    let document = Nftables {
        objects: commands.into_iter().map(NfObject::CmdObject).collect(),
    };
    let json = serde_json::to_vec(&document).map_err(|e| NetworkError::Nft {
        action: action.to_string(),
        detail: format!("cannot encode the batch: {e}"),
    })?;
    run(&["-j", "-f", "-"], Some(&json))
        .await
        .map_err(|error| match error {
            NetworkError::Nft { detail, .. } => NetworkError::Nft {
                action: action.to_string(),
                detail,
            },
            other => other,
        })?;
    Ok(())
}

/// Runs `nft` with `args`, feeding `input`; its standard output.
async fn run(args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>> {
    let action = args.join(" ");
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NetworkError::Io {
            what: format!("run {NFT} (Debian package nftables)"),
            source,
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input)
            .await
            .map_err(|source| NetworkError::Io {
                what: format!("write to {NFT}"),
                source,
            })?;
        // Closing stdin tells nft the batch is complete.
        drop(stdin);
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| NetworkError::Io {
            what: format!("wait for {NFT}"),
            source,
        })?;
    if !output.status.success() {
        return Err(NetworkError::Nft {
            action,
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(output.stdout)
}
