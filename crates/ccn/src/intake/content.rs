//! Content schemas of the six message types: the typed parse of `aleph-types`, plus
//! the limits of the reference that the types do not enforce.

use crate::error::{Rejection, code};
use aleph_types::message::{MessageContent, MessageType};
use serde_json::{Map, Value};

pub const MAX_VCPUS: u64 = 256;
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
pub const MAX_AUTHORIZED_KEYS: usize = 256;
pub const MAX_VARIABLES: usize = 256;
pub const MAX_VARIABLE_NAME_CHARS: usize = 128;
pub const MAX_VARIABLE_VALUE_CHARS: usize = 4096;
pub const MAX_VOLUMES: usize = 256;
pub const MAX_FORGET_HASHES: usize = 1000;

/// Parsed, schema-checked content.
#[derive(Debug, Clone)]
pub struct Content {
    pub value: Map<String, Value>,
    pub address: String,
    pub time: f64,
    pub typed: MessageContent,
}

impl Content {
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.value.get(name).and_then(Value::as_str)
    }
}

/// Parses content bytes and checks them against the schema of `message_type`.
pub fn parse(message_type: MessageType, bytes: &[u8]) -> Result<Content, Rejection> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Rejection::format(format!("content is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Rejection::format("content must be a JSON object"));
    };
    let address = match map.get("address") {
        Some(Value::String(a)) if !a.is_empty() => a.clone(),
        _ => {
            return Err(Rejection::format(
                "content.address must be a non-empty string",
            ));
        }
    };
    let time = map
        .get("time")
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite())
        .ok_or_else(|| Rejection::format("content.time must be a number"))?;
    let typed = MessageContent::deserialize_with_type(message_type, bytes).map_err(|e| {
        Rejection::format(format!(
            "content does not match the {} schema: {e}",
            super::envelope::type_name(message_type)
        ))
    })?;
    check_limits(message_type, &map)?;
    Ok(Content {
        value: map,
        address,
        time,
        typed,
    })
}

fn check_limits(message_type: MessageType, content: &Map<String, Value>) -> Result<(), Rejection> {
    match message_type {
        MessageType::Post => {
            if content.get("type").and_then(Value::as_str) == Some("amend")
                && content.get("ref").and_then(Value::as_str).is_none()
            {
                return Err(Rejection::format("an amend POST needs content.ref"));
            }
        }
        MessageType::Store => {
            let item_type = content.get("item_type").and_then(Value::as_str);
            let item_hash = content
                .get("item_hash")
                .and_then(Value::as_str)
                .unwrap_or("");
            let ok = match item_type {
                Some("storage") => super::envelope::is_native_hash(item_hash),
                Some("ipfs") => super::envelope::is_ipfs_cid(item_hash),
                _ => false,
            };
            if !ok {
                return Err(Rejection::format(
                    "STORE content needs item_type storage (sha256 item_hash) or ipfs (CID item_hash)",
                ));
            }
        }
        MessageType::Program | MessageType::Instance => check_executable(message_type, content)?,
        MessageType::Forget => {
            let count = |field: &str| {
                content
                    .get(field)
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            };
            if count("hashes") > MAX_FORGET_HASHES {
                return Err(Rejection::format(format!(
                    "a FORGET lists at most {MAX_FORGET_HASHES} hashes"
                )));
            }
            if count("hashes") + count("aggregates") == 0 {
                return Err(Rejection::new(
                    code::FORGET_NO_TARGET,
                    "FORGET lists no hashes and no aggregates",
                ));
            }
        }
        MessageType::Aggregate | MessageType::VProgram => {}
    }
    Ok(())
}

fn check_executable(
    message_type: MessageType,
    content: &Map<String, Value>,
) -> Result<(), Rejection> {
    let resources = content.get("resources").cloned().unwrap_or(Value::Null);
    let vcpus = resources.get("vcpus").and_then(Value::as_u64).unwrap_or(1);
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(Rejection::format(format!(
            "resources.vcpus must be between 1 and {MAX_VCPUS}"
        )));
    }
    let memory = resources
        .get("memory")
        .and_then(Value::as_u64)
        .unwrap_or(128);
    if memory == 0 || memory > MAX_MEMORY_MIB {
        return Err(Rejection::format(format!(
            "resources.memory must be between 1 and {MAX_MEMORY_MIB} MiB"
        )));
    }
    if let Some(keys) = content.get("authorized_keys").and_then(Value::as_array)
        && keys.len() > MAX_AUTHORIZED_KEYS
    {
        return Err(Rejection::format(format!(
            "at most {MAX_AUTHORIZED_KEYS} authorized_keys"
        )));
    }
    if let Some(variables) = content.get("variables").and_then(Value::as_object) {
        if variables.len() > MAX_VARIABLES {
            return Err(Rejection::format(format!(
                "at most {MAX_VARIABLES} variables"
            )));
        }
        for (name, value) in variables {
            if name.chars().count() > MAX_VARIABLE_NAME_CHARS {
                return Err(Rejection::format(format!(
                    "variable name longer than {MAX_VARIABLE_NAME_CHARS} characters"
                )));
            }
            if value.as_str().map_or(0, |v| v.chars().count()) > MAX_VARIABLE_VALUE_CHARS {
                return Err(Rejection::format(format!(
                    "variable {name} longer than {MAX_VARIABLE_VALUE_CHARS} characters"
                )));
            }
        }
    }
    if content
        .get("volumes")
        .and_then(Value::as_array)
        .is_some_and(|v| v.len() > MAX_VOLUMES)
    {
        return Err(Rejection::format(format!("at most {MAX_VOLUMES} volumes")));
    }
    let requirements = content.get("requirements");
    let node_hash = requirements
        .and_then(|r| r.get("node"))
        .and_then(|n| n.get("node_hash"))
        .and_then(Value::as_str);
    let wants_gpu = requirements
        .and_then(|r| r.get("gpu"))
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty());
    if message_type == MessageType::Instance {
        let payment_type = content
            .get("payment")
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("hold");
        if matches!(payment_type, "superfluid" | "credit") && node_hash.is_none() {
            return Err(Rejection::new(
                code::INVALID_PAYMENT_METHOD,
                format!("{payment_type} payment requires requirements.node.node_hash"),
            ));
        }
        if wants_gpu {
            if node_hash.is_none() {
                return Err(Rejection::format(
                    "a GPU request requires requirements.node.node_hash",
                ));
            }
            let hypervisor = content
                .get("environment")
                .and_then(|e| e.get("hypervisor"))
                .and_then(Value::as_str)
                .unwrap_or("qemu");
            if hypervisor != "qemu" {
                return Err(Rejection::format(
                    "a GPU request requires the qemu hypervisor",
                ));
            }
        }
    } else if wants_gpu {
        return Err(Rejection::format("GPUs can only be requested by instances"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance() -> Value {
        json!({
            "address": "0xabc", "time": 1.0, "allow_amend": false,
            "resources": {"vcpus": 1, "memory": 2048, "seconds": 30},
            "environment": {"internet": true, "aleph_api": true},
            "rootfs": {"parent": {"ref": "a".repeat(64), "use_latest": true},
                       "persistence": "host", "size_mib": 20480},
            "volumes": []
        })
    }

    fn parse_value(t: MessageType, v: &Value) -> Result<Content, Rejection> {
        parse(t, v.to_string().as_bytes())
    }

    #[test]
    fn instance_schema_and_limits() {
        parse_value(MessageType::Instance, &instance()).unwrap();
        let mut v = instance();
        v["resources"]["vcpus"] = json!(300);
        assert!(parse_value(MessageType::Instance, &v).is_err());
        let mut v = instance();
        v["payment"] = json!({"type": "credit"});
        assert_eq!(
            parse_value(MessageType::Instance, &v).unwrap_err().code,
            code::INVALID_PAYMENT_METHOD
        );
        v["requirements"] = json!({"node": {"node_hash": "n"}});
        parse_value(MessageType::Instance, &v).unwrap();
        let mut v = instance();
        v.as_object_mut().unwrap().remove("rootfs");
        assert!(parse_value(MessageType::Instance, &v).is_err());
    }

    #[test]
    fn forget_needs_a_target() {
        let v = json!({"address": "0xabc", "time": 1.0, "hashes": []});
        assert_eq!(
            parse_value(MessageType::Forget, &v).unwrap_err().code,
            code::FORGET_NO_TARGET
        );
    }

    #[test]
    fn aggregate_content_must_be_a_dict() {
        let v = json!({"address": "0xabc", "time": 1.0, "key": "k", "content": [1]});
        assert!(parse_value(MessageType::Aggregate, &v).is_err());
        let v = json!({"address": "0xabc", "time": 1.0, "key": "k", "content": {"a": 1}});
        parse_value(MessageType::Aggregate, &v).unwrap();
    }
}
