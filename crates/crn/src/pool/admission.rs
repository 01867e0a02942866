//! Admission control: a program starts only if the memory, vCPUs and disk it asks
//! for fit what the node has left. Memory is counted in full (a guest may touch all
//! of it); vCPUs are overcommitted (×4 by default, as the reference does) since
//! on-demand programs mostly wait; disk is what the program's own volumes may fill.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Amount {
    pub memory_mib: u64,
    pub vcpus: u64,
    pub disk_mib: u64,
}

#[derive(Debug)]
struct Inner {
    /// Memory and vCPUs programs may use altogether.
    limit: Amount,
    used: Amount,
}

/// The node's capacity and what running programs hold of it.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Mutex<Inner>>,
    /// Disk is measured when asked, since other things fill it too.
    disk_dir: PathBuf,
    reserved_disk_mib: u64,
}

/// What one execution holds; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    inner: Arc<Mutex<Inner>>,
    amount: Amount,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut inner = self.inner.lock().expect("admission lock");
        inner.used.memory_mib -= self.amount.memory_mib;
        inner.used.vcpus -= self.amount.vcpus;
        inner.used.disk_mib -= self.amount.disk_mib;
    }
}

/// Free space of the filesystem holding `dir`, MiB.
pub fn free_disk_mib(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size() / (1024 * 1024))
        .unwrap_or(0)
}

impl Admission {
    pub fn new(memory_mib: u64, vcpus: u64, disk_dir: &Path, reserved_disk_mib: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                limit: Amount {
                    memory_mib,
                    vcpus,
                    disk_mib: 0,
                },
                used: Amount::default(),
            })),
            disk_dir: disk_dir.to_path_buf(),
            reserved_disk_mib,
        }
    }

    /// Capacity and use: (limit, used). The disk limit is the free space now.
    pub fn snapshot(&self) -> (Amount, Amount) {
        let inner = self.inner.lock().expect("admission lock");
        let mut limit = inner.limit;
        limit.disk_mib = free_disk_mib(&self.disk_dir).saturating_sub(self.reserved_disk_mib);
        (limit, inner.used)
    }

    /// Holds `amount`, or says what is short.
    pub fn reserve(&self, amount: Amount) -> Result<Reservation, String> {
        let free_disk = free_disk_mib(&self.disk_dir).saturating_sub(self.reserved_disk_mib);
        let mut inner = self.inner.lock().expect("admission lock");
        let short = |what: &str, asked: u64, used: u64, limit: u64| {
            format!(
                "not enough {what}: {asked} asked, {} of {limit} free",
                limit.saturating_sub(used)
            )
        };
        if inner.used.memory_mib + amount.memory_mib > inner.limit.memory_mib {
            return Err(short(
                "memory (MiB)",
                amount.memory_mib,
                inner.used.memory_mib,
                inner.limit.memory_mib,
            ));
        }
        if inner.used.vcpus + amount.vcpus > inner.limit.vcpus {
            return Err(short(
                "vCPUs",
                amount.vcpus,
                inner.used.vcpus,
                inner.limit.vcpus,
            ));
        }
        // Sparse volume files fill up later: count every reservation against today's space.
        if inner.used.disk_mib + amount.disk_mib > free_disk {
            return Err(short(
                "disk (MiB)",
                amount.disk_mib,
                inner.used.disk_mib,
                free_disk,
            ));
        }
        inner.used.memory_mib += amount.memory_mib;
        inner.used.vcpus += amount.vcpus;
        inner.used.disk_mib += amount.disk_mib;
        Ok(Reservation {
            inner: self.inner.clone(),
            amount,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_until_full_and_gives_back_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let admission = Admission::new(1024, 4, dir.path(), 0);
        let program = Amount {
            memory_mib: 512,
            vcpus: 1,
            disk_mib: 0,
        };
        let a = admission.reserve(program).unwrap();
        let b = admission.reserve(program).unwrap();
        let full = admission.reserve(program).unwrap_err();
        assert!(full.contains("memory"), "{full}");
        drop(a);
        let c = admission.reserve(program).unwrap();
        assert_eq!(admission.snapshot().1.memory_mib, 1024);

        let many_cpus = Amount {
            memory_mib: 0,
            vcpus: 5,
            disk_mib: 0,
        };
        assert!(admission.reserve(many_cpus).unwrap_err().contains("vCPUs"));
        let huge_disk = Amount {
            disk_mib: u64::MAX / 2,
            ..Amount::default()
        };
        assert!(admission.reserve(huge_disk).unwrap_err().contains("disk"));
        drop((b, c));
        assert_eq!(admission.snapshot().1, Amount::default());
    }
}
