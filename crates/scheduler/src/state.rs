//! The scheduler's state and every rule that changes it, in memory and synchronous, so
//! that tests drive it without a network. The service holds one [`Core`] behind one lock
//! (the single writer): each operation changes it, then [`Core::take_effects`] gives the
//! rows to write and the allocation lists to push, written before they are pushed.
//!
//! # Exactly once
//!
//! A persistent VM is listed on at most one node at a time, and a node runs a persistent
//! VM only while (a) its latest applied allocation lists it and (b) its lease is valid.
//!
//! - **Lease < grace.** Each answered heartbeat lets the node keep its VMs running until
//!   its send time + `lease_seconds`; the guest agent powers its VM off at the same
//!   deadline even when the CRN process is dead. The scheduler marks a node lost only
//!   when `grace` has passed since it *received* that node's last heartbeat, which is
//!   after the node sent it. So when a lost node's VMs are placed elsewhere
//!   ([`Core::expire`]), every copy on the lost node has been stopped for at least
//!   `grace - lease` (the margin covers the VM's power-off and clock drift between
//!   the two monotonic clocks over one grace period).
//! - **A dropped node** (its registration forgotten or `drop-node`) may still hold a
//!   valid lease: its VMs wait, unplaced, until grace has passed since its last
//!   heartbeat (`hold_until`).
//! - **Fencing.** The allocation version is one counter for the whole scheduler, raised
//!   on every change of any node's list and persisted with it (raised to at least the
//!   wall clock in milliseconds, so that it grows across a lost database); each node's list carries
//!   the version it was last changed at. When a lost node comes back, the list that
//!   removed its VMs was cut at a version higher than anything it applied, so the first
//!   heartbeat reply tells it that it is behind (`allocation_version` greater than its
//!   own): per the protocol it starts nothing until it applies the push, which no
//!   longer lists the moved VMs, and it stops them. A delayed, older push is refused by
//!   the CRN (409), so it cannot bring a moved VM back.
//! - **Restart of the scheduler.** Nodes that were active get a fresh grace period from
//!   the start (their leases lapsed while no heartbeat was answered, and are renewed
//!   only with the version they already hold), and VMs that were missing wait one grace
//!   period before being placed, as if their node had just been dropped.

use crate::placement::{Node, Placer, Policy, Requirements, VmDemand};
use crate::store::{Changes, NodeRow, Snapshot, VmRow};
use aleph_protocol::scheduler::{
    AllocatedNode, Allocation, AllocationEntry, Heartbeat, NodeEntry, NodeResources, Pagination,
    RunningVm, VmEntry, VmPage, vm_status,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

/// Node statuses, as `NodeEntry::status` shows them.
pub mod node_status {
    /// Registered, never heard from.
    pub const WAITING: &str = "waiting";
    /// Heartbeats arrive; it takes VMs.
    pub const ACTIVE: &str = "active";
    /// Silent for longer than the grace period; its VMs went elsewhere.
    pub const LOST: &str = "lost";
}

/// `vm_type` of persistent programs.
pub const PERSISTENT_PROGRAM: &str = "persistent_program";
/// `vm_type` of instances.
pub const INSTANCE: &str = "instance";

/// Disk every VM is counted for on top of its volumes: its root filesystem and runtime
/// copy-on-write layer.
pub const BASE_DISK_MIB: u64 = 1024;

const ALLOCATION_VERSION: &str = "allocation_version";

#[derive(Debug, Clone)]
pub struct Settings {
    pub grace: Duration,
    pub lease_seconds: u64,
    pub policy: Policy,
}

#[derive(Debug, Clone)]
pub struct NodeState {
    pub hash: String,
    pub owner: String,
    pub name: String,
    pub address: String,
    pub registered_time: f64,
    pub status: &'static str,
    /// Wall clock of the last heartbeat, for display.
    pub last_heartbeat: Option<f64>,
    /// When the last heartbeat arrived (or the scheduler started), for the grace period.
    pub last_seen: Option<Instant>,
    pub resources: Option<NodeResources>,
    pub running: Vec<RunningVm>,
    /// The version this node's list was last changed at.
    pub allocation_version: u64,
    /// The version the node says it applied.
    pub applied_version: u64,
}

#[derive(Debug, Clone)]
pub struct VmState {
    pub vm_hash: String,
    pub vm_type: String,
    pub owner: String,
    pub content: Value,
    pub status: &'static str,
    pub node: Option<String>,
    pub since: f64,
    pub reason: Option<String>,
    /// Not to be placed before this (its last node may still run it).
    pub hold_until: Option<Instant>,
}

/// What the service does after an operation: write `changes`, then send `pushes`.
#[derive(Debug, Default)]
pub struct Effects {
    pub changes: Changes,
    pub pushes: Vec<PushJob>,
}

/// One node's full list, to push.
#[derive(Debug, Clone, PartialEq)]
pub struct PushJob {
    pub node_hash: String,
    /// The CRN's base URL.
    pub url: String,
    pub allocation: Allocation,
    /// The node left the registry: this empty list is the last it gets.
    pub last: bool,
}

/// Why a heartbeat is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatRefusal {
    #[error("node {0} is not registered")]
    UnknownNode(String),
    #[error("node {node} is owned by {owner}, not by the signer {signer}")]
    NotOwner {
        node: String,
        owner: String,
        signer: String,
    },
}

/// A change read from the CCN.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    RegisterNode {
        hash: String,
        owner: String,
        name: String,
        address: String,
        time: f64,
    },
    DropNode {
        node_hash: String,
        sender: String,
    },
    Vm {
        hash: String,
        vm_type: &'static str,
        owner: String,
        content: Value,
    },
    /// Forgotten or replaced: the hash never runs again.
    Retire {
        hash: String,
        why: String,
    },
}

pub struct Core {
    settings: Settings,
    placer: Placer,
    nodes: BTreeMap<String, NodeState>,
    vms: BTreeMap<String, VmState>,
    /// VMs listed on each node.
    by_node: BTreeMap<String, BTreeSet<String>>,
    retired: HashSet<String>,
    version: u64,
    cursors: BTreeMap<String, f64>,
    placement_needed: bool,
    // What the current operation changed.
    dirty_nodes: BTreeSet<String>,
    dirty_vms: BTreeSet<String>,
    changed_lists: BTreeSet<String>,
    dropped: Vec<(String, String)>,
    new_retired: Vec<String>,
    dirty_counters: BTreeSet<String>,
}

pub fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

pub fn rfc3339(epoch: f64) -> String {
    chrono::DateTime::from_timestamp_micros((epoch * 1e6) as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn same_address(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// What a VM needs, from its message content: `resources.vcpus` (default 1),
/// `resources.memory` MiB (default 128 for programs, 2048 for instances), and disk =
/// the `size_mib` of its root filesystem and of every volume that has one, plus
/// [`BASE_DISK_MIB`]. Requirements as [`Requirements::from_content`] reads them.
pub fn demand_of(vm_hash: &str, vm_type: &str, content: &Value) -> Result<VmDemand, String> {
    let resources = content.get("resources");
    let number = |name: &str, default: u64| -> Result<u64, String> {
        match resources.and_then(|r| r.get(name)) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("resources.{name} must be a non-negative integer")),
        }
    };
    let default_memory = if vm_type == INSTANCE { 2048 } else { 128 };
    let size = |v: &Value| v.get("size_mib").and_then(Value::as_u64).unwrap_or(0);
    let mut disk_mib = BASE_DISK_MIB;
    if let Some(rootfs) = content.get("rootfs") {
        disk_mib += size(rootfs);
    }
    if let Some(volumes) = content.get("volumes").and_then(Value::as_array) {
        disk_mib += volumes.iter().map(size).sum::<u64>();
    }
    Ok(VmDemand {
        vm_hash: vm_hash.to_owned(),
        vcpus: number("vcpus", 1)?,
        memory_mib: number("memory", default_memory)?,
        disk_mib,
        requirements: Requirements::from_content(content)?,
    })
}

impl Core {
    pub fn new(settings: Settings) -> Self {
        Self {
            placer: Placer::new(settings.policy),
            settings,
            nodes: BTreeMap::new(),
            vms: BTreeMap::new(),
            by_node: BTreeMap::new(),
            retired: HashSet::new(),
            version: 0,
            cursors: BTreeMap::new(),
            placement_needed: false,
            dirty_nodes: BTreeSet::new(),
            dirty_vms: BTreeSet::new(),
            changed_lists: BTreeSet::new(),
            dropped: Vec::new(),
            new_retired: Vec::new(),
            dirty_counters: BTreeSet::new(),
        }
    }

    /// Rebuilds the state from the database, as of a start at `now`.
    pub fn restore(settings: Settings, snapshot: Snapshot, now: Instant) -> Self {
        let mut core = Core::new(settings);
        let hold = now + core.settings.grace;
        for (name, value) in snapshot.counters {
            if name == ALLOCATION_VERSION {
                core.version = value.max(0.0) as u64;
            }
        }
        core.retired.extend(snapshot.retired);
        for row in snapshot.nodes {
            let status = match row.status.as_str() {
                node_status::ACTIVE => node_status::ACTIVE,
                node_status::LOST => node_status::LOST,
                _ => node_status::WAITING,
            };
            let resources: Option<NodeResources> = row
                .resources
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok());
            let node = NodeState {
                hash: row.hash.clone(),
                owner: row.owner,
                name: row.name,
                address: row.address,
                registered_time: row.registered_time,
                status,
                last_heartbeat: row.last_heartbeat,
                last_seen: (status == node_status::ACTIVE).then_some(now),
                running: row
                    .running
                    .as_deref()
                    .and_then(|r| serde_json::from_str(r).ok())
                    .unwrap_or_default(),
                resources,
                allocation_version: row.allocation_version,
                applied_version: row.applied_version,
            };
            if status == node_status::ACTIVE {
                core.placer.upsert_node(placement_node(&node));
            }
            core.nodes.insert(row.hash, node);
        }
        for row in snapshot.vms {
            let status = match row.status.as_str() {
                vm_status::SCHEDULED => vm_status::SCHEDULED,
                vm_status::DISPATCHED => vm_status::DISPATCHED,
                vm_status::MISSING => vm_status::MISSING,
                vm_status::REMOVED => vm_status::REMOVED,
                _ => vm_status::UNSCHEDULABLE,
            };
            let content: Value = serde_json::from_str(&row.content).unwrap_or(Value::Null);
            let mut vm = VmState {
                vm_hash: row.vm_hash.clone(),
                vm_type: row.vm_type,
                owner: row.owner,
                content,
                status,
                node: None,
                since: row.since,
                reason: row.reason,
                hold_until: None,
            };
            if let Some(node) = row.node {
                let demand = demand_of(&vm.vm_hash, &vm.vm_type, &vm.content);
                let on_active = core
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.status == node_status::ACTIVE);
                match demand {
                    Ok(demand) if on_active && core.placer.assign(&demand, &node) => {
                        core.by_node
                            .entry(node.clone())
                            .or_default()
                            .insert(vm.vm_hash.clone());
                        vm.node = Some(node);
                    }
                    _ => {
                        // Inconsistent (the node is gone): treat it as missing.
                        vm.status = vm_status::MISSING;
                        vm.hold_until = Some(hold);
                        core.dirty_vms.insert(vm.vm_hash.clone());
                    }
                }
            } else if status == vm_status::MISSING {
                vm.hold_until = Some(hold);
            }
            core.vms.insert(row.vm_hash, vm);
        }
        core.placement_needed = true;
        core
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn node(&self, hash: &str) -> Option<&NodeState> {
        self.nodes.get(hash)
    }

    pub fn vm(&self, hash: &str) -> Option<&VmState> {
        self.vms.get(hash)
    }

    pub fn cursor(&self, name: &str) -> Option<f64> {
        self.cursors.get(name).copied()
    }

    /// Cursors live in memory only: each start reads the streams from the beginning.
    pub fn set_cursor(&mut self, name: &str, value: f64) {
        self.cursors.insert(name.to_owned(), value);
    }

    // ---- changes read from the CCN ----

    pub fn apply_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::RegisterNode {
                hash,
                owner,
                name,
                address,
                time,
            } => self.register_node(hash, owner, name, address, time),
            Event::DropNode { node_hash, sender } => {
                if self
                    .nodes
                    .get(&node_hash)
                    .is_some_and(|n| same_address(&n.owner, &sender))
                {
                    self.drop_node(&node_hash, now);
                }
            }
            Event::Vm {
                hash,
                vm_type,
                owner,
                content,
            } => self.add_vm(hash, vm_type, owner, content),
            Event::Retire { hash, why } => self.retire(&hash, &why, now),
        }
    }

    fn register_node(
        &mut self,
        hash: String,
        owner: String,
        name: String,
        address: String,
        time: f64,
    ) {
        if self.retired.contains(&hash) || self.nodes.contains_key(&hash) {
            return;
        }
        tracing::info!("node {hash} registered ({name}, {address})");
        self.dirty_nodes.insert(hash.clone());
        self.nodes.insert(
            hash.clone(),
            NodeState {
                hash,
                owner,
                name,
                address: address.trim_end_matches('/').to_owned(),
                registered_time: time,
                status: node_status::WAITING,
                last_heartbeat: None,
                last_seen: None,
                resources: None,
                running: Vec::new(),
                allocation_version: 0,
                applied_version: 0,
            },
        );
    }

    /// Removes a node from the registry. Its VMs wait until its lease has surely lapsed.
    fn drop_node(&mut self, hash: &str, now: Instant) {
        let Some(node) = self.nodes.remove(hash) else {
            return;
        };
        tracing::info!("node {hash} dropped from the registry");
        let hold = node.last_seen.map(|seen| seen + self.settings.grace);
        let orphans = self.placer.remove_node(hash);
        self.orphan(
            hash,
            orphans,
            &format!("node {hash} left the registry"),
            hold,
        );
        let _ = now;
        self.dirty_nodes.remove(hash);
        self.changed_lists.remove(hash);
        self.dropped.push((hash.to_owned(), node.address));
        self.retire_hash(hash);
    }

    /// VMs that lost their node: unplaced, `missing`, to be placed again.
    fn orphan(&mut self, node: &str, orphans: Vec<String>, why: &str, hold: Option<Instant>) {
        let listed = self.by_node.remove(node).unwrap_or_default();
        let wall = wall_now();
        for vm_hash in listed.into_iter().chain(orphans) {
            if let Some(vm) = self.vms.get_mut(&vm_hash)
                && vm.node.as_deref() == Some(node)
            {
                vm.node = None;
                vm.status = vm_status::MISSING;
                vm.since = wall;
                vm.reason = Some(why.to_owned());
                vm.hold_until = hold;
                self.dirty_vms.insert(vm_hash);
            }
        }
        self.changed_lists.insert(node.to_owned());
        self.placement_needed = true;
    }

    fn add_vm(&mut self, hash: String, vm_type: &'static str, owner: String, content: Value) {
        if self.retired.contains(&hash) || self.vms.contains_key(&hash) {
            return;
        }
        tracing::info!("{vm_type} {hash} to place");
        self.dirty_vms.insert(hash.clone());
        self.vms.insert(
            hash.clone(),
            VmState {
                vm_hash: hash,
                vm_type: vm_type.to_owned(),
                owner,
                content,
                status: vm_status::UNSCHEDULABLE,
                node: None,
                since: wall_now(),
                reason: Some("not placed yet".into()),
                hold_until: None,
            },
        );
        self.placement_needed = true;
    }

    fn retire_hash(&mut self, hash: &str) {
        if self.retired.insert(hash.to_owned()) {
            self.new_retired.push(hash.to_owned());
        }
    }

    /// A forgotten or replaced message: its VM stops everywhere, its node registration ends.
    fn retire(&mut self, hash: &str, why: &str, now: Instant) {
        self.retire_hash(hash);
        if self.nodes.contains_key(hash) {
            self.drop_node(hash, now);
        }
        let Some(vm) = self.vms.get_mut(hash) else {
            return;
        };
        if vm.status == vm_status::REMOVED {
            return;
        }
        tracing::info!("{} {hash} removed: {why}", vm.vm_type);
        if let Some(node) = vm.node.take() {
            self.placer.release(hash);
            if let Some(list) = self.by_node.get_mut(&node) {
                list.remove(hash);
            }
            self.changed_lists.insert(node);
        }
        vm.status = vm_status::REMOVED;
        vm.since = wall_now();
        vm.reason = Some(why.to_owned());
        vm.hold_until = None;
        self.dirty_vms.insert(hash.to_owned());
        // Its resources are free again.
        self.placement_needed = true;
    }

    // ---- heartbeats ----

    /// Whether `signer` may send heartbeats for `node_hash`.
    pub fn check_heartbeat(&self, node_hash: &str, signer: &str) -> Result<(), HeartbeatRefusal> {
        let node = self
            .nodes
            .get(node_hash)
            .ok_or_else(|| HeartbeatRefusal::UnknownNode(node_hash.to_owned()))?;
        if !same_address(&node.owner, signer) {
            return Err(HeartbeatRefusal::NotOwner {
                node: node_hash.to_owned(),
                owner: node.owner.clone(),
                signer: signer.to_owned(),
            });
        }
        Ok(())
    }

    /// Records a heartbeat (already checked with [`Core::check_heartbeat`]); returns
    /// whether the node was lost until now.
    pub fn heartbeat(&mut self, heartbeat: &Heartbeat, now: Instant) -> bool {
        let Some(node) = self.nodes.get_mut(&heartbeat.node_hash) else {
            return false;
        };
        let was = node.status;
        node.status = node_status::ACTIVE;
        node.last_seen = Some(now);
        node.last_heartbeat = Some(wall_now());
        node.applied_version = heartbeat.allocation_version;
        node.running = heartbeat.running.clone();
        let resources_changed = node.resources.as_ref() != Some(&heartbeat.resources);
        node.resources = Some(heartbeat.resources.clone());
        if was != node_status::ACTIVE {
            tracing::info!("node {} is active (was {was})", node.hash);
        }
        if resources_changed || was != node_status::ACTIVE {
            let placement = placement_node(node);
            self.placer.upsert_node(placement);
            self.placement_needed = true;
        }
        if heartbeat.allocation_version > node.allocation_version {
            // The node applied a list this registration never cut (it was registered
            // again, or this database is older than it): cut its list anew, at a version
            // above everything issued so far, so that it is not refused as older.
            self.changed_lists.insert(heartbeat.node_hash.clone());
        }
        self.dirty_nodes.insert(heartbeat.node_hash.clone());
        // Confirmed by the node, or no longer.
        let running: HashSet<&str> = heartbeat
            .running
            .iter()
            .filter(|r| r.running)
            .map(|r| r.vm_hash.as_str())
            .collect();
        for vm_hash in self
            .by_node
            .get(&heartbeat.node_hash)
            .cloned()
            .unwrap_or_default()
        {
            if let Some(vm) = self.vms.get_mut(&vm_hash) {
                let status = if running.contains(vm_hash.as_str()) {
                    vm_status::DISPATCHED
                } else {
                    vm_status::SCHEDULED
                };
                if vm.status != status {
                    vm.status = status;
                    self.dirty_vms.insert(vm_hash);
                }
            }
        }
        was == node_status::LOST
    }

    /// Marks lost the nodes silent past the grace period, and ends the holds that expired.
    pub fn expire(&mut self, now: Instant) {
        let grace = self.settings.grace;
        let silent: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.status == node_status::ACTIVE)
            .filter(|n| {
                n.last_seen
                    .is_none_or(|seen| now.duration_since(seen) >= grace)
            })
            .map(|n| n.hash.clone())
            .collect();
        for hash in silent {
            tracing::warn!("node {hash} lost: no heartbeat for {grace:?}");
            if let Some(node) = self.nodes.get_mut(&hash) {
                node.status = node_status::LOST;
            }
            self.dirty_nodes.insert(hash.clone());
            let orphans = self.placer.remove_node(&hash);
            self.orphan(&hash, orphans, &format!("node {hash} was lost"), None);
        }
        for vm in self.vms.values_mut() {
            if vm.hold_until.is_some_and(|until| until <= now) {
                vm.hold_until = None;
                self.placement_needed = true;
            }
        }
    }

    // ---- placement ----

    /// Places every VM without a node that may be placed now, largest first.
    pub fn place_pending(&mut self, now: Instant) {
        if !self.placement_needed {
            return;
        }
        self.placement_needed = false;
        let mut pending: Vec<(u64, String)> = self
            .vms
            .values()
            .filter(|vm| vm.status != vm_status::REMOVED && vm.node.is_none())
            .filter(|vm| vm.hold_until.is_none_or(|until| until <= now))
            .map(|vm| {
                let memory = vm
                    .content
                    .pointer("/resources/memory")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                (memory, vm.vm_hash.clone())
            })
            .collect();
        pending.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, vm_hash) in pending {
            let vm = &self.vms[&vm_hash];
            let outcome = demand_of(&vm_hash, &vm.vm_type, &vm.content)
                .map_err(|e| format!("invalid message: {e}"))
                .and_then(|demand| self.placer.place(&demand).map_err(|e| e.to_string()));
            let vm = self.vms.get_mut(&vm_hash).expect("listed above");
            match outcome {
                Ok(node) => {
                    tracing::info!("{} {vm_hash} placed on {node}", vm.vm_type);
                    vm.node = Some(node.clone());
                    vm.status = vm_status::SCHEDULED;
                    vm.since = wall_now();
                    vm.reason = None;
                    self.by_node
                        .entry(node.clone())
                        .or_default()
                        .insert(vm_hash.clone());
                    self.changed_lists.insert(node);
                    self.dirty_vms.insert(vm_hash);
                }
                Err(reason) => {
                    if vm.status != vm_status::UNSCHEDULABLE
                        || vm.reason.as_deref() != Some(&reason)
                    {
                        tracing::info!("{} {vm_hash} cannot be placed: {reason}", vm.vm_type);
                        vm.status = vm_status::UNSCHEDULABLE;
                        vm.since = wall_now();
                        vm.reason = Some(reason);
                        self.dirty_vms.insert(vm_hash);
                    }
                }
            }
        }
    }

    /// The full list a node must run.
    pub fn allocation_of(&self, node_hash: &str) -> Allocation {
        let mut allocation = Allocation::default();
        for vm_hash in self.by_node.get(node_hash).into_iter().flatten() {
            match self.vms.get(vm_hash).map(|vm| vm.vm_type.as_str()) {
                Some(INSTANCE) => allocation.instances.push(vm_hash.clone()),
                Some(_) => allocation.persistent_vms.push(vm_hash.clone()),
                None => {}
            }
        }
        allocation.allocation_version = Some(
            self.nodes
                .get(node_hash)
                .map_or(self.version, |n| n.allocation_version),
        );
        allocation.lease_seconds = Some(self.settings.lease_seconds);
        allocation
    }

    /// The push for a node whose list is current, when its heartbeat shows it behind.
    pub fn push_job(&self, node_hash: &str) -> Option<PushJob> {
        let node = self.nodes.get(node_hash)?;
        Some(PushJob {
            node_hash: node_hash.to_owned(),
            url: node.address.clone(),
            allocation: self.allocation_of(node_hash),
            last: false,
        })
    }

    /// Ends the current operation: raises the allocation version if any list changed,
    /// and returns the rows to write and the lists to push.
    pub fn take_effects(&mut self) -> Effects {
        let mut effects = Effects::default();
        let changed: Vec<String> = std::mem::take(&mut self.changed_lists)
            .into_iter()
            .filter(|hash| self.nodes.contains_key(hash))
            .collect();
        let dropped = std::mem::take(&mut self.dropped);
        if !changed.is_empty() || !dropped.is_empty() {
            // At least the wall clock in milliseconds: versions keep growing even for a
            // scheduler that starts on an empty database (nodes refuse older versions).
            // Above what any changed node says it applied, too.
            let wall_ms = (wall_now() * 1000.0) as u64;
            let applied = changed
                .iter()
                .filter_map(|hash| self.nodes.get(hash))
                .map(|node| node.applied_version.saturating_add(1))
                .max()
                .unwrap_or(0);
            self.version = (self.version + 1).max(wall_ms).max(applied);
            self.dirty_counters.insert(ALLOCATION_VERSION.to_owned());
        }
        for hash in &changed {
            if let Some(node) = self.nodes.get_mut(hash) {
                node.allocation_version = self.version;
            }
            self.dirty_nodes.insert(hash.clone());
            effects
                .pushes
                .push(self.push_job(hash).expect("node exists"));
        }
        for (hash, url) in dropped {
            effects.pushes.push(PushJob {
                node_hash: hash.clone(),
                url,
                allocation: Allocation {
                    allocation_version: Some(self.version),
                    lease_seconds: Some(self.settings.lease_seconds),
                    ..Default::default()
                },
                last: true,
            });
            effects.changes.deleted_nodes.push(hash);
        }
        for hash in std::mem::take(&mut self.dirty_nodes) {
            if let Some(node) = self.nodes.get(&hash) {
                effects.changes.nodes.push(node_row(node));
            }
        }
        for hash in std::mem::take(&mut self.dirty_vms) {
            if let Some(vm) = self.vms.get(&hash) {
                effects.changes.vms.push(vm_row(vm));
            }
        }
        effects.changes.retired = std::mem::take(&mut self.new_retired);
        for name in std::mem::take(&mut self.dirty_counters) {
            if name == ALLOCATION_VERSION {
                effects.changes.counters.push((name, self.version as f64));
            }
        }
        effects
    }

    // ---- views ----

    pub fn vm_entry(&self, vm: &VmState) -> VmEntry {
        VmEntry {
            vm_hash: vm.vm_hash.clone(),
            vm_type: vm.vm_type.clone(),
            allocated_node: vm.node.clone(),
            allocated_url: vm
                .node
                .as_ref()
                .and_then(|n| self.nodes.get(n))
                .map(|n| n.address.clone()),
            status: vm.status.to_owned(),
            owner: vm.owner.clone(),
            since: Some(rfc3339(vm.since)),
            reason: vm.reason.clone(),
        }
    }

    /// `GET /api/v1/vms`: filtered by owner and hash, ordered by hash; `page` from 1.
    pub fn vm_page(
        &self,
        owner: Option<&str>,
        vm_hash: Option<&str>,
        page: u64,
        per_page: u64,
    ) -> VmPage {
        let candidates: Vec<&VmState> = match vm_hash {
            Some(hash) => self.vms.get(hash).into_iter().collect(),
            None => self.vms.values().collect(),
        };
        let matching: Vec<&VmState> = candidates
            .into_iter()
            .filter(|vm| owner.is_none_or(|o| same_address(o, &vm.owner)))
            .collect();
        let start = (page.saturating_sub(1)).saturating_mul(per_page) as usize;
        VmPage {
            items: matching
                .iter()
                .skip(start)
                .take(per_page as usize)
                .map(|vm| self.vm_entry(vm))
                .collect(),
            pagination: Pagination {
                page,
                per_page,
                total: matching.len() as u64,
            },
        }
    }

    pub fn node_entry(&self, node: &NodeState) -> NodeEntry {
        NodeEntry {
            hash: node.hash.clone(),
            name: node.name.clone(),
            address: node.address.clone(),
            owner: node.owner.clone(),
            status: node.status.to_owned(),
            score: if node.status == node_status::ACTIVE {
                1.0
            } else {
                0.0
            },
            last_heartbeat: node.last_heartbeat.map(rfc3339),
            resources: node.resources.clone(),
            vms: self
                .by_node
                .get(&node.hash)
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    pub fn node_entries(&self) -> Vec<NodeEntry> {
        self.nodes.values().map(|n| self.node_entry(n)).collect()
    }

    /// Where a VM is allocated, if anywhere.
    pub fn allocation_entry(&self, vm_hash: &str) -> Option<AllocationEntry> {
        let vm = self.vms.get(vm_hash)?;
        let node = self.nodes.get(vm.node.as_ref()?)?;
        Some(AllocationEntry {
            vm_hash: vm.vm_hash.clone(),
            vm_type: vm.vm_type.clone(),
            node: AllocatedNode {
                node_id: node.hash.clone(),
                url: node.address.clone(),
            },
            allocation_version: node.allocation_version,
            since: rfc3339(vm.since),
        })
    }

    /// Counts by status, for `GET /api/v1/status`.
    pub fn counts(&self) -> (BTreeMap<&'static str, u64>, BTreeMap<&'static str, u64>) {
        let mut nodes = BTreeMap::new();
        for node in self.nodes.values() {
            *nodes.entry(node.status).or_default() += 1;
        }
        let mut vms = BTreeMap::new();
        for vm in self.vms.values() {
            *vms.entry(vm.status).or_default() += 1;
        }
        (nodes, vms)
    }
}

fn placement_node(node: &NodeState) -> Node {
    Node {
        hash: node.hash.clone(),
        owner: node.owner.clone(),
        address: node.address.clone(),
        capacity: node.resources.clone().unwrap_or_default(),
    }
}

fn node_row(node: &NodeState) -> NodeRow {
    NodeRow {
        hash: node.hash.clone(),
        owner: node.owner.clone(),
        name: node.name.clone(),
        address: node.address.clone(),
        registered_time: node.registered_time,
        status: node.status.to_owned(),
        last_heartbeat: node.last_heartbeat,
        resources: node
            .resources
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok()),
        running: serde_json::to_string(&node.running).ok(),
        allocation_version: node.allocation_version,
        applied_version: node.applied_version,
    }
}

fn vm_row(vm: &VmState) -> VmRow {
    VmRow {
        vm_hash: vm.vm_hash.clone(),
        vm_type: vm.vm_type.clone(),
        owner: vm.owner.clone(),
        content: vm.content.to_string(),
        status: vm.status.to_owned(),
        node: vm.node.clone(),
        since: vm.since,
        reason: vm.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GRACE: Duration = Duration::from_secs(10);

    fn core() -> Core {
        Core::new(Settings {
            grace: GRACE,
            lease_seconds: 6,
            policy: Policy::BinPack,
        })
    }

    fn register(core: &mut Core, hash: &str) {
        core.apply_event(
            Event::RegisterNode {
                hash: hash.into(),
                owner: format!("0xOwner{hash}"),
                name: hash.into(),
                address: format!("http://{hash}/"),
                time: 1.0,
            },
            Instant::now(),
        );
    }

    fn heartbeat(core: &mut Core, hash: &str, applied: u64, now: Instant) -> bool {
        core.check_heartbeat(hash, &format!("0xowner{hash}"))
            .unwrap();
        core.heartbeat(
            &Heartbeat {
                node_hash: hash.into(),
                url: format!("http://{hash}"),
                allocation_version: applied,
                resources: NodeResources {
                    vcpus: 4,
                    memory_mib: 4096,
                    disk_mib: 100_000,
                    ..Default::default()
                },
                usage: Value::Null,
                running: Vec::new(),
            },
            now,
        )
    }

    fn program(core: &mut Core, hash: &str, memory: u64) {
        core.apply_event(
            Event::Vm {
                hash: hash.into(),
                vm_type: PERSISTENT_PROGRAM,
                owner: "0xuser".into(),
                content: json!({"resources": {"vcpus": 1, "memory": memory}}),
            },
            Instant::now(),
        );
    }

    fn pushes_by_node(effects: &Effects) -> BTreeMap<String, Allocation> {
        effects
            .pushes
            .iter()
            .map(|p| (p.node_hash.clone(), p.allocation.clone()))
            .collect()
    }

    #[test]
    fn demand_counts_volumes_and_defaults() {
        let d = demand_of(
            "v",
            PERSISTENT_PROGRAM,
            &json!({"resources": {"vcpus": 2, "memory": 512},
                    "volumes": [{"size_mib": 100}, {"ref": "x"}]}),
        )
        .unwrap();
        assert_eq!((d.vcpus, d.memory_mib, d.disk_mib), (2, 512, 1124));
        let d = demand_of("i", INSTANCE, &json!({"rootfs": {"size_mib": 20480}})).unwrap();
        assert_eq!((d.vcpus, d.memory_mib, d.disk_mib), (1, 2048, 21504));
        assert!(demand_of("v", INSTANCE, &json!({"resources": {"vcpus": -1}})).is_err());
        assert!(demand_of("v", INSTANCE, &json!({"requirements": {"gpu": 3}})).is_err());
    }

    #[test]
    fn a_lost_node_s_vm_moves_after_grace_and_the_node_is_fenced() {
        let mut core = core();
        let t0 = Instant::now();
        register(&mut core, "a");
        register(&mut core, "b");
        assert!(!heartbeat(&mut core, "a", 0, t0));
        core.place_pending(t0);
        core.take_effects();
        program(&mut core, "vm", 1024);
        core.place_pending(t0);
        // No other node active: a.
        let effects = core.take_effects();
        assert_eq!(core.vm("vm").unwrap().node.as_deref(), Some("a"));
        let first = pushes_by_node(&effects)["a"].clone();
        assert_eq!(first.persistent_vms, vec!["vm"]);
        let v1 = first.allocation_version.unwrap();
        assert_eq!(first.lease_seconds, Some(6));

        heartbeat(&mut core, "b", 0, t0);
        core.place_pending(t0);
        assert!(core.take_effects().pushes.is_empty(), "nothing moves");

        // b keeps heartbeating, a goes silent: nothing happens before grace.
        let almost = t0 + GRACE - Duration::from_millis(1);
        heartbeat(&mut core, "b", 0, almost);
        core.expire(almost);
        core.place_pending(almost);
        assert!(core.take_effects().pushes.is_empty());
        assert_eq!(core.node("a").unwrap().status, node_status::ACTIVE);

        let after = t0 + GRACE;
        core.expire(after);
        core.place_pending(after);
        let effects = core.take_effects();
        let pushes = pushes_by_node(&effects);
        assert_eq!(core.node("a").unwrap().status, node_status::LOST);
        assert_eq!(core.vm("vm").unwrap().node.as_deref(), Some("b"));
        assert_eq!(core.vm("vm").unwrap().status, vm_status::SCHEDULED);
        assert_eq!(pushes["b"].persistent_vms, vec!["vm"]);
        assert!(pushes["a"].persistent_vms.is_empty());
        let v2 = pushes["b"].allocation_version.unwrap();
        assert!(v2 > v1);
        assert_eq!(pushes["a"].allocation_version, Some(v2));
        assert!(effects.changes.nodes.iter().any(|n| n.status == "lost"));

        // a comes back with its old version: it is told it was lost and is behind.
        assert!(heartbeat(&mut core, "a", v1, after));
        core.place_pending(after);
        core.take_effects();
        let a = core.node("a").unwrap();
        assert_eq!(a.status, node_status::ACTIVE);
        assert!(a.allocation_version > v1);
        let job = core.push_job("a").unwrap();
        assert!(job.allocation.persistent_vms.is_empty());
        assert_eq!(core.vm("vm").unwrap().node.as_deref(), Some("b"));
    }

    #[test]
    fn unschedulable_vms_wait_for_a_node_and_removed_ones_leave_their_node() {
        let mut core = core();
        let now = Instant::now();
        program(&mut core, "big", 8192);
        core.place_pending(now);
        let vm = core.vm("big").unwrap();
        assert_eq!(vm.status, vm_status::UNSCHEDULABLE);
        assert!(
            vm.reason.as_deref().unwrap().contains("no active node"),
            "{:?}",
            vm.reason
        );
        register(&mut core, "a");
        heartbeat(&mut core, "a", 0, now);
        core.place_pending(now);
        let vm = core.vm("big").unwrap();
        assert_eq!(vm.status, vm_status::UNSCHEDULABLE);
        assert!(
            vm.reason.as_deref().unwrap().contains("memory"),
            "{:?}",
            vm.reason
        );
        program(&mut core, "small", 1024);
        core.place_pending(now);
        assert_eq!(core.vm("small").unwrap().node.as_deref(), Some("a"));
        core.take_effects();

        core.apply_event(
            Event::Retire {
                hash: "small".into(),
                why: "forgotten".into(),
            },
            now,
        );
        core.place_pending(now);
        let effects = core.take_effects();
        assert_eq!(core.vm("small").unwrap().status, vm_status::REMOVED);
        assert!(pushes_by_node(&effects)["a"].persistent_vms.is_empty());
        assert_eq!(effects.changes.retired, vec!["small"]);
        // Seen again on the CCN: stays removed.
        program(&mut core, "small", 1024);
        core.place_pending(now);
        assert_eq!(core.vm("small").unwrap().status, vm_status::REMOVED);
    }

    #[test]
    fn a_dropped_node_s_vms_wait_for_its_lease_to_lapse() {
        let mut core = core();
        let t0 = Instant::now();
        register(&mut core, "a");
        register(&mut core, "b");
        heartbeat(&mut core, "a", 0, t0);
        program(&mut core, "vm", 1024);
        core.place_pending(t0);
        heartbeat(&mut core, "b", 0, t0);
        core.place_pending(t0);
        assert_eq!(core.vm("vm").unwrap().node.as_deref(), Some("a"));
        core.take_effects();

        // Only its owner can drop it.
        core.apply_event(
            Event::DropNode {
                node_hash: "a".into(),
                sender: "0xstranger".into(),
            },
            t0,
        );
        assert!(core.node("a").is_some());
        core.apply_event(
            Event::DropNode {
                node_hash: "a".into(),
                sender: "0xOWNERa".into(),
            },
            t0,
        );
        assert!(core.node("a").is_none());
        core.place_pending(t0);
        let effects = core.take_effects();
        let last = effects.pushes.iter().find(|p| p.node_hash == "a").unwrap();
        assert!(last.last && last.allocation.persistent_vms.is_empty());
        assert_eq!(core.vm("vm").unwrap().status, vm_status::MISSING);

        let later = t0 + GRACE;
        heartbeat(&mut core, "b", 0, later);
        core.expire(later);
        core.place_pending(later);
        assert_eq!(core.vm("vm").unwrap().node.as_deref(), Some("b"));
        // A dropped node cannot come back under the same hash.
        register(&mut core, "a");
        assert!(core.node("a").is_none());
    }

    #[test]
    fn a_node_ahead_of_its_list_gets_a_newer_one() {
        let mut core = core();
        let now = Instant::now();
        register(&mut core, "a");
        let ahead = 10_u64.pow(15);
        heartbeat(&mut core, "a", ahead, now);
        core.place_pending(now);
        let effects = core.take_effects();
        let pushes = pushes_by_node(&effects);
        assert!(pushes["a"].allocation_version.unwrap() > ahead);
        assert!(core.node("a").unwrap().allocation_version > ahead);
    }

    #[test]
    fn heartbeats_are_checked_and_confirm_running_vms() {
        let mut core = core();
        let now = Instant::now();
        register(&mut core, "a");
        assert!(matches!(
            core.check_heartbeat("zz", "0xownera"),
            Err(HeartbeatRefusal::UnknownNode(_))
        ));
        assert!(matches!(
            core.check_heartbeat("a", "0xownerb"),
            Err(HeartbeatRefusal::NotOwner { .. })
        ));
        heartbeat(&mut core, "a", 0, now);
        program(&mut core, "vm", 512);
        core.place_pending(now);
        core.take_effects();
        let mut beat = Heartbeat {
            node_hash: "a".into(),
            url: "http://a".into(),
            allocation_version: core.node("a").unwrap().allocation_version,
            resources: core.node("a").unwrap().resources.clone().unwrap(),
            usage: Value::Null,
            running: vec![RunningVm {
                vm_hash: "vm".into(),
                running: true,
                started_at: None,
            }],
        };
        core.heartbeat(&beat, now);
        assert_eq!(core.vm("vm").unwrap().status, vm_status::DISPATCHED);
        beat.running.clear();
        core.heartbeat(&beat, now);
        assert_eq!(core.vm("vm").unwrap().status, vm_status::SCHEDULED);
        let entry = core.allocation_entry("vm").unwrap();
        assert_eq!(entry.node.url, "http://a");
        let page = core.vm_page(Some("0xUSER"), None, 1, 10);
        assert_eq!(page.pagination.total, 1);
        assert_eq!(page.items[0].allocated_url.as_deref(), Some("http://a"));
        assert_eq!(
            core.vm_page(Some("0xother"), None, 1, 10).pagination.total,
            0
        );
    }
}
