//! The lease of a persistent program: the host renews it while the scheduler answers its
//! heartbeats; when it is not renewed in time the VM powers itself off, so that a host
//! that died (or lost the scheduler) leaves no copy running once the program is placed
//! elsewhere.
//!
//! Time is `CLOCK_BOOTTIME`, monotonic (wall-clock changes do not move the deadline)
//! and counting a suspended guest's sleep as time passed.

use crate::{power, syslog};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// Longest sleep between two looks at the clock: a renewal wakes the watchdog anyway,
/// this only bounds the drift of a sleep against the boot-time clock.
const MAX_NAP: Duration = Duration::from_millis(500);

/// Seconds since boot on the clock the lease counts in.
pub fn now_seconds() -> f64 {
    crate::uptime_seconds()
}

#[derive(Default)]
pub struct Lease {
    /// Boot-time seconds at which the VM powers off; `None`: no lease (on-demand).
    deadline: Mutex<Option<f64>>,
    renewed: Notify,
}

impl Lease {
    /// Sets the deadline `milliseconds` after `now` (replacing the last one, even if
    /// that was later: the host's word is the newest). Returns the milliseconds left.
    pub fn renew(&self, milliseconds: u64, now: f64) -> u64 {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(now + milliseconds as f64 / 1000.0);
        self.renewed.notify_one();
        milliseconds
    }

    pub fn deadline(&self) -> Option<f64> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long until the lease lapses at `now`: `None` without a lease, zero once
    /// lapsed.
    pub fn remaining(&self, now: f64) -> Option<Duration> {
        self.deadline()
            .map(|deadline| Duration::from_secs_f64((deadline - now).max(0.0)))
    }

    /// Resolves when the lease lapses (never without one).
    pub async fn lapsed(&self) {
        loop {
            let renewed = self.renewed.notified();
            match self.remaining(now_seconds()) {
                None => renewed.await,
                Some(left) if left.is_zero() => return,
                Some(left) => {
                    tokio::select! {
                        _ = renewed => {}
                        _ = tokio::time::sleep(left.min(MAX_NAP)) => {}
                    }
                }
            }
        }
    }
}

/// Powers the VM off once the lease lapses. No graceful stop of the app: by then the
/// program may already be starting elsewhere, so it must end now.
pub async fn watchdog(lease: std::sync::Arc<Lease>) {
    lease.lapsed().await;
    syslog!("lease lapsed (not renewed by the host): powering off");
    power::off()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_counts_down_from_the_last_renewal() {
        let lease = Lease::default();
        assert_eq!(lease.remaining(10.0), None, "no lease, no deadline");
        assert_eq!(lease.renew(6000, 10.0), 6000);
        assert_eq!(lease.remaining(10.0), Some(Duration::from_secs(6)));
        assert_eq!(lease.remaining(15.5), Some(Duration::from_millis(500)));
        assert_eq!(lease.remaining(17.0), Some(Duration::ZERO));
        // A renewal replaces the deadline, even with a shorter one.
        lease.renew(1000, 15.0);
        assert_eq!(lease.remaining(15.0), Some(Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn lapses_when_not_renewed_and_waits_while_renewed() {
        let lease = std::sync::Arc::new(Lease::default());
        // Without a lease it never lapses.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), lease.lapsed())
                .await
                .is_err()
        );
        lease.renew(300, now_seconds());
        let watcher = tokio::spawn({
            let lease = lease.clone();
            async move { lease.lapsed().await }
        });
        // Renewed before it ends: still running after the first deadline.
        tokio::time::sleep(Duration::from_millis(200)).await;
        lease.renew(300, now_seconds());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!watcher.is_finished());
        tokio::time::timeout(Duration::from_secs(2), watcher)
            .await
            .expect("lapses once not renewed")
            .unwrap();
    }
}
