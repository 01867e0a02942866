//! Stopping a VM politely first, then less so.
//!
//! The order is the guest's own shutdown (its agent syncs the disks and powers off), the
//! ACPI power button, the hypervisor's `quit`, and SIGKILL. Each step gets a bounded
//! wait so a stuck guest cannot hold a stop forever. The guest step is a future supplied
//! by the caller because the driver does not speak the agent's protocol.

use super::RunningVm;
use futures::future::BoxFuture;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct StopTimeouts {
    pub guest: Duration,
    pub acpi: Duration,
    pub quit: Duration,
    pub kill: Duration,
}

impl Default for StopTimeouts {
    fn default() -> Self {
        Self {
            guest: Duration::from_secs(10),
            acpi: Duration::from_secs(5),
            quit: Duration::from_secs(3),
            kill: Duration::from_secs(3),
        }
    }
}

/// Which step ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// It was gone before we asked.
    AlreadyExited,
    /// The guest powered off when asked through its agent.
    Guest,
    Acpi,
    Quit,
    Killed,
    /// Even SIGKILL did not end it within its timeout (a process stuck in the kernel).
    Stuck,
}

/// Stops `vm`. `ask_guest`, when given, asks the guest to power off (its result is
/// ignored: whether the process ends is what counts).
pub async fn stop(
    vm: &dyn RunningVm,
    ask_guest: Option<BoxFuture<'_, ()>>,
    timeouts: StopTimeouts,
) -> StopOutcome {
    if vm.wait_exit(Duration::ZERO).await {
        return StopOutcome::AlreadyExited;
    }
    if let Some(ask) = ask_guest {
        // One budget for asking and for the guest to go.
        let deadline = tokio::time::Instant::now() + timeouts.guest;
        let _ = tokio::time::timeout(timeouts.guest, ask).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if vm.wait_exit(left).await {
            return StopOutcome::Guest;
        }
    }
    if vm.request_powerdown().await.is_ok() && vm.wait_exit(timeouts.acpi).await {
        return StopOutcome::Acpi;
    }
    // Whatever `quit` answers (QEMU may hang up before it does), what counts is whether
    // the process goes.
    let _ = vm.quit().await;
    if vm.wait_exit(timeouts.quit).await {
        return StopOutcome::Quit;
    }
    if vm.kill().is_ok() && vm.wait_exit(timeouts.kill).await {
        return StopOutcome::Killed;
    }
    StopOutcome::Stuck
}
