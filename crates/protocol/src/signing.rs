//! Building and signing messages with the official `aleph-types` account code,
//! so what we send is byte for byte what the public network's CCN accepts:
//! the content (with `address` and `time` added) as compact JSON inline, its
//! sha256 as `item_hash`, and an EIP-191 signature over
//! `"{chain}\n{sender}\n{type}\n{item_hash}"`.
//!
//! [`Signer::sign`] returns aleph-types' [`PendingMessage`]; serialised with
//! serde it is the envelope a CCN's `POST /api/v0/messages` takes as `message`.

use aleph_types::account::{Account, EvmAccount, SignError, sign_message};
use aleph_types::chain::Chain;
use aleph_types::channel::Channel;
use aleph_types::item_hash::{AlephItemHash, ItemHash};
use aleph_types::message::MessageType;
use aleph_types::message::item_type::ItemType;
use aleph_types::message::pending::PendingMessage;
use aleph_types::message::unsigned::UnsignedMessage;
use aleph_types::timestamp::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value};

/// The CCN's limit for inline content; larger content would have to be stored
/// as a file first.
pub const MAX_INLINE_CONTENT: usize = 200_000;

/// Why a key could not be read or a message not signed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("the private key is not hexadecimal: {0}")]
    KeyNotHex(#[from] hex::FromHexError),
    #[error("the private key must be 32 bytes (64 hex characters), got {0}")]
    KeyLength(usize),
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    #[error("message content must be a JSON object, got {0}")]
    ContentNotObject(Value),
    #[error(
        "message content is {0} bytes, more than the {MAX_INLINE_CONTENT} a CCN accepts inline"
    )]
    ContentTooLarge(usize),
    #[error("serialising the message content: {0}")]
    Json(#[from] serde_json::Error),
    #[error("signing the message: {0}")]
    Sign(#[from] SignError),
}

/// A private key able to sign messages for an EVM chain (Ethereum).
pub struct Signer {
    account: EvmAccount,
}

impl Signer {
    /// From 64 hex characters, with or without `0x`, surrounding spaces ignored.
    pub fn from_hex(private_key: &str) -> Result<Self, SigningError> {
        let trimmed = private_key.trim();
        let digits = trimmed.strip_prefix("0x").unwrap_or(trimmed);
        let bytes = hex::decode(digits)?;
        if bytes.len() != 32 {
            return Err(SigningError::KeyLength(bytes.len()));
        }
        let account = EvmAccount::new(Chain::Ethereum, &bytes)
            .map_err(|e| SigningError::InvalidKey(e.to_string()))?;
        Ok(Self { account })
    }

    /// A fresh random key, returned with its hex form (no `0x`) to store it.
    pub fn generate() -> (Self, String) {
        let key = k256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let hex_key = hex::encode(key.to_bytes());
        let signer = Self::from_hex(&hex_key).expect("a random secp256k1 key is a valid key");
        (signer, hex_key)
    }

    /// The `0x` address, checksummed.
    pub fn address(&self) -> &str {
        self.account.address().as_str()
    }

    /// The chain's short name on the wire (`ETH`).
    pub fn chain(&self) -> String {
        self.account.chain().to_string()
    }

    /// Signs an inline message whose content is `content` (a JSON object once
    /// serialised) plus `address` (this signer) and `time` (now).
    pub fn sign(
        &self,
        message_type: MessageType,
        content: impl Serialize,
        channel: Option<&str>,
    ) -> Result<PendingMessage, SigningError> {
        self.sign_at(message_type, content, channel, Timestamp::now())
    }

    /// [`Signer::sign`] with a given `time`, in the content and the envelope.
    pub fn sign_at(
        &self,
        message_type: MessageType,
        content: impl Serialize,
        channel: Option<&str>,
        time: Timestamp,
    ) -> Result<PendingMessage, SigningError> {
        let content = match serde_json::to_value(content)? {
            Value::Object(map) => map,
            other => return Err(SigningError::ContentNotObject(other)),
        };
        let mut full = Map::new();
        full.insert("address".into(), Value::String(self.address().to_owned()));
        full.insert("time".into(), serde_json::to_value(&time)?);
        full.extend(content);

        let item_content = serde_json::to_string(&Value::Object(full))?;
        if item_content.len() > MAX_INLINE_CONTENT {
            return Err(SigningError::ContentTooLarge(item_content.len()));
        }
        let item_hash = ItemHash::Native(AlephItemHash::from_bytes(item_content.as_bytes()));
        let unsigned = UnsignedMessage {
            message_type,
            item_type: ItemType::Inline,
            item_content,
            item_hash,
            time,
            channel: channel.map(|c| Channel::from(c.to_owned())),
        };
        Ok(sign_message(&self.account, unsigned)?)
    }

    /// EIP-191 `personal_sign` of `bytes`: 65 bytes as `0x` hex
    /// ([`crate::eip191::recover_address`] gives the address back).
    pub fn sign_raw(&self, bytes: &[u8]) -> Result<String, SigningError> {
        Ok(self.account.sign_raw(bytes)?.as_str().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sha2::{Digest, Sha256};

    // The well-known first key of Hardhat/Anvil test chains and its address.
    const KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const ADDRESS: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

    #[test]
    fn address_is_derived_from_the_key_with_or_without_prefix() {
        assert_eq!(Signer::from_hex(KEY).unwrap().address(), ADDRESS);
        assert_eq!(
            Signer::from_hex(&format!(" 0x{KEY}\n")).unwrap().address(),
            ADDRESS
        );
        assert_eq!(Signer::from_hex(KEY).unwrap().chain(), "ETH");
        assert!(matches!(
            Signer::from_hex("abcd"),
            Err(SigningError::KeyLength(2))
        ));
        assert!(matches!(
            Signer::from_hex("zz"),
            Err(SigningError::KeyNotHex(_))
        ));
    }

    #[test]
    fn signed_message_has_compact_content_its_hash_and_a_valid_signature() {
        let signer = Signer::from_hex(KEY).unwrap();
        let content = json!({"key": "k", "content": {"a": 1}});
        let message = signer
            .sign(MessageType::Aggregate, &content, Some("TEST"))
            .unwrap();

        assert!(!message.item_content.contains(": "));
        let parsed: Value = serde_json::from_str(&message.item_content).unwrap();
        assert_eq!(parsed["address"], ADDRESS);
        assert!(parsed["time"].is_f64());
        assert_eq!(parsed["time"].as_f64(), Some(message.time.as_f64()));
        assert_eq!(parsed["key"], "k");
        assert_eq!(parsed["content"]["a"], 1);
        let expected_hash = hex::encode(Sha256::digest(message.item_content.as_bytes()));
        assert_eq!(message.item_hash.to_string(), expected_hash);

        aleph_types::verify_signature::verify(
            &message.chain,
            &message.sender,
            &message.signature,
            message.message_type,
            &message.item_hash,
        )
        .expect("the signature verifies");

        let wire = serde_json::to_value(&message).unwrap();
        assert_eq!(wire["chain"], "ETH");
        assert_eq!(wire["sender"], ADDRESS);
        assert_eq!(wire["type"], "AGGREGATE");
        assert_eq!(wire["item_type"], "inline");
        assert_eq!(wire["item_content"], message.item_content.as_str());
        assert_eq!(wire["item_hash"], expected_hash.as_str());
        assert_eq!(wire["channel"], "TEST");
        assert!(wire["signature"].as_str().unwrap().starts_with("0x"));
    }

    #[test]
    fn a_given_time_gives_the_same_message_and_no_channel_is_left_out() {
        let signer = Signer::from_hex(KEY).unwrap();
        let sign = || {
            signer
                .sign_at(
                    MessageType::Post,
                    json!({"type": "t", "content": {}}),
                    None,
                    Timestamp::from(1.7e9),
                )
                .unwrap()
        };
        let (first, second) = (sign(), sign());
        assert_eq!(first.item_hash, second.item_hash);
        assert_eq!(first.signature, second.signature);
        let wire = serde_json::to_value(&first).unwrap();
        assert_eq!(wire["time"], 1.7e9);
        assert!(wire.get("channel").is_none());
    }

    #[test]
    fn content_must_be_an_object_and_fit_inline() {
        let signer = Signer::from_hex(KEY).unwrap();
        assert!(matches!(
            signer.sign(MessageType::Post, json!([1]), None),
            Err(SigningError::ContentNotObject(_))
        ));
        let large = json!({"content": "x".repeat(MAX_INLINE_CONTENT)});
        assert!(matches!(
            signer.sign(MessageType::Post, large, None),
            Err(SigningError::ContentTooLarge(_))
        ));
    }

    #[test]
    fn generated_keys_differ_and_round_trip() {
        let (first, first_hex) = Signer::generate();
        let (second, _) = Signer::generate();
        assert_ne!(first.address(), second.address());
        assert_eq!(
            Signer::from_hex(&first_hex).unwrap().address(),
            first.address()
        );
    }
}
