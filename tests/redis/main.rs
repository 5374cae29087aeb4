//! The Redis counter engine on a real Redis (feature `redis`).
//!
//! Reads `REDIS_URL`. Without it each test says why it is skipped and passes, unless `CI` is
//! set or `API_KEYS_REQUIRE_REDIS=1`, where a missing URL fails. The tests that stop Redis
//! mid-test start their own private `redis-server` (on a free loopback port, in a temp dir),
//! never the one at `REDIS_URL`.

#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use api_keys::{
    AuditAction, Consumed, Credits, Decision, Error, GenerateRequest, KeyManager, MemoryStore,
    RateLimit, RedisCounters, Scope, UsageCounters, UsageRequest,
};
use common::*;

mod counting;
mod freeze;
mod local_first_leases;
mod outages;

fn redis_url(test: &str) -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("API_KEYS_REQUIRE_REDIS").as_deref() == Ok("1")
                || std::env::var_os("CI").is_some()
            {
                panic!(
                    "REDIS_URL is not set but Redis is required here (CI or API_KEYS_REQUIRE_REDIS=1)"
                );
            }
            eprintln!(
                "skipping {test}: REDIS_URL is not set (source .ci/redis.sh and run redis_start to get a server)"
            );
            None
        }
    }
}

/// A unique key prefix per test run, so runs never share counters.
fn prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("api-keys-test-{random:016x}")
}

fn manager(
    store: MemoryStore,
    counters: impl UsageCounters,
) -> (KeyManager<MemoryStore>, Recorder) {
    let audit = Recorder::default();
    let m = KeyManager::builder(store, keyring())
        .audit(audit.clone())
        .counters(counters)
        .build()
        .unwrap();
    (m, audit)
}

fn req(name: &str) -> GenerateRequest {
    GenerateRequest::new(name).scope(Scope::Prometheus)
}

/// A private `redis-server` that this test starts and stops by its pid.
struct PrivateRedis {
    dir: PathBuf,
    port: u16,
}

impl PrivateRedis {
    fn start(dir: PathBuf, port: u16) -> PrivateRedis {
        let status = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&dir)
            .args(["--daemonize", "yes", "--pidfile"])
            .arg(dir.join("redis.pid"))
            .status()
            .expect("redis-server runs (CI installs it; see .ci/redis.sh)");
        assert!(status.success());
        let r = PrivateRedis { dir, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && r.pid().is_some() {
                return r;
            }
            std::thread::sleep(StdDuration::from_millis(25));
        }
        panic!("the private redis-server did not start");
    }

    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("redis.pid"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (SIGTERM: it finishes its append-only file) and waits until the
    /// port is closed.
    fn stop(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(&pid).status();
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    return;
                }
                std::thread::sleep(StdDuration::from_millis(25));
            }
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(prefix());
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn local_first(url: &str, p: &str, every: StdDuration) -> RedisCounters {
    RedisCounters::builder(url)
        .prefix(p)
        .timeout(StdDuration::from_secs(2))
        .local_first(every)
        .build()
        .unwrap()
}

/// A Redis that accepts connections and never answers (a frozen server), on a loopback port;
/// it needs no `redis-server`. The accepted sockets stay open until the process ends.
fn frozen_redis() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    url
}

/// A random key id and its number (its text is the number in 11 base62 digits, big-endian).
fn random_key() -> (api_keys::KeyId, u64) {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let n = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let (mut x, mut text) = (n, [b'0'; 11]);
    for c in text.iter_mut().rev() {
        *c = ALPHABET[(x % 62) as usize];
        x /= 62;
    }
    let id = api_keys::KeyId::parse(std::str::from_utf8(&text).unwrap()).unwrap();
    (id, n)
}

/// A strict engine under prefix `p`, and a connection of the test's own to look at its keys.
async fn strict_with_connection(
    url: &str,
    p: &str,
) -> (RedisCounters, redis::aio::MultiplexedConnection) {
    let engine = RedisCounters::builder(url)
        .prefix(p)
        .timeout(StdDuration::from_secs(2))
        .build()
        .unwrap();
    let conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (engine, conn)
}

/// Decides one request through the trait (waiting if the engine must).
async fn consume_once(engine: &RedisCounters, req: UsageRequest<'_>) -> Decision {
    match engine.consume(req) {
        Consumed::Ready(r) => r,
        Consumed::Pending(f) => f.await,
    }
    .unwrap()
}
mod faults;
mod runtime_gone;
