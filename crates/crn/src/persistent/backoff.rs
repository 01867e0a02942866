//! When to try again after a persistent program crashed: 1 s, 2 s, 4 s … up to a
//! ceiling, counted from the crash; back to the first step once it has run stably.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl BackoffPolicy {
    /// The wait after the `failures`-th failure in a row (1: the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial
            .saturating_mul(1u32 << doublings)
            .min(self.max)
            .max(self.initial.min(self.max))
    }

    /// How long a restarted program must run before its failures are forgotten.
    pub fn stable_after(&self) -> Duration {
        self.max.max(Duration::from_secs(10))
    }
}

/// The crash history of one program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restarts {
    failures: u32,
    not_before: Option<Instant>,
}

impl Restarts {
    /// Counts a crash or a failed start at `now`; returns the wait before the next try.
    pub fn failed(&mut self, policy: &BackoffPolicy, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = policy.delay(self.failures);
        self.not_before = Some(now + delay);
        delay
    }

    /// Whether a start may be tried at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|at| now >= at)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures (the program ran stably, or a push asks for a fresh start).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[test]
    fn doubles_up_to_the_ceiling() {
        let delays: Vec<u64> = (1..=9).map(|n| POLICY.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(POLICY.delay(u32::MAX), Duration::from_secs(60));
        let odd = BackoffPolicy {
            initial: Duration::from_millis(300),
            max: Duration::from_secs(1),
        };
        assert_eq!(odd.delay(1), Duration::from_millis(300));
        assert_eq!(odd.delay(2), Duration::from_millis(600));
        assert_eq!(odd.delay(3), Duration::from_secs(1));
    }

    #[test]
    fn waits_from_each_failure_and_resets() {
        let t0 = Instant::now();
        let mut restarts = Restarts::default();
        assert!(restarts.ready(t0), "a first start is not delayed");
        assert_eq!(restarts.failed(&POLICY, t0), Duration::from_secs(1));
        assert!(!restarts.ready(t0 + Duration::from_millis(999)));
        assert!(restarts.ready(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(restarts.failed(&POLICY, t1), Duration::from_secs(2));
        assert!(!restarts.ready(t1 + Duration::from_millis(1999)));
        assert!(restarts.ready(t1 + Duration::from_secs(2)));
        assert_eq!(restarts.failures(), 2);
        restarts.reset();
        assert!(restarts.ready(t1));
        assert_eq!(restarts.failed(&POLICY, t1), Duration::from_secs(1));
    }
}
