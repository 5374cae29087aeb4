//! Usage limits over real HTTP: the axum layer's 429 responses and `RateLimit` fields, served
//! on an ephemeral port of 127.0.0.1 and called with a real HTTP/1.1 client (hyper).

mod common;

use std::net::SocketAddr;
use std::time::Duration as StdDuration;

use api_keys::axum::ApiKeyLayer;
use api_keys::time::Duration;
use api_keys::{Credits, GenerateRequest, RateLimit, Scope};
use axum::body::Bytes;
use axum::http::header::{AUTHORIZATION, HOST, RETRY_AFTER};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

async fn get_metrics(addr: SocketAddr, token: &str) -> (StatusCode, HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/metrics")
        .header(HOST, addr.to_string())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn limited_keys_get_ratelimit_fields_and_429s_over_http() {
    let s = setup();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new()
        .route("/metrics", get(|| async { "ok" }))
        .layer(ApiKeyLayer::new(s.manager.clone(), Scope::Prometheus));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let (limited, _) = s
        .manager
        .generate(
            &alice(),
            GenerateRequest::new("limited")
                .scope(Scope::Prometheus)
                .rate_limit(RateLimit::new("burst", 2, StdDuration::from_secs(10)))
                .rate_limit(RateLimit::new(
                    "daily",
                    1000,
                    StdDuration::from_secs(86_400),
                )),
        )
        .await
        .unwrap();
    let (plain, _) = s
        .manager
        .generate(
            &alice(),
            GenerateRequest::new("plain").scope(Scope::Prometheus),
        )
        .await
        .unwrap();
    let (paid, _) = s
        .manager
        .generate(
            &alice(),
            GenerateRequest::new("paid")
                .scope(Scope::Prometheus)
                .credits(Credits::new(1)),
        )
        .await
        .unwrap();
    // 4 s into a 10-second window (the test clock starts on a window boundary).
    s.clock.advance(Duration::seconds(4));

    let (status, headers, body) = get_metrics(addr, limited.expose_secret()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(
        h(&headers, "ratelimit-policy"),
        Some(r#""burst";q=2;w=10, "daily";q=1000;w=86400"#)
    );
    let to_midnight = 86_400 - (s.manager.now().unix_timestamp() % 86_400);
    assert_eq!(
        h(&headers, "ratelimit").unwrap(),
        format!(r#""burst";r=1;t=6, "daily";r=999;t={to_midnight}"#)
    );
    let (status, _, _) = get_metrics(addr, limited.expose_secret()).await;
    assert_eq!(status, StatusCode::OK);

    let (status, headers, body) = get_metrics(addr, limited.expose_secret()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, r#"{"error":"rate_limited"}"#);
    assert_eq!(h(&headers, "retry-after"), Some("6"));
    assert_eq!(headers.get(RETRY_AFTER).unwrap(), "6");
    assert_eq!(h(&headers, "ratelimit-policy"), Some(r#""burst";q=2;w=10"#));
    assert_eq!(h(&headers, "ratelimit"), Some(r#""burst";r=0;t=6"#));
    assert_eq!(h(&headers, "content-type"), Some("application/json"));

    // A key without limits gets no fields at all.
    let (status, headers, _) = get_metrics(addr, plain.expose_secret()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("ratelimit").is_none() && headers.get("ratelimit-policy").is_none());

    // Credits: the second request is refused as usage_exceeded.
    assert_eq!(
        get_metrics(addr, paid.expose_secret()).await.0,
        StatusCode::OK
    );
    let (status, headers, body) = get_metrics(addr, paid.expose_secret()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, r#"{"error":"usage_exceeded"}"#);
    assert!(headers.get(RETRY_AFTER).is_none());
}

/// A limit the crate accepts can be larger than a structured-field integer (15 digits): the
/// fields then carry the largest one, so that a conforming parser still reads them.
#[tokio::test]
async fn quotas_above_fifteen_digits_are_written_as_structured_field_integers() {
    let s = setup();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new()
        .route("/metrics", get(|| async { "ok" }))
        .layer(ApiKeyLayer::new(s.manager.clone(), Scope::Prometheus));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let (key, _) = s
        .manager
        .generate(
            &alice(),
            GenerateRequest::new("big")
                .scope(Scope::Prometheus)
                .rate_limit(RateLimit::new(
                    "big",
                    api_keys::MAX_UNITS,
                    StdDuration::from_secs(1),
                )),
        )
        .await
        .unwrap();
    let (status, headers, _) = get_metrics(addr, key.expose_secret()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h(&headers, "ratelimit-policy"),
        Some("\"big\";q=999999999999999;w=1")
    );
    assert_eq!(
        h(&headers, "ratelimit"),
        Some("\"big\";r=999999999999999;t=1")
    );
}
