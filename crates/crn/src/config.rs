//! How a CRN runs: a TOML file, then `ALEPH_CRN_*` environment variables over it, then
//! whatever the caller (the `aleph-node crn` flags, a test) sets on the struct.
//!
//! ```toml
//! listen = "127.0.0.1:4020"
//! ccn_url = "http://127.0.0.1:4024"
//! data_dir = "crn-data"
//! domain = "crn.example.org"       # host-based routing: {base32(hash)}.crn.example.org
//! idle_timeout_seconds = 3600
//!
//! # Persistent programs (see docs/operator-guide.md)
//! scheduler_url = "http://127.0.0.1:4030"
//! node_hash = "…"                   # the item hash of the node's registration POST
//! node_key_file = "crn-data/node.key"  # or node_key = "<hex>": the operator's key
//! allowed_schedulers = ["0x…"]      # who may POST /control/allocations
//! heartbeat_interval_seconds = 2
//!
//! # Instances' network (see docs/operator-guide.md)
//! [network]
//! ipv4_pool = ["172.16.0.0", 12]    # one /24 per VM: host .1, guest .2
//! port_range = [24000, 28000]       # host ports forwarded to instances (SSH first)
//! uplink = "eth0"                   # where instances' traffic leaves; default: any
//! ipv6_pool = ["fd00:a1e::", 64]    # IPv6 for VMs (off by default), a /124 each
//! ```

use crate::network::NetworkConfig;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of the environment variables that override the file: `ALEPH_CRN_` followed
/// by the field name in upper case (`ALEPH_CRN_IDLE_TIMEOUT_SECONDS=60`).
pub const ENV_PREFIX: &str = "ALEPH_CRN_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrnConfig {
    /// Address of the HTTP API; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// The CCN messages and files are read from.
    pub ccn_url: String,
    /// Executions' folders, the resource cache and the records database.
    pub data_dir: PathBuf,
    /// Where `aleph-node images build` cached the kernel and initramfs (its data
    /// folder); `None` means `$ALEPH_DATA_DIR`, else the workspace's default.
    pub images_dir: Option<PathBuf>,
    /// Host-based routing: requests to `{base32(hash)}.{domain}` go to that program.
    pub domain: Option<String>,
    /// A VM with no request for this long is stopped.
    pub idle_timeout_seconds: u64,
    /// How long a VM may take to boot to its agent, and its app to start.
    pub boot_timeout_seconds: u64,
    /// Memory kept for the host; programs get the rest, up to `max_program_memory_mib`.
    pub reserved_memory_mib: u64,
    /// Ceiling of the memory given to programs altogether; `None`: all but the reserve.
    pub max_program_memory_mib: Option<u64>,
    /// vCPUs handed out per host CPU.
    pub vcpu_overcommit: u32,
    /// Disk kept free in `data_dir` for the host.
    pub reserved_disk_mib: u64,
    /// `auto` (KVM when a boot probe succeeds), `kvm` or `tcg`.
    pub accel: String,
    /// Item hash of the diagnostic program `/status/check/fastapi` runs
    /// (`crates/crn/diagnostic/`, published as a PROGRAM).
    pub diagnostic_program: Option<String>,
    /// Follow the CCN's websocket and stop VMs whose code or message was updated.
    pub watch_updates: bool,
    /// The scheduler heartbeats go to (`{scheduler_url}/api/v1/heartbeat`). With
    /// `node_hash` and a node key it turns on heartbeats and the lease: persistent
    /// programs then run only while heartbeats are answered.
    pub scheduler_url: Option<String>,
    /// This node's hash: the item hash of its `corechan-operation` registration POST.
    pub node_hash: Option<String>,
    /// The node operator's private key (64 hex characters), which signs heartbeats;
    /// the scheduler accepts them only from the registration's sender.
    pub node_key: Option<String>,
    /// A file holding `node_key` (hex, surrounding whitespace ignored); used when
    /// `node_key` is not set, so the key stays out of the config and the environment.
    pub node_key_file: Option<PathBuf>,
    /// The URL heartbeats announce, as registered; `None`: `http://{listen address}`.
    pub public_url: Option<String>,
    /// Addresses allowed to sign `POST /control/allocations`; empty turns the route off
    /// (403).
    pub allowed_schedulers: Vec<String>,
    /// Seconds between two heartbeats.
    pub heartbeat_interval_seconds: u64,
    /// First wait before restarting a persistent program that crashed; doubled on each
    /// crash in a row, up to `restart_backoff_max_seconds`.
    pub restart_backoff_initial_ms: u64,
    pub restart_backoff_max_seconds: u64,
    /// How long `POST /control/allocations` waits for the VMs it starts before it
    /// answers; those still booting then are reported as successful (accepted) and
    /// heartbeats say when they run.
    pub allocation_wait_seconds: u64,
    /// How instances are wired to the network (`[network]`: address pool, SSH and
    /// port-forward host ports, uplink, nftables table).
    pub network: NetworkConfig,
}

impl Default for CrnConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4020".parse().expect("a valid address"),
            ccn_url: "http://127.0.0.1:4024".into(),
            data_dir: PathBuf::from("crn-data"),
            images_dir: None,
            domain: None,
            idle_timeout_seconds: 3600,
            boot_timeout_seconds: 180,
            reserved_memory_mib: 2048,
            max_program_memory_mib: None,
            vcpu_overcommit: 4,
            reserved_disk_mib: 1024,
            accel: "auto".into(),
            diagnostic_program: None,
            watch_updates: true,
            scheduler_url: None,
            node_hash: None,
            node_key: None,
            node_key_file: None,
            public_url: None,
            allowed_schedulers: Vec::new(),
            heartbeat_interval_seconds: 2,
            restart_backoff_initial_ms: 1000,
            restart_backoff_max_seconds: 60,
            allocation_wait_seconds: 50,
            network: NetworkConfig::default(),
        }
    }
}

impl CrnConfig {
    /// The defaults, then `file` when given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Self::default(),
        };
        config.with_env(std::env::vars())
    }

    /// Applies `ALEPH_CRN_*` variables from `vars`: each is parsed as the TOML value of
    /// its field (a bare string when it is not valid TOML), so every field can be set.
    pub fn with_env(self, vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut table = toml::Table::try_from(&self).context("encoding the configuration")?;
        for (name, value) in vars {
            let Some(field) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let field = field.to_ascii_lowercase();
            let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"));
            let text = toml::Value::String(value);
            // A value that reads as TOML (a number, a boolean) is taken as such unless
            // the field wants text: `ALEPH_CRN_DOMAIN=1234` is the text "1234".
            let mut candidate = table.clone();
            candidate.insert(
                field.clone(),
                parsed.clone().unwrap_or_else(|| text.clone()),
            );
            let fits = toml::Value::Table(candidate).try_into::<Self>().is_ok();
            table.insert(field, if fits { parsed.unwrap_or(text) } else { text });
        }
        toml::Value::Table(table)
            .try_into()
            .context("an ALEPH_CRN_* environment variable")
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_seconds)
    }

    /// The folder holding the guest images' cache.
    pub fn images_dir(&self) -> PathBuf {
        self.images_dir
            .clone()
            .unwrap_or_else(crate::images::default_data_dir)
    }

    pub fn ccn_url(&self) -> &str {
        self.ccn_url.trim_end_matches('/')
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_seconds.max(1))
    }

    /// The heartbeat sender's settings when heartbeats are configured (a scheduler,
    /// a node hash and a key), `None` when none of them is set, an error when only
    /// some are or the key is unreadable.
    pub fn heartbeats(&self) -> Result<Option<HeartbeatSettings>> {
        let key = match (&self.node_key, &self.node_key_file) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading node_key_file {}", path.display()))?,
            ),
            (None, None) => None,
        };
        match (&self.scheduler_url, &self.node_hash, key) {
            (None, None, None) => Ok(None),
            (Some(url), Some(hash), Some(key)) => Ok(Some(HeartbeatSettings {
                scheduler_url: url.trim_end_matches('/').to_owned(),
                node_hash: hash.clone(),
                node_key: key.trim().to_owned(),
            })),
            _ => anyhow::bail!(
                "heartbeats need scheduler_url, node_hash and node_key (or node_key_file) together"
            ),
        }
    }
}

/// Where and as whom heartbeats are sent.
#[derive(Clone, PartialEq, Eq)]
pub struct HeartbeatSettings {
    pub scheduler_url: String,
    pub node_hash: String,
    /// Hex private key.
    pub node_key: String,
}

impl std::fmt::Debug for HeartbeatSettings {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatSettings")
            .field("scheduler_url", &self.scheduler_url)
            .field("node_hash", &self.node_hash)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("crn.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:4021\"\ndomain = \"crn.test\"\nidle_timeout_seconds = 5\n",
        )
        .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let from_file: CrnConfig = toml::from_str(&text).unwrap();
        assert_eq!(from_file.listen.port(), 4021);
        assert_eq!(from_file.vcpu_overcommit, 4, "defaults fill the rest");

        let config = from_file
            .with_env([
                ("ALEPH_CRN_IDLE_TIMEOUT_SECONDS".into(), "60".into()),
                ("ALEPH_CRN_DOMAIN".into(), "other.test".into()),
                ("ALEPH_CRN_DIAGNOSTIC_PROGRAM".into(), "1234".into()),
                ("ALEPH_CRN_WATCH_UPDATES".into(), "false".into()),
                ("UNRELATED".into(), "x".into()),
            ])
            .unwrap();
        assert_eq!(config.idle_timeout(), Duration::from_secs(60));
        assert_eq!(config.domain.as_deref(), Some("other.test"));
        assert_eq!(config.diagnostic_program.as_deref(), Some("1234"));
        assert!(!config.watch_updates);
        assert_eq!(config.listen.port(), 4021);
    }

    #[test]
    fn heartbeats_need_all_three_settings() {
        assert_eq!(CrnConfig::default().heartbeats().unwrap(), None);
        let partial = CrnConfig {
            scheduler_url: Some("http://s".into()),
            ..CrnConfig::default()
        };
        assert!(partial.heartbeats().is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "ab\n").unwrap();
        let config = CrnConfig {
            scheduler_url: Some("http://s/".into()),
            node_hash: Some("h".into()),
            node_key_file: Some(dir.path().join("key")),
            ..CrnConfig::default()
        }
        .with_env([("ALEPH_CRN_ALLOWED_SCHEDULERS".into(), "[\"0xabc\"]".into())])
        .unwrap();
        assert_eq!(config.allowed_schedulers, vec!["0xabc"]);
        let settings = config.heartbeats().unwrap().unwrap();
        assert_eq!(settings.scheduler_url, "http://s");
        assert_eq!(settings.node_key, "ab");
        assert!(
            !format!("{settings:?}").contains("ab\""),
            "the key is not printed"
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        assert!(toml::from_str::<CrnConfig>("idle_timout_seconds = 5").is_err());
        let bad = CrnConfig::default()
            .with_env([("ALEPH_CRN_IDLE_TIMEOUT_SECONDS".into(), "soon".into())]);
        assert!(bad.is_err());
    }

    #[test]
    fn the_instances_network_is_a_table_of_its_own() {
        let config: CrnConfig = toml::from_str(
            "[network]\nipv4_pool = [\"172.20.0.0\", 16]\nport_range = [25000, 25100]\n",
        )
        .unwrap();
        assert_eq!(config.network.ipv4_pool.1, 16);
        assert_eq!(config.network.port_range, (25000, 25100));
        assert_eq!(config.network.table, "aleph", "defaults fill the rest");
        // Environment overrides still apply around it.
        let config = config
            .with_env([("ALEPH_CRN_IDLE_TIMEOUT_SECONDS".into(), "7".into())])
            .unwrap();
        assert_eq!(config.idle_timeout_seconds, 7);
        assert_eq!(config.network.port_range, (25000, 25100));
    }
}
