//! What the node keeps of its allocation across restarts, in `persistent.json` in its
//! data folder: the highest allocation version it applied (the fence), the persistent
//! programs that allocation lists, and the lease's deadline.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The highest allocation version applied; 0: none yet.
    pub allocation_version: u64,
    /// Persistent programs this node must run.
    pub vms: BTreeSet<String>,
    /// Instances this node must run.
    #[serde(default)]
    pub instances: BTreeSet<String>,
    /// Unix milliseconds until which the lease runs (see [`super::lease::Lease`]).
    #[serde(default)]
    pub lease_until_ms: Option<i64>,
}

/// A push older than what the node applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("allocation version {pushed} is older than version {applied}, already applied")]
pub struct Stale {
    pub pushed: u64,
    pub applied: u64,
}

/// The version the node holds after a push of `pushed` over `applied`: a push without
/// a version (an upstream scheduler) is taken as the newest and leaves the fence where
/// it is; an equal one is a repeat, applied again; an older one is refused.
pub fn fence(applied: u64, pushed: Option<u64>) -> Result<u64, Stale> {
    match pushed {
        None => Ok(applied),
        Some(pushed) if pushed < applied => Err(Stale { pushed, applied }),
        Some(pushed) => Ok(pushed),
    }
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("persistent.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored state; the empty one when there is no file yet. A file that does not
    /// read is an error: starting over from version 0 could run what was moved away.
    pub fn load(&self) -> Result<Stored> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not readable", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Replaces the file at once (a crash leaves the old or the new one, never half).
    pub fn save(&self, stored: &Stored) -> Result<()> {
        let partial = self.path.with_extension("json.partial");
        let bytes = serde_json::to_vec_pretty(stored)?;
        let mut file = std::fs::File::create(&partial)
            .with_context(|| format!("writing {}", partial.display()))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_refuses_older_versions_only() {
        assert_eq!(fence(0, Some(1)), Ok(1));
        assert_eq!(fence(5, Some(7)), Ok(7));
        assert_eq!(fence(5, Some(5)), Ok(5), "a repeated push applies again");
        assert_eq!(
            fence(5, Some(4)),
            Err(Stale {
                pushed: 4,
                applied: 5
            })
        );
        assert_eq!(
            fence(5, None),
            Ok(5),
            "an unversioned push leaves the fence"
        );
    }

    #[test]
    fn the_state_survives_and_a_broken_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        assert_eq!(file.load().unwrap(), Stored::default());
        let stored = Stored {
            allocation_version: 9,
            vms: ["aa".to_string()].into(),
            instances: ["bb".to_string()].into(),
            lease_until_ms: Some(1_800_000_000_000),
        };
        file.save(&stored).unwrap();
        assert_eq!(StateFile::new(dir.path()).load().unwrap(), stored);
        assert!(!dir.path().join("persistent.json.partial").exists());
        std::fs::write(file.path(), b"{not json").unwrap();
        assert!(file.load().is_err());
    }
}
