//! `aleph-node devnet`: a whole network on loopback for development and tests.
//!
//! A CCN in this process with pre-funded accounts, the scheduler of persistent
//! programs in this process too (SQLite in `DIR/scheduler`, a 10 s grace
//! period, a 6 s lease), and `--crns N` CRNs as child processes (`aleph-node
//! crn`, see [`crn`]) serving programs from microVMs, each registered on the
//! CCN by its operator (see [`nodes`]) and heartbeating to the scheduler every
//! 2 s. The guest images are built on first use (cached); the Python runtime and
//! the instance root filesystem are published as STOREs and named the defaults
//! in the `vm-images` aggregate (see [`vm_images`]). Without the images or the
//! agent to build them, the devnet runs its CCN alone and says why; without a
//! root filesystem (it needs root and debootstrap to build), it runs programs
//! only and says why.
//!
//! The accounts' keys are derived from fixed seeds, so every devnet has the same
//! ones and scripts can rely on them; `DIR/devnet.json` says where everything
//! is, and is written only once everything answers.

mod crn;
mod messages;
mod nodes;
mod programs;
mod rootfs;
mod stores;
mod vm_images;

use aleph_ccn::{CcnConfig, CcnHandle, FundedAccount};
use aleph_crn::images::{self, BuildOptions, GuestImages, NoProgress, Progress, StderrProgress};
use aleph_protocol::signing::Signer;
use aleph_types::account::{Account, EvmAccount};
use aleph_types::chain::Chain;
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// ALEPH tokens each devnet account holds.
const FUNDED_TOKENS: f64 = 1_000_000.0;
/// Credits each devnet account holds (1,000,000 credits = 1 USD).
const FUNDED_CREDITS: u64 = 1_000_000_000_000;

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the network's state (the CCN's database and files, the CRN's
    /// executions) and `devnet.json`.
    #[arg(long)]
    data_dir: PathBuf,
    /// Loopback port of the CCN (0 picks a free one).
    #[arg(long, default_value_t = 4024)]
    ccn_port: u16,
    /// How many funded accounts to create.
    #[arg(long, default_value_t = 5)]
    accounts: usize,
    /// How many CRNs to run (each its own process, data folder and operator).
    #[arg(long, default_value_t = 3)]
    crns: usize,
    /// Loopback port of the first CRN; the others take the next ones (0: free ports).
    #[arg(long, default_value_t = 4020)]
    crn_port: u16,
    /// Loopback port of the scheduler (0 picks a free one).
    #[arg(long, default_value_t = 4030)]
    scheduler_port: u16,
    /// Seconds between two heartbeats of each CRN.
    #[arg(long, default_value_t = 2)]
    heartbeat_seconds: u64,
    /// Run the CCN only: no images, no scheduler, no CRN.
    #[arg(long)]
    no_crn: bool,
    /// Publish no instance root filesystem (programs only): neither build it
    /// nor copy its ~1 GiB into a new devnet's CCN.
    #[arg(long)]
    no_rootfs: bool,
    /// Give VMs (instances, programs with the internet) IPv6 addresses too (a ULA /64
    /// per CRN, NAT66). Off by default: it
    /// turns IPv6 forwarding on, which stops a host using SLAAC from taking router
    /// advertisements (unless accept_ra=2), so use it on a server or in a namespace.
    #[arg(long)]
    ipv6: bool,
    /// Where the guest images are built and cached (`aleph-node images build
    /// --data-dir`); default: $ALEPH_DATA_DIR, else the devnet's data folder.
    #[arg(long, env = images::DATA_DIR_ENV)]
    images_dir: Option<PathBuf>,
    /// Deploy the example program (examples/hello) and print the curl line that answers.
    #[arg(long)]
    example: bool,
    /// The folder deployed by --example (an ASGI app with main:app).
    #[arg(long, requires = "example")]
    example_dir: Option<PathBuf>,
}

/// `DIR/devnet.json`: what a client needs to use the network.
#[derive(Debug, Serialize)]
struct DevnetInfo {
    ccn_url: String,
    crn_urls: Vec<String>,
    scheduler_url: Option<String>,
    /// The scheduler's key address: the CRNs accept allocations it signs.
    scheduler_address: Option<String>,
    /// Each CRN: its URL, node hash, operator, settings file (`aleph-node crn
    /// --config` restarts it), log and process id.
    crns: Vec<CrnInfo>,
    accounts: Vec<DevnetAccount>,
    /// The STORE of the Python runtime, default of `aleph program upload`.
    default_runtime: Option<String>,
    /// The STORE of the Debian 12 root filesystem, default of instances.
    default_rootfs: Option<String>,
    /// Why there is no default root filesystem, when there is none.
    rootfs_unavailable: Option<String>,
    /// Whose `vm-images` aggregate names them (the first account).
    images_address: Option<String>,
    /// The PROGRAM the CRN runs for `/status/check/fastapi`.
    diagnostic_program: Option<String>,
    /// Why there is no CRN, when there is none.
    crn_unavailable: Option<String>,
    /// The program `--example` deployed.
    example: Option<programs::Deployed>,
}

#[derive(Debug, Clone, Serialize)]
struct CrnInfo {
    url: String,
    node_hash: Option<String>,
    /// The operator's address: it registered the node and signs its heartbeats.
    operator: Option<String>,
    config: PathBuf,
    log: PathBuf,
    data_dir: PathBuf,
    pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
struct DevnetAccount {
    address: String,
    /// `0x` and 64 hex characters.
    private_key: String,
}

pub async fn run(args: Args) -> Result<()> {
    let accounts = devnet_accounts(args.accounts.max(1))?;
    // The CRNs' operators post their registrations; funded like the accounts.
    let operators = (0..args.crns)
        .map(|i| Signer::from_hex(&nodes::operator_key(i)).map(|s| s.address().to_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    let funded = accounts
        .iter()
        .map(|a| a.address.clone())
        .chain(operators)
        .map(|address| FundedAccount {
            address,
            balance: FUNDED_TOKENS,
            credit_balance: FUNDED_CREDITS,
        })
        .collect();
    let ccn = aleph_ccn::start(CcnConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, args.ccn_port)),
        data_dir: args.data_dir.join("ccn"),
        database_url: None,
        funded,
    })
    .await
    .context("starting the devnet's CCN")?;

    let mut info = DevnetInfo {
        ccn_url: ccn.url(),
        crn_urls: Vec::new(),
        scheduler_url: None,
        scheduler_address: None,
        crns: Vec::new(),
        accounts,
        default_runtime: None,
        default_rootfs: None,
        rootfs_unavailable: None,
        images_address: None,
        diagnostic_program: None,
        crn_unavailable: None,
        example: None,
    };
    let mut compute = None;
    if args.no_crn {
        info.crn_unavailable = Some("started with --no-crn".into());
    } else {
        match start_compute(&args, &ccn, &mut info).await {
            Ok(started) => compute = Some(started),
            Err(e) => {
                let reason = format!("{e:#}");
                eprintln!("devnet: running the CCN only, without a CRN: {reason}");
                info.crn_unavailable = Some(reason);
            }
        }
    }
    if args.example {
        match compute.as_ref().and_then(|c| c.crns.first()) {
            Some(child) => {
                let folder = programs::example_folder(args.example_dir.clone());
                eprintln!(
                    "devnet: deploying the example {} (its first answer boots a VM)",
                    folder.display()
                );
                match programs::deploy_example(
                    &folder,
                    &info.ccn_url,
                    &child.url,
                    &info.accounts[0].private_key,
                )
                .await
                {
                    Ok(deployed) => info.example = Some(deployed),
                    Err(e) => eprintln!("devnet: the example was not deployed: {e:#}"),
                }
            }
            None => eprintln!("devnet: --example needs a CRN; none is running"),
        }
    }

    let info_path = args.data_dir.join("devnet.json");
    write_info(&info_path, &info)?;
    print_summary(&info, &info_path);

    let stop = wait_for_stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            signal = &mut stop => {
                signal?;
                break;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                // A dead CRN is what a test may cause on purpose; the rest stays.
                for child in compute.iter_mut().flat_map(|c| c.crns.iter_mut()) {
                    if let Some(status) = child.newly_exited() {
                        tracing::warn!("the devnet's CRN {} exited ({status}); the rest keeps running", child.url);
                    }
                }
            }
        }
    }
    tracing::info!("stopping the devnet");
    if let Some(compute) = compute {
        let crns: Vec<_> = compute
            .crns
            .into_iter()
            .map(|child| child.stop(Duration::from_secs(20)))
            .collect();
        futures::future::join_all(crns).await;
        compute.scheduler.shutdown().await;
    }
    // VMs of CRNs that died (or were restarted by someone else) end with the devnet too.
    for crn in &info.crns {
        crn::stop_left_vms(&crn.data_dir);
    }
    ccn.shutdown().await;
    Ok(())
}

/// The scheduler and the CRN processes of a running devnet.
struct Compute {
    scheduler: aleph_scheduler::Scheduler,
    crns: Vec<crn::CrnChild>,
}

/// Images (built if missing), the runtime published, the scheduler started,
/// and the CRNs registered and started.
async fn start_compute(args: &Args, ccn: &CcnHandle, info: &mut DevnetInfo) -> Result<Compute> {
    if !crn::available().await {
        anyhow::bail!("this aleph-node has no `crn` subcommand (rebuild it from a newer tree)");
    }
    let images_dir = args
        .images_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.clone());
    let images = guest_images(&images_dir).await?;
    let rootfs_dir = (!args.no_rootfs).then_some(images_dir.as_path());
    publish_images(ccn, &images.python_runtime, rootfs_dir, info).await?;
    let owner = &info.accounts[0];
    let ports = (0..args.crns)
        .map(|i| match args.crn_port {
            0 => crn::free_port(),
            port => u16::try_from(usize::from(port) + i).context("CRN ports past 65535"),
        })
        .collect::<Result<Vec<u16>>>()?;
    let urls: Vec<String> = ports
        .iter()
        .map(|&port| format!("http://{}", SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
        .collect();
    if let Some(first) = urls.first() {
        info.diagnostic_program =
            publish_diagnostic(&info.ccn_url, first, &owner.private_key).await;
    }

    let mut config = aleph_scheduler::SchedulerConfig::new(
        info.ccn_url.clone(),
        args.data_dir.join("scheduler"),
    );
    config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, args.scheduler_port));
    config.grace = aleph_scheduler::DEVNET_GRACE;
    config.lease_seconds = aleph_scheduler::DEVNET_LEASE_SECONDS;
    let scheduler = aleph_scheduler::start(config)
        .await
        .context("starting the devnet's scheduler")?;
    info.scheduler_url = Some(scheduler.url());
    info.scheduler_address = Some(scheduler.address().to_owned());

    let mut registrations = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let name = format!("devnet-crn-{}", i + 1);
        let registration = nodes::register(ccn, &nodes::operator_key(i), &name, url)
            .await
            .with_context(|| format!("registering {name} ({url}) on the CCN"))?;
        registrations.push(registration);
    }
    // Started together: each probes KVM and prepares before it answers.
    let keys: Vec<String> = (0..args.crns).map(nodes::operator_key).collect();
    let data_dirs: Vec<PathBuf> = (0..args.crns)
        .map(|i| args.data_dir.join(format!("crn-{}", i + 1)))
        .collect();
    let scheduler_url = scheduler.url();
    let starts = (0..args.crns).map(|i| {
        crn::start(crn::CrnOptions {
            ccn_url: &info.ccn_url,
            index: i,
            ipv6: args.ipv6,
            data_dir: &data_dirs[i],
            images_dir: &images_dir,
            port: ports[i],
            diagnostic_program: info.diagnostic_program.as_deref(),
            scheduler: Some(crn::SchedulerLink {
                scheduler_url: &scheduler_url,
                node_hash: &registrations[i].node_hash,
                node_key: &keys[i],
                scheduler_address: scheduler.address(),
                heartbeat_interval_seconds: args.heartbeat_seconds,
            }),
        })
    });
    let results = futures::future::join_all(starts).await;
    let mut crns = Vec::new();
    let mut failure = None;
    for result in results {
        match result {
            Ok(child) => crns.push(child),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        for child in crns {
            child.stop(Duration::from_secs(20)).await;
        }
        scheduler.shutdown().await;
        return Err(e);
    }
    for (child, registration) in crns.iter().zip(&registrations) {
        info.crn_urls.push(child.url.clone());
        info.crns.push(CrnInfo {
            url: child.url.clone(),
            node_hash: Some(registration.node_hash.clone()),
            operator: Some(registration.owner.clone()),
            config: child.config.clone(),
            log: child.log.clone(),
            data_dir: child.data_dir.clone(),
            pid: child.pid(),
        });
    }
    Ok(Compute { scheduler, crns })
}

/// The Python runtime and the instance root filesystem of `rootfs_dir` (none
/// when `None`) as STOREs, named in the first account's `vm-images` aggregate.
/// The root filesystem is built when missing; when it cannot be, programs work
/// all the same and `info` says why.
async fn publish_images(
    ccn: &CcnHandle,
    python_runtime: &Path,
    rootfs_dir: Option<&Path>,
    info: &mut DevnetInfo,
) -> Result<()> {
    let owner = &info.accounts[0];
    let aggregate = vm_images::VmImages::read(ccn, &owner.private_key).await?;
    let runtime = aggregate
        .store_runtime(python_runtime)
        .await
        .context("publishing the Python runtime")?;
    let rootfs = match rootfs_dir {
        None => Err(anyhow::anyhow!("started with --no-rootfs")),
        Some(dir) => match rootfs::debian12(dir).await {
            Ok(image) => aggregate
                .store_rootfs(&image.image)
                .await
                .context("publishing the instance root filesystem"),
            Err(e) => Err(e),
        },
    };
    let rootfs = match rootfs {
        Ok(store) => Some(store),
        Err(e) => {
            let reason = format!("{e:#}");
            if rootfs_dir.is_some() {
                eprintln!(
                    "devnet: no default root filesystem for instances (programs work): {reason}"
                );
            }
            info.rootfs_unavailable = Some(reason);
            None
        }
    };
    let published = vm_images::Published { runtime, rootfs };
    aggregate
        .name(&published)
        .await
        .context("naming the images in the vm-images aggregate")?;
    info.images_address = Some(owner.address.clone());
    info.default_runtime = Some(published.runtime);
    info.default_rootfs = published.rootfs;
    Ok(())
}

/// Uploads the CRN's diagnostic program; without the CLI or the program's
/// source, the devnet runs without it (`/status/check/fastapi` then says so).
async fn publish_diagnostic(ccn_url: &str, crn_url: &str, private_key: &str) -> Option<String> {
    let Some(folder) = programs::diagnostic_folder() else {
        tracing::info!("no diagnostic program source here; /status/check/fastapi is off");
        return None;
    };
    match programs::upload(&folder, "diagnostic", ccn_url, crn_url, private_key).await {
        Ok(uploaded) => uploaded["item_hash"].as_str().map(str::to_owned),
        Err(e) => {
            tracing::warn!("the diagnostic program was not deployed: {e:#}");
            None
        }
    }
}

/// The images, brought up to date: `images::build` rebuilds what is stale
/// (the initramfs after the agent changed) and only verifies the rest, in a
/// second or two; the first build takes minutes. Without the agent, or when
/// a rebuild fails (offline, say), images already built are used as they are.
async fn guest_images(images_dir: &Path) -> Result<GuestImages> {
    let options = BuildOptions::new(images_dir);
    let agent = options.guest_bin();
    let cached = images::cached(images_dir);
    if !agent.is_file() {
        return cached.with_context(|| {
            format!(
                "no guest images in {} and no guest agent {} to build them from: build it with scripts/build-guest (or set {}), then start the devnet again",
                images_dir.display(),
                agent.display(),
                images::GUEST_BIN_ENV
            )
        });
    }
    let progress: &dyn Progress = if cached.is_some() {
        &NoProgress
    } else {
        eprintln!(
            "devnet: building the guest images into {} (the first time takes a few minutes)",
            images_dir.display()
        );
        &StderrProgress
    };
    match images::build(&options, progress).await {
        Ok(built) => Ok(built),
        Err(e) => match cached {
            Some(cached) => {
                eprintln!(
                    "devnet: cannot refresh the guest images ({e:#}); using those built before"
                );
                Ok(cached)
            }
            None => Err(e.context(
                "building the guest images (`aleph-node images build` shows the same steps)",
            )),
        },
    }
}

/// The devnet's accounts: key `i` is sha256("aleph-devnet-account-{i}").
fn devnet_accounts(count: usize) -> Result<Vec<DevnetAccount>> {
    (0..count)
        .map(|i| {
            let key: [u8; 32] = Sha256::digest(format!("aleph-devnet-account-{i}")).into();
            let account = EvmAccount::new(Chain::Ethereum, &key)
                .map_err(|e| anyhow::anyhow!("devnet key {i}: {e}"))?;
            Ok(DevnetAccount {
                address: account.address().as_str().to_owned(),
                private_key: format!("0x{}", hex::encode(key)),
            })
        })
        .collect()
}

/// Written to a temporary file then renamed, so a reader never sees half of it.
fn write_info(path: &Path, info: &DevnetInfo) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn print_summary(info: &DevnetInfo, info_path: &Path) {
    println!("Aleph devnet running (Ctrl-C to stop)");
    println!("  CCN:         {}", info.ccn_url);
    if let Some(url) = &info.scheduler_url {
        println!("  Scheduler:   {url} (grace 10 s, lease 6 s)");
    }
    for crn in &info.crns {
        println!(
            "  CRN:         {}  node {}  log {}",
            crn.url,
            crn.node_hash.as_deref().unwrap_or("-"),
            crn.log.display()
        );
    }
    if let Some(reason) = &info.crn_unavailable {
        println!("  CRN:         none ({reason})");
    }
    if let Some(runtime) = &info.default_runtime {
        println!("  Runtime:     {runtime} (default of `aleph program upload`)");
    }
    if let Some(rootfs) = &info.default_rootfs {
        println!("  Rootfs:      {rootfs} (Debian 12, default of instances)");
    }
    if let Some(reason) = &info.rootfs_unavailable {
        println!("  Rootfs:      none ({reason})");
    }
    println!("  devnet.json: {}", info_path.display());
    println!("  Accounts, each with {FUNDED_TOKENS} ALEPH and {FUNDED_CREDITS} credits:");
    for account in &info.accounts {
        println!(
            "    {}  private key {}",
            account.address, account.private_key
        );
    }
    let key = info
        .accounts
        .first()
        .map(|a| a.private_key.as_str())
        .unwrap_or("<key>");
    println!(
        "  Try: aleph --ccn {} --private-key {key} account show",
        info.ccn_url
    );
    if let Some(crn) = info.crn_urls.first() {
        println!(
            "       aleph --ccn {} --private-key {key} program upload examples/hello main:app --crn {crn}",
            info.ccn_url
        );
    }
    if let Some(scheduler) = &info.scheduler_url {
        println!(
            "       aleph --ccn {} --scheduler {scheduler} --private-key {key} program upload --persistent examples/hello main:app",
            info.ccn_url
        );
        println!("       aleph --scheduler {scheduler} node list");
    }
    if let Some(example) = &info.example {
        println!("  Example program {}:", example.item_hash);
        match &example.answer {
            Some(answer) => println!("    it answered {answer}"),
            None => println!("    it has not answered yet (see the CRN log)"),
        }
        println!("    curl {}", example.url);
    }
}

async fn wait_for_stop_signal() -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("listening for Ctrl-C"),
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_deterministic_distinct_and_match_their_keys() {
        let first = devnet_accounts(3).unwrap();
        let again = devnet_accounts(3).unwrap();
        assert_eq!(first.len(), 3);
        for (a, b) in first.iter().zip(&again) {
            assert_eq!(a.address, b.address);
            assert_eq!(a.private_key, b.private_key);
        }
        assert_ne!(first[0].address, first[1].address);
        assert_ne!(first[1].address, first[2].address);

        let key = hex::decode(first[0].private_key.trim_start_matches("0x")).unwrap();
        let account = EvmAccount::new(Chain::Ethereum, &key).unwrap();
        assert_eq!(account.address().as_str(), first[0].address);
        let expected: [u8; 32] = Sha256::digest("aleph-devnet-account-0").into();
        assert_eq!(key, expected);
    }

    #[test]
    fn info_file_has_the_documented_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devnet.json");
        let info = DevnetInfo {
            ccn_url: "http://127.0.0.1:4024".into(),
            crn_urls: Vec::new(),
            scheduler_url: None,
            scheduler_address: None,
            crns: Vec::new(),
            accounts: devnet_accounts(1).unwrap(),
            default_runtime: None,
            default_rootfs: None,
            rootfs_unavailable: None,
            images_address: None,
            diagnostic_program: None,
            crn_unavailable: Some("started with --no-crn".into()),
            example: None,
        };
        write_info(&path, &info).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["ccn_url"], "http://127.0.0.1:4024");
        assert_eq!(written["crn_urls"], serde_json::json!([]));
        assert!(written["scheduler_url"].is_null());
        assert!(written["default_rootfs"].is_null());
        assert_eq!(written["accounts"][0]["address"], info.accounts[0].address);
        assert_eq!(
            written["accounts"][0]["private_key"],
            info.accounts[0].private_key
        );
        assert!(!dir.path().join("devnet.json.tmp").exists());
    }
}
