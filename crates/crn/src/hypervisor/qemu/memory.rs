//! What a QEMU process costs the host: memory apart from the guest's own RAM, CPU time.
//!
//! The guest's RAM is one anonymous mapping the size of `-m`; whatever of it is resident
//! is memory the guest touched (and would cost under any hypervisor). The rest of the
//! RSS is QEMU's own: its heap, TCG's translation cache, device state, libraries.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryUsage {
    /// Resident memory of the whole process.
    pub rss_kib: u64,
    /// Resident part of the guest's RAM mapping.
    pub guest_rss_kib: u64,
    /// `rss_kib - guest_rss_kib`: QEMU's own resident memory.
    pub overhead_rss_kib: u64,
    /// The part of the overhead private to this process (shared libraries and the
    /// binary's pages, shared by all VMs, are left out): what one more VM costs.
    pub overhead_private_kib: u64,
}

/// Reads `/proc/{pid}/smaps`; `guest_ram_mib` is the VM's `-m`.
pub fn usage(pid: u32, guest_ram_mib: u32) -> std::io::Result<MemoryUsage> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(parse(&smaps, guest_ram_mib as u64 * 1024))
}

/// CPU time the process has used so far (user and system, all its threads).
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces);
    // utime and stime are the 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()??
        .max(1) as u64;
    Some(std::time::Duration::from_millis(ticks * 1000 / per_second))
}

#[derive(Default)]
struct Mapping {
    anonymous: bool,
    size: u64,
    rss: u64,
    private: u64,
}

fn parse(smaps: &str, guest_ram_kib: u64) -> MemoryUsage {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header: range, perms, offset, dev, inode[, path].
            let path = words.nth(4);
            mappings.push(Mapping {
                anonymous: path.is_none(),
                ..Default::default()
            });
            continue;
        }
        let Some(current) = mappings.last_mut() else {
            continue;
        };
        let value = || {
            words
                .clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Size:" => current.size = value(),
            "Rss:" => current.rss = value(),
            "Private_Clean:" | "Private_Dirty:" => current.private += value(),
            _ => {}
        }
    }
    // QEMU maps the RAM with a little alignment slack; take the anonymous mapping
    // closest to the RAM size, at least as large.
    let guest = mappings
        .iter()
        .filter(|m| m.anonymous && m.size >= guest_ram_kib && m.size <= guest_ram_kib + 4 * 1024)
        .min_by_key(|m| m.size);
    let rss: u64 = mappings.iter().map(|m| m.rss).sum();
    let private: u64 = mappings.iter().map(|m| m.private).sum();
    let (guest_rss, guest_private) = guest.map_or((0, 0), |m| (m.rss, m.private));
    MemoryUsage {
        rss_kib: rss,
        guest_rss_kib: guest_rss,
        overhead_rss_kib: rss.saturating_sub(guest_rss),
        overhead_private_kib: private.saturating_sub(guest_private),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_cpu_time_as_it_grows() {
        use std::time::{Duration, Instant};
        let before = cpu_time(std::process::id()).expect("our own stat");
        // Spin until the counter moves by 30 ms; a busy host only makes this slower.
        let started = Instant::now();
        while cpu_time(std::process::id()).unwrap() < before + Duration::from_millis(30) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "CPU time never grew"
            );
        }
    }

    #[test]
    fn separates_the_guest_ram_from_the_rest() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234 /usr/bin/qemu-system-x86_64
Size:               1024 kB
Rss:                 900 kB
Shared_Clean:        900 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
7f0000000000-7f0010200000 rw-p 00000000 00:00 0
Size:             264192 kB
Rss:              100000 kB
Private_Clean:         0 kB
Private_Dirty:    100000 kB
7f0020000000-7f0022000000 rwxp 00000000 00:00 0
Size:              32768 kB
Rss:                8000 kB
Private_Clean:         0 kB
Private_Dirty:      8000 kB
";
        let usage = parse(smaps, 256 * 1024);
        assert_eq!(usage.rss_kib, 108_900);
        assert_eq!(usage.guest_rss_kib, 100_000);
        assert_eq!(usage.overhead_rss_kib, 8_900);
        assert_eq!(usage.overhead_private_kib, 8_000);
    }
}
