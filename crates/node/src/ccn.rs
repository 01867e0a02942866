//! `aleph-node ccn`: a Core Channel Node serving until Ctrl-C or SIGTERM.

use aleph_ccn::{CcnConfig, FundedAccount};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4024")]
    listen: SocketAddr,
    /// Folder for the database (SQLite, by default) and the stored files.
    #[arg(long, default_value = "ccn-data")]
    data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`; default: SQLite under --data-dir.
    #[arg(long, env = "ALEPH_CCN_DATABASE_URL")]
    database_url: Option<String>,
    /// Give an account credits: ADDRESS=CREDITS (1,000,000 credits = 1 USD). Repeatable.
    #[arg(long = "fund", value_name = "ADDRESS=CREDITS", value_parser = parse_amount::<u64>)]
    fund: Vec<(String, u64)>,
    /// Give an account held ALEPH tokens: ADDRESS=TOKENS. Repeatable.
    #[arg(long = "hold", value_name = "ADDRESS=TOKENS", value_parser = parse_amount::<f64>)]
    hold: Vec<(String, f64)>,
}

fn parse_amount<T: std::str::FromStr>(value: &str) -> Result<(String, T), String> {
    let (address, amount) = value
        .split_once('=')
        .ok_or_else(|| format!("expected ADDRESS=AMOUNT, got {value:?}"))?;
    if address.is_empty() {
        return Err(format!("no address in {value:?}"));
    }
    let amount = amount
        .parse()
        .map_err(|_| format!("invalid amount {amount:?} in {value:?}"))?;
    Ok((address.to_string(), amount))
}

/// One funded account per address, credits and tokens combined.
fn funded_accounts(fund: &[(String, u64)], hold: &[(String, f64)]) -> Vec<FundedAccount> {
    let mut accounts: Vec<FundedAccount> = Vec::new();
    let mut entry = |address: &str| -> usize {
        match accounts
            .iter()
            .position(|a| a.address.eq_ignore_ascii_case(address))
        {
            Some(index) => index,
            None => {
                accounts.push(FundedAccount {
                    address: address.to_string(),
                    balance: 0.0,
                    credit_balance: 0,
                });
                accounts.len() - 1
            }
        }
    };
    let mut updates = Vec::new();
    for (address, credits) in fund {
        updates.push((entry(address), Some(*credits), None));
    }
    for (address, tokens) in hold {
        updates.push((entry(address), None, Some(*tokens)));
    }
    for (index, credits, tokens) in updates {
        if let Some(credits) = credits {
            accounts[index].credit_balance = credits;
        }
        if let Some(tokens) = tokens {
            accounts[index].balance = tokens;
        }
    }
    accounts
}

pub async fn run(args: Args) -> Result<()> {
    let handle = aleph_ccn::start(CcnConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        funded: funded_accounts(&args.fund, &args.hold),
    })
    .await
    .context("cannot start the CCN")?;
    println!("CCN listening on {}", handle.url());
    wait_for_stop_signal().await?;
    tracing::info!("stopping the CCN");
    handle.shutdown().await;
    Ok(())
}

async fn wait_for_stop_signal() -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fund_and_hold_combine_per_address() {
        let fund = vec![
            parse_amount::<u64>("0xAB=500").unwrap(),
            parse_amount::<u64>("0xcd=7").unwrap(),
        ];
        let hold = vec![parse_amount::<f64>("0xab=2.5").unwrap()];
        let accounts = funded_accounts(&fund, &hold);
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[0].address, "0xAB");
        assert_eq!(accounts[0].credit_balance, 500);
        assert_eq!(accounts[0].balance, 2.5);
        assert_eq!(accounts[1].credit_balance, 7);
        assert!(parse_amount::<u64>("0xab").is_err());
        assert!(parse_amount::<u64>("0xab=lots").is_err());
    }
}
