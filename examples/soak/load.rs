//! The traffic: an HTTP client, the keys the harness knows, and every request it sent with
//! what came back. Nothing is judged here; `check.rs` judges the samples after the run.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// What a request got back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Res {
    Status(u16),
    /// No answer: connection refused or reset.
    Conn,
    /// No answer within the client timeout: a hang.
    Timeout,
}

impl Res {
    pub fn accepted(self) -> bool {
        matches!(self, Res::Status(s) if (200..300).contains(&s))
    }
    /// A server failure: 5xx, no answer, or a hang.
    pub fn failed(self) -> bool {
        match self {
            Res::Status(s) => s >= 500,
            Res::Conn | Res::Timeout => true,
        }
    }
}

/// What a request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A valid key on `/metrics` or `/scim/v2/Users` (open loop).
    Valid,
    /// A key the harness revokes during the run (open loop).
    Victim,
    /// A key with a low rate limit (open loop).
    RateLimited,
    /// A key with few credits (open loop).
    Credits,
    /// A malformed token (open loop).
    Malformed,
    /// A well-formed token of a deleted key (open loop).
    Unknown,
    /// The closed-loop probe measuring how long a revoke takes to reach a node.
    Probe,
    /// A management call.
    Manage,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Victim => "revoked_during_run",
            Kind::RateLimited => "rate_limited",
            Kind::Credits => "credits",
            Kind::Malformed => "malformed",
            Kind::Unknown => "unknown",
            Kind::Probe => "revoke_probe",
            Kind::Manage => "management",
        }
    }
}

/// One request and its answer.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub node: usize,
    pub kind: Kind,
    /// Index into [`Keys::all`], if the request carried a known key.
    pub key: Option<usize>,
    /// Since the run's start.
    pub sent: Duration,
    pub done: Duration,
    /// Unix ms when sent and when answered (for fixed rate-limit windows).
    pub wall_sent_ms: i64,
    pub wall_done_ms: i64,
    pub res: Res,
}

/// What the harness expects of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// Valid for the whole run (generated through the API).
    Stable,
    /// Generated through the API during the run, maybe deleted or rolled later.
    Trickle,
    /// Revoked during the run.
    Victim,
    /// A rate limit of `limit` per `window_ms`.
    Rate { limit: u64, window_ms: i64 },
    /// `n` credits, no refill.
    Credits { n: u64 },
}

/// One key the harness holds.
#[derive(Clone, Debug)]
pub struct Key {
    pub token: String,
    pub id: String,
    pub class: Class,
    /// Generated through the API and answered with 201 (must exist at the end).
    pub confirmed: bool,
    /// When the revoke (or delete) that took effect was sent, and when it returned.
    pub revoke_sent: Option<Duration>,
    pub revoked: Option<Duration>,
    pub deleted: bool,
    /// Replaced by a roll (still listed, expiring after the overlap).
    pub rolled: bool,
}

/// Every key, append-only (indices are stable), and the pools traffic draws from.
#[derive(Default)]
pub struct Keys {
    pub all: Vec<Key>,
    pub stable: Vec<usize>,
    pub trickle: Vec<usize>,
    /// Victims being warmed, or revoked in the last few seconds.
    pub victims: Vec<usize>,
    pub rate: Vec<usize>,
    pub credits: Vec<usize>,
    /// Deleted keys: well-formed tokens the store no longer knows.
    pub unknown: Vec<usize>,
}

impl Keys {
    pub fn add(&mut self, key: Key) -> usize {
        self.all.push(key);
        self.all.len() - 1
    }
}

/// A node as the traffic sees it.
pub struct NodeView {
    pub port: u16,
    pub session: RwLock<String>,
}

/// A fault and when it was injected.
#[derive(Clone, Debug)]
pub struct Window {
    pub name: String,
    pub start: Duration,
    pub end: Duration,
    pub note: String,
}

/// State shared by every task of the run.
pub struct Shared {
    pub client: Client<HttpConnector, Full<Bytes>>,
    pub nodes: Vec<NodeView>,
    pub start: Instant,
    pub timeout: Duration,
    pub keys: Mutex<Keys>,
    pub samples: Mutex<Vec<Sample>>,
    pub windows: Mutex<Vec<Window>>,
    /// The open-loop rate multiplier (10 during a burst).
    pub rate_mult: AtomicU32,
    pub stop: AtomicBool,
    /// Failures seen while running (a node dying unbidden, a setup call that failed).
    pub failures: Mutex<Vec<String>>,
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Shared {
    pub fn new(ports: &[u16], sessions: Vec<String>, timeout: Duration) -> Shared {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            // Below the server's 10 s idle limit, so a pooled connection is not reused just
            // as the server closes it.
            .pool_idle_timeout(Duration::from_secs(4))
            .pool_max_idle_per_host(64)
            .build(connector);
        Shared {
            client,
            nodes: ports
                .iter()
                .zip(sessions)
                .map(|(&port, s)| NodeView {
                    port,
                    session: RwLock::new(s),
                })
                .collect(),
            start: Instant::now(),
            timeout,
            keys: Mutex::default(),
            samples: Mutex::default(),
            windows: Mutex::default(),
            rate_mult: AtomicU32::new(1),
            stop: AtomicBool::new(false),
            failures: Mutex::default(),
        }
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn fail(&self, what: String) {
        eprintln!("soak: FAILURE: {what}");
        lock(&self.failures).push(what);
    }

    fn session(&self, node: usize) -> String {
        self.nodes[node]
            .session
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends one request and waits (at most the client timeout) for the whole answer.
    async fn send(
        &self,
        node: usize,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<String>,
    ) -> (Res, Bytes) {
        let uri = format!("http://127.0.0.1:{}{}", self.nodes[node].port, path);
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let Ok(req) = req.body(Full::new(Bytes::from(body.unwrap_or_default()))) else {
            return (Res::Conn, Bytes::new());
        };
        let call = async {
            let resp = self.client.request(req).await.map_err(|_| Res::Conn)?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| Res::Conn)?
                .to_bytes();
            Ok::<_, Res>((Res::Status(status), body))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => (e, Bytes::new()),
            Err(_) => (Res::Timeout, Bytes::new()),
        }
    }

    fn record(&self, s: Sample) {
        lock(&self.samples).push(s);
    }

    /// A guarded request with `token` (or none) as a bearer token; recorded.
    pub async fn guarded(
        &self,
        node: usize,
        kind: Kind,
        key: Option<usize>,
        token: &str,
        scim: bool,
    ) -> Res {
        let path = if scim { "/scim/v2/Users" } else { "/metrics" };
        let sent = self.now();
        let wall_sent_ms = wall_ms();
        let (res, _) = self
            .send(
                node,
                Method::GET,
                path,
                &[("authorization", format!("Bearer {token}"))],
                None,
            )
            .await;
        self.record(Sample {
            node,
            kind,
            key,
            sent,
            done: self.now(),
            wall_sent_ms,
            wall_done_ms: wall_ms(),
            res,
        });
        res
    }

    /// A management call as alice (manager of acme) on `node`; recorded. Returns the answer
    /// and its JSON body (`Null` when there is none).
    pub async fn manage(
        &self,
        node: usize,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> (Res, Duration, Duration, Value) {
        let sent = self.now();
        let wall_sent_ms = wall_ms();
        let (res, bytes) = self
            .send(
                node,
                method,
                path,
                &[("x-demo-session", self.session(node))],
                body,
            )
            .await;
        let done = self.now();
        self.record(Sample {
            node,
            kind: Kind::Manage,
            key: None,
            sent,
            done,
            wall_sent_ms,
            wall_done_ms: wall_ms(),
            res,
        });
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (res, sent, done, json)
    }

    /// Generates a key with both scopes through the API on `node`. `None` when the call
    /// failed (the caller may retry on another node).
    pub async fn generate(&self, node: usize, name: &str) -> Option<(String, String)> {
        let body = serde_json::json!({
            "name": name, "scopes": ["prometheus", "scim"], "expiry": {"days": 30}
        });
        let (res, _, _, json) = self
            .manage(node, Method::POST, "/api/keys", Some(body.to_string()))
            .await;
        if res != Res::Status(201) {
            return None;
        }
        let token = json.get("key")?.as_str()?.to_string();
        let id = json.get("info")?.get("id")?.as_str()?.to_string();
        Some((token, id))
    }
}

/// A small PRNG (xorshift64*), seeded from the OS: the traffic mix needs no more.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        Rng(u64::from_le_bytes(seed) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.below(v.len())])
    }
}

/// Malformed tokens: garbage, a wrong prefix, a broken checksum, overlong.
pub fn malformed(rng: &mut Rng, a_real_token: Option<&str>) -> String {
    match rng.below(4) {
        0 => "not-a-key".to_string(),
        1 => format!("zzz_{}", "A".repeat(40)),
        2 => match a_real_token {
            // One character changed: the checksum no longer matches.
            Some(t) => {
                let mut b = t.as_bytes().to_vec();
                let i = b.len() / 2;
                b[i] = if b[i] == b'a' { b'b' } else { b'a' };
                String::from_utf8(b).unwrap_or_default()
            }
            None => "sak_".to_string(),
        },
        _ => format!("sak_{}", "x".repeat(200)),
    }
}

/// The open-loop generator: requests start on schedule (`rate` per second times the burst
/// multiplier) whether or not earlier ones were answered, each in its own task.
pub async fn open_loop(shared: Arc<Shared>, rate: f64, until: Duration) {
    let mut rng = Rng::new();
    let mut due = 0.0f64;
    let mut last = shared.now();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = shared.now();
        if now >= until {
            break;
        }
        let mult = f64::from(shared.rate_mult.load(Ordering::Relaxed));
        due += (now - last).as_secs_f64() * rate * mult;
        last = now;
        while due >= 1.0 {
            due -= 1.0;
            let Some((kind, key, token)) = choose(&shared, &mut rng) else {
                continue;
            };
            let node = rng.below(shared.nodes.len());
            let scim = rng.below(2) == 0;
            let s = shared.clone();
            tokio::spawn(async move {
                s.guarded(node, kind, key, &token, scim).await;
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn choose(shared: &Shared, rng: &mut Rng) -> Option<(Kind, Option<usize>, String)> {
    let keys = lock(&shared.keys);
    let roll = rng.below(100);
    let (kind, pool) = match roll {
        0..=49 => (Kind::Valid, &keys.stable),
        50..=54 => (Kind::Valid, &keys.trickle),
        55..=69 => (Kind::Victim, &keys.victims),
        70..=77 => (Kind::RateLimited, &keys.rate),
        78..=84 => (Kind::Credits, &keys.credits),
        85..=92 => {
            let real = rng.pick(&keys.stable).map(|i| keys.all[i].token.as_str());
            return Some((Kind::Malformed, None, malformed(rng, real)));
        }
        _ => (Kind::Unknown, &keys.unknown),
    };
    let i = rng.pick(pool)?;
    Some((kind, Some(i), keys.all[i].token.clone()))
}
