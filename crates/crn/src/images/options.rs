//! What to build and where; the types callers fill in.

use std::path::{Path, PathBuf};

/// Environment variable naming the data folder of tests and CI.
pub const DATA_DIR_ENV: &str = "ALEPH_DATA_DIR";
/// Environment variable naming the static guest agent binary.
pub const GUEST_BIN_ENV: &str = "ALEPH_GUEST_BIN";

/// Debian's metapackage that always depends on the current cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The node's data folder; images go to `DATA/images/`.
    pub data_dir: PathBuf,
    /// The static guest agent; see [`BuildOptions::guest_bin`].
    pub guest_bin: Option<PathBuf>,
    pub runtime: RuntimeRecipe,
}

impl BuildOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            guest_bin: None,
            runtime: RuntimeRecipe::default(),
        }
    }

    /// The agent binary: the one given, else `$ALEPH_GUEST_BIN`, else what
    /// `scripts/build-guest` produces in this workspace.
    pub fn guest_bin(&self) -> PathBuf {
        self.guest_bin
            .clone()
            .or_else(|| std::env::var_os(GUEST_BIN_ENV).map(PathBuf::from))
            .unwrap_or_else(default_guest_bin)
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn default_guest_bin() -> PathBuf {
    target_dir().join("x86_64-unknown-linux-gnu/release/aleph-guest")
}

/// The data folder of tests and CI: `$ALEPH_DATA_DIR`, else `<workspace>/target/aleph-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os(DATA_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("aleph-data"))
}

/// How the Python runtime is made: `debootstrap --variant=minbase` with these packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRecipe {
    pub suite: String,
    pub mirror: String,
    pub packages: Vec<String>,
}

impl Default for RuntimeRecipe {
    fn default() -> Self {
        Self {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            packages: ["python3", "python3-fastapi", "python3-uvicorn"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Progress of a build, one line per step.
pub trait Progress: Send + Sync {
    fn step(&self, message: &str);
}

/// Prints each step on stderr.
pub struct StderrProgress;

impl Progress for StderrProgress {
    fn step(&self, message: &str) {
        eprintln!("images: {message}");
    }
}

/// Says nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn step(&self, _: &str) {}
}
