//! The instance root filesystem the devnet publishes (`aleph_crn::images`'s
//! Debian 12 image): the one already built when there is one, checked by size
//! only so that a start stays quick (hashing it takes seconds), else built now
//! (root, debootstrap and the network; a minute or two, then cached).

use aleph_crn::images::{self, RootfsImage, StderrProgress};
use anyhow::{Context, Result};
use std::path::Path;

/// The Debian 12 root filesystem of `images_dir`, built if missing.
pub async fn debian12(images_dir: &Path) -> Result<RootfsImage> {
    if let Some(cached) = images::cached_rootfs(images_dir) {
        return Ok(cached);
    }
    eprintln!(
        "devnet: building the instance root filesystem into {} (the first time takes a minute or two)",
        images_dir.display()
    );
    images::build_rootfs(images_dir, &StderrProgress)
        .await
        .context("building the Debian 12 instance root filesystem (`aleph-node images rootfs debian12` shows the same steps)")
}
