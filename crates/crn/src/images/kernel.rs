//! The kernel from Debian's cloud kernel package: fetched with `apt-get download`,
//! unpacked with `dpkg-deb -x` (no installation on the host).

use super::options::KERNEL_METAPACKAGE;
use super::tools::{self, APT_CACHE, APT_GET, DPKG_DEB};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The versioned package the metapackage currently points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    pub name: String,
    pub version: String,
}

impl KernelPackage {
    /// What a cached kernel is keyed by.
    pub fn key(&self) -> String {
        format!("{}={}", self.name, self.version)
    }
}

/// Parses `apt-cache show` of the metapackage: its `Depends` names the real package,
/// `linux-image-<abi>-cloud-amd64 (= <version>)`.
fn parse_show(text: &str) -> Result<KernelPackage> {
    let depends = text
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .context("the kernel metapackage has no Depends")?;
    for dep in depends.split(',') {
        let dep = dep.trim();
        let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
        if name.starts_with("linux-image-") {
            let version = rest
                .trim()
                .strip_prefix("(=")
                .and_then(|v| v.strip_suffix(')'))
                .map(str::trim)
                .context("the kernel dependency has no exact version")?;
            return Ok(KernelPackage {
                name: name.to_owned(),
                version: version.to_owned(),
            });
        }
    }
    bail!("the kernel metapackage depends on no linux-image package")
}

pub async fn resolve() -> Result<KernelPackage> {
    let out = tools::run(
        APT_CACHE,
        &["show", "--no-all-versions", KERNEL_METAPACKAGE],
        None,
    )
    .await?;
    parse_show(&String::from_utf8_lossy(&out.stdout))
}

/// The unpacked package.
pub struct Unpacked {
    pub root: PathBuf,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
}

impl Unpacked {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join(format!("boot/vmlinuz-{}", self.kernel_version))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.kernel_version)
    }
}

pub async fn fetch(package: &KernelPackage, work: &Path) -> Result<Unpacked> {
    let spec = package.key();
    // As root, apt drops to the `_apt` user to download, which cannot write to a private
    // temporary folder; downloading as root there is what we want anyway.
    tools::run(
        APT_GET,
        &["-q", "-o", "APT::Sandbox::User=root", "download", &spec],
        Some(work),
    )
    .await?;
    let deb = std::fs::read_dir(work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb")?;
    let root = work.join("root");
    tools::run(
        DPKG_DEB,
        &["-x", &deb.to_string_lossy(), &root.to_string_lossy()],
        None,
    )
    .await?;
    let kernel_version = std::fs::read_dir(root.join("lib/modules"))
        .context("the kernel package has no modules")?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .next()
        .context("the kernel package has no modules folder")?;
    let unpacked = Unpacked {
        root,
        kernel_version,
    };
    if !unpacked.vmlinuz().exists() {
        bail!("the kernel package has no {}", unpacked.vmlinuz().display());
    }
    Ok(unpacked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_real_package() {
        let text = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nDescription: x\n";
        assert_eq!(
            parse_show(text).unwrap(),
            KernelPackage {
                name: "linux-image-6.1.0-56-cloud-amd64".into(),
                version: "6.1.192-2".into()
            }
        );
        assert!(parse_show("Package: x\nDepends: libc6\n").is_err());
    }
}
