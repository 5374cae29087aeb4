//! Serving the router on a socket, safely enough to run on a laptop: a `Host` check against
//! DNS rebinding, header and body read timeouts, a cap on header size, and a connection limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::http::header::HOST;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::RequestBodyTimeoutLayer;

use super::errors::ApiError;
use super::integrations::SECRET_SCANNING_PATH;

/// How much a client may send, and how slowly.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request's head (request line and headers) must arrive within this time, or the
    /// connection is closed. Also how long an idle kept-alive connection is held.
    pub header_timeout: Duration,
    /// A request's body must arrive within this time after its head (else 408).
    pub body_timeout: Duration,
    /// Most bytes of headers (names and values) one request may carry (else 431).
    pub max_header_bytes: usize,
    /// Most bytes of body one request may carry (else 413).
    pub max_body_bytes: usize,
    /// Most connections served at once; more wait in the listen queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            max_connections: 256,
        }
    }
}

/// The `Host` values this server answers to when bound to `addr`: the address itself, and
/// `localhost` with its port for a loopback address.
pub fn allowed_hosts(addr: SocketAddr) -> Vec<String> {
    let mut hosts = vec![addr.to_string()];
    if addr.ip().is_loopback() {
        hosts.push(format!("localhost:{}", addr.port()));
    }
    hosts
}

/// Wraps `router` with the request-level limits and the `Host` check for `addr`.
///
/// The one path exempt from the `Host` check is GitHub's secret-scanning partner endpoint
/// ([`SECRET_SCANNING_PATH`]): GitHub calls it through the host's public name (behind a
/// proxy, say), and a report only acts when GitHub's signature over its body checks out, so a
/// DNS-rebinding page gains nothing there. The header cap, the body timeout and the endpoint's
/// own body cap (1 MiB, 413 beyond) still apply.
pub fn guard(router: Router, addr: SocketAddr, limits: Limits) -> Router {
    let hosts: Arc<[String]> = allowed_hosts(addr).into();
    let max_header_bytes = limits.max_header_bytes;
    router
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let hosts = hosts.clone();
            async move { check_request(&hosts, max_header_bytes, req, next).await }
        }))
}

/// Refuses a request whose `Host` is not this server (a page on another name that resolves
/// to 127.0.0.1 — DNS rebinding — sends its own name) or whose headers are too large.
async fn check_request(
    hosts: &[String],
    max_header_bytes: usize,
    req: Request,
    next: Next,
) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if size > max_header_bytes {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers are larger than {max_header_bytes} bytes"),
        )
        .into_response();
    }
    // The request-target's authority counts only without a `Host` header: one that is there
    // but not text names no host of this server.
    let host = match req.headers().get(HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    };
    let known = host.is_some_and(|h| hosts.iter().any(|a| a.eq_ignore_ascii_case(h)));
    if !known && req.uri().path() != SECRET_SCANNING_PATH {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong_host",
            format!(
                "this server answers to Host {} only (a request naming another host may come from a DNS-rebinding page)",
                hosts.join(" or ")
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// Serves `router` (already [`guard`]ed) on `listener` until `shutdown` completes: HTTP/1.1
/// with the header read timeout and the connection limit of `limits`. On shutdown it stops
/// accepting, and every open connection finishes its request in flight and closes (an idle
/// kept-alive one at once); it returns when they have.
///
/// # Errors
/// An I/O error of the listener.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // E.g. too many open files: wait a moment rather than spin.
                Err(e) => {
                    tracing::warn!(target: "server", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            // Errors here are the client's (a reset, a timeout): nothing to report.
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closed.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection holds a permit: all of them back means all connections are closed.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}
