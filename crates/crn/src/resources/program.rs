//! The parts of a PROGRAM message's content that a CRN acts on.
//!
//! Parsed leniently (unknown fields ignored, the reference's defaults filled in) since
//! the CCN has already checked the message against the full schema; what this node
//! cannot honour is refused when the VM is prepared, with a reason.

use aleph_protocol::agent::{CodeEncoding, CodeInterface};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramContent {
    /// The owner.
    pub address: String,
    #[serde(default)]
    pub allow_amend: bool,
    pub code: Code,
    pub runtime: Runtime,
    #[serde(default)]
    pub data: Option<Data>,
    #[serde(default)]
    pub variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub environment: Environment,
    /// The original PROGRAM this one amends.
    #[serde(default)]
    pub replaces: Option<String>,
    #[serde(default)]
    pub on: Triggers,
}

/// `on`: what starts the program. Only `persistent` matters here (HTTP requests start
/// any program that is not persistent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Triggers {
    #[serde(default)]
    pub persistent: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Code {
    pub encoding: CodeEncoding,
    pub entrypoint: String,
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default)]
    pub interface: Option<CodeInterface>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub use_latest: bool,
}

impl Code {
    /// `interface` when given, else an entrypoint with `:` (`main:app`) is ASGI and
    /// anything else an executable.
    pub fn interface(&self) -> CodeInterface {
        self.interface.unwrap_or(if self.entrypoint.contains(':') {
            CodeInterface::Asgi
        } else {
            CodeInterface::Binary
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default = "yes")]
    pub use_latest: bool,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Data {
    pub encoding: CodeEncoding,
    pub mount: String,
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default)]
    pub use_latest: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default = "one")]
    pub vcpus: u32,
    /// MiB.
    #[serde(default = "default_memory")]
    pub memory: u64,
    /// The per-request timeout.
    #[serde(default = "one")]
    pub seconds: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory: default_memory(),
            seconds: 1,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    #[serde(default)]
    pub internet: bool,
    #[serde(default)]
    pub aleph_api: bool,
    #[serde(default)]
    pub reproducible: bool,
    #[serde(default)]
    pub shared_cache: bool,
}

/// The three kinds of volume, told apart by their fields as the reference does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Volume {
    Immutable {
        #[serde(rename = "ref")]
        reference: String,
        #[serde(default = "yes")]
        use_latest: bool,
        mount: String,
    },
    Ephemeral {
        ephemeral: bool,
        size_mib: u64,
        mount: String,
    },
    Persistent {
        #[serde(default)]
        parent: Option<serde_json::Value>,
        #[serde(default)]
        persistence: Option<String>,
        name: String,
        size_mib: u64,
        mount: String,
    },
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

fn default_memory() -> u64 {
    128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_interface_rule() {
        let content: ProgramContent = serde_json::from_value(serde_json::json!({
            "address": "0xabc", "time": 1.0, "type": "vm-function", "allow_amend": false,
            "code": {"encoding": "zip", "entrypoint": "main:app", "ref": "c"},
            "runtime": {"ref": "r", "comment": "python"},
            "on": {"http": true},
            "volumes": [
                {"ref": "v", "mount": "/data"},
                {"ephemeral": true, "size_mib": 10, "mount": "/tmp/x"},
                {"persistence": "host", "name": "db", "size_mib": 20, "mount": "/var/db"}
            ]
        }))
        .unwrap();
        assert_eq!(content.resources, Resources::default());
        assert!(!content.code.use_latest && content.runtime.use_latest);
        assert_eq!(content.code.interface(), CodeInterface::Asgi);
        assert!(matches!(
            content.volumes[0],
            Volume::Immutable {
                use_latest: true,
                ..
            }
        ));
        assert!(matches!(
            content.volumes[1],
            Volume::Ephemeral { size_mib: 10, .. }
        ));
        assert!(matches!(&content.volumes[2], Volume::Persistent { name, .. } if name == "db"));

        let mut binary = content.code.clone();
        binary.entrypoint = "server".into();
        assert_eq!(binary.interface(), CodeInterface::Binary);
        binary.interface = Some(CodeInterface::Asgi);
        assert_eq!(binary.interface(), CodeInterface::Asgi);
    }
}
