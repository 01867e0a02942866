//! `aleph-node bench program`: on-demand programs through a CRN, against bare floors
//! measured in the same run.
//!
//! - **Cold start**: the first request to a program whose VM is not running, through
//!   the CRN's HTTP API (program message read from the CCN, files already cached,
//!   admission, drives, VM start, agent, app start, the request), against the bare
//!   QEMU reference of `aleph-node bench vm` (same machine, kernel, modules and
//!   runtime; a shell init starting the same uvicorn command; first answer on a
//!   forwarded port). The code is the same FastAPI app, as a plain file, on both sides.
//! - **Warm requests**: latency p50/p99 of sequential requests and requests per second
//!   with concurrent clients, through the CRN (HTTP/1.1 to the CRN, HTTP/2 over the
//!   VM's channel to the agent, which proxies to uvicorn's Unix socket) against a
//!   direct request to the same app under the same uvicorn in the reference VM (HTTP/1.1
//!   through QEMU's user-mode network on a loopback `hostfwd` port). Our program VMs
//!   have no network card, so "the same app in the same VM" is the identical app in an
//!   identical VM; the channel alone (the CRN's HTTP layer left out) is reported too.
//!
//! Both sides use keep-alive connections; blocks alternate sides so neither always
//! gets the quieter host.

use super::vm::{self, APP, EXPECTED, median};
use aleph_ccn::{CcnConfig, FundedAccount};
use aleph_crn::CrnConfig;
use aleph_crn::execution::prepare::BootImages;
use aleph_crn::hypervisor::qemu::{QemuConfig, QemuDriver};
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
#[group(id = "bench_program")]
pub struct Args {
    /// The machine, images and runs, as for `bench vm`.
    #[command(flatten)]
    machine: vm::Args,
    /// Sequential warm requests per block and side.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Blocks of warm measures (alternating sides).
    #[arg(long, default_value_t = 3)]
    blocks: usize,
    /// Concurrent clients for requests per second.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds each throughput measure lasts.
    #[arg(long, default_value_t = 3)]
    throughput_seconds: u64,
    /// Skips the cold-start runs (minutes under TCG) and measures warm requests only.
    #[arg(long)]
    warm_only: bool,
}

/// Signs and posts an inline message to the in-process CCN; returns its hash.
async fn post(
    http: &reqwest::Client,
    ccn: &str,
    signer: &Signer,
    message_type: MessageType,
    content: Value,
) -> Result<String> {
    let message = signer.sign(message_type, content, Some("BENCH"))?;
    let response = http
        .post(format!("{ccn}/api/v0/messages"))
        .json(&json!({"sync": true, "message": message}))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status.is_success(), "{message_type} refused: {body}");
    Ok(message.item_hash.to_string())
}

/// One GET that must answer the hello JSON; returns how long it took.
async fn hello(http: &reqwest::Client, url: &str) -> Result<Duration> {
    let started = Instant::now();
    let response = http.get(url).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    ensure!(
        status.is_success() && body == EXPECTED.as_bytes(),
        "{url} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn qemu_cpu(pid: u32) -> f64 {
    aleph_crn::execution::metering::read(pid).map_or(0.0, |u| u.cpu_time_user + u.cpu_time_system)
}

fn median_f64(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Requests per second from `concurrency` clients looping for `seconds`.
async fn throughput(
    http: &reqwest::Client,
    url: &str,
    concurrency: usize,
    seconds: u64,
) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let clients = (0..concurrency).map(|_| async {
        let mut done = 0u64;
        while Instant::now() < deadline {
            hello(http, url).await?;
            done += 1;
        }
        Ok::<_, anyhow::Error>(done)
    });
    let mut total = 0;
    for done in futures::future::join_all(clients).await {
        total += done?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(args: Args) -> Result<()> {
    let machine = &args.machine;
    ensure!(
        machine.runs > 0 && args.blocks > 0 && args.requests > 0,
        "runs, blocks and requests must be at least 1"
    );
    ensure!(
        machine.tcg_tb_size_mib == QemuConfig::default().tcg_tb_size_mib,
        "the CRN runs VMs with the default TCG cache; leave --tcg-tb-size-mib at its default"
    );
    let images = vm::images(machine)?;
    let work = tempfile::Builder::new()
        .prefix("aleph-bench-program-")
        .tempdir_in("/tmp")?;
    let reference_initramfs = work.path().join("reference.cpio");
    std::fs::write(
        &reference_initramfs,
        vm::reference_initramfs_bytes(&images, &machine.busybox)?,
    )?;
    let images_dir = machine
        .data_dir
        .clone()
        .unwrap_or_else(aleph_crn::images::default_data_dir);
    let driver = QemuDriver::new(QemuConfig {
        state_dir: Some(images_dir.clone()),
        tcg_tb_size_mib: machine.tcg_tb_size_mib,
        ..QemuConfig::default()
    });
    let verdict = driver.accel_for(&images.kernel).await;
    println!("acceleration: {:?} ({})", verdict.accel, verdict.reason);
    println!(
        "machine: microvm, {} vCPU, {} MiB, TCG cache {} MiB; app: FastAPI hello under uvicorn",
        machine.vcpus,
        machine.memory_mib,
        driver.config().tcg_tb_size_mib
    );
    let bench = vm::Bench {
        args: machine,
        images: &images,
        driver: &driver,
        accel: verdict.accel,
        work: work.path(),
        code: work.path(),
        reference_initramfs: &reference_initramfs,
    };

    // A CCN holding the runtime, the code and the PROGRAM; a CRN reading from it.
    let (signer, _) = Signer::generate();
    let ccn = aleph_ccn::start(CcnConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: work.path().join("ccn"),
        database_url: None,
        funded: vec![FundedAccount {
            address: signer.address().to_owned(),
            balance: 1e9,
            credit_balance: 0,
        }],
    })
    .await?;
    let http = reqwest::Client::new();
    let code = work.path().join("main.py");
    std::fs::write(&code, APP)?;
    let mut stores = Vec::new();
    for file in [&images.runtime, &code] {
        // The runtime may be over the HTTP upload limit: into the file store directly.
        let hash = ccn.ccn().add_local_file(file).await?;
        let content = json!({"item_type": "storage", "item_hash": hash});
        stores.push(post(&http, &ccn.url(), &signer, MessageType::Store, content).await?);
    }
    let program = post(
        &http,
        &ccn.url(),
        &signer,
        MessageType::Program,
        json!({
            "type": "vm-function", "allow_amend": false,
            "code": {"encoding": "plain", "entrypoint": "main:app", "ref": stores[1]},
            "runtime": {"ref": stores[0], "use_latest": false, "comment": "python"},
            "on": {"http": true},
            "environment": {},
            "resources": {"vcpus": machine.vcpus, "memory": machine.memory_mib, "seconds": 60},
        }),
    )
    .await?;
    let crn = aleph_crn::start_with_images(
        CrnConfig {
            listen: "127.0.0.1:0".parse()?,
            ccn_url: ccn.url(),
            data_dir: work.path().join("crn"),
            images_dir: Some(images_dir),
            watch_updates: false,
            ..CrnConfig::default()
        },
        BootImages {
            kernel: images.kernel.clone(),
            initramfs: images.initramfs.clone(),
        },
    )
    .await?;
    let url = format!("{}/vm/{program}/", crn.url());
    let result = measure(&args, &bench, &crn, &program, &url, &http).await;
    crn.shutdown_and_stop_vms().await;
    ccn.shutdown().await;
    result
}

async fn measure(
    args: &Args,
    bench: &vm::Bench<'_>,
    crn: &aleph_crn::CrnHandle,
    program: &str,
    url: &str,
    http: &reqwest::Client,
) -> Result<()> {
    let machine = &args.machine;
    // The first start downloads the runtime into the CRN's cache: not measured.
    let first = hello(http, url).await?;
    println!(
        "first start (runtime downloaded from the CCN): {:.2} s",
        first.as_secs_f64()
    );
    crn.pool().stop(program, "bench").await;

    let mut ours = Vec::new();
    let mut bare = Vec::new();
    // CPU time each QEMU used until the first answer: the work a start makes the host
    // do, which a busy shared host blurs less than wall-clock time.
    let (mut ours_cpu, mut bare_cpu) = (Vec::new(), Vec::new());
    let cold_runs = if args.warm_only { 0 } else { machine.runs };
    for run in 0..cold_runs {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_ours in order {
            if is_ours {
                let elapsed = hello(http, url).await?;
                let running = crn.pool().running();
                let steps = running.first().map(|e| e.startup).unwrap_or_default();
                ours_cpu.push(running.first().map_or(0.0, |e| qemu_cpu(e.vm().pid())));
                let in_vm = steps.vm + steps.agent + steps.app;
                println!(
                    "run {run}: CRN cold start {:>6.2} s  (QEMU CPU {:.2} s; message {:.3} s, prepare {:.3} s, VM running {:.2} s, agent up {:.2} s, app started {:.2} s; rest of the CRN {:.3} s)",
                    elapsed.as_secs_f64(),
                    ours_cpu.last().copied().unwrap_or_default(),
                    steps.message.as_secs_f64(),
                    steps.prepare.as_secs_f64(),
                    steps.vm.as_secs_f64(),
                    steps.agent.as_secs_f64(),
                    steps.app.as_secs_f64(),
                    elapsed.saturating_sub(in_vm).as_secs_f64(),
                );
                ours.push(elapsed);
                crn.pool().stop(program, "bench").await;
            } else {
                let folder = bench.work.join(format!("reference-cold-{run}"));
                let (mut child, _, elapsed) = bench.start_reference(&folder).await?;
                let cpu = child.id().map_or(0.0, qemu_cpu);
                bare_cpu.push(cpu);
                println!(
                    "run {run}: reference    {:>6.2} s  (QEMU CPU {cpu:.2} s)",
                    elapsed.as_secs_f64()
                );
                bare.push(elapsed);
                child.start_kill()?;
                child.wait().await?;
            }
        }
    }
    if cold_runs > 0 {
        let (ours_median, bare_median) = (median(&ours), median(&bare));
        println!(
            "cold start → first response, median of {cold_runs}: CRN {:.2} s, bare floor {:.2} s, ratio {:.3} (target ≤ 1.10)",
            ours_median.as_secs_f64(),
            bare_median.as_secs_f64(),
            ours_median.as_secs_f64() / bare_median.as_secs_f64()
        );
        let (ours_cpu, bare_cpu) = (median_f64(&mut ours_cpu), median_f64(&mut bare_cpu));
        println!(
            "QEMU CPU time until the first answer, median: CRN {ours_cpu:.2} s, bare floor {bare_cpu:.2} s, ratio {:.3}",
            ours_cpu / bare_cpu
        );
    }

    // Warm: both VMs up, the same app answering.
    hello(http, url).await?;
    let (mut child, port, _) = bench
        .start_reference(&bench.work.join("reference-warm"))
        .await?;
    let direct = format!("http://127.0.0.1:{port}/");
    let execution = crn
        .pool()
        .running()
        .into_iter()
        .next()
        .context("the program runs")?;
    let channel = execution.channel().clone();
    // Let both settle, then warm the connections and uvicorn's code paths.
    for _ in 0..20 {
        hello(http, url).await?;
        hello(http, &direct).await?;
    }
    let (mut through, mut straight, mut channel_only) = (Vec::new(), Vec::new(), Vec::new());
    // The agent's own health route: the channel and the agent without the app's hop.
    let mut agent_only = Vec::new();

    let (mut through_rps, mut straight_rps) = (Vec::new(), Vec::new());
    // CPU time per side: the side's QEMU and this process (client, CRN, channel). Busy
    // hosts stretch wall-clock latency; CPU time is the work each request costs.
    let (ours_pid, reference_pid) = (execution.vm().pid(), child.id().unwrap_or_default());
    let mut cpu = [[0.0f64; 2]; 4];
    let mut counted = [0usize; 4];
    for block in 0..args.blocks {
        let sides: [u8; 4] = if block % 2 == 0 {
            [0, 1, 2, 3]
        } else {
            [1, 0, 3, 2]
        };
        for side in sides {
            let qemu_pid = if side == 1 { reference_pid } else { ours_pid };
            let before = [qemu_cpu(qemu_pid), qemu_cpu(std::process::id())];
            for _ in 0..args.requests {
                match side {
                    0 => through.push(hello(http, url).await?),
                    1 => straight.push(hello(http, &direct).await?),
                    3 => {
                        let started = Instant::now();
                        channel.health().await?;
                        agent_only.push(started.elapsed());
                    }
                    _ => {
                        let started = Instant::now();
                        let request = http::Request::get("/").body(Empty::<Bytes>::new())?;
                        let response = channel.forward(request).await?;
                        let body = response.into_body().collect().await?.to_bytes();
                        ensure!(body == EXPECTED.as_bytes(), "the channel answered {body:?}");
                        channel_only.push(started.elapsed());
                    }
                }
            }
            let side = usize::from(side);
            cpu[side][0] += qemu_cpu(qemu_pid) - before[0];
            cpu[side][1] += qemu_cpu(std::process::id()) - before[1];
            counted[side] += args.requests;
        }
        for side in if block % 2 == 0 { [0, 1] } else { [1, 0] } {
            let target = if side == 0 { url } else { direct.as_str() };
            let rps = throughput(http, target, args.concurrency, args.throughput_seconds).await?;
            if side == 0 {
                through_rps.push(rps)
            } else {
                straight_rps.push(rps)
            }
        }
    }
    child.start_kill()?;
    child.wait().await?;

    for list in [
        &mut through,
        &mut straight,
        &mut channel_only,
        &mut agent_only,
    ] {
        list.sort();
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "warm latency over {} requests each: through the CRN p50 {:.2} ms p99 {:.2} ms; direct p50 {:.2} ms p99 {:.2} ms; channel alone p50 {:.2} ms p99 {:.2} ms",
        through.len(),
        ms(percentile(&through, 0.5)),
        ms(percentile(&through, 0.99)),
        ms(percentile(&straight, 0.5)),
        ms(percentile(&straight, 0.99)),
        ms(percentile(&channel_only, 0.5)),
        ms(percentile(&channel_only, 0.99)),
    );
    let per_request = |side: usize| {
        let n = counted[side].max(1) as f64;
        (cpu[side][0] * 1e3 / n, cpu[side][1] * 1e3 / n)
    };
    let [crn, direct_cpu, channel_cpu, agent_cpu] = [0, 1, 2, 3].map(per_request);
    println!(
        "CPU per sequential request (QEMU of the side + this process), ms: through the CRN {:.2} + {:.2}; direct {:.2} + {:.2}; channel alone {:.2} + {:.2}; agent alone {:.2} + {:.2}",
        crn.0,
        crn.1,
        direct_cpu.0,
        direct_cpu.1,
        channel_cpu.0,
        channel_cpu.1,
        agent_cpu.0,
        agent_cpu.1
    );
    println!(
        "agent alone (its health route over the channel, no app): p50 {:.2} ms p99 {:.2} ms",
        ms(percentile(&agent_only, 0.5)),
        ms(percentile(&agent_only, 0.99)),
    );
    println!(
        "warm p50 ratio CRN/direct {:.3} (target ≤ 1.3)",
        percentile(&through, 0.5).as_secs_f64() / percentile(&straight, 0.5).as_secs_f64()
    );
    println!(
        "requests per second with {} clients: through the CRN {:.0}, direct {:.0}, ratio {:.3}",
        args.concurrency,
        mean(&through_rps),
        mean(&straight_rps),
        mean(&through_rps) / mean(&straight_rps)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_parse_alongside_those_of_bench_vm() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from(["program", "--runs", "2", "--requests", "10", "--vcpus", "1"]);
        assert_eq!((cli.args.machine.runs, cli.args.requests), (2, 10));
    }
}
