//! Puts an instance's port forwards in place: host ports from the node's pool, the
//! firewall's forwards, a loopback relay per tcp forward, and the record. Done at each
//! start, and while the instance runs each time its owner's aggregate is read again
//! ([`super::port_aggregate`]); what to change is decided by [`super::port_plan`].
//!
//! An aggregate that cannot be read changes nothing: the forwards in place stay.

use super::Instances;
use super::port_plan::{self, PortMapping, WantedPorts, requested_ports, wanted_as_mapped};
use super::record::InstanceRecord;
use crate::error::ProgramError;
use crate::network::{LoopbackRelay, PortForward, Protocol, SSH_PORT};
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What the firewall holds of an instance's forwards before a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Installed {
    /// A start: the recorded forwards may be there or not (a node that died leaves
    /// them), so every wanted one is added again (an add replaces the same forward).
    Unsure,
    /// A running instance: the recorded forwards.
    AsRecorded,
}

impl Instances {
    /// The ports `record`'s owner wants forwarded, read from the CCN now; those in
    /// place when the aggregate cannot be read.
    pub(super) async fn wanted_ports_now(&self, record: &InstanceRecord) -> WantedPorts {
        let owner = &record.message.content.address;
        match self.aggregates.read(owner).await {
            Ok(aggregate) => self.wanted_ports(record, aggregate.as_ref()),
            Err(e) => {
                tracing::warn!(
                    "instance {}: port forwards left as recorded: {e}",
                    record.message.item_hash
                );
                wanted_as_mapped(&record.port_mapping())
            }
        }
    }

    /// The ports the owner's `aggregate` lists for `record`'s instance. Skipped entries
    /// are logged when they change, not at every read.
    fn wanted_ports(&self, record: &InstanceRecord, aggregate: Option<&Value>) -> WantedPorts {
        let hash = &record.message.item_hash;
        let requested = requested_ports(aggregate, hash);
        let mut state = self.state();
        let logged = state.skipped_ports.get(hash);
        if logged != Some(&requested.skipped) {
            for why in &requested.skipped {
                tracing::warn!("instance {hash}: port-forwarding entry skipped: {why}");
            }
            state
                .skipped_ports
                .insert(hash.clone(), requested.skipped.clone());
        }
        requested.ports
    }

    /// Brings the instance's forwards to `wanted`, from what the firewall holds
    /// (`installed`), and records where they ended. A forward that fails is logged and
    /// left for the next round; only 22/tcp failing is an error (the instance would be
    /// unreachable).
    pub(super) async fn apply_forwards(
        &self,
        record: &mut InstanceRecord,
        wanted: &WantedPorts,
        installed: Installed,
    ) -> Result<(), ProgramError> {
        let hash = record.message.item_hash.clone();
        let ssh_port = record.ssh_port;
        let current = record.port_mapping();
        let (target, unplaced) = {
            let mut state = self.state();
            port_plan::next_mapping(&current, wanted, |guest| {
                if guest == SSH_PORT {
                    Some(ssh_port)
                } else {
                    state.ports.allocate().ok()
                }
            })
        };
        for guest in unplaced {
            tracing::warn!("instance {hash}: no host port left to forward guest port {guest}");
        }
        let mut changes = port_plan::forward_changes(&current, &target);
        if installed == Installed::Unsure {
            changes.add = port_plan::forwards(&target);
        }

        let mut failed_removals = Vec::new();
        for forward in &changes.remove {
            let removed = self
                .network()
                .firewall()
                .remove_forward(&record.net.vm_id, forward.protocol, forward.host_port)
                .await;
            match removed {
                Ok(_) => tracing::info!("instance {hash}: {} no longer forwarded", show(forward)),
                Err(e) => {
                    tracing::warn!("instance {hash}: {} still forwarded: {e}", show(forward));
                    failed_removals.push(*forward);
                }
            }
            if forward.protocol == Protocol::Tcp {
                self.close_relay(&hash, forward.host_port);
            }
        }
        let mut failed_adds = Vec::new();
        for forward in &changes.add {
            let added = self
                .network()
                .add_forward(
                    &record.net,
                    forward.protocol,
                    forward.host_port,
                    forward.guest_port,
                )
                .await;
            match added {
                Ok(()) => {
                    tracing::info!("instance {hash}: {} forwarded", show(forward));
                    if forward.protocol == Protocol::Tcp {
                        self.open_relay(record, forward.host_port, forward.guest_port)
                            .await;
                    }
                }
                Err(e) => {
                    tracing::warn!("instance {hash}: {} not forwarded: {e}", show(forward));
                    failed_adds.push(*forward);
                }
            }
        }

        let settled = port_plan::settle(&current, &target, &failed_removals, &failed_adds);
        {
            let mut state = self.state();
            for host in settled.released.iter().filter(|host| **host != ssh_port) {
                state.ports.release(*host);
            }
        }
        let ssh_forwarded = settled.mapping.get(&SSH_PORT).is_some_and(|m| m.tcp);
        if record.forwarded_ports != settled.mapping {
            record.forwarded_ports = settled.mapping;
            let folder = self.folder(&hash);
            if let Err(e) = record.save(&folder) {
                tracing::warn!("instance {hash}: forwards not recorded: {e}");
            }
        }
        if ssh_forwarded {
            Ok(())
        } else {
            Err(ProgramError::internal(format!(
                "the SSH port forward (host port {ssh_port}) could not be added"
            )))
        }
    }

    /// Relays `127.0.0.1:host_port` to the guest's port (when configured); a port taken
    /// by something else on the host only costs that convenience.
    pub(super) async fn open_relay(&self, record: &InstanceRecord, host_port: u16, guest: u16) {
        if !self.network().config().loopback_relay {
            return;
        }
        let hash = &record.message.item_hash;
        // One left by a refresh that raced a stop would hold the port.
        self.close_relay(hash, host_port);
        let target = SocketAddr::from((record.net.guest_ip, guest));
        match LoopbackRelay::bind(host_port, target).await {
            Ok(relay) => {
                self.relays
                    .lock()
                    .expect("relays")
                    .entry(hash.clone())
                    .or_default()
                    .insert(host_port, relay);
            }
            Err(e) => tracing::warn!(
                "instance {hash}: cannot relay 127.0.0.1:{host_port} to its port {guest}: {e}"
            ),
        }
    }

    /// The relays of every tcp forward `record` holds (a VM taken back after a node
    /// restart: its firewall forwards are still there).
    pub(super) async fn open_relays(&self, record: &InstanceRecord) {
        for (guest, mapped) in record.port_mapping() {
            if mapped.tcp {
                self.open_relay(record, mapped.host, guest).await;
            }
        }
    }

    fn close_relay(&self, hash: &str, host_port: u16) {
        if let Some(relays) = self.relays.lock().expect("relays").get_mut(hash) {
            relays.remove(&host_port);
        }
    }

    /// Gives back the host ports of `record`'s forwards other than SSH's, and forgets
    /// them (the instance is stopped: its forwards are gone with its network).
    pub(super) fn release_forwarded_ports(&self, record: &mut InstanceRecord) {
        let mut state = self.state();
        for mapped in record.forwarded_ports.values() {
            if mapped.host != record.ssh_port {
                state.ports.release(mapped.host);
            }
        }
        record.forwarded_ports = PortMapping::new();
        state.skipped_ports.remove(&record.message.item_hash);
    }

    /// Reads again, in the background, the aggregates of the owners of running
    /// instances that are due, and applies them: the caller never waits for the CCN.
    pub(super) fn refresh_due_forwards(self: &Arc<Self>) {
        let due = {
            let mut state = self.state();
            let owners: HashSet<String> = state.running.values().map(|r| r.owner.clone()).collect();
            state.reads.claim_due(&owners, Instant::now())
        };
        for owner in due {
            let this = self.clone();
            tokio::spawn(async move {
                match this.aggregates.read(&owner).await {
                    Ok(aggregate) => {
                        for hash in this.running_of(&owner) {
                            this.update_forwards(&hash, aggregate.as_ref()).await;
                        }
                    }
                    Err(e) => tracing::warn!(
                        "the port forwards of {owner}'s instances stay as they are: {e}"
                    ),
                }
                this.state().reads.done(&owner, Instant::now());
            });
        }
    }

    /// Reads the owner's aggregate for instance `hash` now and applies it if the
    /// instance runs (else its next start will). For a route that an owner calls after
    /// changing the aggregate (upstream's `/control/machine/{ref}/update`).
    pub async fn refresh_forwards(&self, hash: &str) -> Result<(), ProgramError> {
        let record = self
            .record(hash)
            .ok_or_else(|| ProgramError::NotFound(format!("no instance {hash} on this node")))?;
        let owner = &record.message.content.address;
        let aggregate = self
            .aggregates
            .read(owner)
            .await
            .map_err(|e| ProgramError::Unavailable(e.to_string()))?;
        self.update_forwards(hash, aggregate.as_ref()).await;
        Ok(())
    }

    fn running_of(&self, owner: &str) -> Vec<String> {
        self.state()
            .running
            .iter()
            .filter(|(_, running)| running.owner == owner)
            .map(|(hash, _)| hash.clone())
            .collect()
    }

    /// Applies the owner's `aggregate` to running instance `hash`.
    async fn update_forwards(&self, hash: &str, aggregate: Option<&Value>) {
        let lock = self.lock(hash);
        let _one = lock.lock().await;
        if !self.is_running(hash) {
            return;
        }
        let Some(mut record) = self.record(hash) else {
            return;
        };
        let wanted = self.wanted_ports(&record, aggregate);
        if let Err(e) = self
            .apply_forwards(&mut record, &wanted, Installed::AsRecorded)
            .await
        {
            tracing::warn!("instance {hash}: {e}");
        }
    }
}

fn show(forward: &PortForward) -> String {
    format!(
        "{}/{} (guest port {})",
        forward.protocol, forward.host_port, forward.guest_port
    )
}
