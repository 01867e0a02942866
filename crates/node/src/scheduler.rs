//! `aleph-node scheduler`: the scheduler of persistent VMs, serving until Ctrl-C or
//! SIGTERM.

use aleph_scheduler::SchedulerConfig;
use aleph_scheduler::placement::Policy;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4030")]
    listen: SocketAddr,
    /// The CCN to follow for node registrations and persistent VMs.
    #[arg(
        long,
        env = "ALEPH_SCHEDULER_CCN",
        default_value = "http://127.0.0.1:4024"
    )]
    ccn: String,
    /// Folder for the database (SQLite, by default) and the generated key.
    #[arg(long, default_value = "scheduler-data")]
    data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`; default: SQLite under --data-dir.
    #[arg(long, env = "ALEPH_SCHEDULER_DATABASE_URL")]
    database_url: Option<String>,
    /// The scheduler's key, hex (CRNs allow its address); default: DATA_DIR/scheduler.key,
    /// generated on first start.
    #[arg(long, env = "ALEPH_SCHEDULER_PRIVATE_KEY", hide_env_values = true)]
    private_key: Option<String>,
    /// A node silent this long is lost and its VMs are placed elsewhere (the devnet uses 10).
    #[arg(long, default_value_t = aleph_scheduler::DEFAULT_GRACE.as_secs_f64())]
    grace_seconds: f64,
    /// How long a node may run its VMs after an answered heartbeat; shorter than the grace
    /// period (the devnet uses 6).
    #[arg(long, default_value_t = aleph_scheduler::DEFAULT_LEASE_SECONDS)]
    lease_seconds: u64,
    /// bin-pack (fullest node that fits) or spread (emptiest).
    #[arg(long, default_value = "bin-pack", value_parser = parse_policy)]
    policy: Policy,
    /// Seconds between two reads of the CCN.
    #[arg(long, default_value_t = 1.0)]
    poll_seconds: f64,
}

fn parse_policy(value: &str) -> Result<Policy, String> {
    match value {
        "bin-pack" | "binpack" => Ok(Policy::BinPack),
        "spread" => Ok(Policy::Spread),
        other => Err(format!("unknown policy {other:?}: use bin-pack or spread")),
    }
}

fn seconds(value: f64, name: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("invalid --{name}: {value}"))
}

pub async fn run(args: Args) -> Result<()> {
    let mut config = SchedulerConfig::new(args.ccn, args.data_dir);
    config.listen = args.listen;
    config.database_url = args.database_url;
    config.private_key = args.private_key;
    config.grace = seconds(args.grace_seconds, "grace-seconds")?;
    config.lease_seconds = args.lease_seconds;
    config.policy = args.policy;
    config.poll_interval = seconds(args.poll_seconds, "poll-seconds")?;
    let scheduler = aleph_scheduler::start(config)
        .await
        .context("cannot start the scheduler")?;
    println!(
        "scheduler listening on {} (key address {})",
        scheduler.url(),
        scheduler.address()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping the scheduler");
    scheduler.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        assert_eq!(parse_policy("spread"), Ok(Policy::Spread));
        assert_eq!(parse_policy("bin-pack"), Ok(Policy::BinPack));
        assert!(parse_policy("random").is_err());
    }
}
