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
use tokio::sync::Notify;

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

/// What every host connection starts with: the HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One host session's view of the port, a non-blocking byte stream for hyper.
///
/// The port has no connection boundaries in-band. The kernel's virtio_console reports
/// the host leaving only as POLLHUP (reads then return 0 once nothing is left), and
/// a host that comes back at once can make it connected again before anyone looks: the
/// old session then simply reads the new connection's bytes. Two things mark where a
/// connection ends:
/// - the hang-up, when seen. Tokio keeps a hang-up as final (waiting after one returns
///   at once, forever), so the session ends there, neither reading what follows nor
///   writing into the next host's connection;
/// - the next connection's preface, read where a frame of this one would start. A
///   frame header never looks like it (its length would be 5 MiB, over the 16 KiB
///   frame limit), and what a client controls lies inside frames, so a request body
///   cannot fake one. A read never spans two of the port's buffers, and a new
///   connection's bytes start a new buffer, so its preface starts a read.
struct Port {
    fd: AsyncFd<OwnedFd>,
    frames: Frames,
    /// The start of this connection, read by the previous session.
    first: Vec<u8>,
    /// The start of the next connection, read by this session.
    next: Vec<u8>,
    /// This connection has ended: POLLHUP seen (its host has gone, perhaps already
    /// come back), or the next connection's preface read.
    host_left: bool,
    /// Nothing of this session's connection is left to read: a read returned 0 (no
    /// data, no host), found nothing after the hang-up, or found the next preface.
    drained: bool,
    /// Told when this connection's end is seen.
    ended: Arc<Notify>,
}

impl Port {
    fn register(port: &OwnedFd, first: Vec<u8>, ended: Arc<Notify>) -> Result<Port> {
        // SAFETY: an `OwnedFd` stays open, and is the same descriptor, for as long as
        // the `AsyncFd` that owns it.
        let fd = unsafe { AsyncFd::register(port.try_clone()?) }
            .map_err(|e| anyhow::anyhow!("registering the port: {e}"))?;
        Ok(Port {
            fd,
            frames: Frames::default(),
            first,
            next: Vec::new(),
            host_left: false,
            drained: false,
            ended,
        })
    }

    /// Takes in bytes read from the port; false when they start the next connection.
    fn take(&mut self, chunk: &[u8]) -> bool {
        if self.frames.starts_connection(chunk) {
            self.next = chunk.to_vec();
            self.end(true);
            return false;
        }
        self.frames.advance(chunk);
        true
    }

    /// The connection has ended: the host left (`drained`: and all it sent is read),
    /// or the next one began.
    fn end(&mut self, drained: bool) {
        self.host_left = true;
        self.drained |= drained;
        self.ended.notify_one();
    }

    /// After the session: discards what its connection left unread, until the next
    /// connection begins or the host is gone with nothing of it left. While the host
    /// stays connected this waits, without spinning, for it to leave (a failed session
    /// cannot be resumed; the host closes it) or for its successor's preface.
    async fn discard_rest(&mut self) -> io::Result<usize> {
        let mut discarded = 0;
        let mut buf = vec![0u8; 4096];
        while !self.drained {
            let mut guard = self.fd.readable().await?;
            self.host_left |= guard.ready().is_read_closed();
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref().as_raw_fd(), &mut buf)?)) {
                Ok(Ok(0)) => self.drained = true,
                Ok(Ok(n)) => {
                    if self.take(&buf[..n]) {
                        discarded += n;
                    }
                }
                Ok(Err(e)) => return Err(e),
                // Nothing buffered and the host connected again since it left.
                Err(_would_block) => self.drained = self.host_left,
            }
        }
        Ok(discarded)
    }
}

/// Where the HTTP/2 frames of what a session has read start: after the 24-byte preface,
/// each frame is a 9-byte header, its first 3 bytes the payload's length, then the
/// payload.
struct Frames {
    /// Bytes of the preface or of the current payload still to come.
    skip: usize,
    /// Bytes of the current frame header seen so far, and its length field.
    header: usize,
    length: usize,
}

impl Default for Frames {
    fn default() -> Self {
        Frames {
            skip: PREFACE.len(),
            header: 0,
            length: 0,
        }
    }
}

impl Frames {
    /// Whether `chunk`, read next, is the start of a new connection.
    fn starts_connection(&self, chunk: &[u8]) -> bool {
        let at_frame_start = self.skip == 0 && self.header == 0;
        at_frame_start && PREFACE.starts_with(&chunk[..chunk.len().min(PREFACE.len())])
    }

    fn advance(&mut self, mut bytes: &[u8]) {
        while let Some(&byte) = bytes.first() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.header < 3 {
                self.length = self.length << 8 | usize::from(byte);
            }
            self.header += 1;
            bytes = &bytes[1..];
            if self.header == 9 {
                (self.skip, self.header, self.length) = (self.length, 0, 0);
            }
        }
    }
}

impl AsyncRead for Port {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            let chunk: Vec<u8> = self.first.drain(..n).collect();
            self.frames.advance(&chunk);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        if self.host_left || self.drained {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            if guard.ready().is_read_closed() {
                // What is still buffered is the tail of a connection nobody answers,
                // or already the next one: EOF; `discard_rest` tells them apart.
                drop(guard);
                self.end(false);
                return Poll::Ready(Ok(()));
            }
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled)?)) {
                Ok(Ok(0)) => {
                    // The host has gone, and all it sent has been read.
                    drop(guard);
                    self.end(true);
                    return Poll::Ready(Ok(()));
                }
                Ok(Ok(n)) => {
                    drop(guard);
                    // The next connection's bytes end this session, unread by it.
                    if self.take(&buf.initialize_unfilled()[..n]) {
                        buf.advance(n);
                    }
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
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.host_left || self.drained {
            // Whatever is written now would reach the next host's connection.
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            if guard.ready().is_write_closed() {
                // The host has gone: writes would wait for the next one and reach it.
                drop(guard);
                self.end(false);
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
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
    // The next connection's first bytes, when the last session already read them.
    let mut first = Vec::new();
    loop {
        // Nothing to read but EOF until a host connects, and poll() cannot wait for
        // POLLHUP to clear: check, backing off so that a VM left alone stays idle.
        let mut pause = Duration::from_millis(2);
        while first.is_empty() && !host_connected(&port) {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        let ended = Arc::new(Notify::new());
        let mut session = Port::register(&port, std::mem::take(&mut first), ended.clone())?;
        let agent = agent.clone();
        let service = hyper::service::service_fn(move |req| api::handle(agent.clone(), req));
        let connection = http.serve_connection(TokioIo::new(&mut session), service);
        // hyper ends a session only once its requests are answered, but once the
        // connection has ended their answers have nowhere to go, and the next host waits.
        let error = tokio::select! {
            biased;
            result = connection => result.err().map(|e| format!(": {e}")),
            () = ended.notified() => None,
        };
        let seen = if !session.next.is_empty() {
            " (the next host connected)"
        } else if session.host_left {
            " (the host hung up)"
        } else {
            ""
        };
        syslog!("host session ended{}{seen}", error.unwrap_or_default());
        // A new session must start at the next host connection's first byte, not in
        // the middle of what the last one left.
        let discarded = session.discard_rest().await?;
        if discarded > 0 {
            syslog!("discarded {discarded} bytes the previous host left unread");
        }
        first = std::mem::take(&mut session.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, 0, 0, 0, 0, 1]);
        f.extend(payload);
        f
    }

    #[test]
    fn a_preface_starts_a_connection_only_where_a_frame_would_start() {
        // A request body full of prefaces, read in pieces of any size.
        let body = PREFACE.repeat(100);
        let stream = [
            PREFACE,
            &frame(1, b"headers"),
            &frame(0, &body),
            &frame(0, &[]),
        ]
        .concat();
        for size in 1..=64 {
            let mut frames = Frames::default();
            for piece in stream.chunks(size) {
                assert!(!frames.starts_connection(piece), "pieces of {size}");
                frames.advance(piece);
            }
            // The next connection, whole or its first bytes only.
            assert!(frames.starts_connection(&[PREFACE, &frame(4, &[])].concat()));
            assert!(frames.starts_connection(b"PRI * HT"));
        }
        // Mid-header or mid-payload, the same bytes are data.
        let mut frames = Frames::default();
        frames.advance(PREFACE);
        frames.advance(&frame(0, &body)[..4]);
        assert!(!frames.starts_connection(PREFACE));
        frames.advance(&frame(0, &body)[4..20]);
        assert!(!frames.starts_connection(PREFACE));
    }
}
