//! User requests, forwarded from the host's HTTP/2 streams to the app's HTTP/1.1
//! listener, bodies streamed both ways. One app connection per request: it is local
//! and cheap, and it keeps a slow request from holding up others.

use crate::api::{Body, error};
use crate::app::Listen;
use http::header::{CONNECTION, HOST, HeaderValue, TRANSFER_ENCODING, UPGRADE};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Headers that describe one HTTP/1.1 connection and are forbidden in HTTP/2.
const HOP_BY_HOP: [&str; 3] = ["keep-alive", "proxy-connection", "te"];

pub async fn forward(listen: Option<Listen>, request: Request<Incoming>) -> Response<Body> {
    let Some(listen) = listen else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the app is not running");
    };
    let request = to_http1(request);
    let sender = match &listen {
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
    };
    let mut sender = match sender {
        Ok(sender) => sender,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                &format!("cannot reach the app: {e}"),
            );
        }
    };
    match sender.send_request(request).await {
        Ok(response) => to_http2(response),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            &format!("the app did not answer: {e}"),
        ),
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Incoming>, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    // Drives the connection until the response body is done.
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

fn to_http2(response: Response<Incoming>) -> Response<Body> {
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
    Response::from_parts(parts, body.map_err(Into::into).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

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
