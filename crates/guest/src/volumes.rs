//! Extra drives, mounted where the program asked.

use aleph_protocol::agent::{VolumeConfig, VolumeFormat};
use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount};
use std::path::Path;

pub fn mount_all(volumes: &[VolumeConfig]) -> Result<()> {
    volumes.iter().try_for_each(mount_one)
}

fn mount_one(volume: &VolumeConfig) -> Result<()> {
    let target = Path::new(&volume.mount);
    if !target.is_absolute() || volume.mount.split('/').any(|c| c == "..") {
        bail!(
            "volume mount point {:?} must be an absolute path",
            volume.mount
        );
    }
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", volume.mount))?;
    let (fstype, mut flags) = match volume.format {
        // squashfs cannot be written to; say so rather than let the mount fail.
        VolumeFormat::Squashfs => ("squashfs", MsFlags::MS_RDONLY),
        VolumeFormat::Ext4 => ("ext4", MsFlags::empty()),
    };
    if volume.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some(volume.device.as_str()),
        target,
        Some(fstype),
        flags | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .with_context(|| format!("mounting {} ({fstype}) on {}", volume.device, volume.mount))
}

/// Best effort, at shutdown: a clean ext4 needs no fsck on the next boot.
pub fn unmount_all(volumes: &[VolumeConfig]) {
    for volume in volumes.iter().rev() {
        let _ = nix::mount::umount2(volume.mount.as_str(), nix::mount::MntFlags::empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_relative_mount_points() {
        for mount in ["data", "/data/../etc"] {
            let v = VolumeConfig {
                device: "/dev/vdc".into(),
                mount: mount.into(),
                format: VolumeFormat::Ext4,
                read_only: false,
            };
            assert!(mount_one(&v).is_err());
        }
    }
}
