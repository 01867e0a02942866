//! What a node keeps of each instance in its folder (`instance.json`): enough to start
//! it again with the same disk, address and forwarded ports after a stop or a node
//! restart.

use super::port_plan::{MappedPort, PortMapping};
use crate::network::{SSH_PORT, VmNet};
use crate::resources::StoredFile;
use crate::resources::instance::InstanceMessage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub message: InstanceMessage,
    /// The parent image the root disk overlays (after `use_latest`).
    pub parent: StoredFile,
    /// Its subnet, TAP and MAC address.
    pub net: VmNet,
    /// The host port forwarded to the guest's SSH port.
    pub ssh_port: u16,
    /// Stopped or erased by its owner: not started again until rebooted.
    #[serde(default)]
    pub held: bool,
    /// The guest ports forwarded (its owner's `port-forwarding` aggregate), each with
    /// the host port it keeps while listed; read through [`Self::port_mapping`]
    /// (records from before port forwarding have none).
    #[serde(default)]
    pub forwarded_ports: PortMapping,
}

impl InstanceRecord {
    /// Every forward of the instance by guest port: 22/tcp from `ssh_port` always.
    pub fn port_mapping(&self) -> PortMapping {
        let mut mapping = self.forwarded_ports.clone();
        let ssh = mapping.entry(SSH_PORT).or_insert(MappedPort {
            host: self.ssh_port,
            tcp: true,
            udp: false,
        });
        ssh.host = self.ssh_port;
        ssh.tcp = true;
        mapping
    }

    pub fn path(folder: &Path) -> PathBuf {
        folder.join("instance.json")
    }

    pub fn load(folder: &Path) -> Option<Self> {
        let bytes = std::fs::read(Self::path(folder)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!("{}: unreadable ({e})", Self::path(folder).display());
                None
            }
        }
    }

    pub fn save(&self, folder: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(folder)?;
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let partial = folder.join("instance.json.partial");
        std::fs::write(&partial, bytes)?;
        std::fs::rename(partial, Self::path(folder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record as written before port forwarding.
    fn old_record() -> serde_json::Value {
        json!({
            "message": {"item_hash": "ab".repeat(32), "content": {
                "address": "0xabc",
                "rootfs": {"parent": {"ref": "cd".repeat(32)}, "size_mib": 4096},
            }},
            "parent": {"store_hash": "cd".repeat(32), "file_hash": "ef".repeat(32),
                       "path": "/data/files/x", "size": 1},
            "net": {"vm_id": "ab".repeat(32), "index": 3, "tap": "vmtap3",
                    "host_ip": "172.16.3.1", "guest_ip": "172.16.3.2", "prefix": 24,
                    "mac": "02:00:ac:10:03:02"},
            "ssh_port": 24007,
        })
    }

    #[test]
    fn a_record_from_before_port_forwarding_loads_with_ssh_forwarded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            InstanceRecord::path(dir.path()),
            serde_json::to_vec(&old_record()).unwrap(),
        )
        .unwrap();
        let record = InstanceRecord::load(dir.path()).unwrap();
        assert!(record.forwarded_ports.is_empty());
        assert_eq!(
            serde_json::to_value(record.port_mapping()).unwrap(),
            json!({"22": {"host": 24007, "tcp": true, "udp": false}})
        );
    }

    #[test]
    fn the_forwarded_ports_are_kept_across_a_save_and_ssh_stays_on_its_port() {
        let dir = tempfile::tempdir().unwrap();
        let mut record: InstanceRecord = serde_json::from_value(old_record()).unwrap();
        record.forwarded_ports = PortMapping::from([
            (
                22,
                MappedPort {
                    host: 1,
                    tcp: false,
                    udp: true,
                },
            ),
            (
                80,
                MappedPort {
                    host: 24008,
                    tcp: true,
                    udp: false,
                },
            ),
        ]);
        record.save(dir.path()).unwrap();
        let loaded = InstanceRecord::load(dir.path()).unwrap();
        assert_eq!(loaded, record);
        assert_eq!(
            serde_json::to_value(loaded.port_mapping()).unwrap(),
            json!({
                "22": {"host": 24007, "tcp": true, "udp": true},
                "80": {"host": 24008, "tcp": true, "udp": false},
            })
        );
    }
}
