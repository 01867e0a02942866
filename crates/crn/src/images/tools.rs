//! The host programs a build runs, and which Debian package provides each.

use std::path::{Path, PathBuf};
use std::process::Output;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("`{tool}` is not installed (install the Debian package `{package}`)")]
    Missing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("running `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

/// `(program, package)`.
pub const APT_GET: (&str, &str) = ("apt-get", "apt");
pub const APT_CACHE: (&str, &str) = ("apt-cache", "apt");
pub const DPKG_DEB: (&str, &str) = ("dpkg-deb", "dpkg");
pub const DEBOOTSTRAP: (&str, &str) = ("debootstrap", "debootstrap");
pub const MKSQUASHFS: (&str, &str) = ("mksquashfs", "squashfs-tools");

/// Finds a program on PATH, and in the sbin folders that a non-login PATH often lacks
/// (debootstrap lives in /usr/sbin).
pub fn find(tool: (&'static str, &'static str)) -> Result<PathBuf, ToolError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool.0))
        .find(|candidate| is_executable(candidate))
        .ok_or(ToolError::Missing {
            tool: tool.0,
            package: tool.1,
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs a tool to completion; a non-zero exit is an error carrying its stderr.
pub async fn run(
    tool: (&'static str, &'static str),
    args: &[&str],
    cwd: Option<&Path>,
) -> Result<Output, ToolError> {
    let program = find(tool)?;
    let command = format!("{} {}", tool.0, args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args).kill_on_drop(true);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let output = cmd.output().await.map_err(|source| ToolError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(ToolError::Failed {
            command,
            status: output.status,
            stderr: tail,
        });
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_its_package() {
        let err = find(("surely-not-a-tool-here", "some-package")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`surely-not-a-tool-here` is not installed (install the Debian package `some-package`)"
        );
    }

    #[test]
    fn finds_sh() {
        assert!(find(("sh", "dash")).is_ok());
    }
}
