//! The program's process: started from the configuration, watched until it accepts
//! connections, its output turned into log lines, stopped on shutdown.
//!
//! The agent is PID 1, so it reaps every orphan; it therefore spawns the app with std
//! (not tokio's `Child`, which would race the reaper for the app's exit status) and
//! learns of the app's exit from [`App::reap`].

pub mod asgi;
pub mod binary;
pub mod logs;
mod ready;

use crate::paths::CODE_DIR;
use crate::syslog;
use aleph_protocol::agent::{AppState, LogStream};
use logs::Capture;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Where the app accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug, Clone)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    pub listen: Listen,
}

/// A start that did not end with the app accepting connections.
#[derive(Debug)]
pub struct StartError {
    pub error: String,
    /// What the app wrote before failing (a Python traceback, typically).
    pub output: String,
}

pub struct App {
    state: Mutex<AppState>,
    listen: Mutex<Option<Listen>>,
    /// The app's process group leader, held locked while spawning so that the reaper
    /// waits until the spawn is over.
    pid: Mutex<Option<Pid>>,
    /// The app's exit status (`None` while it runs or before it started).
    exit: watch::Sender<Option<WaitStatus>>,
}

impl Default for App {
    fn default() -> Self {
        Self {
            state: Mutex::new(AppState::Waiting),
            listen: Mutex::new(None),
            pid: Mutex::new(None),
            exit: watch::channel(None).0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("the app exited with status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("the app was killed by {signal}"),
        other => format!("the app stopped: {other:?}"),
    }
}

impl App {
    pub fn state(&self) -> AppState {
        *lock(&self.state)
    }

    /// Where requests go, once the app runs.
    pub fn listen(&self) -> Option<Listen> {
        match self.state() {
            AppState::Running => lock(&self.listen).clone(),
            _ => None,
        }
    }

    /// Claims the app for a start; false when one was already asked for.
    pub fn claim(&self) -> bool {
        let mut state = lock(&self.state);
        if *state != AppState::Waiting {
            return false;
        }
        *state = AppState::Starting;
        true
    }

    pub fn fail(&self) {
        *lock(&self.state) = AppState::Failed;
    }

    /// Starts the app and waits until it accepts connections, exits, or `timeout` passes.
    pub async fn start(
        &self,
        launch: Launch,
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<(), StartError> {
        let capture = Arc::new(Mutex::new(Capture::default()));
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .current_dir(CODE_DIR)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so stopping it also stops whatever it forked.
            .process_group(0);
        // SAFETY: `default_policy` only makes a system call, which is allowed between
        // fork and exec.
        unsafe {
            command.pre_exec(crate::sched::default_policy);
        }
        if let Listen::Unix(path) = &launch.listen {
            let _ = std::fs::remove_file(path);
        }
        *lock(&self.listen) = Some(launch.listen.clone());

        let mut pumps = Vec::new();
        {
            let mut pid = lock(&self.pid);
            let mut child = command.spawn().map_err(|e| {
                self.fail();
                StartError {
                    error: format!("cannot start {}: {e}", launch.program),
                    output: String::new(),
                }
            })?;
            *pid = Some(Pid::from_raw(child.id() as i32));
            for (stream, kind) in [
                (
                    child.stdout.take().map(std::os::fd::OwnedFd::from),
                    LogStream::Stdout,
                ),
                (
                    child.stderr.take().map(std::os::fd::OwnedFd::from),
                    LogStream::Stderr,
                ),
            ] {
                let Some(fd) = stream else { continue };
                let Ok(reader) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
                    continue;
                };
                let capture = capture.clone();
                pumps.push(tokio::spawn(async move {
                    logs::pump(reader, kind, &capture).await
                }));
            }
        }

        let deadline = tokio::time::Instant::now() + timeout;
        let mut exit = self.exit.subscribe();
        let error = match ready::wait(&launch.listen, &mut exit, deadline).await {
            ready::Ready::Listening => {
                *lock(&self.state) = AppState::Running;
                return Ok(());
            }
            ready::Ready::Exited(status) => describe(&status),
            ready::Ready::TimedOut => {
                self.signal(Signal::SIGKILL);
                format!("the app did not accept connections within {timeout:?}")
            }
        };
        self.fail();
        // The output may still be in the pipes: let the pumps drain them, briefly (an
        // orphan that keeps the pipe open must not hold the answer back).
        let _ =
            tokio::time::timeout(Duration::from_secs(1), futures::future::join_all(pumps)).await;
        let output = lock(&capture).text();
        Err(StartError { error, output })
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = *lock(&self.pid)
            && self.exit.borrow().is_none()
        {
            let _ = killpg(pid, signal);
        }
    }

    /// Asks the app to stop, then kills it after `grace`.
    pub async fn stop(&self, grace: Duration) {
        if lock(&self.pid).is_none() {
            return;
        }
        let mut exit = self.exit.subscribe();
        self.signal(Signal::SIGTERM);
        let exited = tokio::time::timeout(grace, exit.wait_for(Option::is_some))
            .await
            .is_ok();
        if !exited {
            self.signal(Signal::SIGKILL);
            let _ =
                tokio::time::timeout(Duration::from_secs(1), exit.wait_for(Option::is_some)).await;
        }
    }

    /// Reaps every exited child (PID 1 inherits all orphans); records the app's exit.
    /// Holds the pid lock throughout, so it never reaps while [`App::start`] spawns
    /// (std may wait for a child whose exec failed, and must find it unreaped).
    pub fn reap(&self) {
        let app = lock(&self.pid);
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid().is_some() && status.pid() == *app {
                        let mut state = lock(&self.state);
                        if *state == AppState::Running {
                            *state = AppState::Exited;
                            syslog!("{}", describe(&status));
                        }
                        drop(state);
                        self.exit.send_replace(Some(status));
                    }
                }
            }
        }
    }
}

/// Reaps children whenever one exits, for as long as the agent lives.
pub async fn reaper(app: Arc<App>) {
    let Ok(mut sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
    else {
        syslog!("cannot watch SIGCHLD; children will not be reaped");
        return;
    };
    loop {
        app.reap();
        sigchld.recv().await;
    }
}

/// The app's environment: a sane base, then the program's own variables on top.
pub fn environment(variables: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        // print() must reach the logs as it happens, not when a buffer fills.
        ("PYTHONUNBUFFERED", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.extend(variables.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_override_the_base_environment() {
        let vars = BTreeMap::from([
            ("PATH".to_owned(), "/x".to_owned()),
            ("A".to_owned(), "1".to_owned()),
        ]);
        let env = environment(&vars);
        assert_eq!(env["PATH"], "/x");
        assert_eq!(env["A"], "1");
        assert_eq!(env["PYTHONUNBUFFERED"], "1");
    }

    #[test]
    fn only_one_start_is_claimed() {
        let app = App::default();
        assert!(app.claim());
        assert!(!app.claim());
        assert_eq!(app.state(), AppState::Starting);
    }
}
