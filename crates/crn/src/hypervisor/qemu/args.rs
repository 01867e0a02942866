//! The QEMU command line for a program microVM.
//!
//! `microvm` with virtio-mmio devices: no PCI, no firmware tables beyond what the kernel
//! needs, no default devices. Everything the supervisor needs to find the VM again
//! (pidfile, QMP, channel, console) goes to fixed paths in the execution folder.

use super::layout::Layout;
use crate::hypervisor::{Accel, VmSpec};
use std::ffi::OsString;
use std::path::Path;

/// Knobs of the machine that are the node's choice rather than the program's.
#[derive(Debug, Clone, Copy)]
pub struct MachineOptions {
    pub accel: Accel,
    /// Size of TCG's translation cache. QEMU's default (up to 1 GiB) fills with code
    /// the guest ran once at boot and stays resident; a small cache is re-filled on
    /// demand and keeps an idle VM cheap.
    pub tcg_tb_size_mib: u32,
    /// The host's TSC rate, given to the guest under TCG: its PIT calibration times
    /// emulated loops and fails now and then on a busy host, after which the kernel can
    /// hang before the console comes up.
    pub tsc_khz: Option<u64>,
}

/// Escapes a value for QEMU's `key=value,...` option syntax (a comma is doubled).
fn opt_value(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The kernel command line: the machine's part first, then the caller's.
pub fn kernel_cmdline(spec: &VmSpec, options: &MachineOptions) -> String {
    // ttyS0 is the microvm's ISA serial port, logged to the folder. panic=-1 with
    // -no-reboot turns a guest panic into QEMU exiting, which the host sees at once.
    let mut cmdline = String::from("console=ttyS0 panic=-1");
    if options.accel == Accel::Tcg
        && let Some(khz) = options.tsc_khz
    {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    if !spec.boot.cmdline.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(spec.boot.cmdline.trim());
    }
    cmdline
}

pub fn build(spec: &VmSpec, layout: &Layout, options: &MachineOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));

    let name = spec
        .folder
        .file_name()
        .map(|n| n.to_string_lossy().replace(',', "_"))
        .unwrap_or_else(|| "aleph-vm".into());
    push(&["-name", &name]);
    // Option ROMs only slow the boot of a kernel loaded directly.
    push(&["-M", "microvm,x-option-roms=off,rtc=on"]);
    match options.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&[
            "-accel",
            &format!("tcg,tb-size={}", options.tcg_tb_size_mib),
        ]),
    }
    push(&[
        "-smp",
        &spec.vcpus.to_string(),
        "-m",
        &format!("{}M", spec.memory_mib),
    ]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);

    push(&["-kernel", &spec.boot.kernel.display().to_string()]);
    if let Some(initramfs) = &spec.boot.initramfs {
        push(&["-initrd", &initramfs.display().to_string()]);
    }
    push(&["-append", &kernel_cmdline(spec, options)]);

    push(&[
        "-chardev",
        &format!("file,id=console,path={}", opt_value(&layout.serial_log())),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            opt_value(&layout.qmp_socket())
        ),
    ]);
    push(&["-pidfile", &layout.pidfile().display().to_string()]);

    // Drives first, in order: the guest names virtio-mmio disks in creation order.
    for (i, drive) in spec.drives.iter().enumerate() {
        push(&[
            "-drive",
            &format!(
                "id=drive{i},file={},format=raw,if=none,readonly={}",
                opt_value(&drive.path),
                if drive.read_only { "on" } else { "off" }
            ),
            "-device",
            &format!("virtio-blk-device,drive=drive{i}"),
        ]);
    }

    // The channel: a virtio-serial port whose host end is a listening Unix socket.
    // wait=off: QEMU must not block its start until the host connects.
    push(&[
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
        &format!(
            "socket,id=channel,path={},server=on,wait=off",
            opt_value(&layout.channel_socket())
        ),
        "-device",
        &format!(
            "virtserialport,chardev=channel,name={}",
            spec.channel.port_name
        ),
    ]);

    if let Some(net) = &spec.network {
        push(&[
            "-netdev",
            &format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap),
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={}", net.mac),
        ]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{BootSource, ChannelSpec, Drive};
    use std::path::PathBuf;

    fn spec() -> VmSpec {
        VmSpec {
            vcpus: 2,
            memory_mib: 256,
            boot: BootSource {
                kernel: "/k/vmlinuz".into(),
                initramfs: Some("/k/initrd".into()),
                cmdline: "aleph.root=/dev/vda".into(),
            },
            drives: vec![
                Drive::read_only("/img/runtime,1.squashfs"),
                Drive::writable("/img/code"),
            ],
            channel: ChannelSpec::default(),
            network: None,
            folder: PathBuf::from("/run/x/exec-1"),
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn tcg_machine_has_limits_drives_in_order_and_the_channel() {
        let spec = spec();
        let layout = Layout::new(&spec.folder);
        let options = MachineOptions {
            accel: Accel::Tcg,
            tcg_tb_size_mib: 24,
            tsc_khz: Some(2_000_000),
        };
        let line = joined(&build(&spec, &layout, &options));
        assert!(line.contains("-accel tcg,tb-size=24"), "{line}");
        assert!(line.contains("-smp 2 -m 256M"), "{line}");
        let first = line
            .find("file=/img/runtime,,1.squashfs,format=raw,if=none,readonly=on")
            .unwrap();
        let second = line
            .find("file=/img/code,format=raw,if=none,readonly=off")
            .unwrap();
        assert!(first < second, "{line}");
        assert!(
            line.contains("virtserialport,chardev=channel,name=org.aleph.agent.0"),
            "{line}"
        );
        assert!(
            line.contains("path=/run/x/exec-1/agent.sock,server=on,wait=off"),
            "{line}"
        );
        assert!(line.contains("-pidfile /run/x/exec-1/qemu.pid"), "{line}");
        assert!(!line.contains("-netdev"), "{line}");
        assert_eq!(
            kernel_cmdline(&spec, &options),
            "console=ttyS0 panic=-1 tsc_early_khz=2000000 aleph.root=/dev/vda"
        );
    }

    #[test]
    fn kvm_machine_uses_the_host_cpu_and_no_clock_hint() {
        let spec = spec();
        let options = MachineOptions {
            accel: Accel::Kvm,
            tcg_tb_size_mib: 24,
            tsc_khz: Some(2_000_000),
        };
        let line = joined(&build(&spec, &Layout::new(&spec.folder), &options));
        assert!(line.contains("-accel kvm -cpu host"), "{line}");
        assert!(!line.contains("tsc_early_khz"), "{line}");
    }
}
