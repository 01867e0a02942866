//! Heartbeats to the scheduler: every `heartbeat_interval_seconds`, a signed
//! `POST {scheduler}/api/v1/heartbeat` with what the node can give, its usage and the
//! persistent VMs it runs. Each answer extends the node's lease (see
//! [`crate::persistent`]); an unanswered one does not, and the lease lapses on its own.

use crate::config::HeartbeatSettings;
use crate::persistent::Persistent;
use aleph_protocol::auth::eip191_v1;
use aleph_protocol::scheduler::{CpuProperties, Heartbeat, HeartbeatReply, NodeResources};
use aleph_protocol::signing::Signer;
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const HEARTBEAT_PATH: &str = "/api/v1/heartbeat";

pub struct Sender {
    persistent: Arc<Persistent>,
    settings: HeartbeatSettings,
    signer: Signer,
    /// The URL the node announces.
    url: String,
    interval: Duration,
    http: reqwest::Client,
}

impl Sender {
    pub fn new(
        persistent: Arc<Persistent>,
        settings: HeartbeatSettings,
        url: String,
        interval: Duration,
    ) -> Result<Self> {
        let signer = Signer::from_hex(&settings.node_key).context("node_key")?;
        let http = reqwest::Client::builder()
            // An answer later than this could not extend the lease by much anyway.
            .timeout((interval * 2).max(Duration::from_secs(3)))
            .build()?;
        Ok(Self {
            persistent,
            settings,
            signer,
            url,
            interval,
            http,
        })
    }

    /// The node's signing address (the scheduler expects the registration's sender).
    pub fn address(&self) -> &str {
        self.signer.address()
    }

    /// What this heartbeat says.
    pub fn heartbeat(&self) -> Heartbeat {
        let pool = self.persistent.pool();
        let (limit, _) = pool.admission().snapshot();
        let cpu: CpuProperties =
            serde_json::from_value(crate::about::cpu_properties()).unwrap_or_default();
        Heartbeat {
            node_hash: self.settings.node_hash.clone(),
            url: self.url.clone(),
            allocation_version: self.persistent.allocation_version(),
            // Totals: the scheduler subtracts what it placed here itself.
            resources: NodeResources {
                vcpus: limit.vcpus,
                memory_mib: limit.memory_mib,
                disk_mib: limit.disk_mib,
                cpu,
                gpus: Vec::new(),
            },
            usage: crate::about::system_usage(&pool.config().data_dir, chrono::Utc::now()),
            running: self.persistent.report(),
        }
    }

    /// Sends one heartbeat and returns the scheduler's answer.
    pub async fn send(&self) -> Result<HeartbeatReply> {
        let body = serde_json::to_vec(&self.heartbeat())?;
        let authorization = eip191_v1::authorization(
            &self.signer,
            "POST",
            HEARTBEAT_PATH,
            &body,
            chrono::Utc::now().timestamp(),
        )?;
        let response = self
            .http
            .post(format!("{}{HEARTBEAT_PATH}", self.settings.scheduler_url))
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("the scheduler answered {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("the scheduler's answer {text:?}"))
    }

    /// Sends heartbeats until `stop` turns true, one at a time.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            let sent = Instant::now();
            match self.send().await {
                Ok(reply) => {
                    if failing {
                        tracing::info!("the scheduler answers heartbeats again");
                        failing = false;
                    }
                    self.persistent.on_heartbeat(sent, &reply).await;
                }
                Err(e) => {
                    // Said once per outage, not every interval.
                    if !failing {
                        tracing::warn!("heartbeat to {}: {e:#}", self.settings.scheduler_url);
                        failing = true;
                    }
                }
            }
            let next = tokio::time::Instant::from_std(sent + self.interval);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }
}
