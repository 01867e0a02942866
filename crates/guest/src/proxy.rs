//! User requests, forwarded from the host's HTTP/2 streams to the app's HTTP/1.1
//! listener, bodies streamed both ways.
//!
//! Connections to the app are kept alive and reused: under emulation a new connection
//! per request costs the app (uvicorn: accept, a new protocol object) more than the
//! request itself. Each request takes an idle connection or opens one, so a slow
//! request never holds up others; a connection goes back to the idle list once its
//! response has been read to the end.

use crate::api::{Body, error};
use crate::app::Listen;
use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderValue, TRANSFER_ENCODING, UPGRADE};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

/// Headers that describe one HTTP/1.1 connection and are forbidden in HTTP/2.
const HOP_BY_HOP: [&str; 3] = ["keep-alive", "proxy-connection", "te"];

/// What goes to the app: the host's body, or nothing (which can be sent again).
type AppBody = Either<Incoming, Empty<Bytes>>;

/// Answers up to this length (`Content-Length`) are read whole before they are passed on.
const WHOLE_UP_TO: u64 = 64 * 1024;

/// Idle connections kept; more than the host's concurrency is waste.
const MAX_IDLE: usize = 32;
/// An idle connection older than this is not reused: the app may be closing it just as
/// a request goes out (uvicorn closes keep-alive connections after 5 s idle).
const MAX_IDLE_AGE: Duration = Duration::from_secs(2);

struct Idle {
    listen: Listen,
    sender: SendRequest<AppBody>,
    since: Instant,
}

/// Idle connections to the app, the most recently used last.
static IDLE: Mutex<Vec<Idle>> = Mutex::new(Vec::new());

fn idle() -> std::sync::MutexGuard<'static, Vec<Idle>> {
    IDLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An idle connection to `listen` that can take a request now. Old and closed ones are
/// dropped on the way.
fn checkout(listen: &Listen) -> Option<SendRequest<AppBody>> {
    let mut idle = idle();
    idle.retain(|c| c.since.elapsed() < MAX_IDLE_AGE && !c.sender.is_closed());
    let found = idle
        .iter()
        .rposition(|c| &c.listen == listen && c.sender.is_ready())?;
    Some(idle.remove(found).sender)
}

/// Puts the connection back once its response has been read (hyper makes it ready
/// again then); a connection that closes meanwhile is dropped.
fn checkin(listen: Listen, mut sender: SendRequest<AppBody>) {
    tokio::spawn(async move {
        if sender.ready().await.is_ok() {
            let mut idle = idle();
            if idle.len() < MAX_IDLE {
                idle.push(Idle {
                    listen,
                    sender,
                    since: Instant::now(),
                });
            }
        }
    });
}

pub async fn forward(listen: Option<Listen>, request: Request<Incoming>) -> Response<Body> {
    let Some(listen) = listen else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the app is not running");
    };
    let request = to_http1(request);
    let empty = request.body().is_end_stream();
    let request = request.map(|body| {
        if empty {
            Either::Right(Empty::new())
        } else {
            Either::Left(body)
        }
    });
    let response = match send(listen, request).await {
        Ok(response) => response,
        Err(message) => return error(StatusCode::BAD_GATEWAY, &message),
    };
    // A small answer of known length is read whole first, so that its head and body
    // leave as one write to the port (one virtio-serial message, one read on the host)
    // rather than two.
    if response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|length| length <= WHOLE_UP_TO)
    {
        let (parts, body) = response.into_parts();
        return match body.collect().await {
            Ok(body) => to_http2(Response::from_parts(
                parts,
                Full::new(body.to_bytes()).map_err(|e| match e {}).boxed(),
            )),
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                &format!("the app's answer broke off: {e}"),
            ),
        };
    }
    to_http2(response.map(|body| body.map_err(Into::into).boxed()))
}

/// Sends `request` on an idle connection to the app, or a new one.
async fn send(listen: Listen, request: Request<AppBody>) -> Result<Response<Incoming>, String> {
    // A request without a body and with an idempotent method can be sent again when a
    // reused connection fails under it (the app closed it as the request went out).
    let mut replay = (matches!(request.body(), Either::Right(_))
        && request.method().is_idempotent())
    .then(|| {
        let mut copy = Request::new(());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        copy
    });
    let mut request = request;
    let mut reused = checkout(&listen);
    loop {
        let was_reused = reused.is_some();
        let mut sender = match reused.take() {
            Some(sender) => sender,
            None => connect(&listen)
                .await
                .map_err(|e| format!("cannot reach the app: {e}"))?,
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                checkin(listen, sender);
                return Ok(response);
            }
            Err(mut e) => {
                // Once, on a new connection: a request never sent, or one that can be.
                let again = e.take_message().or_else(|| {
                    replay
                        .take()
                        .map(|copy| copy.map(|()| Either::Right(Empty::new())))
                });
                match again {
                    Some(again) if was_reused => request = again,
                    _ => return Err(format!("the app did not answer: {}", e.into_error())),
                }
            }
        }
    }
}

async fn connect(listen: &Listen) -> Result<SendRequest<AppBody>, String> {
    match listen {
        Listen::Unix(path) => match tokio::net::UnixStream::connect(path).await {
            Ok(stream) => handshake(stream).await,
            Err(e) => Err(e.to_string()),
        },
        Listen::Tcp(addr) => match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                handshake(stream).await
            }
            Err(e) => Err(e.to_string()),
        },
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<AppBody>, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    // Drives the connection for as long as it is in use or idle in the list.
    tokio::spawn(connection);
    Ok(sender)
}

/// An HTTP/2 request carries its host as the URI's authority; HTTP/1.1 wants the path
/// alone and a `Host` header.
fn to_http1<B>(request: Request<B>) -> Request<B> {
    let (mut parts, body) = request.into_parts();
    if !parts.headers.contains_key(HOST) {
        let host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or(HeaderValue::from_static("localhost"));
        parts.headers.insert(HOST, host);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}

fn to_http2(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    if let Some(listed) = parts.headers.get(CONNECTION).cloned() {
        // Headers named in `Connection` are hop-by-hop too.
        for name in listed.to_str().unwrap_or_default().split(',') {
            parts.headers.remove(name.trim());
        }
    }
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        parts.headers.remove(name);
    }
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts.version = Version::HTTP_2;
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn get(path: &str) -> Request<AppBody> {
        Request::get(path)
            .header(HOST, "app")
            .body(Either::Right(Empty::new()))
            .unwrap()
    }

    async fn text(response: Response<Incoming>) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// An HTTP/1.1 app on a Unix socket that counts its connections and answers each
    /// request with its path after `delay`.
    fn app(path: &std::path::Path, delay: Duration) -> Arc<AtomicUsize> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        let body =
                            http_body_util::Full::new(Bytes::from(req.uri().path().to_owned()));
                        Ok::<_, std::convert::Infallible>(Response::new(body))
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        accepted
    }

    #[tokio::test]
    async fn connections_are_reused_and_concurrent_requests_get_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let accepted = app(&path, Duration::from_millis(50));
        let listen = Listen::Unix(path);
        for i in 0..5 {
            let response = send(listen.clone(), get(&format!("/{i}"))).await.unwrap();
            assert_eq!(text(response).await, format!("/{i}"));
            // The connection goes back once its response is read.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");

        let calls = (0..8).map(|i| {
            let listen = listen.clone();
            async move {
                let response = send(listen, get(&format!("/c{i}"))).await.unwrap();
                assert_eq!(text(response).await, format!("/c{i}"));
            }
        });
        futures::future::join_all(calls).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            8,
            "concurrent requests do not wait for each other's connection"
        );
    }

    /// The app closes a kept-alive connection as the next request arrives: that request
    /// is sent again on a new connection.
    #[tokio::test]
    async fn a_request_on_a_connection_the_app_closes_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let mut connections = 0;
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                connections += 1;
                let n = connections;
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // Answers the first request, reads the second and hangs up.
                    let _ = stream.read(&mut buf).await;
                    let body = format!("connection {n}");
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    stream.write_all(head.as_bytes()).await.unwrap();
                    stream.write_all(body.as_bytes()).await.unwrap();
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        let listen = Listen::Unix(path);
        let first = send(listen.clone(), get("/")).await.unwrap();
        assert_eq!(text(first).await, "connection 1");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = send(listen.clone(), get("/")).await.unwrap();
        assert_eq!(text(second).await, "connection 2");
    }

    #[test]
    fn http2_request_becomes_origin_form_with_host() {
        let request = Request::builder()
            .uri("http://vm.example:80/items/1?q=a%20b")
            .header("x-custom", "1")
            .body(())
            .unwrap();
        let request = to_http1(request);
        assert_eq!(request.uri(), "/items/1?q=a%20b");
        assert_eq!(request.headers()[HOST], "vm.example:80");
        assert_eq!(request.headers()["x-custom"], "1");
        assert_eq!(request.version(), Version::HTTP_11);
    }

    #[test]
    fn an_explicit_host_header_is_kept() {
        let request = Request::builder()
            .uri("/")
            .header(HOST, "app.local")
            .body(())
            .unwrap();
        assert_eq!(to_http1(request).headers()[HOST], "app.local");
    }
}
