//! Kernel modules shipped in the initramfs, loaded with `finit_module` (there is no
//! modprobe in the initramfs, and the image builder already ordered them by dependency).

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use std::ffi::CString;
use std::fs::File;
use std::path::Path;

/// `boot` modules are needed before the root can be mounted and the channel found
/// (block, console, filesystems); `late` ones only for optional features (network,
/// vsock), so they are loaded in the background and never delay the app's start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModulePlan {
    pub boot: Vec<String>,
    pub late: Vec<String>,
}

pub fn parse_plan(text: &str) -> Result<ModulePlan> {
    let mut plan = ModulePlan::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((stage, file)) = line.split_once(char::is_whitespace) else {
            bail!("module plan line {}: expected `<stage> <file>`", n + 1);
        };
        let file = file.trim();
        if file.contains("..") || file.starts_with('/') {
            bail!("module plan line {}: bad file name {file:?}", n + 1);
        }
        match stage {
            "boot" => plan.boot.push(file.to_owned()),
            "late" => plan.late.push(file.to_owned()),
            other => bail!("module plan line {}: unknown stage {other:?}", n + 1),
        }
    }
    Ok(plan)
}

/// Loads one module from an open file. A module already present (built in, or loaded
/// by an earlier call) is not an error.
pub fn load(name: &str, file: &File) -> Result<()> {
    match finit_module(file, &CString::default(), ModuleInitFlags::empty()) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("loading module {name}")),
    }
}

pub fn open(dir: &Path, files: &[String]) -> Result<Vec<(String, File)>> {
    files
        .iter()
        .map(|f| {
            let file = File::open(dir.join(f)).with_context(|| format!("opening module {f}"))?;
            Ok((f.clone(), file))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_keeps_order_per_stage() {
        let plan = parse_plan(
            "# generated\nboot virtio_ring.ko\nlate failover.ko\nboot virtio.ko\n\nlate net_failover.ko\n",
        )
        .unwrap();
        assert_eq!(plan.boot, ["virtio_ring.ko", "virtio.ko"]);
        assert_eq!(plan.late, ["failover.ko", "net_failover.ko"]);
    }

    #[test]
    fn plan_rejects_garbage() {
        assert!(parse_plan("sometime x.ko").is_err());
        assert!(parse_plan("boot").is_err());
        assert!(parse_plan("boot ../../etc/x.ko").is_err());
    }
}
