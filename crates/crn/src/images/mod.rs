//! Guest images: the kernel (`vmlinuz`, and `vmlinux` for Firecracker), the initramfs
//! (the static guest agent as `/init`, plus the kernel modules the guest needs), and the
//! Python runtime squashfs. Built from Debian packages, cached by content hash under
//! `DATA/images/`; building again only verifies what is there.
//!
//! ```text
//! DATA/images/manifest.json     what each blob is and what it was built from
//! DATA/images/sha256/<hex>      the blobs
//! DATA/images/{vmlinuz,vmlinux,initramfs.cpio,python-runtime.squashfs} -> sha256/<hex>
//! ```

mod initramfs;
mod kernel;
mod modules;
mod options;
mod rootfs;
mod runtime;
mod store;
mod tools;
mod vmlinux;

pub use options::{
    BuildOptions, DATA_DIR_ENV, GUEST_BIN_ENV, NoProgress, Progress, RuntimeRecipe, StderrProgress,
    default_data_dir, default_guest_bin,
};
pub use rootfs::{
    INITRD_LINK, KERNEL_LINK, ROOTFS_LABEL, ROOTFS_LINK, RootfsImage, build_rootfs, cached_rootfs,
};
pub use tools::ToolError;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;
use store::{Blob, InitramfsEntry, KernelEntry, Manifest, RuntimeEntry, Store};

/// Bumped whenever the modules archive changes (its plan file's format, say).
const MODULES_LAYOUT: u32 = 2;

/// Bumped whenever the initramfs layout changes (see `crates/guest/src/paths.rs`).
const INITRAMFS_FORMAT: u32 = 1;

/// Paths of a complete, verified set of images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImages {
    /// bzImage, for QEMU.
    pub vmlinuz: PathBuf,
    /// Uncompressed ELF kernel, for Firecracker.
    pub vmlinux: PathBuf,
    /// Uncompressed newc cpio with the agent as `/init`.
    pub initramfs: PathBuf,
    /// squashfs root for ASGI programs.
    pub python_runtime: PathBuf,
    /// `uname -r` of the kernel.
    pub kernel_version: String,
    /// SHA-256 of the agent inside the initramfs.
    pub agent_sha256: String,
}

impl GuestImages {
    fn from_manifest(store: &Store, manifest: &Manifest) -> Option<Self> {
        let kernel = manifest.kernel.as_ref()?;
        let initramfs = manifest.initramfs.as_ref()?;
        let runtime = manifest.python_runtime.as_ref()?;
        Some(Self {
            vmlinuz: store.blob_path(&kernel.vmlinuz),
            vmlinux: store.blob_path(&kernel.vmlinux),
            initramfs: store.blob_path(&initramfs.initramfs),
            python_runtime: store.blob_path(&runtime.squashfs),
            kernel_version: kernel.kernel_version.clone(),
            agent_sha256: initramfs.agent_sha256.clone(),
        })
    }
}

/// The images already built in `data_dir`, if all are there (checked by size, not hashed).
pub fn cached(data_dir: &Path) -> Option<GuestImages> {
    let store = Store::new(data_dir);
    let manifest = store.load()?;
    let blobs = [
        &manifest.kernel.as_ref()?.vmlinuz,
        &manifest.kernel.as_ref()?.vmlinux,
        &manifest.initramfs.as_ref()?.initramfs,
        &manifest.python_runtime.as_ref()?.squashfs,
    ];
    blobs
        .iter()
        .all(|b| store.present(b))
        .then(|| GuestImages::from_manifest(&store, &manifest))
        .flatten()
}

/// Builds whatever is missing or stale, verifies the rest, and returns the images.
pub async fn build(opts: &BuildOptions, progress: &dyn Progress) -> Result<GuestImages> {
    let store = Store::new(&opts.data_dir);
    let _lock = store.lock().await?;
    let mut manifest = store.load().unwrap_or_default();

    let agent_path = opts.guest_bin();
    let agent = read_agent(&agent_path)?;

    preflight(&store, &manifest, &opts.runtime)?;
    let (kernel, runtime) = tokio::join!(
        kernel_images(&store, manifest.kernel.take(), progress),
        python_runtime(
            &store,
            &opts.runtime,
            manifest.python_runtime.take(),
            progress
        ),
    );
    let kernel = kernel?;
    let runtime = runtime?;
    let initramfs = initramfs_image(&store, &kernel, &agent, manifest.initramfs.take(), progress)?;

    store.link("vmlinuz", &kernel.vmlinuz)?;
    store.link("vmlinux", &kernel.vmlinux)?;
    store.link("initramfs.cpio", &initramfs.initramfs)?;
    store.link("python-runtime.squashfs", &runtime.squashfs)?;
    let manifest = Manifest {
        kernel: Some(kernel),
        initramfs: Some(initramfs),
        python_runtime: Some(runtime),
    };
    store.save(&manifest)?;
    let _ = std::fs::remove_dir_all(store.root.join("tmp"));
    GuestImages::from_manifest(&store, &manifest).context("incomplete manifest")
}

/// Names a missing host tool before any work starts, rather than after a minute of it.
fn preflight(store: &Store, manifest: &Manifest, recipe: &RuntimeRecipe) -> Result<()> {
    let mut needed = Vec::new();
    if !manifest.kernel.as_ref().is_some_and(|k| {
        [&k.vmlinuz, &k.vmlinux, &k.modules_cpio]
            .iter()
            .all(|b| store.present(b))
    }) {
        needed.extend([tools::APT_CACHE, tools::APT_GET, tools::DPKG_DEB]);
    }
    if !manifest
        .python_runtime
        .as_ref()
        .is_some_and(|r| r.key == recipe.key() && store.present(&r.squashfs))
    {
        needed.extend([tools::DEBOOTSTRAP, tools::MKSQUASHFS]);
    }
    for tool in needed {
        tools::find(tool)?;
    }
    Ok(())
}

/// The agent must be static: it runs before any root filesystem with a libc exists.
fn read_agent(path: &Path) -> Result<Vec<u8>> {
    use object::Object;
    let agent = std::fs::read(path).with_context(|| {
        format!(
            "reading the guest agent {} (build it with scripts/build-guest, or set {GUEST_BIN_ENV})",
            path.display()
        )
    })?;
    let elf = object::File::parse(&*agent)
        .with_context(|| format!("{} is not an executable", path.display()))?;
    if elf.section_by_name(".interp").is_some() {
        bail!(
            "{} is dynamically linked; build it with scripts/build-guest",
            path.display()
        );
    }
    Ok(agent)
}

fn took(start: Instant) -> String {
    format!("{:.1} s", start.elapsed().as_secs_f64())
}

fn size(blob: &Blob) -> String {
    format!("{:.1} MiB", blob.size as f64 / (1 << 20) as f64)
}

async fn kernel_images(
    store: &Store,
    cached: Option<KernelEntry>,
    progress: &dyn Progress,
) -> Result<KernelEntry> {
    let package = match kernel::resolve().await {
        Ok(package) => Some(package),
        // Offline or without apt: a kernel already built is good enough.
        Err(e) if cached.is_some() => {
            progress.step(&format!(
                "kernel: cannot check for a newer package ({e:#}); keeping the cached one"
            ));
            None
        }
        Err(e) => return Err(e),
    };
    // The module choice is part of what a cached kernel stands for.
    let modules_key = format!(
        " modules={}+{} layout={MODULES_LAYOUT}",
        modules::BOOT_MODULES.join(","),
        modules::LATE_MODULES.join(",")
    );
    let key = |package: &kernel::KernelPackage| format!("{}{modules_key}", package.key());
    if let Some(entry) = cached
        && package
            .as_ref()
            .map_or(entry.key.ends_with(&modules_key), |p| key(p) == entry.key)
    {
        let start = Instant::now();
        if [&entry.vmlinuz, &entry.vmlinux, &entry.modules_cpio]
            .iter()
            .all(|b| store.verify(b))
        {
            progress.step(&format!(
                "kernel {}: cached, verified in {}",
                entry.kernel_version,
                took(start)
            ));
            return Ok(entry);
        }
        progress.step("kernel: cached files are damaged, rebuilding");
    }
    let package = match package {
        Some(package) => package,
        None => kernel::resolve().await?,
    };
    let start = Instant::now();
    progress.step(&format!("kernel: fetching {}", package.key()));
    let scratch = store.scratch()?;
    let unpacked = kernel::fetch(&package, scratch.path()).await?;

    let bzimage = std::fs::read(unpacked.vmlinuz())?;
    let vmlinux = vmlinux::extract(&bzimage).context("extracting vmlinux")?;
    let vmlinuz = store.put_bytes(&bzimage)?;
    let vmlinux = store.put_bytes(&vmlinux)?;

    let modules_dir = unpacked.modules_dir();
    let index = modules::index(&modules_dir.join("kernel"))?;
    let builtin = modules::builtin(
        &std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default(),
    );
    let selected = modules::select(&index, &builtin, &|path| {
        modules::depends(&std::fs::read(path)?)
    })?;
    let modules_cpio = store.put_bytes(&initramfs::modules_archive(&selected)?)?;
    let entry = KernelEntry {
        key: key(&package),
        kernel_version: unpacked.kernel_version.clone(),
        vmlinuz,
        vmlinux,
        modules_cpio,
        modules: selected.iter().map(|m| m.name.clone()).collect(),
    };
    progress.step(&format!(
        "kernel {}: vmlinuz {}, vmlinux {}, {} modules ({}) in {}",
        entry.kernel_version,
        size(&entry.vmlinuz),
        size(&entry.vmlinux),
        entry.modules.len(),
        size(&entry.modules_cpio),
        took(start)
    ));
    Ok(entry)
}

fn initramfs_image(
    store: &Store,
    kernel: &KernelEntry,
    agent: &[u8],
    cached: Option<InitramfsEntry>,
    progress: &dyn Progress,
) -> Result<InitramfsEntry> {
    let agent_sha256 = hex::encode(Sha256::digest(agent));
    let key = format!(
        "agent={agent_sha256} modules={} format={INITRAMFS_FORMAT}",
        kernel.modules_cpio.sha256
    );
    if let Some(entry) = cached
        && entry.key == key
    {
        if store.verify(&entry.initramfs) {
            progress.step(&format!(
                "initramfs: cached, verified ({})",
                size(&entry.initramfs)
            ));
            return Ok(entry);
        }
        progress.step("initramfs: cached file is damaged, rebuilding");
    }
    let start = Instant::now();
    let mut image = initramfs::agent_archive(agent)?;
    image.extend(std::fs::read(store.blob_path(&kernel.modules_cpio))?);
    let initramfs = store.put_bytes(&image)?;
    progress.step(&format!(
        "initramfs: agent {} + modules, {} in {}",
        &agent_sha256[..12],
        size(&initramfs),
        took(start)
    ));
    Ok(InitramfsEntry {
        key,
        agent_sha256,
        initramfs,
    })
}

async fn python_runtime(
    store: &Store,
    recipe: &RuntimeRecipe,
    cached: Option<RuntimeEntry>,
    progress: &dyn Progress,
) -> Result<RuntimeEntry> {
    let key = recipe.key();
    if let Some(entry) = cached
        && entry.key == key
    {
        let start = Instant::now();
        if store.verify(&entry.squashfs) {
            progress.step(&format!(
                "python runtime: cached, verified ({}) in {}",
                size(&entry.squashfs),
                took(start)
            ));
            return Ok(entry);
        }
        progress.step("python runtime: cached file is damaged, rebuilding");
    }
    let scratch = store.scratch()?;
    let root = scratch.path().join("root");
    let start = Instant::now();
    progress.step(&format!("python runtime: {}", key));
    runtime::debootstrap(recipe, &root).await?;
    runtime::tidy(&root)?;
    progress.step(&format!(
        "python runtime: debootstrap done in {}, compressing",
        took(start)
    ));
    let squash_start = Instant::now();
    let out = scratch.path().join("runtime.squashfs");
    runtime::squash(&root, &out).await?;
    let squashfs = store.put_file(&out)?;
    progress.step(&format!(
        "python runtime: squashfs {} in {} ({} in all)",
        size(&squashfs),
        took(squash_start),
        took(start)
    ));
    Ok(RuntimeEntry { key, squashfs })
}
