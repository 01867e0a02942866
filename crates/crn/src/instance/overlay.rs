//! The instance's root disk: a qcow2 overlay whose backing file is the shared parent
//! image (the rootfs from the message), so the parent stays untouched and is shared by
//! every instance made from it. Made and inspected with `qemu-img` (Debian `qemu-utils`).

use serde::Deserialize;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use tokio::process::Command;

const MIB: u64 = 1024 * 1024;
const QEMU_IMG: &str = "qemu-img";
const QEMU_UTILS_PACKAGE: &str = "qemu-utils";

/// A disk image format, as `qemu-img` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
    /// Any other format `qemu-img` recognised; never accepted as a parent.
    Other(String),
}

impl DiskFormat {
    fn from_qemu(name: &str) -> Self {
        match name {
            "raw" => Self::Raw,
            "qcow2" => Self::Qcow2,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
            Self::Other(name) => name,
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `qemu-img info` says about a disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayInfo {
    pub format: DiskFormat,
    /// The size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Absolute path of the backing file, if the image has one.
    pub backing_file: Option<PathBuf>,
    /// The backing file's format, as recorded in the image.
    pub backing_format: Option<DiskFormat>,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("`{QEMU_IMG}` is not installed (install the Debian package `{QEMU_UTILS_PACKAGE}`)")]
    QemuImgMissing,
    #[error("running `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("`qemu-img info` on {}: unexpected output: {reason}", path.display())]
    Info { path: PathBuf, reason: String },
    #[error("parent image {}: format {format} is not supported (raw or qcow2 only)", path.display())]
    UnsupportedParent { path: PathBuf, format: DiskFormat },
    #[error(
        "parent image {} has its own backing file {backing}: only standalone images can be parents",
        path.display()
    )]
    ParentHasBacking { path: PathBuf, backing: String },
    #[error(
        "parent image {} keeps its data in the external file {data_file}: refused",
        path.display()
    )]
    ParentHasDataFile { path: PathBuf, data_file: String },
    #[error("parent image {} is marked corrupt", path.display())]
    ParentCorrupt { path: PathBuf },
    #[error(
        "a {size_mib} MiB disk is smaller than its parent image {} ({parent_bytes} bytes: at least {} MiB)",
        parent.display(),
        parent_bytes.div_ceil(MIB)
    )]
    TooSmall {
        size_mib: u64,
        parent: PathBuf,
        parent_bytes: u64,
    },
    #[error("the overlay {} already exists", path.display())]
    Exists { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Makes `overlay`, a qcow2 image of `size_mib` MiB backed by `parent` (raw or qcow2,
/// recorded by its canonical absolute path). Refuses a size below the parent's virtual
/// size, a parent that is itself an overlay or uses an external data file, and an
/// `overlay` path that already exists. The overlay is made readable and writable by its
/// owner only: it holds the guest's data.
pub async fn create_overlay(
    parent: &Path,
    overlay: &Path,
    size_mib: u64,
) -> Result<(), OverlayError> {
    let parent = std::fs::canonicalize(parent).map_err(|source| OverlayError::Io {
        path: parent.to_owned(),
        source,
    })?;
    if overlay.symlink_metadata().is_ok() {
        return Err(OverlayError::Exists {
            path: overlay.to_owned(),
        });
    }

    // Probing is safe here: a parent that claims to be qcow2 is accepted only if it
    // points at no other file (backing or data file), so it cannot expose host files.
    let raw = qemu_img_info(&parent, false).await?;
    let info = raw.summary();
    if !matches!(info.format, DiskFormat::Raw | DiskFormat::Qcow2) {
        return Err(OverlayError::UnsupportedParent {
            path: parent,
            format: info.format,
        });
    }
    if let Some(backing) = raw.backing_filename {
        return Err(OverlayError::ParentHasBacking {
            path: parent,
            backing,
        });
    }
    if let Some(data_file) = raw.data_file() {
        return Err(OverlayError::ParentHasDataFile {
            path: parent,
            data_file,
        });
    }
    if raw.is_corrupt() {
        return Err(OverlayError::ParentCorrupt { path: parent });
    }
    let too_small = || OverlayError::TooSmall {
        size_mib,
        parent: parent.clone(),
        parent_bytes: info.virtual_size,
    };
    let size_bytes = size_mib.checked_mul(MIB).ok_or_else(too_small)?;
    if size_bytes < info.virtual_size || size_mib == 0 {
        return Err(too_small());
    }

    // Made under a temporary name and linked into place, so that `overlay` is either
    // absent or complete, and an overlay made meanwhile by someone else is not replaced.
    let partial = reserve_partial(overlay)?;
    let size = format!("{size_mib}M");
    run_qemu_img(&[
        OsStr::new("create"),
        OsStr::new("-q"),
        OsStr::new("-f"),
        OsStr::new("qcow2"),
        OsStr::new("-F"),
        OsStr::new(info.format.as_str()),
        OsStr::new("-b"),
        parent.as_os_str(),
        partial.as_os_str(),
        OsStr::new(&size),
    ])
    .await?;
    std::fs::hard_link(&partial, overlay).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            OverlayError::Exists {
                path: overlay.to_owned(),
            }
        } else {
            OverlayError::Io {
                path: overlay.to_owned(),
                source,
            }
        }
    })
    // `partial` is removed when dropped, on success and failure alike.
}

/// Reads an image's format, virtual size and backing file. Works while a VM has the
/// image open (`qemu-img info -U`).
pub async fn overlay_info(path: &Path) -> Result<OverlayInfo, OverlayError> {
    Ok(qemu_img_info(path, true).await?.summary())
}

/// A fresh, uniquely named file beside `overlay` (same file system, so it can be linked
/// into place), deleted when dropped.
fn reserve_partial(overlay: &Path) -> Result<tempfile::TempPath, OverlayError> {
    let folder = match overlay.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = overlay
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(folder)
        .map(tempfile::NamedTempFile::into_temp_path)
        .map_err(|source| OverlayError::Io {
            path: folder.to_owned(),
            source,
        })
}

/// The parts of `qemu-img info --output=json` used here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct QemuImgInfo {
    format: String,
    virtual_size: u64,
    /// As recorded in the image: possibly relative to the image's folder.
    backing_filename: Option<String>,
    /// The same, made absolute by qemu-img.
    full_backing_filename: Option<String>,
    backing_filename_format: Option<String>,
    format_specific: Option<FormatSpecific>,
}

#[derive(Debug, Deserialize)]
struct FormatSpecific {
    #[serde(default)]
    data: serde_json::Value,
}

impl QemuImgInfo {
    fn summary(&self) -> OverlayInfo {
        OverlayInfo {
            format: DiskFormat::from_qemu(&self.format),
            virtual_size: self.virtual_size,
            backing_file: self
                .full_backing_filename
                .as_ref()
                .or(self.backing_filename.as_ref())
                .map(PathBuf::from),
            backing_format: self
                .backing_filename_format
                .as_deref()
                .map(DiskFormat::from_qemu),
        }
    }

    fn format_data(&self, key: &str) -> Option<&serde_json::Value> {
        self.format_specific.as_ref()?.data.get(key)
    }

    fn data_file(&self) -> Option<String> {
        self.format_data("data-file")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }

    fn is_corrupt(&self) -> bool {
        self.format_data("corrupt")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }
}

async fn qemu_img_info(path: &Path, force_share: bool) -> Result<QemuImgInfo, OverlayError> {
    let mut args = vec![OsStr::new("info"), OsStr::new("--output=json")];
    if force_share {
        args.push(OsStr::new("-U"));
    }
    args.push(path.as_os_str());
    let stdout = run_qemu_img(&args).await?;
    serde_json::from_slice(&stdout).map_err(|e| OverlayError::Info {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Runs qemu-img to completion and returns its stdout; a failure carries its stderr.
async fn run_qemu_img(args: &[&OsStr]) -> Result<Vec<u8>, OverlayError> {
    let program = find_qemu_img().ok_or(OverlayError::QemuImgMissing)?;
    let command = std::iter::once(QEMU_IMG.to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| OverlayError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(OverlayError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

fn find_qemu_img() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(QEMU_IMG))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::process::Command as StdCommand;

    /// Skips the calling test (with the reason printed) where qemu-img is missing.
    macro_rules! require_qemu_img {
        () => {
            if find_qemu_img().is_none() {
                eprintln!("skipping: qemu-img is not installed (Debian package qemu-utils)");
                return;
            }
        };
    }

    fn qemu_io() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join("qemu-io"))
            .find(|candidate| candidate.is_file())
    }

    fn qemu_img(args: &[&str]) {
        let out = StdCommand::new(find_qemu_img().unwrap())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs qemu-io commands on an image and fails on any error or pattern mismatch.
    fn io(program: &Path, format: &str, image: &Path, commands: &[&str]) {
        let mut cmd = StdCommand::new(program);
        cmd.args(["-f", format]);
        for c in commands {
            cmd.args(["-c", c]);
        }
        let out = cmd.arg(image).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("failed") && !text.contains("error"),
            "qemu-io {commands:?} on {}: {text}",
            image.display()
        );
    }

    fn sha256(path: &Path) -> String {
        hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
    }

    /// A raw image of `bytes` bytes whose first 64 KiB are 0x5a.
    fn raw_parent(dir: &Path, bytes: u64) -> PathBuf {
        let path = dir.join("parent.raw");
        let mut data = vec![0x5a_u8; 64 * 1024];
        data.resize(bytes as usize, 0);
        std::fs::write(&path, data).unwrap();
        path
    }

    /// A qcow2 image of 4 MiB whose first 64 KiB are 0x5a (written with qemu-io if it
    /// is there).
    fn qcow2_parent(dir: &Path) -> PathBuf {
        let path = dir.join("parent.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "4M"]);
        if let Some(qemu_io) = qemu_io() {
            io(&qemu_io, "qcow2", &path, &["write -P 0x5a 0 64k"]);
        }
        path
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".partial"))
            .collect()
    }

    #[tokio::test]
    async fn overlay_on_a_raw_parent() {
        require_qemu_img!();
        let dir = tempfile::tempdir().unwrap();
        let parent = raw_parent(dir.path(), 3 * MIB);
        let overlay = dir.path().join("rootfs.qcow2");
        create_overlay(&parent, &overlay, 8).await.unwrap();

        let info = overlay_info(&overlay).await.unwrap();
        assert_eq!(
            info,
            OverlayInfo {
                format: DiskFormat::Qcow2,
                virtual_size: 8 * MIB,
                backing_file: Some(parent.canonicalize().unwrap()),
                backing_format: Some(DiskFormat::Raw),
            }
        );
        let parent_info = overlay_info(&parent).await.unwrap();
        assert_eq!(parent_info.format, DiskFormat::Raw);
        assert_eq!(parent_info.virtual_size, 3 * MIB);
        assert_eq!(parent_info.backing_file, None);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn overlay_on_a_qcow2_parent_of_the_same_size() {
        require_qemu_img!();
        let dir = tempfile::tempdir().unwrap();
        let parent = qcow2_parent(dir.path());
        let overlay = dir.path().join("rootfs.qcow2");
        create_overlay(&parent, &overlay, 4).await.unwrap();
        let info = overlay_info(&overlay).await.unwrap();
        assert_eq!(info.virtual_size, 4 * MIB);
        assert_eq!(info.backing_format, Some(DiskFormat::Qcow2));
        assert_eq!(info.backing_file, Some(parent.canonicalize().unwrap()));
    }

    /// The overlay records where the parent really is, whatever path it was given by.
    #[tokio::test]
    async fn backing_file_is_the_parents_canonical_path() {
        require_qemu_img!();
        let dir = tempfile::tempdir().unwrap();
        let parent = raw_parent(dir.path(), MIB);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let link = dir.path().join("sub/current");
        std::os::unix::fs::symlink(&parent, &link).unwrap();
        let roundabout = dir.path().join("sub/./../sub/current");
        let overlay = dir.path().join("sub/rootfs.qcow2");
        create_overlay(&roundabout, &overlay, 1).await.unwrap();
        let info = overlay_info(&overlay).await.unwrap();
        assert_eq!(info.backing_file, Some(parent.canonicalize().unwrap()));
    }

    #[tokio::test]
    async fn refuses_a_size_below_the_parents() {
        require_qemu_img!();
        let dir = tempfile::tempdir().unwrap();
        // 3 MiB and one sector: 4 MiB is the smallest size that holds it.
        let parent = raw_parent(dir.path(), 3 * MIB + 512);
        let overlay = dir.path().join("rootfs.qcow2");
        for size_mib in [0, 1, 3] {
            let err = create_overlay(&parent, &overlay, size_mib)
                .await
                .unwrap_err();
            assert!(matches!(err, OverlayError::TooSmall { .. }), "{err}");
            assert!(err.to_string().contains("at least 4 MiB"), "{err}");
        }
        let err = create_overlay(&parent, &overlay, u64::MAX)
            .await
            .unwrap_err();
        assert!(matches!(err, OverlayError::TooSmall { .. }), "{err}");
        assert!(!overlay.exists());
        create_overlay(&parent, &overlay, 4).await.unwrap();
        assert!(leftovers(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn refuses_to_replace_an_existing_overlay() {
        require_qemu_img!();
        let dir = tempfile::tempdir().unwrap();
        let parent = raw_parent(dir.path(), MIB);
        let overlay = dir.path().join("rootfs.qcow2");
        std::fs::write(&overlay, b"guest data").unwrap();
        let err = create_overlay(&parent, &overlay, 2).await.unwrap_err();
        assert!(matches!(err, OverlayError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(&overlay).unwrap(), b"guest data");
    }

    #[tokio::test]
    async fn refuses_parents_that_are_not_standalone_raw_or_qcow2() {
        require_qemu_img!();
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        let overlay = path("rootfs.qcow2");

        qemu_img(&["create", "-q", "-f", "vmdk", &s(&path("p.vmdk")), "4M"]);
        let err = create_overlay(&path("p.vmdk"), &overlay, 8)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OverlayError::UnsupportedParent { format, .. } if format.as_str() == "vmdk"),
            "{err}"
        );

        let base = raw_parent(dir.path(), MIB);
        let chained = path("chained.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            &s(&base),
            &s(&chained),
        ]);
        let err = create_overlay(&chained, &overlay, 8).await.unwrap_err();
        assert!(
            matches!(err, OverlayError::ParentHasBacking { .. }),
            "{err}"
        );

        let with_data_file = path("data-file.qcow2");
        let data_option = format!("data_file={}", s(&path("data.raw")));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &data_option,
            &s(&with_data_file),
            "1M",
        ]);
        let err = create_overlay(&with_data_file, &overlay, 8)
            .await
            .unwrap_err();
        assert!(
            matches!(err, OverlayError::ParentHasDataFile { .. }),
            "{err}"
        );

        let err = create_overlay(&path("absent.raw"), &overlay, 8)
            .await
            .unwrap_err();
        assert!(matches!(err, OverlayError::Io { .. }), "{err}");
        assert!(!overlay.exists());
        assert!(leftovers(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn info_of_something_that_is_not_there_is_an_error() {
        require_qemu_img!();
        let dir = tempfile::tempdir().unwrap();
        let err = overlay_info(&dir.path().join("absent.qcow2"))
            .await
            .unwrap_err();
        assert!(matches!(err, OverlayError::Failed { .. }), "{err}");
    }

    /// Guest writes land in the overlay: the parent's bytes stay the same, reads of
    /// untouched blocks still see the parent's data.
    #[tokio::test]
    async fn writes_into_the_overlay_leave_the_parent_untouched() {
        require_qemu_img!();
        let Some(qemu_io) = qemu_io() else {
            eprintln!("skipping: qemu-io is not installed (Debian package qemu-utils)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        for parent in [raw_parent(dir.path(), 3 * MIB), qcow2_parent(dir.path())] {
            let before = sha256(&parent);
            let overlay = dir.path().join("rootfs.qcow2");
            let _ = std::fs::remove_file(&overlay);
            create_overlay(&parent, &overlay, 8).await.unwrap();
            io(
                &qemu_io,
                "qcow2",
                &overlay,
                &["write -P 0xab 0 4k", "write -P 0xcd 6M 64k"],
            );
            io(
                &qemu_io,
                "qcow2",
                &overlay,
                &[
                    "read -P 0xab 0 4k",
                    "read -P 0x5a 4k 60k",
                    "read -P 0 1M 64k",
                    "read -P 0xcd 6M 64k",
                ],
            );
            assert_eq!(sha256(&parent), before, "{} changed", parent.display());
        }
    }
}
