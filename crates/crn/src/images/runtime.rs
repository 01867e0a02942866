//! The Python runtime: a minimal Debian with python3, FastAPI and uvicorn, as a zstd
//! squashfs that guests mount read-only as their root.

use super::options::RuntimeRecipe;
use super::tools::{self, DEBOOTSTRAP, MKSQUASHFS};
use anyhow::{Result, bail};
use std::path::Path;

/// Bumped whenever [`tidy`] changes what goes into the image.
const TIDY_VERSION: u32 = 1;

impl RuntimeRecipe {
    /// What a cached runtime is keyed by.
    pub fn key(&self) -> String {
        format!(
            "debootstrap --variant=minbase --include={} {} {} tidy={TIDY_VERSION}",
            self.packages.join(","),
            self.suite,
            self.mirror
        )
    }
}

pub async fn debootstrap(recipe: &RuntimeRecipe, dir: &Path) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("building the runtime needs root (debootstrap)");
    }
    let include = format!("--include={}", recipe.packages.join(","));
    tools::run(
        DEBOOTSTRAP,
        &[
            "--variant=minbase",
            &include,
            &recipe.suite,
            &dir.to_string_lossy(),
            &recipe.mirror,
        ],
        None,
    )
    .await?;
    Ok(())
}

/// Leaves out what a read-only guest root does not need, and what describes the build
/// host rather than the guest.
pub fn tidy(dir: &Path) -> Result<()> {
    for sub in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
    }
    for file in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
    ] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    // debootstrap copies the host's resolver; the agent writes the guest's own.
    let _ = std::fs::remove_file(dir.join("etc/resolv.conf"));
    std::fs::write(dir.join("etc/resolv.conf"), "")?;
    std::fs::write(dir.join("etc/hostname"), "aleph\n")?;
    std::fs::create_dir_all(dir.join("opt/code"))?;
    Ok(())
}

pub async fn squash(dir: &Path, out: &Path) -> Result<()> {
    tools::run(
        MKSQUASHFS,
        &[
            &dir.to_string_lossy(),
            &out.to_string_lossy(),
            "-comp",
            "zstd",
            "-noappend",
            "-no-progress",
            "-quiet",
        ],
        None,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_the_recipe() {
        let a = RuntimeRecipe::default();
        let mut b = a.clone();
        b.packages.push("python3-numpy".into());
        assert_ne!(a.key(), b.key());
        assert!(
            a.key()
                .contains("python3,python3-fastapi,python3-uvicorn bookworm")
        );
    }

    #[test]
    fn tidy_drops_host_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("var/cache/apt/archives/partial")).unwrap();
        std::fs::write(dir.path().join("var/cache/apt/archives/x.deb"), "x").unwrap();
        std::fs::write(dir.path().join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        tidy(dir.path()).unwrap();
        assert!(!dir.path().join("var/cache/apt/archives/x.deb").exists());
        assert!(dir.path().join("var/cache/apt/archives/partial").is_dir());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/resolv.conf")).unwrap(),
            ""
        );
        assert!(dir.path().join("opt/code").is_dir());
    }
}
