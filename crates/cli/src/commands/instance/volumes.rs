//! Extra volumes of an instance: the `--persistent-volume`, `--ephemeral-volume`
//! and `--immutable-volume` specs of `create` (`key=value,key=value`, as the
//! official client spells them) turned into the INSTANCE's `volumes`, and the
//! short summary `list` shows of them.
//!
//! Everything a CRN would refuse later (a name it cannot make a file of, a
//! relative mount point, a size past the reference's limits) is refused here,
//! before anything is posted.

use aleph_types::item_hash::ItemHash;
use aleph_types::message::execution::volume::{
    BaseVolume, EphemeralVolume, ImmutableVolume, MachineVolume, PersistentVolume,
    PersistentVolumeSize, VolumePersistence,
};
use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// The reference's limits: ephemeral volumes up to 1000 MiB, persistent ones up
/// to "2 TiB", which aleph-types (whose content type the message goes through)
/// counts as 2048 GB = 1953125 MiB; at most 256 volumes per message.
const EPHEMERAL_MAX_MIB: u64 = 1000;
const PERSISTENT_MAX_MIB: u64 = 2048 * 1000 * 1000 * 1000 / (1024 * 1024);
const MAX_VOLUMES: usize = 256;
/// The longest persistent volume name a CRN makes a file of.
const NAME_MAX_LEN: usize = 128;

/// The volume flags of `create`, as given.
#[derive(Debug, Default, Clone)]
pub struct VolumeFlags {
    pub persistent: Vec<String>,
    pub ephemeral: Vec<String>,
    pub immutable: Vec<String>,
}

/// The INSTANCE's `volumes` for `flags`: persistent ones first, then ephemeral,
/// then immutable, each in the order given. Two volumes on one mount point, or
/// two persistent volumes of one name (the same disk on the CRN), are refused.
pub fn volumes_of(flags: &VolumeFlags) -> Result<Vec<MachineVolume>> {
    type Parse = fn(&str) -> Result<MachineVolume>;
    let kinds: [(&str, &[String], Parse); 3] = [
        ("--persistent-volume", &flags.persistent, persistent),
        ("--ephemeral-volume", &flags.ephemeral, ephemeral),
        ("--immutable-volume", &flags.immutable, immutable),
    ];
    let total: usize = kinds.iter().map(|(_, specs, _)| specs.len()).sum();
    if total > MAX_VOLUMES {
        bail!("{total} volumes: a message may carry at most {MAX_VOLUMES}");
    }
    let mut volumes = Vec::new();
    // Who took each mount point and persistent name, to say it on a clash.
    let mut mounts: HashMap<String, String> = HashMap::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (flag, specs, parse) in kinds {
        for spec in specs {
            let given = format!("{flag} {spec:?}");
            let volume = parse(spec).with_context(|| given.clone())?;
            let mount = mount_of(&volume);
            if let Some(first) = mounts.insert(mount.clone(), given.clone()) {
                bail!(
                    "{given}: two volumes are mounted at {mount} (also {first}): give each its own mount point"
                );
            }
            if let MachineVolume::Persistent(PersistentVolume {
                name: Some(name), ..
            }) = &volume
                && let Some(first) = names.insert(name.clone(), given.clone())
            {
                bail!(
                    "{given}: two persistent volumes are named {name:?} (also {first}): the CRN keeps one disk per owner and name"
                );
            }
            volumes.push(volume);
        }
    }
    Ok(volumes)
}

/// `name=N,size_mib=S,mount=/M[,persistence=host]`.
fn persistent(spec: &str) -> Result<MachineVolume> {
    let mut fields = Fields::parse(spec, &["name", "size_mib", "mount", "persistence"])?;
    if let Some(persistence) = fields.take("persistence") {
        match persistence.as_str() {
            "host" => {}
            "store" => bail!(
                "persistence=store (kept on the CCN) is not supported by CRNs: use persistence=host"
            ),
            other => bail!("persistence={other:?}: it is host (the default)"),
        }
    }
    let name = fields.require("name")?;
    check_name(&name)?;
    let size = size_mib(
        &fields.require("size_mib")?,
        PERSISTENT_MAX_MIB,
        "persistent",
    )?;
    let mount = mount_point(&fields.require("mount")?)?;
    Ok(MachineVolume::Persistent(PersistentVolume {
        base: BaseVolume {
            comment: None,
            mount: Some(mount),
        },
        parent: None,
        persistence: Some(VolumePersistence::Host),
        name: Some(name),
        size_mib: PersistentVolumeSize::try_from(size)
            .map_err(|e| anyhow!("size_mib={size}: {e}"))?,
    }))
}

/// `size_mib=S,mount=/M`.
fn ephemeral(spec: &str) -> Result<MachineVolume> {
    let mut fields = Fields::parse(spec, &["size_mib", "mount"])?;
    let size = size_mib(&fields.require("size_mib")?, EPHEMERAL_MAX_MIB, "ephemeral")?;
    let mount = mount_point(&fields.require("mount")?)?;
    let volume = EphemeralVolume::new(size, mount).map_err(|e| anyhow!("size_mib={size}: {e}"))?;
    Ok(MachineVolume::Ephemeral(volume))
}

/// `ref=HASH,mount=/M[,use_latest=true|false]` (the latest amend by default).
fn immutable(spec: &str) -> Result<MachineVolume> {
    let mut fields = Fields::parse(spec, &["ref", "mount", "use_latest"])?;
    let text = fields.require("ref")?;
    let reference = ItemHash::try_from(text.as_str())
        .map_err(|e| anyhow!("ref={text:?} is not an item hash ({e}): give a STORE's hash"))?;
    let mount = mount_point(&fields.require("mount")?)?;
    let use_latest = match fields.take("use_latest").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => bail!("use_latest={other:?}: it is true or false"),
    };
    Ok(MachineVolume::Immutable(ImmutableVolume {
        base: BaseVolume {
            comment: None,
            mount: Some(mount),
        },
        reference,
        use_latest,
    }))
}

/// The `key=value` pairs of one spec, each key at most once and known.
struct Fields(BTreeMap<String, String>);

impl Fields {
    fn parse(spec: &str, known: &[&str]) -> Result<Self> {
        let mut fields = BTreeMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("{pair:?} is not key=value");
            };
            let (key, value) = (key.trim(), value.trim());
            if !known.contains(&key) {
                bail!("unknown key {key:?} (known: {})", known.join(", "));
            }
            if value.is_empty() {
                bail!("{key} has no value");
            }
            if fields.insert(key.to_owned(), value.to_owned()).is_some() {
                bail!("{key} is given twice");
            }
        }
        Ok(Self(fields))
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    fn require(&mut self, key: &str) -> Result<String> {
        self.take(key)
            .with_context(|| format!("{key}=… is missing"))
    }
}

/// A size in MiB, 1 to `max`.
fn size_mib(text: &str, max: u64, kind: &str) -> Result<u64> {
    let size: u64 = text
        .parse()
        .map_err(|_| anyhow!("size_mib={text:?} is not a whole number of MiB"))?;
    if !(1..=max).contains(&size) {
        bail!("size_mib={size}: {kind} volumes are 1 to {max} MiB");
    }
    Ok(size)
}

/// What the CRN makes a file of: letters, digits, `-`, `_`, `.`, not starting
/// with `.` (so never `..` nor a hidden file).
fn check_name(name: &str) -> Result<()> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.len() > NAME_MAX_LEN {
        bail!("name is {} bytes long: at most {NAME_MAX_LEN}", name.len());
    }
    if name.starts_with('.') || !name.bytes().all(allowed) {
        bail!(
            "name={name:?}: a volume name has letters, digits, '-', '_' and '.' only, and does not start with '.'"
        );
    }
    Ok(())
}

/// An absolute mount point inside the VM, other than `/` itself, with no `.`
/// or `..` part and nothing that would break the guest's fstab line.
fn mount_point(text: &str) -> Result<PathBuf> {
    if !text.starts_with('/') {
        bail!("mount={text:?} is relative: give an absolute path such as /data");
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("mount={text:?} has spaces or control characters");
    }
    if text.split('/').any(|part| part == "." || part == "..") {
        bail!("mount={text:?} has a '.' or '..' part");
    }
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        bail!("mount=/ would hide the root filesystem: mount the volume below it");
    }
    Ok(PathBuf::from(trimmed))
}

fn mount_of(volume: &MachineVolume) -> String {
    let base = match volume {
        MachineVolume::Immutable(v) => &v.base,
        MachineVolume::Ephemeral(v) => &v.base,
        MachineVolume::Persistent(v) => &v.base,
    };
    base.mount
        .as_ref()
        .map(|m| m.display().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- listing

/// The volumes of a posted INSTANCE content, one object each with its `kind`
/// (`persistent`, `ephemeral`, `immutable`) and the fields that matter.
pub fn listed_volumes(content: &Value) -> Vec<Value> {
    let volumes = content["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    volumes
        .iter()
        .map(|v| {
            if v.get("ref").is_some() {
                json!({"kind": "immutable", "ref": v["ref"], "use_latest": v["use_latest"], "mount": v["mount"]})
            } else if v["ephemeral"] == true {
                json!({"kind": "ephemeral", "size_mib": v["size_mib"], "mount": v["mount"]})
            } else {
                json!({"kind": "persistent", "name": v["name"], "size_mib": v["size_mib"], "mount": v["mount"], "persistence": v["persistence"]})
            }
        })
        .collect()
}

/// `data:1024MiB→/data, ephemeral:100MiB→/tmp/x, ref 0123abcd…→/opt/x`.
pub fn summary(listed: &[Value]) -> String {
    let text = |v: &Value, key: &str| match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "?".to_owned(),
        other => other.to_string(),
    };
    listed
        .iter()
        .map(|v| {
            let what = match v["kind"].as_str() {
                Some("immutable") => {
                    let reference = text(v, "ref");
                    format!("ref {}…", reference.get(..8).unwrap_or(&reference))
                }
                Some("ephemeral") => format!("ephemeral:{}MiB", text(v, "size_mib")),
                _ => format!("{}:{}MiB", text(v, "name"), text(v, "size_mib")),
            };
            format!("{what}→{}", text(v, "mount"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(persistent: &[&str], ephemeral: &[&str], immutable: &[&str]) -> VolumeFlags {
        let own = |specs: &[&str]| specs.iter().map(|s| s.to_string()).collect();
        VolumeFlags {
            persistent: own(persistent),
            ephemeral: own(ephemeral),
            immutable: own(immutable),
        }
    }

    fn refused(flags: &VolumeFlags) -> String {
        format!("{:#}", volumes_of(flags).unwrap_err())
    }

    #[test]
    fn specs_become_the_three_volume_shapes() {
        let hash = "ab".repeat(32);
        let volumes = volumes_of(&flags(
            &[
                "name=data,size_mib=1024,mount=/data",
                " persistence=host, name=db.1,size_mib=1953125,mount=/var/db/ ",
            ],
            &["size_mib=100,mount=/tmp/x"],
            &[
                &format!("ref={hash},mount=/opt/x"),
                &format!("mount=/opt/y,ref={hash},use_latest=false"),
            ],
        ))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&volumes).unwrap(),
            json!([
                {"mount": "/data", "persistence": "host", "name": "data", "size_mib": 1024},
                {"mount": "/var/db", "persistence": "host", "name": "db.1", "size_mib": 1953125},
                {"mount": "/tmp/x", "ephemeral": true, "size_mib": 100},
                {"mount": "/opt/x", "ref": hash, "use_latest": true},
                {"mount": "/opt/y", "ref": hash, "use_latest": false},
            ])
        );
        assert!(volumes_of(&VolumeFlags::default()).unwrap().is_empty());
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let p = |spec: &str| refused(&flags(&[spec], &[], &[]));
        let e = |spec: &str| refused(&flags(&[], &[spec], &[]));
        let i = |spec: &str| refused(&flags(&[], &[], &[spec]));
        let cases = [
            (p("size_mib=10,mount=/d"), "name=… is missing"),
            (p("name=d,mount=/d"), "size_mib=… is missing"),
            (p("name=d,size_mib=10"), "mount=… is missing"),
            (p("name=d,size_mib=ten,mount=/d"), "not a whole number"),
            (p("name=d,size_mib=-1,mount=/d"), "not a whole number"),
            (p("name=d,size_mib=0,mount=/d"), "1 to 1953125 MiB"),
            (p("name=d,size_mib=1953126,mount=/d"), "1 to 1953125 MiB"),
            (p("name=d,size_mib=10,mount=data"), "relative"),
            (p("name=d,size_mib=10,mount=/"), "root filesystem"),
            (p("name=d,size_mib=10,mount=/a/../b"), "'..'"),
            (p("name=d,size_mib=10,mount=/a b"), "spaces"),
            (p("name=../x,size_mib=10,mount=/d"), "letters, digits"),
            (
                p("name=.hidden,size_mib=10,mount=/d"),
                "does not start with '.'",
            ),
            (p("name=a/b,size_mib=10,mount=/d"), "letters, digits"),
            (
                p(&format!("name={},size_mib=10,mount=/d", "n".repeat(129))),
                "at most 128",
            ),
            (
                p("name=d,size_mib=10,mount=/d,persistence=store"),
                "not supported",
            ),
            (p("name=d,size_mib=10,mount=/d,persistence=cloud"), "host"),
            (p("name=d,name=e,size_mib=10,mount=/d"), "given twice"),
            (p("name=d,size=10,mount=/d"), "unknown key \"size\""),
            (p("name=d,size_mib,mount=/d"), "not key=value"),
            (p("name=,size_mib=1,mount=/d"), "name has no value"),
            (e("size_mib=1001,mount=/t"), "1 to 1000 MiB"),
            (e("size_mib=100,mount=t"), "relative"),
            (e("size_mib=100,mount=/t,name=x"), "unknown key"),
            (i("mount=/o"), "ref=… is missing"),
            (i("ref=nothex,mount=/o"), "not an item hash"),
            (
                i(&format!("ref={},mount=/o,use_latest=yes", "ab".repeat(32))),
                "true or false",
            ),
        ];
        for (message, expected) in cases {
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
        // The flag and the spec are named.
        assert!(p("name=d").starts_with("--persistent-volume \"name=d\": "));
        assert!(e("mount=/t").starts_with("--ephemeral-volume \"mount=/t\": "));
    }

    #[test]
    fn mounts_and_names_are_not_shared() {
        let twice = refused(&flags(
            &["name=a,size_mib=1,mount=/d"],
            &["size_mib=1,mount=/d/"],
            &[],
        ));
        assert!(twice.contains("two volumes are mounted at /d"), "{twice}");
        let named = refused(&flags(
            &["name=a,size_mib=1,mount=/d", "name=a,size_mib=1,mount=/e"],
            &[],
            &[],
        ));
        assert!(
            named.contains("two persistent volumes are named \"a\""),
            "{named}"
        );
    }

    #[test]
    fn listing_reads_the_posted_shapes() {
        let hash = "cd".repeat(32);
        let content = json!({"volumes": [
            {"mount": "/data", "persistence": "host", "name": "data", "size_mib": 1024},
            {"mount": "/tmp/x", "ephemeral": true, "size_mib": 100},
            {"mount": "/opt/x", "ref": hash, "use_latest": true},
        ]});
        let listed = listed_volumes(&content);
        assert_eq!(listed[0]["kind"], "persistent");
        assert_eq!(listed[1]["kind"], "ephemeral");
        assert_eq!(
            listed[2],
            json!({"kind": "immutable", "ref": hash, "use_latest": true, "mount": "/opt/x"})
        );
        assert_eq!(
            summary(&listed),
            "data:1024MiB→/data, ephemeral:100MiB→/tmp/x, ref cdcdcdcd…→/opt/x"
        );
        assert!(listed_volumes(&json!({})).is_empty());
    }
}
