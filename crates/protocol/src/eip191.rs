//! EIP-191 `personal_sign` over arbitrary bytes: what wallets sign, and the address
//! that signed it. Messages go through `aleph-types`; this is for the other things an
//! EVM key signs here (scheduler requests, heartbeats, operator keys).

use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use sha3::{Digest, Keccak256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    #[error("the signature is not hexadecimal")]
    NotHex,
    #[error("the signature must be 65 bytes, got {0}")]
    Length(usize),
    #[error("the signature does not recover to a key: {0}")]
    Invalid(String),
}

/// `keccak256("\x19Ethereum Signed Message:\n" + len + message)`.
pub fn hash(message: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(format!("\x19Ethereum Signed Message:\n{}", message.len()).as_bytes());
    hasher.update(message);
    hasher.finalize().into()
}

/// The `0x` address (lower case) whose key made `signature` (65 bytes in hex, `v` as
/// 0, 1, 27 or 28) over `message`.
pub fn recover_address(message: &[u8], signature: &str) -> Result<String, RecoverError> {
    let digits = signature.trim().trim_start_matches("0x");
    let bytes = hex::decode(digits).map_err(|_| RecoverError::NotHex)?;
    if bytes.len() != 65 {
        return Err(RecoverError::Length(bytes.len()));
    }
    let v = match bytes[64] {
        v @ 0..=1 => v,
        v @ 27..=28 => v - 27,
        v => return Err(RecoverError::Invalid(format!("recovery byte {v}"))),
    };
    let signature =
        Signature::from_slice(&bytes[..64]).map_err(|e| RecoverError::Invalid(e.to_string()))?;
    let recovery = RecoveryId::from_byte(v).ok_or(RecoverError::Invalid("recovery id".into()))?;
    let key = VerifyingKey::recover_from_prehash(&hash(message), &signature, recovery)
        .map_err(|e| RecoverError::Invalid(e.to_string()))?;
    Ok(address_of(&key))
}

/// The EVM address of a public key, lower case with `0x`.
pub fn address_of(key: &VerifyingKey) -> String {
    let point = key.to_encoded_point(false);
    let digest = Keccak256::digest(&point.as_bytes()[1..]);
    format!("0x{}", hex::encode(&digest[12..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::Signer;

    #[test]
    fn recovers_the_signer_and_nobody_else() {
        let (signer, _) = Signer::generate();
        let signature = signer.sign_raw(b"hello").unwrap();
        let recovered = recover_address(b"hello", &signature).unwrap();
        assert_eq!(recovered, signer.address().to_lowercase());
        let other = recover_address(b"hellO", &signature).unwrap();
        assert_ne!(other, recovered);
        assert_eq!(recover_address(b"x", "0x12"), Err(RecoverError::Length(1)));
        assert_eq!(recover_address(b"x", "zz"), Err(RecoverError::NotHex));
    }
}
