//! Host names of programs: `{base32(hash)}.{domain}`.
//!
//! The label is the RFC 4648 base32 of the hash's 32 bytes, lower case, without the
//! `=` padding (52 characters, under DNS's 63-character label limit), as the public
//! network's CRNs do, so a program keeps the same URL on any node.

use data_encoding::BASE32_NOPAD;

/// Length of the label of a sha256 item hash.
pub const LABEL_LEN: usize = 52;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("{0:?} is not a 64-character hexadecimal item hash")]
    NotAHash(String),
    #[error("{0:?} is not the base32 label of an item hash")]
    NotALabel(String),
}

/// The host name label of a sha256 item hash (64 hex characters).
pub fn encode(item_hash: &str) -> Result<String, HostnameError> {
    let bytes = hex::decode(item_hash)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| HostnameError::NotAHash(item_hash.to_string()))?;
    Ok(BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
}

/// The item hash (lower-case hex) a label names; any letter case is accepted, as DNS
/// names are case-insensitive.
pub fn decode(label: &str) -> Result<String, HostnameError> {
    let not_a_label = || HostnameError::NotALabel(label.to_string());
    if label.len() != LABEL_LEN {
        return Err(not_a_label());
    }
    let bytes = BASE32_NOPAD
        .decode(label.to_ascii_uppercase().as_bytes())
        .map_err(|_| not_a_label())?;
    if bytes.len() != 32 {
        return Err(not_a_label());
    }
    Ok(hex::encode(bytes))
}

/// The item hash named by a `Host` header value `{label}.{domain}[:port]`, when the
/// host is under `domain` and its first label decodes.
pub fn hash_from_host(host: &str, domain: &str) -> Option<String> {
    let host = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let host = host.trim_end_matches('.');
    let domain = domain.trim_matches('.');
    let (label, rest) = host.split_once('.')?;
    if !rest.eq_ignore_ascii_case(domain) {
        return None;
    }
    decode(label).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "cad11970efe9b7478300fd04d7cc91c646ca0a792b9cc718650f86e1ccfac73e";

    #[test]
    fn round_trips_and_is_lower_case_without_padding() {
        let label = encode(HASH).unwrap();
        assert_eq!(label.len(), LABEL_LEN);
        assert!(!label.contains('='));
        assert_eq!(label, label.to_ascii_lowercase());
        assert_eq!(decode(&label).unwrap(), HASH);
        assert_eq!(decode(&label.to_ascii_uppercase()).unwrap(), HASH);
    }

    #[test]
    fn matches_the_rfc_4648_alphabet() {
        // 32 zero bytes are 52 'a's; 0xff.. ends in the last letters of the alphabet.
        assert_eq!(encode(&"00".repeat(32)).unwrap(), "a".repeat(52));
        assert_eq!(
            encode(&"ff".repeat(32)).unwrap(),
            format!("{}q", "7".repeat(51))
        );
    }

    #[test]
    fn rejects_what_is_not_a_hash_or_label() {
        assert!(matches!(encode("abc"), Err(HostnameError::NotAHash(_))));
        assert!(encode(&"zz".repeat(32)).is_err());
        assert!(decode("short").is_err());
        assert!(
            decode(&"1".repeat(52)).is_err(),
            "1 is not in the base32 alphabet"
        );
    }

    #[test]
    fn finds_the_hash_in_a_host_header() {
        let label = encode(HASH).unwrap();
        let hash = Some(HASH.to_string());
        assert_eq!(
            hash_from_host(&format!("{label}.aleph.sh"), "aleph.sh"),
            hash
        );
        assert_eq!(
            hash_from_host(&format!("{label}.ALEPH.sh:4020"), "aleph.sh"),
            hash
        );
        assert_eq!(
            hash_from_host(&format!("{label}.other.sh"), "aleph.sh"),
            None
        );
        assert_eq!(hash_from_host("localhost:4020", "aleph.sh"), None);
        assert_eq!(hash_from_host("www.aleph.sh", "aleph.sh"), None);
    }
}
