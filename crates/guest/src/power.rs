//! The end of the VM.

use nix::sys::reboot::{RebootMode, reboot};
use std::time::Duration;

/// Flushes what was written and powers the VM off (QEMU then exits).
pub fn off() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // PID 1 must never return.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
