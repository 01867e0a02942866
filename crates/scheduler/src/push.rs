//! Allocation pushes: `POST {crn}/control/allocations`, signed `Aleph-EIP191-V1` with
//! the scheduler's key. One task per node sends that node's newest list and retries it
//! with backoff until the node answers; a newer list replaces one still being retried.

use crate::state::PushJob;
use aleph_protocol::auth::eip191_v1;
use aleph_protocol::signing::Signer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(10);
const PUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The node applied the list (200, 207 or 503: it answered for every VM).
    Applied(u16),
    /// The node holds a newer version (409): nothing to retry.
    Stale,
    /// Anything else: retried.
    Failed(String),
}

struct NodePusher {
    jobs: watch::Sender<Option<PushJob>>,
    task: JoinHandle<()>,
}

/// The push tasks, one per node.
pub struct Pushers {
    http: reqwest::Client,
    signer: Arc<Signer>,
    nodes: Mutex<HashMap<String, NodePusher>>,
}

impl Pushers {
    pub fn new(http: reqwest::Client, signer: Arc<Signer>) -> Self {
        Self {
            http,
            signer,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `job` now, replacing any list still queued or being retried for that node.
    /// Also used when a heartbeat shows the node behind (it restarted, a push was lost,
    /// or it is back after a failure): the retry starts over at once.
    pub fn send(&self, job: PushJob) {
        if job.last {
            // The node left the registry: one attempt, then nothing more for it.
            if let Some(pusher) = self.nodes.lock().expect("pushers").remove(&job.node_hash) {
                pusher.task.abort();
            }
            let (http, signer) = (self.http.clone(), self.signer.clone());
            tokio::spawn(async move {
                let outcome = push(&http, &signer, &job).await;
                tracing::info!("last push to {}: {outcome:?}", job.node_hash);
            });
            return;
        }
        let mut nodes = self.nodes.lock().expect("pushers");
        let pusher = nodes.entry(job.node_hash.clone()).or_insert_with(|| {
            let (jobs, receiver) = watch::channel(None);
            let task = tokio::spawn(run(receiver, self.http.clone(), self.signer.clone()));
            NodePusher { jobs, task }
        });
        pusher.jobs.send_replace(Some(job));
    }

    pub fn stop(&self) {
        for (_, pusher) in self.nodes.lock().expect("pushers").drain() {
            pusher.task.abort();
        }
    }
}

impl Drop for Pushers {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run(
    mut jobs: watch::Receiver<Option<PushJob>>,
    http: reqwest::Client,
    signer: Arc<Signer>,
) {
    while jobs.changed().await.is_ok() {
        'job: loop {
            let Some(job) = jobs.borrow_and_update().clone() else {
                break;
            };
            let mut delay = FIRST_RETRY;
            loop {
                match push(&http, &signer, &job).await {
                    PushOutcome::Applied(status) => {
                        tracing::debug!(
                            "pushed version {:?} to {} ({status})",
                            job.allocation.allocation_version,
                            job.node_hash
                        );
                        break 'job;
                    }
                    PushOutcome::Stale => {
                        tracing::warn!(
                            "{} refused version {:?} as older than its own",
                            job.node_hash,
                            job.allocation.allocation_version
                        );
                        break 'job;
                    }
                    PushOutcome::Failed(why) => {
                        tracing::warn!("push to {} failed, retrying: {why}", job.node_hash);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    changed = jobs.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue 'job;
                    }
                }
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

/// One signed push.
pub async fn push(http: &reqwest::Client, signer: &Signer, job: &PushJob) -> PushOutcome {
    let url = format!("{}/control/allocations", job.url.trim_end_matches('/'));
    let parsed = match reqwest::Url::parse(&url) {
        Ok(parsed) => parsed,
        Err(e) => return PushOutcome::Failed(format!("invalid node URL {url:?}: {e}")),
    };
    let body = match serde_json::to_vec(&job.allocation) {
        Ok(body) => body,
        Err(e) => return PushOutcome::Failed(e.to_string()),
    };
    let now = chrono::Utc::now().timestamp();
    let authorization = match eip191_v1::authorization(signer, "POST", parsed.path(), &body, now) {
        Ok(header) => header,
        Err(e) => return PushOutcome::Failed(format!("signing: {e}")),
    };
    let response = http
        .post(parsed)
        .header(reqwest::header::AUTHORIZATION, authorization)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .timeout(PUSH_TIMEOUT)
        .send()
        .await;
    match response {
        Ok(response) => match response.status().as_u16() {
            status @ (200 | 207 | 503) => PushOutcome::Applied(status),
            409 => PushOutcome::Stale,
            status => {
                let text = response.text().await.unwrap_or_default();
                PushOutcome::Failed(format!("HTTP {status}: {}", text.trim()))
            }
        },
        Err(e) => PushOutcome::Failed(e.to_string()),
    }
}
