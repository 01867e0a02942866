//! The QEMU driver: program microVMs on the `microvm` machine.
//!
//! Each VM is a `qemu-system-x86_64` process in a session of its own (so neither a
//! terminal's signals nor the supervisor's exit reach it), with its pidfile, QMP socket,
//! channel socket, console log and start parameters in the execution folder. A new
//! driver, in this process or a restarted one, re-adopts it from that folder alone.

mod args;
mod clock;
mod layout;
pub mod memory;
pub mod probe;
mod process;
mod qmp;

pub use args::kernel_cmdline;
pub use clock::host_tsc_khz;
pub use layout::Layout;
pub use probe::Verdict;

use super::{Accel, ChannelEndpoint, Hypervisor, Machine, RunningVm, VmError, VmSpec, VmStatus};
use args::MachineOptions;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How the driver picks the acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelPolicy {
    /// KVM when a timed boot probe succeeds on this host, otherwise TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub accel: AccelPolicy,
    /// TCG translation cache per VM, MiB.
    pub tcg_tb_size_mib: u32,
    /// Where the KVM probe's verdict is cached between runs; `None` probes once per process.
    pub state_dir: Option<PathBuf>,
    /// How long a VM may take from spawning to its guest running.
    pub start_timeout: Duration,
    /// The kernel the KVM probe boots for VMs that bring none (firmware boot).
    pub probe_kernel: Option<PathBuf>,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("qemu-system-x86_64"),
            accel: AccelPolicy::Auto,
            tcg_tb_size_mib: 32,
            state_dir: None,
            start_timeout: Duration::from_secs(15),
            probe_kernel: None,
        }
    }
}

/// What the folder's `vm.json` holds: enough to adopt the VM without its starter.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StartedVm {
    spec: VmSpec,
    accel: Accel,
    qemu: PathBuf,
}

pub struct QemuDriver {
    config: QemuConfig,
}

impl QemuDriver {
    pub fn new(config: QemuConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// The acceleration VMs booting `kernel` get, and why.
    pub async fn accel_for(&self, kernel: &Path) -> Verdict {
        match self.config.accel {
            AccelPolicy::Kvm => Verdict {
                accel: Accel::Kvm,
                reason: "configured".into(),
            },
            AccelPolicy::Tcg => Verdict {
                accel: Accel::Tcg,
                reason: "configured".into(),
            },
            AccelPolicy::Auto => {
                probe::decide(
                    &self.config.binary,
                    kernel,
                    self.config.state_dir.as_deref(),
                )
                .await
            }
        }
    }

    /// The acceleration for `spec`: probed with its own kernel, or the configured
    /// probe kernel when it boots through firmware; TCG when there is neither.
    async fn accel_for_spec(&self, spec: &VmSpec) -> Accel {
        let kernel = spec
            .boot
            .as_ref()
            .map(|b| b.kernel.as_path())
            .or(self.config.probe_kernel.as_deref());
        match kernel {
            Some(kernel) => self.accel_for(kernel).await.accel,
            None if self.config.accel == AccelPolicy::Kvm => Accel::Kvm,
            None => {
                tracing::warn!("no kernel to probe KVM with: this VM runs under TCG");
                Accel::Tcg
            }
        }
    }

    /// Starts a VM; see [`Hypervisor::start`].
    pub async fn start_vm(&self, spec: &VmSpec) -> Result<QemuVm, VmError> {
        check_spec(spec)?;
        let layout = Layout::new(&spec.folder);
        std::fs::create_dir_all(&spec.folder)
            .map_err(VmError::io(format!("creating {}", spec.folder.display())))?;
        layout.check_socket_paths().map_err(VmError::InvalidSpec)?;
        if let Some(pid) = process::read_pidfile(&layout.pidfile())
            && process::alive(pid)
            && is_our_qemu(pid, &layout)
        {
            return Err(VmError::InvalidSpec(format!(
                "a VM (pid {pid}) already runs in {}",
                spec.folder.display()
            )));
        }
        layout.clear_stale();

        let accel = self.accel_for_spec(spec).await;
        let options = MachineOptions {
            accel,
            tcg_tb_size_mib: self.config.tcg_tb_size_mib,
            tsc_khz: clock::host_tsc_khz(),
        };
        let state = StartedVm {
            spec: spec.clone(),
            accel,
            qemu: self.config.binary.clone(),
        };
        let state_json = serde_json::to_vec_pretty(&state).map_err(|e| VmError::Io {
            context: "encoding vm.json".into(),
            source: e.into(),
        })?;
        std::fs::write(layout.state(), state_json).map_err(VmError::io("writing vm.json"))?;

        let log =
            std::fs::File::create(layout.qemu_log()).map_err(VmError::io("creating qemu.log"))?;
        let mut command = tokio::process::Command::new(&self.config.binary);
        command
            .args(args::build(spec, &layout, &options))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(VmError::io("qemu.log"))?)
            .stderr(log)
            // Not tied to us: dropping the handle must leave the VM running.
            .kill_on_drop(false);
        // SAFETY: setsid(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| {
            VmError::Unavailable(format!(
                "cannot run {} ({e}); install the Debian package qemu-system-x86",
                self.config.binary.display()
            ))
        })?;
        let pid = child.id().unwrap_or_default();

        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let said = std::fs::read_to_string(layout.qemu_log()).unwrap_or_default();
                return Err(VmError::StartFailed(format!(
                    "QEMU exited ({status}): {}",
                    said.trim()
                )));
            }
            if layout.qmp_socket().exists()
                && let Ok(VmStatus::Running) = qmp::status(&layout.qmp_socket()).await
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = process::kill(pid);
                return Err(VmError::StartFailed(format!(
                    "the guest was not running {:?} after QEMU started",
                    self.config.start_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Tokio reaps a dropped child in the background, so a VM that ends while this
        // process lives leaves no zombie.
        drop(child);
        Ok(QemuVm {
            pid,
            layout,
            spec: spec.clone(),
            accel,
        })
    }

    /// Re-adopts the VM running from `folder`; see [`Hypervisor::adopt`].
    pub async fn adopt_vm(&self, folder: &Path) -> Result<QemuVm, VmError> {
        let layout = Layout::new(folder);
        let not_running = || VmError::NotRunning(folder.to_path_buf());
        let raw = std::fs::read(layout.state()).map_err(|_| not_running())?;
        let state: StartedVm = serde_json::from_slice(&raw).map_err(|e| VmError::Io {
            context: format!("reading {}", layout.state().display()),
            source: e.into(),
        })?;
        let pid = process::read_pidfile(&layout.pidfile()).ok_or_else(not_running)?;
        if !process::alive(pid) || !is_our_qemu(pid, &layout) {
            return Err(not_running());
        }
        // It must also answer on its control socket, or we cannot manage it.
        qmp::status(&layout.qmp_socket()).await?;
        Ok(QemuVm {
            pid,
            layout,
            spec: state.spec,
            accel: state.accel,
        })
    }
}

/// A recycled pid would belong to some other program: ours names its QMP socket.
fn is_our_qemu(pid: u32, layout: &Layout) -> bool {
    let qmp = layout.qmp_socket().display().to_string();
    process::cmdline(pid).iter().any(|arg| arg.contains(&qmp))
}

fn check_spec(spec: &VmSpec) -> Result<(), VmError> {
    let invalid = |m: String| Err(VmError::InvalidSpec(m));
    if spec.vcpus == 0 {
        return invalid("at least one vCPU".into());
    }
    if spec.memory_mib < 64 {
        return invalid(format!(
            "{} MiB of memory is too little to boot",
            spec.memory_mib
        ));
    }
    let mut files = Vec::new();
    match (&spec.boot, spec.machine) {
        (Some(boot), _) => {
            files.push(&boot.kernel);
            files.extend(boot.initramfs.iter());
        }
        (None, Machine::Pc) if !spec.drives.is_empty() => {}
        (None, Machine::Pc) => return invalid("nothing to boot: no kernel and no drive".into()),
        (None, Machine::Microvm) => return invalid("a microVM needs a kernel to boot".into()),
    }
    files.extend(spec.drives.iter().map(|d| &d.path));
    for serial in spec.drives.iter().filter_map(|d| d.serial.as_deref()) {
        let valid = (1..=20).contains(&serial.len())
            && serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return invalid(format!(
                "bad drive serial {serial:?} (1 to 20 letters, digits or dashes)"
            ));
        }
    }
    for file in files {
        if !file.is_file() {
            return invalid(format!("{} does not exist", file.display()));
        }
    }
    if spec.channel.port_name.contains(',') || spec.channel.port_name.is_empty() {
        return invalid(format!(
            "bad channel port name {:?}",
            spec.channel.port_name
        ));
    }
    Ok(())
}

impl Hypervisor for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Box<dyn RunningVm>, VmError>> {
        Box::pin(async move { Ok(Box::new(self.start_vm(spec).await?) as Box<dyn RunningVm>) })
    }

    fn adopt<'a>(&'a self, folder: &'a Path) -> BoxFuture<'a, Result<Box<dyn RunningVm>, VmError>> {
        Box::pin(async move { Ok(Box::new(self.adopt_vm(folder).await?) as Box<dyn RunningVm>) })
    }
}

/// A VM run by QEMU. Holds no connection: every call goes to the process or its QMP
/// socket afresh, so any number of handles (and adopters) can coexist.
#[derive(Debug, Clone)]
pub struct QemuVm {
    pid: u32,
    layout: Layout,
    spec: VmSpec,
    accel: Accel,
}

impl QemuVm {
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

impl RunningVm for QemuVm {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn folder(&self) -> &Path {
        self.layout.folder()
    }

    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    fn accel(&self) -> Accel {
        self.accel
    }

    fn channel(&self) -> ChannelEndpoint {
        ChannelEndpoint::UnixStream(self.layout.channel_socket())
    }

    fn serial_log(&self) -> PathBuf {
        self.layout.serial_log()
    }

    fn status(&self) -> BoxFuture<'_, VmStatus> {
        Box::pin(async move {
            if !process::alive(self.pid) {
                return VmStatus::Exited;
            }
            match qmp::status(&self.layout.qmp_socket()).await {
                Ok(status) => status,
                // The socket closing under us is the process ending.
                Err(_) if !process::alive(self.pid) => VmStatus::Exited,
                Err(_) => VmStatus::Stopped,
            }
        })
    }

    fn request_powerdown(&self) -> BoxFuture<'_, Result<(), VmError>> {
        let socket = self.layout.qmp_socket();
        Box::pin(async move { qmp::system_powerdown(&socket).await })
    }

    fn quit(&self) -> BoxFuture<'_, Result<(), VmError>> {
        let socket = self.layout.qmp_socket();
        Box::pin(async move { qmp::quit(&socket).await })
    }

    fn kill(&self) -> Result<(), VmError> {
        if process::alive(self.pid) && !is_our_qemu(self.pid, &self.layout) {
            // The pid was recycled: ours is gone already.
            return Ok(());
        }
        process::kill(self.pid)
    }

    fn wait_exit(&self, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(process::wait_exit(self.pid, timeout))
    }
}
