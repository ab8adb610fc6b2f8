//! The HTTP API: `GET /healthz`, `GET /readyz`, `GET /metrics`, `POST /backup`.
//!
//! HTTP/1.1 only (probes and Prometheus need nothing else), on hyper directly: four fixed
//! routes do not need a router.
//!
//! Only `POST /backup` changes anything, so only it is guarded: with an [`ApiToken`] it needs
//! `Authorization: Bearer <token>` from every peer; without one it is accepted only from a
//! loopback peer, which in a Pod means a container of the same Pod (they share the network
//! namespace). The probes and `/metrics` stay open: kubelet and Prometheus reach them from
//! outside the Pod and they reveal nothing secret.
//!
//! Resource limits, so that a client that can reach the port cannot grow the daemon's memory:
//! at most [`HttpOptions::max_connections`] connections are served at once (further ones are
//! closed as soon as they are accepted), a request head must arrive within
//! [`HttpOptions::header_timeout`] (in hyper 1.x this timer also runs while a keep-alive
//! connection waits for its next request, so it is the idle limit as well), a head is at most
//! [`MAX_HEAD`] bytes, and a request announcing a body larger than [`HttpOptions::max_body`]
//! (or of unknown length) is refused without reading it.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::daemon::{Shared, Trigger};
use crate::{Error, Result};

/// Default for [`HttpOptions::header_timeout`]: probes and scrapes send their request at once.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`HttpOptions::max_connections`]: far above what probes, Prometheus and a few
/// triggers need, far below what would matter for memory (a connection costs tens of KiB).
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Default for [`HttpOptions::max_body`]: no route reads a body.
pub const DEFAULT_MAX_BODY: u64 = 1024;
/// Largest request head (request line and headers) read; hyper's smallest allowed buffer cap.
pub const MAX_HEAD: usize = 8 * 1024;
/// How often, at most, refused connections are reported in the log (a flood must not flood it).
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// The bearer token `POST /backup` requires. Wiped from memory on drop, never printed.
pub struct ApiToken(Zeroizing<Vec<u8>>);

impl ApiToken {
    /// Shortest token accepted: a token is a random secret, not a password to remember.
    pub const MIN_LEN: usize = 16;

    /// A token from a file's contents (surrounding whitespace, such as a trailing line break,
    /// is not part of it). It must be at least [`ApiToken::MIN_LEN`] visible ASCII characters
    /// without spaces, as it travels in an `Authorization` header.
    pub fn new(contents: &[u8]) -> Result<ApiToken> {
        let token = contents.trim_ascii();
        if token.len() < Self::MIN_LEN {
            return Err(Error::ApiToken(format!(
                "it must hold at least {} characters (it holds {}); e.g. `head -c 32 /dev/urandom | base64`",
                Self::MIN_LEN,
                token.len()
            )));
        }
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(Error::ApiToken(
                "it must be visible ASCII without spaces (it is sent in an HTTP header)".into(),
            ));
        }
        Ok(ApiToken(Zeroizing::new(token.to_vec())))
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ.
    fn matches(&self, presented: &[u8]) -> bool {
        // Only the length can leak (ct_eq returns at once on a length mismatch); the length of
        // a random token tells an attacker nothing useful.
        bool::from(self.0.as_slice().ct_eq(presented))
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Who may trigger backups and how much a client may cost.
#[derive(Debug)]
pub struct HttpOptions {
    /// Required as `Authorization: Bearer` on `POST /backup`; `None`: loopback peers only.
    pub token: Option<ApiToken>,
    /// Connections served at once; further ones are closed when accepted.
    pub max_connections: usize,
    /// Time for a request head to arrive, from the connection's start or the previous answer.
    pub header_timeout: Duration,
    /// Largest request body announced; larger or unknown-length bodies get 413.
    pub max_body: u64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            token: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Binds the listener (`0.0.0.0:8080`, `127.0.0.1:0`, ...).
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Serves the API on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    opts: HttpOptions,
    stop: CancellationToken,
) {
    let opts = Arc::new(opts);
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let mut refused = 0u64;
    let mut refused_logged = Instant::now() - REFUSED_LOG_EVERY;
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once: a flood of connections costs a file descriptor for a moment,
            // not a task and buffers each.
            drop(stream);
            refused += 1;
            if refused_logged.elapsed() >= REFUSED_LOG_EVERY {
                tracing::warn!(
                    refused,
                    max_connections = opts.max_connections,
                    "HTTP connection limit reached: connections refused"
                );
                refused = 0;
                refused_logged = Instant::now();
            }
            continue;
        };
        let shared = shared.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            let service = {
                let opts = opts.clone();
                hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    let opts = opts.clone();
                    async move { Ok::<_, Infallible>(handle(&req, peer, &shared, &opts)) }
                })
            };
            // half_close: a client that shuts down its write side after the request (some
            // probes and scripts do) still gets its answer.
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .timer(TokioTimer::new())
                .header_read_timeout(opts.header_timeout)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// Checks the body limit, then routes.
fn handle(
    req: &Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
    opts: &HttpOptions,
) -> Response<Full<Bytes>> {
    let size = req.body().size_hint();
    if size.upper().is_none_or(|n| n > opts.max_body) {
        // Never read: the connection closes after the answer.
        let mut resp = text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    route(req, peer.ip(), shared, opts.token.as_ref())
}

/// Whether a `POST /backup` from `peer` with this request's headers may run a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Granted,
    /// A token is configured and the request lacks it or has another one.
    Unauthenticated,
    /// No token is configured and the peer is not in the Pod.
    NotLoopback,
}

fn authorize(req: &Request<Incoming>, peer: IpAddr, token: Option<&ApiToken>) -> Access {
    authorize_parts(req.headers().get(AUTHORIZATION), peer, token)
}

fn authorize_parts(
    authorization: Option<&HeaderValue>,
    peer: IpAddr,
    token: Option<&ApiToken>,
) -> Access {
    let Some(token) = token else {
        // `to_canonical`: an IPv4 loopback peer on a dual-stack socket is ::ffff:127.0.0.1.
        return if peer.to_canonical().is_loopback() {
            Access::Granted
        } else {
            Access::NotLoopback
        };
    };
    let presented = authorization
        .map(HeaderValue::as_bytes)
        .and_then(|v| {
            // RFC 7235: the scheme is case-insensitive.
            let (scheme, rest) = v.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        })
        .map(<[u8]>::trim_ascii);
    match presented {
        Some(p) if token.matches(p) => Access::Granted,
        _ => Access::Unauthenticated,
    }
}

fn route(
    req: &Request<Incoming>,
    peer: IpAddr,
    shared: &Shared,
    token: Option<&ApiToken>,
) -> Response<Full<Bytes>> {
    let method = req.method();
    match req.uri().path() {
        "/healthz" if method == Method::GET || method == Method::HEAD => {
            text(StatusCode::OK, "ok\n")
        }
        "/readyz" if method == Method::GET || method == Method::HEAD => {
            if shared.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" if method == Method::GET => {
            let mut resp = Response::new(Full::new(Bytes::from(shared.metrics.render())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            resp
        }
        // Authorization first: an unauthenticated caller learns nothing about the state.
        "/backup" if method == Method::POST => match authorize(req, peer, token) {
            Access::Granted => match shared.trigger() {
                Trigger::Accepted => text(StatusCode::ACCEPTED, "backup started\n"),
                Trigger::Busy => text(StatusCode::CONFLICT, "a backup is already running\n"),
                Trigger::NotReady => {
                    text(StatusCode::SERVICE_UNAVAILABLE, "repository not open yet\n")
                }
                Trigger::ShuttingDown => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            },
            Access::Unauthenticated => {
                tracing::warn!(peer = %peer, "POST /backup refused: no valid bearer token");
                let mut resp = text(
                    StatusCode::UNAUTHORIZED,
                    "a valid bearer token is required\n",
                );
                resp.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"snapback\""),
                );
                resp
            }
            Access::NotLoopback => {
                tracing::warn!(
                    peer = %peer,
                    "POST /backup refused: only containers of this Pod may trigger a backup \
                     when no --api-token-file is configured"
                );
                text(
                    StatusCode::FORBIDDEN,
                    "POST /backup is accepted only from inside the Pod unless the sidecar has \
                     --api-token-file\n",
                )
            }
        },
        "/healthz" | "/readyz" | "/metrics" | "/backup" => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request on a fresh connection; the status and the whole answer.
    async fn call_with(port: u16, method: &str, path: &str, extra: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, out)
    }

    async fn call(port: u16, method: &str, path: &str) -> (u16, String) {
        let (status, out) = call_with(port, method, path, "Content-Length: 0\r\n").await;
        (status, out.split_once("\r\n\r\n").unwrap().1.to_string())
    }

    async fn start(opts: HttpOptions) -> (Arc<Shared>, u16, CancellationToken) {
        let shared = Shared::new();
        let listener = bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, shared.clone(), opts, stop.clone()));
        (shared, port, stop)
    }

    #[tokio::test]
    async fn routes() {
        let (shared, port, stop) = start(HttpOptions::default()).await;
        assert_eq!(call(port, "GET", "/healthz").await.0, 200);
        assert_eq!(call(port, "GET", "/readyz").await.0, 503);
        assert_eq!(call(port, "POST", "/backup").await.0, 503);
        shared.set_ready();
        assert_eq!(call(port, "GET", "/readyz").await.0, 200);
        // Nobody runs the scheduler here, so the first request stays pending.
        assert_eq!(call(port, "POST", "/backup").await.0, 202);
        assert_eq!(call(port, "POST", "/backup").await.0, 409);
        assert_eq!(call(port, "GET", "/backup").await.0, 405);
        assert_eq!(call(port, "GET", "/nope").await.0, 404);
        let (status, body) = call(port, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("# TYPE snapback_backup_in_progress gauge"),
            "{body}"
        );
        shared.set_stopping();
        assert_eq!(call(port, "GET", "/readyz").await.0, 503);
        assert_eq!(call(port, "POST", "/backup").await.0, 503);
        stop.cancel();
    }

    const TOKEN: &str = "0123456789abcdef-token";

    #[tokio::test]
    async fn backup_needs_the_bearer_token_when_one_is_configured() {
        let opts = HttpOptions {
            token: Some(ApiToken::new(format!("{TOKEN}\n").as_bytes()).unwrap()),
            ..HttpOptions::default()
        };
        let (shared, port, stop) = start(opts).await;
        shared.set_ready();
        // Refused before anything else is looked at, even from loopback.
        for extra in [
            String::new(),
            "Authorization: Bearer wrong-token-0123456789\r\n".to_string(),
            format!("Authorization: Basic {TOKEN}\r\n"),
            format!("Authorization: Bearer {TOKEN}x\r\n"),
            format!("Authorization: Bearer {}\r\n", &TOKEN[..TOKEN.len() - 1]),
        ] {
            let (status, out) = call_with(port, "POST", "/backup", &extra).await;
            assert_eq!(status, 401, "{extra:?}: {out}");
            assert!(
                out.to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{out}"
            );
        }
        // Open routes stay open; the refused requests left no pending backup (202, not 409).
        assert_eq!(call(port, "GET", "/healthz").await.0, 200);
        assert_eq!(call(port, "GET", "/metrics").await.0, 200);
        let auth = format!("authorization: bearer {TOKEN}\r\n");
        assert_eq!(call_with(port, "POST", "/backup", &auth).await.0, 202);
        assert_eq!(call_with(port, "POST", "/backup", &auth).await.0, 409);
        stop.cancel();
    }

    #[test]
    fn without_a_token_only_loopback_peers_may_trigger() {
        let ok = |ip: &str| authorize_parts(None, ip.parse().unwrap(), None);
        assert_eq!(ok("127.0.0.1"), Access::Granted);
        assert_eq!(ok("127.0.0.6"), Access::Granted);
        assert_eq!(ok("::1"), Access::Granted);
        assert_eq!(ok("::ffff:127.0.0.1"), Access::Granted);
        assert_eq!(ok("10.244.1.17"), Access::NotLoopback);
        assert_eq!(ok("::ffff:10.0.0.1"), Access::NotLoopback);
        assert_eq!(ok("fd00::1"), Access::NotLoopback);
        // With a token, the peer's address does not matter, the token does.
        let token = ApiToken::new(TOKEN.as_bytes()).unwrap();
        let header = HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap();
        for ip in ["127.0.0.1", "10.244.1.17"] {
            let ip = ip.parse().unwrap();
            assert_eq!(
                authorize_parts(None, ip, Some(&token)),
                Access::Unauthenticated
            );
            assert_eq!(
                authorize_parts(Some(&header), ip, Some(&token)),
                Access::Granted
            );
        }
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        assert!(ApiToken::new(b"short\n").is_err());
        assert!(ApiToken::new(b"").is_err());
        assert!(ApiToken::new(b"has a space in the middle of it").is_err());
        let t = ApiToken::new(format!("  {TOKEN}\r\n").as_bytes()).unwrap();
        assert!(t.matches(TOKEN.as_bytes()));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "ApiToken(<redacted>)");
    }

    #[tokio::test]
    async fn announced_bodies_over_the_limit_are_refused_unread() {
        let (shared, port, stop) = start(HttpOptions::default()).await;
        shared.set_ready();
        let (status, _) = call_with(port, "POST", "/backup", "Content-Length: 1048576\r\n").await;
        assert_eq!(status, 413);
        let (status, _) =
            call_with(port, "POST", "/backup", "Transfer-Encoding: chunked\r\n").await;
        assert_eq!(status, 413);
        // Nothing was triggered by the refused requests.
        assert_eq!(call(port, "POST", "/backup").await.0, 202);
        stop.cancel();
    }

    /// More idle connections than the cap: the excess is closed at once, and once the idle
    /// ones time out a fresh connection is served again.
    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_idle_ones_time_out() {
        let opts = HttpOptions {
            max_connections: 4,
            header_timeout: Duration::from_millis(700),
            ..HttpOptions::default()
        };
        let (_shared, port, stop) = start(opts).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap(),
            );
        }
        // Give the server time to accept the four.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut excess = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_millis(500), excess.read(&mut buf))
            .await
            .expect("the connection over the cap was not closed at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // The idle ones are dropped by the header timeout ...
        for mut s in idle {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("an idle connection was not closed by the header timeout");
            assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        }
        // ... and then the API answers again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(call(port, "GET", "/healthz").await.0, 200);
        stop.cancel();
    }

    /// A kept-alive connection that sends nothing more is closed after the header timeout.
    #[tokio::test]
    async fn idle_keep_alive_connections_are_closed() {
        let opts = HttpOptions {
            header_timeout: Duration::from_millis(500),
            ..HttpOptions::default()
        };
        let (_shared, port, stop) = start(opts).await;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let started = Instant::now();
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("the idle keep-alive connection stayed open")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
        assert!(started.elapsed() >= Duration::from_millis(400));
        stop.cancel();
    }
}
