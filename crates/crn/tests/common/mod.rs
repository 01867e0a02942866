//! Shared set-up of the VM tests: the host checks (root, QEMU, images) with a clear
//! reason when one fails, and VMs that are killed by pidfile whatever happens to the test.

#![allow(dead_code)]

pub mod deploy;

use aleph_crn::channel::AgentChannel;
use aleph_crn::hypervisor::qemu::{QemuConfig, QemuDriver};
use aleph_crn::hypervisor::{
    BootSource, ChannelSpec, Drive, Hypervisor, Machine, RunningVm, VmSpec,
};
use aleph_crn::images::GuestImages;
use aleph_protocol::agent::{AgentConfig, CodeConfig, CodeEncoding, CodeInterface};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A TCG boot to the agent takes ~4 s on an idle host; several VMs boot at once on two
/// cores in CI, so leave plenty.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

pub struct Host {
    pub images: GuestImages,
    pub data_dir: PathBuf,
    /// VM folders live here (short paths: Unix sockets allow 107 bytes).
    pub work: tempfile::TempDir,
}

/// `None`, with the reason printed, when this host cannot run the VM tests.
pub fn host() -> Option<Host> {
    let skip = |reason: String| {
        eprintln!("SKIPPED: {reason}");
        None
    };
    if !nix::unistd::geteuid().is_root() {
        return skip("the VM tests need root (QEMU's devices and the execution folders)".into());
    }
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)".into());
    }
    let data_dir = aleph_crn::images::default_data_dir();
    let Some(images) = aleph_crn::images::cached(&data_dir) else {
        return skip(format!(
            "no guest images in {} (run `aleph-node images build` first, or set ALEPH_DATA_DIR)",
            data_dir.display()
        ));
    };
    let work = tempfile::Builder::new()
        .prefix("aleph-vmt-")
        .tempdir_in("/tmp")
        .expect("a folder in /tmp");
    Some(Host {
        images,
        data_dir,
        work,
    })
}

impl Host {
    pub fn driver(&self) -> QemuDriver {
        QemuDriver::new(QemuConfig {
            state_dir: Some(self.data_dir.clone()),
            ..QemuConfig::default()
        })
    }
}

/// Kills the VM of a folder by its pidfile when dropped, so that a failing test leaves
/// no QEMU behind (the driver's handle deliberately does not).
pub struct KillByPidfile(pub PathBuf);

impl Drop for KillByPidfile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("qemu.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A program to run: its code drive and how the agent should treat it.
pub struct Program {
    pub file: &'static str,
    pub source: &'static str,
    pub entrypoint: &'static str,
    pub interface: CodeInterface,
}

pub const FASTAPI_HELLO: Program = Program {
    file: "main.py",
    source: "from fastapi import FastAPI\napp = FastAPI()\n@app.get(\"/\")\nasync def root():\n    return {\"message\": \"Hello World\"}\n",
    entrypoint: "main:app",
    interface: CodeInterface::Asgi,
};

pub struct TestVm {
    pub vm: Box<dyn RunningVm>,
    pub channel: Arc<AgentChannel>,
    pub config: AgentConfig,
    pub folder: PathBuf,
    pub guard: KillByPidfile,
}

/// Starts a VM with the Python runtime as `/dev/vda` and `program` as `/dev/vdb`, and
/// waits for its agent; does not configure it.
pub async fn boot(host: &Host, driver: &QemuDriver, name: &str, program: &Program) -> TestVm {
    let folder = host.work.path().join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let guard = KillByPidfile(folder.clone());
    let code = folder.join("code.img");
    let mut bytes = program.source.as_bytes().to_vec();
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    std::fs::write(&code, bytes).unwrap();
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 384,
        machine: Machine::Microvm,
        boot: Some(BootSource {
            kernel: host.images.vmlinuz.clone(),
            initramfs: Some(host.images.initramfs.clone()),
            cmdline: format!("quiet {}=/dev/vda", aleph_protocol::agent::ROOT_CMDLINE_KEY),
        }),
        drives: vec![
            Drive::read_only(&host.images.python_runtime),
            Drive::read_only(&code),
        ],
        channel: ChannelSpec::default(),
        network: None,
        folder: folder.clone(),
    };
    let vm = driver.start(&spec).await.expect("the VM starts");
    let channel = Arc::new(AgentChannel::new(vm.channel()));
    if let Err(e) = channel.wait_ready(BOOT_TIMEOUT).await {
        panic!(
            "the agent did not come up: {e}\nconsole:\n{}",
            console(&folder)
        );
    }
    let config = AgentConfig {
        hostname: name.into(),
        code: CodeConfig {
            device: "/dev/vdb".into(),
            encoding: CodeEncoding::Plain,
            size: program.source.len() as u64,
            entrypoint: program.entrypoint.into(),
            interface: program.interface,
            args: vec![],
        },
        variables: Default::default(),
        volumes: vec![],
        network: None,
        startup_timeout_seconds: 120,
    };
    TestVm {
        vm,
        channel,
        config,
        folder,
        guard,
    }
}

pub fn console(folder: &Path) -> String {
    std::fs::read_to_string(folder.join("serial.log")).unwrap_or_default()
}
