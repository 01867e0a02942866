//! Choosing the kernel modules the guest needs and ordering them by dependency. The
//! extracted package has no `modules.dep` (depmod runs at install time), so the
//! dependencies come from each module's own `.modinfo` section.

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Needed to mount the runtime and find the channel: loaded before anything else.
pub const BOOT_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    // Entropy for Python's start when the VM has a virtio-rng device.
    "virtio_rng",
    "squashfs",
    "overlay",
    "ext4",
];
/// Optional features, loaded in the background after boot: network, vsock, and the
/// ACPI power button as an input device (a hypervisor's "power down" then reaches the
/// agent, which stops the app before powering off).
pub const LATE_MODULES: &[&str] = &[
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "button",
    "evdev",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Boot,
    Late,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub name: String,
    pub path: PathBuf,
    pub stage: Stage,
}

/// Module names use `_`; file names sometimes `-` (`virtio-rng.ko`).
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The `depends=` of a module file.
pub fn depends(ko: &[u8]) -> Result<Vec<String>> {
    let file = object::File::parse(ko).context("not an ELF module")?;
    let section = file
        .section_by_name(".modinfo")
        .context("no .modinfo section")?;
    let data = section.data()?;
    Ok(data
        .split(|b| *b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .map(normalize)
                .collect::<Vec<_>>()
        })
        .filter(|name| !name.is_empty())
        .collect())
}

/// Every `.ko` under the kernel's module folder, by module name.
pub fn index(modules_dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                out.insert(normalize(stem), path);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(modules_dir, &mut out)?;
    Ok(out)
}

/// Names in `modules.builtin` (lines like `kernel/fs/ext4/ext4.ko`).
pub fn builtin(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
        .map(normalize)
        .collect()
}

/// The wanted modules and their dependencies, dependencies first, built-in ones left
/// out; a module needed at boot is never deferred to late.
pub fn select(
    index: &BTreeMap<String, PathBuf>,
    builtin: &HashSet<String>,
    depends_of: &dyn Fn(&Path) -> Result<Vec<String>>,
) -> Result<Vec<Selected>> {
    let mut resolver = Resolver {
        index,
        builtin,
        depends_of,
        seen: HashSet::new(),
        out: Vec::new(),
    };
    for (wanted, stage) in BOOT_MODULES
        .iter()
        .map(|m| (m, Stage::Boot))
        .chain(LATE_MODULES.iter().map(|m| (m, Stage::Late)))
    {
        resolver.visit(wanted, stage, 0)?;
    }
    Ok(resolver.out)
}

struct Resolver<'a> {
    index: &'a BTreeMap<String, PathBuf>,
    builtin: &'a HashSet<String>,
    depends_of: &'a dyn Fn(&Path) -> Result<Vec<String>>,
    seen: HashSet<String>,
    out: Vec<Selected>,
}

impl Resolver<'_> {
    fn visit(&mut self, name: &str, stage: Stage, depth: usize) -> Result<()> {
        if self.seen.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if depth > 32 {
            bail!("module dependency cycle at {name}");
        }
        let path = self
            .index
            .get(name)
            .with_context(|| format!("module {name} is neither built in nor in the package"))?;
        for dep in (self.depends_of)(path)? {
            self.visit(&dep, stage, depth + 1)?;
        }
        self.seen.insert(name.to_owned());
        self.out.push(Selected {
            name: name.to_owned(),
            path: path.clone(),
            stage,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_dependencies_first_and_skips_builtins() {
        let names = [
            "virtio",
            "virtio_ring",
            "virtio_mmio",
            "virtio_blk",
            "virtio_console",
            "virtio_rng",
            "squashfs",
            "overlay",
            "virtio_net",
            "net_failover",
            "failover",
            "vsock",
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
            "button",
            "evdev",
        ];
        let index: BTreeMap<_, _> = names
            .iter()
            .map(|n| (n.to_string(), PathBuf::from(*n)))
            .collect();
        let deps = |p: &Path| -> Result<Vec<String>> {
            Ok(match p.to_str().unwrap() {
                "virtio" => vec!["virtio_ring".into()],
                "virtio_mmio" | "virtio_blk" | "virtio_console" | "virtio_rng" => {
                    vec!["virtio".into(), "virtio_ring".into()]
                }
                "virtio_net" => vec!["virtio_ring".into(), "virtio".into(), "net_failover".into()],
                "net_failover" => vec!["failover".into()],
                "vmw_vsock_virtio_transport" => {
                    vec!["vmw_vsock_virtio_transport_common".into(), "vsock".into()]
                }
                "vmw_vsock_virtio_transport_common" => vec!["vsock".into()],
                _ => vec![],
            })
        };
        let builtin = HashSet::from(["ext4".to_string()]);
        let selected = select(&index, &builtin, &deps).unwrap();
        let order: Vec<_> = selected.iter().map(|s| s.name.as_str()).collect();
        let pos = |n: &str| order.iter().position(|o| *o == n).unwrap();
        assert!(pos("virtio_ring") < pos("virtio") && pos("virtio") < pos("virtio_mmio"));
        assert!(pos("failover") < pos("net_failover") && pos("net_failover") < pos("virtio_net"));
        assert!(!order.contains(&"ext4"));
        assert_eq!(order.len(), names.len());
        let stage = |n: &str| selected.iter().find(|s| s.name == n).unwrap().stage;
        assert_eq!(stage("virtio"), Stage::Boot);
        assert_eq!(stage("failover"), Stage::Late);
    }

    #[test]
    fn a_missing_module_is_an_error() {
        let index = BTreeMap::new();
        let err = select(&index, &HashSet::new(), &|_| Ok(vec![])).unwrap_err();
        assert!(err.to_string().contains("virtio_mmio"));
    }

    #[test]
    fn builtin_list_parsing() {
        let b = builtin("kernel/fs/ext4/ext4.ko\nkernel/drivers/char/hw_random/virtio-rng.ko\n");
        assert!(b.contains("ext4") && b.contains("virtio_rng"));
    }
}
