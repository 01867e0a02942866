//! The app's output and the agent's own messages, as [`LogLine`]s: a bounded buffer of
//! recent lines for a host that connects late, and a broadcast for live followers.

use aleph_protocol::agent::{LogLine, LogStream};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;

/// Lines kept for a host that asks after the fact.
const RECENT_LINES: usize = 1000;
/// Live lines a slow follower may lag behind before it skips some.
const FOLLOW_BACKLOG: usize = 1024;
/// A line longer than this is cut, so one runaway write cannot eat the guest's memory.
const MAX_LINE: usize = 16 * 1024;

pub struct Logs {
    recent: Mutex<VecDeque<LogLine>>,
    live: broadcast::Sender<LogLine>,
}

static LOGS: OnceLock<Logs> = OnceLock::new();

pub fn logs() -> &'static Logs {
    LOGS.get_or_init(|| Logs {
        recent: Mutex::new(VecDeque::with_capacity(RECENT_LINES)),
        live: broadcast::channel(FOLLOW_BACKLOG).0,
    })
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

impl Logs {
    pub fn push(&self, stream: LogStream, mut message: String) {
        if message.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let line = LogLine {
            stream,
            message,
            time: now(),
        };
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_LINES {
                recent.pop_front();
            }
            recent.push_back(line.clone());
        }
        // No follower is not an error.
        let _ = self.live.send(line);
    }

    /// The recent lines, and a receiver for what comes after them (taken under the
    /// same lock, so no line is lost or doubled in between).
    pub fn follow(&self) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        (recent.iter().cloned().collect(), self.live.subscribe())
    }
}

/// The agent's own message: to the console (the VM's serial log) and to the host.
pub fn system(message: String) {
    let uptime = crate::uptime_seconds();
    let _ = writeln!(std::io::stderr(), "[{uptime:9.3}] aleph-guest: {message}");
    logs().push(LogStream::System, message);
}

/// Reads the app's output line by line into the logs, and into `capture` (the tail of
/// the output kept to explain a failed start).
pub async fn pump<R: AsyncRead + Unpin>(reader: R, stream: LogStream, capture: &Mutex<Capture>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches(['\n', '\r']).to_owned();
                capture
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(&text);
                logs().push(stream, text);
            }
        }
    }
}

/// The last bytes of the app's output, both streams interleaved as they came.
#[derive(Default)]
pub struct Capture {
    text: String,
}

const CAPTURE_LIMIT: usize = 64 * 1024;

impl Capture {
    fn push(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() > CAPTURE_LIMIT {
            let mut cut = self.text.len() - CAPTURE_LIMIT;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
        }
    }

    pub fn text(&self) -> String {
        self.text.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_the_tail() {
        let mut c = Capture::default();
        for i in 0..10_000 {
            c.push(&format!("line {i}"));
        }
        assert!(c.text().len() <= CAPTURE_LIMIT);
        assert!(c.text().ends_with("line 9999\n"));
    }

    #[tokio::test]
    async fn follow_sees_recent_then_live() {
        let logs = Logs {
            recent: Mutex::new(VecDeque::new()),
            live: broadcast::channel(8).0,
        };
        logs.push(LogStream::Stdout, "one".into());
        let (recent, mut live) = logs.follow();
        logs.push(LogStream::Stderr, "two".into());
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].message, "one");
        let next = live.recv().await.unwrap();
        assert_eq!(
            (next.stream, next.message.as_str()),
            (LogStream::Stderr, "two")
        );
    }
}
