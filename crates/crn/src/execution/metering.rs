//! What a VM's process used, read from `/proc` before it ends: CPU time, peak
//! memory, and block I/O. The VM is one QEMU process, so its counters are the VM's.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_time_user: f64,
    pub cpu_time_system: f64,
    /// Peak resident memory of the VM's process (guest RAM touched plus QEMU), bytes.
    pub memory_peak_bytes: u64,
    pub io_read_count: u64,
    pub io_write_count: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

/// Linux reports CPU times in USER_HZ ticks, 100 per second on every architecture
/// it exports to user space this way.
const TICKS_PER_SECOND: f64 = 100.0;

/// The process's counters so far; `None` when it is gone.
pub fn read(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let mut usage = Usage {
        cpu_time_user: ticks(11)? as f64 / TICKS_PER_SECOND,
        cpu_time_system: ticks(12)? as f64 / TICKS_PER_SECOND,
        ..Usage::default()
    };
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        usage.memory_peak_bytes = field(&status, "VmHWM:").unwrap_or(0) * 1024;
    }
    if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
        usage.io_read_count = field(&io, "syscr:").unwrap_or(0);
        usage.io_write_count = field(&io, "syscw:").unwrap_or(0);
        usage.io_read_bytes = field(&io, "read_bytes:").unwrap_or(0);
        usage.io_write_bytes = field(&io, "write_bytes:").unwrap_or(0);
    }
    Some(usage)
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        // Burn a little CPU so the counter is above zero.
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let usage = read(std::process::id()).expect("our own /proc entry");
        assert!(
            usage.cpu_time_user + usage.cpu_time_system > 0.0,
            "{usage:?}"
        );
        assert!(usage.memory_peak_bytes > 1024 * 1024, "{usage:?}");
        assert!(read(u32::MAX).is_none());
    }
}
