//! The cloud-init NoCloud seed: a small vfat image labelled `CIDATA` holding `user-data`,
//! `meta-data` and, for a static address plan, `network-config`. cloud-init finds it by
//! its label (blkid) at boot, wherever it is attached.
//!
//! The three documents are written as JSON: JSON is YAML, so cloud-init's YAML loader
//! reads them, and serde_json quotes every string, which keeps values from being read
//! as other YAML types or breaking the document's structure.

use super::config::{SeedConfig, SeedMount, StaticNetwork};
use serde_json::{Value, json};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The volume label cloud-init looks for. cloud-init accepts `cidata` or `CIDATA`; FAT
/// labels are upper case by convention (mkfs.fat warns about lower case ones).
pub const SEED_LABEL: &str = "CIDATA";

/// The guest-side name given to the NIC the network configuration matches by MAC.
pub const GUEST_INTERFACE: &str = "eth0";

/// Smallest image made; larger documents get a larger image.
const MIN_IMAGE_BYTES: u64 = 1024 * 1024;
const MIB: u64 = 1024 * 1024;
/// Longer keys are not SSH public keys (a 16384-bit RSA key is about 2.8 KB).
const MAX_SSH_KEY_BYTES: usize = 8192;
const MAX_INSTANCE_ID_BYTES: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("invalid hostname {hostname:?}: {reason}")]
    Hostname { hostname: String, reason: String },
    #[error("invalid instance id {instance_id:?}: {reason}")]
    InstanceId { instance_id: String, reason: String },
    #[error("SSH key #{index} refused: {reason}")]
    SshKey { index: usize, reason: String },
    #[error("network configuration refused: {0}")]
    Network(String),
    #[error("volume mount refused: {0}")]
    Mount(String),
    #[error("writing the cloud-init seed {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// The seed's documents, as they are written into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedDocuments {
    /// `#cloud-config` followed by the cloud-config document.
    pub user_data: String,
    pub meta_data: String,
    /// Network configuration version 2; `None` when the config has no static network.
    pub network_config: Option<String>,
}

impl SeedDocuments {
    /// `(file name in the image, content)`.
    pub fn files(&self) -> Vec<(&'static str, &str)> {
        let mut files = vec![
            ("user-data", self.user_data.as_str()),
            ("meta-data", self.meta_data.as_str()),
        ];
        if let Some(network) = &self.network_config {
            files.push(("network-config", network.as_str()));
        }
        files
    }
}

/// Checks `config` and makes the seed image at `path` (replaced whole if it exists: the
/// image is built beside it and renamed into place).
pub fn write_seed(path: &Path, config: &SeedConfig) -> Result<(), SeedError> {
    let documents = render_seed(config)?;
    let io_error = |source| SeedError::Io {
        path: path.to_owned(),
        source,
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut partial = tempfile::Builder::new()
        .prefix(".cloud-init-seed")
        .tempfile_in(folder)
        .map_err(io_error)?;
    build_image(partial.as_file_mut(), &documents.files()).map_err(io_error)?;
    // Nothing in the seed is secret, and the hypervisor may run as another user.
    use std::os::unix::fs::PermissionsExt;
    partial
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_error)?;
    partial.as_file().sync_all().map_err(io_error)?;
    partial.persist(path).map_err(|e| io_error(e.error))?;
    Ok(())
}

/// Checks `config` and renders the seed's documents.
pub fn render_seed(config: &SeedConfig) -> Result<SeedDocuments, SeedError> {
    check_instance_id(&config.instance_id)?;
    check_hostname(&config.hostname)?;
    for (index, key) in config.ssh_authorized_keys.iter().enumerate() {
        check_ssh_key(key).map_err(|reason| SeedError::SshKey { index, reason })?;
    }
    if let Some(network) = &config.network {
        check_network(network).map_err(SeedError::Network)?;
    }

    for mount in &config.mounts {
        check_mount(mount)?;
    }

    let mut user_data = json!({
        "hostname": config.hostname,
        "ssh_authorized_keys": config.ssh_authorized_keys,
        "disable_root": false,
        "ssh_pwauth": false,
    });
    if !config.mounts.is_empty() {
        // `nofail`: a missing disk must not stop the boot (and with it SSH access).
        let mounts: Vec<Value> = config
            .mounts
            .iter()
            .map(|m| json!([m.device, m.mount_point, "ext4", "defaults,nofail", "0", "2"]))
            .collect();
        user_data["mounts"] = Value::Array(mounts);
    }
    let meta_data = json!({
        "instance-id": config.instance_id,
        "local-hostname": config.hostname,
    });
    Ok(SeedDocuments {
        user_data: format!("#cloud-config\n{}\n", pretty(&user_data)),
        meta_data: format!("{}\n", pretty(&meta_data)),
        network_config: config
            .network
            .as_ref()
            .map(|network| format!("{}\n", pretty(&network_config(network)))),
    })
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("a JSON value always serializes")
}

/// Version 2 (netplan's schema). The gateways are given as `gateway4`/`gateway6` rather
/// than default routes: cloud-init makes each the gateway of the subnet of its family,
/// where `routes` would all be hung on the first (IPv4) subnet. Netplan itself only
/// warns that `gateway4` is deprecated.
fn network_config(network: &StaticNetwork) -> Value {
    let mut addresses = vec![network.ipv4.to_string()];
    addresses.extend(network.ipv6.map(|v6| v6.to_string()));
    let mut ethernet = json!({
        // Matched by MAC because the kernel's name for the NIC differs between machine
        // types and distributions; `set-name` then gives it a known one.
        "match": { "macaddress": network.mac.to_ascii_lowercase() },
        "set-name": GUEST_INTERFACE,
        "addresses": addresses,
        "gateway4": network.gateway_v4.to_string(),
        "nameservers": {
            "addresses": network.nameservers.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        },
    });
    if let Some(gateway) = network.gateway_v6 {
        ethernet["gateway6"] = json!(gateway.to_string());
    }
    json!({
        "version": 2,
        "ethernets": { GUEST_INTERFACE: ethernet },
    })
}

/// Formats `file` as a FAT volume sized for `files` and writes them into its root.
fn build_image(file: &mut std::fs::File, files: &[(&str, &str)]) -> io::Result<()> {
    let content: u64 = files.iter().map(|(_, data)| data.len() as u64).sum();
    // Room for the FAT structures and cluster slack, rounded to whole MiB.
    let size = (content + MIN_IMAGE_BYTES / 2)
        .div_ceil(MIB)
        .saturating_mul(MIB)
        .max(MIN_IMAGE_BYTES);
    file.set_len(0)?;
    file.set_len(size)?;

    let mut label = [b' '; 11];
    label[..SEED_LABEL.len()].copy_from_slice(SEED_LABEL.as_bytes());
    fatfs::format_volume(
        &mut *file,
        fatfs::FormatVolumeOptions::new().volume_label(label),
    )?;
    let fs = fatfs::FileSystem::new(&mut *file, fatfs::FsOptions::new())?;
    {
        let root = fs.root_dir();
        for (name, data) in files {
            let mut entry = root.create_file(name)?;
            entry.truncate()?;
            entry.write_all(data.as_bytes())?;
            entry.flush()?;
        }
    }
    fs.unmount()
}

/// An fstab line's fields: no blanks, no commas (cloud-init joins them), absolute paths.
fn check_mount(mount: &SeedMount) -> Result<(), SeedError> {
    for path in [&mount.device, &mount.mount_point] {
        let valid = path.starts_with('/')
            && path.len() <= 255
            && !path.split('/').any(|part| part == "..")
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
        if !valid {
            return Err(SeedError::Mount(format!(
                "{path:?} is not an absolute path of letters, digits, '/', '-', '_' and '.'"
            )));
        }
    }
    if mount.mount_point == "/" {
        return Err(SeedError::Mount("a volume cannot be mounted on /".into()));
    }
    Ok(())
}

/// cloud-init names a folder after it (`/var/lib/cloud/instances/<id>`).
fn check_instance_id(id: &str) -> Result<(), SeedError> {
    let refuse = |reason: &str| {
        Err(SeedError::InstanceId {
            instance_id: id.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if id.is_empty() {
        return refuse("it is empty");
    }
    if id.len() > MAX_INSTANCE_ID_BYTES {
        return refuse(&format!("longer than {MAX_INSTANCE_ID_BYTES} bytes"));
    }
    if id == "." || id == ".." {
        return refuse("it names a folder's parent or itself");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return refuse("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// RFC 1123: dot-separated labels of 1 to 63 letters, digits and hyphens, not starting
/// or ending with a hyphen; 253 bytes at most in all.
pub fn check_hostname(hostname: &str) -> Result<(), SeedError> {
    let refuse = |reason: String| {
        Err(SeedError::Hostname {
            hostname: hostname.to_owned(),
            reason,
        })
    };
    if hostname.is_empty() {
        return refuse("it is empty".into());
    }
    if hostname.len() > 253 {
        return refuse("longer than 253 bytes".into());
    }
    for label in hostname.split('.') {
        if label.is_empty() {
            return refuse("it has an empty label".into());
        }
        if label.len() > 63 {
            return refuse(format!("label {label:?} is longer than 63 bytes"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return refuse(format!(
                "{bad:?} is not allowed (letters, digits and '-' only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return refuse(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}

/// One `authorized_keys` line. A line break would add lines to the user-data and to
/// `authorized_keys`; U+FFFE and U+FFFF are refused because YAML readers reject them.
fn check_ssh_key(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("it is empty".into());
    }
    if key.len() > MAX_SSH_KEY_BYTES {
        return Err(format!("longer than {MAX_SSH_KEY_BYTES} bytes"));
    }
    if let Some(bad) = key
        .chars()
        .find(|c| c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}'))
    {
        return Err(format!(
            "it contains the control character U+{:04X}; a key is one line",
            u32::from(bad)
        ));
    }
    if key.split_whitespace().count() < 2 {
        return Err("expected `<type> <base64 key> [comment]`".into());
    }
    Ok(())
}

fn check_network(network: &StaticNetwork) -> Result<(), String> {
    check_mac(&network.mac)?;
    let v4 = network.ipv4;
    if !(1..=32).contains(&v4.prefix_len) {
        return Err(format!(
            "IPv4 prefix length /{} is not 1..=32",
            v4.prefix_len
        ));
    }
    if v4.address.is_unspecified() || v4.address.is_multicast() || v4.address.is_broadcast() {
        return Err(format!("{} is not a host address", v4.address));
    }
    if network.gateway_v4 == v4.address || !v4.contains(network.gateway_v4) {
        return Err(format!(
            "IPv4 gateway {} is not another address in {v4}",
            network.gateway_v4
        ));
    }
    match (network.ipv6, network.gateway_v6) {
        (None, Some(gateway)) => {
            return Err(format!(
                "IPv6 gateway {gateway} given without an IPv6 address"
            ));
        }
        (Some(v6), gateway) => {
            if !(1..=128).contains(&v6.prefix_len) {
                return Err(format!(
                    "IPv6 prefix length /{} is not 1..=128",
                    v6.prefix_len
                ));
            }
            if v6.address.is_unspecified() || v6.address.is_multicast() {
                return Err(format!("{} is not a host address", v6.address));
            }
            if let Some(gateway) = gateway
                && (gateway == v6.address || !v6.contains(gateway))
            {
                return Err(format!(
                    "IPv6 gateway {gateway} is not another address in {v6}"
                ));
            }
        }
        (None, None) => {}
    }
    if let Some(bad) = network
        .nameservers
        .iter()
        .find(|ip| ip.is_unspecified() || ip.is_multicast())
    {
        return Err(format!("nameserver {bad} is not a host address"));
    }
    Ok(())
}

/// Six colon-separated hex octets of a unicast address.
fn check_mac(mac: &str) -> Result<(), String> {
    let octets: Vec<&str> = mac.split(':').collect();
    let parsed: Option<Vec<u8>> = (octets.len() == 6)
        .then(|| {
            octets
                .iter()
                .map(|o| {
                    // from_str_radix alone would take a sign ("+f").
                    (o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| u8::from_str_radix(o, 16).ok())
                        .flatten()
                })
                .collect()
        })
        .flatten();
    match parsed {
        None => Err(format!("MAC address {mac:?} is not `aa:bb:cc:dd:ee:ff`")),
        Some(bytes) if bytes[0] & 1 == 1 => {
            Err(format!("MAC address {mac} is a multicast address"))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::config::{Ipv4Cidr, Ipv6Cidr};
    use std::io::Read;
    use std::net::{IpAddr, Ipv4Addr};
    use std::process::Command;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq3b8b5Yp8u2vZx0u1k4QdM6Y6n8Vb0wq4J3o0k1l2m user@host";

    fn network() -> StaticNetwork {
        StaticNetwork {
            mac: "52:54:00:AB:cd:01".into(),
            ipv4: Ipv4Cidr::new(Ipv4Addr::new(172, 16, 4, 2), 24),
            gateway_v4: Ipv4Addr::new(172, 16, 4, 1),
            ipv6: Some(Ipv6Cidr::new("fd00:4::2".parse().unwrap(), 64)),
            gateway_v6: Some("fd00:4::1".parse().unwrap()),
            nameservers: vec![
                IpAddr::V4(Ipv4Addr::new(9, 9, 9, 9)),
                "2620:fe::fe".parse().unwrap(),
            ],
        }
    }

    fn config() -> SeedConfig {
        SeedConfig {
            instance_id: "iid-instance-8f3a".into(),
            hostname: "vm-8f3a.example".into(),
            ssh_authorized_keys: vec![KEY.into(), "ssh-rsa AAAAB3Nza second".into()],
            network: Some(network()),
            mounts: vec![],
        }
    }

    type Image = fatfs::FileSystem<std::fs::File>;

    fn open_image(path: &Path) -> Image {
        let file = std::fs::File::open(path).unwrap();
        fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap()
    }

    fn read(fs: &Image, name: &str) -> String {
        let mut text = String::new();
        fs.root_dir()
            .open_file(name)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    fn names(fs: &Image) -> Vec<String> {
        let mut names: Vec<String> = fs
            .root_dir()
            .iter()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    fn user_data_body(text: &str) -> Value {
        let body = text
            .strip_prefix("#cloud-config\n")
            .expect("user-data starts with #cloud-config");
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn seed_image_holds_the_three_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud-init.img");
        write_seed(&path, &config()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), MIN_IMAGE_BYTES);

        let fs = open_image(&path);
        assert_eq!(fs.volume_label(), "CIDATA");
        assert_eq!(
            fs.read_volume_label_from_root_dir().unwrap().as_deref(),
            Some("CIDATA")
        );
        assert_eq!(names(&fs), ["meta-data", "network-config", "user-data"]);

        let user = user_data_body(&read(&fs, "user-data"));
        assert_eq!(user["hostname"], "vm-8f3a.example");
        assert_eq!(
            user["ssh_authorized_keys"],
            json!([KEY, "ssh-rsa AAAAB3Nza second"])
        );
        assert_eq!(user["disable_root"], false);
        assert_eq!(user["ssh_pwauth"], false);

        let meta: Value = serde_json::from_str(&read(&fs, "meta-data")).unwrap();
        assert_eq!(
            meta,
            json!({"instance-id": "iid-instance-8f3a", "local-hostname": "vm-8f3a.example"})
        );

        let net: Value = serde_json::from_str(&read(&fs, "network-config")).unwrap();
        assert_eq!(net["version"], 2);
        let eth = &net["ethernets"]["eth0"];
        assert_eq!(eth["match"]["macaddress"], "52:54:00:ab:cd:01");
        assert_eq!(eth["set-name"], "eth0");
        assert_eq!(eth["addresses"], json!(["172.16.4.2/24", "fd00:4::2/64"]));
        assert_eq!(eth["gateway4"], "172.16.4.1");
        assert_eq!(eth["gateway6"], "fd00:4::1");
        assert_eq!(
            eth["nameservers"]["addresses"],
            json!(["9.9.9.9", "2620:fe::fe"])
        );
    }

    #[test]
    fn without_a_static_network_there_is_no_network_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud-init.img");
        let mut config = config();
        config.network = None;
        write_seed(&path, &config).unwrap();
        assert_eq!(names(&open_image(&path)), ["meta-data", "user-data"]);
    }

    #[test]
    fn ipv4_only_network_has_no_ipv6_gateway() {
        let mut config = config();
        let network = config.network.as_mut().unwrap();
        network.ipv6 = None;
        network.gateway_v6 = None;
        let net: Value =
            serde_json::from_str(&render_seed(&config).unwrap().network_config.unwrap()).unwrap();
        let eth = &net["ethernets"]["eth0"];
        assert_eq!(eth["addresses"], json!(["172.16.4.2/24"]));
        assert!(eth.get("gateway6").is_none());
    }

    #[test]
    fn rewriting_replaces_the_image_and_large_documents_get_a_larger_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud-init.img");
        write_seed(&path, &config()).unwrap();

        let mut config = config();
        let long_key = format!("ssh-rsa {} big", "A".repeat(MAX_SSH_KEY_BYTES - 20));
        config.ssh_authorized_keys = vec![long_key.clone(); 300];
        config.hostname = "second".into();
        write_seed(&path, &config).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > MIN_IMAGE_BYTES);

        let fs = open_image(&path);
        let user = user_data_body(&read(&fs, "user-data"));
        assert_eq!(user["hostname"], "second");
        assert_eq!(user["ssh_authorized_keys"].as_array().unwrap().len(), 300);
        assert_eq!(user["ssh_authorized_keys"][299], long_key.as_str());
        // Only the image is left in the folder: no partial file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_bad_hostnames() {
        let long_label = "a".repeat(64);
        let long_name = ["abcdefghi"; 26].join(".");
        for bad in [
            "",
            "-vm",
            "vm-",
            "a..b",
            ".vm",
            "vm.",
            "vm_1",
            "vm 1",
            "vm\nruncmd",
            "ünï",
            "vm\"",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            let mut config = config();
            config.hostname = bad.into();
            let err = render_seed(&config).unwrap_err();
            assert!(matches!(err, SeedError::Hostname { .. }), "{bad:?}: {err}");
        }
        for good in ["a", "vm-1", "0x", "A.b-C.d", &"a".repeat(63)] {
            check_hostname(good).unwrap();
        }
    }

    #[test]
    fn refuses_keys_that_are_not_one_line() {
        let too_long = format!("ssh-rsa {}", "A".repeat(MAX_SSH_KEY_BYTES));
        for bad in [
            "ssh-ed25519 AAAA a\nssh-rsa BBBB evil",
            "ssh-ed25519 AAAA a\r",
            "ssh-ed25519\tAAAA",
            "ssh-ed25519 AAAA \u{0}",
            "ssh-ed25519 AAAA \u{85}",
            "ssh-ed25519 AAAA \u{FFFF}",
            "",
            "   ",
            "AAAAC3NzaC1lZDI1NTE5",
            too_long.as_str(),
        ] {
            let mut config = config();
            config.ssh_authorized_keys.push(bad.into());
            let err = render_seed(&config).unwrap_err();
            assert!(
                matches!(err, SeedError::SshKey { index: 2, .. }),
                "{bad:?}: {err}"
            );
        }
        // Options and a non-ASCII comment are part of valid lines.
        let mut config = config();
        config.ssh_authorized_keys =
            vec!["no-port-forwarding,from=\"10.0.0.0/8\" ssh-ed25519 AAAA José".into()];
        render_seed(&config).unwrap();
        config.ssh_authorized_keys.clear();
        render_seed(&config).unwrap();
    }

    #[test]
    fn refuses_bad_instance_ids() {
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "a b",
            "id\n",
            &"i".repeat(129),
        ] {
            let mut config = config();
            config.instance_id = bad.into();
            let err = render_seed(&config).unwrap_err();
            assert!(
                matches!(err, SeedError::InstanceId { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn refuses_bad_networks() {
        type Change = Box<dyn Fn(&mut StaticNetwork)>;
        let cases: Vec<(&str, Change)> = vec![
            ("short MAC", Box::new(|n| n.mac = "52:54:00:ab:cd".into())),
            (
                "MAC with sign",
                Box::new(|n| n.mac = "52:54:00:ab:cd:+1".into()),
            ),
            (
                "MAC with dashes",
                Box::new(|n| n.mac = "52-54-00-ab-cd-01".into()),
            ),
            (
                "multicast MAC",
                Box::new(|n| n.mac = "01:00:5e:00:00:01".into()),
            ),
            ("prefix 0", Box::new(|n| n.ipv4.prefix_len = 0)),
            ("prefix 33", Box::new(|n| n.ipv4.prefix_len = 33)),
            (
                "gateway outside",
                Box::new(|n| n.gateway_v4 = Ipv4Addr::new(172, 16, 5, 1)),
            ),
            (
                "gateway is self",
                Box::new(|n| n.gateway_v4 = n.ipv4.address),
            ),
            (
                "unspecified address",
                Box::new(|n| n.ipv4.address = Ipv4Addr::UNSPECIFIED),
            ),
            ("v6 gateway alone", Box::new(|n| n.ipv6 = None)),
            (
                "v6 gateway outside",
                Box::new(|n| n.gateway_v6 = Some("fd00:5::1".parse().unwrap())),
            ),
            (
                "v6 prefix 129",
                Box::new(|n| n.ipv6.as_mut().unwrap().prefix_len = 129),
            ),
            (
                "multicast nameserver",
                Box::new(|n| n.nameservers.push("224.0.0.1".parse().unwrap())),
            ),
        ];
        for (what, change) in cases {
            let mut config = config();
            change(config.network.as_mut().unwrap());
            let err = render_seed(&config).unwrap_err();
            assert!(matches!(err, SeedError::Network(_)), "{what}: {err}");
        }
    }

    #[test]
    fn refused_input_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud-init.img");
        let mut config = config();
        config.hostname = "bad_name".into();
        assert!(write_seed(&path, &config).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A tool on PATH or in the sbin folders a non-login PATH lacks.
    fn tool(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    }

    fn run(program: &Path, args: &[&std::ffi::OsStr]) -> String {
        let output = Command::new(program).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// The image as the guest's tools see it: fsck, blkid (how cloud-init finds the
    /// seed), mtools, and PyYAML (what cloud-init parses the documents with).
    #[test]
    fn host_tools_accept_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud-init.img");
        write_seed(&path, &config()).unwrap();
        let image = path.as_os_str();
        let documents = render_seed(&config()).unwrap();

        match tool("fsck.vfat") {
            Some(fsck) => {
                run(&fsck, &["-n".as_ref(), image]);
            }
            None => eprintln!("skipping fsck.vfat: not installed (Debian package dosfstools)"),
        }
        match tool("blkid") {
            Some(blkid) => {
                let out = run(
                    &blkid,
                    &["-p".as_ref(), "-o".as_ref(), "export".as_ref(), image],
                );
                assert!(out.lines().any(|l| l == "LABEL=CIDATA"), "{out}");
                assert!(out.lines().any(|l| l == "TYPE=vfat"), "{out}");
            }
            None => eprintln!("skipping blkid: not installed (Debian package util-linux)"),
        }
        match tool("mtype") {
            Some(mtype) => {
                for (name, content) in documents.files() {
                    let inside = format!("::{name}");
                    let out = run(&mtype, &["-i".as_ref(), image, inside.as_ref()]);
                    assert_eq!(out, content, "{name}");
                }
            }
            None => eprintln!("skipping mtype: not installed (Debian package mtools)"),
        }

        const LOAD: &str = "import sys, json, yaml\n\
            text = open(sys.argv[1]).read()\n\
            print(json.dumps(yaml.safe_load(text)))";
        let has_yaml = tool("python3").is_some_and(|python| {
            Command::new(python)
                .args(["-c", "import yaml"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !has_yaml {
            eprintln!(
                "skipping the YAML check: no python3 with PyYAML (Debian package python3-yaml)"
            );
            return;
        }
        let python = tool("python3").unwrap();
        for (name, content) in documents.files() {
            let file = dir.path().join(name);
            std::fs::write(&file, content).unwrap();
            let loaded: Value = serde_json::from_str(&run(
                &python,
                &["-c".as_ref(), LOAD.as_ref(), file.as_os_str()],
            ))
            .unwrap();
            let json_text = content.strip_prefix("#cloud-config\n").unwrap_or(content);
            let expected: Value = serde_json::from_str(json_text).unwrap();
            assert_eq!(
                loaded, expected,
                "{name} reads the same as YAML and as JSON"
            );
        }
    }

    #[test]
    fn volumes_are_mounted_by_their_stable_names_and_bad_paths_refused() {
        let mut config = config();
        config.mounts = vec![SeedMount {
            device: "/dev/disk/by-id/virtio-vol-data".into(),
            mount_point: "/data".into(),
        }];
        let docs = render_seed(&config).unwrap();
        let user_data: Value =
            serde_json::from_str(docs.user_data.strip_prefix("#cloud-config\n").unwrap()).unwrap();
        assert_eq!(
            user_data["mounts"],
            json!([[
                "/dev/disk/by-id/virtio-vol-data",
                "/data",
                "ext4",
                "defaults,nofail",
                "0",
                "2"
            ]])
        );
        for bad in ["data", "/da ta", "/a,b", "/", "/x/../etc"] {
            config.mounts[0].mount_point = bad.into();
            assert!(
                matches!(render_seed(&config), Err(SeedError::Mount(_))),
                "{bad:?} accepted"
            );
        }
    }
}
