//! One HTTP/2 session over the VM's channel socket, replaced when it drops.
//!
//! The socket carries the guest's bytes as they are; the agent serves HTTP/2 with prior
//! knowledge on it, one session per host connection. Requests are multiplexed as
//! streams of the current session. When the session ends (the VM restarted its agent,
//! QEMU reopened the chardev, or this supervisor is a new one), the next request opens
//! a new session.

use super::{ChannelError, RequestBody};
use crate::hypervisor::ChannelEndpoint;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

pub(super) struct Sessions {
    endpoint: ChannelEndpoint,
    /// The current session and its generation, so that many requests failing on the
    /// same dead session replace it once, not once each.
    current: Mutex<Option<(u64, SendRequest<RequestBody>)>>,
    opened: AtomicU64,
}

impl Sessions {
    pub fn new(endpoint: ChannelEndpoint) -> Self {
        Self {
            endpoint,
            current: Mutex::new(None),
            opened: AtomicU64::new(0),
        }
    }

    pub fn endpoint(&self) -> &ChannelEndpoint {
        &self.endpoint
    }

    /// A sender on a live session, opening one when there is none.
    pub async fn get(&self) -> Result<(u64, SendRequest<RequestBody>), ChannelError> {
        let mut current = self.current.lock().await;
        if let Some((generation, sender)) = current.as_ref()
            && !sender.is_closed()
        {
            return Ok((*generation, sender.clone()));
        }
        let generation = self.opened.fetch_add(1, Ordering::Relaxed);
        let sender = self.open().await?;
        *current = Some((generation, sender.clone()));
        Ok((generation, sender))
    }

    /// Forgets session `generation` if it is still the current one.
    pub async fn discard(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    /// Drops the current session, whatever it is (the next request opens a new one).
    pub async fn reset(&self) {
        self.current.lock().await.take();
    }

    async fn open(&self) -> Result<SendRequest<RequestBody>, ChannelError> {
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
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .max_concurrent_reset_streams(1024)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ChannelError::Session)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("agent channel session ended: {e}");
            }
        });
        Ok(sender)
    }
}
