//! One run of a program: its record and state machine ([`state`]), how its VM is
//! prepared ([`prepare`]) and metered ([`metering`]), and the running [`Execution`]
//! that requests go through.
//!
//! An execution's folder holds the VM's own files (the driver's) and
//! `execution.json`, which is enough for a restarted node to take the VM back.

pub mod metering;
pub mod prepare;
pub mod state;

use crate::channel::AgentChannel;
use crate::hypervisor::{RunningVm, StopOutcome, StopTimeouts, VmStatus};
use crate::resources::ProgramMessage;
use metering::Usage;
use prepare::Prepared;
use serde::{Deserialize, Serialize};
use state::{Lifecycle, State, Times};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `execution.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionFile {
    pub id: String,
    pub program: ProgramMessage,
    pub prepared: Prepared,
    pub lifecycle: Lifecycle,
}

impl ExecutionFile {
    pub fn path(folder: &Path) -> PathBuf {
        folder.join("execution.json")
    }

    pub fn load(folder: &Path) -> Option<Self> {
        let bytes = std::fs::read(Self::path(folder)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn save(&self, folder: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let partial = folder.join("execution.json.partial");
        std::fs::write(&partial, bytes)?;
        std::fs::rename(partial, Self::path(folder))
    }
}

/// Where the time of a start went (zero for an adopted execution).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Startup {
    /// Reading the PROGRAM (and its amends) from the CCN.
    pub message: Duration,
    /// Files from the cache or the CCN, volumes, the machine's spec.
    pub prepare: Duration,
    /// The hypervisor process started until the guest runs.
    pub vm: Duration,
    /// The guest running until its agent answers.
    pub agent: Duration,
    /// Configuration sent until the app accepts connections.
    pub app: Duration,
}

/// A program whose VM runs (or ran): the handle requests are forwarded through.
pub struct Execution {
    pub id: String,
    pub program: ProgramMessage,
    pub prepared: Prepared,
    vm: Box<dyn RunningVm>,
    channel: Arc<AgentChannel>,
    lifecycle: Mutex<Lifecycle>,
    in_flight: AtomicUsize,
    last_used: Mutex<Instant>,
    /// Taken back from an earlier node process rather than started by this one.
    pub adopted: bool,
    pub startup: Startup,
}

/// Counts a request as in flight for as long as it lives.
pub struct InFlight<'a>(&'a Execution);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        *self.0.last_used.lock().expect("last_used") = Instant::now();
    }
}

impl Execution {
    pub fn new(
        file: ExecutionFile,
        vm: Box<dyn RunningVm>,
        channel: Arc<AgentChannel>,
        adopted: bool,
        startup: Startup,
    ) -> Self {
        Self {
            id: file.id,
            program: file.program,
            prepared: file.prepared,
            vm,
            channel,
            lifecycle: Mutex::new(file.lifecycle),
            in_flight: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            adopted,
            startup,
        }
    }

    pub fn channel(&self) -> &Arc<AgentChannel> {
        &self.channel
    }

    pub fn vm(&self) -> &dyn RunningVm {
        self.vm.as_ref()
    }

    pub fn folder(&self) -> &Path {
        self.vm.folder()
    }

    pub fn state(&self) -> State {
        self.lifecycle.lock().expect("lifecycle").state()
    }

    pub fn times(&self) -> Times {
        self.lifecycle.lock().expect("lifecycle").times().clone()
    }

    /// Counts a request in, unless the execution no longer runs (being stopped): the
    /// caller then starts a new one. Paired with [`Self::begin_stop_if_idle`] under
    /// the lifecycle lock, so an idle stop never takes a VM from under a request.
    pub fn try_begin_request(&self) -> Option<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        (self.state() == State::Running).then_some(guard)
    }

    /// How long since the last request ended; `None` while one is in flight.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.last_used.lock().expect("last_used").elapsed())
    }

    pub async fn is_alive(&self) -> bool {
        self.state() == State::Running && self.vm.status().await != VmStatus::Exited
    }

    /// Moves to stopping, unless another caller already did: only one stops a VM.
    pub fn begin_stop(&self) -> bool {
        self.lifecycle
            .lock()
            .expect("lifecycle")
            .advance(State::Stopping)
            .is_ok()
    }

    /// Moves to stopping if no request is in flight and none ended in the last
    /// `idle`.
    pub fn begin_stop_if_idle(&self, idle: Duration) -> bool {
        let mut lifecycle = self.lifecycle.lock().expect("lifecycle");
        if self.idle_for().is_none_or(|for_| for_ < idle) {
            return false;
        }
        lifecycle.advance(State::Stopping).is_ok()
    }

    /// Stops the VM (its agent first, then harder), after [`Self::begin_stop`].
    /// Returns the VM's usage read just before it ended.
    pub async fn stop(&self, timeouts: StopTimeouts) -> (StopOutcome, Usage) {
        let usage = metering::read(self.vm.pid()).unwrap_or_default();
        let channel = self.channel.clone();
        let ask = Box::pin(async move {
            let _ = channel.shutdown().await;
        });
        let outcome = crate::hypervisor::stop(self.vm.as_ref(), Some(ask), timeouts).await;
        let _ = self
            .lifecycle
            .lock()
            .expect("lifecycle")
            .advance(State::Stopped);
        (outcome, usage)
    }
}
