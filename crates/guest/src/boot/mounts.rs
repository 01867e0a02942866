//! The kernel's pseudo filesystems.

use anyhow::{Context, Result};
use nix::mount::{MsFlags, mount};
use std::path::Path;

fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .with_context(|| format!("mounting {fstype} on {}", target.display()))
}

const NODEV_NOSUID_NOEXEC: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);

/// What the agent needs before the root exists: `/proc` (command line), `/sys` (finding
/// the channel port) and `/dev` (block devices appear there through devtmpfs).
pub fn early(root: &Path) -> Result<()> {
    mount_fs(
        "proc",
        &root.join("proc"),
        "proc",
        NODEV_NOSUID_NOEXEC,
        None,
    )?;
    mount_fs(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        NODEV_NOSUID_NOEXEC,
        None,
    )?;
    mount_fs(
        "devtmpfs",
        &root.join("dev"),
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
}

/// Moves the early mounts under the new root, so they survive the switch.
pub fn move_early(new_root: &Path) -> Result<()> {
    for dir in ["proc", "sys", "dev"] {
        let target = new_root.join(dir);
        std::fs::create_dir_all(&target)?;
        mount(
            Some(Path::new("/").join(dir).as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .with_context(|| format!("moving /{dir}"))?;
    }
    Ok(())
}

/// The rest, once in the final root: ptys and shared memory for the app, and `/run`
/// for its socket.
pub fn late() -> Result<()> {
    let root = Path::new("/");
    mount_fs(
        "devpts",
        &root.join("dev/pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=620,ptmxmode=666"),
    )?;
    mount_fs(
        "shm",
        &root.join("dev/shm"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs(
        "run",
        &root.join("run"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
}
