//! What a VM is made of, independent of the hypervisor that runs it.
//!
//! These types describe the machine; the drivers turn them into a command line (QEMU)
//! or API calls (Firecracker). Keeping them apart from the drivers lets the execution
//! layer build a VM without knowing which hypervisor will run it.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A VM to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The emulated machine: a microVM for programs, a PC for instances.
    #[serde(default)]
    pub machine: Machine,
    /// Number of virtual CPUs; the guest never sees more.
    pub vcpus: u8,
    /// Guest RAM in MiB; the hypervisor never gives the guest more.
    pub memory_mib: u32,
    /// A kernel to boot directly; `None` lets the machine's firmware boot the first
    /// drive (a disk image with its own bootloader; [`Machine::Pc`] only).
    pub boot: Option<BootSource>,
    /// Block devices, in the order the guest sees them (`/dev/vda`, `/dev/vdb`, ...).
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// The host↔guest byte stream the agent serves.
    pub channel: ChannelSpec,
    /// A TAP device on the host to plug in as the guest's network card; `None` leaves
    /// the guest without a network card.
    #[serde(default)]
    pub network: Option<TapSpec>,
    /// The execution's folder: the driver keeps the VM's pidfile, control sockets and
    /// serial log there, so that a restarted supervisor finds them again.
    pub folder: PathBuf,
}

/// What kind of machine the hypervisor builds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// A minimal machine (QEMU `microvm`, Firecracker): virtio-mmio devices, no
    /// firmware, a kernel booted directly. Boots fastest; what programs run on.
    #[default]
    Microvm,
    /// A PC with PCI devices and firmware (QEMU `q35`): boots standard disk images with
    /// a bootloader, or a kernel directly; what instances run on.
    Pc,
}

/// A kernel booted directly (no bootloader), as program microVMs are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootSource {
    /// A `bzImage` for QEMU, an uncompressed `vmlinux` for Firecracker.
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// Arguments for the guest (e.g. `aleph.root=/dev/vda`); the driver adds the ones
    /// that depend on the machine it builds (console, clock).
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    pub path: PathBuf,
    pub read_only: bool,
    #[serde(default)]
    pub format: DriveFormat,
    /// Shown to the guest as the disk's serial number, so it can find the disk by name
    /// (`/dev/disk/by-id/virtio-<serial>`) whatever order devices are probed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// How a drive's file holds the disk's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveFormat {
    #[default]
    Raw,
    /// A qcow2 image (an instance's overlay on its parent).
    Qcow2,
}

impl DriveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

impl Drive {
    pub fn read_only(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: true,
            format: DriveFormat::Raw,
            serial: None,
        }
    }

    pub fn writable(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            format: DriveFormat::Raw,
            serial: None,
        }
    }

    pub fn with_format(mut self, format: DriveFormat) -> Self {
        self.format = format;
        self
    }

    pub fn with_serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = Some(serial.into());
        self
    }
}

/// The host↔guest channel: one byte stream the guest agent serves HTTP/2 on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSpec {
    /// Name the guest looks the port up by (virtio-serial port name).
    pub port_name: String,
}

impl Default for ChannelSpec {
    fn default() -> Self {
        Self {
            port_name: aleph_protocol::agent::AGENT_PORT_NAME.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapSpec {
    /// Name of an existing TAP device on the host.
    pub tap: String,
    /// Guest MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// How the host reaches the channel of a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelEndpoint {
    /// A Unix stream socket that carries the guest's bytes as they are (QEMU's
    /// virtio-serial chardev): connect and talk.
    UnixStream(PathBuf),
    /// A Firecracker-style vsock multiplexer: connect, write `CONNECT <port>\n`, read
    /// `OK <port>\n`, then talk.
    VsockMux { socket: PathBuf, port: u32 },
}

impl ChannelEndpoint {
    pub fn socket(&self) -> &Path {
        match self {
            Self::UnixStream(path) => path,
            Self::VsockMux { socket, .. } => socket,
        }
    }
}

/// What the hypervisor reports about a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    /// The guest's CPUs run.
    Running,
    /// The process lives but the guest does not run (paused, starting, migrating, or
    /// stopped on an internal error).
    Stopped,
    /// The guest asked to power off and the hypervisor is ending.
    ShuttingDown,
    /// The hypervisor process is gone.
    Exited,
}

/// Which acceleration runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}
