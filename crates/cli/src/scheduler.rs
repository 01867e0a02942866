//! A small client for the scheduler's read API (`aleph-node scheduler`): where
//! persistent VMs run and which nodes it knows. The answers are the wire types
//! of `aleph_protocol::scheduler`.

use aleph_protocol::scheduler::{AllocationEntry, NodeList, VmEntry, VmPage};
use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

pub struct SchedulerClient {
    base: String,
    http: reqwest::Client,
}

impl SchedulerClient {
    pub fn new(base_url: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("aleph-rust-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /api/v0/allocation/{vm_hash}`: where it is allocated; `None` when
    /// it is allocated nowhere (404).
    pub async fn allocation(&self, vm_hash: &str) -> Result<Option<AllocationEntry>> {
        self.get(&format!("/api/v0/allocation/{vm_hash}"), &[])
            .await
    }

    /// The scheduler's entry of one VM (`GET /api/v1/vms?vm_hash=`); `None`
    /// when it does not track it.
    pub async fn vm(&self, vm_hash: &str) -> Result<Option<VmEntry>> {
        let page: Option<VmPage> = self
            .get("/api/v1/vms", &[("vm_hash", vm_hash.to_owned())])
            .await?;
        Ok(page.and_then(|p| p.items.into_iter().find(|vm| vm.vm_hash == vm_hash)))
    }

    /// `GET /api/v1/nodes`.
    pub async fn nodes(&self) -> Result<NodeList> {
        match self.get("/api/v1/nodes", &[]).await? {
            Some(list) => Ok(list),
            None => bail!(
                "the scheduler at {} has no /api/v1/nodes (is it a scheduler?)",
                self.base
            ),
        }
    }

    /// A GET whose 404 is `None`; any other failure says what the scheduler answered.
    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Option<T>> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the scheduler at {} (give it with --scheduler URL or ALEPH_SCHEDULER_URL)",
                    self.base
                )
            })?;
        let status = response.status();
        let body = response.text().await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let error = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.trim().to_owned());
            bail!("the scheduler answered HTTP {status} for {path}: {error}");
        }
        serde_json::from_str(&body)
            .map(Some)
            .with_context(|| format!("the scheduler sent an unexpected answer for {path}: {body}"))
    }
}
