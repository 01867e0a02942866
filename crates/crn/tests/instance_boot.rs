//! An instance boots from the Debian 12 root filesystem (`aleph-node images rootfs
//! debian12`): a qcow2 overlay on the shared image plus the cloud-init seed, under QEMU.
//! cloud-init sets the hostname and installs the SSH key at first boot; a second boot of
//! the same overlay keeps them and skips the per-instance work.
//!
//! Set `ALEPH_TEST_ACCEL=tcg` (or `kvm`) to choose; by default the CRN's KVM probe does.

use aleph_crn::hypervisor::Accel;
use aleph_crn::hypervisor::qemu::probe;
use aleph_crn::images::{self, RootfsImage};
use aleph_crn::instance::{SeedConfig, create_overlay, write_seed};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOSTNAME: &str = "inst-test";
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(90);
/// cloud-init's `final_message` default starts so; it is the last thing it prints.
const CLOUD_INIT_DONE: &str = "finished at";
/// Printed by cloud-init's per-instance `keys_to_console` module.
const HOST_KEYS_BANNER: &str = "BEGIN SSH HOST KEY FINGERPRINTS";

fn tool_missing(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
}

/// `None`, with the reason printed, when this host cannot run the test.
fn rootfs() -> Option<RootfsImage> {
    let data_dir = images::default_data_dir();
    let skip = |reason: String| {
        eprintln!("SKIPPED: {reason}");
        None
    };
    if !data_dir.join("images").join(images::ROOTFS_LINK).exists() {
        return skip(format!(
            "no instance rootfs in {} (run `aleph-node images rootfs debian12 --data-dir {}`)",
            data_dir.join("images").display(),
            data_dir.display()
        ));
    }
    let Some(rootfs) = images::cached_rootfs(&data_dir) else {
        return skip(format!(
            "{} was built from another recipe; build it again",
            images::ROOTFS_LINK
        ));
    };
    for (program, arg, package) in [
        ("qemu-system-x86_64", "--version", "qemu-system-x86"),
        ("qemu-img", "--version", "qemu-utils"),
        ("debugfs", "-V", "e2fsprogs"),
        ("ssh-keygen", "-?", "openssh-client"),
    ] {
        if tool_missing(program, arg) {
            return skip(format!(
                "{program} is not installed (Debian package {package})"
            ));
        }
    }
    Some(rootfs)
}

/// `ALEPH_TEST_ACCEL` if set, else what the CRN's own probe finds works here (a
/// `/dev/kvm` that opens is not enough: on some hosts a KVM guest hangs early).
fn accel(rootfs: &RootfsImage, runtime: &tokio::runtime::Runtime) -> Accel {
    match std::env::var("ALEPH_TEST_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        _ => {
            let verdict = runtime.block_on(probe::decide(
                Path::new("qemu-system-x86_64"),
                &rootfs.kernel,
                Some(&images::default_data_dir()),
            ));
            eprintln!("accelerator: {:?} ({})", verdict.accel, verdict.reason);
            verdict.accel
        }
    }
}

fn accel_args(accel: Accel) -> [&'static str; 4] {
    match accel {
        Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
        Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
    }
}

/// A QEMU process, killed when dropped unless it already exited.
struct Vm {
    child: Child,
    serial: PathBuf,
    qmp: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Vm {
    fn start(
        work: &Path,
        name: &str,
        accel: Accel,
        rootfs: &RootfsImage,
        overlay: &Path,
        seed: &Path,
    ) -> Vm {
        let serial = work.join(format!("{name}.serial.log"));
        let qmp = work.join(format!("{name}.qmp"));
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "q35"])
            .args(accel_args(accel))
            .args(["-smp", "2", "-m", "1024"])
            .args(["-nodefaults", "-no-user-config", "-nographic"])
            .arg("-kernel")
            .arg(&rootfs.kernel)
            .arg("-initrd")
            .arg(&rootfs.initrd)
            .args([
                "-append",
                &format!("root=LABEL={} rw console=ttyS0", images::ROOTFS_LABEL),
            ])
            .args([
                "-drive",
                &format!("file={},format=qcow2,if=virtio", overlay.display()),
                "-drive",
                &format!("file={},format=raw,if=virtio,readonly=on", seed.display()),
                "-serial",
                &format!("file:{}", serial.display()),
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("starting qemu-system-x86_64");
        Vm { child, serial, qmp }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the console shows every one of `needles`; the time it took.
    fn wait_for(&mut self, started: Instant, needles: &[&str]) -> Duration {
        loop {
            let console = self.console();
            if needles.iter().all(|n| console.contains(n)) {
                return started.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                panic!(
                    "QEMU exited ({status}) before {needles:?}: {stderr}\n--- console ---\n{console}"
                );
            }
            if started.elapsed() > BOOT_TIMEOUT {
                panic!(
                    "no {needles:?} on the console after {BOOT_TIMEOUT:?}\n--- console ---\n{console}"
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// ACPI power button, then waits for QEMU to exit so that the guest's writes are on
    /// the overlay.
    fn power_off(&mut self) {
        let stream = UnixStream::connect(&self.qmp).expect("connecting to QMP");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut line = String::new();
        reader.read_line(&mut line).expect("QMP greeting");
        for command in ["qmp_capabilities", "system_powerdown"] {
            writeln!(writer, "{{\"execute\":\"{command}\"}}").unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).expect("QMP reply");
                if line.contains("\"return\"") {
                    break;
                }
                assert!(!line.contains("\"error\""), "QMP {command}: {line}");
            }
        }
        let start = Instant::now();
        while start.elapsed() < SHUTDOWN_TIMEOUT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "the guest did not power off within {SHUTDOWN_TIMEOUT:?}\n--- console ---\n{}",
            self.console()
        );
    }
}

/// Lines of a boot's console that say something went wrong: a unit that failed, a
/// cloud-init module that failed, a root filesystem not checked.
fn trouble(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter(|l| {
            l.contains("[FAILED]") || l.contains("[WARNING]") || l.contains("fsck not present")
        })
        .collect()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file of the guest's root filesystem as the overlay holds it now (empty if absent).
fn guest_file(work: &Path, overlay: &Path, path: &str) -> String {
    let raw = work.join("inspect.raw");
    let _ = std::fs::remove_file(&raw);
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            &overlay.to_string_lossy(),
            &raw.to_string_lossy(),
        ],
    );
    let text = run(
        "debugfs",
        &["-R", &format!("cat {path}"), &raw.to_string_lossy()],
    );
    let _ = std::fs::remove_file(&raw);
    text
}

fn generated_key(work: &Path) -> String {
    let key = work.join("id_ed25519");
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "instance-boot-test",
            "-f",
            &key.to_string_lossy(),
        ],
    );
    std::fs::read_to_string(key.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn instance_boots_gets_its_hostname_and_key_and_boots_again() {
    let Some(rootfs) = rootfs() else { return };
    let work = tempfile::Builder::new()
        .prefix("aleph-inst-")
        .tempdir_in("/tmp")
        .unwrap();
    let overlay = work.path().join("rootfs.qcow2");
    let seed = work.path().join("cloud-init.img");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(create_overlay(&rootfs.image, &overlay, 2048))
        .expect("overlay");
    let key = generated_key(work.path());
    write_seed(
        &seed,
        &SeedConfig {
            instance_id: "inst-test-0001".into(),
            hostname: HOSTNAME.into(),
            ssh_authorized_keys: vec![key.clone()],
            network: None,
            mounts: vec![],
        },
    )
    .expect("seed");
    let login = format!("{HOSTNAME} login:");
    let accel = accel(&rootfs, &runtime);

    // First boot: cloud-init does the per-instance work.
    let started = Instant::now();
    let mut vm = Vm::start(work.path(), "boot1", accel, &rootfs, &overlay, &seed);
    let first_boot = vm.wait_for(started, &[&login, CLOUD_INIT_DONE]);
    eprintln!("first boot (cloud-init per-instance): {first_boot:.1?}");
    let console = vm.console();
    assert!(console.contains(HOST_KEYS_BANNER), "{console}");
    assert_eq!(trouble(&console), Vec::<&str>::new(), "first boot");
    vm.power_off();
    drop(vm);

    let root_keys = guest_file(work.path(), &overlay, "/root/.ssh/authorized_keys");
    assert!(
        root_keys.contains(&key),
        "root's authorized_keys: {root_keys:?}"
    );
    let host_key = guest_file(work.path(), &overlay, "/etc/ssh/ssh_host_ed25519_key.pub");
    assert!(host_key.starts_with("ssh-ed25519 "), "{host_key:?}");
    let machine_id = guest_file(work.path(), &overlay, "/etc/machine-id");
    assert_eq!(machine_id.trim().len(), 32, "{machine_id:?}");

    // Second boot: same instance id, so nothing per-instance runs again.
    let started = Instant::now();
    let mut vm = Vm::start(work.path(), "boot2", accel, &rootfs, &overlay, &seed);
    let second_boot = vm.wait_for(started, &[&login, CLOUD_INIT_DONE]);
    eprintln!("second boot (same instance): {second_boot:.1?}");
    let console = vm.console();
    assert!(
        !console.contains(HOST_KEYS_BANNER),
        "host keys made again on the second boot:\n{console}"
    );
    assert_eq!(trouble(&console), Vec::<&str>::new(), "second boot");
    vm.power_off();
    drop(vm);

    let root_keys = guest_file(work.path(), &overlay, "/root/.ssh/authorized_keys");
    assert!(
        root_keys.contains(&key),
        "after the second boot: {root_keys:?}"
    );
    assert_eq!(
        guest_file(work.path(), &overlay, "/etc/ssh/ssh_host_ed25519_key.pub"),
        host_key,
        "the host key changed"
    );
    assert_eq!(
        guest_file(work.path(), &overlay, "/etc/machine-id"),
        machine_id,
        "the machine id changed"
    );
    eprintln!("boot times ({accel:?}): first {first_boot:.1?}, second {second_boot:.1?}");
}
