//! The message envelope: field formats, item hash and signature.
//! These checks need no database, so they run before the writer lock is taken.

use crate::error::{Rejection, code};
use aleph_types::chain::{Address, Chain, Signature};
use aleph_types::item_hash::ItemHash;
use aleph_types::message::MessageType;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The message types this node accepts.
pub const MESSAGE_TYPES: &[&str] = &[
    "POST",
    "AGGREGATE",
    "STORE",
    "PROGRAM",
    "INSTANCE",
    "FORGET",
];
pub const MAX_CHANNEL_CHARS: usize = 128;
pub const MAX_INLINE_CHARS: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemType {
    Inline,
    Storage,
    Ipfs,
}

impl ItemType {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::Inline => "inline",
            ItemType::Storage => "storage",
            ItemType::Ipfs => "ipfs",
        }
    }
}

/// A message whose envelope fields have the right shape.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub chain: Chain,
    pub sender: String,
    pub message_type: MessageType,
    pub channel: Option<String>,
    pub item_type: ItemType,
    pub item_content: Option<String>,
    pub item_hash: String,
    pub time: f64,
    pub signature: Value,
    /// The message as received, kept for pending and rejected records.
    pub raw: Value,
}

impl Envelope {
    pub fn type_name(&self) -> &'static str {
        type_name(self.message_type)
    }
}

pub fn type_name(message_type: MessageType) -> &'static str {
    match message_type {
        MessageType::Aggregate => "AGGREGATE",
        MessageType::Forget => "FORGET",
        MessageType::Instance => "INSTANCE",
        MessageType::Post => "POST",
        MessageType::Program => "PROGRAM",
        MessageType::Store => "STORE",
        MessageType::VProgram => "V-PROGRAM",
    }
}

fn required_str<'a>(message: &'a Value, field: &str) -> Result<&'a str, Rejection> {
    match message.get(field) {
        None | Some(Value::Null) => Err(Rejection::format(format!(
            "missing field `{field}` in message"
        ))),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Rejection::format(format!(
            "field `{field}` must be a string, got {}",
            json_kind(other)
        ))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The item hash of a `storage` or `inline` item: sha256 of the bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn is_native_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn is_ipfs_cid(hash: &str) -> bool {
    let length_ok = (hash.starts_with("Qm") && (44..=46).contains(&hash.len()))
        || (hash.starts_with("bafy") && hash.len() == 59);
    length_ok && matches!(ItemHash::try_from(hash), Ok(ItemHash::Ipfs(_)))
}

/// Checks the envelope's fields and formats; does not touch content or signature.
pub fn parse(message: &Value) -> Result<Envelope, Rejection> {
    if !message.is_object() {
        return Err(Rejection::format(format!(
            "message must be a JSON object, got {}",
            json_kind(message)
        )));
    }
    let chain_name = required_str(message, "chain")?;
    let chain: Chain = serde_json::from_value(Value::String(chain_name.to_string()))
        .map_err(|_| Rejection::format(format!("unknown chain {chain_name:?}")))?;
    let sender = required_str(message, "sender")?;
    if sender.is_empty() {
        return Err(Rejection::format("empty sender"));
    }
    let type_str = required_str(message, "type")?;
    if !MESSAGE_TYPES.contains(&type_str) {
        return Err(Rejection::format(format!(
            "unknown message type {type_str:?} (expected one of {})",
            MESSAGE_TYPES.join(", ")
        )));
    }
    let message_type: MessageType = serde_json::from_value(Value::String(type_str.into()))
        .map_err(|_| Rejection::format(format!("unknown message type {type_str:?}")))?;
    let channel = match message.get("channel") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if c.chars().count() <= MAX_CHANNEL_CHARS => Some(c.clone()),
        Some(Value::String(_)) => {
            return Err(Rejection::format(format!(
                "channel longer than {MAX_CHANNEL_CHARS} characters"
            )));
        }
        Some(other) => {
            return Err(Rejection::format(format!(
                "field `channel` must be a string, got {}",
                json_kind(other)
            )));
        }
    };
    let item_type = match message.get("item_type") {
        None | Some(Value::Null) => ItemType::Inline,
        Some(Value::String(t)) => match t.as_str() {
            "inline" => ItemType::Inline,
            "storage" => ItemType::Storage,
            "ipfs" => ItemType::Ipfs,
            other => {
                return Err(Rejection::format(format!(
                    "unknown item_type {other:?} (expected inline, storage or ipfs)"
                )));
            }
        },
        Some(other) => {
            return Err(Rejection::format(format!(
                "field `item_type` must be a string, got {}",
                json_kind(other)
            )));
        }
    };
    let item_content = match message.get("item_content") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(other) => {
            return Err(Rejection::format(format!(
                "field `item_content` must be a string, got {}",
                json_kind(other)
            )));
        }
    };
    let item_hash = required_str(message, "item_hash")?.to_string();
    match item_type {
        ItemType::Inline => {
            let content = item_content
                .as_ref()
                .ok_or_else(|| Rejection::format("inline message without item_content"))?;
            if content.chars().count() > MAX_INLINE_CHARS {
                return Err(Rejection::format(format!(
                    "item_content longer than {MAX_INLINE_CHARS} characters: use item_type storage"
                )));
            }
            if !is_native_hash(&item_hash) {
                return Err(Rejection::format(format!(
                    "item_hash {item_hash:?} is not a sha256 hex digest"
                )));
            }
        }
        ItemType::Storage => {
            if item_content.is_some() {
                return Err(Rejection::format(
                    "item_content must be absent for item_type storage",
                ));
            }
            if !is_native_hash(&item_hash) {
                return Err(Rejection::format(format!(
                    "item_hash {item_hash:?} is not a sha256 hex digest"
                )));
            }
        }
        ItemType::Ipfs => {
            if item_content.is_some() {
                return Err(Rejection::format(
                    "item_content must be absent for item_type ipfs",
                ));
            }
            if !is_ipfs_cid(&item_hash) {
                return Err(Rejection::format(format!(
                    "item_hash {item_hash:?} is not an IPFS CID"
                )));
            }
        }
    }
    let time = match message.get("time") {
        Some(Value::Number(n)) => n.as_f64().filter(|t| t.is_finite() && *t >= 0.0),
        _ => None,
    }
    .ok_or_else(|| Rejection::format("field `time` must be a non-negative number of seconds"))?;
    let signature = match message.get("signature") {
        Some(s @ Value::String(_)) | Some(s @ Value::Object(_)) => s.clone(),
        None | Some(Value::Null) => {
            return Err(Rejection::new(code::SIGNATURE, "missing signature"));
        }
        Some(other) => {
            return Err(Rejection::format(format!(
                "field `signature` must be a string, got {}",
                json_kind(other)
            )));
        }
    };
    Ok(Envelope {
        chain,
        sender: sender.to_string(),
        message_type,
        channel,
        item_type,
        item_content,
        item_hash,
        time,
        signature,
        raw: message.clone(),
    })
}

/// Inline items: the hash must be the sha256 of `item_content`.
pub fn check_inline_hash(envelope: &Envelope) -> Result<(), Rejection> {
    if let (ItemType::Inline, Some(content)) = (envelope.item_type, &envelope.item_content) {
        let computed = sha256_hex(content.as_bytes());
        if computed != envelope.item_hash {
            return Err(Rejection::format(format!(
                "item_hash does not match item_content: sha256 is {computed}, message says {}",
                envelope.item_hash
            )));
        }
    }
    Ok(())
}

/// The signature over `"{chain}\n{sender}\n{type}\n{item_hash}"`, checked with
/// `aleph-types` (EIP-191 for EVM chains, Ed25519 for Solana-like chains).
pub fn check_signature(envelope: &Envelope) -> Result<(), Rejection> {
    let signature: Signature = serde_json::from_value(envelope.signature.clone())
        .map_err(|e| Rejection::new(code::SIGNATURE, format!("unreadable signature: {e}")))?;
    let item_hash = ItemHash::try_from(envelope.item_hash.as_str())
        .map_err(|e| Rejection::format(format!("invalid item_hash: {e}")))?;
    aleph_types::verify_signature::verify(
        &envelope.chain,
        &Address::from(envelope.sender.clone()),
        &signature,
        envelope.message_type,
        &item_hash,
    )
    .map_err(|e| match e {
        aleph_types::verify_signature::SignatureVerificationError::UnsupportedChain(chain) => {
            Rejection::new(
                code::SIGNATURE,
                format!("signatures of chain {chain} cannot be verified by this node"),
            )
        }
        other => Rejection::new(code::SIGNATURE, format!("invalid signature: {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inline(content: &str) -> Value {
        json!({
            "chain": "ETH", "sender": "0xabc", "type": "POST", "item_type": "inline",
            "item_content": content, "item_hash": sha256_hex(content.as_bytes()),
            "time": 1.5, "signature": "0x00", "channel": "TEST"
        })
    }

    #[test]
    fn accepts_a_well_formed_inline_envelope() {
        let e = parse(&inline("{}")).unwrap();
        assert_eq!(e.item_type, ItemType::Inline);
        assert_eq!(e.type_name(), "POST");
        check_inline_hash(&e).unwrap();
    }

    #[test]
    fn rejects_unknown_chain_type_and_item_type() {
        let mut m = inline("{}");
        m["chain"] = json!("NOPE");
        assert!(parse(&m).unwrap_err().message.contains("unknown chain"));
        let mut m = inline("{}");
        m["type"] = json!("V-PROGRAM");
        assert!(
            parse(&m)
                .unwrap_err()
                .message
                .contains("unknown message type")
        );
        let mut m = inline("{}");
        m["item_type"] = json!("disk");
        assert!(parse(&m).unwrap_err().message.contains("item_type"));
    }

    #[test]
    fn rejects_hash_mismatch_and_long_channel() {
        let mut m = inline("{}");
        m["item_content"] = json!("{ }");
        let e = parse(&m).unwrap();
        assert_eq!(check_inline_hash(&e).unwrap_err().code, code::FORMAT);
        let mut m = inline("{}");
        m["channel"] = json!("x".repeat(129));
        assert!(parse(&m).is_err());
    }

    #[test]
    fn ipfs_hashes_must_be_cids() {
        let mut m = inline("{}");
        m["item_type"] = json!("ipfs");
        m.as_object_mut().unwrap().remove("item_content");
        assert!(parse(&m).is_err());
        m["item_hash"] = json!("QmYULJoNGPDmoRq4WNWTDTUvJGJv1hosox8H6vVd1kCsY8");
        assert!(parse(&m).is_ok());
    }
}
