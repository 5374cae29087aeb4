//! End to end over real HTTP: the example server's router served on an ephemeral port of
//! 127.0.0.1, called with a real HTTP/1.1 client (hyper), one connection per request.

#[allow(dead_code)]
#[path = "../../examples/server/app.rs"]
mod app;
#[path = "../common/mod.rs"]
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

mod auth;
mod errors;
mod keys_api;
mod limits_api;
mod metrics;
mod scim;
mod transport;

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
