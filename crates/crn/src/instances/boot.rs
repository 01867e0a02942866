//! How an instance boots, decided from its parent image.
//!
//! A bare ext4 filesystem (what `aleph-node images rootfs` builds) has no bootloader:
//! its own kernel and initramfs are read out of its `/boot` (with `debugfs`, without
//! mounting anything) and booted directly, with the root disk as `/dev/vda`. Anything
//! else (a qcow2 or raw disk image with a partition table and a bootloader, as the
//! distributions' cloud images are) is booted by the machine's firmware.

use crate::error::ProgramError;
use crate::execution::prepare::sniff_format;
use crate::hypervisor::BootSource;
use aleph_protocol::agent::VolumeFormat;
use std::path::{Path, PathBuf};

/// The kernel command line of a directly booted instance.
const ROOT_CMDLINE: &str = "root=/dev/vda rw";

#[derive(Debug, Clone, PartialEq)]
pub enum BootPlan {
    Kernel(BootSource),
    Firmware,
}

/// The plan for parent image `parent` (file `file_hash` of the cache); extracted kernels
/// are kept in `cache_dir/<file_hash>/`.
pub async fn plan(
    parent: &Path,
    file_hash: &str,
    cache_dir: &Path,
) -> Result<BootPlan, ProgramError> {
    if sniff_format(parent) != Some(VolumeFormat::Ext4) {
        return Ok(BootPlan::Firmware);
    }
    let dir = cache_dir.join(file_hash);
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    if !(kernel.is_file() && initrd.is_file()) {
        extract(parent, &dir).await?;
    }
    Ok(BootPlan::Kernel(BootSource {
        kernel,
        initramfs: Some(initrd),
        cmdline: ROOT_CMDLINE.into(),
    }))
}

/// Copies the newest `vmlinuz-*` and its `initrd.img-*` out of the image's `/boot`.
async fn extract(image: &Path, dir: &Path) -> Result<(), ProgramError> {
    let listing = debugfs(image, "ls -p /boot").await?;
    let version = newest_kernel(&listing).ok_or_else(|| {
        ProgramError::Unsupported(format!(
            "the root filesystem {} has no kernel in /boot (vmlinuz-VERSION with initrd.img-VERSION)",
            image.display()
        ))
    })?;
    let io = |e: std::io::Error| ProgramError::internal(format!("{}: {e}", dir.display()));
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    for (inside, name) in [
        (format!("/boot/vmlinuz-{version}"), "vmlinuz"),
        (format!("/boot/initrd.img-{version}"), "initrd.img"),
    ] {
        let partial = dir.join(format!("{name}.partial"));
        let _ = tokio::fs::remove_file(&partial).await;
        debugfs(image, &format!("dump {inside} {}", partial.display())).await?;
        let written = tokio::fs::metadata(&partial).await.map(|m| m.len());
        if !matches!(written, Ok(n) if n > 0) {
            return Err(ProgramError::Unsupported(format!(
                "cannot read {inside} from the root filesystem {}",
                image.display()
            )));
        }
        tokio::fs::rename(&partial, dir.join(name))
            .await
            .map_err(io)?;
    }
    Ok(())
}

/// The version of the newest kernel in a `debugfs ls -p` listing
/// (`/inode/mode/uid/gid/name/size/` per line) that has an initramfs beside it.
fn newest_kernel(listing: &str) -> Option<String> {
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split('/').nth(5))
        .collect();
    let mut versions: Vec<&str> = names
        .iter()
        .filter_map(|name| name.strip_prefix("vmlinuz-"))
        .filter(|version| names.contains(&format!("initrd.img-{version}").as_str()))
        .collect();
    versions.sort_by(|a, b| compare_versions(a, b));
    versions.last().map(|v| v.to_string())
}

/// Numeric parts compared as numbers (`6.1.10` after `6.1.9`).
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<(u64, String)> {
        v.split(['.', '-', '+', '~'])
            .map(|p| (p.parse().unwrap_or(0), p.to_owned()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

async fn debugfs(image: &Path, request: &str) -> Result<String, ProgramError> {
    let output = tokio::process::Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .await
        .map_err(|e| {
            ProgramError::Unsupported(format!(
                "cannot run debugfs ({e}): install e2fsprogs to boot ext4 root filesystems"
            ))
        })?;
    if !output.status.success() {
        return Err(ProgramError::internal(format!(
            "debugfs -R {request:?} {}: {}",
            image.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Where extracted kernels are cached under a node's data folder.
pub fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cache").join("instance-kernels")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_kernel_that_has_an_initramfs() {
        let listing = "/2/040755/0/0/./\n/2/040755/0/0/../\n\
            /12/100644/0/0/vmlinuz-6.1.0-9-cloud-amd64/7000000/\n\
            /13/100644/0/0/initrd.img-6.1.0-9-cloud-amd64/30000000/\n\
            /14/100644/0/0/vmlinuz-6.1.0-10-cloud-amd64/7000000/\n\
            /15/100644/0/0/initrd.img-6.1.0-10-cloud-amd64/30000000/\n\
            /16/100644/0/0/vmlinuz-6.2.0-1-cloud-amd64/7000000/\n\
            /17/100644/0/0/config-6.2.0-1-cloud-amd64/1000/\n";
        assert_eq!(
            newest_kernel(listing).as_deref(),
            Some("6.1.0-10-cloud-amd64")
        );
        assert_eq!(newest_kernel("/2/040755/0/0/./\n"), None);
    }

    #[tokio::test]
    async fn an_image_without_an_ext4_superblock_boots_through_firmware() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.qcow2");
        std::fs::write(&image, b"QFI\xfb\0\0\0\x03").unwrap();
        assert_eq!(
            plan(&image, "h", dir.path()).await.unwrap(),
            BootPlan::Firmware
        );
    }
}
