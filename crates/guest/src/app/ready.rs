//! Knowing when the app accepts connections, with as few wakeups as possible: under
//! TCG every switch between the agent and the app costs the app (the emulated TLB is
//! flushed), so a tight probe loop measurably slows a Python start. A Unix socket is
//! watched with inotify (uvicorn binds it once its lifespan startup is done); a TCP
//! port is probed with a backoff.

use super::Listen;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::wait::WaitStatus;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

pub enum Ready {
    Listening,
    Exited(WaitStatus),
    TimedOut,
}

type Exit = watch::Receiver<Option<WaitStatus>>;

pub async fn wait(listen: &Listen, exit: &mut Exit, deadline: Instant) -> Ready {
    match listen {
        Listen::Unix(path) => wait_unix(path, exit, deadline).await,
        Listen::Tcp(addr) => wait_tcp(*addr, exit, deadline).await,
    }
}

struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn watch_dir(dir: &Path) -> io::Result<AsyncFd<Watch>> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)?;
    // SAFETY: the inotify descriptor is owned by `Watch` and stays open, unchanged, for
    // as long as the `AsyncFd` holding it.
    unsafe { AsyncFd::register(Watch(inotify)) }.map_err(|e| io::Error::other(e.to_string()))
}

/// Waits until something is created in the watched folder (events are drained).
async fn created(watch: &AsyncFd<Watch>) {
    loop {
        let Ok(mut guard) = watch.readable().await else {
            return;
        };
        match guard.try_io(|w| {
            w.get_ref()
                .0
                .read_events()
                .map_err(|e| io::Error::from_raw_os_error(e as i32))
        }) {
            Ok(_) => return,
            Err(_would_block) => continue,
        }
    }
}

async fn wait_unix(path: &Path, exit: &mut Exit, deadline: Instant) -> Ready {
    // Watch first, then look: a socket created in between is not missed.
    let watch = path.parent().and_then(|dir| watch_dir(dir).ok());
    loop {
        if let Some(status) = *exit.borrow_and_update() {
            return Ready::Exited(status);
        }
        if path.exists() {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Ready::Listening;
            }
            // Bound but not listening yet: a matter of moments.
            tokio::select! {
                _ = sleep(Duration::from_millis(2)) => {}
                _ = sleep_until(deadline) => return Ready::TimedOut,
            }
            continue;
        }
        tokio::select! {
            _ = exit.changed() => {}
            _ = sleep_until(deadline) => return Ready::TimedOut,
            _ = async {
                match &watch {
                    Some(watch) => created(watch).await,
                    None => sleep(Duration::from_millis(20)).await,
                }
            } => {}
        }
    }
}

async fn wait_tcp(addr: SocketAddr, exit: &mut Exit, deadline: Instant) -> Ready {
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(status) = *exit.borrow_and_update() {
            return Ready::Exited(status);
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ready::Listening;
        }
        tokio::select! {
            _ = exit.changed() => {}
            _ = sleep_until(deadline) => return Ready::TimedOut,
            _ = sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_a_socket_appear_and_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let (_tx, mut exit) = watch::channel(None);
        let listen = Listen::Unix(path.clone());
        let late = path.clone();
        let binder = tokio::spawn(async move {
            sleep(Duration::from_millis(100)).await;
            tokio::net::UnixListener::bind(late).unwrap()
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(matches!(
            wait(&listen, &mut exit, deadline).await,
            Ready::Listening
        ));
        drop(binder.await.unwrap());

        let listen = Listen::Unix(dir.path().join("never.sock"));
        let deadline = Instant::now() + Duration::from_millis(100);
        assert!(matches!(
            wait(&listen, &mut exit, deadline).await,
            Ready::TimedOut
        ));
    }

    #[tokio::test]
    async fn an_exit_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut exit) = watch::channel(None);
        let listen = Listen::Unix(dir.path().join("app.sock"));
        tokio::spawn(async move {
            sleep(Duration::from_millis(50)).await;
            tx.send_replace(Some(WaitStatus::Exited(nix::unistd::Pid::from_raw(7), 1)));
            sleep(Duration::from_secs(5)).await;
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(matches!(
            wait(&listen, &mut exit, deadline).await,
            Ready::Exited(_)
        ));
    }
}
