//! Deciding between KVM and TCG by booting a guest, not by looking at `/dev/kvm`.
//!
//! On some hosts `/dev/kvm` opens fine but a Linux guest dies early (a KVM internal
//! error, or QEMU failing to set an MSR). The only trustworthy test is the real thing:
//! boot the VM's kernel under KVM with a tiny init that prints a marker, and give it a
//! few seconds. The verdict holds until the host reboots, so it is cached on disk
//! keyed by the host's boot id, the QEMU binary and the kernel.

use super::args::{self, MachineOptions};
use super::layout::Layout;
use crate::hypervisor::{Accel, BootSource, ChannelSpec, Machine, VmSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A KVM guest reaches `/init` in well under a second; TCG takes ~1.5 s. Past this the
/// guest is stuck, which is the failure we are looking for.
const PROBE_TIMEOUT: Duration = Duration::from_secs(6);

/// What the probe's init writes on the console.
const MARKER: &[u8] = b"ALEPH-KVM-PROBE-OK\n";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub accel: Accel,
    /// Why, in words: shown in logs and in the benchmark's output.
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
struct Cached {
    boot_id: String,
    qemu: PathBuf,
    kernel: PathBuf,
    verdict: Verdict,
}

/// Verdicts of this process, by QEMU binary and kernel. The lock is held while probing
/// so that VMs starting together wait for one probe instead of running one each.
static DECIDED: tokio::sync::Mutex<BTreeMap<(PathBuf, PathBuf), Verdict>> =
    tokio::sync::Mutex::const_new(BTreeMap::new());

/// Decides, using what this process or (through `state_dir`) an earlier one found
/// since the host booted.
pub async fn decide(qemu: &Path, kernel: &Path, state_dir: Option<&Path>) -> Verdict {
    let mut decided = DECIDED.lock().await;
    let key = (qemu.to_path_buf(), kernel.to_path_buf());
    if let Some(verdict) = decided.get(&key) {
        return verdict.clone();
    }
    let verdict = decide_uncached(qemu, kernel, state_dir).await;
    tracing::info!(accel = ?verdict.accel, "QEMU acceleration: {}", verdict.reason);
    decided.insert(key, verdict.clone());
    verdict
}

async fn decide_uncached(qemu: &Path, kernel: &Path, state_dir: Option<&Path>) -> Verdict {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cache_file = state_dir.map(|d| d.join("kvm-probe.json"));
    if let Some(file) = &cache_file
        && let Ok(raw) = std::fs::read(file)
        && let Ok(cached) = serde_json::from_slice::<Cached>(&raw)
        && cached.boot_id == boot_id
        && cached.qemu == qemu
        && cached.kernel == kernel
    {
        return cached.verdict;
    }
    let verdict = probe(qemu, kernel).await;
    if let Some(file) = &cache_file {
        let cached = Cached {
            boot_id,
            qemu: qemu.to_path_buf(),
            kernel: kernel.to_path_buf(),
            verdict: verdict.clone(),
        };
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(file, serde_json::to_vec_pretty(&cached).unwrap_or_default());
    }
    verdict
}

fn tcg(reason: impl Into<String>) -> Verdict {
    Verdict {
        accel: Accel::Tcg,
        reason: reason.into(),
    }
}

async fn probe(qemu: &Path, kernel: &Path) -> Verdict {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("/dev/kvm cannot be opened ({e})"));
    }
    let dir = match tempfile::Builder::new()
        .prefix("aleph-kvm-probe-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => return tcg(format!("no folder for the KVM probe: {e}")),
    };
    let initramfs = dir.path().join("probe.cpio");
    if let Err(e) = std::fs::write(&initramfs, probe_initramfs()) {
        return tcg(format!("writing the KVM probe's initramfs: {e}"));
    }
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 128,
        machine: Machine::Microvm,
        boot: Some(BootSource {
            kernel: kernel.to_path_buf(),
            initramfs: Some(initramfs),
            cmdline: "quiet".into(),
        }),
        drives: vec![],
        channel: ChannelSpec::default(),
        network: None,
        folder: dir.path().to_path_buf(),
    };
    let layout = Layout::new(dir.path());
    let options = MachineOptions {
        accel: Accel::Kvm,
        tcg_tb_size_mib: 0,
        tsc_khz: None,
    };
    let log = match std::fs::File::create(layout.qemu_log()) {
        Ok(log) => log,
        Err(e) => return tcg(format!("creating the KVM probe's log: {e}")),
    };
    let child = tokio::process::Command::new(qemu)
        .args(args::build(&spec, &layout, &options))
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .stderr(log)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return tcg(format!("starting {}: {e}", qemu.display())),
    };
    let started = Instant::now();
    let verdict = loop {
        let console = std::fs::read(layout.serial_log()).unwrap_or_default();
        if console.windows(MARKER.len()).any(|w| w == MARKER) {
            break Verdict {
                accel: Accel::Kvm,
                reason: format!(
                    "a KVM guest reached /init in {:.2} s",
                    started.elapsed().as_secs_f64()
                ),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(layout.qemu_log()).unwrap_or_default();
            break tcg(format!(
                "a KVM guest ended ({status}) before /init: {}",
                last_line(&said)
            ));
        }
        if started.elapsed() > PROBE_TIMEOUT {
            let said = std::fs::read_to_string(layout.qemu_log()).unwrap_or_default();
            break tcg(format!(
                "a KVM guest did not reach /init in {PROBE_TIMEOUT:?}{}",
                if said.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", last_line(&said))
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    verdict
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .to_string()
}

/// An initramfs with one file, `/init`: a static x86-64 program that writes [`MARKER`]
/// to the console and powers off. Hand-assembled so the probe needs nothing but the
/// kernel, and so that reaching it proves the kernel got all the way to user space.
pub fn probe_initramfs() -> Vec<u8> {
    let mut cpio = Vec::new();
    newc_entry(&mut cpio, "dev", 0o040755, 0, &[]);
    // The kernel opens /dev/console as init's stdio only if the node exists.
    newc_entry(&mut cpio, "dev/console", 0o020600, libc_makedev(5, 1), &[]);
    newc_entry(&mut cpio, "init", 0o100755, 0, &init_elf());
    newc_entry(&mut cpio, "TRAILER!!!", 0, 0, &[]);
    cpio
}

/// (major, minor) packed for [`newc_entry`], which writes them as separate fields.
fn libc_makedev(major: u32, minor: u32) -> u64 {
    ((major as u64) << 32) | minor as u64
}

fn newc_entry(out: &mut Vec<u8>, name: &str, mode: u32, rdev: u64, data: &[u8]) {
    static INODE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let ino = if name == "TRAILER!!!" {
        0
    } else {
        INODE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        (rdev >> 32) as u32,
        rdev as u32,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A minimal ELF64 executable: `write(1, MARKER)`, then
/// `reboot(LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_POWER_OFF)`.
fn init_elf() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    #[rustfmt::skip]
    let mut code: Vec<u8> = vec![
        0xb8, 0x01, 0x00, 0x00, 0x00,             // mov eax, 1 (write)
        0xbf, 0x01, 0x00, 0x00, 0x00,             // mov edi, 1
        0x48, 0x8d, 0x35, 0x1f, 0x00, 0x00, 0x00, // lea rsi, [rip + 31] (the marker)
        0xba, MARKER.len() as u8, 0x00, 0x00, 0x00, // mov edx, len
        0x0f, 0x05,                               // syscall
        0xb8, 0xa9, 0x00, 0x00, 0x00,             // mov eax, 169 (reboot)
        0xbf, 0xad, 0xde, 0xe1, 0xfe,             // mov edi, 0xfee1dead
        0xbe, 0x69, 0x19, 0x12, 0x28,             // mov esi, 0x28121969
        0xba, 0xdc, 0xfe, 0x21, 0x43,             // mov edx, 0x4321fedc (power off)
        0x0f, 0x05,                               // syscall
        0xeb, 0xfe,                               // jmp . (if power off failed)
    ];
    debug_assert_eq!(code.len(), 48);
    code.extend_from_slice(MARKER);
    let total = HEADERS + code.len() as u64;

    let mut elf = Vec::with_capacity(total as usize);
    // ELF header.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers offset
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&56u16.to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&0u16.to_le_bytes());
    elf.extend_from_slice(&0u16.to_le_bytes());
    // One PT_LOAD of the whole file, readable and executable.
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&BASE.to_le_bytes());
    elf.extend_from_slice(&total.to_le_bytes());
    elf.extend_from_slice(&total.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&code);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initramfs_is_a_newc_archive_ending_in_a_trailer() {
        let cpio = probe_initramfs();
        assert!(cpio.starts_with(b"070701"));
        assert_eq!(cpio.len() % 4, 0);
        let text = String::from_utf8_lossy(&cpio);
        assert!(
            text.contains("dev/console") && text.contains("init") && text.contains("TRAILER!!!")
        );
    }
}
