//! The root filesystem of instances: Debian 12 with systemd, cloud-init and sshd, as a
//! raw ext4 image labelled `rootfs`, with the kernel and initrd installed inside it
//! copied out beside it (QEMU boots them directly; there is no boot loader).
//!
//! ```text
//! DATA/images/debian12-rootfs.json    what the three blobs are and the recipe they came from
//! DATA/images/debian12-rootfs.ext4    -> sha256/<hex>   parent of every instance's overlay
//! DATA/images/debian12-vmlinuz        -> sha256/<hex>
//! DATA/images/debian12-initrd.img     -> sha256/<hex>
//! ```
//!
//! The image is generic: no machine id, no SSH host keys, no hostname. cloud-init makes
//! each instance its own at first boot from the NoCloud seed (`crate::instance::seed`).

use super::options::{Progress, RuntimeRecipe};
use super::store::{Blob, Store};
use super::tools;
use super::{runtime, took};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// On top of `--variant=minbase`: an init, cloud-init and sshd, the kernel with an
/// initramfs generator, networkd's resolver for the DNS servers cloud-init configures,
/// and e2fsprogs for the boot-time fsck and cloud-init's resize2fs (zstd: the
/// initramfs's default compression).
/// `python3-cffi-backend` is named because debootstrap does not resolve virtual packages:
/// python3-cryptography (needed by cloud-init) depends on `python3-cffi-backend-api-*`,
/// which only it provides; likewise `dbus` for systemd-resolved's `dbus-system-bus` (and
/// logind needs it to act on the power button).
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "dbus",
    "udev",
    "cloud-init",
    "python3-cffi-backend",
    "openssh-server",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "zstd",
    "e2fsprogs",
    "iproute2",
    "ca-certificates",
    "sudo",
];

/// Bumped whenever [`configure`] or the image layout changes what comes out.
const CONFIGURE_VERSION: u32 = 3;

/// Free room left in the filesystem, on top of its content (dpkg, logs, the first
/// `apt-get update`); the overlay and cloud-init's resize2fs give instances the rest.
const HEADROOM_PERCENT: u64 = 30;
const MIN_IMAGE_BYTES: u64 = 1 << 30;

pub const ROOTFS_LINK: &str = "debian12-rootfs.ext4";
pub const KERNEL_LINK: &str = "debian12-vmlinuz";
pub const INITRD_LINK: &str = "debian12-initrd.img";
/// The filesystem label, for `root=LABEL=rootfs`.
pub const ROOTFS_LABEL: &str = "rootfs";
const MANIFEST: &str = "debian12-rootfs.json";

const MKFS_EXT4: (&str, &str) = ("mkfs.ext4", "e2fsprogs");
const CHROOT: (&str, &str) = ("chroot", "coreutils");

/// A built instance root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsImage {
    /// Raw ext4, labelled [`ROOTFS_LABEL`]; never written (instances get an overlay).
    pub image: PathBuf,
    /// The image's own kernel (bzImage).
    pub kernel: PathBuf,
    /// The image's own initramfs (initramfs-tools; finds the root by label).
    pub initrd: PathBuf,
    /// `uname -r` of the kernel.
    pub kernel_version: String,
    /// Size of `image`, which is also the filesystem's size.
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RootfsEntry {
    key: String,
    kernel_version: String,
    image: Blob,
    kernel: Blob,
    initrd: Blob,
}

impl RootfsEntry {
    fn blobs(&self) -> [&Blob; 3] {
        [&self.image, &self.kernel, &self.initrd]
    }

    fn paths(&self, store: &Store) -> RootfsImage {
        RootfsImage {
            image: store.blob_path(&self.image),
            kernel: store.blob_path(&self.kernel),
            initrd: store.blob_path(&self.initrd),
            kernel_version: self.kernel_version.clone(),
            size_bytes: self.image.size,
        }
    }
}

fn recipe() -> RuntimeRecipe {
    RuntimeRecipe {
        suite: SUITE.into(),
        mirror: MIRROR.into(),
        packages: PACKAGES.iter().map(|p| p.to_string()).collect(),
    }
}

fn recipe_key() -> String {
    format!(
        "debootstrap --variant=minbase --include={} {SUITE} {MIRROR} configure={CONFIGURE_VERSION} headroom={HEADROOM_PERCENT}%",
        PACKAGES.join(",")
    )
}

fn load_entry(store: &Store) -> Option<RootfsEntry> {
    serde_json::from_slice(&std::fs::read(store.root.join(MANIFEST)).ok()?).ok()
}

fn save_entry(store: &Store, entry: &RootfsEntry) -> Result<()> {
    let tmp = store.root.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(entry)?)?;
    std::fs::rename(&tmp, store.root.join(MANIFEST))?;
    Ok(())
}

/// The root filesystem already built in `data_dir` with the current recipe, if its files
/// are there (checked by size, not hashed).
pub fn cached_rootfs(data_dir: &Path) -> Option<RootfsImage> {
    let store = Store::new(data_dir);
    let entry = load_entry(&store)?;
    (entry.key == recipe_key() && entry.blobs().iter().all(|b| store.present(b)))
        .then(|| entry.paths(&store))
}

/// Builds the Debian 12 instance root filesystem into `DATA/images/`, or verifies the
/// one built before from the same recipe and returns it. Needs root (debootstrap).
pub async fn build_rootfs(data_dir: &Path, progress: &dyn Progress) -> Result<RootfsImage> {
    let store = Store::new(data_dir);
    let _lock = store.lock().await?;
    let key = recipe_key();

    if let Some(entry) = load_entry(&store)
        && entry.key == key
    {
        let start = Instant::now();
        if entry.blobs().iter().all(|b| store.verify(b)) {
            progress.step(&format!(
                "debian12 rootfs: cached, verified ({}) in {}",
                mib(entry.image.size),
                took(start)
            ));
            link_all(&store, &entry)?;
            return Ok(entry.paths(&store));
        }
        progress.step("debian12 rootfs: cached files are damaged, rebuilding");
    }

    for tool in [tools::DEBOOTSTRAP, MKFS_EXT4, CHROOT] {
        tools::find(tool)?;
    }
    let total = Instant::now();
    let scratch = store.scratch()?;
    let root = scratch.path().join("root");

    let start = Instant::now();
    progress.step(&format!("debian12 rootfs: {key}"));
    if let Err(e) = runtime::debootstrap(&recipe(), &root).await {
        // debootstrap says what went wrong in its log, which the scratch folder takes away.
        return Err(e.context(format!(
            "debootstrap of the instance root filesystem; the end of its log:\n{}",
            debootstrap_log_tail(&root)
        )));
    }
    progress.step(&format!("debian12 rootfs: debootstrap in {}", took(start)));

    let start = Instant::now();
    configure(&root).await?;
    progress.step(&format!("debian12 rootfs: configured in {}", took(start)));

    let start = Instant::now();
    let boot = boot_files(&root)?;
    let kernel_out = scratch.path().join("vmlinuz");
    let initrd_out = scratch.path().join("initrd.img");
    std::fs::copy(&boot.kernel, &kernel_out)
        .with_context(|| format!("copying {}", boot.kernel.display()))?;
    std::fs::copy(&boot.initrd, &initrd_out)
        .with_context(|| format!("copying {}", boot.initrd.display()))?;
    progress.step(&format!(
        "debian12 rootfs: kernel {} and its initrd copied out in {}",
        boot.version,
        took(start)
    ));

    let start = Instant::now();
    let content = tree_bytes(&root)?;
    let size = image_size(content);
    let image_out = scratch.path().join("rootfs.ext4");
    make_ext4(&root, &image_out, size).await?;
    progress.step(&format!(
        "debian12 rootfs: ext4 {} for {} of content in {}",
        mib(size),
        mib(content),
        took(start)
    ));

    let start = Instant::now();
    let entry = RootfsEntry {
        key,
        kernel_version: boot.version,
        image: store.put_file(&image_out)?,
        kernel: store.put_file(&kernel_out)?,
        initrd: store.put_file(&initrd_out)?,
    };
    link_all(&store, &entry)?;
    save_entry(&store, &entry)?;
    drop(scratch);
    progress.step(&format!(
        "debian12 rootfs: stored in {} ({} in all)",
        took(start),
        took(total)
    ));
    Ok(entry.paths(&store))
}

/// The lines of debootstrap's log that say why dpkg stopped, else its last lines.
fn debootstrap_log_tail(root: &Path) -> String {
    let log = std::fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("depends on") || l.contains("error") || l.starts_with("E:"))
        .collect();
    let chosen = if errors.is_empty() { &lines } else { &errors };
    chosen[chosen.len().saturating_sub(20)..].join("\n")
}

fn link_all(store: &Store, entry: &RootfsEntry) -> Result<()> {
    store.link(ROOTFS_LINK, &entry.image)?;
    store.link(KERNEL_LINK, &entry.kernel)?;
    store.link(INITRD_LINK, &entry.initrd)?;
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// cloud-init reads only the seed disk: probing for cloud metadata services would stall
/// the boot on a network that has none. networkd renders the seed's network-config
/// (no ifupdown or netplan in the image).
const CLOUD_CFG: &str = "\
# Written by the Aleph CRN image builder.
datasource_list: [ NoCloud ]
# The image has no `locales` package; C.UTF-8 is built into libc.
locale: C.UTF-8
system_info:
  network:
    renderers: [ networkd ]
    activators: [ networkd ]
";

const FSTAB: &str = "LABEL=rootfs / ext4 defaults,errors=remount-ro 0 1\n";

const SOURCES_LIST: &str = "\
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
";

/// Makes the tree a generic image: what identifies a machine is removed (each instance
/// gets its own at first boot), what only the build needed is dropped.
async fn configure(root: &Path) -> Result<()> {
    let path = |p: &str| root.join(p);

    // An empty machine-id makes systemd generate one at first boot (and treat it as such).
    std::fs::write(path("etc/machine-id"), "")?;
    let _ = std::fs::remove_file(path("var/lib/dbus/machine-id"));

    // sshd's keys: cloud-init generates them at first boot and prints their fingerprints.
    for entry in std::fs::read_dir(path("etc/ssh"))?.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("ssh_host_"))
        {
            std::fs::remove_file(entry.path())?;
        }
    }

    std::fs::create_dir_all(path("etc/cloud/cloud.cfg.d"))?;
    std::fs::write(path("etc/cloud/cloud.cfg.d/99_aleph.cfg"), CLOUD_CFG)?;
    std::fs::write(path("etc/fstab"), FSTAB)?;
    std::fs::write(path("etc/default/locale"), "LANG=C.UTF-8\n")?;
    std::fs::write(path("etc/hostname"), "localhost\n")?;
    std::fs::write(path("etc/apt/sources.list"), SOURCES_LIST)?;
    // debootstrap copied the build host's resolver; systemd-resolved's stub replaces it.
    if !path("etc/resolv.conf").is_symlink() {
        let _ = std::fs::remove_file(path("etc/resolv.conf"));
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            path("etc/resolv.conf"),
        )?;
    }

    // networkd applies what cloud-init renders. An instance without a reachable network
    // (or with no NIC at all) must still boot to its console, so nothing waits for one.
    chroot_systemctl(root, &["enable", "systemd-networkd", "systemd-resolved"]).await?;
    chroot_systemctl(root, &["mask", "systemd-networkd-wait-online.service"]).await?;

    // The kernel's initramfs left out fsck: its hook learns the root's type by probing the
    // root device, which does not exist in the build tree. Say it, and make it again.
    std::fs::write(
        path("etc/initramfs-tools/conf.d/aleph-rootfs"),
        "FSTYPE=ext4\n",
    )?;
    tools::run(
        CHROOT,
        &[
            &root.to_string_lossy(),
            "update-initramfs",
            "-u",
            "-k",
            "all",
        ],
        None,
    )
    .await
    .context("making the initramfs again")?;

    for sub in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = std::fs::read_dir(path(sub)) {
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
        "var/log/bootstrap.log",
    ] {
        let _ = std::fs::remove_file(path(file));
    }
    Ok(())
}

async fn chroot_systemctl(root: &Path, args: &[&str]) -> Result<()> {
    let root = root.to_string_lossy();
    let mut full = vec![root.as_ref(), "systemctl"];
    full.extend_from_slice(args);
    tools::run(CHROOT, &full, None).await?;
    Ok(())
}

struct BootFiles {
    version: String,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// The one kernel in `/boot` and the initrd made for it.
fn boot_files(root: &Path) -> Result<BootFiles> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(String::from)
        })
        .collect();
    versions.sort();
    let Some(version) = versions.pop() else {
        bail!("no /boot/vmlinuz-* in the image: was the kernel package installed?");
    };
    if !versions.is_empty() {
        bail!("more than one kernel in the image's /boot: {versions:?} and {version}");
    }
    let files = BootFiles {
        kernel: boot.join(format!("vmlinuz-{version}")),
        initrd: boot.join(format!("initrd.img-{version}")),
        version,
    };
    if !files.initrd.is_file() {
        bail!(
            "{} is missing: initramfs-tools did not make it",
            files.initrd.display()
        );
    }
    Ok(files)
}

/// What the tree takes on disk: each file rounded up to 4 KiB blocks, plus an inode's
/// worth of metadata for every entry.
fn tree_bytes(root: &Path) -> Result<u64> {
    const BLOCK: u64 = 4096;
    const PER_ENTRY: u64 = 256;
    let mut total = 0u64;
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            total += PER_ENTRY;
            if meta.is_dir() {
                total += BLOCK;
                pending.push(entry.path());
            } else if meta.is_file() {
                total += meta.len().div_ceil(BLOCK) * BLOCK;
            }
        }
    }
    Ok(total)
}

/// Content plus headroom, at least [`MIN_IMAGE_BYTES`], in whole MiB.
fn image_size(content: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let with_headroom = content + content * HEADROOM_PERCENT / 100;
    with_headroom.max(MIN_IMAGE_BYTES).div_ceil(MIB) * MIB
}

async fn make_ext4(root: &Path, image: &Path, size: u64) -> Result<()> {
    let size = format!("{}k", size / 1024);
    tools::run(
        MKFS_EXT4,
        &[
            "-q",
            "-F",
            "-L",
            ROOTFS_LABEL,
            "-d",
            &root.to_string_lossy(),
            &image.to_string_lossy(),
            &size,
        ],
        None,
    )
    .await
    .context("making the ext4 image")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_size_has_headroom_and_a_floor() {
        assert_eq!(image_size(10 << 20), MIN_IMAGE_BYTES);
        let content = 1000 << 20;
        assert_eq!(image_size(content), 1300 << 20);
        assert_eq!(image_size(content + 1) % (1 << 20), 0);
    }

    #[test]
    fn key_names_every_package_and_the_configure_version() {
        let key = recipe_key();
        for package in PACKAGES {
            assert!(key.contains(package), "{key}");
        }
        assert!(key.contains(&format!("configure={CONFIGURE_VERSION}")));
    }

    #[test]
    fn boot_files_finds_the_one_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        assert!(boot_files(dir.path()).is_err());
        std::fs::write(boot.join("vmlinuz-6.1.0-28-cloud-amd64"), "k").unwrap();
        assert!(boot_files(dir.path()).is_err(), "no initrd");
        std::fs::write(boot.join("initrd.img-6.1.0-28-cloud-amd64"), "i").unwrap();
        let files = boot_files(dir.path()).unwrap();
        assert_eq!(files.version, "6.1.0-28-cloud-amd64");
        assert!(files.kernel.ends_with("boot/vmlinuz-6.1.0-28-cloud-amd64"));
    }

    #[test]
    fn cached_rootfs_needs_a_manifest_with_this_recipe() {
        let dir = tempfile::tempdir().unwrap();
        assert!(cached_rootfs(dir.path()).is_none());
        let store = Store::new(dir.path());
        let blob = store.put_bytes(b"x").unwrap();
        let mut entry = RootfsEntry {
            key: "old".into(),
            kernel_version: "6.1".into(),
            image: blob.clone(),
            kernel: blob.clone(),
            initrd: blob,
        };
        save_entry(&store, &entry).unwrap();
        assert!(cached_rootfs(dir.path()).is_none());
        entry.key = recipe_key();
        save_entry(&store, &entry).unwrap();
        let found = cached_rootfs(dir.path()).unwrap();
        assert_eq!(found.size_bytes, 1);
        assert_eq!(found.image, store.blob_path(&entry.image));
    }
}
