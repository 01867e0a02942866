//! `aleph-node bench vm`: from "start the VM" to the app's first response through our
//! stack (QEMU driver, guest agent, HTTP/2 channel), against a bare reference measured
//! in the same run, and QEMU's memory per idle VM.
//!
//! The reference is the same QEMU machine (microvm, same acceleration, TCG cache, vCPUs,
//! memory, kernel, kernel modules and runtime squashfs) with none of our parts: its
//! initramfs is ours with `/init` replaced by a busybox shell script that loads the
//! same modules, mounts the runtime under a tmpfs overlay, and starts the same uvicorn
//! command on a TCP port, reached through QEMU's user-mode network (`hostfwd` on
//! loopback). A virtio-net card and slirp cost the reference a little; our stack pays
//! for virtio-serial, the agent and the channel instead. Runs alternate which side goes
//! first so that neither always gets the warmer host.

use aleph_crn::channel::AgentChannel;
use aleph_crn::hypervisor::qemu::memory::{self, MemoryUsage};
use aleph_crn::hypervisor::qemu::{QemuConfig, QemuDriver, host_tsc_khz};
use aleph_crn::hypervisor::{
    Accel, BootSource, ChannelSpec, Drive, Hypervisor, Machine, RunningVm, StopTimeouts, VmSpec,
    stop,
};
use aleph_protocol::agent::{AgentConfig, CodeConfig, CodeEncoding, CodeInterface};
use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The app both sides serve.
pub(crate) const APP: &str = r#"from fastapi import FastAPI
app = FastAPI()
@app.get("/")
async def root():
    return {"message": "Hello World"}
"#;
pub(crate) const EXPECTED: &str = r#"{"message":"Hello World"}"#;

/// Longest a side may take to answer before the run counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(clap::Args)]
pub struct Args {
    /// Where the guest images are cached (`aleph-node images build`).
    #[arg(long, env = "ALEPH_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Kernel (bzImage); default: the cached guest image.
    #[arg(long)]
    pub(crate) kernel: Option<PathBuf>,
    /// Initramfs with the agent as /init; default: the cached guest image.
    #[arg(long)]
    pub(crate) initramfs: Option<PathBuf>,
    /// Python runtime squashfs; default: the cached guest image.
    #[arg(long)]
    pub(crate) runtime: Option<PathBuf>,
    /// Pairs of runs (ours, reference); the medians are compared.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    #[arg(long, default_value_t = 512)]
    pub(crate) memory_mib: u32,
    #[arg(long, default_value_t = 1)]
    pub(crate) vcpus: u8,
    /// Seconds a VM sits idle after its first answer before its memory is read.
    #[arg(long, default_value_t = 5)]
    pub(crate) idle_seconds: u64,
    /// TCG translation cache per VM, MiB (both sides).
    #[arg(long, default_value_t = QemuConfig::default().tcg_tb_size_mib)]
    pub(crate) tcg_tb_size_mib: u32,
    /// A statically linked busybox for the reference's init.
    #[arg(long, default_value = "/bin/busybox")]
    pub(crate) busybox: PathBuf,
}

pub(crate) struct Images {
    pub(crate) kernel: PathBuf,
    pub(crate) initramfs: PathBuf,
    pub(crate) runtime: PathBuf,
}

/// The paths given, else the images cached by `aleph-node images build`.
pub(crate) fn images(args: &Args) -> Result<Images> {
    if let (Some(kernel), Some(initramfs), Some(runtime)) =
        (&args.kernel, &args.initramfs, &args.runtime)
    {
        return Ok(Images {
            kernel: kernel.clone(),
            initramfs: initramfs.clone(),
            runtime: runtime.clone(),
        });
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(aleph_crn::images::default_data_dir);
    let cached = aleph_crn::images::cached(&data_dir).with_context(|| {
        format!(
            "no guest images in {}: run `aleph-node images build` first, or give --kernel, --initramfs and --runtime",
            data_dir.display()
        )
    })?;
    Ok(Images {
        kernel: args.kernel.clone().unwrap_or(cached.vmlinuz),
        initramfs: args.initramfs.clone().unwrap_or(cached.initramfs),
        runtime: args.runtime.clone().unwrap_or(cached.python_runtime),
    })
}

pub async fn run(args: Args) -> Result<()> {
    ensure!(args.runs > 0, "--runs must be at least 1");
    let images = images(&args)?;
    let work = tempfile::Builder::new()
        .prefix("aleph-bench-vm-")
        .tempdir()?;
    let code = work.path().join("main.py.img");
    std::fs::write(&code, padded(APP.as_bytes()))?;
    let reference_initramfs = work.path().join("reference.cpio");
    std::fs::write(
        &reference_initramfs,
        reference_initramfs_bytes(&images, &args.busybox)?,
    )?;
    // Read the runtime once so the first run does not pay for a cold page cache.
    std::fs::read(&images.runtime).context("reading the runtime")?;

    let driver = QemuDriver::new(QemuConfig {
        state_dir: Some(
            args.data_dir
                .clone()
                .unwrap_or_else(aleph_crn::images::default_data_dir),
        ),
        tcg_tb_size_mib: args.tcg_tb_size_mib,
        ..QemuConfig::default()
    });
    let verdict = driver.accel_for(&images.kernel).await;
    println!("acceleration: {:?} ({})", verdict.accel, verdict.reason);
    println!(
        "machine: microvm, {} vCPU, {} MiB, TCG cache {} MiB; app: FastAPI hello under uvicorn",
        args.vcpus,
        args.memory_mib,
        driver.config().tcg_tb_size_mib
    );

    let bench = Bench {
        args: &args,
        images: &images,
        driver: &driver,
        accel: verdict.accel,
        work: work.path(),
        code: &code,
        reference_initramfs: &reference_initramfs,
    };
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    let mut ours_memory = None;
    // QEMU's CPU time until the first answer: the work each side makes the host do,
    // which a busy host's scheduling does not blur the way it blurs wall-clock time.
    let (mut ours_cpu, mut bare_cpu) = (Vec::new(), Vec::new());
    let mut bare_memory = None;
    for run in 0..args.runs {
        // Alternate who goes first.
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_ours in order {
            let measure_memory = run == 0;
            if is_ours {
                let (elapsed, steps, usage) = bench.ours(run, measure_memory).await?;
                println!(
                    "run {run}: ours      {:>6.2} s, QEMU CPU {:>6.2} s  (VM running {:.2} s, agent up {:.2} s, app started {:.2} s)",
                    elapsed.as_secs_f64(),
                    steps[3].as_secs_f64(),
                    steps[0].as_secs_f64(),
                    steps[1].as_secs_f64(),
                    steps[2].as_secs_f64()
                );
                ours.push(elapsed);
                ours_cpu.push(steps[3]);
                ours_memory = ours_memory.or(usage);
            } else {
                let (elapsed, cpu, usage) = bench.reference(run, measure_memory).await?;
                println!(
                    "run {run}: reference {:>6.2} s, QEMU CPU {:>6.2} s",
                    elapsed.as_secs_f64(),
                    cpu.as_secs_f64()
                );
                bare.push(elapsed);
                bare_cpu.push(cpu);
                bare_memory = bare_memory.or(usage);
            }
        }
    }
    let (ours_median, bare_median) = (median(&ours), median(&bare));
    println!(
        "start → first response, median of {}: ours {:.2} s, reference {:.2} s, ratio {:.3} (target ≤ 1.10)",
        args.runs,
        ours_median.as_secs_f64(),
        bare_median.as_secs_f64(),
        ours_median.as_secs_f64() / bare_median.as_secs_f64()
    );
    let (ours_cpu, bare_cpu) = (median(&ours_cpu), median(&bare_cpu));
    println!(
        "QEMU CPU time until the first response, median: ours {:.2} s, reference {:.2} s, ratio {:.3}",
        ours_cpu.as_secs_f64(),
        bare_cpu.as_secs_f64(),
        ours_cpu.as_secs_f64() / bare_cpu.as_secs_f64()
    );
    for (name, usage) in [("ours", ours_memory), ("reference", bare_memory)] {
        if let Some(u) = usage {
            println!(
                "idle VM memory ({name}, after {} s idle): RSS {:.1} MiB, guest RAM touched {:.1} MiB, QEMU beyond guest RAM {:.1} MiB RSS / {:.1} MiB private (target ≤ 40 MiB)",
                args.idle_seconds,
                mib(u.rss_kib),
                mib(u.guest_rss_kib),
                mib(u.overhead_rss_kib),
                mib(u.overhead_private_kib)
            );
        }
    }
    Ok(())
}

pub(crate) struct Bench<'a> {
    pub(crate) args: &'a Args,
    pub(crate) images: &'a Images,
    pub(crate) driver: &'a QemuDriver,
    pub(crate) accel: Accel,
    pub(crate) work: &'a Path,
    pub(crate) code: &'a Path,
    pub(crate) reference_initramfs: &'a Path,
}

impl Bench<'_> {
    /// Our stack: driver start, agent up, configure (starts uvicorn), first request.
    async fn ours(
        &self,
        run: usize,
        measure_memory: bool,
    ) -> Result<(Duration, [Duration; 4], Option<MemoryUsage>)> {
        let spec = VmSpec {
            vcpus: self.args.vcpus,
            memory_mib: self.args.memory_mib,
            machine: Machine::Microvm,
            boot: Some(BootSource {
                kernel: self.images.kernel.clone(),
                initramfs: Some(self.images.initramfs.clone()),
                cmdline: "quiet aleph.root=/dev/vda".into(),
            }),
            drives: vec![
                Drive::read_only(&self.images.runtime),
                Drive::read_only(self.code),
            ],
            channel: ChannelSpec::default(),
            network: None,
            folder: self.work.join(format!("ours-{run}")),
        };
        let config = AgentConfig {
            hostname: "bench".into(),
            code: CodeConfig {
                device: "/dev/vdb".into(),
                encoding: CodeEncoding::Plain,
                size: APP.len() as u64,
                entrypoint: "main:app".into(),
                interface: CodeInterface::Asgi,
                args: vec![],
            },
            variables: Default::default(),
            volumes: vec![],
            network: None,
            startup_timeout_seconds: 120,
        };
        let started = Instant::now();
        let vm = self.driver.start(&spec).await?;
        let guard = KillOnDrop(vm.as_ref());
        let running = started.elapsed();
        let channel = AgentChannel::new(vm.channel());
        channel
            .wait_ready(ANSWER_TIMEOUT)
            .await
            .context("waiting for the agent")?;
        let agent_up = started.elapsed();
        channel
            .configure(&config)
            .await
            .context("configuring the app")?;
        let app_started = started.elapsed();
        let response = channel
            .forward(http::Request::get("/").body(Empty::<Bytes>::new())?)
            .await?;
        ensure!(
            response.status().is_success(),
            "the app answered {}",
            response.status()
        );
        let body = response.into_body().collect().await?.to_bytes();
        let elapsed = started.elapsed();
        let cpu = memory::cpu_time(vm.pid()).unwrap_or_default();
        ensure!(
            body == EXPECTED.as_bytes(),
            "unexpected answer {:?}",
            String::from_utf8_lossy(&body)
        );

        let usage = if measure_memory {
            tokio::time::sleep(Duration::from_secs(self.args.idle_seconds)).await;
            Some(memory::usage(vm.pid(), self.args.memory_mib)?)
        } else {
            None
        };
        let shutdown = Box::pin(async {
            let _ = channel.shutdown().await;
        });
        stop(vm.as_ref(), Some(shutdown), StopTimeouts::default()).await;
        drop(guard);
        Ok((elapsed, [running, agent_up, app_started, cpu], usage))
    }

    /// The bare reference: the same machine, a shell init, uvicorn on a forwarded port.
    async fn reference(
        &self,
        run: usize,
        measure_memory: bool,
    ) -> Result<(Duration, Duration, Option<MemoryUsage>)> {
        let (mut child, _, elapsed) = self
            .start_reference(&self.work.join(format!("reference-{run}")))
            .await?;
        let pid = child.id().context("reference pid")?;
        let cpu = memory::cpu_time(pid).unwrap_or_default();
        let usage = if measure_memory {
            tokio::time::sleep(Duration::from_secs(self.args.idle_seconds)).await;
            Some(memory::usage(pid, self.args.memory_mib)?)
        } else {
            None
        };
        child.start_kill()?;
        child.wait().await?;
        Ok((elapsed, cpu, usage))
    }

    /// Starts the reference in `folder` and waits for its first answer; returns the
    /// QEMU process (killed when dropped), the forwarded port and the time taken.
    pub(crate) async fn start_reference(
        &self,
        folder: &Path,
    ) -> Result<(tokio::process::Child, u16, Duration)> {
        std::fs::create_dir_all(folder)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let accel = match self.accel {
            Accel::Kvm => "kvm".to_string(),
            Accel::Tcg => format!("tcg,tb-size={}", self.driver.config().tcg_tb_size_mib),
        };
        let mut cmdline = String::from("console=ttyS0 panic=-1 quiet aleph.root=/dev/vda");
        if self.accel == Accel::Tcg
            && let Some(khz) = host_tsc_khz()
        {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        let mut command = tokio::process::Command::new(&self.driver.config().binary);
        command
            .args(["-M", "microvm,x-option-roms=off,rtc=on", "-accel", &accel])
            .args(if self.accel == Accel::Kvm {
                &["-cpu", "host"][..]
            } else {
                &[][..]
            })
            .args([
                "-smp",
                &self.args.vcpus.to_string(),
                "-m",
                &format!("{}M", self.args.memory_mib),
            ])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.images.kernel)
            .arg("-initrd")
            .arg(self.reference_initramfs)
            .args(["-append", &cmdline])
            .arg("-serial")
            .arg(format!("file:{}", folder.join("serial.log").display()))
            .arg("-drive")
            .arg(format!(
                "id=runtime,file={},format=raw,if=none,readonly=on",
                self.images.runtime.display().to_string().replace(',', ",,")
            ))
            .args(["-device", "virtio-blk-device,drive=runtime"])
            .args([
                "-netdev",
                &format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:8000"),
            ])
            .args(["-device", "virtio-net-device,netdev=net0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(folder.join("qemu.log"))?)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command.spawn().context("starting qemu-system-x86_64")?;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the reference VM ended ({status}); see {}",
                    folder.display()
                );
            }
            if let Some(body) = http_get(port).await
                && body.contains("Hello World")
            {
                break;
            }
            if started.elapsed() > ANSWER_TIMEOUT {
                bail!("the reference VM did not answer in {ANSWER_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((child, port, started.elapsed()))
    }
}

/// Kills the VM if the bench fails half-way.
struct KillOnDrop<'a>(&'a dyn RunningVm);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// One HTTP/1.1 GET / on the forwarded port; `None` until the guest's app answers.
async fn http_get(port: u16) -> Option<String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer.starts_with("HTTP/1.1 200").then_some(answer)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Our initramfs, followed by a second archive that replaces `/init` with a shell
/// script (the kernel unpacks concatenated archives in order, later files winning).
pub(crate) fn reference_initramfs_bytes(images: &Images, busybox: &Path) -> Result<Vec<u8>> {
    let busybox_bytes = std::fs::read(busybox).with_context(|| {
        format!(
            "reading {} (Debian package busybox-static)",
            busybox.display()
        )
    })?;
    ensure!(
        is_static_elf(&busybox_bytes),
        "{} is not a static executable (install busybox-static)",
        busybox.display()
    );
    let mut bytes = std::fs::read(&images.initramfs)?;
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    let mut overlay = Cpio::default();
    overlay.dir("bin");
    overlay.file("bin/busybox", 0o755, &busybox_bytes);
    overlay.dir("app");
    overlay.file("app/main.py", 0o644, APP.as_bytes());
    overlay.file("init", 0o755, REFERENCE_INIT.as_bytes());
    bytes.extend_from_slice(&overlay.finish());
    Ok(bytes)
}

/// The reference's init: what the agent does at boot, as plainly as a shell can.
const REFERENCE_INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /mnt/lower /mnt/rw /mnt/root
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
while read stage file; do $B insmod /lib/modules/$file; done < /lib/modules/order
root=$($B sed -n 's/.*aleph.root=\([^ ]*\).*/\1/p' /proc/cmdline)
while [ ! -b "$root" ]; do $B usleep 1000; done
$B mount -t squashfs -o ro "$root" /mnt/lower
$B mount -t tmpfs tmpfs /mnt/rw
$B mkdir -p /mnt/rw/upper /mnt/rw/work
$B mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /mnt/root
$B mkdir -p /mnt/root/opt/code /mnt/root/proc /mnt/root/sys /mnt/root/dev /mnt/root/tmp /mnt/root/run
$B cp /app/main.py /mnt/root/opt/code/main.py
$B mount --move /proc /mnt/root/proc
$B mount --move /sys /mnt/root/sys
$B mount --move /dev /mnt/root/dev
$B ip link set lo up
$B ip link set eth0 up
$B ip addr add 10.0.2.15/24 dev eth0
cd /mnt/root
exec $B chroot /mnt/root /usr/bin/python3 -m uvicorn --host 0.0.0.0 --port 8000 --app-dir /opt/code --lifespan on main:app
"#;

fn is_static_elf(bytes: &[u8]) -> bool {
    // ELF64 little-endian: look for a PT_INTERP program header.
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u64_at =
        |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or_default()) as usize;
    let u16_at =
        |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap_or_default()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        at + 4 <= bytes.len()
            && u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) != 3
    })
}

/// A `newc` cpio archive writer, enough for a few files.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.inode = 0;
        let fields = [0u32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(b"TRAILER!!!\0");
        self.pad();
        self.out
    }
}

/// Block devices come in 512-byte sectors; pad the code to whole sectors.
fn padded(code: &[u8]) -> Vec<u8> {
    let mut bytes = code.to_vec();
    bytes.resize(code.len().div_ceil(512) * 512, 0);
    bytes
}

pub(crate) fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2
    } else {
        sorted[mid]
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
