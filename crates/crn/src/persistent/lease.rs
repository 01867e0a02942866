//! The node's lease: persistent programs may run while it is valid. Each answered
//! heartbeat extends it to (when that heartbeat was sent + the lease the scheduler
//! gave); a node without a scheduler has no lease and always may run them.
//!
//! Times are [`Instant`]s passed in by the caller (a monotonic clock, and tests can
//! use any instant they like).

use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// No scheduler: persistent programs run as long as they are allocated.
    Unleased,
    /// Valid until the instant, if any.
    Until(Option<Instant>),
}

impl Lease {
    /// A lease that starts lapsed until the first answered heartbeat.
    pub fn leased(until: Option<Instant>) -> Self {
        Self::Until(until)
    }

    pub fn is_valid(&self, now: Instant) -> bool {
        match self {
            Self::Unleased => true,
            Self::Until(until) => until.is_some_and(|u| now < u),
        }
    }

    /// What is left at `now`: `None` without a lease, zero once lapsed.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        match self {
            Self::Unleased => None,
            Self::Until(until) => {
                Some(until.map_or(Duration::ZERO, |u| u.saturating_duration_since(now)))
            }
        }
    }

    pub fn until(&self) -> Option<Instant> {
        match self {
            Self::Unleased => None,
            Self::Until(until) => *until,
        }
    }

    /// An answered heartbeat sent at `sent` gives `seconds` from then. Heartbeats go
    /// one at a time, so the newest answer is the scheduler's newest word, even if it
    /// shortens the lease.
    pub fn extend(&mut self, sent: Instant, seconds: u64) {
        if let Self::Until(until) = self {
            *until = Some(sent + Duration::from_secs(seconds));
        }
    }

    /// The deadline as Unix milliseconds, to keep it across a restart of the node.
    pub fn to_unix_ms(&self, now: Instant, wall: SystemTime) -> Option<i64> {
        let left = self.until()?.saturating_duration_since(now);
        let at = wall.checked_add(left)?;
        at.duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as i64)
    }

    /// The deadline [`Lease::to_unix_ms`] kept, back on the monotonic clock.
    pub fn from_unix_ms(ms: Option<i64>, now: Instant, wall: SystemTime) -> Self {
        let until = ms.and_then(|ms| {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?);
            let left = at.duration_since(wall).ok()?;
            Some(now + left)
        });
        Self::Until(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapses_unless_heartbeats_extend_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut lease = Lease::leased(None);
        assert!(!lease.is_valid(t0), "no heartbeat answered yet");
        assert_eq!(lease.remaining(t0), Some(Duration::ZERO));
        lease.extend(t0, 6);
        assert!(lease.is_valid(t0 + s(5)));
        assert!(!lease.is_valid(t0 + s(6)));
        // The next heartbeat, sent 2 s later, answered: 6 s from its sending.
        lease.extend(t0 + s(2), 6);
        assert!(lease.is_valid(t0 + s(7)));
        assert_eq!(lease.remaining(t0 + s(7)), Some(s(1)));
        assert!(!lease.is_valid(t0 + s(8)));
        assert_eq!(lease.remaining(t0 + s(9)), Some(Duration::ZERO));

        let mut unleased = Lease::Unleased;
        unleased.extend(t0, 1);
        assert!(unleased.is_valid(t0 + s(3600)));
        assert_eq!(unleased.remaining(t0), None);
    }

    #[test]
    fn survives_a_restart_as_wall_clock_time() {
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let mut lease = Lease::leased(None);
        assert_eq!(lease.to_unix_ms(t0, wall), None);
        lease.extend(t0, 6);
        let kept = lease.to_unix_ms(t0, wall);
        // Read back 2 s later by another process.
        let later = t0 + Duration::from_secs(2);
        let back = Lease::from_unix_ms(kept, later, wall + Duration::from_secs(2));
        let left = back.remaining(later).unwrap();
        assert!(
            left <= Duration::from_secs(4) && left > Duration::from_millis(3990),
            "{left:?}"
        );
        // Read back after it ended: lapsed.
        let late = Lease::from_unix_ms(kept, later, wall + Duration::from_secs(7));
        assert!(!late.is_valid(later));
    }
}
