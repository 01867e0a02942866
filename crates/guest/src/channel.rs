//! The guest end of the host channel: the virtio-serial port named
//! [`AGENT_PORT_NAME`], served as HTTP/2 with prior knowledge, one session per host
//! connection, for as long as the VM lives.

use crate::api::{self, Agent};
use crate::syslog;
use aleph_protocol::agent::AGENT_PORT_NAME;
use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The port's device node. Without udev there is no `/dev/virtio-ports/<name>` link, so
/// look the name up in sysfs; the port shows up asynchronously once the host's
/// virtio-serial device has announced it.
pub async fn find_port() -> PathBuf {
    let by_name = Path::new("/dev/virtio-ports").join(AGENT_PORT_NAME);
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(2);
    let mut warned = false;
    loop {
        if by_name.exists() {
            return by_name;
        }
        if let Some(path) = port_from_sysfs(Path::new("/sys/class/virtio-ports")) {
            return path;
        }
        // Normally there within milliseconds; a VM without the port must not spin.
        tokio::time::sleep(pause).await;
        pause = if started.elapsed() < Duration::from_secs(2) {
            (pause * 2).min(Duration::from_millis(10))
        } else {
            Duration::from_millis(100)
        };
        if !warned && started.elapsed() > Duration::from_secs(10) {
            warned = true;
            syslog!("still waiting for the {AGENT_PORT_NAME} port");
        }
    }
}

fn port_from_sysfs(class: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(class).ok()?.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim_end() == AGENT_PORT_NAME {
            let dev = Path::new("/dev").join(entry.file_name());
            // devtmpfs creates the node a moment after sysfs shows the port.
            if dev.exists() {
                return Some(dev);
            }
        }
    }
    None
}

/// The port as a non-blocking byte stream for hyper.
struct Port(AsyncFd<OwnedFd>);

impl AsyncRead for Port {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(nix::unistd::write(fd.get_ref(), data)?)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Whether a host is connected: the port reports POLLHUP while nobody holds the host end.
fn host_connected(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => !fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        Err(_) => false,
    }
}

pub async fn serve(path: &Path, agent: Arc<Agent>) -> Result<()> {
    let port: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .into();
    syslog!("serving the host on {}", path.display());
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http.max_concurrent_streams(1024)
        .adaptive_window(true)
        .max_send_buf_size(1 << 20);
    loop {
        // Nothing to read but EOF until a host connects, and poll() cannot wait for
        // POLLHUP to clear: check, backing off so that a VM left alone stays idle.
        let mut pause = Duration::from_millis(2);
        while !host_connected(&port) {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        // SAFETY: an `OwnedFd` stays open, and is the same descriptor, for as long as
        // the `AsyncFd` that owns it.
        let session = unsafe { AsyncFd::register(port.try_clone()?) }
            .map_err(|e| anyhow::anyhow!("registering the port: {e}"))?;
        let io = TokioIo::new(Port(session));
        let agent = agent.clone();
        let service = hyper::service::service_fn(move |req| api::handle(agent.clone(), req));
        match http.serve_connection(io, service).await {
            Ok(()) => syslog!("host session ended"),
            Err(e) => syslog!("host session ended: {e}"),
        }
    }
}
