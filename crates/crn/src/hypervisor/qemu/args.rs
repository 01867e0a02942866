//! The QEMU command line.
//!
//! Programs run on `microvm` with virtio-mmio devices: no PCI, no firmware tables
//! beyond what the kernel needs, no default devices. Instances run on `q35` with the
//! same virtio devices on PCI, booted by the firmware (SeaBIOS) from their disk or from
//! a kernel given directly; a guest reboot restarts the machine rather than ending QEMU.
//! Everything the supervisor needs to find the VM again (pidfile, QMP, channel, console)
//! goes to fixed paths in the execution folder.

use super::layout::Layout;
use crate::hypervisor::{Accel, BootSource, Machine, VmSpec};
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

/// The virtio device of `kind` (`blk`, `net`, `serial`) on the machine's bus.
fn virtio(machine: Machine, kind: &str) -> String {
    match machine {
        Machine::Microvm => format!("virtio-{kind}-device"),
        Machine::Pc => format!("virtio-{kind}-pci"),
    }
}

/// The kernel command line: the machine's part first, then the caller's.
pub fn kernel_cmdline(machine: Machine, boot: &BootSource, options: &MachineOptions) -> String {
    // ttyS0 is the ISA serial port, logged to the folder. For a microVM, panic=-1 with
    // -no-reboot turns a guest panic into QEMU exiting, which the host sees at once.
    let mut cmdline = String::from("console=ttyS0");
    if machine == Machine::Microvm {
        cmdline.push_str(" panic=-1");
    }
    if options.accel == Accel::Tcg
        && let Some(khz) = options.tsc_khz
    {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    if !boot.cmdline.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(boot.cmdline.trim());
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
    let machine = spec.machine;
    match machine {
        // Option ROMs only slow the boot of a kernel loaded directly.
        Machine::Microvm => push(&["-M", "microvm,x-option-roms=off,rtc=on"]),
        Machine::Pc => push(&["-M", "q35"]),
    }
    match (options.accel, machine) {
        (Accel::Kvm, _) => push(&["-accel", "kvm", "-cpu", "host"]),
        (Accel::Tcg, Machine::Microvm) => push(&[
            "-accel",
            &format!("tcg,tb-size={}", options.tcg_tb_size_mib),
        ]),
        // A full distribution's userland expects a recent CPU (x86-64-v2 and up).
        (Accel::Tcg, Machine::Pc) => push(&[
            "-accel",
            &format!("tcg,tb-size={}", options.tcg_tb_size_mib),
            "-cpu",
            "max",
        ]),
    }
    push(&[
        "-smp",
        &spec.vcpus.to_string(),
        "-m",
        &format!("{}M", spec.memory_mib),
    ]);
    push(&["-nodefaults", "-no-user-config", "-nographic"]);
    if machine == Machine::Microvm {
        push(&["-no-reboot"]);
    }

    if let Some(boot) = &spec.boot {
        push(&["-kernel", &boot.kernel.display().to_string()]);
        if let Some(initramfs) = &boot.initramfs {
            push(&["-initrd", &initramfs.display().to_string()]);
        }
        push(&["-append", &kernel_cmdline(machine, boot, options)]);
    }

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

    // Drives first, in order: the guest names virtio disks in creation order. Without
    // a kernel, the firmware boots the first one.
    for (i, drive) in spec.drives.iter().enumerate() {
        let mut device = format!("{},drive=drive{i}", virtio(machine, "blk"));
        if let Some(serial) = &drive.serial {
            device.push_str(&format!(",serial={serial}"));
        }
        // With a kernel given, QEMU's own loader takes boot index 0.
        if machine == Machine::Pc && spec.boot.is_none() && i == 0 {
            device.push_str(",bootindex=0");
        }
        push(&[
            "-drive",
            &format!(
                "id=drive{i},file={},format={},if=none,readonly={}",
                opt_value(&drive.path),
                drive.format.as_str(),
                if drive.read_only { "on" } else { "off" }
            ),
            "-device",
            &device,
        ]);
    }

    // The channel: a virtio-serial port whose host end is a listening Unix socket.
    // wait=off: QEMU must not block its start until the host connects.
    push(&[
        "-device",
        &format!("{},max_ports=2", virtio(machine, "serial")),
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
            &format!("{},netdev=net0,mac={}", virtio(machine, "net"), net.mac),
        ]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{ChannelSpec, Drive, DriveFormat, TapSpec};
    use std::path::PathBuf;

    fn spec() -> VmSpec {
        VmSpec {
            machine: Machine::Microvm,
            vcpus: 2,
            memory_mib: 256,
            boot: Some(BootSource {
                kernel: "/k/vmlinuz".into(),
                initramfs: Some("/k/initrd".into()),
                cmdline: "aleph.root=/dev/vda".into(),
            }),
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
        assert!(line.contains("-no-reboot"), "{line}");
        assert!(line.contains("virtio-blk-device,drive=drive0 "), "{line}");
        assert_eq!(
            kernel_cmdline(spec.machine, spec.boot.as_ref().unwrap(), &options),
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

    #[test]
    fn pc_machine_boots_its_disk_through_firmware_with_pci_devices_and_may_reboot() {
        let mut spec = spec();
        spec.machine = Machine::Pc;
        spec.boot = None;
        spec.drives = vec![
            Drive::writable("/x/rootfs.qcow2").with_format(DriveFormat::Qcow2),
            Drive::read_only("/x/cloud-init.img"),
            Drive::writable("/v/data.ext4").with_serial("vol-data"),
        ];
        spec.network = Some(TapSpec {
            tap: "vmtap3".into(),
            mac: "02:00:ac:10:03:02".into(),
        });
        let options = MachineOptions {
            accel: Accel::Tcg,
            tcg_tb_size_mib: 24,
            tsc_khz: None,
        };
        let line = joined(&build(&spec, &Layout::new(&spec.folder), &options));
        assert!(line.contains("-M q35"), "{line}");
        assert!(line.contains("-cpu max"), "{line}");
        assert!(!line.contains("-no-reboot"), "{line}");
        assert!(!line.contains("-kernel"), "{line}");
        assert!(
            line.contains("file=/x/rootfs.qcow2,format=qcow2,if=none,readonly=off"),
            "{line}"
        );
        assert!(
            line.contains("virtio-blk-pci,drive=drive0,bootindex=0 "),
            "{line}"
        );
        assert!(
            line.contains("virtio-blk-pci,drive=drive2,serial=vol-data"),
            "{line}"
        );
        assert!(line.contains("virtio-serial-pci,max_ports=2"), "{line}");
        assert!(
            line.contains("virtio-net-pci,netdev=net0,mac=02:00:ac:10:03:02"),
            "{line}"
        );
    }
}
