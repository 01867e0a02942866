//! Hypervisor drivers: start microVMs as detached processes, find them again after a
//! restart, report and change their state.
//!
//! A driver knows machines, processes and control sockets; it never knows what the guest
//! serves. Talking to the guest goes through [`crate::channel`], on the socket a running
//! VM names in [`RunningVm::channel`].

mod config;
pub mod qemu;
mod stop;

pub use config::{
    Accel, BootSource, ChannelEndpoint, ChannelSpec, Drive, DriveFormat, Machine, TapSpec, VmSpec,
    VmStatus,
};
pub use stop::{StopOutcome, StopTimeouts, stop};

use futures::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A tool or device the driver needs is missing on this host.
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    /// The hypervisor process failed to start the VM; carries its own words.
    #[error("the VM failed to start: {0}")]
    StartFailed(String),
    /// No VM runs from this folder (no pidfile, or its process is gone).
    #[error("no running VM in {}", .0.display())]
    NotRunning(PathBuf),
    #[error("control socket: {0}")]
    Control(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl VmError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// A hypervisor that runs microVMs. Implemented by [`qemu::QemuDriver`]; Firecracker is
/// meant to fit the same shape (a process per VM, an API socket in the execution
/// folder, a vsock multiplexer as the channel).
pub trait Hypervisor: Send + Sync {
    /// Short name, as in messages' `environment.hypervisor` (`qemu`, `firecracker`).
    fn name(&self) -> &'static str;

    /// Starts a VM as a process of its own that outlives the caller, and returns once
    /// the guest runs (not once it has booted: the channel says when the agent is up).
    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Box<dyn RunningVm>, VmError>>;

    /// Reconnects to a VM started earlier (by this process or an earlier one) from
    /// `folder`, the spec's execution folder. Fails with [`VmError::NotRunning`] when
    /// nothing runs there any more.
    fn adopt<'a>(&'a self, folder: &'a Path) -> BoxFuture<'a, Result<Box<dyn RunningVm>, VmError>>;
}

/// A VM started or adopted by a driver. Dropping it leaves the VM running: only
/// [`RunningVm::quit`], [`RunningVm::kill`] or the guest powering off end it.
pub trait RunningVm: Send + Sync {
    fn pid(&self) -> u32;
    fn folder(&self) -> &Path;
    fn spec(&self) -> &VmSpec;
    fn accel(&self) -> Accel;
    /// Where the host reaches the guest agent.
    fn channel(&self) -> ChannelEndpoint;
    /// The guest's console output.
    fn serial_log(&self) -> PathBuf;

    /// Asks the hypervisor; a process that is gone (killed from outside, crashed, powered
    /// off) is [`VmStatus::Exited`].
    fn status(&self) -> BoxFuture<'_, VmStatus>;
    /// Presses the ACPI power button; the guest may or may not act on it.
    fn request_powerdown(&self) -> BoxFuture<'_, Result<(), VmError>>;
    /// Asks the hypervisor process to end now, without the guest's consent.
    fn quit(&self) -> BoxFuture<'_, Result<(), VmError>>;
    /// SIGKILL. Idempotent: a VM already gone is not an error.
    fn kill(&self) -> Result<(), VmError>;
    /// Whether the process ended within `timeout`.
    fn wait_exit(&self, timeout: Duration) -> BoxFuture<'_, bool>;
}
