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
        .args(["--ccn-port", &port.to_string(), "--accounts", "3"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut devnet = Devnet(child);

    let info = wait_for_info(&dir.path().join("devnet.json"), &mut devnet);
    let ccn_url = format!("http://127.0.0.1:{port}");
    assert_eq!(info["ccn_url"], ccn_url);
    assert_eq!(info["crn_urls"], serde_json::json!([]));
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
