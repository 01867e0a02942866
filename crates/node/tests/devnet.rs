//! `aleph-node devnet` as a user runs it: a child process on a free loopback
//! port, found through its `devnet.json`, stopped with SIGTERM.

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Stops the devnet even when an assertion fails, so no test leaves it running.
struct Devnet(Child);

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits for the devnet to write its info file (it does once the CCN answers).
fn wait_for_info(path: &Path, devnet: &mut Devnet) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            return serde_json::from_slice(&bytes).expect("devnet.json is JSON");
        }
        if let Some(status) = devnet.0.try_wait().unwrap() {
            panic!("the devnet exited early with {status}");
        }
        assert!(Instant::now() < deadline, "no devnet.json after 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn devnet_writes_its_info_and_funds_its_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_aleph-node"))
        .args(["devnet", "--data-dir"])
        .arg(dir.path())
        .args([
            "--ccn-port",
            &port.to_string(),
            "--accounts",
            "3",
            "--no-crn",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut devnet = Devnet(child);

    let info = wait_for_info(&dir.path().join("devnet.json"), &mut devnet);
    let ccn_url = format!("http://127.0.0.1:{port}");
    assert_eq!(info["ccn_url"], ccn_url);
    assert_eq!(info["crn_urls"], serde_json::json!([]));
    assert_eq!(info["crn_unavailable"], "started with --no-crn");
    assert!(info["scheduler_url"].is_null());
    let accounts = info["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 3);

    let http = reqwest::Client::new();
    for account in accounts {
        let address = account["address"].as_str().unwrap();
        let key = account["private_key"].as_str().unwrap();
        assert_eq!(key.len(), 66, "0x and 64 hex characters: {key}");

        let balance: Value = http
            .get(format!("{ccn_url}/api/v0/addresses/{address}/balance"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            balance["credit_balance"].as_u64().unwrap_or(0) > 0,
            "{address} has no credit: {balance}"
        );
        assert!(
            balance["balance"].as_f64().unwrap_or(0.0) > 0.0,
            "{address} holds no ALEPH: {balance}"
        );
    }

    // SIGTERM stops it cleanly.
    let pid = devnet.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = devnet.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the devnet ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the devnet exited with {status}");
}

#[test]
fn devnet_keys_are_the_same_on_every_start() {
    let info_of = |accounts: &str| {
        // Port 0: two devnets at once must not collide.
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_aleph-node"))
            .args([
                "devnet",
                "--ccn-port",
                "0",
                "--accounts",
                accounts,
                "--no-crn",
                "--data-dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut devnet = Devnet(child);
        let info = wait_for_info(&dir.path().join("devnet.json"), &mut devnet);
        info["accounts"].clone()
    };
    let two = info_of("2");
    let three = info_of("3");
    assert_eq!(two[0], three[0]);
    assert_eq!(two[1], three[1]);
    assert_ne!(three[0]["address"], three[2]["address"]);
}

/// Without the agent to build images from, the devnet still runs its CCN and
/// says, in devnet.json and on stderr, what is missing and how to get it.
#[tokio::test]
async fn devnet_without_images_runs_its_ccn_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_aleph-node"))
        .args(["devnet", "--ccn-port", "0", "--crn-port", "0", "--data-dir"])
        .arg(dir.path().join("net"))
        .arg("--images-dir")
        .arg(images.path())
        .env("ALEPH_GUEST_BIN", images.path().join("no-such-agent"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut devnet = Devnet(child);
    let info = wait_for_info(&dir.path().join("net/devnet.json"), &mut devnet);
    assert_eq!(info["crn_urls"], serde_json::json!([]));
    assert!(info["default_runtime"].is_null());
    assert!(info["default_rootfs"].is_null());
    let reason = info["crn_unavailable"].as_str().expect("a reason");
    let has_crn = Command::new(env!("CARGO_BIN_EXE_aleph-node"))
        .args(["crn", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    if has_crn {
        assert!(reason.contains("scripts/build-guest"), "{reason}");
        assert!(reason.contains("no-such-agent"), "{reason}");
    } else {
        assert!(reason.contains("no `crn` subcommand"), "{reason}");
    }
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(stderr.contains(reason), "{stderr}");

    // The CCN answers all the same.
    let ccn_url = info["ccn_url"].as_str().unwrap();
    let answer = reqwest::get(format!("{ccn_url}/api/v0/messages.json"))
        .await
        .unwrap();
    assert!(answer.status().is_success());
}
