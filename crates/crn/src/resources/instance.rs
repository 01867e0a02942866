//! The parts of an INSTANCE message's content that a CRN acts on, parsed leniently like
//! a PROGRAM's (the CCN has checked the full schema).

use super::program::{Resources, Volume};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceContent {
    /// The owner.
    pub address: String,
    pub rootfs: Rootfs,
    #[serde(default)]
    pub authorized_keys: Option<Vec<String>>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub environment: InstanceEnvironment,
}

/// The instance's root disk: a copy-on-write overlay on `parent`, `size_mib` large.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rootfs {
    pub parent: Parent,
    /// `host`: the disk lives on this node (the only kind there is for a root disk).
    #[serde(default)]
    pub persistence: Option<String>,
    pub size_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parent {
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default = "yes")]
    pub use_latest: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceEnvironment {
    #[serde(default)]
    pub internet: bool,
    #[serde(default)]
    pub aleph_api: bool,
    /// `qemu` (default) or `firecracker`.
    #[serde(default)]
    pub hypervisor: Option<String>,
    /// Confidential computing (AMD SEV): not offered by this node.
    #[serde(default)]
    pub trusted_execution: Option<serde_json::Value>,
}

/// An INSTANCE as it will run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceMessage {
    pub item_hash: String,
    pub content: InstanceContent,
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_an_instance_as_the_clients_post_it() {
        let content: InstanceContent = serde_json::from_value(json!({
            "address": "0xabc", "time": 1.0, "allow_amend": false,
            "authorized_keys": ["ssh-ed25519 AAAA me@host"],
            "environment": {"internet": true, "aleph_api": true, "hypervisor": "qemu"},
            "resources": {"vcpus": 2, "memory": 2048, "seconds": 30},
            "rootfs": {"parent": {"ref": "ab".repeat(32), "use_latest": true},
                       "persistence": "host", "size_mib": 4096},
            "volumes": [{"persistence": "host", "name": "data", "size_mib": 64, "mount": "/data"}],
            "payment": {"type": "hold"}, "metadata": {"name": "x"}
        }))
        .unwrap();
        assert_eq!(content.rootfs.size_mib, 4096);
        assert!(content.rootfs.parent.use_latest);
        assert_eq!(content.resources.vcpus, 2);
        assert_eq!(content.environment.hypervisor.as_deref(), Some("qemu"));
        assert!(matches!(&content.volumes[0], Volume::Persistent { name, .. } if name == "data"));
    }
}
