//! What a PROGRAM or INSTANCE depends on: the STORE messages of its code, runtime,
//! data and volumes must exist and fit, and an update must be allowed.

use crate::error::{Rejection, code};
use crate::files::FileStore;
use crate::store::messages::{self, status};
use crate::store::{Tx, address_key};
use serde_json::Value;

/// A reference of a VM to a STORE, with what it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub item_hash: String,
    /// `code`, `runtime`, `data`, `rootfs` or `volume`.
    pub role: &'static str,
    /// The size the VM gives this volume, when it copies the file into a volume.
    pub size_mib: Option<u64>,
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_str()
}

pub fn references(content: &Value) -> Vec<Reference> {
    let mut refs = Vec::new();
    for role in ["code", "runtime", "data"] {
        if let Some(hash) = str_at(content, &[role, "ref"]) {
            refs.push(Reference {
                item_hash: hash.to_string(),
                role,
                size_mib: None,
            });
        }
    }
    if let Some(hash) = str_at(content, &["rootfs", "parent", "ref"]) {
        refs.push(Reference {
            item_hash: hash.to_string(),
            role: "rootfs",
            size_mib: content
                .get("rootfs")
                .and_then(|r| r.get("size_mib"))
                .and_then(Value::as_u64),
        });
    }
    for volume in content
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(hash) = volume.get("ref").and_then(Value::as_str) {
            refs.push(Reference {
                item_hash: hash.to_string(),
                role: "volume",
                size_mib: None,
            });
        } else if let Some(hash) = str_at(volume, &["parent", "ref"]) {
            refs.push(Reference {
                item_hash: hash.to_string(),
                role: "volume",
                size_mib: volume.get("size_mib").and_then(Value::as_u64),
            });
        }
    }
    refs
}

pub fn referenced_hashes(content: &Value) -> Vec<String> {
    references(content)
        .into_iter()
        .map(|r| r.item_hash)
        .collect()
}

pub async fn check(
    tx: &mut Tx<'_>,
    files: &FileStore,
    message_type: &str,
    owner: &str,
    content: &Value,
) -> Result<(), Rejection> {
    for reference in references(content) {
        let store = messages::processed_store(tx, &reference.item_hash)
            .await
            .map_err(|e| Rejection::retry(code::VM_REF_NOT_FOUND, e.to_string()))?;
        let Some(store) = store else {
            let missing_code = match reference.role {
                "code" | "runtime" | "data" => code::VM_REF_NOT_FOUND,
                _ => code::VM_VOLUME_NOT_FOUND,
            };
            return Err(Rejection::new(
                missing_code,
                format!(
                    "{} reference {} is not a known STORE message",
                    reference.role, reference.item_hash
                ),
            ));
        };
        if let (Some(size_mib), Some(file_hash)) = (reference.size_mib, store.file_hash.as_deref())
            && let Some(file_size) = files.size(file_hash).await
            && size_mib.saturating_mul(1024 * 1024) < file_size
        {
            return Err(Rejection::new(
                code::VM_VOLUME_TOO_SMALL,
                format!(
                    "{} of {size_mib} MiB is smaller than its parent file ({file_size} bytes)",
                    reference.role
                ),
            ));
        }
    }
    if let Some(replaces) = content.get("replaces").and_then(Value::as_str) {
        let target = messages::get(&mut **tx, replaces)
            .await
            .map_err(|e| Rejection::retry(code::VM_REF_NOT_FOUND, e.to_string()))?;
        let Some(target) = target.filter(|t| t.status == status::PROCESSED) else {
            return Err(Rejection::new(
                code::VM_REF_NOT_FOUND,
                format!("replaced message {replaces} not found"),
            ));
        };
        let target_content = target.content.clone().unwrap_or(Value::Null);
        if target.message_type != message_type || address_key(&target.owner) != address_key(owner) {
            return Err(Rejection::new(
                code::VM_AMEND_NOT_ALLOWED,
                format!("{replaces} is not a {message_type} of the same owner"),
            ));
        }
        if target_content.get("replaces").is_some_and(|r| !r.is_null()) {
            return Err(Rejection::new(
                code::VM_UPDATE_UPDATE,
                format!("{replaces} is itself an update: replace the original"),
            ));
        }
        if target_content.get("allow_amend").and_then(Value::as_bool) != Some(true) {
            return Err(Rejection::new(
                code::VM_AMEND_NOT_ALLOWED,
                format!("{replaces} does not allow amends"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_every_reference() {
        let content = json!({
            "code": {"ref": "c"}, "runtime": {"ref": "r"},
            "rootfs": {"parent": {"ref": "p"}, "size_mib": 10},
            "volumes": [{"ref": "v", "mount": "/a"}, {"parent": {"ref": "q"}, "size_mib": 5},
                        {"ephemeral": true, "size_mib": 5}]
        });
        assert_eq!(referenced_hashes(&content), vec!["c", "r", "p", "v", "q"]);
        assert_eq!(references(&content)[2].size_mib, Some(10));
    }
}
