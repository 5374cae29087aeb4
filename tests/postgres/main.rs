//! PostgresStore against a real server: conformance, the LISTEN/NOTIFY change feed across
//! nodes, feed loss, connection loss, clear errors.
//!
//! Reads `DATABASE_URL`. Without it each test says why it is skipped and passes, unless
//! `API_KEYS_REQUIRE_POSTGRES=1` (as in CI), where a missing URL fails.

#[path = "../common/mod.rs"]
mod common;
#[path = "../store_support/mod.rs"]
mod store_support;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_keys::{
    Actor, Change, ChangeKind, ChangeListener, Error, GenerateRequest, KeyId, KeyManager, KeyStore,
    Keyring, MasterKey, OrgId, PostgresError, PostgresErrorKind, PostgresStore, Scope, StoreError,
    UserId,
};
use store_support::{FeedEvent, Observed, Spy, report, wait_until};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;

mod config;
mod consistency;
mod feed;
mod outages;
mod schema;
mod tampering;

const MASTER: [u8; 16] = *b"postgres-testkey";

fn keyring() -> Keyring {
    Keyring::new(1, MasterKey::from_bytes(MASTER))
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// A random key id (its first character is a digit, so the value fits in 64 bits).
fn random_id() -> KeyId {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut b = [0u8; 11];
    getrandom::getrandom(&mut b).unwrap();
    let mut s = String::new();
    s.push(char::from(ALPHABET[usize::from(b[0]) % 10]));
    for &x in &b[1..] {
        s.push(char::from(ALPHABET[usize::from(x) % 62]));
    }
    KeyId::parse(&s).unwrap()
}

fn org() -> OrgId {
    OrgId::new(format!("pg-test-{:016x}", random_u64()))
}

fn manager_of(org: &OrgId) -> Actor {
    Actor::manager(org.clone(), UserId::new("alice"))
}

/// `DATABASE_URL`, or `None` after saying why the test is skipped. Panics when
/// `API_KEYS_REQUIRE_POSTGRES=1` and the URL is missing.
fn database_url(test: &str) -> Option<tokio_postgres::Config> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            Some(tokio_postgres::Config::from_str(&url).expect("DATABASE_URL does not parse"))
        }
        _ => {
            if std::env::var("API_KEYS_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("API_KEYS_REQUIRE_POSTGRES=1 but DATABASE_URL is not set");
            }
            eprintln!(
                "skipping {test}: DATABASE_URL is not set (source .ci/postgres.sh and run pg_start to get a server)"
            );
            None
        }
    }
}

fn tcp_target(cfg: &tokio_postgres::Config) -> (String, u16) {
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => panic!("the tests need a TCP host in DATABASE_URL"),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    (host, port)
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A `key=value` connection string for `cfg`'s server, named `app`, optionally through a
/// proxy and to another database.
fn conninfo(
    cfg: &tokio_postgres::Config,
    app: &str,
    via: Option<SocketAddr>,
    dbname: Option<&str>,
) -> String {
    let (host, port) = match via {
        Some(a) => (a.ip().to_string(), a.port()),
        None => tcp_target(cfg),
    };
    let mut s = format!(
        "host={} port={port} application_name={}",
        quote(&host),
        quote(app)
    );
    if let Some(u) = cfg.get_user() {
        s += &format!(" user={}", quote(u));
    }
    if let Some(p) = cfg.get_password() {
        s += &format!(" password={}", quote(&String::from_utf8_lossy(p)));
    }
    if let Some(d) = dbname.or(cfg.get_dbname()) {
        s += &format!(" dbname={}", quote(d));
    }
    s
}

fn app(tag: &str) -> String {
    format!("t-{tag}-{:08x}", random_u64() as u32)
}

/// A plain connection for test bookkeeping (pg_stat_activity, pg_terminate_backend, ...).
async fn admin(cfg: &tokio_postgres::Config, dbname: Option<&str>) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &conninfo(cfg, "api-keys-test-admin", None, dbname),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Backends of this database named `name`.
async fn backends(admin: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn wait_for_backends(
    admin: &tokio_postgres::Client,
    name: &str,
    want: usize,
    limit: Duration,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if backends(admin, name).await.len() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn connect(cfg: &tokio_postgres::Config, app: &str) -> PostgresStore {
    PostgresStore::connect_and_migrate(&conninfo(cfg, app, None, None))
        .await
        .unwrap()
}

/// The `PostgresError` behind a `StoreError::Backend`.
fn pg_error(e: &StoreError) -> &PostgresError {
    match e {
        StoreError::Backend(src) => src
            .downcast_ref::<PostgresError>()
            .unwrap_or_else(|| panic!("source is not a PostgresError: {src:?}")),
        other => panic!("expected StoreError::Backend, got {other:?}"),
    }
}

/// The error and all its sources, one per line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!("\n  caused by: {c}");
        cur = c.source();
    }
    s
}

/// A TCP relay in front of the server that can refuse new connections and cut live ones.
struct Proxy {
    addr: SocketAddr,
    accepting: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = Arc::new(AtomicBool::new(true));
        let frozen = Arc::new(AtomicBool::new(false));
        let relays: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (accepting, frozen, relays) = (accepting.clone(), frozen.clone(), relays.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !accepting.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let (upstream, frozen) = (upstream.clone(), frozen.clone());
                    let relay = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(upstream).await {
                            let (ri, wi) = inbound.into_split();
                            let (ro, wo) = outbound.into_split();
                            tokio::join!(pump(ri, wo, frozen.clone()), pump(ro, wi, frozen));
                        }
                    });
                    relays.lock().unwrap().push(relay);
                }
            })
        };
        Proxy {
            addr,
            accepting,
            frozen,
            relays,
            accept,
        }
    }

    /// Holds every byte in both directions (a network that silently stopped), or resumes.
    fn set_frozen(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }

    fn set_accepting(&self, on: bool) {
        self.accepting.store(on, Ordering::SeqCst);
    }

    /// Closes every relayed connection.
    fn cut_all(&self) {
        for r in self.relays.lock().unwrap().drain(..) {
            r.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

/// Copies one direction, holding the bytes while `frozen`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Polls `verify` on `node` until it is refused as revoked; returns how long that took.
async fn time_until_revoked<S: KeyStore + 'static>(
    node: &KeyManager<S>,
    token: &str,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        match node.verify(token, &Scope::Prometheus).await {
            Err(Error::Revoked) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) => panic!("unexpected verification error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}
