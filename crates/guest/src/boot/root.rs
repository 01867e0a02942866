//! Makes the runtime drive the root: its squashfs read-only underneath, a tmpfs on top
//! in an overlay (so the app may write anywhere, and nothing reaches the drive), then
//! switches into it while the agent keeps running.

use crate::paths::{LOWER_DIR, NEW_ROOT, RW_DIR};
use anyhow::{Context, Result};
use nix::mount::{MsFlags, mount};
use std::path::Path;
use std::time::{Duration, Instant};

/// Block devices appear asynchronously once their driver has probed them.
pub fn wait_for_device(device: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !device.exists() {
        if Instant::now() > deadline {
            anyhow::bail!("{} did not appear within {timeout:?}", device.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

pub fn assemble(device: &Path) -> Result<()> {
    for dir in [LOWER_DIR, RW_DIR, NEW_ROOT] {
        std::fs::create_dir_all(dir)?;
    }
    mount(
        Some(device),
        LOWER_DIR,
        Some("squashfs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .with_context(|| format!("mounting runtime {} (squashfs)", device.display()))?;
    mount(
        Some("rootrw"),
        RW_DIR,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mounting the overlay's tmpfs")?;
    std::fs::create_dir_all(format!("{RW_DIR}/upper"))?;
    std::fs::create_dir_all(format!("{RW_DIR}/work"))?;
    let options = format!("lowerdir={LOWER_DIR},upperdir={RW_DIR}/upper,workdir={RW_DIR}/work");
    mount(
        Some("overlay"),
        NEW_ROOT,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .context("mounting the root overlay")
}

/// `pivot_root` refuses to move away from the initramfs (rootfs cannot be unmounted), so
/// do what switch_root does: mount the new root over `/` and chroot into it. The
/// initramfs stays in memory underneath; it is small (the agent and a few modules).
pub fn switch() -> Result<()> {
    std::env::set_current_dir(NEW_ROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root onto /")?;
    nix::unistd::chroot(".").context("chroot")?;
    std::env::set_current_dir("/")?;
    Ok(())
}
