//! `--rootfs`: a STORE hash as is, else a name looked up in the `vm-images`
//! aggregate (the devnet's publisher, then the public network's).

use super::parse_hash;
use crate::client::CcnClient;
use aleph_protocol::signing::Signer;
use aleph_types::item_hash::ItemHash;
use anyhow::{Result, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The aggregate naming root filesystems (`rootfs: {name: {hash, display_name}}`,
/// `defaults.rootfs`), next to the runtimes programs use.
const VM_IMAGES_KEY: &str = "vm-images";
/// The public network's `vm-images` publisher, as the official clients read it.
const NETWORK_IMAGES_ADDRESS: &str = "0xFba561a84A537fCaa567bb7A2257e7142701ae2A";

/// The root filesystem an instance copies.
#[derive(Debug)]
pub(super) struct Rootfs {
    pub(super) reference: ItemHash,
    /// The aggregate's display name, or the hash's own text when given as one.
    pub(super) name: String,
}

/// `--rootfs`: a 64-hex STORE hash as is, else a name of the `vm-images`
/// aggregate's `rootfs` map, looked up like programs' default runtime.
pub(super) async fn resolve_rootfs(
    client: &CcnClient,
    spec: &str,
    images_address: Option<&str>,
    ccn_url: &str,
) -> Result<Rootfs> {
    let spec = spec.trim();
    if spec.len() == 64 && spec.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Rootfs {
            reference: parse_hash(spec, "--rootfs")?,
            name: "given by hash".to_owned(),
        });
    }
    let candidates = match images_address {
        Some(address) => vec![address.to_owned()],
        None => vec![devnet_images_address()?, NETWORK_IMAGES_ADDRESS.to_owned()],
    };
    let mut problems = Vec::new();
    for address in &candidates {
        match client.aggregate(address, VM_IMAGES_KEY).await? {
            Some(images) => match rootfs_of(&images, spec) {
                Ok(rootfs) => return Ok(rootfs),
                Err(problem) => problems.push(format!("{address}: {problem}")),
            },
            None => problems.push(format!("{address}: no {VM_IMAGES_KEY:?} aggregate")),
        }
    }
    bail!(
        "cannot find the root filesystem {spec:?} on {ccn_url} ({}): pass --rootfs HASH (the STORE of a root filesystem image), or --images-address of the account whose {VM_IMAGES_KEY:?} aggregate names it; a devnet started with its CRN (`aleph-node devnet`) publishes debian12",
        problems.join("; ")
    )
}

/// The entry `name` of a `vm-images` aggregate's `rootfs` map.
fn rootfs_of(images: &Value, name: &str) -> Result<Rootfs> {
    let Some(known) = images["rootfs"].as_object() else {
        bail!("it names no root filesystem");
    };
    let Some(entry) = known.get(name) else {
        let names: Vec<&str> = known.keys().map(String::as_str).collect();
        bail!("it has no rootfs {name:?} (it has: {})", names.join(", "));
    };
    let Some(hash) = entry["hash"].as_str() else {
        bail!("its rootfs {name:?} has no hash");
    };
    Ok(Rootfs {
        reference: parse_hash(hash, &format!("rootfs {name:?}"))?,
        name: entry["display_name"].as_str().unwrap_or(name).to_owned(),
    })
}

/// The devnet's first account (key sha256("aleph-devnet-account-0")), which
/// `aleph-node devnet` publishes `vm-images` with; the same default as programs'.
fn devnet_images_address() -> Result<String> {
    let key = Sha256::digest(b"aleph-devnet-account-0");
    Ok(Signer::from_hex(&hex::encode(key))?.address().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rootfs_name_is_looked_up_in_the_aggregate() {
        let hash = "ab".repeat(32);
        let images = json!({
            "runtimes": {},
            "rootfs": {"debian12": {"hash": hash, "display_name": "Debian 12"}, "broken": {}},
            "defaults": {"runtime": "py", "rootfs": "debian12"},
        });
        let rootfs = rootfs_of(&images, "debian12").unwrap();
        assert_eq!(rootfs.reference.to_string(), hash);
        assert_eq!(rootfs.name, "Debian 12");
        let missing = format!("{}", rootfs_of(&images, "ubuntu").unwrap_err());
        assert!(missing.contains("broken, debian12") || missing.contains("debian12, broken"));
        assert!(format!("{}", rootfs_of(&images, "broken").unwrap_err()).contains("no hash"));
        assert!(format!("{}", rootfs_of(&json!({}), "debian12").unwrap_err()).contains("names no"));
    }
}
