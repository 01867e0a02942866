//! End to end, as a user: a fresh devnet (CCN + a CRN child process), the real
//! `aleph` CLI uploading `examples/hello`, and the program answering from a
//! microVM through the CRN; then a warm second request, a code update, and a
//! POST with a body and a query string.
//!
//! Needs the guest images built in `$ALEPH_DATA_DIR` (`scripts/test` builds
//! them first, and the instance root filesystem, whose publication is checked
//! when it is there) and the `aleph` binary of the same build (`cargo test
//! --workspace` builds it; alone: `cargo build -p aleph-cli`). Without the
//! images it says so and passes.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// VM boots under TCG on a busy 2-core machine take several times the idle figure.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);
/// The devnet is ready once its CRN answers (the CRN probes KVM on its first
/// start) and, with `--example`, once the example answered its cold start.
const DEVNET_TIMEOUT: Duration = Duration::from_secs(600);

/// Stops the devnet (SIGTERM, so its CRN stops its VMs) even when an assertion fails.
struct Devnet {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/<profile>/aleph`: test binaries run from `target/<profile>/deps`.
/// `cargo test -p aleph-node` does not build it, so an old one is refused
/// rather than tested.
fn aleph_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let cli = profile_dir.join("aleph");
    let hint = "build it with `cargo build -p aleph-cli` (cargo test --workspace does)";
    let built = std::fs::metadata(&cli)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {hint}", cli.display()));
    let sources = workspace_root().join("crates/cli/src");
    if let Some(newer) = newest_file(&sources).filter(|(time, _)| *time > built) {
        panic!(
            "{} is older than {}: {hint}",
            cli.display(),
            newer.1.display()
        );
    }
    cli
}

fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let candidate = if path.is_dir() {
            newest_file(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (t, path))
        };
        if let Some(candidate) = candidate
            && newest.as_ref().is_none_or(|(t, _)| candidate.0 > *t)
        {
            newest = Some(candidate);
        }
    }
    newest
}

fn images_dir() -> Option<PathBuf> {
    let dir = aleph_crn::images::default_data_dir();
    aleph_crn::images::cached(&dir).map(|_| dir)
}

/// One devnet at a time: each boots VMs, and two at once on a 2-core machine
/// only make both slower.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn start_devnet(images: &Path, extra: &[&str]) -> (Devnet, Value) {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("devnet.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_aleph-node"))
        .args([
            "devnet",
            "--ccn-port",
            "0",
            "--crn-port",
            "0",
            "--scheduler-port",
            "0",
            // One CRN: these tests are about on-demand programs (e2e_failover runs three).
            "--crns",
            "1",
            "--accounts",
            "2",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("net"))
        .arg("--images-dir")
        .arg(images)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut devnet = Devnet { child, dir };
    let info_path = devnet.dir.path().join("net/devnet.json");
    let deadline = Instant::now() + DEVNET_TIMEOUT;
    let info = loop {
        if let Ok(bytes) = std::fs::read(&info_path) {
            break serde_json::from_slice::<Value>(&bytes).unwrap();
        }
        if let Some(status) = devnet.child.try_wait().unwrap() {
            panic!(
                "the devnet exited with {status}: {}",
                std::fs::read_to_string(devnet.dir.path().join("devnet.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no devnet.json after {DEVNET_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    (devnet, info)
}

/// Runs the real CLI against the devnet with its first account; must succeed.
fn aleph(info: &Value, args: &[&std::ffi::OsStr]) -> Value {
    let output = Command::new(aleph_binary())
        .arg("--ccn")
        .arg(info["ccn_url"].as_str().unwrap())
        .arg("--private-key")
        .arg(info["accounts"][0]["private_key"].as_str().unwrap())
        .arg("--json")
        .args(args)
        .env_remove("ALEPH_RUNTIME")
        .env_remove("ALEPH_IMAGES_ADDRESS")
        .env_remove("ALEPH_CRN")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "aleph {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .build()
        .unwrap()
}

/// The running execution of `hash` on the CRN, from `/v2/about/executions/list`.
async fn execution(crn: &str, hash: &str) -> Value {
    let list: Value = http()
        .get(format!("{crn}/v2/about/executions/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list[hash].clone()
}

/// GETs `url` until it answers `expected` (a new code version takes effect
/// once the CRN has seen its STORE and stopped the old VM).
async fn wait_for_answer(url: &str, expected: &Value) -> Value {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let last = match http().get(url).send().await {
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                match serde_json::from_str::<Value>(&body) {
                    Ok(value) if status.is_success() && &value == expected => return value,
                    _ => format!("{status}: {body}"),
                }
            }
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{url} never answered {expected}; last: {last}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The devnet's `vm-images` aggregate names the runtime and, when there is
/// one, the root filesystem (a STORE of the built image) as the defaults.
async fn check_vm_images(info: &Value, rootfs: Option<&aleph_crn::images::RootfsImage>) {
    let ccn = info["ccn_url"].as_str().unwrap();
    let owner = info["images_address"].as_str().unwrap();
    let answer: Value = http()
        .get(format!(
            "{ccn}/api/v0/aggregates/{owner}.json?keys=vm-images"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let images = &answer["data"]["vm-images"];
    let runtime = images["defaults"]["runtime"].as_str().unwrap();
    assert_eq!(
        images["runtimes"][runtime]["hash"], info["default_runtime"],
        "{images}"
    );
    let Some(rootfs) = rootfs else {
        assert!(info["default_rootfs"].is_null(), "{info}");
        assert_eq!(info["rootfs_unavailable"], "started with --no-rootfs");
        assert_eq!(images["rootfs"], json!({}), "{images}");
        return;
    };
    assert!(info["default_rootfs"].is_string(), "{info}");
    assert_eq!(images["defaults"]["rootfs"], "debian12", "{images}");
    assert_eq!(
        images["rootfs"]["debian12"]["hash"], info["default_rootfs"],
        "{images}"
    );
    assert!(images["rootfs"]["debian12"]["display_name"].is_string());
    let store: Value = http()
        .get(format!(
            "{ccn}/api/v0/messages/{}",
            info["default_rootfs"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(store["status"], "processed", "{store}");
    assert_eq!(store["message"]["type"], "STORE", "{store}");
    // The image store names each file by its sha256, as the CCN does.
    let sha256 = rootfs.image.file_name().unwrap().to_str().unwrap();
    assert_eq!(store["message"]["content"]["item_hash"], sha256, "{store}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_is_uploaded_answers_warm_updates_and_round_trips_a_post() {
    let Some(images) = images_dir() else {
        eprintln!(
            "e2e_devnet: skipped, no guest images in {} (build them with scripts/build-guest, then `aleph-node images build`; scripts/test does)",
            aleph_crn::images::default_data_dir().display()
        );
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    // The test command builds the root filesystem first; without it, the devnet
    // would spend minutes building one, so it is told not to.
    let rootfs = aleph_crn::images::cached_rootfs(&images);
    let rootfs_flag: &[&str] = if rootfs.is_some() {
        &[]
    } else {
        eprintln!("e2e_devnet: no instance root filesystem built; its publication is not checked");
        &["--no-rootfs"]
    };
    let (devnet, info) = start_devnet(&images, rootfs_flag);
    let crn = info["crn_urls"][0].as_str().unwrap_or_else(|| {
        panic!(
            "the devnet has no CRN ({}); its log: {}",
            info["crn_unavailable"],
            std::fs::read_to_string(devnet.dir.path().join("net/crn-1/crn.log"))
                .unwrap_or_default()
        )
    });
    assert!(info["default_runtime"].is_string(), "{info}");
    check_vm_images(&info, rootfs.as_ref()).await;

    // Upload the example as the README says, with the runtime the devnet publishes.
    let hello = workspace_root().join("examples/hello");
    let uploaded = aleph(
        &info,
        &[
            "program".as_ref(),
            "upload".as_ref(),
            hello.as_os_str(),
            "main:app".as_ref(),
            "--crn".as_ref(),
            crn.as_ref(),
        ],
    );
    let hash = uploaded["item_hash"].as_str().unwrap().to_owned();
    assert_eq!(uploaded["runtime"], info["default_runtime"]);
    let url = uploaded["url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("{crn}/vm/{hash}/"));

    // The cold start: the answer comes from FastAPI in a microVM.
    let response = http().get(&url).send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"message": "Hello World"})
    );
    assert_eq!(headers["aleph-program-itemhash"], hash.as_str());
    assert_eq!(
        headers["aleph-program-code-ref"],
        uploaded["code_ref"].as_str().unwrap()
    );
    let first = execution(crn, &hash).await;
    assert_eq!(first["running"], true, "{first}");

    // Warm: the same execution answers again.
    let again: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(again, json!({"message": "Hello World"}));
    let second = execution(crn, &hash).await;
    assert_eq!(second["execution_id"], first["execution_id"]);
    assert_eq!(
        second["status"]["started_at"],
        first["status"]["started_at"]
    );

    // A new version of the code, with an endpoint echoing what it gets.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("main.py"),
        "from fastapi import FastAPI, Request\n\napp = FastAPI()\n\n\n\
         @app.get(\"/\")\nasync def root():\n    return {\"message\": \"Hello again\"}\n\n\n\
         @app.post(\"/echo\")\nasync def echo(request: Request):\n    \
         body = await request.body()\n    \
         return {\"method\": request.method, \"query\": dict(request.query_params), \"body\": body.decode()}\n",
    )
    .unwrap();
    let updated = aleph(
        &info,
        &[
            "program".as_ref(),
            "update".as_ref(),
            hash.as_ref(),
            work.path().as_os_str(),
            "--crn".as_ref(),
            crn.as_ref(),
        ],
    );
    assert_eq!(updated["item_hash"], hash);
    wait_for_answer(&url, &json!({"message": "Hello again"})).await;
    let after = execution(crn, &hash).await;
    assert_ne!(
        after["execution_id"], first["execution_id"],
        "a new VM runs the new code"
    );
    assert_eq!(after["code_ref"], updated["new_code_ref"]);

    // Method, query string and body reach the app unchanged.
    let echoed: Value = http()
        .post(format!("{url}echo?name=aleph&n=2"))
        .body("some bytes \u{e9}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        echoed,
        json!({"method": "POST", "query": {"name": "aleph", "n": "2"}, "body": "some bytes \u{e9}"})
    );
    drop(devnet);
}

/// The README's first command: `--example` deploys examples/hello, and the URL
/// it prints (recorded in devnet.json) answers the JSON.
#[tokio::test(flavor = "multi_thread")]
async fn devnet_example_answers_hello_world() {
    let Some(images) = images_dir() else {
        eprintln!("e2e_devnet: skipped, no guest images (see the other test)");
        return;
    };
    // The devnet runs the CLI built beside it; fail clearly when it is not there.
    aleph_binary();
    let _turn = ONE_AT_A_TIME.lock().await;
    // No root filesystem: copying its 1 GiB into a new CCN is the other test's.
    let (devnet, info) = start_devnet(&images, &["--example", "--no-rootfs"]);
    let example = &info["example"];
    assert_eq!(
        example["answer"]
            .as_str()
            .map(serde_json::from_str::<Value>)
            .transpose()
            .ok()
            .flatten(),
        Some(json!({"message": "Hello World"})),
        "{info}"
    );
    let url = example["url"].as_str().unwrap();
    assert!(
        url.starts_with(info["crn_urls"][0].as_str().unwrap()),
        "{url}"
    );
    let answer: Value = http().get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer, json!({"message": "Hello World"}));

    // The devnet deploys the CRN's diagnostic program and configures the CRN with it.
    assert!(info["diagnostic_program"].is_string(), "{info}");
    let crn = info["crn_urls"][0].as_str().unwrap();
    let checks: Value = http()
        .get(format!("{crn}/status/check/fastapi"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Not `internet`: the devnet's programs have none.
    for check in [
        "index",
        "environ",
        "hostname",
        "post_body_and_query",
        "warm_state",
    ] {
        assert_eq!(checks[check], true, "{check}: {checks}");
    }
    drop(devnet);
}
