//! The VM owner's request signature: `X-SignedPubKey` + `X-SignedOperation`.
//!
//! How the public network's CRN (aleph-vm, `orchestrator/views/authentication.py`,
//! `doc/operator_auth.md`) and the official client (aleph-sdk-python,
//! `client/vm_client.py`, `utils.py::create_control_payload`) speak it, as of 2026:
//!
//! - The client makes an ephemeral P-256 key. Its wallet authorises it once by signing
//!   `X-SignedPubKey: {"payload": hex(JSON), "signature": "0x…"}` where the JSON is
//!   `{"pubkey": {"crv":"P-256","kty":"EC","x":…,"y":…}, "alg":"ECDSA", "domain":…,
//!   "address":"0x…", "expires":"2026-11-24T16:00:00.123456Z", "chain":"ETH"}`.
//!   `x`/`y` are base64url without padding. The SDK adds `sender` and `content` next
//!   to `payload`/`signature`; nobody reads them.
//! - **What the wallet signs**: EIP-191 `personal_sign` over the payload's JSON *bytes*
//!   (upstream: `encode_defunct(hexstr=payload)`, i.e. the hex decoded), not over the hex
//!   text. Signature: 65 bytes, `0x` hex.
//! - Each request carries `X-SignedOperation: {"payload": hex(JSON), "signature": hex}`
//!   with JSON `{"time":"2026-11-23T16:21:29.123456Z","method":"POST","path":"/control/…",
//!   "domain":"crn.example.org"}`, signed ES256 by the ephemeral key: SHA-256 and ECDSA
//!   P-256, the signature as raw `r‖s` (64 bytes, JOSE style, not DER) in hex without
//!   `0x` (a `0x` is tolerated). Upstream's clients use random nonces and do not
//!   normalise `s`, so high-`s` signatures are valid.
//! - Both payloads are verified over the bytes received; upstream's clients send Python's
//!   `json.dumps` spacing (`", "`, `": "`), ours sends compact JSON. Unknown fields are
//!   ignored.
//! - `expires` and `time` are ISO 8601 with a time zone (`Z` appended by the SDK, with
//!   microseconds); we also take epoch seconds as a JSON number (the console once sent
//!   `expires` so; upstream's `time` model accepts numbers too). We send whole seconds
//!   with `Z`. The key is valid while `expires > now`; the operation while
//!   `|time - now| ≤ 120 s` (bounds included).
//! - `domain` is compared with the node's configured domain name (not the `Host`
//!   header), `path` with the request path without query string, both as upstream does;
//!   we ignore ASCII case in `domain` and `method` (upstream: exact, `method` one of
//!   GET/POST/DELETE). The pubkey payload's `domain` is not checked, as upstream.
//! - Only `chain: "ETH"` (the default when absent) is accepted: upstream also takes `SOL`
//!   (ed25519 over the hex text), which this crate cannot verify.
//! - The wallet's address must then own the VM or be delegated in the owner's `security`
//!   aggregate ([`authorizes`], the caller's job since it needs the CCN).
//!
//! Where we differ: upstream answers 400 to missing or malformed headers and has no
//! replay guard; we answer 401 ([`OperatorAuthError::status`]) and accept each signed
//! operation once ([`ReplayGuard`]).

use crate::eip191;
use crate::signing::{Signer, SigningError};
use data_encoding::BASE64URL_NOPAD;
use p256::FieldBytes;
use p256::ecdsa::signature::{RandomizedSigner, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const SIGNED_PUBKEY_HEADER: &str = "X-SignedPubKey";
pub const SIGNED_OPERATION_HEADER: &str = "X-SignedOperation";
/// How far an operation's `time` may be from the receiver's clock, either way.
pub const MAX_SKEW_SECONDS: i64 = 120;
/// The only wallet chain we verify.
pub const CHAIN_ETH: &str = "ETH";
/// The `alg` the official clients put next to the key.
pub const PUBKEY_ALG: &str = "ECDSA";
/// The message type a `security` delegation must allow (upstream checks it for every VM).
const DELEGATED_TYPE: &str = "INSTANCE";

/// The `X-SignedPubKey` header: the ephemeral key's payload and the wallet's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPubKey {
    /// Hex of the [`PubKeyPayload`] JSON bytes.
    pub payload: String,
    /// EIP-191 signature of the payload bytes, `0x` + 65 bytes hex.
    pub signature: String,
}

/// What the wallet signs: the ephemeral key and how long it may act for `address`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PubKeyPayload {
    pub pubkey: PublicJwk,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Informative: upstream does not check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub address: String,
    pub expires: WireTime,
    #[serde(default = "default_chain")]
    pub chain: String,
}

fn default_chain() -> String {
    CHAIN_ETH.to_owned()
}

/// A P-256 public key as a JWK (RFC 7517); fields in jwcrypto's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub crv: String,
    pub kty: String,
    /// base64url, no padding, 32 bytes.
    pub x: String,
    pub y: String,
}

/// The `X-SignedOperation` header: one request, signed by the ephemeral key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOperation {
    /// Hex of the [`OperationPayload`] JSON bytes.
    pub payload: String,
    /// ES256 signature of the payload bytes: hex of `r‖s` (64 bytes).
    pub signature: String,
}

/// What the ephemeral key signs; fields in the SDK's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationPayload {
    pub time: WireTime,
    pub method: String,
    pub path: String,
    pub domain: String,
}

/// A point in time as it travels: ISO 8601 text (what clients send) or epoch seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WireTime {
    Text(String),
    Seconds(f64),
}

impl WireTime {
    /// `YYYY-MM-DDTHH:MM:SSZ`, what our client sends.
    pub fn from_unix(seconds: i64) -> Self {
        Self::Text(rfc3339::format(seconds))
    }

    /// Milliseconds since the epoch; `None` for text that is not ISO 8601 with a zone.
    pub fn unix_millis(&self) -> Option<i64> {
        match self {
            Self::Text(text) => rfc3339::parse_millis(text),
            Self::Seconds(s) if s.is_finite() && s.abs() < 1e15 => Some((s * 1000.0) as i64),
            Self::Seconds(_) => None,
        }
    }
}

/// Why an operator request is refused. [`OperatorAuthError::status`] maps it to HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorAuthError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("malformed {header}: {reason}")]
    Malformed {
        header: &'static str,
        reason: String,
    },
    #[error("chain {0} is not supported (only ETH)")]
    UnsupportedChain(String),
    #[error("the wallet's signature of the key is invalid: {0}")]
    BadWalletSignature(String),
    #[error("the signed key expired at {0}")]
    KeyExpired(String),
    #[error("the operation's signature is invalid: {0}")]
    BadOperationSignature(String),
    #[error(
        "the operation was signed {0} s away from this node's clock (at most {MAX_SKEW_SECONDS} s)"
    )]
    TimeSkew(i64),
    #[error("the signed operation does not match this request: {0}")]
    Mismatch(String),
    #[error("this signed operation was already used")]
    Replayed,
    #[error("{0} neither owns this VM nor is authorized by its owner")]
    NotOwner(String),
}

impl OperatorAuthError {
    /// 403 for a valid signature by someone not allowed, 401 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotOwner(_) => 403,
            _ => 401,
        }
    }
}

/// An ephemeral key authorised by a wallet: our CLI's side of the scheme.
pub struct OperatorKey {
    key: SigningKey,
    address: String,
    expires: i64,
    signed_pubkey: String,
}

impl OperatorKey {
    /// A fresh key, valid for `expires_in` from now (upstream's SDK uses one day).
    pub fn generate(signer: &Signer, expires_in: Duration) -> Result<Self, SigningError> {
        let expires = unix_now().saturating_add(expires_in.as_secs() as i64);
        Self::generate_until(signer, expires)
    }

    /// A fresh key valid until `expires` (epoch seconds), its public JWK signed by
    /// `signer`'s wallet.
    pub fn generate_until(signer: &Signer, expires: i64) -> Result<Self, SigningError> {
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let payload = PubKeyPayload {
            pubkey: PublicJwk::of(key.verifying_key()),
            alg: Some(PUBKEY_ALG.to_owned()),
            domain: None,
            address: signer.address().to_owned(),
            expires: WireTime::from_unix(expires),
            chain: signer.chain(),
        };
        let payload = serde_json::to_vec(&payload)?;
        let header = SignedPubKey {
            signature: signer.sign_raw(&payload)?,
            payload: hex::encode(payload),
        };
        Ok(Self {
            key,
            address: signer.address().to_owned(),
            expires,
            signed_pubkey: serde_json::to_string(&header)?,
        })
    }

    /// The wallet address this key acts for (checksummed).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// When the wallet's authorisation ends (epoch seconds).
    pub fn expires(&self) -> i64 {
        self.expires
    }

    /// The two headers for a request `method domain path` made at `now` (epoch seconds).
    /// `domain` is the node's host name, `path` the URL path without query string.
    pub fn headers(
        &self,
        method: &str,
        domain: &str,
        path: &str,
        now: i64,
    ) -> [(&'static str, String); 2] {
        let payload = OperationPayload {
            time: WireTime::from_unix(now),
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            domain: domain.to_owned(),
        };
        let payload = serde_json::to_vec(&payload).expect("an operation payload serialises");
        // Random nonces, as upstream's clients: two operations signed in the same second
        // then differ, which keeps the replay guard from refusing the second.
        let signature: Signature = self.key.sign_with_rng(&mut rand::rngs::OsRng, &payload);
        let operation = SignedOperation {
            payload: hex::encode(&payload),
            signature: hex::encode(signature.to_bytes()),
        };
        [
            (SIGNED_PUBKEY_HEADER, self.signed_pubkey.clone()),
            (
                SIGNED_OPERATION_HEADER,
                serde_json::to_string(&operation).expect("a signed operation serialises"),
            ),
        ]
    }
}

impl PublicJwk {
    /// The JWK of a P-256 public key.
    pub fn of(key: &VerifyingKey) -> Self {
        let point = key.to_encoded_point(false);
        let coordinate = |c: Option<&FieldBytes>| {
            BASE64URL_NOPAD.encode(c.expect("an uncompressed point has coordinates"))
        };
        Self {
            crv: "P-256".to_owned(),
            kty: "EC".to_owned(),
            x: coordinate(point.x()),
            y: coordinate(point.y()),
        }
    }

    /// The key, if this is a P-256 point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, String> {
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(format!("a {} {} key, not EC P-256", self.kty, self.crv));
        }
        let coordinate = |c: &str| {
            // Padding is not in the JWK spec but costs nothing to tolerate.
            BASE64URL_NOPAD
                .decode(c.trim_end_matches('=').as_bytes())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| format!("coordinate {c:?} is not 32 bytes of base64url"))
        };
        // SEC1 uncompressed: 0x04, x, y.
        let mut sec1 = vec![0x04];
        sec1.extend(coordinate(&self.x)?);
        sec1.extend(coordinate(&self.y)?);
        VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| "not a point of P-256".to_owned())
    }
}

/// A request whose operator signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The wallet that authorised the key, lower case `0x`.
    pub address: String,
    /// The operation's `time`, epoch milliseconds.
    pub time_ms: i64,
    /// Names this signed operation for [`ReplayGuard`]: sha256 of both payloads and the
    /// signature's `r` (`s` can be negated by anyone, `r` cannot).
    pub replay_key: String,
}

/// Checks the two header values (if present) against the request `method domain path`
/// at `now` (epoch seconds). `domain` is this node's configured domain name, `path` the
/// request path without query string. Ownership is the caller's: see [`authorizes`].
pub fn verify(
    signed_pubkey: Option<&str>,
    signed_operation: Option<&str>,
    method: &str,
    domain: &str,
    path: &str,
    now: i64,
) -> Result<Verified, OperatorAuthError> {
    let signed_pubkey: SignedPubKey = parse_header(SIGNED_PUBKEY_HEADER, signed_pubkey)?;
    let signed_operation: SignedOperation =
        parse_header(SIGNED_OPERATION_HEADER, signed_operation)?;
    verify_signed(&signed_pubkey, &signed_operation, method, domain, path, now)
}

/// [`verify`] on parsed headers, e.g. from the websocket `auth` packet where both come
/// as JSON objects.
pub fn verify_signed(
    signed_pubkey: &SignedPubKey,
    signed_operation: &SignedOperation,
    method: &str,
    domain: &str,
    path: &str,
    now: i64,
) -> Result<Verified, OperatorAuthError> {
    let key = signed_pubkey.verify(now)?;
    let op_bytes = decode_hex(
        SIGNED_OPERATION_HEADER,
        "payload",
        &signed_operation.payload,
    )?;
    let op_payload: OperationPayload =
        serde_json::from_slice(&op_bytes).map_err(|e| malformed(SIGNED_OPERATION_HEADER, e))?;
    let time_ms = op_payload
        .time
        .unix_millis()
        .ok_or_else(|| malformed(SIGNED_OPERATION_HEADER, "time is not an ISO 8601 time"))?;
    let sig_bytes = decode_hex(
        SIGNED_OPERATION_HEADER,
        "signature",
        &signed_operation.signature,
    )?;
    let op_signature = Signature::from_slice(&sig_bytes).map_err(|_| {
        malformed(
            SIGNED_OPERATION_HEADER,
            "the signature is not 64 bytes of r‖s",
        )
    })?;
    key.key.verify(&op_bytes, &op_signature).map_err(|_| {
        OperatorAuthError::BadOperationSignature("not made by the signed key".into())
    })?;

    let skew_ms = time_ms - now.saturating_mul(1000);
    if skew_ms.abs() > MAX_SKEW_SECONDS * 1000 {
        return Err(OperatorAuthError::TimeSkew(skew_ms / 1000));
    }
    if !op_payload.method.eq_ignore_ascii_case(method) {
        return Err(OperatorAuthError::Mismatch(format!(
            "signed for {}, sent as {method}",
            op_payload.method
        )));
    }
    if !op_payload.domain.eq_ignore_ascii_case(domain) {
        return Err(OperatorAuthError::Mismatch(format!(
            "signed for domain {}, this node is {domain}",
            op_payload.domain
        )));
    }
    if op_payload.path != path {
        return Err(OperatorAuthError::Mismatch(format!(
            "signed for {}, sent to {path}",
            op_payload.path
        )));
    }

    let mut replay = Sha256::new();
    for part in [&key.payload_bytes[..], &op_bytes[..], &sig_bytes[..32]] {
        replay.update((part.len() as u64).to_be_bytes());
        replay.update(part);
    }
    Ok(Verified {
        address: key.address,
        time_ms,
        replay_key: hex::encode(replay.finalize()),
    })
}

/// An ephemeral key its wallet vouches for, not expired: [`SignedPubKey::verify`].
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    /// The wallet, lower case `0x`.
    pub address: String,
    pub key: VerifyingKey,
    pub payload: PubKeyPayload,
    /// The payload as signed.
    pub payload_bytes: Vec<u8>,
}

impl SignedPubKey {
    /// The first half of [`verify`]: the payload parses, names an ETH wallet whose
    /// EIP-191 signature it carries, has not expired at `now` (epoch seconds) and holds a
    /// P-256 key.
    pub fn verify(&self, now: i64) -> Result<AuthorizedKey, OperatorAuthError> {
        let payload_bytes = decode_hex(SIGNED_PUBKEY_HEADER, "payload", &self.payload)?;
        let payload: PubKeyPayload = serde_json::from_slice(&payload_bytes)
            .map_err(|e| malformed(SIGNED_PUBKEY_HEADER, e))?;
        let expires_ms = payload
            .expires
            .unix_millis()
            .ok_or_else(|| malformed(SIGNED_PUBKEY_HEADER, "expires is not an ISO 8601 time"))?;
        if payload.chain != CHAIN_ETH {
            return Err(OperatorAuthError::UnsupportedChain(payload.chain));
        }
        let address = eip191::recover_address(&payload_bytes, &self.signature)
            .map_err(|e| OperatorAuthError::BadWalletSignature(e.to_string()))?;
        if !address.eq_ignore_ascii_case(&payload.address) {
            return Err(OperatorAuthError::BadWalletSignature(format!(
                "signed by {address}, not {}",
                payload.address
            )));
        }
        if expires_ms <= now.saturating_mul(1000) {
            return Err(OperatorAuthError::KeyExpired(match &payload.expires {
                WireTime::Text(text) => text.clone(),
                WireTime::Seconds(s) => s.to_string(),
            }));
        }
        let key = payload
            .pubkey
            .verifying_key()
            .map_err(|e| malformed(SIGNED_PUBKEY_HEADER, format!("pubkey: {e}")))?;
        Ok(AuthorizedKey {
            address,
            key,
            payload,
            payload_bytes,
        })
    }
}

/// Whether `address` may operate a VM owned by `owner`: it is the owner, or the owner's
/// `security` aggregate (the value under `data.security` of
/// `GET /api/v0/aggregates/{owner}.json?keys=security`) lists it in `authorizations`.
///
/// As upstream: addresses compare ignoring ASCII case; an entry with a non-empty `types`
/// list counts only if it holds `"INSTANCE"` (for programs too); `chain`, `channels`,
/// `post_types` and `aggregate_keys` filter messages, not operations, and are ignored.
pub fn authorizes(
    owner: &str,
    security_aggregate: Option<&serde_json::Value>,
    address: &str,
) -> bool {
    if owner.eq_ignore_ascii_case(address) {
        return true;
    }
    let Some(entries) = security_aggregate
        .and_then(|security| security.get("authorizations"))
        .and_then(|entries| entries.as_array())
    else {
        return false;
    };
    entries.iter().any(|entry| {
        let types_allow = match entry.get("types").and_then(|t| t.as_array()) {
            Some(types) if !types.is_empty() => {
                types.iter().any(|t| t.as_str() == Some(DELEGATED_TYPE))
            }
            _ => true,
        };
        let address_matches = entry
            .get("address")
            .and_then(|a| a.as_str())
            .is_some_and(|a| a.eq_ignore_ascii_case(address));
        types_allow && address_matches
    })
}

/// [`authorizes`] as a result: [`OperatorAuthError::NotOwner`] (403) when refused.
pub fn check_authorized(
    owner: &str,
    security_aggregate: Option<&serde_json::Value>,
    verified: &Verified,
) -> Result<(), OperatorAuthError> {
    if authorizes(owner, security_aggregate, &verified.address) {
        Ok(())
    } else {
        Err(OperatorAuthError::NotOwner(verified.address.clone()))
    }
}

/// Remembers the signed operations accepted within the time window, so that each is
/// accepted once. Entries leave once their `time` is out of the window, where
/// [`verify`] refuses them anyway.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<String, i64>>,
}

impl ReplayGuard {
    /// Records `verified`; [`OperatorAuthError::Replayed`] when it was seen before.
    pub fn check(&self, verified: &Verified, now: i64) -> Result<(), OperatorAuthError> {
        let now_ms = now.saturating_mul(1000);
        let mut seen = self.seen.lock().expect("replay guard poisoned");
        seen.retain(|_, time_ms| (*time_ms - now_ms).abs() <= MAX_SKEW_SECONDS * 1000);
        if seen
            .insert(verified.replay_key.clone(), verified.time_ms)
            .is_some()
        {
            return Err(OperatorAuthError::Replayed);
        }
        Ok(())
    }

    /// How many operations are remembered.
    pub fn len(&self) -> usize {
        self.seen.lock().expect("replay guard poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn parse_header<T: for<'de> Deserialize<'de>>(
    header: &'static str,
    value: Option<&str>,
) -> Result<T, OperatorAuthError> {
    let value = value
        .filter(|v| !v.trim().is_empty())
        .ok_or(OperatorAuthError::Missing(header))?;
    serde_json::from_str(value).map_err(|e| malformed(header, e))
}

fn decode_hex(header: &'static str, field: &str, text: &str) -> Result<Vec<u8>, OperatorAuthError> {
    let digits = text.trim();
    let digits = digits.strip_prefix("0x").unwrap_or(digits);
    hex::decode(digits).map_err(|_| malformed(header, format!("{field} is not hexadecimal")))
}

fn malformed(header: &'static str, reason: impl ToString) -> OperatorAuthError {
    OperatorAuthError::Malformed {
        header,
        reason: reason.to_string(),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The ISO 8601 times clients send: RFC 3339, and the `±HHMM` zones and space
/// separator Python also writes.
mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};

    /// A time with its zone (required) to epoch milliseconds.
    pub fn parse_millis(text: &str) -> Option<i64> {
        let text = text.trim();
        DateTime::parse_from_rfc3339(text)
            .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
            .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%z"))
            .ok()
            .map(|time| time.timestamp_millis())
    }

    /// Epoch seconds as `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn format(seconds: i64) -> String {
        DateTime::<Utc>::from_timestamp(seconds, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_what_clients_send_and_formats_back() {
            // 2010-12-25T17:05:55Z, upstream's test clock.
            let t = 1_293_296_755;
            assert_eq!(parse_millis("2010-12-25T17:05:55Z"), Some(t * 1000));
            assert_eq!(
                parse_millis("2010-12-25T17:05:55.754994Z"),
                Some(t * 1000 + 754)
            );
            assert_eq!(
                parse_millis("2010-12-25T18:05:55.5+01:00"),
                Some(t * 1000 + 500)
            );
            assert_eq!(parse_millis("2010-12-25 16:05:55-0100"), Some(t * 1000));
            assert_eq!(format(t), "2010-12-25T17:05:55Z");
            assert_eq!(format(0), "1970-01-01T00:00:00Z");
            for s in [0, 951_782_400, 1_709_164_800, 4_102_444_799, -86_401] {
                assert_eq!(parse_millis(&format(s)), Some(s * 1000), "{}", format(s));
            }
        }

        #[test]
        fn refuses_times_without_zone_or_out_of_range() {
            for bad in [
                "2010-12-25T17:05:55",
                "2010-12-25",
                "2010-13-25T17:05:55Z",
                "2011-02-29T17:05:55Z",
                "2010-12-25T24:05:55Z",
                "2010-12-25T17:05:55.Z",
                "2010-12-25T17:05:55+1",
                "1293296755",
                "",
            ] {
                assert_eq!(parse_millis(bad), None, "{bad}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Upstream's test clock: 2010-12-25T17:05:55Z.
    const UPSTREAM_NOW: i64 = 1_293_296_755;
    const NOW: i64 = 1_800_000_000;
    const DOMAIN: &str = "crn.example.org";
    const PATH: &str = "/control/machine/decade/reboot";

    fn key(signer: &Signer) -> OperatorKey {
        OperatorKey::generate_until(signer, NOW + 3600).unwrap()
    }

    fn check(
        headers: &[(&'static str, String); 2],
        now: i64,
    ) -> Result<Verified, OperatorAuthError> {
        verify(
            Some(&headers[0].1),
            Some(&headers[1].1),
            "POST",
            DOMAIN,
            PATH,
            now,
        )
    }

    fn operation_with(payload: &[u8], key: &SigningKey) -> String {
        let signature: Signature = key.sign_with_rng(&mut rand::rngs::OsRng, payload);
        serde_json::to_string(&SignedOperation {
            payload: hex::encode(payload),
            signature: hex::encode(signature.to_bytes()),
        })
        .unwrap()
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let (signer, _) = Signer::generate();
        let key = key(&signer);
        let headers = key.headers("post", DOMAIN, PATH, NOW);
        assert_eq!(headers[0].0, "X-SignedPubKey");
        assert_eq!(headers[1].0, "X-SignedOperation");
        let verified = check(&headers, NOW + 5).unwrap();
        assert_eq!(verified.address, signer.address().to_lowercase());
        assert_eq!(verified.time_ms, NOW * 1000);
        let guard = ReplayGuard::default();
        guard.check(&verified, NOW).unwrap();
        assert_eq!(
            guard.check(&verified, NOW),
            Err(OperatorAuthError::Replayed)
        );
        assert_eq!(OperatorAuthError::Replayed.status(), 401);
        // Another operation in the same second is another operation.
        let again = check(&key.headers("POST", DOMAIN, PATH, NOW), NOW).unwrap();
        guard.check(&again, NOW).unwrap();
        // Entries leave once out of the window.
        let later = check(&key.headers("POST", DOMAIN, PATH, NOW + 600), NOW + 600).unwrap();
        guard.check(&later, NOW + 600).unwrap();
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn the_wire_is_what_upstream_reads() {
        let (signer, _) = Signer::generate();
        let headers = key(&signer).headers("get", "CRN.example.org", "/", NOW);
        let outer: serde_json::Value = serde_json::from_str(&headers[0].1).unwrap();
        let wallet_signature = outer["signature"].as_str().unwrap();
        assert!(wallet_signature.starts_with("0x") && wallet_signature.len() == 132);
        let payload = hex::decode(outer["payload"].as_str().unwrap()).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(payload["pubkey"]["kty"], "EC");
        assert_eq!(payload["pubkey"]["crv"], "P-256");
        assert_eq!(payload["pubkey"]["x"].as_str().unwrap().len(), 43);
        assert_eq!(payload["alg"], "ECDSA");
        assert_eq!(payload["address"], signer.address());
        assert_eq!(payload["expires"], "2027-01-15T09:00:00Z");
        assert_eq!(payload["chain"], "ETH");

        let outer: serde_json::Value = serde_json::from_str(&headers[1].1).unwrap();
        assert_eq!(outer["signature"].as_str().unwrap().len(), 128);
        let payload = hex::decode(outer["payload"].as_str().unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            r#"{"time":"2027-01-15T08:00:00Z","method":"GET","path":"/","domain":"CRN.example.org"}"#
        );
    }

    #[test]
    fn every_refusal() {
        let (signer, _) = Signer::generate();
        let (stranger, _) = Signer::generate();
        let key = key(&signer);
        let headers = key.headers("POST", DOMAIN, PATH, NOW);
        let run = |pubkey: Option<&str>, op: Option<&str>, method, domain, path, now| {
            verify(pubkey, op, method, domain, path, now)
        };
        let (pk, op) = (headers[0].1.as_str(), headers[1].1.as_str());

        assert_eq!(
            run(None, Some(op), "POST", DOMAIN, PATH, NOW),
            Err(OperatorAuthError::Missing(SIGNED_PUBKEY_HEADER))
        );
        assert_eq!(
            run(Some(pk), Some(" "), "POST", DOMAIN, PATH, NOW),
            Err(OperatorAuthError::Missing(SIGNED_OPERATION_HEADER))
        );
        let bad_hex = r#"{"payload":"7b2z","signature":"00"}"#;
        for (pk, op) in [(bad_hex, op), (pk, bad_hex), ("not json", op)] {
            let err = run(Some(pk), Some(op), "POST", DOMAIN, PATH, NOW).unwrap_err();
            assert!(
                matches!(err, OperatorAuthError::Malformed { .. }),
                "{err:?}"
            );
            assert_eq!(err.status(), 401);
        }

        // The stranger signs a payload naming our signer's address.
        let outer: SignedPubKey = serde_json::from_str(pk).unwrap();
        let forged = serde_json::to_string(&SignedPubKey {
            signature: stranger
                .sign_raw(&hex::decode(&outer.payload).unwrap())
                .unwrap(),
            payload: outer.payload.clone(),
        })
        .unwrap();
        assert!(matches!(
            run(Some(&forged), Some(op), "POST", DOMAIN, PATH, NOW),
            Err(OperatorAuthError::BadWalletSignature(_))
        ));

        // A key signed by its wallet but another key signs the operation.
        let other = OperatorKey::generate_until(&signer, NOW + 3600).unwrap();
        let other_op = other.headers("POST", DOMAIN, PATH, NOW);
        assert!(matches!(
            run(Some(pk), Some(&other_op[1].1), "POST", DOMAIN, PATH, NOW),
            Err(OperatorAuthError::BadOperationSignature(_))
        ));

        let expired = OperatorKey::generate_until(&signer, NOW).unwrap();
        assert_eq!(
            check(&expired.headers("POST", DOMAIN, PATH, NOW), NOW),
            Err(OperatorAuthError::KeyExpired("2027-01-15T08:00:00Z".into()))
        );

        assert_eq!(
            check(&headers, NOW + 121),
            Err(OperatorAuthError::TimeSkew(-121))
        );
        assert_eq!(
            check(&headers, NOW - 121),
            Err(OperatorAuthError::TimeSkew(121))
        );
        assert!(check(&headers, NOW + 120).is_ok());
        assert!(check(&headers, NOW - 120).is_ok());

        for (method, domain, path) in [
            ("GET", DOMAIN, PATH),
            ("POST", "other.example.org", PATH),
            ("POST", DOMAIN, "/control/machine/decade/stop"),
        ] {
            assert!(matches!(
                run(Some(pk), Some(op), method, domain, path, NOW),
                Err(OperatorAuthError::Mismatch(_))
            ));
        }
        // Domains are host names: case does not matter.
        assert!(run(Some(pk), Some(op), "post", "CRN.Example.org", PATH, NOW).is_ok());
    }

    #[test]
    fn only_eth_keys_are_taken() {
        let (signer, _) = Signer::generate();
        let signing_key = SigningKey::random(&mut rand::rngs::OsRng);
        let payload = serde_json::to_vec(&json!({
            "pubkey": PublicJwk::of(signing_key.verifying_key()),
            "address": signer.address(),
            "expires": "2030-01-01T00:00:00Z",
            "chain": "SOL",
        }))
        .unwrap();
        let pk = serde_json::to_string(&SignedPubKey {
            signature: signer.sign_raw(&payload).unwrap(),
            payload: hex::encode(payload),
        })
        .unwrap();
        let op = operation_with(
            format!(
                r#"{{"time":"{}","method":"GET","path":"/","domain":"d"}}"#,
                rfc3339::format(NOW)
            )
            .as_bytes(),
            &signing_key,
        );
        assert_eq!(
            verify(Some(&pk), Some(&op), "GET", "d", "/", NOW),
            Err(OperatorAuthError::UnsupportedChain("SOL".into()))
        );
    }

    #[test]
    fn python_spacing_epoch_expires_and_high_s_are_accepted() {
        // What upstream's SDK sends: `json.dumps` spacing, extra fields, microseconds,
        // no chain; here with `expires` as epoch seconds like the console once did.
        let (signer, _) = Signer::generate();
        let signing_key = SigningKey::random(&mut rand::rngs::OsRng);
        let jwk = PublicJwk::of(signing_key.verifying_key());
        let payload = format!(
            r#"{{"pubkey": {{"crv": "P-256", "ext": true, "key_ops": ["verify"], "kty": "EC", "x": "{}", "y": "{}"}}, "alg": "ECDSA", "domain": "{DOMAIN}", "address": "{}", "expires": {}.25}}"#,
            jwk.x,
            jwk.y,
            signer.address(),
            NOW + 60
        );
        let pk = json!({
            "sender": signer.address(),
            "payload": hex::encode(&payload),
            "signature": signer.sign_raw(payload.as_bytes()).unwrap(),
            "content": {"domain": DOMAIN},
        })
        .to_string();
        let op_payload = format!(
            r#"{{"time": "{}.123456Z", "method": "POST", "path": "{PATH}", "domain": "{DOMAIN}"}}"#,
            rfc3339::format(NOW).trim_end_matches('Z')
        );
        let signature: Signature =
            signing_key.sign_with_rng(&mut rand::rngs::OsRng, op_payload.as_bytes());
        let low = signature.normalize_s().unwrap_or(signature);
        let (r, s) = low.split_scalars();
        let high = Signature::from_scalars(r, -*s).unwrap();
        for signature in [low, high] {
            let op = json!({
                "payload": hex::encode(&op_payload),
                "signature": hex::encode(signature.to_bytes()),
            })
            .to_string();
            let verified = verify(Some(&pk), Some(&op), "POST", DOMAIN, PATH, NOW).unwrap();
            assert_eq!(verified.address, signer.address().to_lowercase());
            assert_eq!(verified.time_ms, NOW * 1000 + 123);
        }
    }

    // aleph-vm `doc/operator_auth.md`, the websocket example: a key for
    // 0xbA26b153591D4620fd2A740A0F1eF70dAd6523b0 expiring 2010-12-26T17:05:55Z and a
    // `GET /` on `localhost` at 2010-12-25T17:05:55Z.
    const DOC_PUBKEY: &str = r#"{"payload": "7b227075626b6579223a207b22637276223a2022502d323536222c20226b7479223a20224543222c202278223a20223962446f34754949686b735a5272677a31477972325050656d4334364e735f4730577144364d4d6a774673222c202279223a20226f48343342786c7854334f3065733336685967713143372d61325a535a71456d5f6b56356e636c79667a59227d2c2022616c67223a20224543445341222c2022646f6d61696e223a20226c6f63616c686f7374222c202261646472657373223a2022307862413236623135333539314434363230666432413734304130463165463730644164363532336230222c202265787069726573223a2022323031302d31322d32365431373a30353a35355a227d", "signature": "0xea99ef5f1a10f2d103f94dce4f8650730315246e6d15cf9e5862c11adfd6482703cd1ec684a4f3dffb36ae5c4a57b08a47108fe55e3b2454e45f6e63342e0f471b"}"#;
    const DOC_OPERATION: &str = r#"{"payload": "7b2274696d65223a2022323031302d31322d32355431373a30353a35355a222c20226d6574686f64223a2022474554222c202270617468223a20222f222c2022646f6d61696e223a20226c6f63616c686f7374227d", "signature": "6f737654cd00e4d4155d387509978e7a9a4d27f5b59c9492ac1dec7b09f9aecc58c9365526bbddd6211b65f40f4956c50ab26f395f7170ce1698c11e28e25d3a"}"#;

    #[test]
    fn upstream_documented_headers_verify_at_their_time() {
        let verified = verify(
            Some(DOC_PUBKEY),
            Some(DOC_OPERATION),
            "GET",
            "localhost",
            "/",
            UPSTREAM_NOW,
        )
        .unwrap();
        assert_eq!(
            verified.address,
            "0xba26b153591d4620fd2a740a0f1ef70dad6523b0"
        );
        assert_eq!(
            verify(
                Some(DOC_PUBKEY),
                Some(DOC_OPERATION),
                "GET",
                "localhost",
                "/",
                UPSTREAM_NOW + 86_400
            ),
            Err(OperatorAuthError::KeyExpired("2010-12-26T17:05:55Z".into()))
        );
    }

    #[test]
    fn upstream_wrong_key_vector_is_refused() {
        // aleph-vm `tests/supervisor/test_authentication.py::test_require_jwk_authentication_wrong_key`:
        // a wallet signature made over another payload.
        let pubkey = r#"{"payload": "7b227075626b6579223a207b22637276223a2022502d323536222c20226b7479223a20224543222c202278223a202273765759314e5652614a683231527834576a765f67657057772d714d436f774d76304a52353057327a7545222c202279223a2022794950424d6135474e7a49555878656c513762415a5f437776303875763448774d4c49456c656c43534473227d2c2022616c67223a20224543445341222c2022646f6d61696e223a20226c6f63616c686f7374222c202261646472657373223a2022307842323564623537643234304438353132366262364234384661633635343837323161343537343538222c202265787069726573223a2022323032332d30352d30325431303a34343a34322e3735343939345a227d", "signature": "0x58e1498a6c4f88ac1982e7147ff49405ffe1b9633e048bb74cf741abb05ce0b63bb406f3079f641ae89f597654ecd2a704d37ffbf86a28e462140033cc0eedcb1c"}"#;
        let operation = format!(
            r#"{{"payload": "{}", "signature": "96ffdbbd1704d5f6bfe4698235a0de0d2f58668deaa4371422bee26664f313f51fd483c78c34c6b317fc209779f9ddd9c45accf558e3bf881b49ad970ebf0ade"}}"#,
            hex::encode(
                r#"{"time": "2010-12-25T17:05:55Z", "method": "GET", "path": "/", "domain": "localhost"}"#
            )
        );
        assert!(matches!(
            verify(
                Some(pubkey),
                Some(&operation),
                "GET",
                "localhost",
                "/",
                UPSTREAM_NOW
            ),
            Err(OperatorAuthError::BadWalletSignature(_))
        ));
    }

    #[test]
    fn upstream_console_key_with_epoch_expires_is_vouched_for() {
        // aleph-vm `tests/supervisor/test_authentication.py::valid_jwk_headers`: a key
        // made in a browser (WebCrypto JWK with `alg`, `ext`, `key_ops`), `expires` in
        // epoch seconds. Its operation header carries no payload, so only the wallet half.
        let header = r#"{"payload":"7b227075626b6579223a7b22616c67223a224553323536222c22637276223a22502d323536222c22657874223a747275652c226b65795f6f7073223a5b22766572696679225d2c226b7479223a224543222c2278223a224b65763844614d7356454673365a6b4679525a4272796344564138566a334f656e49756f34743561374634222c2279223a2279597343556d715978654767673643743736794f47525873545867446444795234644f5639514c6f6b6477227d2c22616c67223a224543445341222c22646f6d61696e223a226c6f63616c686f7374222c2261646472657373223a22307833343932346566393435623933316431653932393337353535366636396365326537666535646363222c2265787069726573223a313638393337353132342e3532317d","signature":"0x58e1498a6c4f88ac1982e7147ff49405ffe1b9633e048bb74cf741abb05ce0b63bb406f3079f641ae89f597654ecd2a704d37ffbf86a28e462140033cc0eedcb1c"}"#;
        let signed: SignedPubKey = serde_json::from_str(header).unwrap();
        let key = signed.verify(1_689_375_000).unwrap();
        assert_eq!(key.address, "0x34924ef945b931d1e929375556f69ce2e7fe5dcc");
        assert_eq!(key.payload.expires, WireTime::Seconds(1_689_375_124.521));
        assert_eq!(key.payload.chain, "ETH");
        assert_eq!(
            signed.verify(1_689_375_125).unwrap_err(),
            OperatorAuthError::KeyExpired("1689375124.521".into())
        );
    }

    #[test]
    fn owners_and_delegates_are_authorized() {
        let owner = "0xAbCdEf0000000000000000000000000000000001";
        let delegate = "0x00000000000000000000000000000000000000d1";
        assert!(authorizes(owner, None, &owner.to_lowercase()));
        assert!(!authorizes(owner, None, delegate));
        let security = json!({"authorizations": [
            {"address": "0x00000000000000000000000000000000000000D1"},
            {"address": "0x00000000000000000000000000000000000000d2", "types": ["POST"]},
            {"address": "0x00000000000000000000000000000000000000d3", "types": ["INSTANCE"], "chain": "ETH"},
            {"address": "0x00000000000000000000000000000000000000d4", "types": []},
            "not an object",
        ]});
        assert!(authorizes(owner, Some(&security), delegate));
        assert!(!authorizes(
            owner,
            Some(&security),
            "0x00000000000000000000000000000000000000d2"
        ));
        assert!(authorizes(
            owner,
            Some(&security),
            "0x00000000000000000000000000000000000000d3"
        ));
        assert!(authorizes(
            owner,
            Some(&security),
            "0x00000000000000000000000000000000000000d4"
        ));
        assert!(!authorizes(
            owner,
            Some(&security),
            "0x00000000000000000000000000000000000000d5"
        ));
        assert!(!authorizes(owner, Some(&json!({})), delegate));

        let verified = Verified {
            address: "0x00000000000000000000000000000000000000d5".into(),
            time_ms: 0,
            replay_key: String::new(),
        };
        let err = check_authorized(owner, Some(&security), &verified).unwrap_err();
        assert_eq!(err, OperatorAuthError::NotOwner(verified.address.clone()));
        assert_eq!(err.status(), 403);
    }
}
