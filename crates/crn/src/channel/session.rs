//! One HTTP/2 session over the VM's channel socket, replaced when it drops.
//!
//! The socket carries the guest's bytes as they are; the agent serves HTTP/2 with prior
//! knowledge on it, one session per host connection. Requests are multiplexed as
//! streams of the current session. When the session ends (the VM restarted its agent,
//! QEMU reopened the chardev, or this supervisor is a new one), the next request opens
//! a new session. QEMU's chardev serves one client at a time, so a new session is opened
//! only once the previous one is closed.

use super::{ChannelError, RequestBody};
use crate::hypervisor::ChannelEndpoint;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub(super) struct Sessions {
    endpoint: ChannelEndpoint,
    /// The current session and its generation, so that many requests failing on the
    /// same dead session replace it once, not once each.
    current: Mutex<Option<Session>>,
    opened: AtomicU64,
    /// When a session last failed or was dropped: the next one waits [`RESYNC_PAUSE`]
    /// after it, so the agent sees the host leave before the new session's bytes arrive.
    ended_at: std::sync::Mutex<Option<Instant>>,
}

struct Session {
    generation: u64,
    sender: SendRequest<RequestBody>,
    /// The task driving the connection; it ends once the socket is closed.
    driver: JoinHandle<()>,
}

/// How long the host stays away between a failed session and the next one. The agent
/// ends a session at the next connection's preface or at a hang-up that lasts, and
/// discards what a failed session left unread; answers it writes in the moment the
/// host is gone would reach a host that came back at once, so the host comes back
/// after a pause.
pub const RESYNC_PAUSE: Duration = Duration::from_millis(500);

impl Sessions {
    pub fn new(endpoint: ChannelEndpoint) -> Self {
        Self {
            endpoint,
            current: Mutex::new(None),
            opened: AtomicU64::new(0),
            ended_at: std::sync::Mutex::new(None),
        }
    }

    pub fn endpoint(&self) -> &ChannelEndpoint {
        &self.endpoint
    }

    /// A sender on a live session, opening one when there is none.
    pub async fn get(&self) -> Result<(u64, SendRequest<RequestBody>), ChannelError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref()
            && !session.sender.is_closed()
        {
            return Ok((session.generation, session.sender.clone()));
        }
        let ended_at = *self.ended_at.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ended_at) = ended_at {
            tokio::time::sleep_until((ended_at + RESYNC_PAUSE).into()).await;
        }
        let generation = self.opened.fetch_add(1, Ordering::Relaxed);
        let (sender, driver) = self.open().await?;
        *current = Some(Session {
            generation,
            sender: sender.clone(),
            driver,
        });
        Ok((generation, sender))
    }

    /// Forgets session `generation` if it is still the current one.
    pub async fn discard(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|s| s.generation == generation) {
            *self.ended_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            *current = None;
        }
    }

    /// Drops the current session, whatever it is (the next request opens a new one,
    /// after [`RESYNC_PAUSE`]: the agent answers the GOAWAY this sends, and the answer
    /// must not reach the next session). Waits (briefly) until its socket is closed, so
    /// that a caller who then hands the VM over knows the agent can see the host leave.
    pub async fn reset(&self) {
        let session = self.current.lock().await.take();
        if let Some(Session { sender, driver, .. }) = session {
            *self.ended_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            drop(sender);
            // Requests still in flight hold the connection open; do not wait for them.
            let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
        }
    }

    async fn open(&self) -> Result<(SendRequest<RequestBody>, JoinHandle<()>), ChannelError> {
        let socket = self.endpoint.socket();
        let connect_error = |source: std::io::Error| ChannelError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        let mut stream = UnixStream::connect(socket).await.map_err(connect_error)?;
        if let ChannelEndpoint::VsockMux { port, .. } = &self.endpoint {
            // Firecracker's host-initiated vsock: ask the multiplexer for the guest port.
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .await
                .map_err(connect_error)?;
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).await.map_err(connect_error)?;
            if !line.starts_with("OK ") {
                return Err(ChannelError::Protocol(format!(
                    "the vsock multiplexer refused port {port}: {}",
                    line.trim()
                )));
            }
            stream = reader.into_inner();
        }
        // Fixed windows (hyper's defaults: 2 MiB per stream, 5 MiB in all), not an
        // adaptive one: that measures the link with PING frames, each one more
        // virtio-serial message for the guest to answer.
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .max_concurrent_reset_streams(1024)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ChannelError::Session)?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("agent channel session ended: {e}");
            }
        });
        Ok((sender, driver))
    }
}
