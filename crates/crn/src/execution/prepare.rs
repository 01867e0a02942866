//! From a PROGRAM to a VM: its drives (runtime, code, volumes), the machine and the
//! agent's configuration. Files come from the cache shared by all programs; only what
//! is the program's own (ephemeral and host-persistent volumes) is made here.

use crate::error::ProgramError;
use crate::hypervisor::{BootSource, ChannelSpec, Drive, Machine, VmSpec};
use crate::network::VmNet;
use crate::resources::program::{ProgramContent, Volume};
use crate::resources::{ProgramMessage, Resources};
use aleph_protocol::agent::{
    AgentConfig, CodeConfig, CodeEncoding, ROOT_CMDLINE_KEY, VolumeConfig, VolumeFormat,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The kernel and initramfs every program VM boots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootImages {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// Everything needed to start the VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepared {
    /// The STORE whose code runs (after `use_latest`).
    pub code_ref: String,
    pub spec: VmSpec,
    pub agent: AgentConfig,
    /// The network card of a program that asked for the internet (see
    /// [`crate::network::shared`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<VmNet>,
}

impl Prepared {
    /// Gives the VM its network card and tells the agent how to set it up.
    pub fn connect(&mut self, net: VmNet) {
        self.spec.network = Some(net.tap_spec());
        self.agent.network = Some(crate::network::shared::agent_network(&net));
        self.net = Some(net);
    }
}

/// Device names in the order the drives are attached.
fn device(index: usize) -> Result<String, ProgramError> {
    let letter = b"abcdefghijklmnopqrstuvwxyz"
        .get(index)
        .ok_or_else(|| ProgramError::Unsupported("more than 24 volumes".into()))?;
    Ok(format!("/dev/vd{}", *letter as char))
}

pub async fn prepare(
    resources: &Resources,
    program: &ProgramMessage,
    images: &BootImages,
    folder: &Path,
    volumes_dir: &Path,
    startup_timeout_seconds: u32,
) -> Result<Prepared, ProgramError> {
    let content = &program.content;
    let owner = content.address.as_str();
    let hostname = aleph_protocol::hostname::encode(&program.item_hash)
        .map_err(|e| ProgramError::BadReference(e.to_string()))?;
    let vcpus = u8::try_from(content.resources.vcpus)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ProgramError::Unsupported(format!("{} vCPUs", content.resources.vcpus)))?;
    let memory_mib = u32::try_from(content.resources.memory)
        .map_err(|_| ProgramError::Unsupported("memory".into()))?;

    let (runtime, code) = tokio::try_join!(
        resources.store_file(
            &content.runtime.reference,
            content.runtime.use_latest,
            owner
        ),
        resources.store_file(&content.code.reference, content.code.use_latest, owner),
    )?;
    let code_drive = match content.code.encoding {
        CodeEncoding::Squashfs => code.path.clone(),
        // Raw bytes on a drive: pad to whole sectors (one padded copy per file, shared).
        CodeEncoding::Zip | CodeEncoding::Plain => {
            padded_copy(&code.path, &resources.files_dir().join("padded")).await?
        }
    };
    let mut drives = vec![
        Drive::read_only(&runtime.path),
        Drive::read_only(&code_drive),
    ];
    let mut volumes = Vec::new();
    if let Some(data) = &content.data {
        if data.encoding != CodeEncoding::Squashfs {
            return Err(ProgramError::Unsupported(
                "`data` is supported as a squashfs only".into(),
            ));
        }
        let file = resources
            .store_file(&data.reference, data.use_latest.unwrap_or(false), owner)
            .await?;
        volumes.push(VolumeConfig {
            device: device(drives.len())?,
            mount: data.mount.clone(),
            format: VolumeFormat::Squashfs,
            read_only: true,
        });
        drives.push(Drive::read_only(&file.path));
    }
    for (index, volume) in content.volumes.iter().enumerate() {
        let (drive, mount, format) = match volume {
            Volume::Immutable {
                reference,
                use_latest,
                mount,
            } => {
                let file = resources.store_file(reference, *use_latest, owner).await?;
                let format = sniff_format(&file.path).ok_or_else(|| {
                    ProgramError::Unsupported(format!(
                        "volume {reference} is neither a squashfs nor an ext4 image"
                    ))
                })?;
                (Drive::read_only(&file.path), mount, format)
            }
            Volume::Ephemeral {
                size_mib, mount, ..
            } => {
                let path = folder.join(format!("ephemeral-{index}.ext4"));
                make_ext4(&path, *size_mib).await?;
                (Drive::writable(path), mount, VolumeFormat::Ext4)
            }
            Volume::Persistent {
                name,
                size_mib,
                mount,
                persistence,
                ..
            } => {
                if persistence.as_deref() == Some("store") {
                    return Err(ProgramError::Unsupported(
                        "persistent volumes kept on the CCN (`persistence: store`) are not supported".into(),
                    ));
                }
                let path = volumes_dir
                    .join(safe_name(owner)?)
                    .join(format!("{}.ext4", safe_name(name)?));
                if !path.exists() {
                    make_ext4(&path, *size_mib).await?;
                }
                (Drive::writable(path), mount, VolumeFormat::Ext4)
            }
        };
        volumes.push(VolumeConfig {
            device: device(drives.len())?,
            mount: mount.clone(),
            format,
            read_only: drive.read_only,
        });
        drives.push(drive);
    }

    let spec = VmSpec {
        vcpus,
        memory_mib,
        machine: Machine::Microvm,
        boot: Some(BootSource {
            kernel: images.kernel.clone(),
            initramfs: Some(images.initramfs.clone()),
            cmdline: format!("quiet {ROOT_CMDLINE_KEY}=/dev/vda"),
        }),
        drives,
        channel: ChannelSpec::default(),
        network: None,
        folder: folder.to_path_buf(),
    };
    let agent = AgentConfig {
        hostname,
        code: CodeConfig {
            device: "/dev/vdb".into(),
            encoding: content.code.encoding,
            size: code.size,
            entrypoint: content.code.entrypoint.clone(),
            interface: content.code.interface(),
            args: content.code.args.clone().unwrap_or_default(),
        },
        variables: content.variables.clone().unwrap_or_default(),
        volumes,
        network: None,
        startup_timeout_seconds,
    };
    Ok(Prepared {
        code_ref: code.store_hash,
        spec,
        agent,
        net: None,
    })
}

/// Disk the program's own volumes take, MiB (what admission counts).
pub fn own_disk_mib(content: &ProgramContent) -> u64 {
    volumes_disk_mib(&content.volumes)
}

/// Disk that ephemeral and persistent volumes take, MiB.
pub fn volumes_disk_mib(volumes: &[Volume]) -> u64 {
    volumes
        .iter()
        .map(|v| match v {
            Volume::Ephemeral { size_mib, .. } | Volume::Persistent { size_mib, .. } => *size_mib,
            Volume::Immutable { .. } => 0,
        })
        .sum()
}

pub(crate) fn safe_name(name: &str) -> Result<&str, ProgramError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(name)
    } else {
        Err(ProgramError::Unsupported(format!(
            "{name:?} cannot name a volume file"
        )))
    }
}

async fn padded_copy(source: &Path, dir: &Path) -> Result<PathBuf, ProgramError> {
    let io = |e: std::io::Error| ProgramError::internal(format!("code drive: {e}"));
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let name = source.file_name().unwrap_or_default();
    let target = dir.join(name);
    if tokio::fs::try_exists(&target).await.unwrap_or(false) {
        return Ok(target);
    }
    let mut bytes = tokio::fs::read(source).await.map_err(io)?;
    bytes.resize(bytes.len().div_ceil(512).max(1) * 512, 0);
    let partial = target.with_extension(format!("partial-{}", std::process::id()));
    tokio::fs::write(&partial, bytes).await.map_err(io)?;
    tokio::fs::rename(&partial, &target).await.map_err(io)?;
    Ok(target)
}

/// squashfs (`hsqs` at 0) or ext2/3/4 (0xEF53 at 1080).
pub(crate) fn sniff_format(path: &Path) -> Option<VolumeFormat> {
    use std::io::Read;
    let mut head = vec![0u8; 1082];
    let mut file = std::fs::File::open(path).ok()?;
    let read = file.read(&mut head).ok()?;
    if read >= 4 && &head[..4] == b"hsqs" {
        Some(VolumeFormat::Squashfs)
    } else if read >= 1082 && head[1080..1082] == [0x53, 0xEF] {
        Some(VolumeFormat::Ext4)
    } else {
        None
    }
}

/// A sparse file of `size_mib` with an empty ext4 on it.
pub(crate) async fn make_ext4(path: &Path, size_mib: u64) -> Result<(), ProgramError> {
    let io = |e: std::io::Error| ProgramError::internal(format!("{}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    let file = tokio::fs::File::create(path).await.map_err(io)?;
    file.set_len(size_mib * 1024 * 1024).await.map_err(io)?;
    drop(file);
    let output = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .output()
        .await
        .map_err(|e| {
            ProgramError::Unsupported(format!(
                "cannot run mkfs.ext4 ({e}): install e2fsprogs for writable volumes"
            ))
        })?;
    if !output.status.success() {
        let _ = tokio::fs::remove_file(path).await;
        return Err(ProgramError::internal(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_names() {
        assert_eq!(device(0).unwrap(), "/dev/vda");
        assert_eq!(device(2).unwrap(), "/dev/vdc");
        assert!(device(26).is_err());
        assert!(safe_name("db-1.v2").is_ok());
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(safe_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn code_is_padded_to_sectors_once() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("abc");
        std::fs::write(&source, b"print(1)\n").unwrap();
        let padded = padded_copy(&source, &dir.path().join("padded"))
            .await
            .unwrap();
        let bytes = std::fs::read(&padded).unwrap();
        assert_eq!(bytes.len(), 512);
        assert!(bytes.starts_with(b"print(1)\n") && bytes[9..].iter().all(|b| *b == 0));
        assert_eq!(
            padded_copy(&source, &dir.path().join("padded"))
                .await
                .unwrap(),
            padded
        );
    }

    #[test]
    fn formats_are_sniffed() {
        let dir = tempfile::tempdir().unwrap();
        let squash = dir.path().join("s");
        std::fs::write(&squash, b"hsqs and more").unwrap();
        assert_eq!(sniff_format(&squash), Some(VolumeFormat::Squashfs));
        let mut ext = vec![0u8; 2048];
        ext[1080] = 0x53;
        ext[1081] = 0xEF;
        let ext4 = dir.path().join("e");
        std::fs::write(&ext4, ext).unwrap();
        assert_eq!(sniff_format(&ext4), Some(VolumeFormat::Ext4));
        std::fs::write(&ext4, b"zip").unwrap();
        assert_eq!(sniff_format(&ext4), None);
    }
}
