//! The host end of the guest channel: an HTTP/2 client of the guest agent.
//!
//! Typed calls for the agent's own routes ([`AgentChannel::configure`], `health`,
//! `shutdown`, `logs`) and [`AgentChannel::forward`] for user traffic, all as streams
//! of one HTTP/2 session that is reopened when it drops. The contract is
//! [`aleph_protocol::agent`].

mod session;

use aleph_protocol::agent::{AgentConfig, AgentError, ConfigureReply, Health, LogLine};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full};
use hyper::body::Incoming;
use session::Sessions;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::hypervisor::ChannelEndpoint;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of a request sent over the channel: anything that streams bytes.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot connect to the VM's channel at {}: {source}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("channel session: {0}")]
    Session(#[source] hyper::Error),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent answered with an error of its own (a failed app start carries the
    /// app's traceback).
    #[error("the agent answered {status}: {}", .error.error)]
    Agent {
        status: StatusCode,
        error: AgentError,
    },
    #[error("unexpected answer from the agent: {0}")]
    Protocol(String),
}

impl ChannelError {
    /// The app's output when the agent reports a failed start.
    pub fn traceback(&self) -> Option<&str> {
        match self {
            Self::Agent { error, .. } => error.traceback.as_deref(),
            _ => None,
        }
    }
}

/// Request headers that belong to one HTTP/1.1 hop and are forbidden in HTTP/2.
const HOP_BY_HOP: [header::HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::PROXY_AUTHORIZATION,
];

/// How long one readiness attempt waits for the agent. A booting guest's agent starts
/// serving within a few seconds of QEMU starting, even under TCG.
const READY_ATTEMPT: Duration = Duration::from_secs(5);

/// The HTTP/2 client of one VM's agent. Cheap to share (`Arc`); requests run
/// concurrently as streams of one session.
pub struct AgentChannel {
    sessions: Sessions,
}

impl AgentChannel {
    pub fn new(endpoint: ChannelEndpoint) -> Self {
        Self {
            sessions: Sessions::new(endpoint),
        }
    }

    pub fn endpoint(&self) -> &ChannelEndpoint {
        self.sessions.endpoint()
    }

    /// Sends one request as a stream of the current session. A request the session
    /// could not take (it had just closed) is sent again on a new session; one that
    /// was sent is never replayed.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ChannelError> {
        let mut request = request;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (generation, mut sender) = self.sessions.get().await?;
            if sender.ready().await.is_err() {
                self.sessions.discard(generation).await;
                if attempts < 3 {
                    continue;
                }
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut e) => {
                    let unsent = e.take_message();
                    // A stream's own failure (reset by the agent, a body error) leaves
                    // the session to the other requests; only a dead one is replaced.
                    if sender.is_closed() {
                        self.sessions.discard(generation).await;
                    }
                    match unsent {
                        Some(back) if attempts < 3 => request = back,
                        _ => return Err(ChannelError::Session(e.into_error())),
                    }
                }
            }
        }
    }

    /// Closes the current session's socket (requests in flight keep it open up to a
    /// second); the next request opens a new session.
    pub async fn disconnect(&self) {
        self.sessions.reset().await;
    }

    /// Waits until the agent answers its health route, up to `timeout`: a booting VM
    /// answers once its agent serves the channel, an adopted one at once.
    ///
    /// Each attempt is bounded. An attempt that gets no answer closes the session and
    /// pauses before the next one, so that the agent sees the host leave and starts
    /// afresh: a host that reconnects at once (a supervisor re-adopting its VMs) could
    /// otherwise have its new session's first bytes read by the agent's old one.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Health, ChannelError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ChannelError::Timeout(timeout));
            }
            match tokio::time::timeout(left.min(READY_ATTEMPT), self.health()).await {
                Ok(Ok(health)) => return Ok(health),
                // No socket yet (QEMU is starting), or the session broke during boot.
                Ok(Err(ChannelError::Connect { .. } | ChannelError::Session(_))) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(e)) => return Err(e),
                // The next attempt's session waits `RESYNC_PAUSE` after this one.
                Err(_) => self.disconnect().await,
            }
        }
    }

    pub async fn health(&self) -> Result<Health, ChannelError> {
        let response = self
            .send(agent_request(Method::GET, "health", empty()))
            .await?;
        json_reply(response).await
    }

    /// Configures the guest and starts its app; answers once the app accepts
    /// connections, or with [`ChannelError::Agent`] carrying the traceback.
    pub async fn configure(&self, config: &AgentConfig) -> Result<ConfigureReply, ChannelError> {
        let body = serde_json::to_vec(config).map_err(|e| ChannelError::Protocol(e.to_string()))?;
        let mut request = agent_request(Method::POST, "configure", full(body));
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        json_reply(self.send(request).await?).await
    }

    /// Asks the guest to stop its app, sync and power off. Returns once the agent has
    /// acknowledged; the VM ends shortly after.
    pub async fn shutdown(&self) -> Result<(), ChannelError> {
        let response = self
            .send(agent_request(Method::POST, "shutdown", empty()))
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(agent_error(response).await)
        }
    }

    /// The app's and the agent's log lines, as they come; the stream ends with the
    /// session.
    pub async fn logs(
        &self,
    ) -> Result<impl Stream<Item = Result<LogLine, ChannelError>> + use<>, ChannelError> {
        let response = self
            .send(agent_request(Method::GET, "logs", empty()))
            .await?;
        if !response.status().is_success() {
            return Err(agent_error(response).await);
        }
        let frames = BodyStream::new(response.into_body())
            .filter_map(|frame| async move {
                match frame {
                    Ok(frame) => frame.into_data().ok().map(Ok),
                    Err(e) => Some(Err(ChannelError::Session(e))),
                }
            })
            .boxed();
        Ok(json_lines(frames))
    }

    /// Forwards a user request to the app in the VM: method, path, query, headers and
    /// body as they are (less the HTTP/1.1 hop-by-hop headers), the response streamed
    /// back. Paths under the agent's own prefix are refused: users must not reach the
    /// agent's routes.
    pub async fn forward<B>(&self, request: Request<B>) -> Result<Response<Incoming>, ChannelError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if request
            .uri()
            .path()
            .starts_with(aleph_protocol::agent::AGENT_ROUTE_PREFIX)
        {
            return Err(ChannelError::Protocol(format!(
                "{} is reserved for the agent",
                request.uri().path()
            )));
        }
        let (mut parts, body) = request.into_parts();
        if let Some(listed) = parts.headers.get(header::CONNECTION).cloned() {
            for name in listed.to_str().unwrap_or_default().split(',') {
                parts.headers.remove(name.trim());
            }
        }
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        parts.headers.remove("keep-alive");
        parts.headers.remove("proxy-connection");
        // HTTP/2 names the host in the URI's authority.
        let authority = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.parse::<http::uri::Authority>().is_ok())
            .unwrap_or("localhost")
            .to_string();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("http://{authority}{path}")
            .parse()
            .map_err(|e| ChannelError::Protocol(format!("bad request target: {e}")))?;
        parts.version = http::Version::HTTP_2;
        let body = UnsyncBoxBody::new(body.map_err(Into::into));
        self.send(Request::from_parts(parts, body)).await
    }
}

fn empty() -> RequestBody {
    UnsyncBoxBody::new(Empty::new().map_err(|e| match e {}))
}

fn full(bytes: Vec<u8>) -> RequestBody {
    UnsyncBoxBody::new(Full::new(Bytes::from(bytes)).map_err(|e| match e {}))
}

fn agent_request(method: Method, route: &str, body: RequestBody) -> Request<RequestBody> {
    let uri: Uri = format!(
        "http://agent{}{route}",
        aleph_protocol::agent::AGENT_ROUTE_PREFIX
    )
    .parse()
    .expect("agent routes are valid URIs");
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    request
}

async fn json_reply<T: serde::de::DeserializeOwned>(
    response: Response<Incoming>,
) -> Result<T, ChannelError> {
    if !response.status().is_success() {
        return Err(agent_error(response).await);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(ChannelError::Session)?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ChannelError::Protocol(format!("{e} in {:?}", String::from_utf8_lossy(&body))))
}

async fn agent_error(response: Response<Incoming>) -> ChannelError {
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return ChannelError::Session(e),
    };
    let error = serde_json::from_slice::<AgentError>(&body).unwrap_or_else(|_| AgentError {
        error: String::from_utf8_lossy(&body).into_owned(),
        traceback: None,
    });
    ChannelError::Agent { status, error }
}

/// Splits a byte stream into JSON lines.
fn json_lines<S>(frames: S) -> impl Stream<Item = Result<LogLine, ChannelError>>
where
    S: Stream<Item = Result<Bytes, ChannelError>> + Unpin,
{
    futures::stream::unfold(
        (frames, Vec::<u8>::new()),
        |(mut frames, mut pending)| async move {
            loop {
                if let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = &line[..line.len() - 1];
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let parsed = serde_json::from_slice::<LogLine>(line)
                        .map_err(|e| ChannelError::Protocol(format!("log line: {e}")));
                    return Some((parsed, (frames, pending)));
                }
                match frames.next().await {
                    Some(Ok(bytes)) => pending.extend_from_slice(&bytes),
                    Some(Err(e)) => return Some((Err(e), (frames, pending))),
                    None => return None,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aleph_protocol::agent::LogStream;

    #[tokio::test]
    async fn log_lines_are_split_across_frames() {
        let frames = futures::stream::iter(vec![
            Ok(Bytes::from_static(
                b"{\"stream\":\"stdout\",\"message\":\"a\",\"time\":1.0}\n{\"stream\":",
            )),
            Ok(Bytes::from_static(
                b"\"stderr\",\"message\":\"b\",\"time\":2.0}\n\n",
            )),
        ]);
        let lines: Vec<_> = json_lines(frames).collect().await;
        assert_eq!(lines.len(), 2);
        let second = lines[1].as_ref().unwrap();
        assert_eq!(
            (second.stream, second.message.as_str()),
            (LogStream::Stderr, "b")
        );
    }

    #[tokio::test]
    async fn forward_refuses_agent_routes() {
        let channel = AgentChannel::new(ChannelEndpoint::UnixStream(
            "/nonexistent/agent.sock".into(),
        ));
        let request = Request::post("/_agent/shutdown")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert!(matches!(
            channel.forward(request).await,
            Err(ChannelError::Protocol(_))
        ));
    }

    /// A real HTTP/2 server on a Unix socket stands in for the far end of the byte
    /// stream (not for the agent: the VM tests use the real one). It checks that the
    /// client multiplexes, strips hop-by-hop headers, and reconnects after the
    /// session drops.
    #[tokio::test]
    async fn reconnects_after_the_session_drops_and_multiplexes() {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let sessions = Arc::new(AtomicUsize::new(0));
        let counted = sessions.clone();
        let server = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let hop = req.headers().contains_key(header::CONNECTION);
                    let body = format!(
                        "{} {} hop={hop}",
                        req.uri().authority().unwrap(),
                        req.uri().path()
                    );
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                // One session per accepted connection, served until the client leaves.
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });

        let channel = Arc::new(AgentChannel::new(ChannelEndpoint::UnixStream(path)));
        let calls = (0..50).map(|i| {
            let channel = channel.clone();
            async move {
                let request = Request::get(format!("/item/{i}"))
                    .header(header::HOST, "vm.test")
                    .header(header::CONNECTION, "keep-alive")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let response = channel.forward(request).await.unwrap();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, format!("vm.test /item/{i} hop=false"));
            }
        });
        futures::future::join_all(calls).await;
        assert_eq!(
            sessions.load(Ordering::SeqCst),
            1,
            "all requests share one session"
        );

        channel.disconnect().await;
        let request = Request::get("/again").body(Empty::<Bytes>::new()).unwrap();
        assert!(
            channel
                .forward(request)
                .await
                .unwrap()
                .status()
                .is_success()
        );
        assert_eq!(sessions.load(Ordering::SeqCst), 2);
        server.abort();
    }

    /// The far end hangs up (a VM's QEMU reopening its chardev, say): the next request
    /// finds the session closed and opens a new one by itself.
    #[tokio::test]
    async fn a_session_closed_by_the_far_end_is_replaced() {
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let mut served = 0u32;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                served += 1;
                let session = served;
                let service =
                    hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            format!("session {session}"),
                        ))))
                    });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                // Serve a moment, then drop the connection: the socket closes under the client.
                let _ = tokio::time::timeout(Duration::from_millis(300), connection).await;
            }
        });
        let channel = AgentChannel::new(ChannelEndpoint::UnixStream(path));
        let body = |response: Response<Incoming>| async move {
            response.into_body().collect().await.unwrap().to_bytes()
        };
        let first = channel
            .forward(Request::get("/").body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(body(first).await, "session 1");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let second = channel
            .forward(Request::get("/").body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(body(second).await, "session 2");
        server.abort();
    }
}
