//! `POST /control/allocation/notify`: the official clients' call after posting an
//! INSTANCE pinned to this node (`{"instance": HASH}`, no signature: the payment is
//! what entitles it).
//!
//! This node runs only what its allocation lists (a second way in would break "exactly
//! once"); the scheduler places pinned instances on their node and pushes them. So the
//! call checks the message, then waits up to `allocation_wait_seconds` for the
//! allocation to list the instance and for it to run:
//!
//! - 200 `{"success": true, "successful": true, "failing": [], "errors": {}, "instance",
//!   "running"}` (upstream's shape): it runs, or it is listed and still booting
//!   (`running: false`), or its owner stopped it;
//! - 400 a body that is not `{"instance": HASH}`, a message that is not an INSTANCE, one
//!   pinned to another node, an unknown payment type; 404 no such message on the CCN;
//!   402 the owner's balance (hold) or credits (one hour, credit) do not cover it;
//! - 503 not allocated here within the wait, listed but this node may not run it (no
//!   lease) or its start failed, a pinned instance on a node without `node_hash`, or
//!   the CCN unreachable; with upstream's failure fields (`failing`, `errors`).
//!
//! Every error also carries `{"error": ...}`. Answers allow any origin (browsers call it).

use super::Control;
use crate::error::ProgramError;
use crate::persistent::Persistent;
use axum::Json;
use axum::body::Bytes;
use axum::extract::Extension;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

pub const NOTIFY_PATH: &str = "/control/allocation/notify";

/// How often the allocation and the instance are looked at while waiting.
const POLL: Duration = Duration::from_millis(250);
/// The body is one hash; anything much larger is not a notification.
const MAX_BODY: usize = 64 * 1024;

/// Why a notification is not answered with success.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("bad notification: {0} (expected {{\"instance\": \"<item hash>\"}})")]
    BadBody(String),
    #[error("no message {0} on the CCN")]
    NotFound(String),
    #[error("{hash} is a {message_type} message, not an INSTANCE")]
    NotAnInstance { hash: String, message_type: String },
    #[error("wrong node: instance {hash} is pinned to node {wanted}, this node is {this}")]
    WrongNode {
        hash: String,
        wanted: String,
        this: String,
    },
    #[error(
        "instance {0} is pinned to a node, and this node does not know its own node hash (node_hash is not configured)"
    )]
    NodeHashUnknown(String),
    #[error("invalid payment method {0:?} (hold, credit or superfluid)")]
    BadPayment(String),
    #[error("{0}")]
    PaymentRequired(String),
    #[error(
        "instance {0} is not allocated to this node yet: the scheduler places it within a few seconds; ask again"
    )]
    NotAllocated(String),
    #[error(
        "instance {0} is allocated to this node, which may not run it now (it holds no lease from the scheduler, or the scheduler counts it as lost)"
    )]
    MayNotRun(String),
    #[error("instance {hash} is allocated to this node but did not start: {error}")]
    StartFailed { hash: String, error: String },
    #[error("{0}")]
    Ccn(ProgramError),
}

impl NotifyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadBody(_)
            | Self::NotAnInstance { .. }
            | Self::WrongNode { .. }
            | Self::BadPayment(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
            Self::NodeHashUnknown(_)
            | Self::NotAllocated(_)
            | Self::MayNotRun(_)
            | Self::StartFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Ccn(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }

    /// The instance it is about, once the body named one and it could be placed.
    fn failing(&self) -> Option<&str> {
        match self {
            Self::NotAllocated(hash) | Self::MayNotRun(hash) => Some(hash),
            Self::StartFailed { hash, .. } => Some(hash),
            _ => None,
        }
    }
}

impl IntoResponse for NotifyError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let mut body = json!({"error": message});
        if let Some(hash) = self.failing() {
            // Upstream's failure fields, for clients that read them.
            body["success"] = json!(false);
            body["successful"] = json!(false);
            body["failing"] = json!([hash]);
            body["errors"] = json!({ hash: message });
        }
        (self.status(), Json(body)).into_response()
    }
}

/// Where the notified instance stands once the wait is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Allocated here and its VM runs.
    Running,
    /// Allocated here and still booting, or stopped by its owner.
    Accepted,
}

/// The instance hash of a notification body (lower case).
pub fn parse_body(body: &[u8]) -> Result<String, NotifyError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| NotifyError::BadBody(e.to_string()))?;
    let instance = value
        .get("instance")
        .and_then(Value::as_str)
        .ok_or_else(|| NotifyError::BadBody("no \"instance\" string".into()))?;
    crate::resources::check_hash(instance).map_err(|e| NotifyError::BadBody(e.to_string()))
}

/// Checks an INSTANCE's content against this node: the node it is pinned to
/// (`requirements.node.node_hash`; none: any node) and its payment type.
pub fn check_content(
    hash: &str,
    content: &Value,
    node_hash: Option<&str>,
) -> Result<(), NotifyError> {
    let wanted = content
        .pointer("/requirements/node/node_hash")
        .and_then(Value::as_str);
    match (wanted, node_hash) {
        (None, _) => {}
        (Some(_), None) => return Err(NotifyError::NodeHashUnknown(hash.to_owned())),
        (Some(wanted), Some(this)) if !wanted.eq_ignore_ascii_case(this) => {
            return Err(NotifyError::WrongNode {
                hash: hash.to_owned(),
                wanted: wanted.to_owned(),
                this: this.to_owned(),
            });
        }
        _ => {}
    }
    match payment_type(content) {
        "hold" | "credit" | "superfluid" => Ok(()),
        other => Err(NotifyError::BadPayment(other.to_owned())),
    }
}

fn payment_type(content: &Value) -> &str {
    content
        .pointer("/payment/type")
        .and_then(Value::as_str)
        .unwrap_or("hold")
}

/// The owner's balance as the CCN reports it
/// (`GET /api/v0/addresses/{address}/balance`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Balance {
    pub balance: f64,
    /// Held by the owner's messages, this one included.
    pub locked_amount: f64,
    pub credit_balance: f64,
    /// Spent by the owner's credit-paid messages, this one included.
    pub credit_per_hour: f64,
}

/// Whether the owner still pays: hold, its balance covers what its messages lock;
/// credit, its credits cover one more hour of what it runs on credit (as upstream
/// asks of this instance). Streams cannot be seen without a chain: accepted.
pub fn check_payment(payment_type: &str, balance: &Balance) -> Result<(), NotifyError> {
    match payment_type {
        "hold" if balance.balance < balance.locked_amount => {
            Err(NotifyError::PaymentRequired(format!(
                "insufficient balance: {} ALEPH held, {} locked by this owner's messages",
                balance.balance, balance.locked_amount
            )))
        }
        "credit" if balance.credit_balance < balance.credit_per_hour => {
            Err(NotifyError::PaymentRequired(format!(
                "insufficient credits: {} left, {} needed for one hour of this owner's executions",
                balance.credit_balance, balance.credit_per_hour
            )))
        }
        _ => Ok(()),
    }
}

async fn owner_balance(ccn_base: &str, owner: &str) -> Result<Balance, NotifyError> {
    let unavailable =
        |e: String| NotifyError::Ccn(ProgramError::Unavailable(format!("owner's balance: {e}")));
    let url = format!("{ccn_base}/api/v0/addresses/{owner}/balance");
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(unavailable(format!("{url}: {}", response.status())));
    }
    let value: Value = response
        .json()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let number = |name: &str| value.get(name).and_then(Value::as_f64).unwrap_or(0.0);
    Ok(Balance {
        balance: number("balance"),
        locked_amount: number("locked_amount"),
        credit_balance: number("credit_balance"),
        credit_per_hour: number("credit_per_hour"),
    })
}

/// Reads instance `hash` from the CCN and checks it may run here.
async fn check_message(persistent: &Persistent, hash: &str) -> Result<(), NotifyError> {
    let pool = persistent.pool();
    let ccn = pool.resources().ccn();
    let message = ccn
        .message(hash)
        .await
        .map_err(NotifyError::Ccn)?
        .ok_or_else(|| NotifyError::NotFound(hash.to_owned()))?;
    if message.message_type != "INSTANCE" {
        return Err(NotifyError::NotAnInstance {
            hash: hash.to_owned(),
            message_type: message.message_type,
        });
    }
    check_content(hash, &message.content, pool.config().node_hash.as_deref())?;
    let balance = owner_balance(ccn.base(), message.owner()).await?;
    check_payment(payment_type(&message.content), &balance)
}

/// Waits up to `wait` for the allocation to list `hash` and for it to run.
pub async fn wait_for_placement(
    persistent: &Persistent,
    hash: &str,
    wait: Duration,
) -> Result<Placement, NotifyError> {
    let instances = persistent.instances();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let listed = persistent.allocated_instances().contains(hash);
        if listed {
            if instances.is_running(hash) {
                return Ok(Placement::Running);
            }
            if instances.record(hash).is_some_and(|r| r.held) {
                return Ok(Placement::Accepted);
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            if !listed {
                return Err(NotifyError::NotAllocated(hash.to_owned()));
            }
            if !persistent.may_run() {
                return Err(NotifyError::MayNotRun(hash.to_owned()));
            }
            let error = instances
                .statuses()
                .into_iter()
                .find(|s| s.item_hash == hash)
                .and_then(|s| s.error);
            return match error {
                Some(error) => Err(NotifyError::StartFailed {
                    hash: hash.to_owned(),
                    error,
                }),
                None => Ok(Placement::Accepted),
            };
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

/// Checks a notification and waits for its instance to be placed here.
pub async fn notify(persistent: &Persistent, body: &[u8]) -> Result<Value, NotifyError> {
    let hash = parse_body(body)?;
    check_message(persistent, &hash).await?;
    let wait = Duration::from_secs(persistent.pool().config().allocation_wait_seconds);
    let placement = wait_for_placement(persistent, &hash, wait).await?;
    Ok(json!({
        "success": true,
        "successful": true,
        "failing": [],
        "errors": {},
        "instance": hash,
        "running": placement == Placement::Running,
    }))
}

async fn handle(Extension(control): Extension<Arc<Control>>, body: Bytes) -> Response {
    let mut response = match notify(&control.persistent, &body).await {
        Ok(answer) => (StatusCode::OK, Json(answer)).into_response(),
        Err(error) => error.into_response(),
    };
    allow_any_origin(&mut response);
    response
}

/// A browser's preflight: any origin may post JSON here.
async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    allow_any_origin(&mut response);
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    response
}

fn allow_any_origin(response: &mut Response) {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// The route: `POST` (and the browsers' `OPTIONS`), the body at most 64 KiB.
pub fn route<S: Clone + Send + Sync + 'static>() -> MethodRouter<S> {
    axum::routing::post(handle)
        .options(preflight)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "ab";

    fn node(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[test]
    fn bodies() {
        let hash = "AB".repeat(32);
        let body = json!({"instance": hash}).to_string();
        assert_eq!(parse_body(body.as_bytes()).unwrap(), "ab".repeat(32));
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"instance": 3}"#,
            r#"{"instance": "abc"}"#,
            r#"["instance"]"#,
        ] {
            let error = parse_body(bad.as_bytes()).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{bad}: {error}");
        }
    }

    #[test]
    fn pinned_nodes_and_payment_types() {
        let here = node(1);
        let pinned = |to: &str| json!({"requirements": {"node": {"node_hash": to}}, "payment": {"type": "credit"}});
        check_content(HASH, &pinned(&here), Some(&here)).unwrap();
        check_content(HASH, &pinned(&here.to_uppercase()), Some(&here)).unwrap();
        let elsewhere = check_content(HASH, &pinned(&node(2)), Some(&here)).unwrap_err();
        assert_eq!(elsewhere.status(), StatusCode::BAD_REQUEST);
        assert!(elsewhere.to_string().contains("wrong node"), "{elsewhere}");
        let unknown = check_content(HASH, &pinned(&here), None).unwrap_err();
        assert_eq!(unknown.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Not pinned: any node, with or without a node hash.
        check_content(HASH, &json!({}), None).unwrap();
        check_content(HASH, &json!({"requirements": {}}), Some(&here)).unwrap();
        let odd = check_content(HASH, &json!({"payment": {"type": "barter"}}), None).unwrap_err();
        assert_eq!(odd.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn payments() {
        let paid = Balance {
            balance: 10.0,
            locked_amount: 10.0,
            credit_balance: 5.0,
            credit_per_hour: 5.0,
        };
        for kind in ["hold", "credit", "superfluid"] {
            check_payment(kind, &paid).unwrap();
        }
        let short = Balance {
            balance: 9.0,
            locked_amount: 10.0,
            credit_balance: 4.0,
            credit_per_hour: 5.0,
        };
        for kind in ["hold", "credit"] {
            assert_eq!(
                check_payment(kind, &short).unwrap_err().status(),
                StatusCode::PAYMENT_REQUIRED
            );
        }
        check_payment("superfluid", &short).unwrap();
    }

    #[test]
    fn failures_carry_upstreams_fields() {
        let hash = node(3);
        let response = NotifyError::NotAllocated(hash.clone()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let error = NotifyError::NotAllocated(hash.clone());
        assert_eq!(error.failing(), Some(hash.as_str()));
        assert!(error.to_string().contains("ask again"));
        assert_eq!(NotifyError::NotFound(hash).failing(), None);
    }
}
