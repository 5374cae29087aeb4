//! Local-first Redis counters under load: three managers ("nodes") share one Redis and a key
//! limited to 100 verifications per second, while 24 clients offer far more than that. Prints
//! how many verifications were admitted in each one-second window, in all.
//!
//! ```text
//! source .ci/redis.sh && redis_start
//! cargo run --release --features redis --example limits_local_first [seconds] [sync_ms]
//! ```

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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
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
                    if m.verify(&t, &Scope::Prometheus).await.is_ok() {
                        let sec = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_secs();
                        *admitted.lock().unwrap().entry(sec).or_default() += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
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
    for (i, e) in engines.iter().enumerate() {
        let s = e.stats();
        println!(
            "node {i}: {} sync calls, {} refused by the open breaker",
            s.calls, s.short_circuited
        );
    }
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
