//! The initramfs: uncompressed newc cpio archives (the kernel unpacks them faster than it
//! decompresses anything). It is two archives back to back, which the kernel accepts:
//! the kernel's modules (built once per kernel) and the agent as `/init` (rebuilt
//! whenever the agent changes), so a new agent does not need the kernel package again.

use super::modules::{Selected, Stage};
use anyhow::{Context, Result};
use std::io::Write;

/// Layout shared with the agent (`crates/guest/src/paths.rs`).
pub const MODULES_DIR: &str = "lib/modules";
pub const MODULES_ORDER: &str = "lib/modules/order";

struct Archive {
    out: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    fn new() -> Self {
        // Inode numbers only matter for hard links (nlink > 1), which we never write.
        Self {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) -> Result<()> {
        self.ino += 1;
        let size = u32::try_from(data.len()).context("file too large for cpio")?;
        let mut writer = cpio::newc::Builder::new(name)
            .ino(self.ino)
            .mode(mode)
            .nlink(if mode & S_IFDIR != 0 { 2 } else { 1 })
            // A fixed time keeps the archive's hash a function of its contents.
            .mtime(0)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut self.out, size);
        writer.write_all(data)?;
        writer.finish()?;
        Ok(())
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        self.entry(name, S_IFDIR | 0o755, &[], (0, 0))
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.entry(name, S_IFREG | perm, data, (0, 0))
    }

    fn finish(mut self) -> Result<Vec<u8>> {
        cpio::newc::trailer(&mut self.out)?;
        // The next archive must start aligned; the kernel skips zero padding.
        let padded = self.out.len().div_ceil(512) * 512;
        self.out.resize(padded, 0);
        Ok(self.out)
    }
}

/// `/lib/modules/<name>.ko` for each module and the load plan the agent follows.
pub fn modules_archive(selected: &[Selected]) -> Result<Vec<u8>> {
    let mut archive = Archive::new();
    archive.dir("lib")?;
    archive.dir(MODULES_DIR)?;
    // `<stage> <file>` per line, dependencies first; no comment line, so that a shell
    // `while read stage file` loop (the benchmark's bare reference) can read it too.
    let mut order = String::new();
    for module in selected {
        let data = std::fs::read(&module.path)
            .with_context(|| format!("reading {}", module.path.display()))?;
        let file = format!("{}.ko", module.name);
        archive.file(&format!("{MODULES_DIR}/{file}"), 0o644, &data)?;
        let stage = match module.stage {
            Stage::Boot => "boot",
            Stage::Late => "late",
        };
        order.push_str(&format!("{stage} {file}\n"));
    }
    archive.file(MODULES_ORDER, 0o644, order.as_bytes())?;
    archive.finish()
}

/// The agent as `/init`, the mount points it uses before the root exists, and
/// `/dev/console` so that the kernel can give init its standard streams.
pub fn agent_archive(agent: &[u8]) -> Result<Vec<u8>> {
    let mut archive = Archive::new();
    for dir in ["dev", "proc", "sys", "run", "mnt"] {
        archive.dir(dir)?;
    }
    archive.entry("dev/console", S_IFCHR | 0o600, &[], (5, 1))?;
    archive.file("init", 0o755, agent)?;
    archive.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(mut data: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            while data.first() == Some(&0) {
                data = &data[1..];
            }
            if data.is_empty() {
                return out;
            }
            let mut reader = cpio::newc::Reader::new(data).unwrap();
            if reader.entry().is_trailer() {
                let rest = reader.finish().unwrap();
                data = rest;
                continue;
            }
            let name = reader.entry().name().to_owned();
            let mode = reader.entry().mode();
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut content).unwrap();
            out.push((name, mode, content));
            data = reader.finish().unwrap();
        }
    }

    #[test]
    fn concatenated_archives_hold_init_modules_and_plan() {
        let dir = tempfile::tempdir().unwrap();
        let ko = dir.path().join("virtio.ko");
        std::fs::write(&ko, b"module bytes").unwrap();
        let selected = vec![
            Selected {
                name: "virtio".into(),
                path: ko.clone(),
                stage: Stage::Boot,
            },
            Selected {
                name: "failover".into(),
                path: ko,
                stage: Stage::Late,
            },
        ];
        let mut image = agent_archive(b"\x7fELF agent").unwrap();
        assert_eq!(image.len() % 512, 0);
        image.extend(modules_archive(&selected).unwrap());
        let entries = names(&image);
        let find = |n: &str| {
            entries
                .iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(find("init").2, b"\x7fELF agent");
        assert_eq!(find("init").1 & 0o777, 0o755);
        assert_eq!(find("dev/console").1 & S_IFCHR, S_IFCHR);
        assert_eq!(find("lib/modules/virtio.ko").2, b"module bytes");
        assert_eq!(
            String::from_utf8(find("lib/modules/order").2.clone()).unwrap(),
            "boot virtio.ko\nlate failover.ko\n"
        );
    }
}
