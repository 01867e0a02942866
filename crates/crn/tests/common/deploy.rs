//! Deploying through a real CCN: the host checks of the tests that run a CRN with real
//! VMs, an in-process CCN with one funded account that posts signed messages over HTTP,
//! the content of a plain program, and a guard that kills the VMs a failing test leaves
//! behind.

use aleph_ccn::{CcnConfig, CcnHandle, FundedAccount};
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The node's own log, shown when a test fails.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "aleph_crn=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Where a CRN under test finds its images, and the Python runtime to store.
pub struct Setup {
    pub images_dir: PathBuf,
    pub runtime: PathBuf,
}

/// `None`, with the reason printed, when this host cannot run a CRN with real VMs.
pub fn setup() -> Option<Setup> {
    init_logs();
    let skip = |reason: String| {
        eprintln!("SKIPPED: {reason}");
        None
    };
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root (QEMU's devices, execution folders)".into());
    }
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)".into());
    }
    let images_dir = aleph_crn::images::default_data_dir();
    let Some(images) = aleph_crn::images::cached(&images_dir) else {
        return skip(format!(
            "no guest images in {} (run `aleph-node images build`, or set ALEPH_DATA_DIR)",
            images_dir.display()
        ));
    };
    Some(Setup {
        images_dir,
        runtime: images.python_runtime,
    })
}

/// An in-process CCN and the funded account that owns what the test deploys.
pub struct Network {
    pub ccn: CcnHandle,
    pub signer: Signer,
    pub http: reqwest::Client,
    /// The CCN's data and the files the test stores.
    pub dir: tempfile::TempDir,
}

impl Network {
    pub async fn start() -> Self {
        let (signer, _) = Signer::generate();
        let dir = tempfile::tempdir().unwrap();
        let ccn = aleph_ccn::start(CcnConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("ccn"),
            database_url: None,
            funded: vec![FundedAccount {
                address: signer.address().to_owned(),
                balance: 1_000_000.0,
                credit_balance: 1_000_000_000,
            }],
        })
        .await
        .unwrap();
        Self {
            ccn,
            signer,
            http: reqwest::Client::new(),
            dir,
        }
    }

    /// Posts an inline message signed by the account, expects it processed; returns its
    /// hash.
    pub async fn post(&self, message_type: MessageType, content: Value) -> String {
        self.post_as(&self.signer, message_type, content).await
    }

    pub async fn post_as(
        &self,
        signer: &Signer,
        message_type: MessageType,
        content: Value,
    ) -> String {
        let message = signer.sign(message_type, content, Some("TEST")).unwrap();
        let response = self
            .http
            .post(format!("{}/api/v0/messages", self.ccn.url()))
            .json(&json!({"sync": true, "message": message}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{message_type} not accepted: {body}");
        message.item_hash.to_string()
    }

    /// Writes `bytes` to a file and stores it; see [`Network::store_file`].
    pub async fn store(&self, bytes: &[u8], reference: Option<&str>) -> String {
        let path = self.dir.path().join(hex::encode(Sha256::digest(bytes)));
        std::fs::write(&path, bytes).unwrap();
        self.store_file(&path, reference).await
    }

    /// Adds a file to the CCN's store through its library (the runtime is larger than
    /// the HTTP upload limit), then posts its STORE (amending `reference` if given);
    /// returns the STORE's hash.
    pub async fn store_file(&self, path: &Path, reference: Option<&str>) -> String {
        let file_hash = self.ccn.ccn().add_local_file(path).await.unwrap();
        let mut content = json!({"item_type": "storage", "item_hash": file_hash});
        if let Some(reference) = reference {
            content["ref"] = json!(reference);
        }
        self.post(MessageType::Store, content).await
    }
}

/// A PROGRAM's content: zipped ASGI code `main:app` on the Python runtime, served over
/// HTTP, 1 vCPU, 384 MiB, 30 s per request. Tests change what they need.
pub fn program_content(runtime: &str, code: &str) -> Value {
    json!({
        "type": "vm-function", "allow_amend": false,
        "code": {"encoding": "zip", "entrypoint": "main:app", "ref": code, "use_latest": true},
        "runtime": {"ref": runtime, "use_latest": true, "comment": "python"},
        "on": {"http": true},
        "environment": {"internet": false, "aleph_api": false, "reproducible": false, "shared_cache": false},
        "resources": {"vcpus": 1, "memory": 384, "seconds": 30},
    })
}

pub fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    for (name, source) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(source.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

/// Kills whatever VMs a failing test leaves under a CRN's data folder, by their
/// pidfiles.
pub struct KillVms(pub PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(self.0.join("executions")) else {
            return;
        };
        for dir in dirs.flatten() {
            if let Ok(pid) = std::fs::read_to_string(dir.path().join("qemu.pid"))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
