//! The firmware boot path of instances, proven with a disk made here: a parent image
//! that is not a bare ext4 filesystem (a distribution's cloud image: a disk with its own
//! bootloader) is booted by the `q35` machine's firmware (SeaBIOS) from the instance's
//! qcow2 overlay, without `-kernel`.
//!
//! Cloud images cannot be downloaded here, so the "cloud image" is a disk whose MBR is a
//! tiny real-mode boot sector that writes a marker to COM1 (the serial log) and halts.
//! The marker in the log shows that the firmware loaded and ran the overlay's first
//! sector, read through the overlay from a raw and from a qcow2 parent. A disk with the
//! same sector but without the `55 AA` boot signature, started at the same time and
//! watched for longer, never prints it: the marker comes from our sector, not from
//! anything else the machine does. SeaBIOS writes its own messages to the serial port
//! when the machine has no VGA card (as here); where it does, its refusal of that disk
//! is checked too.
//!
//! Needs `qemu-system-x86_64` (with SeaBIOS) and `qemu-img`; not root (no network).

use aleph_crn::hypervisor::qemu::{AccelPolicy, Layout, QemuConfig, QemuDriver};
use aleph_crn::hypervisor::{
    ChannelSpec, Drive, DriveFormat, Hypervisor, Machine, RunningVm, VmSpec, VmStatus,
};
use aleph_crn::instance::create_overlay;
use aleph_crn::instances::boot::{self, BootPlan};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the boot sector writes to COM1.
const MARKER: &str = "ALEPH-FIRMWARE-BOOT-OK";
/// Where the BIOS loads a boot sector (0000:7C00).
const LOAD_ADDRESS: u16 = 0x7c00;
const SECTOR: usize = 512;
/// The parent "cloud image" is a few MiB, as a disk (not just a sector) would be.
const PARENT_MIB: u64 = 4;
/// The instance's disk is a bit larger than its parent, as a message's `size_mib` is.
const OVERLAY_MIB: u64 = 8;
/// SeaBIOS reaches the boot sector in about a second under TCG on an idle host; the
/// host is shared, so leave plenty.
const MARKER_TIMEOUT: Duration = Duration::from_secs(60);
/// The unsigned disk is watched at least this long after it started.
const NEGATIVE_MIN_WAIT: Duration = Duration::from_secs(5);
/// SeaBIOS's banner on the serial console, and what it says of a disk without the
/// boot signature (SeaBIOS 1.16, Debian 12).
const SEABIOS_BANNER: &str = "SeaBIOS";
const SEABIOS_REFUSAL: &str = "not a bootable disk";

/// A real-mode MBR boot sector that writes `marker` to COM1 and halts; with
/// `signed == false` its last two bytes are zero instead of the `55 AA` boot signature,
/// so the firmware must refuse it.
fn boot_sector(marker: &str, signed: bool) -> Vec<u8> {
    // Jump offsets are relative to the next instruction's address.
    let mut sector = vec![
        0xfc, //             cld              lodsb walks forward
        0x31, 0xc0, //       xor ax, ax
        0x8e, 0xd8, //       mov ds, ax       DS = 0: SI is a linear address
        0xba, 0xf8, 0x03, // mov dx, 0x3f8    COM1's data register
        0xbe, 0x00, 0x00, // mov si, marker   (patched below)
        0xac, //             next: lodsb      al = [ds:si], si += 1
        0x84, 0xc0, //       test al, al
        0x74, 0x03, //       jz done          the NUL ends the marker
        0xee, //             out dx, al
        0xeb, 0xf8, //       jmp next
        0xf4, //             done: hlt
        0xeb, 0xfd, //       jmp done         an interrupt ends hlt: halt again
    ];
    let marker_address = LOAD_ADDRESS + sector.len() as u16;
    sector[9..11].copy_from_slice(&marker_address.to_le_bytes());
    sector.extend_from_slice(marker.as_bytes());
    sector.push(0);
    assert!(sector.len() <= SECTOR - 2, "the marker does not fit");
    sector.resize(SECTOR - 2, 0);
    sector.extend_from_slice(if signed { &[0x55, 0xaa] } else { &[0, 0] });
    sector
}

/// A raw disk of `PARENT_MIB` whose first sector is `sector` (the rest reads as zeros).
fn raw_disk(path: &Path, sector: &[u8]) {
    std::fs::write(path, sector).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(PARENT_MIB * 1024 * 1024).unwrap();
}

fn qemu_img_convert_to_qcow2(raw: &Path, qcow2: &Path) {
    let output = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(qcow2)
        .output()
        .expect("qemu-img runs");
    assert!(
        output.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Why this host cannot run the test, if it cannot.
fn missing_tool() -> Option<String> {
    [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
    ]
    .into_iter()
    .find(|(program, _)| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
    })
    .map(|(program, package)| format!("{program} is not installed (Debian package {package})"))
}

/// A started VM, killed when dropped so that a failing test leaves no QEMU behind (the
/// driver's handle deliberately leaves VMs running).
struct VmGuard {
    vm: Box<dyn RunningVm>,
    /// When the driver was asked to start it.
    started: Instant,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        let _ = self.vm.kill();
    }
}

impl VmGuard {
    fn serial_log(&self) -> String {
        std::fs::read_to_string(self.vm.serial_log()).unwrap_or_default()
    }

    fn qemu_log(&self) -> String {
        std::fs::read_to_string(Layout::new(self.vm.folder()).qemu_log()).unwrap_or_default()
    }

    /// How long after its start the marker was in the serial log, or `None` if it was
    /// not within `timeout` of the start. A VM that ends meanwhile fails the test with
    /// QEMU's own words.
    async fn wait_for_marker(&self, timeout: Duration) -> Option<Duration> {
        loop {
            if self.serial_log().contains(MARKER) {
                return Some(self.started.elapsed());
            }
            if self.started.elapsed() > timeout {
                return None;
            }
            assert_eq!(
                self.vm.status().await,
                VmStatus::Running,
                "the VM in {} ended; QEMU said: {}",
                self.vm.folder().display(),
                self.qemu_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends QEMU through QMP and waits for it to be gone.
    async fn quit(self) {
        self.vm.quit().await.expect("QMP quit");
        assert!(
            self.vm.wait_exit(Duration::from_secs(15)).await,
            "QEMU in {} is still running after quit",
            self.vm.folder().display()
        );
        assert_eq!(self.vm.status().await, VmStatus::Exited);
    }
}

/// Does what the CRN does for an instance whose parent is `parent`: asks for the boot
/// plan, makes the qcow2 overlay, and starts a `q35` VM on it without a kernel.
async fn start_instance(driver: &QemuDriver, work: &Path, name: &str, parent: &Path) -> VmGuard {
    let plan = boot::plan(parent, name, &work.join("kernels"))
        .await
        .expect("a boot plan");
    assert_eq!(plan, BootPlan::Firmware, "{}", parent.display());

    let folder = work.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let overlay: PathBuf = folder.join("rootfs.qcow2");
    create_overlay(parent, &overlay, OVERLAY_MIB)
        .await
        .expect("the overlay");

    let spec = VmSpec {
        machine: Machine::Pc,
        vcpus: 1,
        memory_mib: 128,
        boot: None,
        drives: vec![Drive::writable(&overlay).with_format(DriveFormat::Qcow2)],
        channel: ChannelSpec::default(),
        network: None,
        folder,
    };
    let started = Instant::now();
    let vm = driver.start(&spec).await.expect("the VM starts");
    VmGuard { vm, started }
}

#[test]
fn the_boot_sector_prints_the_marker_it_points_at() {
    let sector = boot_sector(MARKER, true);
    assert_eq!(sector.len(), SECTOR);
    assert_eq!(sector[510..], [0x55, 0xaa]);
    // `mov si, imm16` (BE) loads the marker's address.
    assert_eq!(sector[8], 0xbe);
    let address = u16::from_le_bytes([sector[9], sector[10]]);
    let offset = usize::from(address - LOAD_ADDRESS);
    assert_eq!(&sector[offset..offset + MARKER.len()], MARKER.as_bytes());
    assert_eq!(sector[offset + MARKER.len()], 0, "NUL-terminated");
    let unsigned = boot_sector(MARKER, false);
    assert_eq!(unsigned[..510], sector[..510]);
    assert_eq!(unsigned[510..], [0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_boots_raw_and_qcow2_parents_through_the_overlay_and_refuses_an_unsigned_disk() {
    if let Some(reason) = missing_tool() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    // Short path: the VM's Unix sockets live in its folder (107 bytes at most).
    let work = tempfile::Builder::new()
        .prefix("aleph-fw-")
        .tempdir_in("/tmp")
        .unwrap();
    let parents = work.path().join("parents");
    std::fs::create_dir_all(&parents).unwrap();
    let raw = parents.join("cloud.raw");
    raw_disk(&raw, &boot_sector(MARKER, true));
    let qcow2 = parents.join("cloud.qcow2");
    qemu_img_convert_to_qcow2(&raw, &qcow2);
    let unsigned = parents.join("unsigned.raw");
    raw_disk(&unsigned, &boot_sector(MARKER, false));

    // TCG, as the brief's hosts run instances; no kernel to probe KVM with anyway.
    let driver = QemuDriver::new(QemuConfig {
        accel: AccelPolicy::Tcg,
        ..QemuConfig::default()
    });
    // All three run together, so the unsigned disk is watched under the same host
    // load as the signed ones.
    let started = Instant::now();
    let from_raw = start_instance(&driver, work.path(), "raw", &raw).await;
    let from_qcow2 = start_instance(&driver, work.path(), "qcow2", &qcow2).await;
    let from_unsigned = start_instance(&driver, work.path(), "unsigned", &unsigned).await;

    let (raw_took, qcow2_took) = tokio::join!(
        from_raw.wait_for_marker(MARKER_TIMEOUT),
        from_qcow2.wait_for_marker(MARKER_TIMEOUT),
    );
    for (name, vm, took) in [
        ("raw", &from_raw, raw_took),
        ("qcow2", &from_qcow2, qcow2_took),
    ] {
        let took = took.unwrap_or_else(|| {
            panic!(
                "no marker from the {name} parent in {MARKER_TIMEOUT:?}; serial log: {:?}; QEMU said: {}",
                vm.serial_log(),
                vm.qemu_log()
            )
        });
        eprintln!("{name} parent: marker after {took:.1?}");
    }

    // Watched from its own start for several times as long as the slower signed disk
    // took, and never less than a few seconds: absence is a refusal, not slowness.
    let slowest = raw_took.max(qcow2_took).unwrap();
    let watch = (slowest * 4).max(NEGATIVE_MIN_WAIT);
    let printed = from_unsigned.wait_for_marker(watch).await;
    let unsigned_log = from_unsigned.serial_log();
    assert_eq!(
        printed, None,
        "the unsigned disk printed the marker; serial log: {unsigned_log:?}"
    );
    if unsigned_log.contains(SEABIOS_BANNER) {
        assert!(
            unsigned_log.contains(SEABIOS_REFUSAL),
            "SeaBIOS did not refuse the unsigned disk; serial log: {unsigned_log:?}"
        );
        eprintln!("unsigned disk: SeaBIOS said {SEABIOS_REFUSAL:?}");
    } else {
        eprintln!("unsigned disk: the firmware writes nothing to the serial port here");
    }
    eprintln!(
        "unsigned disk: no marker {:.1?} after its start",
        from_unsigned.started.elapsed()
    );

    for vm in [from_raw, from_qcow2, from_unsigned] {
        vm.quit().await;
    }
    eprintln!("total {:.1?}", started.elapsed());
}
