//! What a node keeps of each instance in its folder (`instance.json`): enough to start
//! it again with the same disk, address and SSH port after a stop or a node restart.

use crate::network::VmNet;
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
}

impl InstanceRecord {
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
