//! Where a QEMU VM keeps its files inside the execution folder.
//!
//! Everything needed to find a running VM again lives here, under fixed names, so that
//! adopting it needs nothing but the folder.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    folder: PathBuf,
}

/// `sun_path` holds 108 bytes, the final NUL included.
const MAX_SOCKET_PATH: usize = 107;

impl Layout {
    pub fn new(folder: &Path) -> Self {
        Self {
            folder: folder.to_path_buf(),
        }
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }
    /// Written by QEMU (`-pidfile`).
    pub fn pidfile(&self) -> PathBuf {
        self.folder.join("qemu.pid")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.folder.join("qmp.sock")
    }
    /// The agent channel's chardev socket.
    pub fn channel_socket(&self) -> PathBuf {
        self.folder.join("agent.sock")
    }
    /// The guest's console.
    pub fn serial_log(&self) -> PathBuf {
        self.folder.join("serial.log")
    }
    /// QEMU's own stdout and stderr (its errors).
    pub fn qemu_log(&self) -> PathBuf {
        self.folder.join("qemu.log")
    }
    /// The spec and acceleration the VM was started with, read back on adoption.
    pub fn state(&self) -> PathBuf {
        self.folder.join("vm.json")
    }

    /// Unix socket paths have a hard length limit; say so before QEMU fails obscurely.
    pub fn check_socket_paths(&self) -> Result<(), String> {
        for socket in [self.qmp_socket(), self.channel_socket()] {
            let len = socket.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(format!(
                    "socket path {} is {len} bytes, over the {MAX_SOCKET_PATH} a Unix socket allows; use a shorter execution folder",
                    socket.display()
                ));
            }
        }
        Ok(())
    }

    /// Removes what a previous, ended VM left, so QEMU can bind its sockets again.
    pub fn clear_stale(&self) {
        for file in [self.pidfile(), self.qmp_socket(), self.channel_socket()] {
            let _ = std::fs::remove_file(file);
        }
    }
}
