//! `POST /control/allocations`: the scheduler's push of the persistent VMs this node
//! must run, signed `Aleph-EIP191-V1` by one of `allowed_schedulers`.
//!
//! Answers: 200 [`AllocationResult`] when every listed VM runs (or is accepted and
//! still booting), 207 when some failed, 503 when all failed; 409 for a version older
//! than the one applied (nothing changes); 401 unsigned, badly signed, expired or
//! replayed; 403 a signer not allowed, or the route off (no allowed scheduler); 413 a
//! body over 1 MiB; 400 a body that is not an allocation. Errors are `{"error": ...}`.
//!
//! [`machine`]: the owner's `/control/machine/{ref}/stop|reboot|logs|…`, operator-signed.

pub mod machine;
pub mod notify;

use crate::persistent::{ApplyError, Persistent};
use aleph_protocol::auth::eip191_v1::{self, AuthError, ReplayGuard, Verified};
use aleph_protocol::scheduler::{Allocation, AllocationResult};
use axum::Json;
use axum::extract::{Extension, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

pub const ALLOCATIONS_PATH: &str = "/control/allocations";

/// Why a push is refused before it is applied.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no scheduler is allowed to push allocations to this node (allowed_schedulers is empty)"
    )]
    Disabled,
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("bad allocation: {0}")]
    BadBody(String),
    #[error("{0}")]
    Apply(#[from] ApplyError),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Disabled => StatusCode::FORBIDDEN,
            Self::Auth(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::Apply(ApplyError::Stale(_)) => StatusCode::CONFLICT,
            Self::Apply(ApplyError::Storage(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// Who may push, and the signatures already used.
pub struct Authenticator {
    allowed: Vec<String>,
    replays: ReplayGuard,
}

impl Authenticator {
    pub fn new(allowed: Vec<String>) -> Self {
        Self {
            allowed,
            replays: ReplayGuard::default(),
        }
    }

    /// Checks a push's signature (`now`: Unix seconds): scheme, request match, time
    /// window, an allowed signer, and a signature not used before.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, Refusal> {
        if self.allowed.is_empty() {
            return Err(Refusal::Disabled);
        }
        let verified =
            eip191_v1::verify(authorization, method, path, query, body, now, &self.allowed)?;
        self.replays.check(&verified, now)?;
        Ok(verified)
    }
}

/// The checks of pushes, and where they go.
pub struct Control {
    auth: Authenticator,
    persistent: Arc<Persistent>,
}

impl Control {
    pub fn new(allowed: Vec<String>, persistent: Arc<Persistent>) -> Self {
        Self {
            auth: Authenticator::new(allowed),
            persistent,
        }
    }

    /// Authenticates, parses and applies a push.
    pub async fn push(
        &self,
        authorization: Option<&str>,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<AllocationResult, Refusal> {
        let verified = self.auth.authenticate(
            authorization,
            "POST",
            ALLOCATIONS_PATH,
            query,
            body,
            chrono::Utc::now().timestamp(),
        )?;
        let allocation: Allocation =
            serde_json::from_slice(body).map_err(|e| Refusal::BadBody(e.to_string()))?;
        tracing::debug!("allocation pushed by {}", verified.signer);
        Ok(self.persistent.apply(allocation).await?)
    }
}

/// 200 when all succeeded, 503 when all failed, 207 in between.
pub fn result_status(result: &AllocationResult) -> StatusCode {
    match (result.successful.is_empty(), result.failing.is_empty()) {
        (_, true) => StatusCode::OK,
        (true, false) => StatusCode::SERVICE_UNAVAILABLE,
        (false, false) => StatusCode::MULTI_STATUS,
    }
}

/// The route.
pub async fn allocations(
    Extension(control): Extension<Arc<Control>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, eip191_v1::MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            let size = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(eip191_v1::MAX_BODY + 1);
            return Refusal::Auth(AuthError::TooLarge(size)).into_response();
        }
    };
    let authorization = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match control.push(authorization, parts.uri.query(), &body).await {
        Ok(result) => (result_status(&result), Json(result)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aleph_protocol::signing::Signer;

    const NOW: i64 = 1_800_000_000;

    fn sign(signer: &Signer, body: &[u8], iat: i64) -> String {
        eip191_v1::authorization(signer, "POST", ALLOCATIONS_PATH, body, iat).unwrap()
    }

    fn status(auth: &Authenticator, header: Option<&str>, body: &[u8]) -> StatusCode {
        match auth.authenticate(header, "POST", ALLOCATIONS_PATH, None, body, NOW) {
            Ok(_) => StatusCode::OK,
            Err(refusal) => refusal.status(),
        }
    }

    #[test]
    fn pushes_are_refused_unless_signed_by_an_allowed_scheduler_once() {
        let (scheduler, _) = Signer::generate();
        let (stranger, _) = Signer::generate();
        let body = br#"{"persistent_vms":[],"instances":[],"allocation_version":3}"#;
        let auth = Authenticator::new(vec![scheduler.address().to_owned()]);

        assert_eq!(
            status(&auth, None, body),
            StatusCode::UNAUTHORIZED,
            "unsigned"
        );
        assert_eq!(
            status(&auth, Some("Bearer x"), body),
            StatusCode::UNAUTHORIZED,
            "another scheme"
        );
        let by_stranger = sign(&stranger, body, NOW);
        assert_eq!(
            status(&auth, Some(&by_stranger), body),
            StatusCode::FORBIDDEN
        );
        let expired = sign(&scheduler, body, NOW - 301);
        assert_eq!(
            status(&auth, Some(&expired), body),
            StatusCode::UNAUTHORIZED
        );
        let from_the_future = sign(&scheduler, body, NOW + 301);
        assert_eq!(
            status(&auth, Some(&from_the_future), body),
            StatusCode::UNAUTHORIZED
        );
        let good = sign(&scheduler, body, NOW);
        let other_body = br#"{"persistent_vms":["aa"],"instances":[],"allocation_version":3}"#;
        assert_eq!(
            status(&auth, Some(&good), other_body),
            StatusCode::UNAUTHORIZED,
            "the body's hash differs"
        );
        assert_eq!(
            auth.authenticate(Some(&good), "POST", "/control/other", None, body, NOW)
                .unwrap_err()
                .status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status(&auth, Some(&good), body), StatusCode::OK);
        assert_eq!(
            status(&auth, Some(&good), body),
            StatusCode::UNAUTHORIZED,
            "a replay"
        );
        assert!(matches!(
            auth.authenticate(Some(&good), "POST", ALLOCATIONS_PATH, None, body, NOW),
            Err(Refusal::Auth(AuthError::Replayed))
        ));

        // No allowed scheduler: the route is off, even for a good signature.
        let off = Authenticator::new(Vec::new());
        let fresh = sign(&scheduler, body, NOW);
        assert_eq!(status(&off, Some(&fresh), body), StatusCode::FORBIDDEN);
    }

    #[test]
    fn statuses_of_results() {
        let mut result = AllocationResult::default();
        assert_eq!(result_status(&result), StatusCode::OK, "an empty list");
        result.successful.push("a".into());
        assert_eq!(result_status(&result), StatusCode::OK);
        result.failing.push("b".into());
        assert_eq!(result_status(&result), StatusCode::MULTI_STATUS);
        result.successful.clear();
        assert_eq!(result_status(&result), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Refusal::Disabled.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            Refusal::Apply(ApplyError::Stale(crate::persistent::state::Stale {
                pushed: 1,
                applied: 2
            }))
            .status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            Refusal::Auth(AuthError::TooLarge(2 << 20)).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            Refusal::BadBody("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
