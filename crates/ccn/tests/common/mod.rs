//! Test harness: a CCN per test on loopback, on SQLite, or on PostgreSQL (a fresh
//! database per test) when `ALEPH_TEST_POSTGRES_URL` is set; signed messages; row counts.
#![allow(dead_code)]

use aleph_ccn::{CcnConfig, CcnHandle, CcnOptions, FundedAccount};
use aleph_types::account::{Account, EvmAccount};
use aleph_types::chain::Chain;
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::time::Duration;

pub const POSTGRES_ENV: &str = "ALEPH_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `<name>_sqlite` and `<name>_postgres` tests running `name(node)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run($crate::common::Backend::Sqlite, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run($crate::common::Backend::Postgres, super::$name).await;
                }
            )*
        }
    };
}

pub struct Wallet {
    pub account: EvmAccount,
}

impl Wallet {
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        Self {
            account: EvmAccount::new(Chain::Ethereum, &key).expect("valid key"),
        }
    }

    pub fn address(&self) -> String {
        self.account.address().to_string()
    }

    /// A signed inline message of `message_type` with `content` (address and time
    /// are added when missing).
    pub fn message(&self, message_type: &str, content: Value) -> Value {
        self.message_on("TEST", message_type, content)
    }

    pub fn message_on(&self, channel: &str, message_type: &str, mut content: Value) -> Value {
        if content.get("address").is_none() {
            content["address"] = json!(self.address());
        }
        if content.get("time").is_none() {
            content["time"] = json!(now());
        }
        let item_content = serde_json::to_string(&content).unwrap();
        let item_hash = hex::encode(Sha256::digest(item_content.as_bytes()));
        let mut message = json!({
            "chain": "ETH",
            "sender": self.address(),
            "type": message_type,
            "channel": channel,
            "item_type": "inline",
            "item_content": item_content,
            "item_hash": item_hash,
            "time": now(),
        });
        self.sign(&mut message);
        message
    }

    /// A message whose content is stored as a file (`item_type: storage`).
    pub fn storage_message(&self, message_type: &str, content_bytes: &[u8]) -> Value {
        let item_hash = hex::encode(Sha256::digest(content_bytes));
        let mut message = json!({
            "chain": "ETH",
            "sender": self.address(),
            "type": message_type,
            "channel": "TEST",
            "item_type": "storage",
            "item_hash": item_hash,
            "time": now(),
        });
        self.sign(&mut message);
        message
    }

    /// (Re)signs a message as this wallet.
    pub fn sign(&self, message: &mut Value) {
        let buffer = format!(
            "{}\n{}\n{}\n{}",
            message["chain"].as_str().unwrap(),
            message["sender"].as_str().unwrap(),
            message["type"].as_str().unwrap(),
            message["item_hash"].as_str().unwrap()
        );
        let signature = self.account.sign_raw(buffer.as_bytes()).unwrap();
        message["signature"] = json!(signature.as_str());
    }

    /// A STORE for a file of this hash.
    pub fn store(&self, file_hash: &str) -> Value {
        self.message(
            "STORE",
            json!({"item_type": "storage", "item_hash": file_hash}),
        )
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub struct TestNode {
    pub handle: CcnHandle,
    pub http: reqwest::Client,
    pub backend: Backend,
    config: CcnConfig,
    options: CcnOptions,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

/// Row counts of every table that holds message data.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub messages: i64,
    pub pending: i64,
    pub aggregate_elements: i64,
    pub aggregates: i64,
    pub files: i64,
}

impl TestNode {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.handle.url(), path)
    }

    pub fn ccn(&self) -> &std::sync::Arc<aleph_ccn::Ccn> {
        self.handle.ccn()
    }

    pub async fn post_message(&self, message: &Value, sync: bool) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/api/v0/messages"))
            .json(&json!({"sync": sync, "message": message}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Posts with `sync: true` and expects it processed.
    pub async fn accept(&self, message: &Value) {
        let (status, body) = self.post_message(message, true).await;
        assert_eq!(status, 200, "message not accepted: {body}");
        assert_eq!(body["message_status"], "processed", "{body}");
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("f"),
        );
        let response = self
            .http
            .post(self.url("/api/v0/storage/add_file"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.unwrap();
        body["hash"].as_str().unwrap().to_string()
    }

    /// Uploads a file with a signed STORE and returns the STORE's item hash.
    pub async fn upload_stored(&self, wallet: &Wallet, bytes: Vec<u8>) -> String {
        let store = wallet.store(&sha256_hex(&bytes));
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name("f"),
            )
            .text(
                "metadata",
                json!({"message": store, "sync": true}).to_string(),
            );
        let response = self
            .http
            .post(self.url("/api/v0/storage/add_file"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["message_status"], "processed", "{body}");
        store["item_hash"].as_str().unwrap().to_string()
    }

    /// Stops the node and starts a new one on the same data folder and database.
    pub async fn restart(self) -> TestNode {
        let TestNode {
            handle,
            http,
            backend,
            mut config,
            options,
            _dir,
        } = self;
        tokio::time::timeout(Duration::from_secs(15), handle.shutdown())
            .await
            .expect("shutdown took more than 15 s");
        config.listen = "127.0.0.1:0".parse().unwrap();
        let handle = aleph_ccn::start_with_options(config.clone(), options.clone())
            .await
            .unwrap();
        TestNode {
            handle,
            http,
            backend,
            config,
            options,
            _dir,
        }
    }

    /// Sets an account's balances, as the funded accounts of the config do at start.
    pub async fn fund(&self, wallet: &Wallet, balance: f64, credits: i64) {
        aleph_ccn::store::balances::set(&self.ccn().db.pool, &wallet.address(), balance, credits)
            .await
            .unwrap();
    }

    pub async fn rows(&self) -> Rows {
        let pool = &self.ccn().db.pool;
        let count = |table: &'static str| async move {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
                .unwrap()
        };
        Rows {
            messages: count("messages").await,
            pending: count("pending_messages").await,
            aggregate_elements: count("aggregate_elements").await,
            aggregates: count("aggregates").await,
            files: count("files").await,
        }
    }

    /// Whether any table holding message data mentions this hash.
    pub async fn has_rows_for(&self, item_hash: &str) -> bool {
        let pool = &self.ccn().db.pool;
        for table in ["messages", "pending_messages", "aggregate_elements"] {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE item_hash = $1");
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(item_hash)
                .fetch_one(pool)
                .await
                .unwrap();
            if n > 0 {
                return true;
            }
        }
        false
    }

    /// Waits until a message reaches `status` (for asynchronous processing).
    pub async fn wait_status(&self, item_hash: &str, status: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (_, body) = self
                .get_json(&format!("/api/v0/messages/{item_hash}/status"))
                .await;
            if body["status"] == status {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{item_hash} never became {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Asserts a rejection: HTTP status, error code, and a JSON `error` message.
pub fn assert_rejected(status: u16, body: &Value, expected_status: u16, expected_code: i64) {
    assert_eq!(status, expected_status, "unexpected status, body: {body}");
    assert_eq!(
        body["error_code"],
        json!(expected_code),
        "unexpected code, body: {body}"
    );
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error message: {body}"
    );
}

/// Says once per test binary that the PostgreSQL runs are skipped. Written to the
/// stderr handle directly: the test harness captures `println!` of passing tests.
fn say_postgres_skipped() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "PostgreSQL tests skipped: set {POSTGRES_ENV}=postgres://USER:PASSWORD@127.0.0.1:5432/postgres to run them"
        );
    });
}

/// A fresh PostgreSQL database for one test, dropped afterwards.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create(admin_url: &str) -> Self {
        sqlx::any::install_default_drivers();
        let name = format!("aleph_ccn_test_{:016x}", rand::random::<u64>());
        let admin = sqlx::AnyPool::connect(admin_url)
            .await
            .expect("cannot connect to ALEPH_TEST_POSTGRES_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("cannot create a test database");
        admin.close().await;
        let (base, query) = match admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin_url, String::new()),
        };
        let authority_start = base.find("://").map_or(0, |i| i + 3);
        let server = match base[authority_start..].find('/') {
            Some(i) => &base[..authority_start + i],
            None => base,
        };
        let url = format!("{server}/{name}{query}");
        Self {
            admin_url: admin_url.to_string(),
            name,
            url,
        }
    }

    /// The node under test may still be running (its worker reconnects right after
    /// `WITH (FORCE)` ends its sessions), so a refused drop is tried again.
    async fn drop_database(admin_url: String, name: String) {
        let Ok(admin) = sqlx::AnyPool::connect(&admin_url).await else {
            return;
        };
        for _ in 0..20 {
            let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
            if dropped.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        admin.close().await;
    }
}

/// Drops the database even when the test panicked: on a thread of its own with
/// its own runtime, since `Drop` cannot await.
impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(PgDatabase::drop_database(admin_url, name));
            }
        })
        .join();
    }
}

/// Runs a test body against a fresh node on `backend`.
pub async fn run<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(TestNode) -> Fut,
    Fut: Future<Output = ()>,
{
    run_with(backend, Vec::new(), test).await
}

pub async fn run_with<F, Fut>(backend: Backend, funded: Vec<FundedAccount>, test: F)
where
    F: FnOnce(TestNode) -> Fut,
    Fut: Future<Output = ()>,
{
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match std::env::var(POSTGRES_ENV) {
            Ok(url) if !url.is_empty() => Some(PgDatabase::create(&url).await),
            _ => {
                say_postgres_skipped();
                return;
            }
        },
    };
    let dir = tempfile::tempdir().unwrap();
    let config = CcnConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        database_url: pg.as_ref().map(|pg| pg.url.clone()),
        funded,
    };
    let options = CcnOptions {
        pending_retry_interval: Duration::from_millis(100),
        pending_retry_window: Duration::from_millis(1500),
    };
    let handle = aleph_ccn::start_with_options(config.clone(), options.clone())
        .await
        .unwrap();
    let node = TestNode {
        handle,
        http: reqwest::Client::new(),
        backend,
        config,
        options,
        _dir: std::sync::Arc::new(dir),
    };
    // The test owns the node; its tasks end with the test's runtime.
    test(node).await;
    // `pg` drops its database when it goes out of scope, panic or not.
    drop(pg);
}
