//! The agent's routes (see `aleph_protocol::agent`); everything else goes to the app.

use crate::app::{self, App, asgi, binary};
use crate::lease::{self, Lease};
use crate::paths::CODE_DIR;
use crate::{code, network, power, proxy, syslog, volumes};
use aleph_protocol::agent::{
    AGENT_ROUTE_PREFIX, AgentConfig, AgentError, CodeEncoding, CodeInterface, ConfigureReply,
    Health, LeaseReply, LeaseRequest, LogLine, LogStream,
};
use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// A configuration is small; anything larger is a mistake.
const MAX_CONFIG: usize = 1 << 20;
/// Time the app gets to stop on shutdown before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub struct Agent {
    pub app: Arc<App>,
    /// Turns true once the optional modules (network, vsock) are loaded.
    late_modules: watch::Receiver<bool>,
    config: Mutex<Option<AgentConfig>>,
    /// A persistent program's lease (see [`crate::lease`]).
    pub lease: Arc<Lease>,
}

impl Agent {
    pub fn new(app: Arc<App>, late_modules: watch::Receiver<bool>) -> Self {
        Self {
            app,
            late_modules,
            config: Mutex::new(None),
            lease: Arc::new(Lease::default()),
        }
    }
}

pub async fn handle(
    agent: Arc<Agent>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path();
    let Some(route) = path.strip_prefix(AGENT_ROUTE_PREFIX) else {
        return Ok(proxy::forward(agent.app.listen(), request).await);
    };
    let response = match (request.method(), route) {
        (&Method::POST, "configure") => configure(&agent, request).await,
        (&Method::GET, "health") => json(StatusCode::OK, &health(&agent)),
        (&Method::POST, "shutdown") => shutdown(agent.clone()),
        (&Method::GET, "logs") => logs(),
        (&Method::POST, "lease") => renew_lease(&agent, request).await,
        _ => error(StatusCode::NOT_FOUND, "no such agent route"),
    };
    Ok(response)
}

pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .unwrap_or_default()
}

pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &AgentError {
            error: message.to_owned(),
            traceback: None,
        },
    )
}

fn health(agent: &Agent) -> Health {
    Health {
        app: agent.app.state(),
        uptime_seconds: crate::uptime_seconds(),
    }
}

async fn configure(agent: &Agent, request: Request<Incoming>) -> Response<Body> {
    let received = Instant::now();
    let body = match Limited::new(request.into_body(), MAX_CONFIG)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("reading the configuration: {e}"),
            );
        }
    };
    let config: AgentConfig = match serde_json::from_slice(&body) {
        Ok(config) => config,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad configuration: {e}")),
    };
    if !agent.app.claim() {
        return error(StatusCode::CONFLICT, "already configured");
    }
    *agent.config.lock().unwrap_or_else(|e| e.into_inner()) = Some(config.clone());

    if let Err(e) = prepare(agent, &config).await {
        agent.app.fail();
        syslog!("configuration failed: {e:#}");
        return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}"));
    }
    let launch = match config.code.interface {
        CodeInterface::Asgi => asgi::launch(&config.code.entrypoint),
        CodeInterface::Binary => binary::launch(&config.code.entrypoint, &config.code.args),
    };
    let launch = match launch {
        Ok(launch) => launch,
        Err(e) => {
            agent.app.fail();
            return error(StatusCode::BAD_REQUEST, &format!("{e:#}"));
        }
    };
    let timeout = Duration::from_secs(config.startup_timeout_seconds.into());
    let env = app::environment(&config.variables);
    match agent.app.start(launch, &env, timeout).await {
        Ok(()) => {
            let startup_ms = received.elapsed().as_millis() as u64;
            syslog!("app running, {startup_ms} ms after configure");
            json(
                StatusCode::OK,
                &ConfigureReply {
                    status: "running".into(),
                    startup_ms,
                },
            )
        }
        Err(e) => {
            syslog!("app failed to start: {}", e.error);
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &AgentError {
                    error: e.error,
                    traceback: Some(e.output),
                },
            )
        }
    }
}

/// A lease is a few bytes of JSON.
const MAX_LEASE: usize = 4096;

async fn renew_lease(agent: &Agent, request: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(request.into_body(), MAX_LEASE).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the lease: {e}")),
    };
    let lease: LeaseRequest = match serde_json::from_slice(&body) {
        Ok(lease) => lease,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad lease: {e}")),
    };
    let first = agent.lease.deadline().is_none();
    let remaining_ms = agent.lease.renew(lease.milliseconds, lease::now_seconds());
    if first {
        syslog!("leased: powering off unless renewed within {remaining_ms} ms");
    }
    json(StatusCode::OK, &LeaseReply { remaining_ms })
}

/// Everything the app expects to find in place when it starts.
async fn prepare(agent: &Agent, config: &AgentConfig) -> Result<()> {
    nix::unistd::sethostname(&config.hostname).context("setting the host name")?;
    let code = config.code.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        code::install(&code)?;
        if code.interface == CodeInterface::Binary && code.encoding != CodeEncoding::Squashfs {
            make_executable(&code.entrypoint);
        }
        Ok(())
    })
    .await??;
    volumes::mount_all(&config.volumes)?;
    if let Some(net) = &config.network {
        let mut loaded = agent.late_modules.clone();
        let _ = loaded.wait_for(|done| *done).await;
        network::configure(net).await?;
        if !net.dns_servers.is_empty() {
            network::write_resolv_conf(&net.dns_servers)?;
        }
    }
    Ok(())
}

/// Archives made on other systems often lose the executable bit.
fn make_executable(entrypoint: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = std::path::Path::new(CODE_DIR).join(entrypoint);
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.is_file()
    {
        let mode = meta.permissions().mode() | 0o111;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
    }
}

fn shutdown(agent: Arc<Agent>) -> Response<Body> {
    tokio::spawn(async move {
        // Let the answer reach the host first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        power_off(&agent).await
    });
    json(
        StatusCode::OK,
        &serde_json::json!({"status": "shutting down"}),
    )
}

/// Stops the app, unmounts what the program mounted, and powers the VM off.
pub async fn power_off(agent: &Agent) -> ! {
    syslog!("shutting down");
    agent.app.stop(STOP_GRACE).await;
    let config = agent
        .config
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(config) = config {
        volumes::unmount_all(&config.volumes);
        if config.code.encoding == CodeEncoding::Squashfs {
            let _ = nix::mount::umount(CODE_DIR);
        }
    }
    power::off()
}

fn ndjson(line: &LogLine) -> Result<Frame<Bytes>, BoxError> {
    let mut bytes = serde_json::to_vec(line)?;
    bytes.push(b'\n');
    Ok(Frame::data(Bytes::from(bytes)))
}

/// The recent lines, then every new one as it comes, for as long as the host listens.
fn logs() -> Response<Body> {
    let (recent, live) = app::logs::logs().follow();
    let recent = futures::stream::iter(recent.into_iter().map(|l| ndjson(&l)));
    let live = futures::stream::unfold(live, |mut live| async move {
        let line = match live.recv().await {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(n)) => LogLine {
                stream: LogStream::System,
                message: format!("{n} log lines skipped (reader too slow)"),
                time: 0.0,
            },
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((ndjson(&line), live))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(recent.chain(live))))
        .unwrap_or_default()
}
