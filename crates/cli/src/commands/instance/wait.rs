//! `create`'s wait: scheduler, then CRN, then sshd, until the instance can be
//! logged into, it will never run, or the time is up; with a progress display.

use super::crn::{SshEndpoint, crn_host, execution};
use super::nodes::KnownNode;
use crate::scheduler::SchedulerClient;
use aleph_protocol::scheduler::vm_status;
use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often `create` asks the scheduler and the CRN while it waits.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Time allowed for one TCP connect or SSH banner read when checking that sshd answers.
const SSH_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// An instance ready to log into.
pub(super) struct Reachable {
    pub(super) crn_url: String,
    pub(super) node_hash: Option<String>,
    pub(super) ssh: SshEndpoint,
    /// Whether sshd answered through the forwarded port (else only the port is mapped).
    pub(super) ssh_answers: bool,
}

/// Where an instance stands on the way to being reachable.
enum Stage {
    /// Not on a CRN yet; the words say why.
    Unplaced(String),
    /// Never going to run: the scheduler gave up or dropped it.
    Failed(String),
    /// On a CRN that does not run it yet (or cannot be read).
    Booting {
        crn: String,
        node: Option<String>,
        detail: String,
    },
    /// Running with port 22 forwarded.
    Forwarded {
        crn: String,
        node: Option<String>,
        ssh: SshEndpoint,
        answers: bool,
    },
}

impl Stage {
    fn describe(&self) -> String {
        match self {
            Stage::Unplaced(why) => why.clone(),
            Stage::Failed(why) => why.clone(),
            Stage::Booting { crn, node, detail } => match node {
                Some(node) => format!("placed on node {node} ({crn}): {detail}"),
                None => format!("placed on {crn}: {detail}"),
            },
            Stage::Forwarded { crn, ssh, .. } => format!(
                "running on {crn}, port 22 forwarded to {}:{}; waiting for sshd to answer",
                ssh.host, ssh.port
            ),
        }
    }
}

pub(super) async fn wait_until_reachable(
    scheduler: &SchedulerClient,
    http: &reqwest::Client,
    hash: &str,
    pinned: Option<&KnownNode>,
    timeout: Duration,
    progress: &Progress,
) -> Result<Reachable> {
    let deadline = Instant::now() + timeout;
    loop {
        let stage = stage_of(scheduler, http, hash, pinned).await;
        match stage {
            Stage::Failed(why) => bail!("instance {hash} will not run: {why}"),
            Stage::Forwarded {
                crn,
                node,
                ssh,
                answers,
            } if answers || Instant::now() >= deadline => {
                return Ok(Reachable {
                    crn_url: crn,
                    node_hash: node,
                    ssh,
                    ssh_answers: answers,
                });
            }
            _ => {}
        }
        progress.set(&stage.describe());
        if Instant::now() >= deadline {
            bail!(
                "instance {hash} is not reachable after {} s: {}; it may still come up: `aleph instance list`",
                timeout.as_secs(),
                stage.describe()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One look at the scheduler, then the CRN, then the forwarded port. The
/// scheduler places a pinned instance too (on its node only), so its word
/// counts: not placed yet means waiting, and it giving up ends the wait. The
/// pinned node is still looked at when the scheduler is down or does not know
/// the instance yet, since that CRN may already run it.
async fn stage_of(
    scheduler: &SchedulerClient,
    http: &reqwest::Client,
    hash: &str,
    pinned: Option<&KnownNode>,
) -> Stage {
    let vm = scheduler.vm(hash).await;
    if let Ok(Some(vm)) = &vm {
        match vm.status.as_str() {
            vm_status::UNSCHEDULABLE => {
                return Stage::Failed(format!(
                    "the scheduler cannot place it: {}",
                    vm.reason.as_deref().unwrap_or("it gave no reason")
                ));
            }
            vm_status::REMOVED => {
                return Stage::Failed(
                    "the scheduler dropped it (forgotten or replaced)".to_owned(),
                );
            }
            _ => {}
        }
    }
    let (crn, node) = match (pinned, vm) {
        (Some(node), Ok(Some(vm))) if vm.allocated_url.is_none() => {
            return Stage::Unplaced(format!(
                "the scheduler has it {}, not on node {} yet",
                vm.status, node.hash
            ));
        }
        (Some(node), _) => (node.url.clone(), Some(node.hash.clone())),
        (None, Ok(Some(vm))) => match vm.allocated_url {
            Some(url) => (url, vm.allocated_node),
            None => {
                return Stage::Unplaced(format!(
                    "the scheduler has it {}, on no node yet",
                    vm.status
                ));
            }
        },
        (None, Ok(None)) => {
            return Stage::Unplaced(format!(
                "waiting for the scheduler at {} to see it",
                scheduler.base()
            ));
        }
        (None, Err(e)) => return Stage::Unplaced(format!("{e:#}")),
    };
    let booting = |detail: String| Stage::Booting {
        crn: crn.clone(),
        node: node.clone(),
        detail,
    };
    let entry = match execution(http, &crn, hash).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return booting("the CRN does not list it yet".to_owned()),
        Err(e) => return booting(format!("{e:#}")),
    };
    if !entry.running {
        return booting("the CRN is starting it".to_owned());
    }
    let Some(port) = entry.ssh_port() else {
        return booting("running, port 22 not forwarded yet".to_owned());
    };
    let host = match crn_host(&crn) {
        Ok(host) => host,
        Err(e) => return Stage::Failed(format!("{e:#}")),
    };
    let answers = ssh_answers(&host, port).await;
    Stage::Forwarded {
        crn,
        node,
        ssh: SshEndpoint { host, port },
        answers,
    }
}

/// Whether an SSH server answers at `host:port` (it speaks first: `SSH-2.0-…`).
/// The port is forwarded as soon as the VM starts, long before sshd is up.
async fn ssh_answers(host: &str, port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let connect = tokio::net::TcpStream::connect((host, port));
    let Ok(Ok(mut stream)) = tokio::time::timeout(SSH_PROBE_TIMEOUT, connect).await else {
        return false;
    };
    let mut banner = [0u8; 4];
    matches!(
        tokio::time::timeout(SSH_PROBE_TIMEOUT, stream.read_exact(&mut banner)).await,
        Ok(Ok(_)) if &banner == b"SSH-"
    )
}

/// A spinner on a terminal; plain lines on stderr otherwise; nothing with `--json`.
pub(super) struct Progress {
    spinner: Option<ProgressBar>,
    plain: bool,
    last: std::sync::Mutex<String>,
}

impl Progress {
    pub(super) fn new(json: bool) -> Self {
        let terminal = !json && std::io::stderr().is_terminal();
        let spinner = terminal.then(|| {
            let spinner = ProgressBar::new_spinner();
            spinner.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("the spinner template is valid"),
            );
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        });
        Self {
            spinner,
            plain: !json && !terminal,
            last: Default::default(),
        }
    }

    /// A line that stays (above the spinner).
    pub(super) fn line(&self, text: &str) {
        match &self.spinner {
            Some(spinner) => spinner.println(text),
            None if self.plain => eprintln!("{text}"),
            None => {}
        }
    }

    /// The current state; printed as a line only when it changes.
    fn set(&self, text: &str) {
        let mut last = self.last.lock().expect("progress lock");
        if *last == text {
            return;
        }
        text.clone_into(&mut last);
        match &self.spinner {
            Some(spinner) => spinner.set_message(text.to_owned()),
            None if self.plain => eprintln!("… {text}"),
            None => {}
        }
    }

    pub(super) fn finish(&self) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}
