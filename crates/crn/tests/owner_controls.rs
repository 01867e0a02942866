//! The owner's controls end to end: an in-process CCN with a program and the owner's
//! `security` aggregate (real signed messages), an in-process CRN running the program
//! in a real VM (QEMU), and `/control/machine/{ref}/…` requests signed with the
//! operator scheme by the owner, a delegate and strangers.
//!
//! Needs root, QEMU and the guest images in `$ALEPH_DATA_DIR` (`aleph-node images
//! build`); skips with the reason printed otherwise. One VM, booted twice (the reboot).

mod common;

use aleph_crn::{CrnConfig, CrnHandle};
use aleph_protocol::auth::operator::OperatorKey;
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use common::deploy::{KillVms, Network, program_content, setup, zip_of};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const APP: &str = r#"from fastapi import FastAPI
app = FastAPI()

@app.get("/")
async def root():
    return {"message": "Hello World"}
"#;

/// What the CRN is configured with, and so what operations must be signed for.
const DOMAIN: &str = "crn.test";

impl Network {
    async fn program(&self, runtime_file: &Path) -> String {
        let runtime = self.store_file(runtime_file, None).await;
        let code = self.store(&zip_of(&[("main.py", APP)]), None).await;
        self.post(MessageType::Program, program_content(&runtime, &code))
            .await
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

struct Answer {
    status: u16,
    body: Value,
}

async fn send(builder: reqwest::RequestBuilder) -> Answer {
    let response = builder
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// The CRN's routes, called with or without an operator key.
struct Crn<'a> {
    node: &'a CrnHandle,
    http: reqwest::Client,
}

impl Crn<'_> {
    fn path(reference: &str, action: &str) -> String {
        format!("/control/machine/{reference}/{action}")
    }

    fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.http
            .request(method, format!("{}{path}", self.node.url()))
    }

    /// `method …/{reference}/{action}`, signed by `key` when given.
    async fn control(
        &self,
        method: &str,
        reference: &str,
        action: &str,
        key: Option<&OperatorKey>,
    ) -> Answer {
        let path = Self::path(reference, action);
        let mut builder = self.request(method, &path);
        if let Some(key) = key {
            for (name, value) in key.headers(method, DOMAIN, &path, now()) {
                builder = builder.header(name, value);
            }
        }
        send(builder).await
    }

    async fn executions(&self) -> Value {
        send(self.request("GET", "/v2/about/executions/list"))
            .await
            .body
    }
}

/// Opens `stream_logs`, authenticates as `key`, and reads messages until `enough` of
/// them, the socket's end or 20 s. `Err(status)` when the upgrade is refused.
async fn stream_logs(
    node: &CrnHandle,
    reference: &str,
    key: &OperatorKey,
    enough: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>, u16> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Error, Message};
    let path = Crn::path(reference, "stream_logs");
    let url = format!("ws://{}{path}", node.addr());
    let mut socket = match tokio_tungstenite::connect_async(&url).await {
        Ok((socket, _)) => socket,
        Err(Error::Http(response)) => return Err(response.status().as_u16()),
        Err(e) => panic!("{url}: {e}"),
    };
    let mut auth = serde_json::Map::new();
    for (name, value) in key.headers("GET", DOMAIN, &path, now()) {
        auth.insert(name.to_owned(), serde_json::from_str(&value).unwrap());
    }
    let auth = json!({"auth": auth}).to_string();
    socket.send(Message::text(auth)).await.unwrap();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !enough(&received) {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                received.push(serde_json::from_str(text.as_str()).unwrap())
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    let _ = socket.close(None).await;
    Ok(received)
}

fn key_of(signer: &Signer) -> OperatorKey {
    OperatorKey::generate(signer, Duration::from_secs(3600)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_and_delegates_stop_reboot_and_read_logs_strangers_do_not() {
    let Some(setup) = setup() else { return };
    let runtime = setup.runtime;
    let network = Network::start().await;
    let program = network.program(&runtime).await;

    let work = tempfile::Builder::new()
        .prefix("crn-owner-")
        .tempdir_in("/tmp")
        .unwrap();
    let data_dir = work.path().join("crn");
    let _kill = KillVms(data_dir.clone());
    let node = aleph_crn::start(CrnConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ccn_url: network.ccn.url(),
        data_dir: data_dir.clone(),
        images_dir: Some(setup.images_dir),
        domain: Some(DOMAIN.into()),
        ..CrnConfig::default()
    })
    .await
    .expect("the CRN starts");
    let crn = Crn {
        node: &node,
        http: reqwest::Client::new(),
    };

    let started = Instant::now();
    let app = send(crn.request("GET", &format!("/vm/{program}/"))).await;
    assert_eq!(app.status, 200, "{}", app.body);
    eprintln!("boot: {:.1} s", started.elapsed().as_secs_f64());
    let first_id = crn.executions().await[&program]["execution_id"].clone();
    assert!(first_id.is_string());

    let owner = key_of(&network.signer);
    let (stranger, _) = Signer::generate();
    let stranger = key_of(&stranger);
    let (delegate_wallet, _) = Signer::generate();
    let delegate = key_of(&delegate_wallet);

    // 401: unsigned, an expired key, an operation used twice, one signed for another path.
    let unsigned = crn.control("POST", &program, "stop", None).await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    assert!(unsigned.body["error"].is_string());
    let expired = OperatorKey::generate_until(&network.signer, now() - 1).unwrap();
    let answer = crn.control("POST", &program, "stop", Some(&expired)).await;
    assert_eq!(answer.status, 401, "expired key: {}", answer.body);
    let logs_path = Crn::path(&program, "logs");
    let headers = owner.headers("GET", DOMAIN, &logs_path, now());
    let signed_once = || {
        let mut builder = crn.request("GET", &logs_path);
        for (name, value) in &headers {
            builder = builder.header(*name, value);
        }
        builder
    };
    let logs = send(signed_once()).await;
    assert_eq!(logs.status, 200, "{}", logs.body);
    let replayed = send(signed_once()).await;
    assert_eq!(replayed.status, 401, "replayed: {}", replayed.body);
    let elsewhere = owner.headers("POST", DOMAIN, &Crn::path(&program, "reboot"), now());
    let mut builder = crn.request("POST", &Crn::path(&program, "stop"));
    for (name, value) in elsewhere {
        builder = builder.header(name, value);
    }
    let answer = send(builder).await;
    assert_eq!(answer.status, 401, "signed for reboot: {}", answer.body);

    // The logs: the console of the boot, the agent's lines as `system`.
    let entries = logs.body.as_array().expect("a list of log entries");
    assert!(
        entries
            .iter()
            .any(|e| e["type"] == "system"
                && e["message"].as_str().unwrap().contains("aleph-guest:")),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| e["type"] == "system" || e["type"] == "stdout")
    );

    // The live logs: connected, then the agent's lines (its boot messages first).
    let streamed = stream_logs(&node, &program, &owner, |got| {
        got.iter().skip(1).any(|line| line["type"] == "system")
    })
    .await
    .unwrap();
    assert_eq!(
        streamed.first(),
        Some(&json!({"status": "connected"})),
        "{streamed:?}"
    );
    assert!(
        streamed[1..]
            .iter()
            .any(|line| line["type"] == "system" && line["message"].is_string()),
        "{streamed:?}"
    );
    let refused = stream_logs(&node, &program, &stranger, |got| !got.is_empty())
        .await
        .unwrap();
    assert_eq!(refused[0]["status"], "failed", "{refused:?}");
    assert!(refused.len() == 1, "nothing after the refusal: {refused:?}");
    let unknown = stream_logs(&node, &"ab".repeat(32), &owner, |_| true).await;
    assert_eq!(unknown, Err(404));

    // 403: valid signatures by wallets the owner did not delegate to.
    for action in ["stop", "logs"] {
        let method = if action == "logs" { "GET" } else { "POST" };
        let answer = crn.control(method, &program, action, Some(&stranger)).await;
        assert_eq!(answer.status, 403, "stranger {action}: {}", answer.body);
    }
    let answer = crn
        .control("POST", &program, "reboot", Some(&delegate))
        .await;
    assert_eq!(answer.status, 403, "not yet delegated: {}", answer.body);
    assert_eq!(
        crn.executions().await[&program]["execution_id"],
        first_id,
        "refused requests leave the VM alone"
    );

    // 404: a VM this node does not run; 501: what is not written yet.
    let unknown = crn
        .control("POST", &"ab".repeat(32), "stop", Some(&owner))
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.body["error"].is_string());
    let erase = crn.control("POST", &program, "erase", Some(&owner)).await;
    assert_eq!(erase.status, 501, "{}", erase.body);
    assert!(
        erase.body["error"]
            .as_str()
            .unwrap()
            .contains("not implemented")
    );

    // The owner delegates in its `security` aggregate: the delegate may reboot.
    network
        .post(
            MessageType::Aggregate,
            json!({"key": "security", "content": {"authorizations": [
                {"address": delegate_wallet.address(), "types": ["INSTANCE"]},
            ]}}),
        )
        .await;
    let started = Instant::now();
    let rebooted = crn
        .control("POST", &program, "reboot", Some(&delegate))
        .await;
    assert_eq!(rebooted.status, 200, "{}", rebooted.body);
    eprintln!("reboot: {:.1} s", started.elapsed().as_secs_f64());
    let listed = crn.executions().await;
    assert_eq!(listed[&program]["running"], true, "{listed}");
    assert_ne!(listed[&program]["execution_id"], first_id, "a new VM");
    assert_eq!(
        listed[&program]["execution_id"], rebooted.body["execution_id"],
        "{listed}"
    );
    let app = send(crn.request("GET", &format!("/vm/{program}/"))).await;
    assert_eq!(app.status, 200, "{}", app.body);
    assert_eq!(app.body, json!({"message": "Hello World"}));

    // The owner stops it while following its logs: the stream says so and ends; the VM
    // leaves the list; stopping again finds nothing.
    let followed = stream_logs(&node, &program, &owner, |got| {
        got.last()
            .is_some_and(|line| line["message"] == "the VM stopped")
    });
    let stop = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        crn.control("POST", &program, "stop", Some(&owner)).await
    };
    let (followed, stopped) = tokio::join!(followed, stop);
    let followed = followed.unwrap();
    assert_eq!(followed[0], json!({"status": "connected"}));
    assert_eq!(
        followed.last(),
        Some(&json!({"type": "system", "message": "the VM stopped"})),
        "{followed:?}"
    );
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    let listed = crn.executions().await;
    assert!(listed.get(&program).is_none(), "{listed}");
    let again = crn.control("POST", &program, "stop", Some(&owner)).await;
    assert_eq!(again.status, 404, "{}", again.body);

    node.shutdown_and_stop_vms().await;
}
