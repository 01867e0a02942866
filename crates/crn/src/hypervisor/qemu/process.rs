//! The QEMU process seen from outside: pidfile, liveness, signals.
//!
//! The process is not necessarily our child (it may have been started by an earlier
//! supervisor), so exit is watched with a pidfd rather than `waitpid`, and a zombie
//! counts as gone: nobody may be reaping it.

use crate::hypervisor::VmError;
use nix::libc;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// Reads QEMU's `-pidfile`.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => match stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
        {
            Some(state) => state != "Z" && state != "X",
            None => false,
        },
        Err(_) => false,
    }
}

/// The process's command line arguments, to tell our QEMU from a recycled pid.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn kill(pid: u32) -> Result<(), VmError> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    if rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(VmError::io(format!("killing {pid}"))(
            std::io::Error::last_os_error(),
        ))
    }
}

/// Waits until `pid` exits (or is a zombie), up to `timeout`; true when it did.
pub async fn wait_exit(pid: u32, timeout: Duration) -> bool {
    if !alive(pid) {
        return true;
    }
    if timeout.is_zero() {
        return false;
    }
    match pidfd(pid) {
        // A pidfd turns readable when the process exits, child of ours or not.
        // SAFETY: the pidfd is ours alone and lives as long as the AsyncFd that owns it.
        Some(fd) => match unsafe { AsyncFd::register(fd) } {
            Ok(fd) => {
                let _ = tokio::time::timeout(timeout, fd.readable()).await;
                !alive(pid)
            }
            Err(_) => poll_exit(pid, timeout).await,
        },
        None => poll_exit(pid, timeout).await,
    }
}

async fn poll_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid)
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_a_child_exit_and_a_zombie_as_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(alive(pid));
        assert!(!wait_exit(pid, Duration::from_millis(50)).await);
        kill(pid).unwrap();
        // Not reaped yet: a zombie, which must count as gone.
        assert!(wait_exit(pid, Duration::from_secs(5)).await);
        child.wait().unwrap();
    }
}
