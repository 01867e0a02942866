//! Persistent programs on one CRN, with the test acting as the scheduler: it signs
//! allocation pushes and answers the node's heartbeats.
//!
//! - `allocation_pushes_are_checked_fenced_and_kept` and
//!   `heartbeats_are_signed_and_keep_the_lease` need no VM.
//! - `persistent_program_lives_restarts_is_readopted_and_stops` boots real microVMs
//!   (root, QEMU and the guest images in `$ALEPH_DATA_DIR`, built with this tree's
//!   agent; skips with the reason printed otherwise).

mod common;

use aleph_crn::execution::prepare::BootImages;
use aleph_crn::{CrnConfig, CrnHandle};
use aleph_protocol::auth::eip191_v1;
use aleph_protocol::scheduler::{AllocationResult, Heartbeat, HeartbeatReply};
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::deploy::{KillVms, Network, init_logs, program_content, setup, zip_of};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HELLO: &str = r#"from fastapi import FastAPI
app = FastAPI()

@app.get("/")
async def root():
    return {"message": "Hello Persistent"}
"#;

/// Signs pushes as the scheduler does.
struct Pusher {
    signer: Signer,
    http: reqwest::Client,
}

impl Pusher {
    fn new() -> Self {
        Self {
            signer: Signer::generate().0,
            http: reqwest::Client::new(),
        }
    }

    async fn push_raw(&self, crn: &str, body: Vec<u8>, signer: Option<&Signer>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{crn}/control/allocations"))
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(600));
        if let Some(signer) = signer {
            let authorization = eip191_v1::authorization(
                signer,
                "POST",
                "/control/allocations",
                &body,
                chrono::Utc::now().timestamp(),
            )
            .unwrap();
            request = request.header("authorization", authorization);
        }
        let response = request.body(body).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn push(&self, crn: &str, allocation: Value) -> (u16, Value) {
        let body = serde_json::to_vec(&allocation).unwrap();
        self.push_raw(crn, body, Some(&self.signer)).await
    }
}

/// The scheduler's heartbeat route: checks the signature, keeps the heartbeats, and
/// answers with a lease, or refuses while told to.
#[derive(Clone)]
struct FakeScheduler {
    node: String,
    answer: Arc<Mutex<Option<HeartbeatReply>>>,
    received: Arc<Mutex<Vec<Heartbeat>>>,
}

impl FakeScheduler {
    async fn start(node: &str, reply: HeartbeatReply) -> (Self, String) {
        let scheduler = Self {
            node: node.to_owned(),
            answer: Arc::new(Mutex::new(Some(reply))),
            received: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/api/v1/heartbeat", axum::routing::post(heartbeat))
            .with_state(scheduler.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (scheduler, url)
    }

    fn answer(&self, reply: Option<HeartbeatReply>) {
        *self.answer.lock().unwrap() = reply;
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn last(&self) -> Option<Heartbeat> {
        self.received.lock().unwrap().last().cloned()
    }
}

async fn heartbeat(
    State(scheduler): State<FakeScheduler>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let verified = eip191_v1::verify(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        "POST",
        "/api/v1/heartbeat",
        None,
        &body,
        chrono::Utc::now().timestamp(),
        std::slice::from_ref(&scheduler.node),
    );
    if let Err(e) = verified {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": e.to_string()})),
        );
    }
    let heartbeat: Heartbeat = serde_json::from_slice(&body).unwrap();
    scheduler.received.lock().unwrap().push(heartbeat);
    match scheduler.answer.lock().unwrap().clone() {
        Some(reply) => (StatusCode::OK, axum::Json(json!(reply))),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "told to refuse"})),
        ),
    }
}

fn reply(lease_seconds: u64, allocation_version: u64, lost: bool) -> HeartbeatReply {
    HeartbeatReply {
        lease_seconds,
        allocation_version,
        lost,
    }
}

/// A CRN that never boots a VM (its images do not exist).
async fn start_bare(data_dir: &Path, config: CrnConfig) -> CrnHandle {
    aleph_crn::start_with_images(
        CrnConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.to_path_buf(),
            ccn_url: "http://127.0.0.1:9".into(),
            watch_updates: false,
            ..config
        },
        BootImages {
            kernel: "/nonexistent/vmlinuz".into(),
            initramfs: "/nonexistent/initramfs".into(),
        },
    )
    .await
    .expect("the CRN starts")
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_pushes_are_checked_fenced_and_kept() {
    init_logs();
    let work = tempfile::tempdir().unwrap();
    let scheduler = Pusher::new();
    let config = CrnConfig {
        allowed_schedulers: vec![scheduler.signer.address().to_owned()],
        ..CrnConfig::default()
    };
    let crn = start_bare(work.path(), config.clone()).await;
    let url = crn.url();
    let empty = |version: u64| json!({"persistent_vms": [], "instances": [], "allocation_version": version, "lease_seconds": 6});

    // Refusals, each a JSON error, none changing anything.
    let body = serde_json::to_vec(&empty(5)).unwrap();
    let (status, answer) = scheduler.push_raw(&url, body.clone(), None).await;
    assert_eq!(status, 401, "unsigned: {answer}");
    assert!(answer["error"].is_string());
    let stranger = Signer::generate().0;
    let (status, answer) = scheduler
        .push_raw(&url, body.clone(), Some(&stranger))
        .await;
    assert_eq!(status, 403, "another signer: {answer}");
    let huge = vec![b' '; (1 << 20) + 10];
    let (status, answer) = scheduler
        .push_raw(&url, huge, Some(&scheduler.signer))
        .await;
    assert_eq!(status, 413, "{answer}");
    let (status, answer) = scheduler
        .push_raw(
            &url,
            b"{\"persistent_vms\": 3}".to_vec(),
            Some(&scheduler.signer),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("bad allocation"));
    assert_eq!(crn.persistent().allocation_version(), 0);

    // Applied, then fenced.
    let (status, answer) = scheduler.push(&url, empty(5)).await;
    assert_eq!(status, 200, "{answer}");
    let result: AllocationResult = serde_json::from_value(answer).unwrap();
    assert!(result.success && result.stopped.is_empty());
    assert_eq!(crn.persistent().allocation_version(), 5);
    let (status, answer) = scheduler.push(&url, empty(4)).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("older"),
        "{answer}"
    );
    // A push without a version (an upstream scheduler) applies, the fence stays.
    let (status, answer) = scheduler
        .push(&url, json!({"persistent_vms": [], "instances": []}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(crn.persistent().allocation_version(), 5);
    // An instance whose message cannot be read fails (before anything is made for it); a
    // reference that is no hash fails alone.
    let (status, answer) = scheduler
        .push(
            &url,
            json!({"persistent_vms": ["nothash"], "instances": ["ab".repeat(32)], "allocation_version": 6}),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    let result: AllocationResult = serde_json::from_value(answer).unwrap();
    assert_eq!(result.failing.len(), 2);
    assert!(
        result.errors[&"ab".repeat(32)].contains("from the CCN"),
        "{:?}",
        result.errors
    );
    assert!(result.errors["nothash"].contains("not an item hash"));

    // The fence outlives the process.
    crn.shutdown().await;
    let crn = start_bare(work.path(), config).await;
    assert_eq!(crn.persistent().allocation_version(), 6);
    let (status, _) = scheduler.push(&crn.url(), empty(5)).await;
    assert_eq!(status, 409);
    crn.shutdown().await;

    // Without an allowed scheduler the route is off.
    let off = tempfile::tempdir().unwrap();
    let crn = start_bare(off.path(), CrnConfig::default()).await;
    let (status, answer) = scheduler.push(&crn.url(), empty(1)).await;
    assert_eq!(status, 403, "{answer}");
    crn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_signed_and_keep_the_lease() {
    init_logs();
    let work = tempfile::tempdir().unwrap();
    let (node, node_key) = Signer::generate();
    let (scheduler, scheduler_url) = FakeScheduler::start(node.address(), reply(2, 0, false)).await;
    let crn = start_bare(
        work.path(),
        CrnConfig {
            scheduler_url: Some(scheduler_url),
            node_hash: Some("cd".repeat(32)),
            node_key: Some(node_key),
            heartbeat_interval_seconds: 1,
            ..CrnConfig::default()
        },
    )
    .await;
    let persistent = crn.persistent().clone();
    wait_for(
        "a heartbeat answered",
        Duration::from_secs(10),
        async || persistent.may_run(),
    )
    .await;
    let heartbeat = scheduler.last().unwrap();
    assert_eq!(heartbeat.node_hash, "cd".repeat(32));
    assert_eq!(heartbeat.url, crn.url());
    assert!(heartbeat.resources.vcpus > 0 && heartbeat.resources.memory_mib > 0);
    assert!(heartbeat.usage["cpu"]["count"].as_u64().unwrap() >= 1);
    let remaining = persistent.lease_remaining().unwrap();
    assert!(remaining <= Duration::from_secs(2), "{remaining:?}");

    // Heartbeats keep coming, one per interval.
    let before = scheduler.count();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let sent = scheduler.count() - before;
    assert!((2..=3).contains(&sent), "{sent} heartbeats in 2.5 s");
    assert!(persistent.may_run());

    // Unanswered, the lease lapses within its 2 s.
    scheduler.answer(None);
    let refused_at = Instant::now();
    wait_for("the lease lapsed", Duration::from_secs(5), async || {
        !persistent.may_run()
    })
    .await;
    assert!(refused_at.elapsed() <= Duration::from_millis(3100));
    // Answered again: valid again; a lost node may not run persistent VMs.
    scheduler.answer(Some(reply(2, 0, false)));
    wait_for("the lease is back", Duration::from_secs(5), async || {
        persistent.may_run()
    })
    .await;
    scheduler.answer(Some(reply(30, 0, true)));
    wait_for("the node is lost", Duration::from_secs(5), async || {
        !persistent.may_run()
    })
    .await;
    crn.shutdown().await;
}

// ---- with real VMs ----

impl Network {
    async fn persistent_program(&self, runtime: &str, source: &str) -> String {
        let code = self.store(&zip_of(&[("main.py", source)]), None).await;
        let mut content = program_content(runtime, &code);
        content["on"]["persistent"] = json!(true);
        self.post(MessageType::Program, content).await
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn qemu_pid(crn: &CrnHandle, hash: &str) -> Option<u32> {
    crn.pool().execution(hash).map(|e| e.vm().pid())
}

fn is_running(crn: &CrnHandle, hash: &str) -> bool {
    crn.persistent()
        .report()
        .iter()
        .any(|vm| vm.vm_hash == hash && vm.running)
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http
        .get(url)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_program_lives_restarts_is_readopted_and_stops() {
    let Some(setup) = setup() else { return };
    let network = Network::start().await;
    let runtime = network.store_file(&setup.runtime, None).await;
    let program = network.persistent_program(&runtime, HELLO).await;

    let work = tempfile::Builder::new()
        .prefix("crn-persistent-")
        .tempdir_in("/tmp")
        .unwrap();
    let data_dir = work.path().join("crn");
    let _kill = KillVms(data_dir.clone());
    let pusher = Pusher::new();
    let (node, node_key) = Signer::generate();
    let lease_seconds = 6;
    let (scheduler, scheduler_url) =
        FakeScheduler::start(node.address(), reply(lease_seconds, 0, false)).await;
    let config = CrnConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ccn_url: network.ccn.url(),
        data_dir: data_dir.clone(),
        images_dir: Some(setup.images_dir.clone()),
        scheduler_url: Some(scheduler_url),
        node_hash: Some("cd".repeat(32)),
        node_key: Some(node_key),
        allowed_schedulers: vec![pusher.signer.address().to_owned()],
        heartbeat_interval_seconds: 1,
        // Idle programs would be stopped at once: persistent ones must not be.
        idle_timeout_seconds: 1,
        watch_updates: false,
        ..CrnConfig::default()
    };
    let crn = aleph_crn::start(config.clone()).await.unwrap();
    let http = reqwest::Client::new();
    let persistent = crn.persistent().clone();
    wait_for("the lease", Duration::from_secs(10), async || {
        persistent.may_run()
    })
    .await;

    // Before it is allocated here, a request does not start a copy of its own.
    let (status, body) = get(&http, &format!("{}/vm/{program}/", crn.url())).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not allocated to this node"),
        "{body}"
    );
    assert!(qemu_pid(&crn, &program).is_none());

    // A push starts it; it answers on /vm/{hash}/.
    let started = Instant::now();
    let (status, answer) = pusher
        .push(
            &crn.url(),
            json!({"persistent_vms": [program], "instances": [], "allocation_version": 1, "lease_seconds": lease_seconds}),
        )
        .await;
    eprintln!("push answered in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["successful"], json!([program]));
    let (status, body) = get(&http, &format!("{}/vm/{program}/", crn.url())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"message": "Hello Persistent"}));
    wait_for("reported running", Duration::from_secs(10), async || {
        is_running(&crn, &program)
    })
    .await;
    wait_for(
        "a heartbeat reports it",
        Duration::from_secs(5),
        async || {
            scheduler
                .last()
                .is_some_and(|h| h.allocation_version == 1 && h.running.iter().any(|vm| vm.running))
        },
    )
    .await;
    // Not stopped for being idle (idle timeout 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first_pid = qemu_pid(&crn, &program).expect("still running");

    // Killed from outside: restarted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    wait_for(
        "restarted after a kill",
        Duration::from_secs(180),
        async || {
            qemu_pid(&crn, &program).is_some_and(|pid| pid != first_pid)
                && is_running(&crn, &program)
        },
    )
    .await;
    eprintln!("restarted in {:.1} s", killed.elapsed().as_secs_f64());
    let (status, body) = get(&http, &format!("{}/vm/{program}/", crn.url())).await;
    assert_eq!(status, 200, "{body}");
    let second_pid = qemu_pid(&crn, &program).unwrap();

    // The CRN process restarts: the VM is taken back, not rebooted. (Nothing of the
    // old node may stay alive: its channel sessions would hold the VMs' sockets.)
    drop(persistent);
    crn.shutdown().await;
    let crn = aleph_crn::start(config.clone()).await.unwrap();
    assert_eq!(qemu_pid(&crn, &program), Some(second_pid), "the same VM");
    assert!(crn.pool().is_persistent(&program));
    assert_eq!(crn.persistent().allocation_version(), 1);
    let (status, body) = get(&http, &format!("{}/vm/{program}/", crn.url())).await;
    assert_eq!(status, 200, "{body}");
    // It keeps running across lease renewals (the guest's lease is renewed).
    tokio::time::sleep(Duration::from_secs(lease_seconds + 2)).await;
    assert_eq!(qemu_pid(&crn, &program), Some(second_pid));
    assert!(alive(second_pid));

    // Left out of the allocation: stopped.
    let (status, answer) = pusher
        .push(
            &crn.url(),
            json!({"persistent_vms": [], "instances": [], "allocation_version": 2}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stopped"], json!([program]));
    assert!(!alive(second_pid));
    assert_eq!(qemu_pid(&crn, &program), None);

    // Allocated again, then the CRN goes away without stopping it: its guest, no
    // longer leased, powers off by itself.
    let (status, answer) = pusher
        .push(
            &crn.url(),
            json!({"persistent_vms": [program], "instances": [], "allocation_version": 3}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let third_pid = qemu_pid(&crn, &program).expect("running again");
    crn.shutdown().await;
    let gone = Instant::now();
    let limit = Duration::from_secs(lease_seconds + 15);
    while alive(third_pid) {
        assert!(
            gone.elapsed() < limit,
            "the unleased VM still runs after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the unleased guest powered off {:.1} s after its node stopped",
        gone.elapsed().as_secs_f64()
    );
    assert!(gone.elapsed() <= Duration::from_secs(lease_seconds + 5));
}
