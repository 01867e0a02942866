//! What the scheduler, the CRNs and clients say to each other about persistent VMs.
//!
//! - Node registration: a POST message of type [`CORECHAN_OPERATION`] whose content is a
//!   [`NodeOperation`]; the node's hash is that message's item hash and its owner the
//!   message's sender.
//! - [`Heartbeat`]: `POST /api/v1/heartbeat` from each CRN every few seconds, signed
//!   `Aleph-EIP191-V1` by the node's owner key, answered with a [`HeartbeatReply`].
//! - [`Allocation`]: `POST /control/allocations` from the scheduler to a CRN, signed
//!   `Aleph-EIP191-V1` by the scheduler's key, answered with an [`AllocationResult`].
//! - The scheduler's read API: [`VmEntry`] pages, [`NodeEntry`], [`AllocationEntry`].
//!
//! Exactly once rests on two numbers:
//! - the **allocation version**, one counter for the whole scheduler, raised on every
//!   change and carried by every push: a CRN ignores a push older than the last it
//!   applied, so a delayed push cannot bring back what was moved away;
//! - the **lease**: a CRN keeps its persistent VMs running only while its heartbeats
//!   are answered (each answer extends the lease by [`HeartbeatReply::lease_seconds`]),
//!   and the guest agent powers its VM off when the lease lapses even if the CRN process
//!   is gone. The lease is shorter than the scheduler's grace period, so by the time a
//!   lost node's VMs are placed elsewhere, the old copies have stopped.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// POST `type` of node registry operations.
pub const CORECHAN_OPERATION: &str = "corechan-operation";
/// [`NodeOperation::action`] that registers a compute resource node.
pub const CREATE_RESOURCE_NODE: &str = "create-resource-node";
/// [`NodeOperation::action`] that removes a node (the POST's `ref` is the node hash).
pub const DROP_NODE: &str = "drop-node";

/// The `content` of a `corechan-operation` POST.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeOperation {
    pub action: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub details: NodeDetails,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDetails {
    #[serde(default)]
    pub name: String,
    /// The CRN's base URL (`http://127.0.0.1:4020`).
    #[serde(default)]
    pub address: String,
}

/// CPU description, as in `/about/usage/system` `properties.cpu` and in messages'
/// `requirements.cpu`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuProperties {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub features: Vec<String>,
}

/// A GPU of a node, as messages' `requirements.gpu[]` name them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub vendor: String,
    pub device_name: String,
    /// PCI class: `0300` (VGA) or `0302` (3D controller).
    pub device_class: String,
    /// PCI `vendor:device`, e.g. `10de:2331`.
    pub device_id: String,
    #[serde(default)]
    pub vram_mib: u64,
}

/// What a node can give persistent VMs, in the units placement counts in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// vCPUs the node hands out (host CPUs × its overcommit).
    pub vcpus: u64,
    /// Memory for VMs, MiB.
    pub memory_mib: u64,
    /// Disk for VMs, MiB.
    pub disk_mib: u64,
    #[serde(default)]
    pub cpu: CpuProperties,
    /// All the GPUs it can pass to VMs (like the other fields, capacity: the scheduler
    /// accounts for what it placed).
    #[serde(default)]
    pub gpus: Vec<Gpu>,
}

/// One persistent VM a CRN runs, as reported in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningVm {
    pub vm_hash: String,
    /// Whether it answers (the agent is up and the app started).
    pub running: bool,
    /// RFC 3339, when this copy started.
    #[serde(default)]
    pub started_at: Option<String>,
}

/// `POST /api/v1/heartbeat` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_hash: String,
    /// The CRN's URL, as registered.
    pub url: String,
    /// The last allocation version the node applied (0: none yet).
    pub allocation_version: u64,
    pub resources: NodeResources,
    /// The node's `/about/usage/system`, as it serves it.
    #[serde(default)]
    pub usage: Value,
    /// Persistent VMs the node runs now.
    #[serde(default)]
    pub running: Vec<RunningVm>,
}

/// The scheduler's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// How long, from when the heartbeat was sent, the node may keep its persistent VMs
    /// running without another answered heartbeat.
    pub lease_seconds: u64,
    /// The newest allocation version for this node. A node behind it gets a push; until
    /// then it starts nothing new.
    pub allocation_version: u64,
    /// Whether the scheduler counts this node as lost (it was silent past the grace
    /// period; its VMs were placed elsewhere).
    #[serde(default)]
    pub lost: bool,
}

/// `POST /control/allocations` body: every persistent VM the node must run; what it runs
/// and is not listed, it stops. `allocation_version` and `lease_seconds` are our
/// additions (upstream's scheduler sends neither; a push without a version is applied
/// as the newest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    #[serde(default)]
    pub persistent_vms: Vec<String>,
    #[serde(default)]
    pub instances: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u64>,
}

/// The CRN's answer: 200 all started, 207 some failed, 503 all failed; 409 for a push
/// older than one already applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationResult {
    pub success: bool,
    pub successful: Vec<String>,
    pub failing: Vec<String>,
    pub stopped: Vec<String>,
    pub errors: BTreeMap<String, String>,
}

/// Statuses of a VM in the scheduler.
pub mod vm_status {
    /// Placed, not yet confirmed by the node.
    pub const SCHEDULED: &str = "scheduled";
    /// The node accepted the allocation and reports it running.
    pub const DISPATCHED: &str = "dispatched";
    /// Its node went silent; about to be placed again.
    pub const MISSING: &str = "missing";
    /// No node fits; [`super::VmEntry::reason`] says why.
    pub const UNSCHEDULABLE: &str = "unschedulable";
    /// No longer persistent (forgotten, replaced, unpersisted).
    pub const REMOVED: &str = "removed";
}

/// An item of `GET /api/v1/vms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmEntry {
    pub vm_hash: String,
    /// `persistent_program` or `instance`.
    pub vm_type: String,
    pub allocated_node: Option<String>,
    /// The allocated node's URL.
    #[serde(default)]
    pub allocated_url: Option<String>,
    pub status: String,
    pub owner: String,
    /// RFC 3339: since when it is on its current node (or in its status).
    #[serde(default)]
    pub since: Option<String>,
    /// Why it is unschedulable.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    pub page: u64,
    pub per_page: u64,
    pub total: u64,
}

/// `GET /api/v1/vms` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmPage {
    pub items: Vec<VmEntry>,
    pub pagination: Pagination,
}

/// A node as `GET /api/v1/nodes` lists it: the `corechannel` aggregate's
/// `resource_nodes[]` shape, plus what the scheduler knows of its health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub hash: String,
    pub name: String,
    /// The CRN's URL.
    pub address: String,
    pub owner: String,
    /// `active` (heartbeats arrive), `waiting` (registered, never heard from), `lost`.
    pub status: String,
    pub score: f64,
    /// RFC 3339 of the last heartbeat.
    #[serde(default)]
    pub last_heartbeat: Option<String>,
    #[serde(default)]
    pub resources: Option<NodeResources>,
    /// Persistent VMs allocated to it.
    #[serde(default)]
    pub vms: Vec<String>,
}

/// `GET /api/v1/nodes` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    pub resource_nodes: Vec<NodeEntry>,
}

/// `GET /api/v0/allocation/{vm_hash}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationEntry {
    pub vm_hash: String,
    pub vm_type: String,
    pub node: AllocatedNode,
    pub allocation_version: u64,
    /// RFC 3339.
    pub since: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocatedNode {
    pub node_id: String,
    pub url: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_upstream_allocation_without_our_fields_reads() {
        let a: Allocation =
            serde_json::from_value(json!({"persistent_vms": ["aa"], "instances": []})).unwrap();
        assert_eq!(a.persistent_vms, vec!["aa"]);
        assert_eq!(a.allocation_version, None);
        let back = serde_json::to_value(&a).unwrap();
        assert_eq!(back, json!({"persistent_vms": ["aa"], "instances": []}));
    }
}
