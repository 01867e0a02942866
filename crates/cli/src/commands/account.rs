//! `aleph account create|import|show|list`: the local key file.

use crate::context::Context;
use crate::keystore::{Keystore, StoredAccount};
use aleph_protocol::signing::Signer;
use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Create an account with a fresh random key and store it.
    Create {
        /// Name to refer to the account by (`--account NAME`).
        name: String,
        /// Make it the default account.
        #[arg(long)]
        default: bool,
    },
    /// Store an existing private key under a name.
    Import {
        name: String,
        /// The key in hex; default: --private-key, else read from stdin.
        key: Option<String>,
        /// Make it the default account.
        #[arg(long)]
        default: bool,
    },
    /// Show an account's address and its balance on the CCN.
    Show {
        /// A stored account; default: the signing account (--private-key, --account, default).
        name: Option<String>,
    },
    /// List the stored accounts.
    List,
}

pub async fn run(ctx: &Context, command: AccountCommand) -> Result<()> {
    match command {
        AccountCommand::Create { name, default } => {
            let (signer, private_key) = Signer::generate();
            store(ctx, name, &signer, private_key, default)
        }
        AccountCommand::Import { name, key, default } => {
            let private_key = match key.or_else(|| ctx.private_key.clone()) {
                Some(key) => key,
                None => read_key_from_stdin()?,
            };
            let signer = Signer::from_hex(&private_key)?;
            let normalized = private_key.trim().trim_start_matches("0x").to_lowercase();
            store(ctx, name, &signer, normalized, default)
        }
        AccountCommand::Show { name } => show(ctx, name).await,
        AccountCommand::List => list(ctx),
    }
}

fn store(
    ctx: &Context,
    name: String,
    signer: &Signer,
    private_key: String,
    make_default: bool,
) -> Result<()> {
    let mut keystore = Keystore::load()?;
    keystore.add(StoredAccount {
        name: name.clone(),
        chain: signer.chain(),
        address: signer.address().to_owned(),
        private_key,
    })?;
    if make_default {
        keystore.default = Some(name.clone());
    }
    keystore.save()?;
    let is_default = keystore.default.as_deref() == Some(name.as_str());
    let value = json!({
        "name": name,
        "address": signer.address(),
        "chain": signer.chain(),
        "default": is_default,
        "keystore": Keystore::path()?.display().to_string(),
    });
    ctx.out.result(&value, || {
        let marker = if is_default { " (default)" } else { "" };
        format!("{name}{marker}: {}", signer.address())
    });
    Ok(())
}

fn read_key_from_stdin() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the private key from stdin")?;
    if line.trim().is_empty() {
        bail!("no private key given: pass it as an argument, with --private-key, or on stdin");
    }
    Ok(line)
}

async fn show(ctx: &Context, name: Option<String>) -> Result<()> {
    let keystore = Keystore::load()?;
    let (name, signer) = match name {
        Some(name) => match keystore.get(&name) {
            Some(stored) => (Some(name), Signer::from_hex(&stored.private_key)?),
            None => bail!("no account named {name:?} (see `aleph account list`)"),
        },
        None => {
            let signer = ctx.signer()?;
            let name = keystore
                .accounts
                .iter()
                .find(|a| a.address.eq_ignore_ascii_case(signer.address()))
                .map(|a| a.name.clone());
            (name, signer)
        }
    };
    // The balance is extra information: an unreachable CCN must not hide the address.
    let balance = ctx.client()?.balance(signer.address()).await;
    let value = json!({
        "name": name,
        "address": signer.address(),
        "chain": signer.chain(),
        "balance": balance.as_ref().ok(),
        "balance_error": balance.as_ref().err().map(|e| format!("{e:#}")),
    });
    ctx.out.result(&value, || {
        let mut text = String::new();
        if let Some(name) = &name {
            text.push_str(&format!("name:     {name}\n"));
        }
        text.push_str(&format!(
            "address:  {}\nchain:    {}\n",
            signer.address(),
            signer.chain()
        ));
        match &balance {
            Ok(balance) => text.push_str(&format!(
                "balance:  {} ALEPH\ncredits:  {}",
                number(&balance["balance"]),
                number(&balance["credit_balance"])
            )),
            Err(e) => text.push_str(&format!("balance:  unknown ({e:#})")),
        }
        text
    });
    Ok(())
}

fn number(value: &Value) -> String {
    match value {
        Value::Null => "0".into(),
        other => other.to_string(),
    }
}

fn list(ctx: &Context) -> Result<()> {
    let keystore = Keystore::load()?;
    let is_default = |name: &str| keystore.default.as_deref() == Some(name);
    let accounts: Vec<Value> = keystore
        .accounts
        .iter()
        .map(|a| {
            json!({
                "name": a.name,
                "address": a.address,
                "chain": a.chain,
                "default": is_default(&a.name),
            })
        })
        .collect();
    ctx.out.result(&Value::Array(accounts), || {
        if keystore.accounts.is_empty() {
            return "no accounts yet: `aleph account create NAME` makes one".into();
        }
        keystore
            .accounts
            .iter()
            .map(|a| {
                let marker = if is_default(&a.name) { "*" } else { " " };
                format!("{marker} {:<16} {} {}", a.name, a.chain, a.address)
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
