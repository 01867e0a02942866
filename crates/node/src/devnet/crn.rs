//! The devnet's CRNs: each `aleph-node crn --config CRN_DIR/crn.toml` as a
//! child process (this same binary), so it can die, or be killed by a test, as
//! a real node does, while the rest of the network keeps running; the same
//! command starts it again on the same data. Its output goes to
//! `CRN_DIR/crn.log`.

use anyhow::{Context, Result, bail};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a CRN may take to answer after its start (it probes KVM with a VM boot).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

pub struct CrnChild {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    /// The node's settings file: `aleph-node crn --config` it to restart the node.
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// Whether its end was already reported.
    exit_reported: bool,
}

/// How the CRN joins the scheduler: heartbeats as its registered node, and
/// allocations accepted from the scheduler's key.
pub struct SchedulerLink<'a> {
    pub scheduler_url: &'a str,
    /// The registration POST's item hash.
    pub node_hash: &'a str,
    /// The operator key (hex), written to `CRN_DIR/node.key` (mode 0600).
    pub node_key: &'a str,
    /// The scheduler's address.
    pub scheduler_address: &'a str,
    pub heartbeat_interval_seconds: u64,
}

pub struct CrnOptions<'a> {
    pub ccn_url: &'a str,
    /// Which of the devnet's CRNs (0 for the first): chooses its share of the host's
    /// VM network.
    pub index: usize,
    /// VMs get IPv6 addresses too.
    pub ipv6: bool,
    /// The CRN's own folder.
    pub data_dir: &'a Path,
    /// Where the images were built (their data folder).
    pub images_dir: &'a Path,
    /// 0 picks a free one.
    pub port: u16,
    /// The PROGRAM `/status/check/fastapi` runs.
    pub diagnostic_program: Option<&'a str>,
    pub scheduler: Option<SchedulerLink<'a>>,
}

/// The settings file of a devnet CRN, and the key file it names.
fn write_config(options: &CrnOptions<'_>, listen: SocketAddr) -> Result<PathBuf> {
    let mut config = aleph_crn::CrnConfig {
        listen,
        ccn_url: options.ccn_url.to_owned(),
        data_dir: options.data_dir.to_owned(),
        images_dir: Some(options.images_dir.to_owned()),
        diagnostic_program: options.diagnostic_program.map(str::to_owned),
        network: vm_network(options.index, options.ipv6)?,
        ..aleph_crn::CrnConfig::default()
    };
    if let Some(link) = &options.scheduler {
        let key_file = options.data_dir.join("node.key");
        write_private(&key_file, link.node_key)?;
        config.scheduler_url = Some(link.scheduler_url.to_owned());
        config.node_hash = Some(link.node_hash.to_owned());
        config.node_key_file = Some(key_file);
        config.public_url = Some(format!("http://{listen}"));
        config.allowed_schedulers = vec![link.scheduler_address.to_owned()];
        config.heartbeat_interval_seconds = link.heartbeat_interval_seconds;
    }
    let path = options.data_dir.join("crn.toml");
    let text = toml::to_string(&config).context("encoding the CRN settings")?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The devnet's CRNs share one host: each gets its own /16 of 172.16.0.0/12 for its
/// VMs, its own thousand host ports from 24000 and its own nftables table, so
/// their TAP devices, forwards and rules never meet.
/// With `ipv6`, each also gets its own ULA /64 (`fd00:a1e:<i-1>::/64`).
fn vm_network(index: usize, ipv6: bool) -> Result<aleph_crn::network::NetworkConfig> {
    let Some(slot) = u8::try_from(index).ok().filter(|slot| *slot < 16) else {
        bail!("a devnet runs at most 16 CRNs (172.16.0.0/12 has 16 /16s for their VMs)");
    };
    let first_port = 24000 + u16::from(slot) * 1000;
    Ok(aleph_crn::network::NetworkConfig {
        ipv4_pool: (Ipv4Addr::new(172, 16 + slot, 0, 0), 16),
        port_range: (first_port, first_port + 999),
        table: format!("aleph-devnet-crn{}", index + 1),
        ipv6_pool: ipv6.then(|| {
            (
                std::net::Ipv6Addr::new(0xfd00, 0xa1e, u16::from(slot), 0, 0, 0, 0, 0),
                64,
            )
        }),
        ..aleph_crn::network::NetworkConfig::default()
    })
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Starts the CRN and waits until its API answers.
pub async fn start(options: CrnOptions<'_>) -> Result<CrnChild> {
    std::fs::create_dir_all(options.data_dir)
        .with_context(|| format!("creating {}", options.data_dir.display()))?;
    let port = match options.port {
        0 => free_port()?,
        port => port,
    };
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let config = write_config(&options, listen)?;
    let log = options.data_dir.join("crn.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let exe = std::env::current_exe().context("locating the aleph-node binary")?;
    let mut command = Command::new(exe);
    command
        .arg("crn")
        .arg("--config")
        .arg(&config)
        // A devnet's VMs end with it; a real node keeps them for its next start.
        .arg("--stop-vms-on-exit")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    // If the devnet dies without stopping it (SIGKILL), the CRN is told to stop
    // rather than left running on its own.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    let child = command.spawn().context("starting `aleph-node crn`")?;
    let mut crn = CrnChild {
        child,
        url: format!("http://{listen}"),
        log,
        config,
        data_dir: options.data_dir.to_owned(),
        exit_reported: false,
    };
    crn.wait_ready().await?;
    Ok(crn)
}

impl CrnChild {
    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "`aleph-node crn` exited with {status} before answering; its log: {}\n{}",
                    self.log.display(),
                    tail(&self.log, 15)
                );
            }
            let probe = http
                .get(format!("{}/about/usage/system", self.url))
                .send()
                .await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.start_kill();
                bail!(
                    "the CRN did not answer on {} within {} s; its log: {}",
                    self.url,
                    READY_TIMEOUT.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its exit status, the first time it is seen ended.
    pub fn newly_exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.exit_reported {
            return None;
        }
        let status = self.child.try_wait().ok().flatten()?;
        self.exit_reported = true;
        Some(status)
    }

    /// SIGTERM (the CRN then stops its VMs), then SIGKILL after `grace`; then
    /// ends any VM still left: VMs are detached processes, meant to outlive a
    /// CRN restart, not the devnet.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        stop_left_vms(&self.data_dir);
    }
}

/// Sends SIGTERM to every VM process whose pidfile is under `data_dir` and whose
/// command line names that folder (so a reused pid is never hit).
pub fn stop_left_vms(data_dir: &Path) {
    let marker = data_dir.to_string_lossy().into_owned();
    for pidfile in pidfiles(data_dir) {
        let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&marker) {
            tracing::info!("stopping VM process {pid} left by the devnet's CRN");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

fn pidfiles(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "pid") {
                found.push(path);
            }
        }
    }
    found
}

pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The last `lines` lines of a log, to show why a child failed.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether this binary has the `crn` subcommand (it is absent from builds
/// made before the CRN existed); checked so the devnet can say so plainly.
pub async fn available() -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    Command::new(exe)
        .args(["crn", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfiles_are_found_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("executions/abc");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("qemu.pid"), "1").unwrap();
        std::fs::write(deep.join("serial.log"), "").unwrap();
        std::fs::write(dir.path().join("top.pid"), "2").unwrap();
        let mut found = pidfiles(dir.path());
        found.sort();
        assert_eq!(found, [deep.join("qemu.pid"), dir.path().join("top.pid")]);
    }

    #[test]
    fn a_pid_whose_command_line_is_elsewhere_is_left_alone() {
        // Our own pid: its command line does not name the temporary folder.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.pid"), std::process::id().to_string()).unwrap();
        stop_left_vms(dir.path());
        // Still alive to assert.
        assert!(Path::new(&format!("/proc/{}", std::process::id())).exists());
    }

    #[test]
    fn each_crn_has_its_own_vm_network() {
        let first = vm_network(0, false).unwrap();
        let second = vm_network(1, true).unwrap();
        assert_eq!(first.ipv4_pool, (Ipv4Addr::new(172, 16, 0, 0), 16));
        assert_eq!(second.ipv4_pool, (Ipv4Addr::new(172, 17, 0, 0), 16));
        assert_eq!(first.port_range, (24000, 24999));
        assert_eq!(second.port_range, (25000, 25999));
        assert_ne!(first.table, second.table);
        assert_eq!(first.ipv6_pool, None);
        assert_eq!(
            second.ipv6_pool,
            Some(("fd00:a1e:1::".parse().unwrap(), 64))
        );
        assert!(aleph_crn::network::VmNetwork::new(vm_network(15, true).unwrap()).is_ok());
        assert!(vm_network(16, false).is_err());
    }
}
