//! All executions of this node: one VM per program, started on its first request
//! (concurrent first requests share one start), reused while warm, stopped when idle,
//! when its code is updated, or when it dies; admission control before any start; and
//! on a node's start, the VMs an earlier node process left running taken back.

pub mod admission;
pub mod updates;

use crate::channel::AgentChannel;
use crate::config::CrnConfig;
use crate::error::ProgramError;
use crate::execution::prepare::{self, BootImages};
use crate::execution::state::{Lifecycle, State};
use crate::execution::{Execution, ExecutionFile, Startup};
use crate::hypervisor::{Hypervisor, StopTimeouts, VmStatus};
use crate::network::SharedNetwork;
use crate::records::{ExecutionRecord, Records};
use crate::resources::{ProgramMessage, Resources};
use admission::{Admission, Amount, Reservation};
use aleph_protocol::agent::AppState;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hyper::body::Incoming;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Starting = Shared<BoxFuture<'static, Result<Arc<Slot>, ProgramError>>>;

/// A running execution and the capacity it holds.
pub struct Slot {
    pub execution: Arc<Execution>,
    _reservation: Reservation,
}

enum Entry {
    Starting(Starting),
    Running(Arc<Slot>),
}

pub struct Pool {
    config: CrnConfig,
    hypervisor: Box<dyn Hypervisor>,
    images: BootImages,
    resources: Resources,
    records: Records,
    admission: Admission,
    /// The VM network, shared with instances; programs that ask for the internet are
    /// plugged into it.
    network: SharedNetwork,
    executions_dir: PathBuf,
    volumes_dir: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
    draining: AtomicBool,
    /// Whether the CCN's message stream is followed right now.
    following: AtomicBool,
    /// Programs run as persistent executions (see [`crate::persistent`]): never
    /// stopped for being idle, and given the lease when they start.
    persistent: Mutex<HashSet<String>>,
    /// Until when persistent VMs may run; `None` without a scheduler (no lease).
    lease_until: Mutex<Option<Instant>>,
}

/// Execution ids name folders: short (Unix socket paths are limited) and unique.
fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Pool {
    pub fn new(
        config: CrnConfig,
        hypervisor: Box<dyn Hypervisor>,
        images: BootImages,
        resources: Resources,
        records: Records,
        admission: Admission,
    ) -> std::io::Result<Self> {
        let executions_dir = config.data_dir.join("executions");
        let volumes_dir = config.data_dir.join("volumes");
        std::fs::create_dir_all(&executions_dir)?;
        let network = SharedNetwork::new(config.network.clone()).map_err(std::io::Error::other)?;
        Ok(Self {
            network,
            config,
            hypervisor,
            images,
            resources,
            records,
            admission,
            executions_dir,
            volumes_dir,
            entries: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            following: AtomicBool::new(false),
            persistent: Mutex::new(HashSet::new()),
            lease_until: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &CrnConfig {
        &self.config
    }

    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// The node's VM network, for programs and instances alike.
    pub fn network(&self) -> &SharedNetwork {
        &self.network
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// New requests are refused from now on; running VMs are left alone.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Whether updates on the CCN are seen now (the message stream is connected).
    pub fn is_following_updates(&self) -> bool {
        self.following.load(Ordering::SeqCst)
    }

    fn set_following_updates(&self, following: bool) {
        self.following.store(following, Ordering::SeqCst);
    }

    /// Marks program `hash` as persistent or not.
    pub fn set_persistent(&self, hash: &str, persistent: bool) {
        let mut set = self.persistent.lock().expect("persistent");
        if persistent {
            set.insert(hash.to_owned());
        } else {
            set.remove(hash);
        }
    }

    pub fn is_persistent(&self, hash: &str) -> bool {
        self.persistent.lock().expect("persistent").contains(hash)
    }

    /// Sets the lease persistent VMs started from now on are given.
    pub fn set_lease_until(&self, until: Option<Instant>) {
        *self.lease_until.lock().expect("lease") = until;
    }

    /// What is left of the lease for a VM of `hash`: `None` when it gets none (not
    /// persistent, or no lease at all).
    pub fn guest_lease(&self, hash: &str) -> Option<Duration> {
        if !self.is_persistent(hash) {
            return None;
        }
        let until = (*self.lease_until.lock().expect("lease"))?;
        Some(until.saturating_duration_since(Instant::now()))
    }

    /// The running execution of `hash`, if any (none while it starts).
    pub fn execution(&self, hash: &str) -> Option<Arc<Execution>> {
        match self.entries.lock().expect("entries").get(hash) {
            Some(Entry::Running(slot)) => Some(slot.execution.clone()),
            _ => None,
        }
    }

    /// Running executions, by program hash.
    pub fn running(&self) -> Vec<Arc<Execution>> {
        let entries = self.entries.lock().expect("entries");
        entries
            .values()
            .filter_map(|e| match e {
                Entry::Running(slot) => Some(slot.execution.clone()),
                Entry::Starting(_) => None,
            })
            .collect()
    }

    fn slots(&self) -> Vec<(String, Arc<Slot>)> {
        let entries = self.entries.lock().expect("entries");
        entries
            .iter()
            .filter_map(|(hash, e)| match e {
                Entry::Running(slot) => Some((hash.clone(), slot.clone())),
                Entry::Starting(_) => None,
            })
            .collect()
    }

    /// The running execution of program `hash`, started if there is none. Concurrent
    /// callers share one start; the start runs in its own task, so a caller that
    /// gives up does not leave a half-started VM behind.
    pub async fn get_or_start(
        self: &Arc<Self>,
        hash: &str,
    ) -> Result<Arc<Execution>, ProgramError> {
        let hash = crate::resources::check_hash(hash)?;
        let starting = {
            let mut entries = self.entries.lock().expect("entries");
            match entries.get(&hash) {
                Some(Entry::Running(slot)) => return Ok(slot.execution.clone()),
                Some(Entry::Starting(starting)) => starting.clone(),
                None => {
                    if self.is_draining() {
                        return Err(ProgramError::Draining);
                    }
                    let pool = self.clone();
                    let task_hash = hash.clone();
                    let task = tokio::spawn(async move { pool.start(task_hash).await });
                    let starting: Starting = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(ProgramError::internal(format!("start task: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    entries.insert(hash.clone(), Entry::Starting(starting.clone()));
                    starting
                }
            }
        };
        starting.await.map(|slot| slot.execution.clone())
    }

    /// Starts program `hash` and records the outcome in the map.
    async fn start(self: Arc<Self>, hash: String) -> Result<Arc<Slot>, ProgramError> {
        let result = self.start_execution(&hash).await;
        let mut entries = self.entries.lock().expect("entries");
        match &result {
            Ok(slot) => {
                entries.insert(hash, Entry::Running(slot.clone()));
            }
            Err(e) => {
                // A reference to nothing is the client's business, not the node's.
                if matches!(e, ProgramError::NotFound(_) | ProgramError::BadReference(_)) {
                    tracing::debug!("program {hash} did not start: {e}");
                } else {
                    tracing::warn!("program {hash} did not start: {e}");
                }
                entries.remove(&hash);
            }
        }
        result
    }

    async fn start_execution(&self, hash: &str) -> Result<Arc<Slot>, ProgramError> {
        let mut lifecycle = Lifecycle::new();
        let mut startup = Startup::default();
        let mut step = std::time::Instant::now();
        let mut lap = |slot: &mut Duration| {
            *slot = step.elapsed();
            step = std::time::Instant::now();
        };
        let program = self.resources.program(hash).await?;
        lap(&mut startup.message);
        let content = &program.content;
        // Under a scheduler a persistent program runs where it was allocated and nowhere
        // else; without one, requests are all that can start it.
        if content.on.persistent && self.config.scheduler_url.is_some() && !self.is_persistent(hash)
        {
            return Err(ProgramError::NotAllocated(format!(
                "program {hash} is persistent and not allocated to this node; the scheduler \
                 says where it runs (GET /api/v0/allocation/{hash})"
            )));
        }
        let reservation = self
            .admission
            .reserve(Amount {
                memory_mib: content.resources.memory,
                vcpus: content.resources.vcpus.into(),
                disk_mib: prepare::own_disk_mib(content),
            })
            .map_err(ProgramError::NoCapacity)?;
        let id = random_id();
        let folder = self.executions_dir.join(&id);
        std::fs::create_dir_all(&folder).map_err(ProgramError::internal)?;
        let advance = |life: &mut Lifecycle, to| life.advance(to).map_err(ProgramError::internal);

        advance(&mut lifecycle, State::Preparing)?;
        let mut prepared = match prepare::prepare(
            &self.resources,
            &program,
            &self.images,
            &folder,
            &self.volumes_dir,
            self.config
                .boot_timeout_seconds
                .try_into()
                .unwrap_or(u32::MAX),
        )
        .await
        {
            Ok(prepared) => prepared,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&folder);
                return Err(e);
            }
        };
        if content.environment.internet {
            match self.network.plug(&id).await {
                Ok(net) => prepared.connect(net),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&folder);
                    return Err(e);
                }
            }
        }
        lap(&mut startup.prepare);
        advance(&mut lifecycle, State::Prepared)?;
        advance(&mut lifecycle, State::Starting)?;
        let mut file = ExecutionFile {
            id: id.clone(),
            program: program.clone(),
            prepared,
            lifecycle,
        };
        file.save(&folder).map_err(ProgramError::internal)?;

        let vm = match self.hypervisor.start(&file.prepared.spec).await {
            Ok(vm) => vm,
            Err(e) => {
                self.discard(&file, &folder, &e.to_string()).await;
                return Err(ProgramError::StartFailed {
                    error: format!("the VM did not start: {e}"),
                    traceback: None,
                });
            }
        };
        lap(&mut startup.vm);
        let channel = Arc::new(AgentChannel::new(vm.channel()));
        let started = async {
            channel
                .wait_ready(self.config.boot_timeout())
                .await
                .map_err(|e| ProgramError::StartFailed {
                    error: format!("the VM's agent did not come up: {e}"),
                    traceback: Some(console_tail(&folder)),
                })?;
            lap(&mut startup.agent);
            // A persistent VM holds the lease before its app starts: should this node
            // die from here on, the VM still stops by itself.
            if let Some(left) = self.guest_lease(hash) {
                crate::persistent::guest::renew(&channel, left)
                    .await
                    .map_err(|e| ProgramError::StartFailed {
                        error: format!("the VM's agent did not take the lease: {e}"),
                        traceback: None,
                    })?;
            }
            // The agent bounds the app's start itself; this bounds a lost answer.
            let limit = self.config.boot_timeout() + Duration::from_secs(30);
            // An app may take longer to start than a lease lasts: the lease is renewed
            // meanwhile (heartbeats renew only running VMs).
            let configure = async {
                tokio::select! {
                    reply = channel.configure(&file.prepared.agent) => reply,
                    never = crate::persistent::guest::keep_renewing(&channel, || self.guest_lease(hash)) => match never {},
                }
            };
            tokio::time::timeout(limit, configure)
                .await
                .map_err(|_| ProgramError::StartFailed {
                    error: format!(
                        "the VM's agent did not answer the configuration within {limit:?}"
                    ),
                    traceback: Some(console_tail(&folder)),
                })?
                .map_err(|e| ProgramError::StartFailed {
                    error: format!("the app failed to start: {e}"),
                    traceback: e.traceback().map(str::to_string),
                })
        }
        .await;
        if let Err(e) = started {
            let _ = vm.kill();
            vm.wait_exit(Duration::from_secs(5)).await;
            self.discard(&file, &folder, &e.to_string()).await;
            return Err(e);
        }
        lap(&mut startup.app);
        file.lifecycle
            .advance(State::Running)
            .map_err(ProgramError::internal)?;
        file.save(&folder).map_err(ProgramError::internal)?;
        tracing::info!("program {hash} running in execution {id}: {startup:?}");
        Ok(Arc::new(Slot {
            execution: Arc::new(Execution::new(file, vm, channel, false, startup)),
            _reservation: reservation,
        }))
    }

    /// Records an execution that never ran and removes its folder.
    async fn discard(&self, file: &ExecutionFile, folder: &Path, reason: &str) {
        if let Some(net) = &file.prepared.net {
            self.network.unplug(net).await;
        }
        let mut lifecycle = file.lifecycle.clone();
        let _ = lifecycle.advance(State::Stopping);
        let _ = lifecycle.advance(State::Stopped);
        let record = ExecutionRecord::new(
            &file.id,
            &file.program.item_hash,
            lifecycle.times(),
            &Default::default(),
            file.program.content.resources.vcpus,
            file.program.content.resources.memory,
            &format!("failed: {reason}"),
            serde_json::to_value(&file.program.content).unwrap_or_default(),
        );
        if let Err(e) = self.records.insert(&record).await {
            tracing::warn!("cannot record execution {}: {e}", file.id);
        }
        let _ = std::fs::remove_dir_all(folder);
    }

    /// Forwards a request to program `hash`, starting it if needed. The per-request
    /// timeout is the program's `resources.seconds`, counted once its VM runs.
    pub async fn forward<B>(
        self: &Arc<Self>,
        hash: &str,
        request: http::Request<B>,
    ) -> Result<(http::Response<Incoming>, Arc<Execution>), ProgramError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::channel::BoxError>,
    {
        if self.is_draining() {
            return Err(ProgramError::Draining);
        }
        if request
            .uri()
            .path()
            .starts_with(aleph_protocol::agent::AGENT_ROUTE_PREFIX)
        {
            return Err(ProgramError::NotFound(format!(
                "{} is reserved for the VM's agent",
                aleph_protocol::agent::AGENT_ROUTE_PREFIX
            )));
        }
        let mut execution = self.get_or_start(hash).await?;
        // An execution being stopped (idle, updated) is left to end; a new one starts.
        let in_flight = loop {
            if let Some(in_flight) = execution.try_begin_request() {
                break in_flight;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            execution = self.get_or_start(hash).await?;
        };
        let timeout =
            Duration::from_secs(execution.program.content.resources.seconds.max(1).into());
        let answer = tokio::time::timeout(timeout, execution.channel().forward(request)).await;
        drop(in_flight);
        match answer {
            Ok(Ok(response)) => Ok((response, execution)),
            Err(_) => {
                self.check_channel(&execution).await;
                Err(ProgramError::Timeout(timeout))
            }
            Ok(Err(e)) => {
                // A VM that died is replaced on the next request.
                if execution.vm().status().await == VmStatus::Exited {
                    self.stop(&execution.program.item_hash, "exited").await;
                } else {
                    self.check_channel(&execution).await;
                }
                Err(ProgramError::NoAnswer(format!(
                    "the program's VM did not answer: {e}"
                )))
            }
        }
    }

    /// After a request failed: if the agent does not answer its health route either,
    /// the channel session is stuck (not the app slow), so drop it; the next request
    /// opens a new one instead of waiting on the dead one.
    async fn check_channel(&self, execution: &Execution) {
        let probe =
            tokio::time::timeout(Duration::from_secs(3), execution.channel().health()).await;
        if !matches!(probe, Ok(Ok(_))) {
            tracing::warn!(
                "the channel to execution {} does not answer: opening a new session",
                execution.id
            );
            execution.channel().disconnect().await;
        }
    }

    /// Stops the running execution of `hash`, if any, and records it.
    pub async fn stop(&self, hash: &str, reason: &str) -> bool {
        let slot = {
            let entries = self.entries.lock().expect("entries");
            match entries.get(hash) {
                Some(Entry::Running(slot)) => slot.clone(),
                _ => return false,
            }
        };
        self.stop_slot(hash, slot, reason).await
    }

    async fn stop_slot(&self, hash: &str, slot: Arc<Slot>, reason: &str) -> bool {
        if !slot.execution.begin_stop() {
            return false;
        }
        self.finish_stop(hash, slot, reason).await;
        true
    }

    /// Stops and records an execution already moved to stopping.
    async fn finish_stop(&self, hash: &str, slot: Arc<Slot>, reason: &str) {
        let execution = &slot.execution;
        {
            // From now on a request starts a new VM (in a folder of its own).
            let mut entries = self.entries.lock().expect("entries");
            if matches!(entries.get(hash), Some(Entry::Running(s)) if Arc::ptr_eq(s, &slot)) {
                entries.remove(hash);
            }
        }
        let (outcome, usage) = execution.stop(StopTimeouts::default()).await;
        if let Some(net) = &execution.prepared.net {
            self.network.unplug(net).await;
        }
        tracing::info!(
            "program {hash} stopped ({reason}): execution {}, {outcome:?}",
            execution.id
        );
        let content = &execution.program.content;
        let record = ExecutionRecord::new(
            &execution.id,
            hash,
            &execution.times(),
            &usage,
            content.resources.vcpus,
            content.resources.memory,
            reason,
            serde_json::to_value(content).unwrap_or_default(),
        );
        if let Err(e) = self.records.insert(&record).await {
            tracing::warn!("cannot record execution {}: {e}", execution.id);
        }
        let _ = std::fs::remove_dir_all(execution.folder());
    }

    /// Stops every running VM (a node that shuts down for good).
    pub async fn stop_all(&self, reason: &str) {
        let stops = self
            .slots()
            .into_iter()
            .map(|(hash, slot)| async move { self.stop_slot(&hash, slot, reason).await });
        futures::future::join_all(stops).await;
    }

    /// Stops the VMs idle for longer than the idle timeout.
    pub async fn stop_idle(&self) {
        let timeout = self.config.idle_timeout();
        for (hash, slot) in self.slots() {
            if self.is_persistent(&hash) {
                continue;
            }
            if slot.execution.begin_stop_if_idle(timeout) {
                self.finish_stop(&hash, slot, "idle").await;
            }
        }
    }

    /// Stops the executions whose program `matches` (a code or program update).
    pub async fn stop_where(&self, reason: &str, matches: impl Fn(&Execution) -> bool) -> usize {
        let mut stopped = 0;
        for (hash, slot) in self.slots() {
            if matches(&slot.execution) && self.stop_slot(&hash, slot, reason).await {
                stopped += 1;
            }
        }
        stopped
    }

    /// Takes back the VMs an earlier node process left running; cleans up the
    /// folders of the others. Returns how many were adopted.
    pub async fn adopt_all(&self) -> usize {
        let Ok(dirs) = std::fs::read_dir(&self.executions_dir) else {
            return 0;
        };
        let mut adopted = 0;
        for dir in dirs.flatten() {
            let folder = dir.path();
            match self.adopt(&folder).await {
                Ok(()) => adopted += 1,
                Err(reason) => {
                    tracing::info!("not adopting {}: {reason}", folder.display());
                    if let Ok(vm) = self.hypervisor.adopt(&folder).await {
                        let _ = vm.kill();
                        vm.wait_exit(Duration::from_secs(5)).await;
                    }
                    if let Some(net) = ExecutionFile::load(&folder).and_then(|f| f.prepared.net) {
                        self.network.unplug(&net).await;
                    }
                    let _ = std::fs::remove_dir_all(&folder);
                }
            }
        }
        adopted
    }

    async fn adopt(&self, folder: &Path) -> Result<(), String> {
        let file = ExecutionFile::load(folder).ok_or("no readable execution.json")?;
        if file.lifecycle.state() != State::Running {
            return Err(format!("it was {:?}", file.lifecycle.state()));
        }
        let vm = self
            .hypervisor
            .adopt(folder)
            .await
            .map_err(|e| e.to_string())?;
        let channel = Arc::new(AgentChannel::new(vm.channel()));
        // The guest may still be closing the previous node's session on the channel:
        // wait_ready retries a session that drops at once.
        let health = channel
            .wait_ready(Duration::from_secs(30))
            .await
            .map_err(|e| format!("its agent does not answer: {e}"))?;
        if health.app != AppState::Running {
            return Err(format!("its app is {:?}", health.app));
        }
        let content = &file.program.content;
        let reservation = self
            .admission
            .reserve(Amount {
                memory_mib: content.resources.memory,
                vcpus: content.resources.vcpus.into(),
                disk_mib: prepare::own_disk_mib(content),
            })
            .map_err(|e| format!("no room for it: {e}"))?;
        let hash = file.program.item_hash.clone();
        if let Some(net) = &file.prepared.net
            && !self.network.reserve(net.index)
        {
            return Err(format!("its subnet {} is taken twice", net.index));
        }
        let slot = Arc::new(Slot {
            execution: Arc::new(Execution::new(file, vm, channel, true, Startup::default())),
            _reservation: reservation,
        });
        let mut entries = self.entries.lock().expect("entries");
        if entries.contains_key(&hash) {
            return Err("another execution of the program runs".into());
        }
        tracing::info!("adopted program {hash} from {}", folder.display());
        entries.insert(hash, Entry::Running(slot));
        Ok(())
    }

    /// The program as it would run now (for checks that do not start it).
    pub async fn program(&self, hash: &str) -> Result<ProgramMessage, ProgramError> {
        self.resources.program(hash).await
    }
}

/// The end of a VM's console, to explain a boot that went wrong.
fn console_tail(folder: &Path) -> String {
    let console = std::fs::read_to_string(folder.join("serial.log")).unwrap_or_default();
    let start = console.len().saturating_sub(4000);
    let start = (start..console.len())
        .find(|i| console.is_char_boundary(*i))
        .unwrap_or(console.len());
    console[start..].to_string()
}
