//! `aleph-node crn`: a Compute Resource Node serving on-demand programs until Ctrl-C
//! or SIGTERM. Settings: defaults, then `--config FILE` (TOML), then `ALEPH_CRN_*`
//! environment variables, then these flags.

use aleph_crn::CrnConfig;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A TOML file with the node's settings (see `aleph_crn::config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:4020).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The CCN to read messages and files from.
    #[arg(long)]
    ccn: Option<String>,
    /// Folder for executions, the resource cache and the records database.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve programs on `{base32(hash)}.DOMAIN` too.
    #[arg(long)]
    domain: Option<String>,
    /// Seconds a VM may sit idle before it is stopped.
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Where `aleph-node images build` cached the guest images (default: $ALEPH_DATA_DIR).
    #[arg(long, env = "ALEPH_DATA_DIR")]
    images_dir: Option<PathBuf>,
    /// Stop the VMs when the node stops (by default they keep running and the next
    /// node on this data folder takes them back).
    #[arg(long)]
    stop_vms_on_exit: bool,
}

fn config(args: &Args) -> Result<CrnConfig> {
    let mut config = CrnConfig::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(ccn) = &args.ccn {
        config.ccn_url = ccn.clone();
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(domain) = &args.domain {
        config.domain = Some(domain.clone());
    }
    if let Some(seconds) = args.idle_timeout {
        config.idle_timeout_seconds = seconds;
    }
    if let Some(dir) = &args.images_dir {
        config.images_dir = Some(dir.clone());
    }
    Ok(config)
}

pub async fn run(args: Args) -> Result<()> {
    let handle = aleph_crn::start(config(&args)?)
        .await
        .context("cannot start the CRN")?;
    println!("CRN listening on {}", handle.url());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping the CRN");
    if args.stop_vms_on_exit {
        handle.shutdown_and_stop_vms().await;
    } else {
        handle.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("crn.toml");
        std::fs::write(&file, "idle_timeout_seconds = 9\ndomain = \"a.test\"\n").unwrap();
        let cli = Cli::parse_from([
            "crn",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--ccn",
            "http://127.0.0.1:1",
            "--domain",
            "b.test",
        ]);
        let config = config(&cli.args).unwrap();
        assert_eq!(config.idle_timeout_seconds, 9);
        assert_eq!(config.domain.as_deref(), Some("b.test"));
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.ccn_url, "http://127.0.0.1:1");
    }
}
