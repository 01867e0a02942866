//! The `Aleph-EIP191-V1` request signature.
//!
//! `Authorization: Aleph-EIP191-V1 sig=0x<65 bytes>,payload=0x<hex of the payload JSON>`
//! where the payload is `{"body_sha256","iat","method","path"}` (keys sorted, compact
//! separators) and `sig` is the EIP-191 `personal_sign` of the payload's JSON bytes.
//! A receiver checks, in this order: the scheme, the payload against the request
//! (method, path without a query string, sha256 of the body), the time window
//! (`|iat - now| ≤ 300 s`), the signer against its allowed set, and replays
//! ([`ReplayGuard`]). Bodies are at most [`MAX_BODY`] bytes.

use crate::eip191;
use crate::signing::{Signer, SigningError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

pub const SCHEME: &str = "Aleph-EIP191-V1";
/// How far `iat` may be from the receiver's clock, either way.
pub const MAX_SKEW_SECONDS: i64 = 300;
/// The largest body a signed request may carry.
pub const MAX_BODY: usize = 1 << 20;

/// What is signed. Fields are declared in sorted order so that serde writes the keys
/// sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub body_sha256: String,
    pub iat: i64,
    pub method: String,
    pub path: String,
}

impl Payload {
    pub fn new(method: &str, path: &str, body: &[u8], iat: i64) -> Self {
        Self {
            body_sha256: hex::encode(Sha256::digest(body)),
            iat,
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
        }
    }
}

/// Why a signed request is refused. [`AuthError::status`] maps it to HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header ({SCHEME} expected)")]
    Missing,
    #[error("malformed {SCHEME} authorization: {0}")]
    Malformed(String),
    #[error("the signed request does not match this one: {0}")]
    Mismatch(String),
    #[error("the signature is {0} s away from this node's clock (at most {MAX_SKEW_SECONDS} s)")]
    Expired(i64),
    #[error("invalid signature: {0}")]
    BadSignature(String),
    #[error("{0} is not allowed to sign these requests")]
    NotAllowed(String),
    #[error("this signed request was already used")]
    Replayed,
    #[error("body of {0} bytes is over the {MAX_BODY} bytes a signed request may carry")]
    TooLarge(usize),
}

impl AuthError {
    /// 401 when the request is not (validly) signed, 403 when it is but by a signer
    /// not allowed here, 413 for a body too large.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotAllowed(_) => 403,
            Self::TooLarge(_) => 413,
            _ => 401,
        }
    }
}

/// The `Authorization` header value for a request, signed now-ish (`iat`).
pub fn authorization(
    signer: &Signer,
    method: &str,
    path: &str,
    body: &[u8],
    iat: i64,
) -> Result<String, SigningError> {
    let payload = serde_json::to_vec(&Payload::new(method, path, body, iat))?;
    let sig = signer.sign_raw(&payload)?;
    Ok(format!(
        "{SCHEME} sig={sig},payload=0x{}",
        hex::encode(payload)
    ))
}

/// A request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signer's address, lower case.
    pub signer: String,
    pub iat: i64,
    /// The signature, the key of [`ReplayGuard`].
    pub signature: String,
}

/// Checks `header` (the `Authorization` value, if any) against the request. `path`
/// must be the request's path and `query` its query string, if any (signed requests
/// carry none). `allowed` are lower- or mixed-case addresses; empty allows any
/// signer (the caller then decides from [`Verified::signer`]).
pub fn verify(
    header: Option<&str>,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    now: i64,
    allowed: &[String],
) -> Result<Verified, AuthError> {
    let header = header.ok_or(AuthError::Missing)?.trim();
    let rest = header
        .strip_prefix(SCHEME)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| AuthError::Malformed(format!("the scheme must be {SCHEME}")))?;
    let (mut sig, mut payload_hex) = (None, None);
    for part in rest.trim().split(',') {
        match part.trim().split_once('=') {
            Some(("sig", v)) => sig = Some(v.trim()),
            Some(("payload", v)) => payload_hex = Some(v.trim()),
            _ => return Err(AuthError::Malformed(format!("unexpected part {part:?}"))),
        }
    }
    let sig = sig.ok_or_else(|| AuthError::Malformed("no sig".into()))?;
    let payload_hex = payload_hex.ok_or_else(|| AuthError::Malformed("no payload".into()))?;
    let payload_bytes = hex::decode(payload_hex.trim_start_matches("0x"))
        .map_err(|_| AuthError::Malformed("the payload is not hexadecimal".into()))?;
    let payload: Payload = serde_json::from_slice(&payload_bytes)
        .map_err(|e| AuthError::Malformed(format!("payload: {e}")))?;

    if body.len() > MAX_BODY {
        return Err(AuthError::TooLarge(body.len()));
    }
    if query.is_some_and(|q| !q.is_empty()) {
        return Err(AuthError::Mismatch(
            "signed requests carry no query string".into(),
        ));
    }
    if !payload.method.eq_ignore_ascii_case(method) {
        return Err(AuthError::Mismatch(format!(
            "signed for {}, sent as {method}",
            payload.method
        )));
    }
    if payload.path != path {
        return Err(AuthError::Mismatch(format!(
            "signed for {}, sent to {path}",
            payload.path
        )));
    }
    if payload.body_sha256 != hex::encode(Sha256::digest(body)) {
        return Err(AuthError::Mismatch("the body's sha256 differs".into()));
    }
    let skew = payload.iat - now;
    if skew.abs() > MAX_SKEW_SECONDS {
        return Err(AuthError::Expired(skew));
    }
    let signer = eip191::recover_address(&payload_bytes, sig)
        .map_err(|e| AuthError::BadSignature(e.to_string()))?;
    if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&signer)) {
        return Err(AuthError::NotAllowed(signer));
    }
    Ok(Verified {
        signer,
        iat: payload.iat,
        signature: sig.to_ascii_lowercase(),
    })
}

/// Remembers the signatures used within the time window, so that each is accepted once.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<String, i64>>,
}

impl ReplayGuard {
    /// Records `verified`; [`AuthError::Replayed`] when it was seen before.
    pub fn check(&self, verified: &Verified, now: i64) -> Result<(), AuthError> {
        let mut seen = self.seen.lock().expect("replay guard poisoned");
        // Outside the window a signature is refused as expired anyway.
        seen.retain(|_, iat| (*iat - now).abs() <= MAX_SKEW_SECONDS);
        if seen
            .insert(verified.signature.clone(), verified.iat)
            .is_some()
        {
            return Err(AuthError::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn signed(signer: &Signer, body: &[u8]) -> String {
        authorization(signer, "post", "/control/allocations", body, NOW).unwrap()
    }

    fn check(header: &str, body: &[u8], allowed: &[String]) -> Result<Verified, AuthError> {
        verify(
            Some(header),
            "POST",
            "/control/allocations",
            None,
            body,
            NOW + 10,
            allowed,
        )
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let (signer, _) = Signer::generate();
        let header = signed(&signer, b"{}");
        let allowed = vec![signer.address().to_owned()];
        let verified = check(&header, b"{}", &allowed).unwrap();
        assert_eq!(verified.signer, signer.address().to_lowercase());
        let guard = ReplayGuard::default();
        guard.check(&verified, NOW).unwrap();
        assert_eq!(guard.check(&verified, NOW), Err(AuthError::Replayed));
    }

    #[test]
    fn the_payload_has_sorted_keys() {
        let json = serde_json::to_string(&Payload::new("get", "/x", b"", 5)).unwrap();
        assert!(json.starts_with("{\"body_sha256\":"), "{json}");
        assert!(
            json.ends_with("\"iat\":5,\"method\":\"GET\",\"path\":\"/x\"}"),
            "{json}"
        );
    }

    #[test]
    fn every_mismatch_is_refused() {
        let (signer, _) = Signer::generate();
        let (stranger, _) = Signer::generate();
        let header = signed(&signer, b"{}");
        let allowed = vec![signer.address().to_owned()];
        assert!(matches!(
            check(&header, b"{ }", &allowed),
            Err(AuthError::Mismatch(_))
        ));
        assert!(matches!(
            verify(
                Some(&header),
                "GET",
                "/control/allocations",
                None,
                b"{}",
                NOW,
                &allowed
            ),
            Err(AuthError::Mismatch(_))
        ));
        assert!(matches!(
            verify(
                Some(&header),
                "POST",
                "/control/other",
                None,
                b"{}",
                NOW,
                &allowed
            ),
            Err(AuthError::Mismatch(_))
        ));
        assert!(matches!(
            verify(
                Some(&header),
                "POST",
                "/control/allocations",
                Some("a=1"),
                b"{}",
                NOW,
                &allowed
            ),
            Err(AuthError::Mismatch(_))
        ));
        assert_eq!(
            verify(
                Some(&header),
                "POST",
                "/control/allocations",
                None,
                b"{}",
                NOW + 301,
                &allowed
            ),
            Err(AuthError::Expired(-301))
        );
        assert!(matches!(
            check(&signed(&stranger, b"{}"), b"{}", &allowed),
            Err(AuthError::NotAllowed(_))
        ));
        assert_eq!(
            verify(None, "POST", "/", None, b"", NOW, &allowed),
            Err(AuthError::Missing)
        );
        assert!(matches!(
            check("Bearer abc", b"{}", &allowed),
            Err(AuthError::Malformed(_))
        ));
        // A signature made over another payload.
        let other = signed(&signer, b"[]");
        let forged = format!(
            "{},{}",
            other.split(',').next().unwrap(),
            header.split(',').nth(1).unwrap()
        );
        let err = check(&forged, b"{}", &allowed).unwrap_err();
        assert!(
            matches!(err, AuthError::NotAllowed(_) | AuthError::BadSignature(_)),
            "{err:?}"
        );
    }
}
