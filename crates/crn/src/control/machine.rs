//! `/control/machine/{ref}/…`: what a VM's owner (or a wallet the owner delegates to)
//! may do to it on this node, signed with the operator scheme (`X-SignedPubKey` +
//! `X-SignedOperation`, see [`aleph_protocol::auth::operator`]).
//!
//! | route | answer |
//! |---|---|
//! | `POST …/stop` | 200 `{"status": "stopped", "ref"}`: the VM is stopped and its execution recorded; an instance stays stopped until rebooted |
//! | `POST …/reboot` | 200 `{"status": "rebooted", "ref", "execution_id"}` once the VM runs again (a new execution, same message; an instance keeps its disks and has no `execution_id`) |
//! | `GET …/logs` | 200 `[{"type": "system"\|"stdout", "message"}, …]`: the VM's console |
//! | `GET …/stream_logs` | a websocket of a program's app and agent log lines, live (see below); 501 for an instance |
//! | `POST …/erase` | instances: 200 `{"status": "erased"}`: stopped, root disk and persistent volumes deleted, kept stopped (a reboot starts it from a fresh disk); programs: 501 |
//! | `POST …/reinstall` | instances: 200 `{"status": "reinstalled"}` once it runs again from a fresh root disk (volumes kept); programs: 501 |
//!
//! Checks, in this order: the signature (401: missing or malformed headers, a bad
//! signature, an expired key, a time too far from ours, an operation signed for another
//! method, domain or path, or one already used), the VM (404 when this node does not run
//! it), then who signed (403 unless the VM's owner, the program content's `address`, or
//! delegated by the owner's `security` aggregate on the CCN). The 404 comes before the
//! 403 on purpose: which VMs run here is public (`/about/executions/list`), so hiding it
//! from strangers would buy nothing, and the owner is only known once the VM is found.
//! A CCN that cannot be read for the aggregate gives 503. Errors are `{"error": ...}`.
//!
//! The `domain` the operation must name is this node's configured `domain` when set,
//! else the request's `Host` header without its port (what the official client signs:
//! the host of the node URL it calls). `path` is the request path without query.
//!
//! For a program, `stop` ends the VM now, but does not keep it stopped: an on-demand program starts
//! again on its next request, and a persistent one on the persistent supervisor's next
//! pass as long as the scheduler's allocation lists it here. Stopping one for good is
//! the scheduler's (or the owner's message's) business, not this node's.
//!
//! `logs` reads the console (`serial.log` of the execution folder, its last
//! [`MAX_LOG_BYTES`]): the guest agent's own lines (`aleph-guest: …`) are `system`,
//! everything else on the console (kernel, init) `stdout`. The app's own stdout and
//! stderr do not go to the console but to the agent's log buffer, which `stream_logs`
//! serves (a one-shot read of it has no end marker to stop at, so `logs` keeps to the
//! console).
//!
//! `stream_logs` is a websocket (404 before the upgrade when the VM does not run here).
//! Browsers cannot set headers on one, so the signature comes as its first text message,
//! `{"auth": {"X-SignedPubKey": {…}, "X-SignedOperation": {…}}}` (both headers as JSON
//! objects), signed for `GET` and the route's path like a header would be, within
//! [`AUTH_WAIT`]. The same checks then answer `{"status": "failed", "reason"}` and
//! close, or `{"status": "connected"}` followed by `{"type": "stdout"|"stderr"|"system",
//! "message"}` for each line of the guest agent's log (its recent lines first, then live):
//! the app's output and the agent's own messages. When the VM stops, a last `system`
//! line says so and the socket closes.

use crate::error::ProgramError;
use crate::execution::Execution;
use crate::instances::Instances;
use crate::pool::Pool;
use aleph_protocol::auth::operator::{
    self, OperatorAuthError, ReplayGuard, SIGNED_OPERATION_HEADER, SIGNED_PUBKEY_HEADER,
    SignedOperation, SignedPubKey, Verified,
};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

pub const MACHINE_PREFIX: &str = "/control/machine";
/// How much of the console `logs` returns at most (its end).
pub const MAX_LOG_BYTES: u64 = 1 << 20;
/// The marker the guest agent puts before its own console lines.
const AGENT_MARKER: &str = "aleph-guest: ";
/// How long a `stream_logs` client has to send its `auth` message.
pub const AUTH_WAIT: Duration = Duration::from_secs(30);
/// How long the CCN may take to give the owner's `security` aggregate.
const AGGREGATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an owner's request is refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Auth(#[from] OperatorAuthError),
    #[error("this node runs no VM {0}")]
    NotRunning(String),
    #[error("cannot read the owner's security aggregate from the CCN: {0}")]
    Aggregate(String),
    #[error("{0} is not implemented yet on this node")]
    NotImplemented(&'static str),
    #[error("{0}")]
    Program(#[from] ProgramError),
    #[error("cannot read the VM's console: {0}")]
    Console(#[from] std::io::Error),
}

impl ControlError {
    pub fn status(&self) -> StatusCode {
        let code = match self {
            Self::Auth(e) => e.status(),
            Self::NotRunning(_) => 404,
            Self::Aggregate(_) => 503,
            Self::NotImplemented(_) => 501,
            Self::Program(e) => e.status(),
            Self::Console(_) => 500,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.to_string()});
        // A reboot whose app failed to start: say why, as the program routes do.
        if let Self::Program(e) = &self
            && let Some(traceback) = e.traceback()
        {
            body["traceback"] = json!(traceback);
        }
        (self.status(), Json(body)).into_response()
    }
}

/// The VM an owner's request acts on.
enum Target {
    Program(Arc<Execution>),
    /// An instance this node keeps, running or stopped.
    Instance {
        hash: String,
        owner: String,
    },
}

impl Target {
    fn hash(&self) -> &str {
        match self {
            Self::Program(execution) => &execution.program.item_hash,
            Self::Instance { hash, .. } => hash,
        }
    }

    fn owner(&self) -> &str {
        match self {
            Self::Program(execution) => &execution.program.content.address,
            Self::Instance { owner, .. } => owner,
        }
    }
}

/// One line of `logs`, in the shape upstream's clients read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
}

/// The owner controls' state: the node's VMs, the operations already used, and a
/// client for the CCN's aggregates.
pub struct OwnerControls {
    pool: Arc<Pool>,
    instances: Arc<Instances>,
    replays: ReplayGuard,
    http: reqwest::Client,
}

/// The routes under [`MACHINE_PREFIX`], with their own state; merge into any router.
pub fn router<S: Clone + Send + Sync + 'static>(
    pool: Arc<Pool>,
    instances: Arc<Instances>,
) -> Router<S> {
    let controls = Arc::new(OwnerControls::new(pool, instances));
    let route = |action: &str| format!("{MACHINE_PREFIX}/{{reference}}/{action}");
    Router::new()
        .route(&route("stop"), post(stop))
        .route(&route("reboot"), post(reboot))
        .route(&route("logs"), get(logs))
        .route(&route("erase"), post(erase))
        .route(&route("reinstall"), post(reinstall))
        .route(&route("stream_logs"), get(stream_logs))
        .with_state(controls)
}

impl OwnerControls {
    pub fn new(pool: Arc<Pool>, instances: Arc<Instances>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(AGGREGATE_TIMEOUT)
            .timeout(AGGREGATE_TIMEOUT)
            .build()
            .expect("a default HTTP client");
        Self {
            pool,
            instances,
            replays: ReplayGuard::default(),
            http,
        }
    }

    /// All the checks of the module doc, on a request's headers; the VM the request
    /// may act on.
    async fn authorize(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        reference: &str,
    ) -> Result<Target, ControlError> {
        let now = chrono::Utc::now().timestamp();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let verified = operator::verify(
            header(SIGNED_PUBKEY_HEADER),
            header(SIGNED_OPERATION_HEADER),
            method.as_str(),
            &self.domain(uri, headers),
            uri.path(),
            now,
        )?;
        self.replays.check(&verified, now)?;
        let target = self.target(reference)?;
        self.check_owner(target.owner(), &verified).await?;
        Ok(target)
    }

    /// The domain operations to this node must name (see the module doc).
    fn domain(&self, uri: &Uri, headers: &HeaderMap) -> String {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.host());
        signed_domain(self.pool.config().domain.as_deref(), host)
    }

    /// The VM `reference` names: a program running here, or an instance this node
    /// keeps (running or stopped).
    fn target(&self, reference: &str) -> Result<Target, ControlError> {
        let not_here = || ControlError::NotRunning(reference.to_owned());
        let hash = crate::resources::check_hash(reference).map_err(|_| not_here())?;
        if let Some(execution) = self.pool.execution(&hash) {
            return Ok(Target::Program(execution));
        }
        let record = self.instances.record(&hash).ok_or_else(not_here)?;
        Ok(Target::Instance {
            owner: record.message.content.address,
            hash,
        })
    }

    /// Whether the verified wallet is the VM's owner or delegated by its owner.
    async fn check_owner(&self, owner: &str, verified: &Verified) -> Result<(), ControlError> {
        // The owner needs no aggregate: spare the CCN the question.
        let security = if owner.eq_ignore_ascii_case(&verified.address) {
            None
        } else {
            self.security_aggregate(owner).await?
        };
        operator::check_authorized(owner, security.as_ref(), verified)?;
        Ok(())
    }

    /// The checks of a `stream_logs` socket's first message.
    async fn authorize_socket(
        &self,
        first: &str,
        domain: &str,
        path: &str,
        owner: &str,
    ) -> Result<(), ControlError> {
        let packet: AuthPacket =
            serde_json::from_str(first).map_err(|e| OperatorAuthError::Malformed {
                header: "auth message",
                reason: e.to_string(),
            })?;
        let now = chrono::Utc::now().timestamp();
        let verified = operator::verify_signed(
            &packet.auth.signed_pubkey,
            &packet.auth.signed_operation,
            "GET",
            domain,
            path,
            now,
        )?;
        self.replays.check(&verified, now)?;
        self.check_owner(owner, &verified).await
    }

    /// Serves an upgraded `stream_logs` socket: its authentication, then the log lines
    /// until the VM stops or the client goes.
    async fn stream_logs(
        &self,
        mut socket: WebSocket,
        target: Target,
        domain: String,
        path: String,
    ) {
        let first = match tokio::time::timeout(AUTH_WAIT, socket.recv()).await {
            Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
            Ok(Some(Ok(_))) => String::new(),
            // Gone, broken, or silent too long.
            Ok(_) => return,
            Err(_) => {
                let _ = send_json(&mut socket, &failed("no auth message in time")).await;
                return;
            }
        };
        if let Err(e) = self
            .authorize_socket(&first, &domain, &path, target.owner())
            .await
        {
            let _ = send_json(&mut socket, &failed(&e.to_string())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        if send_json(&mut socket, &json!({"status": "connected"}))
            .await
            .is_err()
        {
            return;
        }
        let execution = match target {
            Target::Program(execution) => execution,
            Target::Instance { hash, .. } => return self.follow_console(socket, &hash).await,
        };
        let lines = match execution.channel().logs().await {
            Ok(lines) => lines,
            Err(e) => {
                let line = system_line(&format!("the VM's logs cannot be read: {e}"));
                let _ = send_json(&mut socket, &line).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        };
        let mut lines = std::pin::pin!(lines);
        loop {
            tokio::select! {
                line = lines.next() => match line {
                    Some(Ok(line)) => {
                        let entry = json!({"type": line.stream, "message": line.message});
                        if send_json(&mut socket, &entry).await.is_err() {
                            return;
                        }
                    }
                    // The session ended: the VM stopped (or its channel broke).
                    _ => break,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    // Pings are answered by axum; anything else is ignored.
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = send_json(&mut socket, &system_line("the VM stopped")).await;
        let _ = socket.send(Message::Close(None)).await;
    }

    /// Streams an instance's console (it has no agent): the end of what it printed so
    /// far, then each new line, until its VM stops or the client goes.
    async fn follow_console(&self, mut socket: WebSocket, hash: &str) {
        let path = self.instances.folder(hash).join("serial.log");
        let mut console = ConsoleFollower::new(path, MAX_LOG_BYTES);
        let mut tick = tokio::time::interval(CONSOLE_POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for line in console.new_lines().await {
                        for entry in console_entries(&line) {
                            if send_json(&mut socket, &json!(entry)).await.is_err() {
                                return;
                            }
                        }
                    }
                    if !self.instances.is_running(hash) {
                        break;
                    }
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = send_json(&mut socket, &system_line("the VM stopped")).await;
        let _ = socket.send(Message::Close(None)).await;
    }

    /// The owner's `security` aggregate; `None` when the owner has none.
    async fn security_aggregate(&self, owner: &str) -> Result<Option<Value>, ControlError> {
        let url = format!(
            "{}/api/v0/aggregates/{owner}.json?keys=security",
            self.pool.config().ccn_url()
        );
        let fail = |e: &dyn std::fmt::Display| ControlError::Aggregate(format!("{url}: {e}"));
        let response = self.http.get(&url).send().await.map_err(|e| fail(&e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(fail(&response.status()));
        }
        let body: Value = response.json().await.map_err(|e| fail(&e))?;
        Ok(body
            .get("data")
            .and_then(|data| data.get("security"))
            .cloned())
    }
}

/// The first message of a `stream_logs` socket.
#[derive(Debug, Deserialize)]
struct AuthPacket {
    auth: AuthHeaders,
}

#[derive(Debug, Deserialize)]
struct AuthHeaders {
    #[serde(rename = "X-SignedPubKey")]
    signed_pubkey: SignedPubKey,
    #[serde(rename = "X-SignedOperation")]
    signed_operation: SignedOperation,
}

fn failed(reason: &str) -> Value {
    json!({"status": "failed", "reason": reason})
}

fn system_line(message: &str) -> Value {
    json!({"type": "system", "message": message})
}

async fn send_json(socket: &mut WebSocket, value: &Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(value.to_string().into())).await
}

/// The domain an operation must be signed for: the configured one, else the `Host`
/// header's host (no port; IPv6 keeps its brackets, as in URLs).
pub fn signed_domain(configured: Option<&str>, host: Option<&str>) -> String {
    if let Some(domain) = configured {
        return domain.to_owned();
    }
    host.and_then(|host| host.parse::<http::uri::Authority>().ok())
        .map(|authority| authority.host().to_owned())
        .unwrap_or_default()
}

/// The console's lines as `logs` entries (see the module doc for their types).
pub fn console_entries(console: &str) -> Vec<LogEntry> {
    console
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty())
        .map(|line| LogEntry {
            kind: if line.contains(AGENT_MARKER) {
                "system"
            } else {
                "stdout"
            },
            message: line.to_owned(),
        })
        .collect()
}

/// How often an instance's console is looked at for new lines.
const CONSOLE_POLL: Duration = Duration::from_millis(250);

/// Reads the lines appended to a console file since the last look: first its last
/// `backlog` bytes (from a whole line), then what follows. A file that shrinks (a new
/// VM start truncates it) is read again from its start.
struct ConsoleFollower {
    path: std::path::PathBuf,
    offset: Option<u64>,
    backlog: u64,
    partial: Vec<u8>,
}

impl ConsoleFollower {
    fn new(path: std::path::PathBuf, backlog: u64) -> Self {
        Self {
            path,
            offset: None,
            backlog,
            partial: Vec::new(),
        }
    }

    /// Whole lines added since the last call (a line still being written waits).
    async fn new_lines(&mut self) -> Vec<String> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let Ok(mut file) = tokio::fs::File::open(&self.path).await else {
            return Vec::new();
        };
        let Ok(len) = file.metadata().await.map(|m| m.len()) else {
            return Vec::new();
        };
        let first_look = self.offset.is_none();
        let mut start = self
            .offset
            .unwrap_or_else(|| len.saturating_sub(self.backlog));
        if start > len {
            start = 0;
            self.partial.clear();
        }
        if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file
            .take(len - start)
            .read_to_end(&mut bytes)
            .await
            .is_err()
        {
            return Vec::new();
        }
        self.offset = Some(start + bytes.len() as u64);
        if first_look && start > 0 {
            // The backlog's first line was cut: drop it.
            let cut = bytes.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
            bytes.drain(..cut);
        }
        self.partial.extend_from_slice(&bytes);
        let Some(last_newline) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        String::from_utf8_lossy(&complete)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The last [`MAX_LOG_BYTES`] of a file, from the first whole line.
async fn tail(path: &std::path::Path) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        // A VM that wrote nothing yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata().await?.len();
    let start = len.saturating_sub(MAX_LOG_BYTES);
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut bytes = Vec::new();
    file.take(MAX_LOG_BYTES).read_to_end(&mut bytes).await?;
    if start > 0 {
        // The first line was cut: drop it.
        let first = bytes.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
        bytes.drain(..first);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

type Controls = State<Arc<OwnerControls>>;

async fn stop(
    State(controls): Controls,
    Path(reference): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ControlError> {
    let target = controls
        .authorize(&method, &uri, &headers, &reference)
        .await?;
    match &target {
        Target::Program(execution) => {
            let hash = &execution.program.item_hash;
            controls.pool.stop(hash, "stopped by its owner").await;
        }
        Target::Instance { hash, .. } => {
            controls.instances.stop_held(hash).await?;
        }
    }
    Ok(Json(json!({"status": "stopped", "ref": target.hash()})).into_response())
}

async fn reboot(
    State(controls): Controls,
    Path(reference): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ControlError> {
    let target = controls
        .authorize(&method, &uri, &headers, &reference)
        .await?;
    let hash = target.hash().to_owned();
    match target {
        Target::Program(execution) => {
            drop(execution);
            // Another stop may have come first (idle, update): the start below is all
            // that counts.
            controls.pool.stop(&hash, "rebooted by its owner").await;
            let started = controls.pool.get_or_start(&hash).await?;
            Ok(Json(json!({
                "status": "rebooted",
                "ref": hash,
                "execution_id": started.id,
            }))
            .into_response())
        }
        Target::Instance { .. } => {
            controls.instances.reboot(&hash).await?;
            Ok(Json(json!({"status": "rebooted", "ref": hash})).into_response())
        }
    }
}

async fn logs(
    State(controls): Controls,
    Path(reference): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ControlError> {
    let target = controls
        .authorize(&method, &uri, &headers, &reference)
        .await?;
    let folder = match &target {
        Target::Program(execution) => execution.folder().to_path_buf(),
        Target::Instance { hash, .. } => controls.instances.folder(hash),
    };
    let console = tail(&folder.join("serial.log")).await?;
    Ok(Json(console_entries(&console)).into_response())
}

async fn erase(
    State(controls): Controls,
    Path(reference): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ControlError> {
    match controls
        .authorize(&method, &uri, &headers, &reference)
        .await?
    {
        Target::Program(_) => Err(ControlError::NotImplemented("erase of a program")),
        Target::Instance { hash, .. } => {
            controls.instances.erase(&hash).await?;
            Ok(Json(json!({"status": "erased", "ref": hash})).into_response())
        }
    }
}

async fn reinstall(
    State(controls): Controls,
    Path(reference): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ControlError> {
    match controls
        .authorize(&method, &uri, &headers, &reference)
        .await?
    {
        Target::Program(_) => Err(ControlError::NotImplemented("reinstall of a program")),
        Target::Instance { hash, .. } => {
            controls.instances.reinstall(&hash).await?;
            Ok(Json(json!({"status": "reinstalled", "ref": hash})).into_response())
        }
    }
}

async fn stream_logs(
    State(controls): Controls,
    Path(reference): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ControlError> {
    let target = controls.target(&reference)?;
    let domain = controls.domain(&uri, &headers);
    let path = uri.path().to_owned();
    Ok(upgrade.on_upgrade(move |socket| async move {
        controls.stream_logs(socket, target, domain, path).await
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_domain_wins_else_the_host_without_port() {
        assert_eq!(
            signed_domain(Some("crn.example.org"), Some("1.2.3.4:4020")),
            "crn.example.org"
        );
        assert_eq!(
            signed_domain(None, Some("crn.example.org:4020")),
            "crn.example.org"
        );
        assert_eq!(
            signed_domain(None, Some("crn.example.org")),
            "crn.example.org"
        );
        assert_eq!(signed_domain(None, Some("[::1]:4020")), "[::1]");
        assert_eq!(signed_domain(None, None), "");
    }

    #[test]
    fn console_lines_of_the_agent_are_system_the_others_stdout() {
        let console = "[    0.000000] Linux version 6.1\r\n\n[    1.200] aleph-guest: runtime root ready\nhello\n";
        assert_eq!(
            console_entries(console),
            vec![
                LogEntry {
                    kind: "stdout",
                    message: "[    0.000000] Linux version 6.1".into()
                },
                LogEntry {
                    kind: "system",
                    message: "[    1.200] aleph-guest: runtime root ready".into()
                },
                LogEntry {
                    kind: "stdout",
                    message: "hello".into()
                },
            ]
        );
        assert_eq!(
            serde_json::to_value(&console_entries("x")[0]).unwrap(),
            json!({"type": "stdout", "message": "x"})
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(
            ControlError::Auth(OperatorAuthError::Replayed).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ControlError::Auth(OperatorAuthError::NotOwner("0x1".into())).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ControlError::NotRunning("x".into()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ControlError::NotImplemented("erase").status(),
            StatusCode::NOT_IMPLEMENTED
        );
    }

    #[tokio::test]
    async fn the_tail_starts_at_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        assert_eq!(tail(&path).await.unwrap(), "", "no console yet");
        let mut text = "x".repeat(100);
        text.push('\n');
        text.push_str(&"line\n".repeat((MAX_LOG_BYTES / 5) as usize));
        std::fs::write(&path, &text).unwrap();
        let read = tail(&path).await.unwrap();
        assert!(read.starts_with("line\n"));
        assert!(read.len() as u64 <= MAX_LOG_BYTES);
    }

    #[tokio::test]
    async fn a_console_is_followed_line_by_line_from_its_recent_end() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "old line cut here\nboot 1\nboot 2\npartial").unwrap();
        // A backlog that starts inside the first line drops that line.
        let mut follower = ConsoleFollower::new(path.clone(), 22);
        assert_eq!(follower.new_lines().await, ["boot 1", "boot 2"]);
        assert!(follower.new_lines().await.is_empty());
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b" done\nlogin: \n").unwrap();
        assert_eq!(follower.new_lines().await, ["partial done", "login: "]);
        // A new VM start truncates the file: read again from the start.
        std::fs::write(&path, "again\n").unwrap();
        assert_eq!(follower.new_lines().await, ["again"]);
    }
}
