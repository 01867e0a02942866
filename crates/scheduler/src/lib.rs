//! The scheduler: keeps every persistent program and every instance that no payment pins
//! to a node running exactly once, on a node that fits it.
//!
//! - [`placement`]: which node a VM goes to (resources, requirements, policy), in memory.
//! - [`state`]: the registry, the VMs, heartbeats, failover and fencing rules (and the
//!   exactly-once argument in its docs), in memory.
//! - [`store`]: their persistence, SQLite or PostgreSQL.
//! - [`follow`]: what the CCN says (registrations, persistent VMs, forgets).
//! - [`push`]: signed allocation pushes to the CRNs.
//! - [`api`]: the HTTP API.
//!
//! [`start`] runs all of it in the background of the current tokio runtime.

pub mod api;
pub mod follow;
pub mod placement;
pub mod push;
pub mod state;
pub mod store;

use aleph_protocol::auth::eip191_v1::ReplayGuard;
use aleph_protocol::signing::Signer;
use anyhow::{Context, Result, bail};
use placement::Policy;
use state::{Core, Settings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

/// Grace period of a production scheduler: a node silent this long is lost.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);
/// Lease of a production scheduler (shorter than the grace period).
pub const DEFAULT_LEASE_SECONDS: u64 = 30;
/// Grace and lease of the devnet (CRNs heartbeat every 2 s there).
pub const DEVNET_GRACE: Duration = Duration::from_secs(10);
pub const DEVNET_LEASE_SECONDS: u64 = 6;
/// The file, in the data folder, holding the key generated on first start.
pub const KEY_FILE: &str = "scheduler.key";

/// How to run a scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// The CCN followed for registrations and persistent VMs.
    pub ccn_url: String,
    /// Holds the SQLite database and the generated key.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; `None`: SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// The scheduler's key (hex); `None`: the one in `data_dir`/[`KEY_FILE`], generated
    /// on first start.
    pub private_key: Option<String>,
    /// A node whose last heartbeat is older than this is lost.
    pub grace: Duration,
    /// Told to nodes in every heartbeat reply and push; must be shorter than `grace`.
    pub lease_seconds: u64,
    pub policy: Policy,
    /// How often the CCN is asked for new messages.
    pub poll_interval: Duration,
}

impl SchedulerConfig {
    /// Production defaults: listen on 127.0.0.1:4030, grace 60 s, lease 30 s, bin-pack,
    /// the CCN polled every second.
    pub fn new(ccn_url: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4030)),
            ccn_url: ccn_url.into(),
            data_dir: data_dir.into(),
            database_url: None,
            private_key: None,
            grace: DEFAULT_GRACE,
            lease_seconds: DEFAULT_LEASE_SECONDS,
            policy: Policy::BinPack,
            poll_interval: Duration::from_secs(1),
        }
    }

    fn check(&self) -> Result<()> {
        if self.lease_seconds == 0 {
            bail!("the lease must be at least 1 s");
        }
        if Duration::from_secs(self.lease_seconds) >= self.grace {
            bail!(
                "the lease ({} s) must be shorter than the grace period ({:?}): \
                 a lost node's VMs must have stopped before they are placed elsewhere",
                self.lease_seconds,
                self.grace
            );
        }
        if self.poll_interval.is_zero() {
            bail!("the CCN poll interval must be positive");
        }
        Ok(())
    }
}

/// State shared by the routes and the background tasks.
pub struct Inner {
    pub config: SchedulerConfig,
    /// The single writer: every change takes this lock, is written to the database,
    /// then pushed.
    pub core: Mutex<Core>,
    pub db: store::Db,
    pub signer: Arc<Signer>,
    pub pushers: push::Pushers,
    pub replay: ReplayGuard,
    pub http: reqwest::Client,
}

impl Inner {
    /// Ends an operation on `core` (held by the caller): writes it, then pushes.
    pub async fn commit(&self, core: &mut Core) -> Result<()> {
        let effects = core.take_effects();
        self.db
            .apply(&effects.changes)
            .await
            .context("cannot write the scheduler state")?;
        for job in effects.pushes {
            self.pushers.send(job);
        }
        Ok(())
    }

    /// Marks silent nodes lost and places what waits; one pass.
    pub async fn tick(&self) -> Result<()> {
        let mut core = self.core.lock().await;
        let now = Instant::now();
        core.expire(now);
        core.place_pending(now);
        self.commit(&mut core).await
    }

    /// Reads every stream of the CCN from its cursor; one pass.
    pub async fn sync_ccn(&self) -> Result<()> {
        for stream in follow::STREAMS {
            let cursor = self.core.lock().await.cursor(stream.name);
            let start = cursor.map(|c| (c - follow::OVERLAP.as_secs_f64()).max(0.0));
            let mut newest = cursor;
            for page in 1.. {
                let url = follow::page_url(&self.config.ccn_url, stream, start, page);
                let response = self
                    .http
                    .get(&url)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                let status = response.status();
                if !status.is_success() {
                    bail!(
                        "GET {url}: HTTP {status}: {}",
                        response.text().await.unwrap_or_default()
                    );
                }
                let body: serde_json::Value = response
                    .json()
                    .await
                    .with_context(|| format!("GET {url}: not JSON"))?;
                let messages = body
                    .get("messages")
                    .and_then(|m| m.as_array())
                    .cloned()
                    .unwrap_or_default();
                let mut core = self.core.lock().await;
                let now = Instant::now();
                for message in &messages {
                    if let Some(time) = message.get("time").and_then(|t| t.as_f64()) {
                        newest = Some(newest.map_or(time, |n: f64| n.max(time)));
                    }
                    for event in follow::interpret(message) {
                        core.apply_event(event, now);
                    }
                }
                core.place_pending(now);
                self.commit(&mut core).await?;
                drop(core);
                if messages.len() < follow::PAGE_SIZE {
                    break;
                }
            }
            if let Some(newest) = newest {
                self.core.lock().await.set_cursor(stream.name, newest);
            }
        }
        Ok(())
    }
}

/// A running scheduler; stops when dropped or with [`Scheduler::shutdown`].
pub struct Scheduler {
    addr: SocketAddr,
    address: String,
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Scheduler {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address of the scheduler's key: CRNs allow it to push allocations.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The state, to drive or inspect it in process.
    pub fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Stops serving and the background tasks, and closes the database.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut self.tasks);
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.inner.pushers.stop();
        self.inner.db.close().await;
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
        self.inner.pushers.stop();
    }
}

/// The scheduler's key: given, or read from (or generated into, mode 0600) the data folder.
pub fn load_or_create_key(private_key: Option<&str>, data_dir: &Path) -> Result<Signer> {
    if let Some(hex) = private_key {
        return Signer::from_hex(hex).context("invalid scheduler private key");
    }
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(hex) => {
            Signer::from_hex(&hex).with_context(|| format!("invalid key in {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let (signer, hex) = Signer::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(hex.as_bytes())?;
            tracing::info!(
                "generated the scheduler key {} in {}",
                signer.address(),
                path.display()
            );
            Ok(signer)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Opens the database, binds, and runs the scheduler in the background.
pub async fn start(config: SchedulerConfig) -> Result<Scheduler> {
    config.check()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let signer = Arc::new(load_or_create_key(
        config.private_key.as_deref(),
        &config.data_dir,
    )?);
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| store::default_url(&config.data_dir));
    let db = store::Db::open(&url).await?;
    let snapshot = db.load().await?;
    let settings = Settings {
        grace: config.grace,
        lease_seconds: config.lease_seconds,
        policy: config.policy,
    };
    let core = Core::restore(settings, snapshot, Instant::now());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let inner = Arc::new(Inner {
        core: Mutex::new(core),
        db,
        pushers: push::Pushers::new(http.clone(), signer.clone()),
        signer: signer.clone(),
        replay: ReplayGuard::default(),
        http,
        config,
    });
    let (stop, _) = watch::channel(false);
    let mut tasks = Vec::new();

    let app = api::router(inner.clone());
    let mut server_stop = stop.subscribe();
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = server_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("scheduler server stopped: {e}");
        }
    }));

    // Failover and placement: often enough that a lost node is noticed within a small
    // part of the grace period.
    let tick_every =
        (inner.config.grace / 8).clamp(Duration::from_millis(50), Duration::from_millis(500));
    tasks.push(tokio::spawn(every(
        tick_every,
        stop.subscribe(),
        inner.clone(),
        |inner| async move { inner.tick().await },
    )));
    let poll_every = inner.config.poll_interval;
    tasks.push(tokio::spawn(every(
        poll_every,
        stop.subscribe(),
        inner.clone(),
        |inner| async move { inner.sync_ccn().await },
    )));

    tracing::info!(
        "scheduler listening on http://{addr}, key {}, following {}",
        signer.address(),
        inner.config.ccn_url
    );
    Ok(Scheduler {
        addr,
        address: signer.address().to_owned(),
        inner,
        stop,
        tasks,
    })
}

/// Runs `step` every `period` until stopped, logging its failures (once per kind in a row).
async fn every<F, Fut>(
    period: Duration,
    mut stop: watch::Receiver<bool>,
    inner: Arc<Inner>,
    step: F,
) where
    F: Fn(Arc<Inner>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut last_error = String::new();
    loop {
        match step(inner.clone()).await {
            Ok(()) => last_error.clear(),
            Err(e) => {
                let text = format!("{e:#}");
                if text != last_error {
                    tracing::warn!("{text}");
                    last_error = text;
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}
