//! The API of the guest agent, served as HTTP/2 (prior knowledge) over the VM's channel.
//!
//! The host is the client, the agent the server. Routes:
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /_agent/configure` | [`AgentConfig`] | 200 [`ConfigureReply`] once the app accepts connections; 500 [`AgentError`] (with the app's traceback) when it fails to start |
//! | `GET /_agent/health` | | 200 [`Health`] |
//! | `POST /_agent/shutdown` | | 200, then the guest stops the app, syncs and powers off |
//! | `GET /_agent/logs` | | a streamed body of [`LogLine`]s, one JSON object per line, kept open |
//! | `POST /_agent/lease` | [`LeaseRequest`] | 200 [`LeaseReply`]; from then on the guest powers off unless the lease is renewed in time |
//! | anything else | | forwarded to the app with method, path, query, headers and body as they came |
//!
//! Every host connection is a fresh HTTP/2 session: the host may disconnect and reconnect
//! at any time (a supervisor that restarts and re-adopts its VMs).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name of the virtio-serial port of the channel; the guest finds it as
/// `/dev/virtio-ports/{AGENT_PORT_NAME}`.
pub const AGENT_PORT_NAME: &str = "org.aleph.agent.0";

/// Kernel command line key naming the block device that holds the runtime root filesystem
/// (a squashfs mounted read-only under a tmpfs overlay), e.g. `aleph.root=/dev/vda`.
pub const ROOT_CMDLINE_KEY: &str = "aleph.root";

/// Path prefix reserved for the agent's own routes; all other paths go to the app.
pub const AGENT_ROUTE_PREFIX: &str = "/_agent/";

/// Port a binary (non-ASGI) program must listen on inside the VM.
pub const BINARY_APP_PORT: u16 = 8080;

/// Everything the guest needs to start the program; sent once after boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Host name of the VM (the base32 form of the program's hash on the network).
    pub hostname: String,
    pub code: CodeConfig,
    /// Environment variables given to the app.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Extra drives to mount, in order.
    #[serde(default)]
    pub volumes: Vec<VolumeConfig>,
    /// Network set-up; `None` leaves only loopback.
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    /// Seconds the app has to accept connections (ASGI lifespan startup included).
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_seconds: u32,
}

fn default_startup_timeout() -> u32 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeEncoding {
    /// A single source file; written as `/opt/code/{module}.py` (module from the entrypoint).
    Plain,
    /// A zip archive, extracted into `/opt/code` (paths leaving it are refused).
    Zip,
    /// A squashfs image, mounted read-only at `/opt/code`.
    Squashfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeInterface {
    /// `module:attribute`, served by uvicorn on a Unix socket.
    Asgi,
    /// An executable path (relative to `/opt/code`) that listens on [`BINARY_APP_PORT`].
    Binary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeConfig {
    /// Block device holding the code, e.g. `/dev/vdb`. For `plain` and `zip` the device
    /// holds the raw bytes, of which the first `size` are the code.
    pub device: String,
    pub encoding: CodeEncoding,
    /// Length in bytes of the code on the device (needed for `plain` and `zip`).
    pub size: u64,
    pub entrypoint: String,
    pub interface: CodeInterface,
    /// Extra arguments for a binary entrypoint.
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    Squashfs,
    Ext4,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeConfig {
    pub device: String,
    pub mount: String,
    pub format: VolumeFormat,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Interface name in the guest, normally `eth0`.
    pub interface: String,
    /// Address with prefix, e.g. `172.16.3.2/24`.
    pub ipv4: Option<String>,
    pub ipv4_gateway: Option<String>,
    pub ipv6: Option<String>,
    pub ipv6_gateway: Option<String>,
    /// Name servers written to `/etc/resolv.conf`.
    #[serde(default)]
    pub dns_servers: Vec<String>,
}

/// `POST /_agent/lease` body: the VM may run for `milliseconds` more (counted on the
/// guest's monotonic clock from when the agent reads it); each call replaces the last
/// deadline. Persistent programs only: a VM that never got a lease runs until stopped.
/// The host gives no more than what is left of its own lease, so a host that dies
/// leaves VMs that stop by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub milliseconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReply {
    /// Milliseconds left before the guest powers off.
    pub remaining_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigureReply {
    pub status: String,
    /// Milliseconds from receiving the configuration to the app accepting connections.
    pub startup_ms: u64,
}

/// Error body of the agent's own routes, and of forwarded requests it could not deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentError {
    pub error: String,
    /// The app's output when it failed to start (a Python traceback, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    /// Not configured yet.
    Waiting,
    Starting,
    Running,
    /// The app process exited.
    Exited,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub app: AppState,
    /// Seconds since the guest kernel booted.
    pub uptime_seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// The agent's own messages.
    System,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub stream: LogStream,
    pub message: String,
    /// Guest wall-clock time, float epoch seconds.
    pub time: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_apply() {
        let config: AgentConfig = serde_json::from_str(
            r#"{"hostname":"h","code":{"device":"/dev/vdb","encoding":"zip","size":10,
                "entrypoint":"main:app","interface":"asgi"}}"#,
        )
        .unwrap();
        assert_eq!(config.startup_timeout_seconds, 30);
        assert!(config.variables.is_empty() && config.volumes.is_empty());
        assert_eq!(config.code.encoding, CodeEncoding::Zip);
    }
}
