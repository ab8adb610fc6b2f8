//! The HTTP API: `GET /healthz`, `GET /readyz`, `GET /metrics`, `POST /backup`.
//!
//! HTTP/1.1 only (probes and Prometheus need nothing else), on hyper directly: four fixed
//! routes do not need a router.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::daemon::{Shared, Trigger};
use crate::{Error, Result};

/// A client that sends no complete request head within this time is dropped, so idle or slow
/// connections cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, _peer) = tokio::select! {
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&req, &shared)) }
            });
            // half_close: a client that shuts down its write side after the request (some
            // probes and scripts do) still gets its answer.
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

fn route(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
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
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            resp
        }
        "/backup" if method == Method::POST => match shared.trigger() {
            Trigger::Accepted => text(StatusCode::ACCEPTED, "backup started\n"),
            Trigger::Busy => text(StatusCode::CONFLICT, "a backup is already running\n"),
            Trigger::NotReady => text(StatusCode::SERVICE_UNAVAILABLE, "repository not open yet\n"),
            Trigger::ShuttingDown => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
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
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn call(port: u16, method: &str, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[tokio::test]
    async fn routes() {
        let shared = Shared::new();
        let listener = bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shared.clone(), stop.clone()));

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
        server.await.unwrap();
    }
}
