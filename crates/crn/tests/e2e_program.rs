//! On-demand programs end to end: an in-process CCN holding a signed runtime STORE, code
//! STOREs and PROGRAMs, an in-process CRN booting real microVMs (QEMU, TCG here) with
//! the real guest agent and FastAPI apps, and plain HTTP requests to the CRN.
//!
//! Needs root, QEMU and the guest images in `$ALEPH_DATA_DIR` (`aleph-node images
//! build`); skips with the reason printed otherwise.

mod common;

use aleph_crn::{CrnConfig, CrnHandle};
use aleph_types::message::MessageType;
use common::deploy::{KillVms, Network, Setup, program_content, setup, zip_of};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const HELLO: &str = r#"import asyncio
from fastapi import FastAPI, Request
app = FastAPI()

@app.get("/")
async def root():
    return {"message": "Hello World"}

@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    return {"query": dict(request.query_params), "body": body.decode(),
            "header": request.headers.get("x-test")}

@app.get("/sleep")
async def sleep(s: float):
    await asyncio.sleep(s)
    return {"slept": s}
"#;

const HELLO_AGAIN: &str = r#"from fastapi import FastAPI
app = FastAPI()

@app.get("/")
async def root():
    return {"message": "Hello Again"}
"#;

const RAISES: &str = "raise RuntimeError('this app refuses to start')\n";

impl Network {
    async fn program(&self, runtime: &str, code: &str, seconds: u32) -> String {
        self.program_with(
            runtime,
            code,
            json!({"vcpus": 1, "memory": 384, "seconds": seconds}),
        )
        .await
    }

    async fn program_with(&self, runtime: &str, code: &str, resources: Value) -> String {
        let mut content = program_content(runtime, code);
        content["resources"] = resources;
        content["variables"] = json!({"GREETING": "hello"});
        self.post(MessageType::Program, content).await
    }
}

async fn start_crn(network: &Network, setup: &Setup, data_dir: &Path) -> CrnHandle {
    start_crn_with(network, setup, data_dir, CrnConfig::default()).await
}

async fn start_crn_with(
    network: &Network,
    setup: &Setup,
    data_dir: &Path,
    config: CrnConfig,
) -> CrnHandle {
    aleph_crn::start(CrnConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ccn_url: network.ccn.url(),
        data_dir: data_dir.to_path_buf(),
        images_dir: Some(setup.images_dir.clone()),
        domain: Some("crn.test".into()),
        ..config
    })
    .await
    .expect("the CRN starts")
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn request(builder: reqwest::RequestBuilder) -> Answer {
    let response = builder
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

async fn executions(http: &reqwest::Client, crn: &CrnHandle) -> Value {
    request(http.get(format!("{}/v2/about/executions/list", crn.url())))
        .await
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_program_is_served_reused_updated_and_survives_a_crn_restart() {
    let Some(setup) = setup() else { return };
    let network = Network::start().await;
    let runtime = network.store_file(&setup.runtime, None).await;
    let code = network.store(&zip_of(&[("main.py", HELLO)]), None).await;
    let program = network.program(&runtime, &code, 5).await;

    let work = tempfile::Builder::new()
        .prefix("crn-e2e-")
        .tempdir_in("/tmp")
        .unwrap();
    let data_dir = work.path().join("crn");
    let _kill = KillVms(data_dir.clone());
    let crn = start_crn(&network, &setup, &data_dir).await;
    let http = reqwest::Client::new();
    let vm_url = |path: &str| format!("{}/vm/{program}{path}", crn.url());

    // Bad and unknown references, answered without any VM.
    let bad = request(http.get(format!("{}/vm/not-a-hash/", crn.url()))).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body["error"].is_string());
    let server = bad.headers["server"].to_str().unwrap();
    assert!(server.starts_with("aleph-crn/"), "{server}");
    let unknown = request(http.get(format!("{}/vm/{}/", crn.url(), "ab".repeat(32)))).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let not_program = request(http.get(format!("{}/vm/{code}/", crn.url()))).await;
    assert_eq!(not_program.status, 404, "{}", not_program.body);

    // Three requests at once to the cold program: one VM boots, all get the answer.
    let started = Instant::now();
    let cold = futures::future::join_all((0..3).map(|_| request(http.get(vm_url("/"))))).await;
    eprintln!("cold start: {:.1} s", started.elapsed().as_secs_f64());
    for answer in &cold {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body, json!({"message": "Hello World"}));
        assert_eq!(answer.headers["aleph-program-itemhash"], program.as_str());
        assert_eq!(answer.headers["aleph-program-code-ref"], code.as_str());
        assert!(
            answer.headers["server"]
                .to_str()
                .unwrap()
                .starts_with("aleph-crn/")
        );
    }
    let listed = executions(&http, &crn).await;
    let listed = listed.as_object().unwrap();
    assert_eq!(
        listed.len(),
        1,
        "one VM for concurrent first requests: {listed:?}"
    );
    let first_id = listed[&program]["execution_id"].clone();
    assert_eq!(listed[&program]["running"], true);

    // Warm: the same VM answers, fast.
    let started = Instant::now();
    let warm = request(http.get(vm_url("/"))).await;
    eprintln!("warm request: {:.3} s", started.elapsed().as_secs_f64());
    assert_eq!(warm.status, 200);
    assert_eq!(
        executions(&http, &crn).await[&program]["execution_id"],
        first_id
    );

    // The agent's own routes are not reachable from outside.
    let reserved = request(http.post(vm_url("/_agent/shutdown"))).await;
    assert_eq!(reserved.status, 404, "{}", reserved.body);

    // Method, query, headers and body go through.
    let echo = request(
        http.post(vm_url("/echo?x=1&y=two"))
            .header("x-test", "passed")
            .body("some body"),
    )
    .await;
    assert_eq!(echo.status, 200, "{}", echo.body);
    assert_eq!(
        echo.body,
        json!({"query": {"x": "1", "y": "two"}, "body": "some body", "header": "passed"})
    );

    // Host-based routing on the base32 name, any path.
    let label = aleph_protocol::hostname::encode(&program).unwrap();
    let by_host = request(
        http.get(format!("{}/echo", crn.url()))
            .header("host", format!("{label}.crn.test"))
            .header("x-test", "host"),
    )
    .await;
    assert_eq!(
        by_host.status, 405,
        "GET on a POST route reaches the app: {}",
        by_host.body
    );
    let by_host = request(
        http.get(format!("{}/", crn.url()))
            .header("host", format!("{label}.crn.test:4020")),
    )
    .await;
    assert_eq!(by_host.body, json!({"message": "Hello World"}));

    // The per-request timeout is resources.seconds (5 here).
    let slow = request(http.get(vm_url("/sleep?s=8"))).await;
    assert_eq!(slow.status, 504, "{}", slow.body);
    let quick = request(http.get(vm_url("/sleep?s=0.1"))).await;
    assert_eq!(
        quick.status, 200,
        "the VM still serves after a timeout: {}",
        quick.body
    );

    // Node endpoints.
    let usage = request(http.get(format!("{}/about/usage/system", crn.url()))).await;
    assert!(
        usage.body["mem"]["total_kB"].as_u64().unwrap() > 0,
        "{}",
        usage.body
    );
    assert_eq!(usage.body["active"], true);
    let v1 = request(http.get(format!("{}/about/executions/list", crn.url()))).await;
    assert_eq!(v1.body[&program]["running"], true, "{}", v1.body);
    assert!(v1.body[&program]["status"]["started_at"].is_string());
    let config = request(http.get(format!("{}/status/config", crn.url()))).await;
    assert_eq!(config.body["domain"], "crn.test");
    let check = request(http.get(format!("{}/status/check/fastapi", crn.url()))).await;
    assert_eq!(
        check.status, 503,
        "no diagnostic program configured: {}",
        check.body
    );

    // The CRN restarts while the program is warm: the new one takes the VM back.
    let pid_before = std::fs::read_to_string(
        data_dir
            .join("executions")
            .join(first_id.as_str().unwrap())
            .join("qemu.pid"),
    )
    .unwrap();
    crn.shutdown().await;
    let crn = start_crn(&network, &setup, &data_dir).await;
    let vm_url = |path: &str| format!("{}/vm/{program}{path}", crn.url());
    let started = Instant::now();
    let after = request(http.get(vm_url("/"))).await;
    eprintln!(
        "first request after the restart: {:.3} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(after.body, json!({"message": "Hello World"}));
    let listed = executions(&http, &crn).await;
    assert_eq!(listed[&program]["execution_id"], first_id, "{listed}");
    assert_eq!(listed[&program]["adopted"], true);
    let pid_after = std::fs::read_to_string(
        data_dir
            .join("executions")
            .join(first_id.as_str().unwrap())
            .join("qemu.pid"),
    )
    .unwrap();
    assert_eq!(pid_before, pid_after, "the same VM");

    // A new version of the code (a STORE amending the first) stops the warm VM, and
    // the next request runs the new code.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !crn.pool().is_following_updates() {
        assert!(
            Instant::now() < deadline,
            "the CRN follows the CCN's messages"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_code = network
        .store(&zip_of(&[("main.py", HELLO_AGAIN)]), Some(&code))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while executions(&http, &crn).await.get(&program).is_some() {
        assert!(Instant::now() < deadline, "the update stops the VM");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let updated = request(http.get(vm_url("/"))).await;
    assert_eq!(updated.body, json!({"message": "Hello Again"}));
    assert_eq!(updated.headers["aleph-program-code-ref"], new_code.as_str());

    // The stopped execution is on record with its times and usage.
    let records = request(http.get(format!("{}/about/executions/records", crn.url()))).await;
    let records = records.body["records"].as_array().unwrap().clone();
    let first = records
        .iter()
        .find(|r| r["uuid"] == first_id)
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(first["reason"], "updated");
    assert!(first["time_started"].is_string() && first["time_stopped"].is_string());
    assert!(first["cpu_time_user"].as_f64().unwrap() > 0.0, "{first}");
    assert!(first["memory_peak"].as_i64().unwrap() > 0, "{first}");

    crn.shutdown_and_stop_vms().await;
    assert_eq!(
        std::fs::read_dir(data_dir.join("executions"))
            .unwrap()
            .count(),
        0,
        "stopped executions leave no folder"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_programs_give_the_documented_errors() {
    let Some(setup) = setup() else { return };
    let network = Network::start().await;
    let runtime = network.store_file(&setup.runtime, None).await;
    let raises = network.store(&zip_of(&[("main.py", RAISES)]), None).await;
    let escapes = network
        .store(
            &zip_of(&[("main.py", HELLO), ("../evil.py", "x = 1\n")]),
            None,
        )
        .await;
    let raising_program = network.program(&runtime, &raises, 5).await;
    let escaping_program = network.program(&runtime, &escapes, 5).await;

    let work = tempfile::Builder::new()
        .prefix("crn-e2e-")
        .tempdir_in("/tmp")
        .unwrap();
    let data_dir = work.path().join("crn");
    let _kill = KillVms(data_dir.clone());
    let crn = start_crn(&network, &setup, &data_dir).await;
    let http = reqwest::Client::new();

    let (raised, escaped) = tokio::join!(
        request(http.get(format!("{}/vm/{raising_program}/", crn.url()))),
        request(http.get(format!("{}/vm/{escaping_program}/", crn.url()))),
    );
    assert_eq!(raised.status, 500, "{}", raised.body);
    let traceback = raised.body["traceback"].as_str().unwrap_or_default();
    assert!(
        traceback.contains("RuntimeError") && traceback.contains("this app refuses to start"),
        "{}",
        raised.body
    );
    assert_eq!(escaped.status, 500, "{}", escaped.body);
    let error = escaped.body["error"].as_str().unwrap_or_default();
    assert!(error.contains("../evil.py"), "{}", escaped.body);

    // Failed starts leave no VM and no folder, and are on record.
    assert_eq!(executions(&http, &crn).await, json!({}));
    assert_eq!(
        std::fs::read_dir(data_dir.join("executions"))
            .unwrap()
            .count(),
        0
    );
    let records = request(http.get(format!("{}/about/executions/records", crn.url()))).await;
    let reasons: Vec<&str> = records.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.starts_with("failed")),
        "{reasons:?}"
    );
    crn.shutdown_and_stop_vms().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostic_check_idle_stop_admission_and_draining() {
    let Some(setup) = setup() else { return };
    let network = Network::start().await;
    let runtime = network.store_file(&setup.runtime, None).await;
    let code = network
        .store(
            &zip_of(&[("main.py", include_str!("../diagnostic/main.py"))]),
            None,
        )
        .await;
    let diagnostic = network.program(&runtime, &code, 10).await;
    let big = network
        .program_with(
            &runtime,
            &code,
            json!({"vcpus": 1, "memory": 4096, "seconds": 5}),
        )
        .await;

    let work = tempfile::Builder::new()
        .prefix("crn-e2e-")
        .tempdir_in("/tmp")
        .unwrap();
    let data_dir = work.path().join("crn");
    let _kill = KillVms(data_dir.clone());
    let crn = start_crn_with(
        &network,
        &setup,
        &data_dir,
        CrnConfig {
            diagnostic_program: Some(diagnostic.clone()),
            idle_timeout_seconds: 4,
            max_program_memory_mib: Some(1024),
            ..CrnConfig::default()
        },
    )
    .await;
    let http = reqwest::Client::new();

    // More memory than the node gives programs: refused before any VM boots.
    let refused = request(http.get(format!("{}/vm/{big}/", crn.url()))).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body["error"].as_str().unwrap().contains("memory"),
        "{}",
        refused.body
    );

    // Each feature checked through the diagnostic app; programs have no internet here,
    // and the check says so rather than passing.
    let check = request(http.get(format!("{}/status/check/fastapi", crn.url()))).await;
    let expected = json!({
        "index": true, "environ": true, "hostname": true, "lifespan": true,
        "post_body_and_query": true, "warm_state": true, "app_error_is_500": true,
        "internet": false,
    });
    assert_eq!(check.body, expected);
    assert_eq!(check.status, 503);

    // Idle for longer than the idle timeout: the VM is stopped and recorded.
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = request(http.get(format!("{}/about/executions/records", crn.url()))).await;
        if records.body["records"][0].is_object() {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "the idle VM is stopped and recorded"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(executions(&http, &crn).await, json!({}));
    assert_eq!(
        records.body["records"][0]["reason"], "idle",
        "{}",
        records.body
    );
    assert_eq!(records.body["records"][0]["vm_hash"], diagnostic.as_str());

    // A draining node takes no new requests.
    crn.pool().drain();
    let draining = request(http.get(format!("{}/vm/{diagnostic}/", crn.url()))).await;
    assert_eq!(draining.status, 503, "{}", draining.body);
    crn.shutdown_and_stop_vms().await;
}
