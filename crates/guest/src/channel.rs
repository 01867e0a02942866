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
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Sleep;

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

/// How long the port may report the host gone, with nothing left to read, before the
/// session takes it as a hang-up. A hang-up can be stale: the kernel takes the host's
/// data at once but its connect and disconnect notices later, from a work queue, so a
/// session that a reconnection began can still see the previous host's hang-up.
const HANG_UP_SETTLE: Duration = Duration::from_millis(500);

/// How long, after a hang-up, a host that is connected again may send nothing before
/// the session takes the hang-up as stale and goes on. A host that came back sends its
/// preface at once; until something comes, this session's writes wait, since they would
/// reach a new host's connection ahead of the agent's own preface.
const HOST_BACK_HOLD: Duration = Duration::from_millis(200);

/// The most one read from the port takes.
const READ_CHUNK: usize = 16 << 10;

/// A hang-up being settled.
struct HangUp {
    /// Since when the port has said what it says now (host gone, or host back).
    since: Instant,
    /// A host is connected again (reads block) and has sent nothing yet.
    host_back: bool,
    /// When to look again.
    recheck: Pin<Box<Sleep>>,
}

/// One host session's view of the port, a non-blocking byte stream for hyper.
///
/// The port has no connection boundaries in-band, and its hang-up notice (POLLHUP) is
/// late and loose: the kernel's virtio_console applies connects and disconnects from a
/// work queue while data lands at once, so the next host's bytes can arrive before the
/// previous host's hang-up shows, and a hang-up can still show after the next host's
/// first bytes were read. A read tells the truth about now: data if any is buffered,
/// else 0 while no host is connected and EAGAIN while one is. The session therefore
/// ends at:
/// - the next connection's preface, read where a frame of this one would start, or at
///   the start of the first read after a hang-up was seen. A frame header never looks
///   like it (its length would be 5 MiB, over the 16 KiB frame limit), and what a
///   client controls lies inside frames, so a request body cannot fake one at a frame
///   start. A read never spans two of the port's buffers, and a new connection's bytes
///   start a new buffer, so its preface starts a read;
/// - a hang-up that lasts: reads find nothing and no host for [`HANG_UP_SETTLE`]. While
///   a hang-up settles, writes wait: they would reach the next host's connection. A host
///   back after a hang-up either sends a preface (a new connection) or something else
///   (the hang-up was stale: the same connection goes on), or nothing for
///   [`HOST_BACK_HOLD`] (taken as stale too).
///
/// Tokio keeps a hang-up as final on a registration (waiting after one returns at once,
/// forever), so the port is registered afresh once a hang-up has cleared.
struct Port {
    fd: AsyncFd<OwnedFd>,
    frames: Frames,
    /// Bytes of this connection read from the port, not yet handed to hyper.
    pending: Vec<u8>,
    /// The start of the next connection, read by this session.
    next: Vec<u8>,
    /// A hang-up was seen and is not settled yet.
    hang_up: Option<HangUp>,
    /// A hang-up was seen and has cleared: the next read may start a new connection
    /// wherever this one's frames stand.
    after_hang_up: bool,
    /// This connection has ended, its bytes all read: a lasting hang-up, or the next
    /// connection's preface.
    ended: bool,
    /// Told when this connection's end is seen.
    on_end: Arc<Notify>,
    /// Where reads from the port land: allocated once, since zeroing a fresh buffer on
    /// every read is work the guest's one vCPU does per request under emulation.
    scratch: Box<[u8]>,
}

impl Port {
    fn register(port: &OwnedFd, first: Vec<u8>, on_end: Arc<Notify>) -> Result<Port> {
        let mut frames = Frames::default();
        frames.advance(&first);
        Ok(Port {
            fd: register(port)?,
            frames,
            pending: first,
            next: Vec::new(),
            hang_up: None,
            after_hang_up: false,
            ended: false,
            on_end,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        })
    }

    /// Takes in bytes read from the port: this connection's, or the next one's start.
    fn take(&mut self, chunk: &[u8]) {
        let new_connection = if std::mem::take(&mut self.after_hang_up) {
            // Anywhere in a frame: the whole preface, not a prefix a body could hold.
            chunk.starts_with(PREFACE)
        } else {
            self.frames.starts_connection(chunk)
        };
        if new_connection {
            self.next = chunk.to_vec();
            self.end();
        } else {
            self.frames.advance(chunk);
            self.pending.extend_from_slice(chunk);
        }
    }

    /// The port reports no host: settle whether it has left.
    fn hung_up(&mut self) {
        self.hang_up = Some(HangUp {
            since: Instant::now(),
            host_back: false,
            recheck: Box::pin(tokio::time::sleep(Duration::ZERO)),
        });
    }

    /// The hang-up was stale: this connection goes on, on a fresh registration.
    fn resume(&mut self) -> io::Result<()> {
        self.hang_up = None;
        self.fd = register(self.fd.get_ref()).map_err(io::Error::other)?;
        Ok(())
    }

    fn end(&mut self) {
        self.ended = true;
        self.hang_up = None;
        self.on_end.notify_one();
    }

    /// Reads what the port has next into `pending`, ends the connection, or settles a
    /// hang-up as stale; pending while a hang-up settles or nothing has come.
    fn poll_fill(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let mut buf = std::mem::take(&mut self.scratch);
        let filled = self.poll_fill_into(cx, &mut buf);
        self.scratch = buf;
        filled
    }

    fn poll_fill_into(&mut self, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<io::Result<()>> {
        loop {
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            if let Some(hang_up) = &mut self.hang_up {
                let read = nix::unistd::read(self.fd.get_ref().as_raw_fd(), buf);
                match read {
                    // The tail of this connection, or the next one's start.
                    Ok(n) if n > 0 => {
                        let host_back = hang_up.host_back;
                        self.after_hang_up = true;
                        self.take(&buf[..n]);
                        if host_back && !self.ended {
                            // Sent by a host that is back, and no preface: the same
                            // connection, whose hang-up was stale.
                            self.resume()?;
                        }
                        return Poll::Ready(Ok(()));
                    }
                    // No host, nothing buffered.
                    Ok(_) => {
                        if std::mem::take(&mut hang_up.host_back) {
                            hang_up.since = Instant::now();
                        }
                        if hang_up.since.elapsed() >= HANG_UP_SETTLE {
                            self.end();
                            return Poll::Ready(Ok(()));
                        }
                    }
                    // A host is connected, nothing buffered.
                    Err(nix::errno::Errno::EAGAIN) => {
                        if !hang_up.host_back {
                            hang_up.host_back = true;
                            hang_up.since = Instant::now();
                        }
                        if hang_up.since.elapsed() >= HOST_BACK_HOLD {
                            // Stale, or a new host slow to start: its preface is still
                            // recognised at the start of the next read. Settled: a
                            // write waiting on it goes on now (the host may be waiting
                            // for that answer, with nothing more to send).
                            self.after_hang_up = true;
                            self.resume()?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
                // Look again shortly.
                ready!(hang_up.recheck.as_mut().poll(cx));
                let at = tokio::time::Instant::now() + Duration::from_millis(5);
                hang_up.recheck.as_mut().reset(at);
                continue;
            }
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            if guard.ready().is_read_closed() {
                drop(guard);
                self.hung_up();
                continue;
            }
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref().as_raw_fd(), buf)?)) {
                Ok(Ok(0)) => {
                    drop(guard);
                    self.hung_up();
                }
                Ok(Ok(n)) => {
                    drop(guard);
                    self.take(&buf[..n]);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }

    /// After the session: discards what its connection left unread, until the next
    /// connection begins or the host is gone with nothing of it left. While the host
    /// stays connected this waits, without spinning, for it to leave (a failed session
    /// cannot be resumed; the host closes it) or for its successor's preface.
    async fn discard_rest(&mut self) -> io::Result<usize> {
        let mut discarded = 0;
        loop {
            discarded += std::mem::take(&mut self.pending).len();
            if self.ended {
                return Ok(discarded);
            }
            std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
        }
    }
}

/// Registers a descriptor of the port with tokio, afresh.
fn register(port: &OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` stays open, and is the same descriptor, for as long as
    // the `AsyncFd` that owns it.
    unsafe { AsyncFd::register(port.try_clone()?) }
        .map_err(|e| anyhow::anyhow!("registering the port: {e}"))
}

/// Whether `chunk` is the preface or its start.
fn starts_with_preface(chunk: &[u8]) -> bool {
    !chunk.is_empty() && PREFACE.starts_with(&chunk[..chunk.len().min(PREFACE.len())])
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
        self.skip == 0 && self.header == 0 && starts_with_preface(chunk)
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
        while self.pending.is_empty() && !self.ended {
            ready!(self.poll_fill(cx))?;
        }
        // Empty once ended: EOF.
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            // Whatever is written during a hang-up, or after, would reach the next
            // host's connection.
            let unread = self.pending.len();
            while self.hang_up.is_some() && !self.ended {
                ready!(self.poll_fill(cx))?;
            }
            if self.pending.len() > unread {
                // Read here, not where hyper waits for it: have the reader look again.
                cx.waker().wake_by_ref();
            }
            if self.ended {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            if guard.ready().is_write_closed() {
                drop(guard);
                self.hung_up();
                continue;
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
    // Fixed windows, large enough for the local link: an adaptive window measures the
    // link with PING frames, each one more virtio-serial message for both ends.
    http.max_concurrent_streams(1024)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
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
        } else if session.ended {
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
