//! Building and signing messages with the official `aleph-types` account code,
//! so what we send is byte for byte what the public network's CCN accepts:
//! the content (with `address` and `time` added) as compact JSON inline, its
//! sha256 as `item_hash`, and an EIP-191 signature over
//! `"{chain}\n{sender}\n{type}\n{item_hash}"`.

use aleph_types::account::{Account, EvmAccount, sign_message};
use aleph_types::chain::Chain;
use aleph_types::channel::Channel;
use aleph_types::item_hash::{AlephItemHash, ItemHash};
use aleph_types::message::MessageType;
use aleph_types::message::item_type::ItemType;
use aleph_types::message::pending::PendingMessage;
use aleph_types::message::unsigned::UnsignedMessage;
use aleph_types::timestamp::Timestamp;
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// The CCN's limit for inline content; larger content would have to be stored
/// as a file first, which no command here needs yet.
const MAX_INLINE_CONTENT: usize = 200_000;

/// A private key able to sign messages for an EVM chain.
pub struct Signer {
    account: EvmAccount,
}

impl Signer {
    /// From 64 hex characters, with or without `0x`.
    pub fn from_hex(private_key: &str) -> Result<Self> {
        let bytes = parse_private_key(private_key)?;
        let account = EvmAccount::new(Chain::Ethereum, &bytes)
            .map_err(|e| anyhow::anyhow!("invalid private key: {e}"))?;
        Ok(Self { account })
    }

    /// A fresh random key, returned with its hex form to store it.
    pub fn generate() -> Result<(Self, String)> {
        let key = k256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let hex_key = hex::encode(key.to_bytes());
        Ok((Self::from_hex(&hex_key)?, hex_key))
    }

    pub fn address(&self) -> &str {
        self.account.address().as_str()
    }

    pub fn chain(&self) -> String {
        self.account.chain().to_string()
    }

    /// Signs a message whose content is `content` plus `address` (this
    /// signer) and `time` (now).
    pub fn sign(
        &self,
        message_type: MessageType,
        content: Map<String, Value>,
        channel: Option<String>,
    ) -> Result<PendingMessage> {
        let time = Timestamp::now();
        let mut full = Map::new();
        full.insert("address".into(), Value::String(self.address().to_owned()));
        full.insert("time".into(), serde_json::to_value(&time)?);
        full.extend(content);

        let item_content = serde_json::to_string(&Value::Object(full))?;
        if item_content.len() > MAX_INLINE_CONTENT {
            bail!(
                "message content is {} bytes, more than the {MAX_INLINE_CONTENT} a CCN accepts inline",
                item_content.len()
            );
        }
        let item_hash = ItemHash::Native(AlephItemHash::from_bytes(item_content.as_bytes()));
        let unsigned = UnsignedMessage {
            message_type,
            item_type: ItemType::Inline,
            item_content,
            item_hash,
            time,
            channel: channel.map(Channel::from),
        };
        sign_message(&self.account, unsigned).context("signing the message")
    }
}

fn parse_private_key(private_key: &str) -> Result<Vec<u8>> {
    let trimmed = private_key.trim();
    let digits = trimmed.strip_prefix("0x").unwrap_or(trimmed);
    let bytes = hex::decode(digits).context("the private key is not hexadecimal")?;
    if bytes.len() != 32 {
        bail!(
            "the private key must be 32 bytes (64 hex characters), got {}",
            bytes.len()
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    // The well-known first key of Hardhat/Anvil test chains and its address.
    const KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const ADDRESS: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

    fn content() -> Map<String, Value> {
        let Value::Object(map) = serde_json::json!({"key": "k", "content": {"a": 1}}) else {
            unreachable!()
        };
        map
    }

    #[test]
    fn address_is_derived_from_the_key_with_or_without_prefix() {
        assert_eq!(Signer::from_hex(KEY).unwrap().address(), ADDRESS);
        assert_eq!(
            Signer::from_hex(&format!("0x{KEY}")).unwrap().address(),
            ADDRESS
        );
        assert!(Signer::from_hex("abcd").is_err());
        assert!(Signer::from_hex("zz").is_err());
    }

    #[test]
    fn signed_message_has_compact_content_its_hash_and_a_valid_signature() {
        let signer = Signer::from_hex(KEY).unwrap();
        let message = signer
            .sign(MessageType::Aggregate, content(), Some("TEST".into()))
            .unwrap();

        assert!(!message.item_content.contains(": "));
        let parsed: Value = serde_json::from_str(&message.item_content).unwrap();
        assert_eq!(parsed["address"], ADDRESS);
        assert!(parsed["time"].is_f64());
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
        assert_eq!(wire["type"], "AGGREGATE");
        assert_eq!(wire["item_type"], "inline");
        assert_eq!(wire["channel"], "TEST");
    }

    #[test]
    fn generated_keys_differ_and_round_trip() {
        let (first, first_hex) = Signer::generate().unwrap();
        let (second, _) = Signer::generate().unwrap();
        assert_ne!(first.address(), second.address());
        assert_eq!(
            Signer::from_hex(&first_hex).unwrap().address(),
            first.address()
        );
    }
}
