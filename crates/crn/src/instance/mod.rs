//! An instance's disks. An instance is a full VM (systemd, cloud-init, sshd) that boots
//! from its own root disk; per instance the CRN makes two files in the instance's
//! execution folder:
//!
//! ```text
//! <execution folder>/rootfs.qcow2     root disk: qcow2 overlay backed by the parent
//!                                     rootfs image (raw or qcow2, shared, never written),
//!                                     sized to the message's `rootfs.size_mib`
//! <execution folder>/cloud-init.img   cloud-init NoCloud seed: vfat labelled CIDATA with
//!                                     user-data, meta-data and network-config
//! ```
//!
//! The guest's writes land in the overlay only, so deleting the execution folder
//! forgets the instance and leaves the parent for the next one.

pub mod config;
pub mod overlay;
pub mod seed;

pub use config::{Ipv4Cidr, Ipv6Cidr, SeedConfig, SeedMount, StaticNetwork};
pub use overlay::{DiskFormat, OverlayError, OverlayInfo, create_overlay, overlay_info};
pub use seed::{SEED_LABEL, SeedDocuments, SeedError, render_seed, write_seed};

use std::path::{Path, PathBuf};

/// File name of the root disk overlay in the execution folder.
pub const ROOTFS_OVERLAY: &str = "rootfs.qcow2";
/// File name of the cloud-init seed in the execution folder.
pub const CLOUD_INIT_SEED: &str = "cloud-init.img";

/// Where an instance's disks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDisks {
    pub rootfs: PathBuf,
    pub seed: PathBuf,
}

impl InstanceDisks {
    pub fn in_folder(execution_folder: &Path) -> Self {
        Self {
            rootfs: execution_folder.join(ROOTFS_OVERLAY),
            seed: execution_folder.join(CLOUD_INIT_SEED),
        }
    }
}
