//! Programs the devnet deploys with the `aleph` CLI built beside it, as a user
//! would: the CRN's diagnostic program (so `/status/check/fastapi` works), and
//! with `--example` `examples/hello`, asked once (a cold start) so the printed
//! `curl` line answers at once.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A cold start boots a VM and starts Python; under TCG on a busy machine
/// that takes far longer than the ~8 s it takes when idle.
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    pub item_hash: String,
    pub url: String,
    pub hostname: Option<String>,
    /// What the first request answered, when it did.
    pub answer: Option<String>,
}

/// The example's folder: as given, else `examples/hello` under the current
/// folder, else under this source tree.
pub fn example_folder(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let here = PathBuf::from("examples/hello");
        if here.is_dir() {
            here
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello")
        }
    })
}

/// The `aleph` binary built beside this one (`cargo build -p aleph-cli`).
pub fn cli_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating aleph-node")?;
    let dir = exe.parent().context("aleph-node has no folder")?;
    // Test binaries live in target/<profile>/deps, the CLI one folder up.
    for candidate in [dir.join("aleph"), dir.join("../aleph")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no `aleph` binary beside {}: build it with `cargo build -p aleph-cli` (same profile)",
        exe.display()
    )
}

/// The diagnostic program of `/status/check/fastapi`, from this source tree.
pub fn diagnostic_folder() -> Option<PathBuf> {
    [
        PathBuf::from("crates/crn/diagnostic"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crn/diagnostic"),
    ]
    .into_iter()
    .find(|dir| dir.join("main.py").is_file())
}

/// `aleph program upload FOLDER main:app` signed with `private_key`; its JSON.
pub async fn upload(
    folder: &Path,
    name: &str,
    ccn_url: &str,
    crn_url: &str,
    private_key: &str,
) -> Result<Value> {
    let cli = cli_binary()?;
    let output = tokio::process::Command::new(&cli)
        .arg("--ccn")
        .arg(ccn_url)
        .arg("--private-key")
        .arg(private_key)
        .arg("--json")
        .args(["program", "upload"])
        .arg(folder)
        .arg("main:app")
        .args(["--name", name, "--crn", crn_url])
        // The devnet's own runtime, whatever the caller's environment says.
        .env_remove("ALEPH_RUNTIME")
        .env_remove("ALEPH_IMAGES_ADDRESS")
        .output()
        .await
        .with_context(|| format!("running {}", cli.display()))?;
    if !output.status.success() {
        bail!(
            "`aleph program upload {}` failed: {}",
            folder.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("`aleph program upload` printed no JSON")
}

/// Uploads the example and asks it once.
pub async fn deploy_example(
    folder: &Path,
    ccn_url: &str,
    crn_url: &str,
    private_key: &str,
) -> Result<Deployed> {
    let uploaded = upload(folder, "hello", ccn_url, crn_url, private_key).await?;
    let item_hash = uploaded["item_hash"]
        .as_str()
        .context("no item_hash in the upload's answer")?
        .to_owned();
    let url = uploaded["url"].as_str().unwrap_or_default().to_owned();
    let hostname = uploaded["hostname"].as_str().map(str::to_owned);
    let answer = match first_answer(&url).await {
        Ok(body) => Some(body),
        Err(e) => {
            tracing::warn!("the example did not answer yet: {e:#}");
            None
        }
    };
    Ok(Deployed {
        item_hash,
        url,
        hostname,
        answer,
    })
}

async fn first_answer(url: &str) -> Result<String> {
    let response = reqwest::Client::builder()
        .timeout(FIRST_ANSWER_TIMEOUT)
        .build()?
        .get(url)
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("{url} answered {status}: {body}");
    }
    Ok(body)
}
