//! What every command gets from the global options: the CCN and the scheduler
//! to talk to, the key to sign with, and how to print.

use crate::client::CcnClient;
use crate::keystore::Keystore;
use crate::output::Output;
use crate::scheduler::SchedulerClient;
use aleph_protocol::signing::Signer;
use anyhow::{Result, bail};

pub struct Context {
    pub ccn_url: String,
    pub scheduler_url: String,
    pub private_key: Option<String>,
    pub account: Option<String>,
    pub out: Output,
}

impl Context {
    pub fn client(&self) -> Result<CcnClient> {
        CcnClient::new(&self.ccn_url)
    }

    pub fn scheduler(&self) -> Result<SchedulerClient> {
        SchedulerClient::new(&self.scheduler_url)
    }

    /// The signing key: `--private-key`, else `--account NAME`, else the
    /// keystore's default account.
    pub fn signer(&self) -> Result<Signer> {
        if let Some(key) = &self.private_key {
            return Ok(Signer::from_hex(key)?);
        }
        let store = Keystore::load()?;
        let stored = match &self.account {
            Some(name) => match store.get(name) {
                Some(account) => account,
                None => bail!("no account named {name:?} (see `aleph account list`)"),
            },
            None => match store.default_account() {
                Some(account) => account,
                None => bail!(
                    "no key to sign with: pass --private-key or --account, or create one with `aleph account create NAME`"
                ),
            },
        };
        Ok(Signer::from_hex(&stored.private_key)?)
    }

    /// `address` when given, else the address of the signing key.
    pub fn address_or_own(&self, address: Option<String>) -> Result<String> {
        match address {
            Some(address) => Ok(address),
            None => Ok(self.signer()?.address().to_owned()),
        }
    }
}
