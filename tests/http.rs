//! End to end over real HTTP: the example server's router served on an ephemeral port of
//! 127.0.0.1, called with a real HTTP/1.1 client (hyper), one connection per request.

#[allow(dead_code)]
#[path = "../examples/server/app.rs"]
mod app;
mod common;

use common::CountingStore;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use api_keys::{AnyStore, Keyring, MasterKey, MemoryStore};
use axum::body::Bytes;
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderName, HeaderValue, WWW_AUTHENTICATE,
};
use axum::http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

struct Server {
    addr: SocketAddr,
    state: app::AppState,
}

async fn start() -> Server {
    start_on(MemoryStore::new()).await
}

/// Serves the app over `store` (a clone shares the map, so a test can reach into it).
async fn start_on(store: MemoryStore) -> Server {
    start_with(AnyStore::new(store), app::Limits::default()).await
}

/// Serves the app over `store` with `limits`, as `main.rs` does: guarded (Host check, header
/// and body limits) and served with the header timeout and connection limit.
async fn start_with(store: AnyStore, limits: app::Limits) -> Server {
    capture_logs();
    let state = app::AppState::new(store, Keyring::new(1, MasterKey::generate())).expect("state");
    serve_state(state, limits).await
}

async fn serve_state(state: app::AppState, limits: app::Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app::guard(app::router(state.clone()), addr, limits);
    tokio::spawn(app::serve(
        listener,
        router,
        limits,
        std::future::pending::<()>(),
    ));
    Server { addr, state }
}

impl Server {
    fn alice(&self) -> String {
        self.state.session("acme", "alice", "manager").unwrap()
    }

    fn bob(&self) -> String {
        self.state.session("acme", "bob", "member").unwrap()
    }

    fn call(&self, method: Method, path: &str) -> Call {
        Call {
            addr: self.addr,
            method,
            path: path.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    fn get(&self, path: &str) -> Call {
        self.call(Method::GET, path)
    }

    fn post(&self, path: &str) -> Call {
        self.call(Method::POST, path)
    }

    fn delete(&self, path: &str) -> Call {
        self.call(Method::DELETE, path)
    }

    fn put(&self, path: &str) -> Call {
        self.call(Method::PUT, path)
    }

    /// Creates a key as alice and returns (token, info).
    async fn create(&self, body: Value) -> (String, Value) {
        let r = self
            .post("/api/keys")
            .session(&self.alice())
            .json(&body)
            .send()
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let v = r.json();
        (v["key"].as_str().unwrap().to_string(), v["info"].clone())
    }

    async fn scrape(&self, token: &str) -> Reply {
        self.get("/metrics").bearer(token).send().await
    }
}

struct Call {
    addr: SocketAddr,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Call {
    fn header(mut self, name: HeaderName, value: &[u8]) -> Self {
        self.headers
            .push((name, HeaderValue::from_bytes(value).unwrap()));
        self
    }

    fn session(self, s: &str) -> Self {
        self.header(HeaderName::from_static(app::SESSION_HEADER), s.as_bytes())
    }

    fn bearer(self, token: &str) -> Self {
        self.header(AUTHORIZATION, format!("Bearer {token}").as_bytes())
    }

    fn json(mut self, v: &Value) -> Self {
        self.body = Bytes::from(v.to_string());
        self.header(CONTENT_TYPE, b"application/json")
    }

    fn raw_body(mut self, b: &str) -> Self {
        self.body = Bytes::from(b.to_string());
        self
    }

    async fn send(self) -> Reply {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder().method(self.method).uri(&self.path);
        if !self.headers.iter().any(|(n, _)| n == HOST) {
            req = req.header(HOST, self.addr.to_string());
        }
        for (n, v) in self.headers {
            req = req.header(n, v);
        }
        let resp = sender
            .send_request(req.body(Full::new(self.body)).unwrap())
            .await
            .expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn challenge(&self) -> Option<&str> {
        self.header(WWW_AUTHENTICATE)
    }

    /// Asserts an RFC 9457 problem of `class` (in the `error` member) with `status`.
    fn assert_error(&self, status: StatusCode, class: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header(CONTENT_TYPE),
            Some("application/problem+json"),
            "{}",
            self.text()
        );
        let v = self.json();
        assert_eq!(v["error"], class, "{}", self.text());
        assert_eq!(v["status"], status.as_u16(), "{}", self.text());
        assert_eq!(v["type"], format!("urn:api-keys:problem:{class}"));
        assert_eq!(v["title"], status.canonical_reason().unwrap());
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.text()
        );
    }
}

/// Parses the Prometheus text exposition format (0.0.4) strictly, line by line, into
/// `{series → value}` where a series is `name{labels}` as written. Panics on any line that
/// is not a `# HELP`, a `# TYPE` or a sample of a declared family.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    fn is_name(s: &str) -> bool {
        let mut b = s.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
    }
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut samples = HashMap::new();
    for line in text.lines() {
        // Empty lines are allowed (and ignored) by the format; the exporter separates
        // families with them.
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP needs text");
            assert!(is_name(name) && !help.is_empty(), "bad HELP line {line:?}");
            assert!(helped.insert(name.to_string()), "second HELP for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE needs a kind");
            assert!(is_name(name), "bad TYPE line {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type {kind}"
            );
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "second TYPE for {name}"
            );
            if let Some(prev) = current.replace(name.to_string()) {
                finished.insert(prev);
            }
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample needs a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(is_name(name), "bad metric name in {line:?}");
        assert_eq!(
            current.as_deref(),
            Some(name),
            "sample outside its family: {line:?}"
        );
        assert!(!finished.contains(name), "family {name} is not contiguous");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad label set in {line:?}"));
            for pair in inner.split(',') {
                let (k, v) = pair.split_once('=').expect("label needs =");
                assert!(
                    is_name(k) && !k.starts_with("__"),
                    "bad label name in {line:?}"
                );
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "label value must be quoted in {line:?}"
                );
            }
        }
        if typed[name] == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} should end in _total"
            );
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "duplicate {series}"
        );
    }
    for name in typed.keys() {
        assert!(helped.contains(name), "{name} has no HELP");
    }
    samples
}

#[tokio::test]
async fn a_prometheus_key_scrapes_until_it_is_revoked() {
    let srv = start().await;
    let (token, info) = srv
        .create(json!({"name": "prometheus", "scopes": ["prometheus"], "expiry": {"days": 30}}))
        .await;
    assert_eq!(info["status"], "active");
    assert_eq!(info["scopes"], json!(["prometheus"]));
    let id = info["id"].as_str().unwrap().to_string();

    let r = srv.scrape(&token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.header(CONTENT_TYPE)
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
    );
    let m = parse_exposition(&r.text());
    assert_eq!(m[r#"api_keys_keys{org="acme",status="active"}"#], 1.0);
    assert_eq!(m[r#"api_keys_keys{org="acme",status="revoked"}"#], 0.0);
    assert_eq!(
        m[r#"api_keys_verifications_total{org="acme",outcome="success"}"#],
        1.0
    );

    // The Prometheus key has no SCIM scope.
    let r = srv.get("/scim/v2/Users").bearer(&token).send().await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="scim""#)
    );
    // Under /scim/ the answer is a SCIM error.
    assert_eq!(
        r.json()["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
    );

    let r = srv
        .post(&format!("/api/keys/{id}/revoke"))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "revoked");

    // The very next scrape fails.
    let r = srv.scrape(&token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="api", error="invalid_token""#)
    );
    assert_eq!(r.json(), json!({"error": "invalid_token"}));

    // A second key sees what happened.
    let (second, _) = srv
        .create(json!({"name": "prometheus 2", "scopes": ["prometheus"]}))
        .await;
    let m = parse_exposition(&srv.scrape(&second).await.text());
    let org = |outcome: &str| {
        m[&format!(r#"api_keys_verifications_total{{org="acme",outcome="{outcome}"}}"#)]
    };
    assert_eq!(org("success"), 2.0);
    assert_eq!(org("revoked"), 1.0);
    assert_eq!(org("scope_not_allowed"), 1.0);
    assert_eq!(m[r#"api_keys_keys{org="acme",status="active"}"#], 1.0);
    assert_eq!(m[r#"api_keys_keys{org="acme",status="revoked"}"#], 1.0);
}

#[tokio::test]
async fn delete_stops_a_key_at_once_and_removes_it() {
    let srv = start().await;
    let (token, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    assert_eq!(srv.scrape(&token).await.status, StatusCode::OK);
    let r = srv
        .delete(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(r.body.is_empty());
    let r = srv.scrape(&token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="api", error="invalid_token""#)
    );
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
    let list = srv.get("/api/keys").session(&srv.alice()).send().await;
    assert_eq!(list.json(), json!([]));
    let again = srv
        .delete(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    again.assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_scim_key_lists_its_organizations_users() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "okta", "scopes": ["scim"], "expiry": {"days": 90}}))
        .await;
    let r = srv.get("/scim/v2/Users").bearer(&token).send().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header(CONTENT_TYPE), Some("application/scim+json"));
    let v = r.json();
    assert_eq!(
        v["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:ListResponse"])
    );
    assert_eq!(v["totalResults"], 2);
    assert_eq!(v["startIndex"], 1);
    assert_eq!(v["itemsPerPage"], 2);
    let names: Vec<&str> = v["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(
        v["Resources"][0]["schemas"],
        json!(["urn:ietf:params:scim:schemas:core:2.0:User"])
    );
    // The filter SCIM clients send to look a user up, and paging.
    let r = srv
        .get("/scim/v2/Users?filter=userName%20eq%20%22bob%22")
        .bearer(&token)
        .send()
        .await;
    let v = r.json();
    assert_eq!(
        (v["totalResults"].as_u64(), v["itemsPerPage"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["Resources"][0]["userName"], "bob");
    let v = srv
        .get("/scim/v2/Users?filter=USERNAME+EQ+%22nobody%22")
        .bearer(&token)
        .send()
        .await
        .json();
    assert_eq!(v["totalResults"], 0);
    let v = srv
        .get("/scim/v2/Users?startIndex=2&count=5")
        .bearer(&token)
        .send()
        .await
        .json();
    assert_eq!(v["totalResults"], 2);
    assert_eq!(v["startIndex"], 2);
    assert_eq!(v["itemsPerPage"], 1);
    assert_eq!(v["Resources"][0]["userName"], "bob");
    let v = srv
        .get("/scim/v2/Users?count=0")
        .bearer(&token)
        .send()
        .await
        .json();
    assert_eq!(
        (v["totalResults"].as_u64(), v["itemsPerPage"].as_u64()),
        (Some(2), Some(0))
    );
    for bad in [
        "filter=name%20co%20%22a%22",
        "filter=userName%20eq%20bob",
        "count=-1",
    ] {
        let r = srv
            .get(&format!("/scim/v2/Users?{bad}"))
            .bearer(&token)
            .send()
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.header(CONTENT_TYPE), Some("application/scim+json"));
        let v = r.json();
        assert_eq!(
            v["schemas"],
            json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
        );
        assert_eq!(v["status"], "400");
    }

    // And no Prometheus scope.
    let r = srv.scrape(&token).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.challenge().unwrap().ends_with(r#"scope="prometheus""#));

    // A SCIM key of another organization sees that organization's (empty) directory.
    let carol = srv.state.session("globex", "carol", "manager").unwrap();
    let r = srv
        .post("/api/keys")
        .session(&carol)
        .json(&json!({"name": "scim", "scopes": ["scim"]}))
        .send()
        .await;
    let other = r.json()["key"].as_str().unwrap().to_string();
    let v = srv.get("/scim/v2/Users").bearer(&other).send().await.json();
    assert_eq!(v["totalResults"], 0);
    assert_eq!(v["Resources"], json!([]));
}

#[tokio::test]
async fn missing_malformed_and_oversized_authorization_headers() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;

    let r = srv.get("/metrics").send().await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.challenge(), Some(r#"Bearer realm="api""#));

    let r = srv
        .get("/metrics")
        .header(AUTHORIZATION, b"Basic YWxpY2U6c2VjcmV0")
        .send()
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.challenge(), Some(r#"Bearer realm="api""#));

    for bad in [&b"Bearer"[..], b"Bearer two words", b"Bearer \xe9t\xe9"] {
        let r = srv.get("/metrics").header(AUTHORIZATION, bad).send().await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(
            r.challenge(),
            Some(r#"Bearer realm="api", error="invalid_request""#)
        );
        assert_eq!(r.json(), json!({"error": "invalid_request"}));
    }

    let r = srv.scrape("sak_thisIsNotAKey").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="api", error="invalid_token""#)
    );

    // Two Authorization headers, even if both are good.
    let r = srv
        .get("/metrics")
        .bearer(&token)
        .bearer(&token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // 8 KiB of header: refused before parsing, and it reaches no verification.
    let huge = format!("Bearer sak_{}", "A".repeat(8 * 1024));
    let r = srv
        .get("/metrics")
        .header(AUTHORIZATION, huge.as_bytes())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="api", error="invalid_request""#)
    );
    assert!(r.body.len() < 64, "the answer echoes nothing");
    // 64 KiB of headers: over the server's header limit, a JSON 431.
    let r = srv
        .get("/metrics")
        .header(
            AUTHORIZATION,
            format!("Bearer {}", "A".repeat(64 * 1024)).as_bytes(),
        )
        .send()
        .await;
    r.assert_error(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    );

    // The server is fine. Failures that name no key of this organization (the
    // `sak_thisIsNotAKey` token) are not in its metrics: they would tell its key holder
    // whether a guessed key id exists in another organization.
    let r = srv.scrape(&token).await;
    assert_eq!(r.status, StatusCode::OK);
    let m = parse_exposition(&r.text());
    assert!(
        m.keys().all(|k| k.contains(r#"org="acme""#)),
        "every series is this organization's: {m:?}"
    );
    let failures: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("api_keys_verifications_total") && !k.contains("success"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(failures, 0.0);
}

#[tokio::test]
async fn a_member_cannot_use_the_management_api() {
    let srv = start().await;
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let bob = srv.bob();
    let calls = [
        srv.get("/api/keys").session(&bob),
        srv.post("/api/keys")
            .session(&bob)
            .json(&json!({"name": "x", "scopes": ["prometheus"]})),
        srv.get(&format!("/api/keys/{id}")).session(&bob),
        srv.post(&format!("/api/keys/{id}/revoke")).session(&bob),
        srv.post(&format!("/api/keys/{id}/roll")).session(&bob),
        srv.post(&format!("/api/keys/{id}/reveal")).session(&bob),
        srv.delete(&format!("/api/keys/{id}")).session(&bob),
        // Ids that do not exist or are not even ids: still 403, nothing is leaked.
        srv.get("/api/keys/00000000000").session(&bob),
        srv.get("/api/keys/not-an-id").session(&bob),
    ];
    for call in calls {
        let path = call.path.clone();
        let r = call.send().await;
        r.assert_error(StatusCode::FORBIDDEN, "permission_denied");
        assert!(!r.json()["detail"].as_str().unwrap().is_empty(), "{path}");
    }
    // The key is untouched.
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.json()["status"], "active");
    // Bob may still see who he is and the policy.
    let r = srv.get("/api/whoami").session(&bob).send().await;
    assert_eq!(
        r.json(),
        json!({"org": "acme", "user": "bob", "role": "member"})
    );
}

#[tokio::test]
async fn sessions_must_be_present_and_genuine() {
    let srv = start().await;
    let alice = srv.alice();
    let forged_role = alice.replacen(".manager.", ".member.", 1);
    let mut flipped = alice.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    let upper = alice.to_uppercase();
    let unsigned = "acme.alice.manager.99999999999".to_string();
    // A later expiry under the old signature.
    let mut extended: Vec<&str> = alice.split('.').collect();
    let later = (extended[3].parse::<i64>().unwrap() + 86_400).to_string();
    extended[3] = &later;
    let extended = extended.join(".");
    for session in [
        None,
        Some(forged_role),
        Some(flipped),
        Some(upper),
        Some(unsigned),
        Some(extended),
    ] {
        let mut call = srv.get("/api/keys");
        if let Some(s) = &session {
            call = call.session(s);
        }
        let r = call.send().await;
        r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    // Sessions of another server (another signing key) are refused too.
    let other = start().await;
    let r = srv.get("/api/whoami").session(&other.alice()).send().await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_and_foreign_keys_are_not_found() {
    let srv = start().await;
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let alice = srv.alice();
    for path in ["/api/keys/00000000001", "/api/keys/zzzz"] {
        let r = srv.get(path).session(&alice).send().await;
        r.assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    let r = srv
        .post("/api/keys/00000000001/revoke")
        .session(&alice)
        .send()
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
    // A manager of another organization cannot tell the key exists.
    let carol = srv.state.session("globex", "carol", "manager").unwrap();
    for call in [
        srv.get(&format!("/api/keys/{id}")).session(&carol),
        srv.post(&format!("/api/keys/{id}/revoke")).session(&carol),
        srv.delete(&format!("/api/keys/{id}")).session(&carol),
    ] {
        call.send()
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    let r = srv.get("/api/keys").session(&carol).send().await;
    assert_eq!(r.json(), json!([]));
}

#[tokio::test]
async fn requests_outside_the_policy_are_refused_with_what_is_allowed() {
    let srv = start().await;
    let alice = srv.alice();
    let create = |body: Value| srv.post("/api/keys").session(&alice).json(&body).send();

    let r = create(json!({"name": "p", "scopes": ["prometheus"], "expiry": {"days": 5}})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    let msg = r.json()["detail"].as_str().unwrap().to_string();
    assert!(msg.contains("7, 30, 60, 90, 180, 365"), "{msg}");

    let r = create(json!({"name": "p", "scopes": ["prometheus"], "expiry": {"days": 70000}})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    assert!(r.json()["detail"].as_str().unwrap().contains("7, 30, 60"));

    let r = create(json!({"name": "p", "scopes": ["prometheus"], "expiry": "never"})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");

    let far = srv.state.manager.now().unix_timestamp() + 400 * 86_400;
    let r = create(json!({"name": "p", "scopes": ["prometheus"], "expiry": {"at": far}})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");

    let r = create(json!({"name": "p", "scopes": []})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    let r = create(json!({"name": "p", "scopes": ["Not A Scope"]})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    let r = create(json!({"name": "", "scopes": ["prometheus"]})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");

    // Not JSON, the wrong shape, unknown fields.
    for body in [
        "{not json",
        "[]",
        r#"{"name":"p"}"#,
        r#"{"name":"p","scopes":["prometheus"],"expires":30}"#,
        r#"{"name":"p","scopes":["prometheus"],"expiry":{"days":30,"at":1}}"#,
        r#"{"name":"p","scopes":["prometheus"],"expiry":"soon"}"#,
    ] {
        let r = srv
            .post("/api/keys")
            .session(&alice)
            .raw_body(body)
            .send()
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }

    // Reveal is off by default.
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let r = srv
        .post(&format!(
            "/api/keys/{}/reveal",
            info["id"].as_str().unwrap()
        ))
        .session(&alice)
        .send()
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    // Nothing else was created.
    let list = srv.get("/api/keys").session(&alice).send().await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn expiry_forms_and_policy_document() {
    let srv = start().await;
    let r = srv.get("/api/policy").session(&srv.alice()).send().await;
    assert_eq!(
        r.json(),
        json!({"periods":[7,30,60,90,180,365],"default_days":90,"max_days":365,"allow_never":false,"allow_reveal":false,
               "warn_before_seconds":[30 * 86_400, 7 * 86_400, 86_400],"revoke_unused_after_seconds":null})
    );
    let now = srv.state.manager.now().unix_timestamp();
    let (_, default) = srv
        .create(json!({"name": "a", "scopes": ["prometheus"]}))
        .await;
    let created = default["created_at"].as_i64().unwrap();
    assert!(created >= now - 1);
    assert_eq!(
        default["expires_at"].as_i64().unwrap(),
        created + 90 * 86_400
    );
    let at = now + 10 * 86_400;
    let (_, explicit) = srv
        .create(json!({"name": "b", "scopes": ["prometheus", "scim"], "expiry": {"at": at}}))
        .await;
    assert_eq!(explicit["expires_at"].as_i64().unwrap(), at);
    for field in [
        "id",
        "org",
        "name",
        "scopes",
        "created_at",
        "created_by",
        "expires_at",
        "revoked_at",
        "status",
        "last_used_at",
        "hint",
        "revocation",
        "notices",
    ] {
        assert!(explicit.get(field).is_some(), "KeyInfo lacks {field}");
    }
    assert_eq!(explicit["revocation"], Value::Null);
    assert_eq!(
        explicit["notices"],
        json!({"expiry_warned": [], "expired": false, "unused_warned": false})
    );
    assert_eq!(explicit["created_by"], "alice");
    assert_eq!(explicit["revoked_at"], Value::Null);
}

#[tokio::test]
async fn roll_replaces_a_key_with_an_overlap() {
    let srv = start().await;
    let alice = srv.alice();
    let (old, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let r = srv
        .post(&format!("/api/keys/{id}/roll"))
        .session(&alice)
        .json(&json!({"overlap_seconds": 3600}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.header(CACHE_CONTROL), Some("no-store"));
    let v = r.json();
    let new = v["key"].as_str().unwrap();
    assert_ne!(v["info"]["id"], info["id"]);
    assert_eq!(v["info"]["name"], "p");
    // Both work during the overlap; the old one now ends within the hour.
    assert_eq!(srv.scrape(&old).await.status, StatusCode::OK);
    assert_eq!(srv.scrape(new).await.status, StatusCode::OK);
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&alice)
        .send()
        .await;
    let now = srv.state.manager.now().unix_timestamp();
    assert!(r.json()["expires_at"].as_i64().unwrap() <= now + 3600);

    for body in [
        json!({"overlap_seconds": -1}),
        json!({"overlap_seconds": i64::MAX}),
    ] {
        let r = srv
            .post(&format!("/api/keys/{id}/roll"))
            .session(&alice)
            .json(&body)
            .send()
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    // A revoked key cannot be rolled.
    srv.post(&format!("/api/keys/{id}/revoke"))
        .session(&alice)
        .send()
        .await;
    let r = srv
        .post(&format!("/api/keys/{id}/roll"))
        .session(&alice)
        .send()
        .await;
    r.assert_error(StatusCode::CONFLICT, "revoked");
}

#[tokio::test]
async fn token_responses_are_not_cached_and_no_route_hands_out_sessions() {
    let srv = start().await;
    let r = srv
        .post("/api/keys")
        .session(&srv.alice())
        .json(&json!({"name": "p", "scopes": ["prometheus"]}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header(CACHE_CONTROL), Some("no-store"));
    assert_eq!(r.header(CONTENT_TYPE), Some("application/json"));

    // No route hands sessions out: a page of another origin has nothing to read.
    let r = srv.get("/demo/sessions").send().await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
}

/// A `tracing` writer into one buffer for the whole test binary.
#[derive(Clone, Copy)]
struct Captured;

static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends every test's `tracing` output (all levels) into [`LOGS`]. A global subscriber, set
/// before any server starts: a per-thread one would miss events while other tests run.
fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| Captured)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

#[tokio::test]
async fn logs_never_contain_a_key_and_server_faults_are_generic_500s() {
    let store = MemoryStore::new();
    let srv = start_on(store.clone()).await;
    let (token, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    assert_eq!(srv.scrape(&token).await.status, StatusCode::OK);
    assert_eq!(
        srv.get("/scim/v2/Users").bearer(&token).send().await.status,
        StatusCode::FORBIDDEN
    );
    // A near miss: the real token with its last character changed.
    let mut near = token.clone();
    let last = near.pop().unwrap();
    near.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(srv.scrape(&near).await.status, StatusCode::UNAUTHORIZED);

    // A tampered row: the server's fault, a generic 500 without a challenge.
    let key_id = api_keys::KeyId::parse(&id).unwrap();
    let mut rec = api_keys::KeyStore::get(&store, &key_id)
        .await
        .unwrap()
        .unwrap();
    rec.sealed.tag[0] ^= 1;
    store.overwrite_unchecked(rec);
    let other = start_on(store.clone()).await; // a fresh manager: nothing cached
    let r = other.scrape(&token).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.challenge(), None);
    assert_eq!(r.json(), json!({"error": "internal"}));

    // The management API refuses to re-seal the tampered row, with a generic message.
    let r = srv
        .post(&format!("/api/keys/{id}/revoke"))
        .session(&srv.alice())
        .send()
        .await;
    r.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(!r.text().contains("integrity"), "{}", r.text());

    let logs = logs();
    // The events are there...
    assert!(logs.contains("verification_failed"), "{logs}");
    assert!(logs.contains("scope_not_allowed"), "{logs}");
    assert!(logs.contains("api_keys::http"), "{logs}");
    assert!(logs.contains(&id), "key ids are public and logged");
    // ...and no key, nor its secret part, nor the header.
    let secret_part = &token[token.len() - 40..];
    assert!(!logs.contains(secret_part), "a key leaked into the logs");
    assert!(!logs.contains(&near[near.len() - 40..]));
    assert!(!logs.contains("Bearer"), "{logs}");
    // No test's token either (they all run under this subscriber): after any `sak_`, fewer
    // characters than a token's id and secret.
    for (i, _) in logs.match_indices("sak_") {
        let run = logs[i + 4..]
            .bytes()
            .take_while(u8::is_ascii_alphanumeric)
            .count();
        assert!(
            run < 20,
            "something token-like was logged: {}",
            &logs[i..i + 24]
        );
    }
}

#[tokio::test]
async fn reveal_when_the_policy_allows_it() {
    let state = app::AppState::with_policy(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        api_keys::Policy::default().allow_reveal(true),
    )
    .unwrap();
    capture_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let srv = Server { addr, state };

    let r = srv.get("/api/policy").session(&srv.alice()).send().await;
    assert_eq!(r.json()["allow_reveal"], true);
    let (token, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let path = format!("/api/keys/{}/reveal", info["id"].as_str().unwrap());
    let r = srv.post(&path).session(&srv.alice()).send().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header(CACHE_CONTROL), Some("no-store"));
    assert_eq!(r.json(), json!({"key": token}));
    // Members still may not; revoked keys are not revealed.
    let r = srv.post(&path).session(&srv.bob()).send().await;
    r.assert_error(StatusCode::FORBIDDEN, "permission_denied");
    srv.post(&format!(
        "/api/keys/{}/revoke",
        info["id"].as_str().unwrap()
    ))
    .session(&srv.alice())
    .send()
    .await;
    let r = srv.post(&path).session(&srv.alice()).send().await;
    r.assert_error(StatusCode::CONFLICT, "revoked");
}

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

#[tokio::test]
async fn sessions_expire() {
    let srv = start().await;
    let now = srv.state.manager.now();
    let past = srv
        .state
        .session_until(
            "acme",
            "alice",
            "manager",
            now - api_keys::time::Duration::seconds(1),
        )
        .unwrap();
    let r = srv.get("/api/whoami").session(&past).send().await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(r.json()["detail"].as_str().unwrap().contains("expired"));

    let soon = srv
        .state
        .session_until(
            "acme",
            "alice",
            "manager",
            now + api_keys::time::Duration::minutes(5),
        )
        .unwrap();
    let r = srv.get("/api/whoami").session(&soon).send().await;
    assert_eq!(r.status, StatusCode::OK);

    // A session carries its end, within the state's lifetime.
    let alice = srv.alice();
    let end: i64 = alice.split('.').nth(3).unwrap().parse().unwrap();
    let ttl = end - now.unix_timestamp();
    assert!(
        (app::SESSION_TTL.whole_seconds() - 5..=app::SESSION_TTL.whole_seconds() + 5)
            .contains(&ttl),
        "{ttl}"
    );
    let short = srv
        .state
        .clone()
        .with_session_ttl(api_keys::time::Duration::ZERO)
        .session("acme", "alice", "manager")
        .unwrap();
    let r = srv.get("/api/whoami").session(&short).send().await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
}

/// A session lifetime past the end of the calendar (the state's setting is the host's) makes
/// sessions that last until the calendar's end: adding it to the clock's time panicked
/// ("overflow adding duration to date") when a session was made.
#[tokio::test]
async fn a_session_lifetime_past_the_calendar_saturates() {
    let srv = start().await;
    let forever = srv
        .state
        .clone()
        .with_session_ttl(api_keys::time::Duration::MAX)
        .session("acme", "alice", "manager")
        .expect("a valid name gets a session");
    let end: i64 = forever.split('.').nth(3).unwrap().parse().unwrap();
    assert_eq!(
        end,
        api_keys::time::PrimitiveDateTime::MAX
            .assume_utc()
            .unix_timestamp()
    );
    let r = srv.get("/api/whoami").session(&forever).send().await;
    assert_eq!(
        r.json(),
        json!({"org": "acme", "user": "alice", "role": "manager"})
    );

    // The clock is the host's too: half an hour before the calendar's end, a login link (valid
    // for an hour) and a 12-hour session end with the calendar.
    let late =
        api_keys::time::PrimitiveDateTime::MAX.assume_utc() - api_keys::time::Duration::minutes(30);
    let state = app::AppState::with_integrations(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        app::Integrations {
            clock: Some(std::sync::Arc::new(api_keys::ManualClock::new(late))),
            ..app::Integrations::default()
        },
    )
    .expect("state");
    assert!(state.login_nonce().is_ok());
    assert!(state.session("acme", "alice", "manager").is_some());
}

#[tokio::test]
async fn a_login_link_works_once() {
    let srv = start().await;
    let nonce = srv.state.login_nonce().unwrap();
    let r = srv
        .post("/demo/login")
        .json(&json!({ "nonce": nonce }))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header(CACHE_CONTROL), Some("no-store"));
    let v = r.json();
    let labels: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["alice — manager of acme", "bob — member of acme"]);
    let alice = v[0]["session"].as_str().unwrap();
    let r = srv.get("/api/whoami").session(alice).send().await;
    assert_eq!(
        r.json(),
        json!({"org": "acme", "user": "alice", "role": "manager"})
    );

    // Used up; a made-up nonce never worked.
    for n in [nonce.clone(), "0".repeat(32), "not hex".to_string()] {
        let r = srv
            .post("/demo/login")
            .json(&json!({ "nonce": n }))
            .send()
            .await;
        r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    }
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
async fn every_error_answer_is_json_and_names_the_field() {
    let srv = start().await;
    // 405, with the methods the path takes.
    let r = srv
        .call(Method::PUT, "/api/keys")
        .session(&srv.alice())
        .send()
        .await;
    r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let allow = r.header(axum::http::header::ALLOW).unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    // 413.
    let big = json!({"name": "x".repeat(100 * 1024), "scopes": ["prometheus"]});
    let r = srv
        .post("/api/keys")
        .session(&srv.alice())
        .json(&big)
        .send()
        .await;
    r.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // 404 for a path nobody serves.
    let r = srv.get("/nothing/here").send().await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
    // Field errors name the field, never a Rust type.
    for (body, field) in [
        (r#"{"name": 5, "scopes": []}"#, "\"name\""),
        (r#"{"name": "a", "scopes": [1]}"#, "\"scopes[0]\""),
        (r#"{"scopes": ["scim"]}"#, "`name`"),
        (r#"{"name": "a", "scopes": [], "colour": 1}"#, "`colour`"),
        (r#""just a string""#, "JSON object"),
        (r#"[1, 2]"#, "JSON object"),
    ] {
        let r = srv
            .post("/api/keys")
            .session(&srv.alice())
            .header(CONTENT_TYPE, b"application/json")
            .raw_body(body)
            .send()
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
        let message = r.json()["detail"].as_str().unwrap().to_string();
        assert!(message.contains(field), "{body}: {message}");
        assert!(!message.contains("Body"), "{body}: {message}");
    }
    let r = srv
        .post("/api/keys/x/roll")
        .session(&srv.alice())
        .raw_body(r#"{"overlap_seconds": "soon"}"#)
        .send()
        .await;
    // The id is checked before the body here; a real id shows the body check.
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let r = srv
        .post(&format!("/api/keys/{id}/roll"))
        .session(&srv.alice())
        .raw_body(r#"{"overlap_seconds": "soon"}"#)
        .send()
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let message = r.json()["detail"].as_str().unwrap().to_string();
    assert!(message.contains("\"overlap_seconds\""), "{message}");
    assert!(!message.contains("RollBody"), "{message}");
}

#[tokio::test]
async fn scim_errors_use_the_scim_error_schema_and_locations_resolve() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "okta", "scopes": ["scim"]}))
        .await;
    let (prom, _) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let scim_error = |r: &Reply, status: StatusCode| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.header(CONTENT_TYPE), Some("application/scim+json"));
        let v = r.json();
        assert_eq!(
            v["schemas"],
            json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
        );
        assert_eq!(v["status"], status.as_u16().to_string());
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
    };
    let r = srv.get("/scim/v2/Users").send().await;
    scim_error(&r, StatusCode::UNAUTHORIZED);
    assert!(r.challenge().is_some(), "the Bearer challenge stays");
    let r = srv.get("/scim/v2/Users").bearer("sak_nope").send().await;
    scim_error(&r, StatusCode::UNAUTHORIZED);
    let r = srv.get("/scim/v2/Users").bearer(&prom).send().await;
    scim_error(&r, StatusCode::FORBIDDEN);
    let r = srv.post("/scim/v2/Users").bearer(&token).send().await;
    scim_error(&r, StatusCode::METHOD_NOT_ALLOWED);
    let r = srv
        .get("/scim/v2/Users/mallory")
        .bearer(&token)
        .send()
        .await;
    scim_error(&r, StatusCode::NOT_FOUND);

    // Every user's meta.location answers with that user.
    let list = srv.get("/scim/v2/Users").bearer(&token).send().await.json();
    for user in list["Resources"].as_array().unwrap() {
        let location = user["meta"]["location"].as_str().unwrap();
        let r = srv.get(location).bearer(&token).send().await;
        assert_eq!(r.status, StatusCode::OK, "{location}");
        assert_eq!(r.header(CONTENT_TYPE), Some("application/scim+json"));
        assert_eq!(&r.json(), user);
    }
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

#[tokio::test]
async fn scrapes_count_keys_without_reading_the_store_each_time() {
    let store = CountingStore::default();
    let srv = start_with(AnyStore::new(store.clone()), app::Limits::default()).await;
    let (token, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let active = r#"api_keys_keys{org="acme",status="active"}"#;
    let revoked = r#"api_keys_keys{org="acme",status="revoked"}"#;
    let m = parse_exposition(&srv.scrape(&token).await.text());
    assert_eq!(m[active], 1.0);
    let lists = store.lists();
    for _ in 0..5 {
        let m = parse_exposition(&srv.scrape(&token).await.text());
        assert_eq!(m[active], 1.0);
    }
    assert_eq!(store.lists(), lists, "scrapes were answered from the cache");
    // A change through the management API shows in the next scrape.
    let (_, other) = srv
        .create(json!({"name": "q", "scopes": ["prometheus"]}))
        .await;
    let m = parse_exposition(&srv.scrape(&token).await.text());
    assert_eq!((m[active], m[revoked]), (2.0, 0.0));
    let r = srv
        .post(&format!(
            "/api/keys/{}/revoke",
            other["id"].as_str().unwrap()
        ))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let m = parse_exposition(&srv.scrape(&token).await.text());
    assert_eq!((m[active], m[revoked]), (1.0, 1.0));
    let _ = info;
}

#[tokio::test]
async fn the_openapi_description_covers_every_management_route_and_error() {
    let srv = start().await;
    let r = srv.get("/api/openapi.json").send().await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header(CONTENT_TYPE), Some("application/json"));
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/keys", "get"),
        ("/api/keys", "post"),
        ("/api/keys/{id}", "get"),
        ("/api/keys/{id}", "delete"),
        ("/api/keys/{id}/revoke", "post"),
        ("/api/keys/{id}/roll", "post"),
        ("/api/keys/{id}/reveal", "post"),
        ("/api/policy", "get"),
        ("/api/whoami", "get"),
        ("/demo/login", "post"),
        ("/healthz", "get"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} is described");
        let responses = op["responses"].as_object().unwrap();
        // Every error answer is a problem.
        for (status, answer) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    answer["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
        }
        for status in ["400", "408", "413", "421", "431", "500"] {
            assert!(responses.contains_key(status), "{method} {path} {status}");
        }
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(
            responses.contains_key("401"),
            secured || path == "/demo/login",
            "{method} {path}"
        );
    }
    // What the admin page reads is described: the policy's warning lead times, and a key's
    // revocation reason (every kind), last use and notices.
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["PolicyDoc"]["properties"]["warn_before_seconds"].is_object());
    for field in ["revocation", "last_used_at", "notices"] {
        assert!(
            schemas["KeyInfo"]["properties"][field].is_object(),
            "KeyInfo.{field}"
        );
    }
    let kinds = schemas["RevocationKindDoc"]["enum"].clone();
    assert_eq!(
        kinds,
        json!(["manual", "leaked", "unused", "departed_user", "rolled"]),
        "{}",
        schemas
    );
    // Stateful links from a created key.
    let links = &paths["/api/keys"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["RevokeKey"]["operationId"], "revoke_key");
    assert_eq!(
        links["DeleteKey"]["parameters"]["id"],
        "$response.body#/info/id"
    );
    // The statuses the routes answer with are the ones described: a member's create is a 403
    // problem, listed for that route.
    let r = srv
        .post("/api/keys")
        .session(&srv.bob())
        .json(&json!({"name": "p", "scopes": ["prometheus"]}))
        .send()
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "permission_denied");
    assert!(paths["/api/keys"]["post"]["responses"]["403"].is_object());
}

/// The crate's own metrics (feature `metrics`), exported by `metrics-exporter-prometheus` on
/// the example server's operator listener: a verification shows up under its outcome.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn the_crate_metrics_are_served_on_the_operator_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = ops.local_addr().unwrap();
    let handle = app::metrics::install_crate_recorder().unwrap();
    tokio::spawn(app::metrics::serve_crate_metrics(ops, handle));
    let m = api_keys::KeyManager::builder(MemoryStore::new(), common::keyring())
        .build()
        .unwrap();
    let scope = api_keys::Scope::Prometheus;
    let (key, _) = m
        .generate(
            &common::alice(),
            api_keys::GenerateRequest::new("k").scope(scope.clone()),
        )
        .await
        .unwrap();
    m.verify(key.expose_secret(), &scope).await.unwrap();
    let _ = m.verify("sak_garbage", &scope).await;
    let mut conn = TcpStream::connect(at).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for line in [
        "# TYPE api_keys_verifications_total counter",
        "api_keys_verifications_total{outcome=\"ok\"}",
        "api_keys_verifications_total{outcome=\"malformed\"}",
        "api_keys_verification_duration_seconds",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    assert!(!text.contains(key.expose_secret()));
}

/// What the admin page shows comes from the key JSON: why a key stopped working (and, for a
/// leak, where it was found), its last use, and the warnings the sweep sent; the policy
/// document names the warning lead times. Driven with a manual clock, no sleeping.
#[tokio::test]
async fn key_json_carries_reasons_last_use_and_warnings() {
    use api_keys::time::{Duration, OffsetDateTime};
    use api_keys::{Actor, LeakVerdict, ManualClock, OrgId, Policy, UserId};

    capture_logs();
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let clock = ManualClock::new(t0);
    let policy = Policy::default()
        .warn_before(&[Duration::days(2), Duration::days(14)])
        .revoke_unused_after(Duration::days(30));
    let state = app::AppState::with_integrations(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        app::Integrations {
            policy,
            clock: Some(std::sync::Arc::new(clock.clone())),
            ..app::Integrations::default()
        },
    )
    .expect("state");
    let srv = serve_state(state, app::Limits::default()).await;
    let policy = srv
        .get("/api/policy")
        .session(&srv.alice())
        .send()
        .await
        .json();
    assert_eq!(
        policy["warn_before_seconds"],
        json!([14 * 86_400, 2 * 86_400])
    );
    assert_eq!(policy["revoke_unused_after_seconds"], json!(30 * 86_400));

    let thirty = json!({"days": 30});
    let (_, manual) = srv
        .create(json!({"name": "manual", "scopes": ["prometheus"]}))
        .await;
    let (leaked_token, leaked) = srv
        .create(json!({"name": "leaked", "scopes": ["prometheus"]}))
        .await;
    let (used_token, used) = srv
        .create(json!({"name": "used", "scopes": ["prometheus"], "expiry": thirty}))
        .await;
    let (_, idle) = srv
        .create(json!({"name": "idle", "scopes": ["prometheus"], "expiry": {"days": 365}}))
        .await;
    let (_, rolled) = srv
        .create(json!({"name": "rolled", "scopes": ["prometheus"]}))
        .await;
    let carol = srv.state.session("acme", "carol", "manager").unwrap();
    let r = srv
        .post("/api/keys")
        .session(&carol)
        .json(&json!({"name": "carol's", "scopes": ["prometheus"]}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let departed = r.json()["info"].clone();
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();

    let r = srv
        .post(&format!("/api/keys/{}/revoke", id(&manual)))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let source = "https://github.com/acme/app/blob/main/.env";
    let m = &srv.state.manager;
    assert_eq!(
        m.revoke_leaked(&leaked_token, source).await.unwrap(),
        LeakVerdict::TruePositive
    );
    let alice = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    assert_eq!(
        m.revoke_created_by(&alice, &UserId::new("carol"))
            .await
            .unwrap(),
        1
    );
    let r = srv
        .post(&format!("/api/keys/{}/roll", id(&rolled)))
        .session(&srv.alice())
        .json(&json!({"overlap_seconds": 0}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(srv.scrape(&used_token).await.status, StatusCode::OK);
    m.flush_last_use().await.unwrap();

    // Day 20: "used" expires in 10 days (its 14-day warning); day 25: "idle" is warned before
    // its revocation as unused; day 33: "used" expired, "idle" is revoked as unused.
    for day in [20, 25, 33] {
        clock.set(t0 + Duration::days(day));
        m.sweep().await.unwrap();
    }
    let get = |v: &Value| {
        let path = format!("/api/keys/{}", id(v));
        let session = srv.alice();
        let call = srv.get(&path).session(&session);
        async move {
            let r = call.send().await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            r.json()
        }
    };
    let k = get(&manual).await;
    assert_eq!(
        (&k["status"], &k["revocation"]),
        (&json!("revoked"), &json!({"kind": "manual"}))
    );
    let k = get(&leaked).await;
    assert_eq!(k["revocation"], json!({"kind": "leaked", "source": source}));
    let k = get(&departed).await;
    assert_eq!(k["revocation"], json!({"kind": "departed_user"}));
    let k = get(&rolled).await;
    assert_eq!(
        (&k["status"], &k["revocation"]),
        (&json!("expired"), &json!({"kind": "rolled"}))
    );
    let k = get(&idle).await;
    assert_eq!(k["revocation"], json!({"kind": "unused"}));
    assert_eq!(k["last_used_at"], Value::Null);
    assert_eq!(k["notices"]["unused_warned"], true);
    assert_eq!(
        k["notices"]["unused_warned_at"],
        json!((t0 + Duration::days(25)).unix_timestamp())
    );
    let k = get(&used).await;
    assert_eq!(k["status"], "expired");
    assert_eq!(
        k["revocation"],
        Value::Null,
        "an expired key was not revoked"
    );
    assert_eq!(k["last_used_at"], json!(t0.unix_timestamp()));
    assert_eq!(k["notices"]["expiry_warned"], json!([14 * 86_400]));
    assert_eq!(k["notices"]["expired"], true);
    // The list carries the same.
    let list = srv
        .get("/api/keys")
        .session(&srv.alice())
        .send()
        .await
        .json();
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == leaked["id"])
        .unwrap();
    assert_eq!(listed["revocation"]["source"], source);
}

/// Usage limits through the management API: a key generated with a rate limit and credits
/// carries them, its credits go down as it is used and it is refused at zero, and a manager
/// changes both later (a member cannot).
#[tokio::test]
async fn limits_and_credits_are_shown_and_set_through_the_api() {
    let srv = start().await;
    let (token, info) = srv
        .create(json!({
            "name": "metered",
            "scopes": ["prometheus"],
            "rate_limits": [{"name": "per-minute", "limit": 100, "window_ms": 60000}],
            "credits": {"initial": 2, "refill": {"every": "daily", "amount": 2}},
        }))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    assert_eq!(
        info["rate_limits"],
        json!([{"name": "per-minute", "limit": 100, "window_ms": 60000, "scope": "key"}])
    );
    assert_eq!(
        info["credits"],
        json!({"initial": 2, "refill": {"every": "daily", "amount": 2}})
    );
    let r = credits(&srv, &id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["remaining"], json!(2));

    // Two scrapes spend both credits; the third is refused as over its usage, and reading
    // the balance spends nothing.
    assert_eq!(srv.scrape(&token).await.status, StatusCode::OK);
    assert_eq!(credits(&srv, &id).await.json()["remaining"], json!(1));
    assert_eq!(srv.scrape(&token).await.status, StatusCode::OK);
    let refused = srv.scrape(&token).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["error"], "usage_exceeded");
    assert_eq!(credits(&srv, &id).await.json()["remaining"], json!(0));

    // A manager sets a new budget: the balance is the new amount now, and the key works.
    let r = srv
        .put(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .json(&json!({"credits": {"initial": 5}}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"credits": {"initial": 5, "refill": null}, "remaining": 5})
    );
    assert_eq!(srv.scrape(&token).await.status, StatusCode::OK);
    assert_eq!(credits(&srv, &id).await.json()["remaining"], json!(4));

    // New rate limits replace the old ones; the key's JSON shows them.
    let r = srv
        .put(&format!("/api/keys/{id}/limits"))
        .session(&srv.alice())
        .json(&json!({"rate_limits": [
            {"name": "burst", "limit": 1, "window_ms": 86_400_000u64},
        ]}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["rate_limits"][0]["name"], "burst");
    let got = srv
        .get(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await
        .json();
    assert_eq!(got["rate_limits"].as_array().unwrap().len(), 1);
    assert_eq!(got["rate_limits"][0]["limit"], json!(1));

    // Removing the budget: the key has no credits any more.
    let r = srv
        .put(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .json(&json!({"credits": null}))
        .send()
        .await;
    assert_eq!(r.json(), json!({"credits": null, "remaining": null}));

    // Refusals: a member, a limit the crate refuses, a body of the wrong shape, an unknown key.
    srv.put(&format!("/api/keys/{id}/limits"))
        .session(&srv.bob())
        .json(&json!({"rate_limits": []}))
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, "permission_denied");
    srv.get(&format!("/api/keys/{id}/credits"))
        .session(&srv.bob())
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, "permission_denied");
    srv.put(&format!("/api/keys/{id}/limits"))
        .session(&srv.alice())
        .json(&json!({"rate_limits": [{"name": "Bad Name", "limit": 1, "window_ms": 1000}]}))
        .send()
        .await
        .assert_error(StatusCode::BAD_REQUEST, "policy");
    srv.put(&format!("/api/keys/{id}/limits"))
        .session(&srv.alice())
        .json(&json!({"rate_limits": [{"name": "zero", "limit": 0, "window_ms": 1000}]}))
        .send()
        .await
        .assert_error(StatusCode::BAD_REQUEST, "policy");
    srv.put(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .json(&json!({"credits": {"initial": -1}}))
        .send()
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let unknown = srv
        .create(json!({"name": "gone", "scopes": ["prometheus"]}))
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    srv.delete(&format!("/api/keys/{unknown}"))
        .session(&srv.alice())
        .send()
        .await;
    srv.put(&format!("/api/keys/{unknown}/limits"))
        .session(&srv.alice())
        .json(&json!({"rate_limits": []}))
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // A limit the crate refuses at generation is refused there too, and nothing is made.
    let r = srv
        .post("/api/keys")
        .session(&srv.alice())
        .json(&json!({"name": "x", "scopes": ["prometheus"],
            "rate_limits": [{"name": "a", "limit": 1, "window_ms": 0}]}))
        .send()
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    let listed = srv
        .get("/api/keys")
        .session(&srv.alice())
        .send()
        .await
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

/// `GET /api/keys/{id}/credits` as alice.
async fn credits(srv: &Server, id: &str) -> Reply {
    srv.get(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .send()
        .await
}

/// The key store unreachable (a database restarting): a verification that needs it and a
/// management call both answer 503 with `Retry-After`, so a client or a load balancer retries;
/// a key the cache already holds keeps working; once the store is back, so is everything.
#[tokio::test]
async fn an_unreachable_store_is_a_503_to_retry() {
    capture_logs();
    let store = CountingStore::default();
    let keyring = Keyring::new(1, MasterKey::from_bytes([7; 16]));
    let node = |keyring: Keyring| {
        let state = app::AppState::new(AnyStore::new(store.clone()), keyring).expect("state");
        serve_state(state, app::Limits::default())
    };
    let srv = node(keyring.clone()).await;
    let (warm, _) = srv
        .create(json!({"name": "warm", "scopes": ["prometheus"]}))
        .await;
    let (cold, info) = srv
        .create(json!({"name": "cold", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    // A second node over the same store: its cache holds only what it has verified.
    let srv = node(keyring).await;
    assert_eq!(srv.scrape(&warm).await.status, StatusCode::OK);

    store
        .fail_get
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = srv.scrape(&cold).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header(axum::http::header::RETRY_AFTER), Some("1"));
    assert_eq!(r.json(), json!({"error": "unavailable"}));
    assert_eq!(r.header(WWW_AUTHENTICATE), None);
    assert!(!r.text().contains(&cold));
    // The warm key is answered from the cache.
    assert_eq!(srv.scrape(&warm).await.status, StatusCode::OK);
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(r.header(axum::http::header::RETRY_AFTER), Some("1"));

    store
        .fail_get
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(srv.scrape(&cold).await.status, StatusCode::OK);
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// REV6
// ---------------------------------------------------------------------------------------------

type ListHook =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// A memory store whose next `list` runs a step after it has read the records and before it
/// answers (as a slow network store would let other requests in).
#[derive(Clone, Default)]
struct ListHookStore {
    inner: MemoryStore,
    after_list: std::sync::Arc<std::sync::Mutex<Option<ListHook>>>,
}

impl api_keys::KeyStore for ListHookStore {
    async fn insert(&self, r: api_keys::KeyRecord) -> Result<(), api_keys::StoreError> {
        self.inner.insert(r).await
    }
    async fn get(
        &self,
        id: &api_keys::KeyId,
    ) -> Result<Option<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.get(id).await
    }
    async fn list(
        &self,
        org: &api_keys::OrgId,
    ) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        let read = self.inner.list(org).await;
        let step = self.after_list.lock().unwrap().take();
        if let Some(step) = step {
            step().await;
        }
        read
    }
    async fn update(
        &self,
        r: api_keys::KeyRecord,
        expected: u64,
    ) -> Result<(), api_keys::StoreError> {
        self.inner.update(r, expected).await
    }
    async fn delete(&self, id: &api_keys::KeyId) -> Result<bool, api_keys::StoreError> {
        self.inner.delete(id).await
    }
    async fn scan(
        &self,
        after: Option<&api_keys::KeyId>,
        limit: usize,
    ) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.scan(after, limit).await
    }
    async fn touch(
        &self,
        id: &api_keys::KeyId,
        at: api_keys::time::OffsetDateTime,
    ) -> Result<(), api_keys::StoreError> {
        self.inner.touch(id, at).await
    }
}

/// README: the key counts of `/metrics` show changes made through this server's management
/// API at once. A key generated while a scrape is reading the key states is missing from the
/// counts for the next 30 s: the scrape caches what it read after the generation dropped the
/// cache.
#[tokio::test]
async fn a_key_generated_during_a_scrape_shows_in_the_next_scrape() {
    let store = ListHookStore::default();
    let srv = start_with(AnyStore::new(store.clone()), app::Limits::default()).await;
    let (token, _) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let active = r#"api_keys_keys{org="acme",status="active"}"#;
    // While the next scrape reads the key states, alice generates a second key.
    let (addr, alice) = (srv.addr, srv.alice());
    *store.after_list.lock().unwrap() = Some(Box::new(move || {
        Box::pin(async move {
            let r = Call {
                addr,
                method: Method::POST,
                path: "/api/keys".into(),
                headers: Vec::new(),
                body: Bytes::new(),
            }
            .session(&alice)
            .json(&json!({"name": "q", "scopes": ["prometheus"]}))
            .send()
            .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        })
    }));
    let first = parse_exposition(&srv.scrape(&token).await.text());
    assert_eq!(first[active], 1.0, "the scrape that raced the generation");
    // The generation has completed: the next scrape must count both keys.
    let r = srv.get("/api/keys").session(&srv.alice()).send().await;
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    let next = parse_exposition(&srv.scrape(&token).await.text());
    assert_eq!(
        next[active], 2.0,
        "a key generated through the API is missing"
    );
}

/// README "The admin page": "every management call of a member gets `403 permission_denied`".
#[tokio::test]
async fn a_member_gets_403_whatever_the_body() {
    let srv = start().await;
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let bob = srv.bob();
    let calls = [
        srv.post("/api/keys").session(&bob).json(&json!({})),
        srv.post("/api/keys")
            .session(&bob)
            .json(&json!({"name": "x", "scopes": ["Not A Scope!"]})),
        srv.post(&format!("/api/keys/{id}/roll"))
            .session(&bob)
            .json(&json!({"overlap_seconds": -1})),
        srv.put(&format!("/api/keys/{id}/limits"))
            .session(&bob)
            .json(&json!({})),
        srv.put(&format!("/api/keys/{id}/credits"))
            .session(&bob)
            .json(&json!({"credits": 5})),
    ];
    let mut wrong = Vec::new();
    for call in calls {
        let path = call.path.clone();
        let r = call.send().await;
        if r.status != StatusCode::FORBIDDEN {
            wrong.push(format!("{path}: {} {}", r.status, r.json()["error"]));
        }
    }
    assert!(
        wrong.is_empty(),
        "a member's calls not refused with 403: {wrong:#?}"
    );
}

/// Under `/scim/` a rate-limited request is a SCIM error whose detail says what happened.
#[tokio::test]
async fn a_rate_limited_scim_request_is_not_called_malformed() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "s", "scopes": ["scim"],
            "rate_limits": [{"name": "burst", "limit": 1, "window_ms": 60000}]}))
        .await;
    let r = srv.get("/scim/v2/Users").bearer(&token).send().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = srv.get("/scim/v2/Users").bearer(&token).send().await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert!(r.header(axum::http::header::RETRY_AFTER).is_some());
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert_ne!(detail, "the request is malformed", "{}", r.text());
}

/// The Authorization header shapes of the README's table, through the real server.
#[tokio::test]
async fn authorization_header_shapes_through_the_server() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    for ok in [
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("Bearer\t{token}"),
        format!("Bearer   {token}  "),
    ] {
        let r = srv
            .get("/metrics")
            .header(AUTHORIZATION, ok.as_bytes())
            .send()
            .await;
        assert_eq!(r.status, StatusCode::OK, "{ok:?}");
    }
    for (v, status) in [
        (&b""[..], StatusCode::UNAUTHORIZED),
        (b"   ", StatusCode::UNAUTHORIZED),
        (b"Token abc", StatusCode::UNAUTHORIZED),
        (b"Bearer   ", StatusCode::BAD_REQUEST),
        (b"Bearer a\xffb", StatusCode::BAD_REQUEST),
        (b"Basic \xff", StatusCode::BAD_REQUEST),
    ] {
        let r = srv.get("/metrics").header(AUTHORIZATION, v).send().await;
        assert_eq!(r.status, status, "{v:?}");
    }
    // A token in the query string is not a credential.
    let r = srv
        .get(&format!("/metrics?access_token={token}"))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// An unknown field inside a rate limit or a credit budget is refused like one at the top of
/// the body: a typo such as `"scoep": "org"` must not quietly make a per-key limit, nor a
/// misspelt `"refil"` a budget that is never refilled.
#[tokio::test]
async fn unknown_fields_in_limits_and_credits_are_refused() {
    let srv = start().await;
    let alice = srv.alice();
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let limit = json!([{"name": "daily", "limit": 10, "window_ms": 86_400_000, "scoep": "org"}]);
    let credits = json!({"initial": 5, "refil": {"every": "daily", "amount": 5}});
    let calls = [
        (
            srv.post("/api/keys")
                .session(&alice)
                .json(&json!({"name": "m", "scopes": ["prometheus"], "rate_limits": limit})),
            "`scoep`",
        ),
        (
            srv.post("/api/keys")
                .session(&alice)
                .json(&json!({"name": "m", "scopes": ["prometheus"], "credits": credits})),
            "`refil`",
        ),
        (
            srv.put(&format!("/api/keys/{id}/limits"))
                .session(&alice)
                .json(&json!({ "rate_limits": limit })),
            "`scoep`",
        ),
        (
            srv.put(&format!("/api/keys/{id}/credits"))
                .session(&alice)
                .json(&json!({ "credits": credits })),
            "`refil`",
        ),
    ];
    for (call, field) in calls {
        let path = call.path.clone();
        let r = call.send().await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
        let message = r.json()["detail"].as_str().unwrap().to_string();
        assert!(message.contains(field), "{path}: {message}");
    }
    // Nothing was made or changed.
    let r = srv.get("/api/keys").session(&alice).send().await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&alice)
        .send()
        .await;
    assert_eq!(r.json()["rate_limits"], json!([]));
    assert_eq!(r.json()["credits"], Value::Null);
    // The same shapes spelt right are taken as they are.
    let limit = json!([{"name": "daily", "limit": 10, "window_ms": 86_400_000, "scope": "org"}]);
    let credits = json!({"initial": 5, "refill": {"every": "monthly", "day": 3, "amount": 5}});
    let (_, made) = srv
        .create(json!({"name": "m", "scopes": ["prometheus"], "rate_limits": limit, "credits": credits}))
        .await;
    assert_eq!(made["rate_limits"], limit);
    assert_eq!(made["credits"], credits);
}
