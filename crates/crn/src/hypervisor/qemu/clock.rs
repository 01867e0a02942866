//! The host's TSC rate, which a TCG guest's TSC runs at.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// kHz of the host's time-stamp counter, measured once against the monotonic clock.
/// `None` off x86-64 or when the counter is not usable.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(measure)
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    // SAFETY: RDTSC has no preconditions on x86-64.
    let tsc = || unsafe { std::arch::x86_64::_rdtsc() };
    let (t0, c0) = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(40));
    let (t1, c1) = (Instant::now(), tsc());
    let nanos = t1.duration_since(t0).as_nanos() as u64;
    let khz = c1.checked_sub(c0)?.checked_mul(1_000_000)? / nanos.max(1);
    // Anything outside 100 MHz..10 GHz is not a TSC we should hand to a guest.
    (100_000..10_000_000).contains(&khz).then_some(khz)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_a_plausible_rate() {
        if cfg!(target_arch = "x86_64") {
            let khz = super::host_tsc_khz().expect("x86-64 hosts have a TSC");
            assert!((100_000..10_000_000).contains(&khz), "{khz}");
        }
    }
}
