//! The Redis counter engine on a real Redis (feature `redis`).
//!
//! Reads `REDIS_URL`. Without it each test says why it is skipped and passes, unless `CI` is
//! set or `API_KEYS_REQUIRE_REDIS=1`, where a missing URL fails. The tests that stop Redis
//! mid-test start their own private `redis-server` (on a free loopback port, in a temp dir),
//! never the one at `REDIS_URL`.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_engine_passes_the_counters_conformance_suite() {
    let Some(url) = redis_url("the_redis_engine_passes_the_counters_conformance_suite") else {
        return;
    };
    let engine = RedisCounters::builder(url)
        .prefix(prefix())
        .timeout(StdDuration::from_secs(2))
        .build()
        .unwrap();
    api_keys::testkit::counters::run(&engine).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_first_engine_passes_the_counters_conformance_suite() {
    let Some(url) = redis_url("the_local_first_engine_passes_the_counters_conformance_suite")
    else {
        return;
    };
    let engine = local_first(&url, &prefix(), StdDuration::from_secs(3600));
    api_keys::testkit::counters::run(&engine).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_credits_admit_exactly_n_verifies_across_three_managers() {
    let Some(url) = redis_url("n_credits_admit_exactly_n_verifies_across_three_managers") else {
        return;
    };
    let p = prefix();
    let store = MemoryStore::new();
    // Three "nodes": each its own manager, cache and Redis connection.
    let nodes: Vec<_> = (0..3)
        .map(|_| {
            let engine = RedisCounters::builder(url.clone())
                .prefix(p.clone())
                .timeout(StdDuration::from_secs(2))
                .build()
                .unwrap();
            manager(store.clone(), engine).0
        })
        .collect();
    let (key, _) = nodes[0]
        .generate(
            &alice(),
            req("shared")
                .credits(Credits::new(60))
                .rate_limit(RateLimit::new("minute", 1_000, StdDuration::from_secs(60))),
        )
        .await
        .unwrap();
    let token: Arc<str> = key.expose_secret().into();
    let tasks: Vec<_> = (0..240)
        .map(|i| {
            let m = nodes[i % 3].clone();
            let t = token.clone();
            tokio::spawn(async move { m.verify(&t, &Scope::Prometheus).await })
        })
        .collect();
    let (mut passed, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => passed += 1,
            Err(Error::UsageExceeded) => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((passed, refused), (60, 180));
    for node in &nodes {
        assert_eq!(
            node.credits_remaining(&alice(), key.id()).await.unwrap(),
            Some(0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_one_count_across_managers() {
    let Some(url) = redis_url("a_rate_limit_is_one_count_across_managers") else {
        return;
    };
    let p = prefix();
    let store = MemoryStore::new();
    let engine = |p: &str| {
        RedisCounters::builder(url.clone())
            .prefix(p)
            .timeout(StdDuration::from_secs(2))
            .build()
            .unwrap()
    };
    let (a, _) = manager(store.clone(), engine(&p));
    let (b, _) = manager(store.clone(), engine(&p));
    // An hour-long window: the test never straddles two windows.
    let (key, _) = a
        .generate(
            &alice(),
            req("r").rate_limit(RateLimit::new("hour", 4, StdDuration::from_secs(3600))),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    for m in [&a, &b, &a, &b] {
        m.verify(t, &Scope::Prometheus).await.unwrap();
    }
    for m in [&a, &b] {
        assert!(matches!(
            m.verify(t, &Scope::Prometheus).await,
            Err(Error::RateLimited { .. })
        ));
    }
}

/// Every counter a verification starts expires a second after its window and counts only
/// what was admitted; a refused request writes nothing (a refused first request starts no
/// counter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_expire_after_their_window_and_keep_only_admitted_counts() {
    let Some(url) = redis_url("counters_expire_after_their_window_and_keep_only_admitted_counts")
    else {
        return;
    };
    let p = prefix();
    let (engine, mut conn) = strict_with_connection(&url, &p).await;
    let (m, _) = manager(MemoryStore::new(), engine);
    let hour = StdDuration::from_secs(3600);
    let (two, _) = m
        .generate(
            &alice(),
            req("two")
                .rate_limit(RateLimit::new("hour", 2, hour))
                .rate_limit(RateLimit::new("ten", 5, StdDuration::from_secs(10))),
        )
        .await
        .unwrap();
    let (big, _) = m
        .generate(
            &alice(),
            req("big").rate_limit(RateLimit::new("minute", 3, StdDuration::from_secs(60))),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        m.verify(two.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    // The hour's limit refuses, and the ten-second limit's count stays as it was.
    assert!(matches!(
        m.verify(two.expose_secret(), &Scope::Prometheus).await,
        Err(Error::RateLimited { .. })
    ));
    // A first request above the limit is refused; the next one starts the counter.
    assert!(matches!(
        m.verify_with(big.expose_secret(), &Scope::Prometheus, 5)
            .await,
        Err(Error::RateLimited { .. })
    ));

    let started: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}:rl:k:minute:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(started, Vec::<String>::new(), "a refusal wrote a counter");
    m.verify_with(big.expose_secret(), &Scope::Prometheus, 2)
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}:rl:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    // Summed per limit: a window may end between two of the requests above.
    let mut seen = std::collections::BTreeMap::new();
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        let count: i64 = redis::cmd("GET")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        let (window_ms, name) = if k.contains(":hour:") {
            (3_600_000, "hour")
        } else if k.contains(":ten:") {
            (10_000, "ten")
        } else {
            (60_000, "minute")
        };
        assert!(
            ttl > 0 && ttl <= window_ms + 1_000,
            "{name}: PTTL {ttl} for a {window_ms} ms window"
        );
        *seen.entry(name).or_insert(0) += count;
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [("hour", 2), ("minute", 2), ("ten", 2)]
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_limits_fail_open_or_closed_and_the_breaker_opens_and_closes() {
    if redis_url("while_redis_is_down_limits_fail_open_or_closed_and_the_breaker_opens_and_closes")
        .is_none()
    {
        return;
    }
    let dir = temp_dir();
    let port = free_port();
    let server = PrivateRedis::start(dir.clone(), port);
    let open_for = StdDuration::from_millis(300);
    let engine = RedisCounters::builder(server.url())
        .timeout(StdDuration::from_secs(1))
        .breaker(2, open_for)
        .fail_open(["soft"])
        .build()
        .unwrap();
    let (m, audit) = manager(MemoryStore::new(), engine.clone());
    let hour = StdDuration::from_secs(3600);
    let (soft, _) = m
        .generate(
            &alice(),
            req("soft").rate_limit(RateLimit::new("soft", 100, hour)),
        )
        .await
        .unwrap();
    let (hard, _) = m
        .generate(
            &alice(),
            req("hard").rate_limit(RateLimit::new("hard", 100, hour)),
        )
        .await
        .unwrap();
    let (paid, _) = m
        .generate(&alice(), req("paid").credits(Credits::new(10)))
        .await
        .unwrap();
    let (mixed, _) = m
        .generate(
            &alice(),
            req("mixed")
                .rate_limit(RateLimit::new("soft", 100, hour))
                .rate_limit(RateLimit::new("hard", 100, hour)),
        )
        .await
        .unwrap();
    let verify = |t: &str| {
        let m = m.clone();
        let t = t.to_string();
        async move { m.verify(&t, &Scope::Prometheus).await }
    };
    for k in [&soft, &hard, &paid, &mixed] {
        verify(k.expose_secret()).await.unwrap();
    }
    assert_eq!(
        verify(paid.expose_secret())
            .await
            .unwrap()
            .credits_remaining(),
        Some(8)
    );

    server.stop();
    // Fail closed: the hard limit, the credits, and a key with one hard limit among others.
    for k in [&hard, &paid, &mixed] {
        let r = verify(k.expose_secret()).await;
        assert!(matches!(r, Err(Error::LimitsUnavailable(_))), "{r:?}");
    }
    assert!(engine.stats().open, "the breaker opens after 2 failures");
    // Fail open: admitted, and the host is told.
    let v = verify(soft.expose_secret()).await.unwrap();
    assert_eq!(v.limits().next().unwrap().remaining, 100);
    assert!(
        audit
            .events()
            .iter()
            .any(|e| e.action == AuditAction::LimitsFailedOpen && e.key_id == Some(*soft.id()))
    );
    // While open, no call goes out: refusals come from the breaker.
    let before = engine.stats();
    for _ in 0..5 {
        assert!(verify(hard.expose_secret()).await.is_err());
    }
    let after = engine.stats();
    assert_eq!(
        after.calls, before.calls,
        "no call while the breaker is open"
    );
    assert_eq!(after.short_circuited, before.short_circuited + 5);

    // Redis comes back (same port, same append-only file): after `open_for`, one probe
    // closes the breaker, and the balance spent before the outage is still spent.
    let _server = PrivateRedis::start(dir.clone(), port);
    tokio::time::sleep(open_for + StdDuration::from_millis(50)).await;
    let mut recovered = None;
    for _ in 0..40 {
        match verify(paid.expose_secret()).await {
            Ok(v) => {
                recovered = Some(v);
                break;
            }
            Err(Error::LimitsUnavailable(_)) => {
                tokio::time::sleep(open_for).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let v = recovered.expect("the breaker closes once Redis answers again");
    assert_eq!(
        v.credits_remaining(),
        Some(7),
        "credits survived the restart"
    );
    assert!(!engine.stats().open);
    verify(hard.expose_secret()).await.unwrap();
    drop(_server);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

fn local_first(url: &str, p: &str, every: StdDuration) -> RedisCounters {
    RedisCounters::builder(url)
        .prefix(p)
        .timeout(StdDuration::from_secs(2))
        .local_first(every)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_admits_from_leases_mostly_without_redis_and_never_over_the_limit() {
    let Some(url) =
        redis_url("local_first_admits_from_leases_mostly_without_redis_and_never_over_the_limit")
    else {
        return;
    };
    let p = prefix();
    let store = MemoryStore::new();
    // The background task's interval is an hour: only leases and prefetches talk to Redis.
    let hour = StdDuration::from_secs(3600);
    let (ea, eb) = (local_first(&url, &p, hour), local_first(&url, &p, hour));
    let (a, _) = manager(store.clone(), ea.clone());
    let (b, _) = manager(store.clone(), eb.clone());
    let (key, _) = a
        .generate(
            &alice(),
            req("lf").rate_limit(RateLimit::new("hour", 100, hour)),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    // One node alone: all 100 units, then refusals decided locally.
    let mut admitted = 0;
    for _ in 0..100 {
        admitted += usize::from(a.verify(t, &Scope::Prometheus).await.is_ok());
    }
    assert_eq!(admitted, 100);
    let r = a.verify(t, &Scope::Prometheus).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");
    let s = ea.stats();
    // A verification waits only when it finds no lease: at most once per lease (batches of
    // an eighth of what is left: about 25 leases for 100 units), so most are local.
    assert!(s.decided_locally >= 60, "{s:?}");
    // One client in sequence waits at most once per lease call.
    assert!(s.waited_for_redis <= s.calls, "{s:?}");
    assert_eq!(s.decided_locally + s.waited_for_redis, 101, "{s:?}");
    assert!(s.calls <= 40, "one lease call per batch: {s:?}");
    // The other node shares the same count: nothing left for it either.
    let r = b.verify(t, &Scope::Prometheus).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");

    // Two nodes taking turns on a fresh key: together exactly the limit, never more.
    let (key, _) = a
        .generate(
            &alice(),
            req("lf2").rate_limit(RateLimit::new("hour", 10, hour)),
        )
        .await
        .unwrap();
    let t2 = key.expose_secret();
    let mut admitted = 0;
    for _ in 0..200 {
        for m in [&a, &b] {
            admitted += usize::from(m.verify(t2, &Scope::Prometheus).await.is_ok());
        }
        // A lease fetched in the background after a node's last turn may still be held:
        // keep taking turns until it is spent.
        if admitted == 10 && ea.leased() + eb.leased() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(admitted, 10);
    for m in [&a, &b] {
        assert!(m.verify(t2, &Scope::Prometheus).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_hands_idle_leases_back_for_other_nodes() {
    let Some(url) = redis_url("local_first_hands_idle_leases_back_for_other_nodes") else {
        return;
    };
    let p = prefix();
    let store = MemoryStore::new();
    let hour = StdDuration::from_secs(3600);
    // A lease idle for 20 ms and for half the window (at most a second) goes back; B asks
    // Redis again 20 ms after it found nothing left.
    let every = StdDuration::from_millis(20);
    let (ea, eb) = (local_first(&url, &p, every), local_first(&url, &p, every));
    let (a, _) = manager(store.clone(), ea.clone());
    let (b, _) = manager(store.clone(), eb.clone());
    let (key, _) = a
        .generate(
            &alice(),
            req("idle").rate_limit(RateLimit::new("hour", 10, hour)),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    a.verify(t, &Scope::Prometheus).await.unwrap();
    // A holds the rest of its lease (and perhaps a prefetched one) until it idles.
    for _ in 0..2000 {
        if ea.leased() == 0 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    assert_eq!(ea.leased(), 0, "an idle lease is handed back");
    // B can spend everything A did not: 9 in all (asking again after each refusal's mark
    // ages, as the background task would).
    let mut admitted = 0;
    for _ in 0..500 {
        admitted += usize::from(b.verify(t, &Scope::Prometheus).await.is_ok());
        if admitted == 9 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(1)).await;
    }
    assert_eq!(admitted, 9);
    assert!(b.verify(t, &Scope::Prometheus).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_without_redis_fails_closed_or_counts_alone_as_configured() {
    // No Redis at all (nothing listens on port 1): runs everywhere, needs no server.
    let engine = RedisCounters::builder("redis://127.0.0.1:1/")
        .prefix(prefix())
        .timeout(StdDuration::from_millis(200))
        .local_first(StdDuration::from_secs(3600))
        .fail_open(["soft"])
        .build()
        .unwrap();
    let (m, audit) = manager(MemoryStore::new(), engine.clone());
    let hour = StdDuration::from_secs(3600);
    let (soft, _) = m
        .generate(
            &alice(),
            req("soft").rate_limit(RateLimit::new("soft", 3, hour)),
        )
        .await
        .unwrap();
    let (hard, _) = m
        .generate(
            &alice(),
            req("hard").rate_limit(RateLimit::new("hard", 3, hour)),
        )
        .await
        .unwrap();
    let r = m.verify(hard.expose_secret(), &Scope::Prometheus).await;
    assert!(matches!(r, Err(Error::LimitsUnavailable(_))), "{r:?}");
    // Fail open: this node enforces the limit on its own count, and the host is told.
    for _ in 0..3 {
        m.verify(soft.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    let r = m.verify(soft.expose_secret(), &Scope::Prometheus).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");
    assert!(
        audit
            .events()
            .iter()
            .any(|e| e.action == AuditAction::LimitsFailedOpen && e.key_id == Some(*soft.id()))
    );
    let s = engine.stats();
    assert!(s.open || s.short_circuited > 0, "{s:?}");
}

/// A Redis URL can carry a password: the builder's `Debug` never shows the URL.
#[test]
fn the_builder_never_shows_its_url() {
    let b = api_keys::RedisCounters::builder("redis://:hunter2-secret@cache.internal:6379/0");
    let shown = format!("{b:?}");
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    assert!(!shown.contains("cache.internal"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_dropped_before_its_answer_lets_the_next_call_probe() {
    let open_for = StdDuration::from_millis(50);
    let engine = RedisCounters::builder(frozen_redis())
        .timeout(StdDuration::from_millis(300))
        .breaker(1, open_for)
        .build()
        .unwrap();
    let (m, _) = manager(MemoryStore::new(), engine.clone());
    let (key, _) = m
        .generate(
            &alice(),
            req("k").rate_limit(RateLimit::new("hard", 100, StdDuration::from_secs(3600))),
        )
        .await
        .unwrap();
    let verify = || m.verify(key.expose_secret(), &Scope::Prometheus);
    // The first call times out: the breaker opens.
    assert!(matches!(verify().await, Err(Error::LimitsUnavailable(_))));
    assert!(engine.stats().open);
    // Its time up, the next verification is the probe, and its caller gives up before the
    // answer (a client gone, the host's own deadline).
    tokio::time::sleep(open_for + StdDuration::from_millis(20)).await;
    let before = engine.stats();
    assert!(
        tokio::time::timeout(StdDuration::from_millis(40), verify())
            .await
            .is_err()
    );
    assert_eq!(engine.stats().calls, before.calls + 1, "it was the probe");
    // A later verification may probe again instead of being cut off for good.
    let before = engine.stats();
    assert!(matches!(verify().await, Err(Error::LimitsUnavailable(_))));
    let after = engine.stats();
    assert_eq!(
        (after.calls, after.short_circuited),
        (before.calls + 1, before.short_circuited),
        "the dropped probe kept the breaker shut to every later call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_keeps_deciding_after_a_waiting_verification_is_dropped() {
    let Some(url) = redis_url("local_first_keeps_deciding_after_a_waiting_verification_is_dropped")
    else {
        return;
    };
    let engine = RedisCounters::builder(&url)
        .prefix(prefix())
        .timeout(StdDuration::from_millis(500))
        .local_first(StdDuration::from_secs(3600))
        .build()
        .unwrap();
    let (m, _) = manager(MemoryStore::new(), engine.clone());
    let hour = StdDuration::from_secs(3600);
    let (key, _) = m
        .generate(
            &alice(),
            req("k").rate_limit(RateLimit::new("hour", 100, hour).per_org()),
        )
        .await
        .unwrap();
    let verify = || m.verify(key.expose_secret(), &Scope::Prometheus);
    // The window's first verification waits for a lease; its caller goes away during the
    // call (polled once, then dropped). Polled by hand: a zero timeout polls it again when
    // woken, and a Redis that answers within the timer's millisecond finished it.
    assert!(
        futures_util::FutureExt::now_or_never(verify()).is_none(),
        "the first verification of the window waits for Redis"
    );
    assert_eq!(engine.stats().waited_for_redis, 1);
    // The next ones fetch a lease and are admitted, instead of waiting for the dropped call.
    for _ in 0..3 {
        let v = verify().await;
        assert!(v.is_ok(), "a healthy Redis answered {v:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_follows_a_changed_limit_within_its_window() {
    let Some(url) = redis_url("local_first_follows_a_changed_limit_within_its_window") else {
        return;
    };
    let hour = StdDuration::from_secs(3600);
    let engine = local_first(&url, &prefix(), hour);
    let (m, _) = manager(MemoryStore::new(), engine);
    let (key, info) = m
        .generate(
            &alice(),
            req("k").rate_limit(RateLimit::new("hour", 100, hour)),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    let admitted = |n: usize| {
        let m = m.clone();
        let t = t.to_string();
        async move {
            let mut ok = 0;
            for _ in 0..n {
                ok += usize::from(m.verify(&t, &Scope::Prometheus).await.is_ok());
            }
            ok
        }
    };
    // A lease of the 100 is held after the first verification.
    assert_eq!(admitted(1).await, 1);
    // Lowered to 3 in this window: 2 more, whatever this node still holds.
    m.set_limits(&alice(), &info.id, vec![RateLimit::new("hour", 3, hour)])
        .await
        .unwrap();
    assert_eq!(admitted(10).await, 2, "the lowered limit holds");
    // Raised to 6: this node asks again instead of refusing on its remembered answer.
    m.set_limits(&alice(), &info.id, vec![RateLimit::new("hour", 6, hour)])
        .await
        .unwrap();
    assert_eq!(admitted(10).await, 3, "the raised limit admits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_limits_and_balances_count_exactly_on_redis() {
    let Some(url) = redis_url("the_largest_limits_and_balances_count_exactly_on_redis") else {
        return;
    };
    let hour = StdDuration::from_secs(3600);
    let max = api_keys::MAX_UNITS;
    for engine in [
        RedisCounters::builder(&url)
            .prefix(prefix())
            .build()
            .unwrap(),
        local_first(&url, &prefix(), hour),
    ] {
        let (m, _) = manager(MemoryStore::new(), engine.clone());
        let (key, _) = m
            .generate(
                &alice(),
                req("k")
                    .rate_limit(RateLimit::new("hour", max, hour))
                    .credits(Credits::new(max)),
            )
            .await
            .unwrap();
        for spent in 1..=3 {
            let v = m
                .verify(key.expose_secret(), &Scope::Prometheus)
                .await
                .unwrap();
            assert_eq!(v.credits_remaining(), Some(max - spent));
            assert_eq!(v.limits().next().unwrap().remaining, max - spent);
        }
        assert!(!engine.stats().open, "{:?}", engine.stats());
    }
}

/// After the managers' clock steps back by hours, the background sync keeps the leases of
/// the new time's windows (it forgot them as ended, leaving their units counted in Redis, and
/// the key was refused after a fraction of its limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_keeps_its_leases_after_the_clock_steps_back() {
    let Some(url) = redis_url("local_first_keeps_its_leases_after_the_clock_steps_back") else {
        return;
    };
    let engine = local_first(&url, &prefix(), StdDuration::from_secs(3600));
    let org = api_keys::OrgId::try_new("acme").unwrap();
    let (key, _) = random_key();
    let limits = [RateLimit::new("hour", 100, StdDuration::from_secs(3600))];
    let at = |now_ms| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms,
    };
    const HOUR: i64 = 3_600_000;
    let t0 = 1_796_083_200_000;
    let engine = &engine;
    let consume = |req| async move {
        match engine.consume(req) {
            Consumed::Ready(r) => r,
            Consumed::Pending(f) => f.await,
        }
        .unwrap()
    };
    // A reading two hours ahead, then the clock back where it belongs.
    assert!(matches!(
        consume(at(t0 + 2 * HOUR)).await,
        Decision::Allowed { .. }
    ));
    for i in 0..100 {
        match consume(at(t0 + 10_000 + i)).await {
            Decision::Allowed { .. } => {}
            other => panic!("refused after {i} of 100 units in the window: {other:?}"),
        }
        // What the background task does every `sync_every`.
        engine.sync_once().await;
    }
    assert!(matches!(
        consume(at(t0 + 20_000)).await,
        Decision::RateLimited { .. }
    ));
}

/// A cost above `MAX_UNITS` cannot fit any limit or balance: refused on every engine alike,
/// and nothing spent (Lua's doubles would round it down to 2^53, which fits a full limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costs_above_the_largest_limit_are_refused_on_every_engine() {
    let Some(url) = redis_url("costs_above_the_largest_limit_are_refused_on_every_engine") else {
        return;
    };
    let hour = StdDuration::from_secs(3600);
    let max = api_keys::MAX_UNITS;
    let strict = RedisCounters::builder(&url)
        .prefix(prefix())
        .build()
        .unwrap();
    let managers = [
        manager(MemoryStore::new(), strict).0,
        manager(MemoryStore::new(), local_first(&url, &prefix(), hour)).0,
        manager(MemoryStore::new(), api_keys::LocalCounters::new()).0,
    ];
    for m in managers {
        let (limited, _) = m
            .generate(
                &alice(),
                req("limited").rate_limit(RateLimit::new("hour", max, hour)),
            )
            .await
            .unwrap();
        let (paid, _) = m
            .generate(&alice(), req("paid").credits(Credits::new(max)))
            .await
            .unwrap();
        for cost in [max + 1, max + 2, u64::MAX] {
            let r = m
                .verify_with(limited.expose_secret(), &Scope::Prometheus, cost)
                .await;
            assert!(
                matches!(r, Err(Error::RateLimited { .. })),
                "cost {cost}: {r:?}"
            );
            let r = m
                .verify_with(paid.expose_secret(), &Scope::Prometheus, cost)
                .await;
            assert!(matches!(r, Err(Error::UsageExceeded)), "cost {cost}: {r:?}");
        }
        let v = m
            .verify(limited.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        assert_eq!(v.limits().next().unwrap().remaining, max - 1);
        let v = m
            .verify(paid.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        assert_eq!(v.credits_remaining(), Some(max - 1));
    }
}

/// Balances written by builds that kept only a period number (`p`), and balances an older node
/// changes during a rolling upgrade, keep their refills: due ones happen, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_of_earlier_builds_and_older_nodes_refill_once_per_period() {
    use api_keys::{KeyId, OrgId, Refill};
    let Some(url) = redis_url("balances_of_earlier_builds_and_older_nodes_refill_once_per_period")
    else {
        return;
    };
    let p = prefix();
    let (engine, mut conn) = strict_with_connection(&url, &p).await;
    let credits = Credits::new(100).refill(Refill::monthly(1, 100));
    let org = OrgId::new("acme");
    let at = |month: u8, day: u8| {
        let date = api_keys::time::Date::from_calendar_date(
            2026,
            api_keys::time::Month::try_from(month).unwrap(),
            day,
        )
        .unwrap();
        date.midnight().assume_utc().unix_timestamp() * 1000 + 3_600_000
    };
    // The earlier builds' period number of a monthly refill: months since year 0.
    let month_index = |month: u8| 2026 * 12 + i64::from(month) - 1;
    let left = |(key, _): (KeyId, u64), now_ms: i64| {
        let engine = engine.clone();
        let (org, credits) = (org.clone(), credits);
        async move {
            let req = UsageRequest {
                key,
                org: &org,
                limits: &[],
                credits: Some(&credits),
                cost: 1,
                now_ms,
            };
            let d = match engine.consume(req) {
                Consumed::Ready(r) => r,
                Consumed::Pending(f) => f.await,
            };
            match d.unwrap() {
                Decision::Allowed { usage, .. } => usage.credits,
                other => panic!("refused: {other:?}"),
            }
        }
    };
    let hset = |key: (KeyId, u64), fields: Vec<(&'static str, i64)>| {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(format!("{p}:cr:{:016x}", key.1));
        for (f, v) in fields {
            cmd.arg(f).arg(v);
        }
        cmd
    };
    let key = random_key;

    // Spent out in February by an earlier build: March's refill is due on its first use.
    let k = key();
    let _: i64 = hset(k, vec![("b", 0), ("p", month_index(2))])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left(k, at(3, 10)).await, Some(99));
    // Refilled in March by an earlier build: not again in March, again in April.
    let k = key();
    let _: i64 = hset(k, vec![("b", 5), ("p", month_index(3))])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left(k, at(3, 10)).await, Some(4));
    assert_eq!(left(k, at(4, 1)).await, Some(99));
    // Started here in March; on April 1st an older node refills it and spends it down to 40:
    // this node must not refill it again in April.
    let k = key();
    assert_eq!(left(k, at(3, 10)).await, Some(99));
    let p_written: i64 = redis::cmd("HGET")
        .arg(format!("{p}:cr:{:016x}", k.1))
        .arg("p")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        p_written,
        month_index(3),
        "older nodes find their period number"
    );
    let _: i64 = hset(k, vec![("b", 40), ("p", month_index(4))])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left(k, at(4, 2)).await, Some(39));
    assert_eq!(left(k, at(5, 1)).await, Some(99));
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

/// Two keys of one organization share an org-wide limit with different values: a request is
/// admitted only if the shared count plus its cost stays within *its own key's* limit (the
/// trait's duty, as strict mode decides). A node that leased under the larger limit and
/// heard nothing from Redis since must not admit the smaller limit's requests from its lease
/// when other nodes already spent far beyond that smaller limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_decides_a_smaller_limit_on_the_shared_count_not_a_stale_lease() {
    let Some(url) =
        redis_url("local_first_decides_a_smaller_limit_on_the_shared_count_not_a_stale_lease")
    else {
        return;
    };
    let p = prefix();
    let hour = StdDuration::from_secs(3600);
    let node1 = local_first(&url, &p, hour);
    let node2 = local_first(&url, &p, hour);
    let org = api_keys::OrgId::new("acme");
    let big = [RateLimit::new("daily", 100, hour).per_org()];
    let small = [RateLimit::new("daily", 10, hour).per_org()];
    let (key_a, key_b) = (random_key().0, random_key().0);
    // Mid-window of an hour-long window, on a fixed clock: the test never straddles two.
    let now_ms = 1_800_000_i64 + 3_600_000 * 500_000;
    let req = |key, limits, cost| UsageRequest {
        key,
        org: &org,
        limits,
        credits: None,
        cost,
        now_ms,
    };
    // Node 1 admits one request of key A (limit 100) and keeps the rest of its lease.
    let d = consume_once(&node1, req(key_a, &big[..], 1)).await;
    assert!(matches!(d, Decision::Allowed { .. }), "{d:?}");
    // Node 2 admits 40 more of key A: the organization's count is now at least 41.
    for _ in 0..40 {
        let d = consume_once(&node2, req(key_a, &big[..], 1)).await;
        assert!(matches!(d, Decision::Allowed { .. }), "{d:?}");
    }
    // Key B's limit is 10: with 41 already counted, every request of it must be refused, on
    // either node (node 2 does refuse: its view of the count is fresh).
    let d = consume_once(&node2, req(key_b, &small[..], 1)).await;
    assert!(matches!(d, Decision::RateLimited { .. }), "node 2: {d:?}");
    let mut admitted = 0;
    for _ in 0..10 {
        if let Decision::Allowed { .. } = consume_once(&node1, req(key_b, &small[..], 1)).await {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 0,
        "node 1 admitted key B past its limit of 10 from a lease taken under key A's 100"
    );
}

/// Redis answering an error about one key's own data (a counter edited by hand into text, or
/// into another type) is not Redis failing: that key cannot be decided (it fails as
/// configured), but the breaker stays closed and every other key is decided as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_edited_by_hand_fails_its_own_key_and_never_opens_the_breaker() {
    let Some(url) =
        redis_url("a_counter_edited_by_hand_fails_its_own_key_and_never_opens_the_breaker")
    else {
        return;
    };
    let p = prefix();
    let (engine, mut conn) = strict_with_connection(&url, &p).await;
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 5, StdDuration::from_secs(3600))];
    let decide = |key| {
        let (engine, org, limits) = (engine.clone(), org.clone(), limits.clone());
        async move {
            let req = UsageRequest {
                key,
                org: &org,
                limits: &limits,
                credits: None,
                cost: 1,
                now_ms: 1_800_000,
            };
            match engine.consume(req) {
                Consumed::Ready(r) => r,
                Consumed::Pending(f) => f.await,
            }
        }
    };
    let (text, other_type, healthy) = (random_key(), random_key(), random_key().0);
    // Each key's counter is started, then edited by hand: into text, and into a hash.
    for ((key, n), edit) in [(text, "SET"), (other_type, "HSET")] {
        decide(key).await.expect("a healthy Redis decides a key");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{p}:rl:k:*:{n:016x}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let counter = keys.pop().unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&counter)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut cmd = redis::cmd(edit);
        cmd.arg(&counter);
        if edit == "HSET" {
            cmd.arg("f");
        }
        let _: redis::Value = cmd.arg("oops").query_async(&mut conn).await.unwrap();
        for _ in 0..3 {
            let r = decide(key).await;
            assert!(r.is_err(), "{edit}: {r:?}");
        }
    }
    assert!(!engine.stats().open, "a healthy Redis opened the breaker");
    let r = decide(healthy).await;
    assert!(
        matches!(r, Ok(Decision::Allowed { .. })),
        "an unrelated key: {r:?}"
    );
}

/// Polls a future once, without yielding to the runtime.
async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await
}

/// A verification waiting for its counter's lease, which another verification is fetching,
/// is woken whenever any lease call of the node ends (other keys' counters included). Those
/// wake-ups are not answers about its own counter: however many come while the call it waits
/// for is in flight, it must wait for that call and be decided on its answer, never give up
/// on a healthy Redis (`Unavailable` for a limit that fails closed).
#[tokio::test]
async fn local_first_waits_for_its_own_lease_through_other_counters_wakeups() {
    let Some(url) = redis_url("local_first_waits_for_its_own_lease_through_other_counters_wakeups")
    else {
        return;
    };
    let engine = local_first(&url, &prefix(), StdDuration::from_secs(3600));
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 100, StdDuration::from_secs(3600))];
    let req = |key| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms: 1_800_000,
    };
    let pending = |c| match c {
        Consumed::Pending(f) => f,
        Consumed::Ready(r) => panic!("decided without a lease: {r:?}"),
    };
    let key = random_key().0;
    // The first verification of the window fetches the key's lease (its call goes out)...
    let mut fetching = pending(engine.consume(req(key)));
    assert!(poll_once(&mut fetching).await.is_pending());
    // ...and a second one waits for that call.
    let mut waiting = pending(engine.consume(req(key)));
    assert!(poll_once(&mut waiting).await.is_pending());
    // Meanwhile lease calls of other counters end on this node (here: verifications of other
    // keys that go away before their call, which wakes the waiters as an answer would).
    for _ in 0..20 {
        drop(pending(engine.consume(req(random_key().0))));
        let r = poll_once(&mut waiting).await;
        assert!(
            r.is_pending(),
            "gave up before its own lease call answered: {r:?}"
        );
    }
    // The lease call answers: both are admitted.
    let first = fetching.await;
    assert!(matches!(first, Ok(Decision::Allowed { .. })), "{first:?}");
    let second = waiting.await;
    assert!(matches!(second, Ok(Decision::Allowed { .. })), "{second:?}");
}

/// At the largest limit, a count one below it and a cost of 2 is over it by one: Lua's
/// doubles round `2^53 - 1 + 2` down to `2^53`, which must not make strict mode admit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_a_cost_that_passes_the_largest_limit_by_one() {
    let Some(url) = redis_url("strict_refuses_a_cost_that_passes_the_largest_limit_by_one") else {
        return;
    };
    let (engine, _) = strict_with_connection(&url, &prefix()).await;
    let org = api_keys::OrgId::new("acme");
    let max = api_keys::MAX_UNITS;
    let limits = [RateLimit::new("hour", max, StdDuration::from_secs(3600))];
    let key = random_key().0;
    let req = |cost| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost,
        now_ms: 1_800_000,
    };
    let d = consume_once(&engine, req(max - 1)).await;
    assert!(matches!(d, Decision::Allowed { .. }), "{d:?}");
    let d = consume_once(&engine, req(2)).await;
    assert!(
        matches!(d, Decision::RateLimited { .. }),
        "admitted {} units under a limit of {max}: {d:?}",
        max + 1
    );
}
