//! Local-first Redis counters under load: three managers ("nodes") share one Redis and a key
//! limited to 100 verifications per second, while 24 clients offer far more than that. Prints
//! how many verifications were admitted in each one-second window, in all, and how many
//! verifications waited for Redis (found no lease) rather than being decided locally.
//!
//! ```text
//! source .ci/redis.sh && redis_start
//! cargo run --release --features redis --example limits_local_first [seconds] [sync_ms] [pause_ms]
//! ```
//!
//! Each client pauses `pause_ms` (default 1) between verifications: the default offers about
//! 100 times the limit; `200` offers about 1.2 times it, where unspent leases would show as
//! under-admission.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api_keys::{
    Actor, Error, GenerateRequest, KeyManager, Keyring, MasterKey, MemoryStore, OrgId, RateLimit,
    RedisCounters, Scope, UserId,
};

const LIMIT: u64 = 100;
const NODES: usize = 3;
const CLIENTS_PER_NODE: usize = 8;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL")
        .map_err(|_| "set REDIS_URL (source .ci/redis.sh && redis_start)")?;
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(Ok(6), |s| s.parse())?;
    let sync_ms: u64 = args.next().map_or(Ok(10), |s| s.parse())?;
    let pause_ms: u64 = args.next().map_or(Ok(1), |s| s.parse())?;
    let store = MemoryStore::new();
    let keyring = Keyring::new(1, MasterKey::generate());
    let prefix = format!("api-keys-example-{}", std::process::id());
    let mut engines = Vec::new();
    let nodes: Vec<KeyManager<MemoryStore>> = (0..NODES)
        .map(|_| {
            let engine = RedisCounters::builder(url.clone())
                .prefix(prefix.clone())
                .timeout(Duration::from_millis(500))
                .local_first(Duration::from_millis(sync_ms))
                .build()
                .map_err(Error::LimitsUnavailable)?;
            engines.push(engine.clone());
            KeyManager::builder(store.clone(), keyring.clone())
                .counters(engine)
                .build()
        })
        .collect::<Result<_, _>>()?;
    let actor = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    let (key, _) = nodes[0]
        .generate(
            &actor,
            GenerateRequest::new("loaded")
                .scope(Scope::Prometheus)
                .rate_limit(RateLimit::new("per-second", LIMIT, Duration::from_secs(1))),
        )
        .await?;
    let token: Arc<str> = key.expose_secret().into();
    let admitted: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let offered = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now()
        .checked_add(Duration::from_secs(seconds))
        .ok_or("the run's length in seconds is too large")?;
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..CLIENTS_PER_NODE {
            let (m, t, admitted, offered) = (
                node.clone(),
                token.clone(),
                admitted.clone(),
                offered.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    offered.fetch_add(1, Ordering::Relaxed);
                    let started = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64;
                    if let Ok(v) = m.verify(&t, &Scope::Prometheus).await {
                        // The window the decision counted in (not the one the answer arrived
                        // in): its end is `reset_after` after the decision, which came a
                        // fraction of a second after `started`; ends are whole seconds.
                        let reset = v.limits().next().map_or(0, |l| l.reset_after.as_millis());
                        let end = (started + reset as u64 + 500) / 1000;
                        *admitted.lock().unwrap().entry(end - 1).or_default() += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let admitted = admitted.lock().unwrap().clone();
    let offered = offered.load(Ordering::Relaxed);
    println!(
        "{NODES} nodes, limit {LIMIT}/s, sync every {sync_ms} ms, {seconds} s, offered {offered} verifications ({:.0}/s)",
        offered as f64 / seconds as f64
    );
    // The first and last windows are partial: only full windows count.
    let full: Vec<(u64, u64)> = admitted
        .iter()
        .skip(1)
        .take(admitted.len().saturating_sub(2))
        .map(|(s, n)| (*s, *n))
        .collect();
    for (s, n) in &full {
        println!("window {s}: admitted {n}");
    }
    let (mut local, mut waited, mut calls) = (0, 0, 0);
    for (i, e) in engines.iter().enumerate() {
        let s = e.stats();
        println!(
            "node {i}: {} calls to Redis, {} refused by the open breaker, {} verifications decided locally, {} waited for Redis",
            s.calls, s.short_circuited, s.decided_locally, s.waited_for_redis
        );
        local += s.decided_locally;
        waited += s.waited_for_redis;
        calls += s.calls;
    }
    println!(
        "verifications that waited for Redis: {waited} of {} ({:.3}%); calls to Redis in all: {calls} ({:.3} per verification)",
        local + waited,
        waited as f64 * 100.0 / (local + waited).max(1) as f64,
        calls as f64 / (local + waited).max(1) as f64
    );
    if let Some(max) = full.iter().map(|(_, n)| *n).max() {
        let mean = full.iter().map(|(_, n)| *n).sum::<u64>() as f64 / full.len() as f64;
        println!(
            "full windows: {}, admitted per window mean {mean:.1}, max {max} (over-admission max {:.1}%)",
            full.len(),
            (max as f64 - LIMIT as f64).max(0.0) * 100.0 / LIMIT as f64
        );
    }
    Ok(())
}
