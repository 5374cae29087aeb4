//! Connections: Host checks, half-sent requests, connection limits, health and icon routes.

use super::*;

// ---- the server is safe to run on a laptop -----------------------------------------------------

#[tokio::test]
async fn only_requests_naming_this_server_as_host_are_answered() {
    let srv = start().await;
    let port = srv.addr.port();
    // A page of evil.example that re-resolved its name to 127.0.0.1 (DNS rebinding) sends its
    // own name as Host: refused before any route, session or key is looked at.
    for host in [
        format!("evil.example:{port}"),
        "127.0.0.1".to_string(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        format!("localhost.evil.example:{port}"),
    ] {
        let r = srv
            .post("/api/keys")
            .header(HOST, host.as_bytes())
            .session(&srv.alice())
            .json(&json!({"name": "p", "scopes": ["prometheus"]}))
            .send()
            .await;
        r.assert_error(StatusCode::MISDIRECTED_REQUEST, "wrong_host");
    }
    assert!(
        srv.state
            .manager
            .list(&api_keys::Actor::manager(
                api_keys::OrgId::new("acme"),
                api_keys::UserId::new("alice")
            ))
            .await
            .unwrap()
            .is_empty(),
        "no key was made"
    );
    // The bound address and localhost with its port are this server.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let r = srv
            .get("/api/whoami")
            .header(HOST, host.as_bytes())
            .session(&srv.alice())
            .send()
            .await;
        assert_eq!(r.status, StatusCode::OK, "{host}: {}", r.text());
    }
}

/// A `Host` header that is not text (a byte over 0x7f) names no host of this server: it was
/// ignored and the request-target's authority checked instead, so an absolute-form request
/// for `http://127.0.0.1:PORT/...` whose `Host` was `evil.example\xff` was answered.
#[tokio::test]
async fn a_host_header_that_is_not_text_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = start().await;
    let port = srv.addr.port();
    let mut req = format!(
        "GET http://127.0.0.1:{port}/api/whoami HTTP/1.1\r\nConnection: close\r\n\
         X-Demo-Session: {}\r\nHost: evil.example",
        srv.alice()
    )
    .into_bytes();
    req.extend_from_slice(b"\xff\r\n\r\n");
    let mut conn = TcpStream::connect(srv.addr).await.unwrap();
    conn.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 421 "), "{out}");
    assert!(
        out.contains("wrong_host") && !out.contains("alice"),
        "{out}"
    );
}

/// Reads from `stream` until the server closes it; what it sent. The outer timeout only keeps a
/// broken server from hanging the test: the limits under test are far shorter.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server held a half-sent request open");
    got
}

#[tokio::test]
async fn half_sent_requests_are_dropped() {
    use tokio::io::AsyncWriteExt;
    let limits = app::Limits {
        header_timeout: std::time::Duration::from_millis(300),
        body_timeout: std::time::Duration::from_millis(300),
        ..app::Limits::default()
    };
    let srv = start_with(AnyStore::new(MemoryStore::new()), limits).await;

    // Headers that never end: the connection is closed.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Slow: a", srv.addr).as_bytes())
        .await
        .unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // A body that never arrives in full: a JSON 408, and the connection is closed.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let head = format!(
        "POST /api/keys HTTP/1.1\r\nHost: {}\r\nX-Demo-Session: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        srv.addr,
        srv.alice()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let got = String::from_utf8_lossy(&read_until_closed(&mut s).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains(r#""error":"request_timeout""#), "{got}");

    // The server still answers.
    let r = srv.get("/healthz").send().await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_one() {
    use tokio::io::AsyncWriteExt;
    let limits = app::Limits {
        max_connections: 1,
        ..app::Limits::default()
    };
    let srv = start_with(AnyStore::new(MemoryStore::new()), limits).await;
    // One idle connection holds the only slot...
    let mut first = TcpStream::connect(srv.addr).await.unwrap();
    first.write_all(b"GET").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let second = tokio::spawn({
        let call = srv.get("/healthz");
        async move { call.send().await.status }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served at once"
    );
    // ...until it closes.
    drop(first);
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), second)
        .await
        .expect("served once the slot was free")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn root_health_and_icon() {
    let srv = start().await;
    let r = srv.get("/").send().await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.header(axum::http::header::LOCATION),
        Some(app::page::PAGE_PATH)
    );
    let r = srv.get("/healthz").send().await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    for path in ["/favicon.ico", app::page::FAVICON_PATH] {
        let r = srv.get(path).send().await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.header(CONTENT_TYPE), Some("image/svg+xml"));
        assert!(r.text().starts_with("<svg"));
    }
}
