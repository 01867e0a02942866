//! Core Channel Node: message intake and checks, message queries, file storage,
//! aggregates, balances and credits, prices, and the websocket stream.
//!
//! `start` runs a node in the background; `Ccn` holds its state and its logic, so
//! tests can drive it in process; `api::router` builds its HTTP routes.

pub mod api;
pub mod error;
pub mod files;
pub mod intake;
pub mod pricing;
pub mod store;

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify, broadcast, watch};

pub use error::{ApiError, Rejection};
pub use intake::Outcome;
pub use store::messages::MessageRecord;

/// How to run a CCN.
#[derive(Debug, Clone)]
pub struct CcnConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; `None` means a SQLite file under `data_dir`.
    pub database_url: Option<String>,
    /// Accounts whose balances are set at start (there is no chain to read them from).
    pub funded: Vec<FundedAccount>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FundedAccount {
    pub address: String,
    /// ALEPH tokens held.
    pub balance: f64,
    pub credit_balance: u64,
}

/// Tuning that tests and benchmarks change; the defaults suit a real node.
#[derive(Debug, Clone)]
pub struct CcnOptions {
    /// How often pending messages are tried again.
    pub pending_retry_interval: Duration,
    /// How long a message may stay pending (content, file or dependency missing)
    /// before it is rejected.
    pub pending_retry_window: Duration,
}

impl Default for CcnOptions {
    fn default() -> Self {
        Self {
            pending_retry_interval: Duration::from_secs(5),
            pending_retry_window: Duration::from_secs(3600),
        }
    }
}

/// The state of a node, shared by its routes and background tasks.
pub struct Ccn {
    pub db: store::Db,
    pub files: files::FileStore,
    pub options: CcnOptions,
    /// Each processed message, for websocket subscribers.
    pub events: broadcast::Sender<Arc<MessageRecord>>,
    /// One writer at a time: checks that read state and the writes they allow
    /// must not interleave (balances, aggregates, FORGET targets), and SQLite
    /// fails rather than waits when a reading transaction must become a writer
    /// while another one writes. Every write to the database takes it.
    writer: Mutex<()>,
    pending_notify: Notify,
    /// Set to true when the node stops; long-lived handlers (websockets) watch it.
    stop: watch::Sender<bool>,
}

impl Ccn {
    /// Opens the database (migrating it) and the file store, and sets balances.
    pub async fn open(config: &CcnConfig, options: CcnOptions) -> anyhow::Result<Arc<Ccn>> {
        tokio::fs::create_dir_all(&config.data_dir)
            .await
            .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
        let url = config
            .database_url
            .clone()
            .unwrap_or_else(|| store::default_url(&config.data_dir));
        let db = store::Db::open(&url).await?;
        let files = files::FileStore::open(config.data_dir.join("files")).await?;
        for account in &config.funded {
            let credits =
                i64::try_from(account.credit_balance).context("credit balance too large")?;
            store::balances::set(&db.pool, &account.address, account.balance, credits).await?;
        }
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Ccn {
            db,
            files,
            options,
            events,
            writer: Mutex::new(()),
            pending_notify: Notify::new(),
            stop: watch::channel(false).0,
        }))
    }

    /// Holds the writer lock for writes made outside message processing.
    pub async fn write_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    /// A receiver that changes when the node stops.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Retries pending messages until the node stops.
    async fn run_pending_worker(self: Arc<Self>) {
        let mut stop = self.stopping();
        loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                _ = self.pending_notify.notified() => {}
                _ = tokio::time::sleep(self.options.pending_retry_interval) => {}
            }
            self.retry_pending().await;
        }
    }
}

/// A running node.
pub struct CcnHandle {
    addr: SocketAddr,
    ccn: Arc<Ccn>,
    server: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
}

impl CcnHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The node's state, to drive its logic directly.
    pub fn ccn(&self) -> &Arc<Ccn> {
        &self.ccn
    }

    /// Stops serving, waits for in-flight requests and the worker, closes the database.
    pub async fn shutdown(self) {
        self.ccn.stop.send_replace(true);
        // Graceful shutdown waits for open connections; do not wait forever.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        let _ = self.worker.await;
        self.ccn.db.close().await;
    }
}

/// Binds, migrates and serves in a background task.
pub async fn start(config: CcnConfig) -> anyhow::Result<CcnHandle> {
    start_with_options(config, CcnOptions::default()).await
}

pub async fn start_with_options(
    config: CcnConfig,
    options: CcnOptions,
) -> anyhow::Result<CcnHandle> {
    let ccn = Ccn::open(&config, options).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let app = api::router(ccn.clone());
    let mut server_stop = ccn.stopping();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = server_stop.wait_for(|stopped| *stopped).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("CCN server stopped: {e}");
        }
    });
    let worker = tokio::spawn(ccn.clone().run_pending_worker());
    tracing::info!("CCN listening on http://{addr}");
    Ok(CcnHandle {
        addr,
        ccn,
        server,
        worker,
    })
}
