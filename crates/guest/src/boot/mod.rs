//! From PID 1's first instruction to a running root: pseudo filesystems, modules,
//! the runtime as an overlay root. Synchronous on purpose: nothing else can happen
//! before it, and it must stay fast (the app's start waits on it).

mod cmdline;
mod modules;
mod mounts;
mod root;

use crate::paths::{MODULES_DIR, MODULES_ORDER};
use crate::syslog;
use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// Modules opened from the initramfs before leaving it, to be loaded later.
pub struct LateModules(Vec<(String, File)>);

impl LateModules {
    /// Loads them all; failures are logged, not fatal (they only serve optional features).
    pub fn load_all(self) {
        for (name, file) in &self.0 {
            if let Err(e) = modules::load(name, file) {
                syslog!("{e:#}");
            }
        }
    }
}

pub struct Booted {
    pub late_modules: LateModules,
    /// Guest uptime (seconds) when init started, when the boot modules were loaded, and
    /// when the runtime became the root: where boot time goes.
    pub timings: [f64; 3],
}

/// Gives PID 1 a stdin/stdout/stderr on the console when the kernel could not.
fn attach_console() {
    if nix::fcntl::fcntl(2, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        return;
    }
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(console.as_raw_fd(), fd);
        }
    }
}

pub fn run() -> Result<Booted> {
    let started = crate::uptime_seconds();
    mounts::early(Path::new("/"))?;
    attach_console();

    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let params = cmdline::parse(&cmdline);
    let device = params
        .root
        .context("no aleph.root= on the kernel command line")?;

    let plan = std::fs::read_to_string(MODULES_ORDER)
        .map(|text| modules::parse_plan(&text))
        .unwrap_or_else(|_| Ok(Default::default()))?;
    let dir = Path::new(MODULES_DIR);
    for (name, file) in modules::open(dir, &plan.boot)? {
        modules::load(&name, &file)?;
    }
    let loaded = crate::uptime_seconds();
    // Opened now: once the root is switched the initramfs is out of reach.
    let late_modules = LateModules(modules::open(dir, &plan.late)?);

    let device = Path::new(&device);
    root::wait_for_device(device, Duration::from_secs(10))?;
    root::assemble(device)?;
    mounts::move_early(Path::new(crate::paths::NEW_ROOT))?;
    root::switch()?;
    mounts::late()?;
    Ok(Booted {
        late_modules,
        timings: [started, loaded, crate::uptime_seconds()],
    })
}
