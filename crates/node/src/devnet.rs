//! `aleph-node devnet`: a whole network on loopback for development and tests.
//!
//! For now a CCN with pre-funded accounts (CRNs and the scheduler join later).
//! The accounts' keys are derived from fixed seeds, so every devnet has the same
//! ones and scripts can rely on them; `DIR/devnet.json` says where everything
//! is, and is written only once the CCN answers.

use aleph_ccn::{CcnConfig, FundedAccount};
use aleph_types::account::{Account, EvmAccount};
use aleph_types::chain::Chain;
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// ALEPH tokens each devnet account holds.
const FUNDED_TOKENS: f64 = 1_000_000.0;
/// Credits each devnet account holds (1,000,000 credits = 1 USD).
const FUNDED_CREDITS: u64 = 1_000_000_000_000;

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the network's state (the CCN's database and files) and `devnet.json`.
    #[arg(long)]
    data_dir: PathBuf,
    /// Loopback port of the CCN (0 picks a free one).
    #[arg(long, default_value_t = 4024)]
    ccn_port: u16,
    /// How many funded accounts to create.
    #[arg(long, default_value_t = 5)]
    accounts: usize,
}

/// `DIR/devnet.json`: what a client needs to use the network.
#[derive(Debug, Serialize)]
struct DevnetInfo {
    ccn_url: String,
    crn_urls: Vec<String>,
    scheduler_url: Option<String>,
    accounts: Vec<DevnetAccount>,
}

#[derive(Debug, Clone, Serialize)]
struct DevnetAccount {
    address: String,
    /// `0x` and 64 hex characters.
    private_key: String,
}

pub async fn run(args: Args) -> Result<()> {
    let accounts = devnet_accounts(args.accounts)?;
    let funded = accounts
        .iter()
        .map(|a| FundedAccount {
            address: a.address.clone(),
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

    let info = DevnetInfo {
        ccn_url: ccn.url(),
        crn_urls: Vec::new(),
        scheduler_url: None,
        accounts,
    };
    let info_path = args.data_dir.join("devnet.json");
    write_info(&info_path, &info)?;
    print_summary(&info, &info_path);

    wait_for_stop_signal().await?;
    tracing::info!("stopping the devnet");
    ccn.shutdown().await;
    Ok(())
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
    println!("  devnet.json: {}", info_path.display());
    println!("  Accounts, each with {FUNDED_TOKENS} ALEPH and {FUNDED_CREDITS} credits:");
    for account in &info.accounts {
        println!(
            "    {}  private key {}",
            account.address, account.private_key
        );
    }
    println!(
        "  Try: aleph --ccn {} --private-key {} account show",
        info.ccn_url,
        info.accounts
            .first()
            .map(|a| a.private_key.as_str())
            .unwrap_or("<key>")
    );
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
            accounts: devnet_accounts(1).unwrap(),
        };
        write_info(&path, &info).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["ccn_url"], "http://127.0.0.1:4024");
        assert_eq!(written["crn_urls"], serde_json::json!([]));
        assert!(written["scheduler_url"].is_null());
        assert_eq!(written["accounts"][0]["address"], info.accounts[0].address);
        assert_eq!(
            written["accounts"][0]["private_key"],
            info.accounts[0].private_key
        );
        assert!(!dir.path().join("devnet.json.tmp").exists());
    }
}
