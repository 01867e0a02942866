//! Test harness: a real CCN in process, a scheduler following it, and fake CRNs (small
//! axum servers) that check and record the allocation pushes they get and send signed
//! heartbeats while they are "alive".
#![allow(dead_code)]

use aleph_ccn::{CcnConfig, CcnHandle, FundedAccount};
use aleph_protocol::auth::eip191_v1;
use aleph_protocol::scheduler::{
    Allocation, AllocationResult, CORECHAN_OPERATION, CREATE_RESOURCE_NODE, Heartbeat,
    HeartbeatReply, NodeResources, RunningVm,
};
use aleph_protocol::signing::Signer;
use aleph_scheduler::{Scheduler, SchedulerConfig};
use aleph_types::message::MessageType;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const POSTGRES_ENV: &str = "ALEPH_TEST_POSTGRES_URL";

pub struct Ccn {
    pub handle: CcnHandle,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Ccn {
    pub async fn start(funded: &[&Signer]) -> Ccn {
        let dir = tempfile::tempdir().unwrap();
        let handle = aleph_ccn::start(CcnConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            database_url: None,
            funded: funded
                .iter()
                .map(|s| FundedAccount {
                    address: s.address().to_owned(),
                    balance: 1_000_000.0,
                    credit_balance: 1_000_000_000,
                })
                .collect(),
        })
        .await
        .unwrap();
        Ccn {
            handle,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        self.handle.url()
    }

    /// Signs and posts a message; expects it processed; returns its item hash.
    pub async fn post(&self, signer: &Signer, kind: MessageType, content: Value) -> String {
        let message = signer.sign(kind, content, Some("TEST")).unwrap();
        let response = self
            .http
            .post(format!("{}/api/v0/messages", self.url()))
            .json(&json!({"sync": true, "message": message}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "message refused: {body}");
        message.item_hash.to_string()
    }

    /// Uploads a file with a STORE; returns the STORE's item hash.
    pub async fn store(&self, signer: &Signer, bytes: &[u8]) -> String {
        use sha2::Digest;
        let file_hash = hex::encode(sha2::Sha256::digest(bytes));
        let store = signer
            .sign(
                MessageType::Store,
                json!({"item_type": "storage", "item_hash": file_hash}),
                Some("TEST"),
            )
            .unwrap();
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes.to_vec()).file_name("f"),
            )
            .text(
                "metadata",
                json!({"message": store, "sync": true}).to_string(),
            );
        let response = self
            .http
            .post(format!("{}/api/v0/storage/add_file", self.url()))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        store.item_hash.to_string()
    }

    /// Registers a node at `address` as `operator`; returns the node hash.
    pub async fn register_node(&self, operator: &Signer, name: &str, address: &str) -> String {
        self.post(
            operator,
            MessageType::Post,
            json!({"type": CORECHAN_OPERATION, "content": {
                "action": CREATE_RESOURCE_NODE, "tags": ["test"],
                "details": {"name": name, "address": address}}}),
        )
        .await
    }

    /// Posts a PROGRAM (persistent or not) with real code and runtime files.
    pub async fn program(&self, owner: &Signer, persistent: bool, memory: u64) -> String {
        let code = self.store(owner, b"code").await;
        let runtime = self.store(owner, b"runtime").await;
        self.post(
            owner,
            MessageType::Program,
            json!({
                "type": "vm-function", "allow_amend": true,
                "code": {"encoding": "zip", "entrypoint": "main:app", "ref": code, "use_latest": false},
                "runtime": {"ref": runtime, "use_latest": true, "comment": "python"},
                "on": {"http": true, "persistent": persistent},
                "environment": {"internet": false, "aleph_api": false, "reproducible": false, "shared_cache": false},
                "resources": {"vcpus": 1, "memory": memory, "seconds": 30},
                "volumes": []
            }),
        )
        .await
    }
}

/// Grace and lease of the tests: short, and lease < grace.
pub const GRACE: Duration = Duration::from_millis(2000);
pub const LEASE_SECONDS: u64 = 1;
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);

pub fn scheduler_config(ccn: &str, dir: &std::path::Path) -> SchedulerConfig {
    let mut config = SchedulerConfig::new(ccn, dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.grace = GRACE;
    config.lease_seconds = LEASE_SECONDS;
    config.poll_interval = Duration::from_millis(100);
    config
}

pub async fn start_scheduler(ccn: &str, dir: &std::path::Path) -> Scheduler {
    aleph_scheduler::start(scheduler_config(ccn, dir))
        .await
        .unwrap()
}

/// One push a fake CRN accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub allocation: Allocation,
    pub at: Instant,
}

/// A fake CRN: checks pushes like a CRN (signer, window, body, replay, version) and
/// "runs" the VMs of the newest list it applied.
pub struct FakeCrn {
    pub url: String,
    pub operator: Signer,
    pub operator_key: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub refused: Arc<Mutex<Vec<String>>>,
    pub alive: Arc<AtomicBool>,
    /// When its last heartbeat was sent (and answered).
    pub last_heartbeat: Arc<Mutex<Option<Instant>>>,
    pub replies: Arc<Mutex<Vec<HeartbeatReply>>>,
    server: tokio::task::JoinHandle<()>,
    beater: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct CrnState {
    /// A dead node neither heartbeats nor answers pushes.
    alive: Arc<AtomicBool>,
    allowed: Vec<String>,
    guard: Arc<eip191_v1::ReplayGuard>,
    received: Arc<Mutex<Vec<Received>>>,
    refused: Arc<Mutex<Vec<String>>>,
}

async fn allocations(
    axum::extract::State(state): axum::extract::State<CrnState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, axum::Json<Value>) {
    if !state.alive.load(Ordering::SeqCst) {
        return (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"error": "down"})),
        );
    }
    let now = chrono::Utc::now().timestamp();
    let header = headers.get("authorization").and_then(|v| v.to_str().ok());
    let checked = eip191_v1::verify(
        header,
        "POST",
        "/control/allocations",
        None,
        &body,
        now,
        &state.allowed,
    )
    .and_then(|v| state.guard.check(&v, now));
    if let Err(e) = checked {
        state.refused.lock().unwrap().push(e.to_string());
        return (
            StatusCode::from_u16(e.status()).unwrap(),
            axum::Json(json!({"error": e.to_string()})),
        );
    }
    let allocation: Allocation = serde_json::from_slice(&body).unwrap();
    let mut received = state.received.lock().unwrap();
    let applied = received
        .last()
        .and_then(|r| r.allocation.allocation_version)
        .unwrap_or(0);
    if allocation.allocation_version.unwrap_or(u64::MAX) < applied {
        return (StatusCode::CONFLICT, axum::Json(json!({"error": "older"})));
    }
    received.push(Received {
        allocation: allocation.clone(),
        at: Instant::now(),
    });
    let result = AllocationResult {
        success: true,
        successful: allocation.persistent_vms.clone(),
        ..Default::default()
    };
    (
        StatusCode::OK,
        axum::Json(serde_json::to_value(result).unwrap()),
    )
}

impl FakeCrn {
    pub async fn start(scheduler_address: &str) -> FakeCrn {
        let (operator, operator_key) = Signer::generate();
        let state = CrnState {
            alive: Arc::new(AtomicBool::new(true)),
            allowed: vec![scheduler_address.to_owned()],
            guard: Arc::default(),
            received: Arc::default(),
            refused: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/control/allocations", axum::routing::post(allocations))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeCrn {
            url,
            operator,
            operator_key,
            received: state.received,
            refused: state.refused,
            alive: state.alive,
            last_heartbeat: Arc::default(),
            replies: Arc::default(),
            server,
            beater: None,
        }
    }

    /// The newest list it applied.
    pub fn current(&self) -> Option<Allocation> {
        self.received
            .lock()
            .unwrap()
            .last()
            .map(|r| r.allocation.clone())
    }

    pub fn applied_version(&self) -> u64 {
        self.current()
            .and_then(|a| a.allocation_version)
            .unwrap_or(0)
    }

    /// Heartbeats every [`HEARTBEAT_EVERY`] while `alive`.
    pub fn start_heartbeats(&mut self, scheduler: &str, node_hash: &str) {
        if let Some(previous) = self.beater.take() {
            previous.abort();
        }
        let http = reqwest::Client::new();
        let url = format!("{scheduler}/api/v1/heartbeat");
        let key = self.operator_key.clone();
        let (node_hash, crn_url) = (node_hash.to_owned(), self.url.clone());
        let (received, alive, last, replies) = (
            self.received.clone(),
            self.alive.clone(),
            self.last_heartbeat.clone(),
            self.replies.clone(),
        );
        self.beater = Some(tokio::spawn(async move {
            let signer = Signer::from_hex(&key).unwrap();
            loop {
                if alive.load(Ordering::SeqCst) {
                    let current = received
                        .lock()
                        .unwrap()
                        .last()
                        .map(|r| r.allocation.clone());
                    let heartbeat = Heartbeat {
                        node_hash: node_hash.clone(),
                        url: crn_url.clone(),
                        allocation_version: current
                            .as_ref()
                            .and_then(|a| a.allocation_version)
                            .unwrap_or(0),
                        resources: resources(),
                        usage: json!({}),
                        running: current
                            .iter()
                            .flat_map(|a| a.persistent_vms.iter())
                            .map(|vm| RunningVm {
                                vm_hash: vm.clone(),
                                running: true,
                                started_at: None,
                            })
                            .collect(),
                    };
                    let sent = Instant::now();
                    if let Ok(response) = signed_post(&http, &signer, &url, &heartbeat).await
                        && response.status() == 200
                        && let Ok(reply) = response.json::<HeartbeatReply>().await
                    {
                        *last.lock().unwrap() = Some(sent);
                        replies.lock().unwrap().push(reply);
                    }
                }
                tokio::time::sleep(HEARTBEAT_EVERY).await;
            }
        }));
    }
}

impl Drop for FakeCrn {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(beater) = &self.beater {
            beater.abort();
        }
    }
}

pub fn resources() -> NodeResources {
    NodeResources {
        vcpus: 4,
        memory_mib: 4096,
        disk_mib: 100_000,
        ..Default::default()
    }
}

/// POSTs `body` as JSON signed `Aleph-EIP191-V1` by `signer`.
pub async fn signed_post(
    http: &reqwest::Client,
    signer: &Signer,
    url: &str,
    body: &impl serde::Serialize,
) -> reqwest::Result<reqwest::Response> {
    let bytes = serde_json::to_vec(body).unwrap();
    let path = reqwest::Url::parse(url).unwrap().path().to_owned();
    let header = eip191_v1::authorization(
        signer,
        "POST",
        &path,
        &bytes,
        chrono::Utc::now().timestamp(),
    )
    .unwrap();
    http.post(url)
        .header("authorization", header)
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
}

/// Polls `probe` until it gives a value, or panics after `limit` with `what`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
