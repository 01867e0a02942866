//! Persistent programs: the VMs the scheduler allocates to this node. They run on the
//! pool's machinery (same preparation, VM, agent, and requests reach them at
//! `/vm/{hash}/` and by host name), but they are never stopped for being idle, are
//! restarted with backoff when they crash, stop when they leave the allocation or the
//! lease lapses, and are taken back by a restarted node without a reboot.
//!
//! One loop ([`Persistent::reconcile`], every second and after each change) brings
//! what runs to what is allocated; a push ([`Persistent::apply`]) changes the
//! allocation and reconciles at once. Both hold one lock, so a decision is never taken
//! on an allocation that a push has just replaced.

pub mod backoff;
pub mod guest;
pub mod lease;
pub mod state;

use crate::error::ProgramError;
use crate::execution::Execution;
use crate::hypervisor::VmStatus;
use crate::instances::Instances;
use crate::pool::Pool;
use aleph_protocol::agent::AppState;
use aleph_protocol::scheduler::{Allocation, AllocationResult, HeartbeatReply, RunningVm};
use backoff::{BackoffPolicy, Restarts};
use lease::Lease;
use state::{Stale, StateFile, Stored};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, watch};

/// How often the loop looks at the persistent VMs (health, lease, crashes).
const TICK: Duration = Duration::from_secs(1);
/// How long the agent gets to answer a health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Health checks failing in a row before an agent that does not answer counts as a
/// crash (a slow guest under load is not one).
const UNHEALTHY_LIMIT: u32 = 5;

/// Why a push was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Stale(#[from] Stale),
    #[error("cannot record the allocation: {0:#}")]
    Storage(anyhow::Error),
}

/// What the node knows of one persistent VM's health.
#[derive(Debug, Clone, Default)]
struct Health {
    /// The agent answers and the app runs.
    running: bool,
    /// Since when it has run healthily, to forget its crashes once stable.
    healthy_since: Option<Instant>,
    failed_checks: u32,
}

struct Inner {
    stored: Stored,
    lease: Lease,
    /// The scheduler's newest allocation version for this node, from its last answer.
    scheduler_version: u64,
    /// The scheduler counts this node as lost: its VMs were placed elsewhere.
    lost: bool,
    restarts: HashMap<String, Restarts>,
    health: HashMap<String, Health>,
    /// Programs whose start is under way (started by the loop or a push).
    starting: HashSet<String>,
    /// The last start error of each program, until it runs.
    errors: HashMap<String, String>,
}

impl Inner {
    /// Whether persistent VMs may run: the lease holds and the node is not lost.
    fn may_run(&self, now: Instant) -> bool {
        self.lease.is_valid(now) && !self.lost
    }

    /// Whether persistent VMs may be started: also, no newer allocation is on its way.
    fn may_start(&self, now: Instant) -> bool {
        self.may_run(now) && self.scheduler_version <= self.stored.allocation_version
    }

    fn why_not_started(&self, now: Instant) -> String {
        if self.lost {
            "the scheduler counts this node as lost".into()
        } else if !self.lease.is_valid(now) {
            "this node holds no lease (its heartbeats are not answered)".into()
        } else {
            format!(
                "waiting for allocation version {} (applied: {})",
                self.scheduler_version, self.stored.allocation_version
            )
        }
    }
}

pub struct Persistent {
    pool: Arc<Pool>,
    instances: Arc<Instances>,
    file: StateFile,
    policy: BackoffPolicy,
    allocation_wait: Duration,
    inner: Mutex<Inner>,
    /// Held by a push and by a reconciliation for their decisions.
    apply: tokio::sync::Mutex<()>,
    wake: Notify,
}

impl Persistent {
    /// Reads the stored allocation and lease; the programs it lists are marked
    /// persistent in the pool (which has already adopted the VMs left running).
    /// `leased`: heartbeats are configured, so persistent VMs need a valid lease.
    pub fn open(
        pool: Arc<Pool>,
        instances: Arc<Instances>,
        leased: bool,
    ) -> anyhow::Result<Arc<Self>> {
        let config = pool.config();
        let file = StateFile::new(&config.data_dir);
        let stored = file.load()?;
        let policy = BackoffPolicy {
            initial: Duration::from_millis(config.restart_backoff_initial_ms.max(1)),
            max: Duration::from_secs(config.restart_backoff_max_seconds.max(1)),
        };
        let allocation_wait = Duration::from_secs(config.allocation_wait_seconds);
        let lease = if leased {
            Lease::from_unix_ms(stored.lease_until_ms, Instant::now(), SystemTime::now())
        } else {
            Lease::Unleased
        };
        for hash in &stored.vms {
            pool.set_persistent(hash, true);
        }
        pool.set_lease_until(lease.until());
        if !stored.vms.is_empty() {
            tracing::info!(
                "allocation version {}: {} persistent program(s)",
                stored.allocation_version,
                stored.vms.len()
            );
        }
        Ok(Arc::new(Self {
            pool,
            instances,
            file,
            policy,
            allocation_wait,
            inner: Mutex::new(Inner {
                scheduler_version: stored.allocation_version,
                stored,
                lease,
                lost: false,
                restarts: HashMap::new(),
                health: HashMap::new(),
                starting: HashSet::new(),
                errors: HashMap::new(),
            }),
            apply: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
        }))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("persistent state")
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn instances(&self) -> &Arc<Instances> {
        &self.instances
    }

    /// The instances allocated to this node.
    pub fn allocated_instances(&self) -> BTreeSet<String> {
        self.inner().stored.instances.clone()
    }

    /// The highest allocation version applied.
    pub fn allocation_version(&self) -> u64 {
        self.inner().stored.allocation_version
    }

    /// The persistent programs allocated to this node.
    pub fn allocated(&self) -> BTreeSet<String> {
        self.inner().stored.vms.clone()
    }

    /// Whether persistent VMs may run now (lease valid, node not lost).
    pub fn may_run(&self) -> bool {
        self.inner().may_run(Instant::now())
    }

    /// What the lease leaves now; `None` without a scheduler.
    pub fn lease_remaining(&self) -> Option<Duration> {
        self.inner().lease.remaining(Instant::now())
    }

    /// Persistent executions running now.
    fn running(&self) -> Vec<Arc<Execution>> {
        self.pool
            .running()
            .into_iter()
            .filter(|e| self.pool.is_persistent(&e.program.item_hash))
            .collect()
    }

    /// What heartbeats report: every allocated program and instance, running or not
    /// yet.
    pub fn report(&self) -> Vec<RunningVm> {
        let inner = self.inner();
        let mut report: Vec<RunningVm> = inner
            .stored
            .vms
            .iter()
            .map(|hash| {
                let execution = self.pool.execution(hash);
                RunningVm {
                    vm_hash: hash.clone(),
                    running: execution.is_some()
                        && inner.health.get(hash).is_some_and(|h| h.running),
                    started_at: execution
                        .and_then(|e| e.times().started_at)
                        .map(|t| t.to_rfc3339()),
                }
            })
            .collect();
        let statuses: std::collections::HashMap<String, _> = self
            .instances
            .statuses()
            .into_iter()
            .map(|s| (s.item_hash.clone(), s))
            .collect();
        report.extend(inner.stored.instances.iter().map(|hash| {
            let status = statuses.get(hash);
            RunningVm {
                vm_hash: hash.clone(),
                running: status.is_some_and(|s| s.running),
                started_at: status.and_then(|s| s.started_at).map(|t| t.to_rfc3339()),
            }
        }));
        report
    }

    /// An answered heartbeat, sent at `sent`: extends the lease, learns whether a newer
    /// allocation is coming and whether the node is lost, and passes the lease on to
    /// the VMs' agents.
    pub async fn on_heartbeat(&self, sent: Instant, reply: &HeartbeatReply) {
        let (until, changed) = {
            let mut inner = self.inner();
            inner.lease.extend(sent, reply.lease_seconds);
            let changed =
                inner.lost != reply.lost || inner.scheduler_version != reply.allocation_version;
            if reply.lost && !inner.lost {
                tracing::warn!("the scheduler counts this node as lost: stopping persistent VMs");
            }
            inner.lost = reply.lost;
            inner.scheduler_version = reply.allocation_version;
            inner.stored.lease_until_ms = inner.lease.to_unix_ms(Instant::now(), SystemTime::now());
            if let Err(e) = self.file.save(&inner.stored) {
                tracing::warn!("cannot record the lease: {e:#}");
            }
            (inner.lease.until(), changed)
        };
        self.pool.set_lease_until(until);
        if changed {
            self.wake.notify_one();
        }
        if reply.lost {
            return;
        }
        let renewals = self.running().into_iter().map(|execution| async move {
            let Some(left) = self.pool.guest_lease(&execution.program.item_hash) else {
                return;
            };
            if let Err(e) = guest::renew(execution.channel(), left).await {
                tracing::warn!(
                    "program {}: its agent did not take the lease: {e}",
                    execution.program.item_hash
                );
            }
        });
        futures::future::join_all(renewals).await;
    }

    /// Applies a push: fenced by its version, recorded, then what is no longer listed
    /// is stopped and what is listed started. Answers once the starts are done or
    /// `allocation_wait_seconds` passed (those still booting count as successful:
    /// accepted; heartbeats tell when they run).
    pub async fn apply(
        self: &Arc<Self>,
        allocation: Allocation,
    ) -> Result<AllocationResult, ApplyError> {
        let mut result = AllocationResult::default();
        let mut listed = BTreeSet::new();
        for reference in &allocation.persistent_vms {
            match crate::resources::check_hash(reference) {
                Ok(hash) => {
                    listed.insert(hash);
                }
                Err(e) => {
                    result.failing.push(reference.clone());
                    result.errors.insert(reference.clone(), e.to_string());
                }
            }
        }
        let mut listed_instances = BTreeSet::new();
        for reference in &allocation.instances {
            match crate::resources::check_hash(reference) {
                Ok(hash) => {
                    listed_instances.insert(hash);
                }
                Err(e) => {
                    result.failing.push(reference.clone());
                    result.errors.insert(reference.clone(), e.to_string());
                }
            }
        }

        let guard = self.apply.lock().await;
        {
            let mut inner = self.inner();
            let version = state::fence(
                inner.stored.allocation_version,
                allocation.allocation_version,
            )?;
            let stored = Stored {
                allocation_version: version,
                vms: listed.clone(),
                instances: listed_instances.clone(),
                lease_until_ms: inner.stored.lease_until_ms,
            };
            self.file.save(&stored).map_err(ApplyError::Storage)?;
            for hash in &listed {
                if !inner.stored.vms.contains(hash) {
                    // Newly allocated: a fresh start, whatever happened to it before.
                    inner.restarts.remove(hash);
                    inner.errors.remove(hash);
                }
                self.pool.set_persistent(hash, true);
            }
            tracing::info!(
                "allocation version {version}: {} persistent program(s), {} before; {} instance(s), {} before",
                listed.len(),
                inner.stored.vms.len(),
                listed_instances.len(),
                inner.stored.instances.len(),
            );
            inner.stored = stored;
        }
        result.stopped = self.stop_unwanted().await;

        let now = Instant::now();
        let (may_run, may_start, why) = {
            let inner = self.inner();
            (
                inner.may_run(now),
                inner.may_start(now),
                inner.why_not_started(now),
            )
        };
        let mut starts = Vec::new();
        for hash in &listed {
            if self.pool.execution(hash).is_some() {
                result.successful.push(hash.clone());
            } else if may_start {
                starts.push((hash.clone(), self.spawn_start(hash)));
            } else {
                result.failing.push(hash.clone());
                result.errors.insert(hash.clone(), why.clone());
            }
        }
        // Instances: those no longer listed go (and their disks); the listed ones
        // start in tasks of their own, awaited like the programs below.
        self.instances
            .reconcile(&listed_instances, may_run, false)
            .await;
        for hash in &listed_instances {
            if self.instances.is_running(hash) {
                result.successful.push(hash.clone());
            } else if self.instances.record(hash).is_some_and(|r| r.held) {
                // Stopped by its owner: allocated, and stays stopped.
                result.successful.push(hash.clone());
            } else if may_start {
                let instances = self.instances.clone();
                let hash = hash.clone();
                let start = tokio::spawn({
                    let hash = hash.clone();
                    async move { instances.start(&hash).await.map_err(|e| e.to_string()) }
                });
                starts.push((hash, start));
            } else {
                result.failing.push(hash.clone());
                result.errors.insert(hash.clone(), why.clone());
            }
        }
        drop(guard);

        let deadline = tokio::time::Instant::now() + self.allocation_wait;
        for (hash, start) in starts {
            match tokio::time::timeout_at(deadline, start).await {
                Ok(Ok(Err(error))) => {
                    result.failing.push(hash.clone());
                    result.errors.insert(hash, error);
                }
                Ok(Err(join)) => {
                    result.failing.push(hash.clone());
                    result.errors.insert(hash, format!("start task: {join}"));
                }
                // Started, or still starting: accepted.
                Ok(Ok(Ok(()))) | Err(_) => result.successful.push(hash),
            }
        }
        result.success = result.failing.is_empty();
        self.wake.notify_one();
        Ok(result)
    }

    /// Starts `hash` in a task of its own (a caller that stops waiting does not stop
    /// the start); the task's result is the start error, if any.
    fn spawn_start(self: &Arc<Self>, hash: &str) -> tokio::task::JoinHandle<Result<(), String>> {
        self.inner().starting.insert(hash.to_owned());
        let this = self.clone();
        let hash = hash.to_owned();
        tokio::spawn(async move {
            let outcome = this.start(&hash).await;
            let mut inner = this.inner();
            inner.starting.remove(&hash);
            match &outcome {
                Ok(()) => {
                    inner.errors.remove(&hash);
                    inner.health.insert(
                        hash,
                        Health {
                            running: true,
                            healthy_since: Some(Instant::now()),
                            failed_checks: 0,
                        },
                    );
                }
                Err(error) => {
                    let delay = inner
                        .restarts
                        .entry(hash.clone())
                        .or_default()
                        .failed(&this.policy, Instant::now());
                    tracing::warn!(
                        "persistent program {hash} did not start ({error}); next try in {delay:?}"
                    );
                    inner.errors.insert(hash, error.clone());
                }
            }
            outcome
        })
    }

    async fn start(&self, hash: &str) -> Result<(), String> {
        self.pool.set_persistent(hash, true);
        let execution = self
            .pool
            .get_or_start(hash)
            .await
            .map_err(|e: ProgramError| e.to_string())?;
        // It may have been running on demand (no lease): it is leased from now on.
        if let Some(left) = self.pool.guest_lease(hash)
            && let Err(e) = guest::renew(execution.channel(), left).await
        {
            tracing::warn!("program {hash}: its agent did not take the lease: {e}");
        }
        Ok(())
    }

    /// Stops the persistent VMs that must not run: all of them when the lease lapsed
    /// or the node is lost, else those no longer allocated. Returns their hashes.
    async fn stop_unwanted(&self) -> Vec<String> {
        let now = Instant::now();
        let (may_run, reason, allocated) = {
            let inner = self.inner();
            let reason = if inner.lost {
                "node lost"
            } else if !inner.lease.is_valid(now) {
                "lease lapsed"
            } else {
                "deallocated"
            };
            (inner.may_run(now), reason, inner.stored.vms.clone())
        };
        let unwanted: Vec<String> = self
            .running()
            .into_iter()
            .map(|e| e.program.item_hash.clone())
            .filter(|hash| !may_run || !allocated.contains(hash))
            .collect();
        let allocated = &allocated;
        let stops = unwanted.iter().map(|hash| async move {
            let stopped = self.pool.stop(hash, reason).await;
            if !allocated.contains(hash) {
                self.pool.set_persistent(hash, false);
            }
            stopped.then(|| hash.clone())
        });
        let stopped: Vec<String> = futures::future::join_all(stops)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !stopped.is_empty() {
            tracing::info!("stopped persistent program(s) {stopped:?} ({reason})");
            let mut inner = self.inner();
            for hash in &stopped {
                inner.health.remove(hash);
            }
        }
        stopped
    }

    /// One pass of the loop: stops what must not run, checks the health of what runs
    /// (a VM that exited or an app that died is stopped and counted as a crash), and
    /// starts what is allocated and not running once its backoff allows.
    pub async fn reconcile(self: &Arc<Self>) {
        let _guard = self.apply.lock().await;
        self.stop_unwanted().await;
        let now = Instant::now();
        let (may_run, may_start, allocated, instances) = {
            let inner = self.inner();
            (
                inner.may_run(now),
                inner.may_start(now),
                inner.stored.vms.clone(),
                inner.stored.instances.clone(),
            )
        };
        self.instances
            .reconcile(&instances, may_run, may_start)
            .await;
        if !self.inner().may_run(now) {
            return;
        }
        let checks = allocated.iter().filter_map(|hash| {
            let execution = self.pool.execution(hash)?;
            Some(async move { (hash.clone(), self.check(&execution).await) })
        });
        for (hash, crash) in futures::future::join_all(checks).await {
            if let Some(reason) = crash {
                tracing::warn!("persistent program {hash} crashed: {reason}");
                self.pool.stop(&hash, &reason).await;
                let mut inner = self.inner();
                inner.health.remove(&hash);
                let delay = inner
                    .restarts
                    .entry(hash.clone())
                    .or_default()
                    .failed(&self.policy, Instant::now());
                tracing::info!("persistent program {hash}: restart in {delay:?}");
            }
        }
        if !may_start {
            return;
        }
        let now = Instant::now();
        for hash in &allocated {
            let due = {
                let inner = self.inner();
                !inner.starting.contains(hash)
                    && inner.restarts.get(hash).is_none_or(|r| r.ready(now))
            };
            if due && self.pool.execution(hash).is_none() {
                drop(self.spawn_start(hash));
            }
        }
    }

    /// Looks at one running persistent VM; returns why it counts as crashed, if it does.
    async fn check(&self, execution: &Execution) -> Option<String> {
        let hash = &execution.program.item_hash;
        if execution.vm().status().await == VmStatus::Exited {
            return Some("its VM exited".into());
        }
        let health = tokio::time::timeout(HEALTH_TIMEOUT, execution.channel().health()).await;
        let mut inner = self.inner();
        let stable_after = self.policy.stable_after();
        let entry = inner.health.entry(hash.clone()).or_default();
        match health {
            Ok(Ok(h)) if h.app == AppState::Running => {
                entry.failed_checks = 0;
                entry.running = true;
                let since = *entry.healthy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= stable_after
                    && let Some(restarts) = inner.restarts.get_mut(hash)
                {
                    restarts.reset();
                }
                None
            }
            Ok(Ok(h)) if matches!(h.app, AppState::Exited | AppState::Failed) => {
                Some(format!("its app is {:?}", h.app).to_lowercase())
            }
            // Still configuring: not running yet, not a crash.
            Ok(Ok(_)) => {
                entry.running = false;
                None
            }
            _ => {
                entry.running = false;
                entry.healthy_since = None;
                entry.failed_checks += 1;
                (entry.failed_checks >= UNHEALTHY_LIMIT)
                    .then(|| "its agent stopped answering".to_string())
            }
        }
    }

    /// The start errors of programs not running, by hash.
    pub fn errors(&self) -> BTreeMap<String, String> {
        self.inner()
            .errors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Runs [`Persistent::reconcile`] every second, and at once when woken.
pub async fn run(persistent: Arc<Persistent>, mut stop: watch::Receiver<bool>) {
    loop {
        persistent.reconcile().await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = persistent.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}
