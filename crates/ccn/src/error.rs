//! Errors: rejections of messages (with the protocol's codes) and API errors (HTTP + JSON).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Rejection codes of the protocol (the `error_code` of a rejected message).
pub mod code {
    pub const FORMAT: i64 = 0;
    pub const SIGNATURE: i64 = 1;
    pub const PERMISSION: i64 = 2;
    pub const CONTENT_UNAVAILABLE: i64 = 3;
    pub const FILE_UNAVAILABLE: i64 = 4;
    pub const BALANCE_INSUFFICIENT: i64 = 5;
    pub const CREDIT_INSUFFICIENT: i64 = 6;
    pub const INVALID_PAYMENT_METHOD: i64 = 202;
    pub const VM_REF_NOT_FOUND: i64 = 300;
    pub const VM_VOLUME_NOT_FOUND: i64 = 301;
    pub const VM_AMEND_NOT_ALLOWED: i64 = 302;
    pub const VM_UPDATE_UPDATE: i64 = 303;
    pub const VM_VOLUME_TOO_SMALL: i64 = 304;
    pub const FORGET_NO_TARGET: i64 = 500;
    pub const FORGET_TARGET_NOT_FOUND: i64 = 501;
    pub const FORGET_FORGET: i64 = 502;
    pub const FORGET_NOT_ALLOWED: i64 = 503;
    pub const FORGOTTEN_DUPLICATE: i64 = 504;

    /// One line saying what a code means, for error bodies and CLIs.
    pub fn meaning(code: i64) -> &'static str {
        match code {
            FORMAT => "invalid message format",
            SIGNATURE => "invalid signature",
            PERMISSION => "permission denied",
            CONTENT_UNAVAILABLE => "message content unavailable",
            FILE_UNAVAILABLE => "file unavailable",
            BALANCE_INSUFFICIENT => "insufficient balance",
            CREDIT_INSUFFICIENT => "insufficient credit",
            INVALID_PAYMENT_METHOD => "invalid payment method",
            VM_REF_NOT_FOUND => "referenced code, runtime or data not found",
            VM_VOLUME_NOT_FOUND => "referenced volume not found",
            VM_AMEND_NOT_ALLOWED => "amend not allowed",
            VM_UPDATE_UPDATE => "cannot update an update",
            VM_VOLUME_TOO_SMALL => "volume too small",
            FORGET_NO_TARGET => "FORGET without target",
            FORGET_TARGET_NOT_FOUND => "FORGET target not found",
            FORGET_FORGET => "cannot forget a FORGET",
            FORGET_NOT_ALLOWED => "forget not allowed",
            FORGOTTEN_DUPLICATE => "message already forgotten",
            _ => "rejected",
        }
    }
}

/// Why a message cannot be accepted. `retryable` rejections keep the message pending
/// (its content or a dependency may still arrive) until the retry window closes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub code: i64,
    pub message: String,
    pub retryable: bool,
}

impl Rejection {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: false,
        }
    }

    pub fn retry(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: true,
        }
    }

    pub fn format(message: impl Into<String>) -> Self {
        Self::new(code::FORMAT, message)
    }
}

/// An error answered by the HTTP API: always a 4xx/5xx with `{"error": "..."}`,
/// plus `error_code` when a rejection code applies.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub code: Option<i64>,
    /// Extra fields merged into the JSON body (e.g. publication status).
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code: None,
            extra: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {error}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {error}"),
        )
    }

    pub fn with_code(mut self, code: i64) -> Self {
        self.code = Some(code);
        self
    }

    /// A rejected message: 422 with its code.
    pub fn rejected(rejection: &Rejection) -> Self {
        Self::unprocessable(rejection.message.clone()).with_code(rejection.code)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::internal(error)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        Self::internal(format!("{error:#}"))
    }
}

impl From<std::io::Error> for ApiError {
    fn from(error: std::io::Error) -> Self {
        Self::internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra.unwrap_or_default();
        body.insert("error".into(), json!(self.message));
        if let Some(code) = self.code {
            body.insert("error_code".into(), json!(code));
            body.insert("error_meaning".into(), json!(code::meaning(code)));
        }
        (self.status, axum::Json(serde_json::Value::Object(body))).into_response()
    }
}
