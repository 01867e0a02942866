//! The harness of the CLI's integration tests: the real `aleph` binary against
//! a real CCN started in process on a free loopback port, each test with its
//! own data and key folders.
#![allow(dead_code)]

use aleph_ccn::{CcnConfig, CcnHandle, FundedAccount};
use aleph_types::account::{Account, EvmAccount};
use aleph_types::chain::Chain;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::process::Output;
use tempfile::TempDir;

pub struct Network {
    pub ccn: CcnHandle,
    _data: TempDir,
    pub config: TempDir,
    /// A key whose account the CCN credits with tokens and credits.
    pub funded_key: String,
    pub funded_address: String,
}

pub fn key_and_address(seed: &str) -> (String, String) {
    let key: [u8; 32] = Sha256::digest(seed).into();
    let account = EvmAccount::new(Chain::Ethereum, &key).unwrap();
    (hex::encode(key), account.address().as_str().to_owned())
}

impl Network {
    pub async fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let (funded_key, funded_address) = key_and_address("aleph-cli-test-funded");
        let ccn = aleph_ccn::start(CcnConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_owned(),
            database_url: None,
            funded: vec![FundedAccount {
                address: funded_address.clone(),
                balance: 100_000.0,
                credit_balance: 1_000_000_000_000,
            }],
        })
        .await
        .unwrap();
        Self {
            ccn,
            _data: data,
            config: tempfile::tempdir().unwrap(),
            funded_key,
            funded_address,
        }
    }

    /// Runs `aleph --ccn <this CCN> ARGS` with this network's key folder.
    pub async fn aleph(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_aleph"))
            .arg("--ccn")
            .arg(self.ccn.url())
            .args(args)
            .env("ALEPH_CONFIG_DIR", self.config.path())
            .env_remove("ALEPH_CCN")
            .env_remove("ALEPH_SCHEDULER_URL")
            .output()
            .await
            .unwrap()
    }

    /// Runs a command with `--json` that must succeed, and parses its output.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.aleph(&all).await;
        assert!(
            output.status.success(),
            "aleph {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "aleph {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Runs a command with the funded key and `--json`; it must succeed.
    pub async fn funded_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--private-key", self.funded_key.as_str()];
        all.extend_from_slice(args);
        self.json(&all).await
    }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Bytes that differ from test to test run, so files are never already stored.
pub fn file_bytes(len: usize, seed: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    let mut block: [u8; 32] = Sha256::digest(seed).into();
    while bytes.len() < len {
        bytes.extend_from_slice(&block);
        block = Sha256::digest(block).into();
    }
    bytes.truncate(len);
    bytes
}
