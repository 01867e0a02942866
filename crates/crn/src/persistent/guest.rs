//! Giving a persistent VM's agent the lease (`POST /_agent/lease`).

use crate::channel::{AgentChannel, BoxError, ChannelError, RequestBody};
use aleph_protocol::agent::{AGENT_ROUTE_PREFIX, AgentError, LeaseReply, LeaseRequest};
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use std::time::Duration;

/// How long the agent gets to take a lease: a lease is renewed every few seconds, a
/// renewal stuck longer than this is as good as lost.
const RENEW_TIMEOUT: Duration = Duration::from_secs(3);

/// Tells the agent it may run for `left` more; returns what it counts.
pub async fn renew(channel: &AgentChannel, left: Duration) -> Result<LeaseReply, ChannelError> {
    let body = serde_json::to_vec(&LeaseRequest {
        milliseconds: left.as_millis().try_into().unwrap_or(u64::MAX),
    })
    .map_err(|e| ChannelError::Protocol(e.to_string()))?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://agent{AGENT_ROUTE_PREFIX}lease"))
        .version(http::Version::HTTP_2)
        .header(header::CONTENT_TYPE, "application/json")
        .body(RequestBody::new(
            Full::new(Bytes::from(body)).map_err(|e| -> BoxError { match e {} }),
        ))
        .map_err(|e| ChannelError::Protocol(e.to_string()))?;
    let exchange = async {
        let response = channel.send(request).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(ChannelError::Session)?
            .to_bytes();
        if !status.is_success() {
            let error =
                serde_json::from_slice::<AgentError>(&bytes).unwrap_or_else(|_| AgentError {
                    error: String::from_utf8_lossy(&bytes).into_owned(),
                    traceback: None,
                });
            return Err(ChannelError::Agent { status, error });
        }
        serde_json::from_slice(&bytes).map_err(|e| ChannelError::Protocol(e.to_string()))
    };
    tokio::time::timeout(RENEW_TIMEOUT, exchange)
        .await
        .map_err(|_| ChannelError::Timeout(RENEW_TIMEOUT))?
}

/// Renews the lease every second with what `left` says is left (nothing when it says
/// `None`), for as long as it is polled: while a persistent VM's app starts.
pub async fn keep_renewing(
    channel: &AgentChannel,
    left: impl Fn() -> Option<Duration>,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(left) = left()
            && let Err(e) = renew(channel, left).await
        {
            tracing::debug!("renewing the lease of a starting VM: {e}");
        }
    }
}
