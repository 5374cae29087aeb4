//! What usage limits cost a warm verification (issue 11).
//!
//! ```text
//! cargo bench --bench limits -- --warm-up-time 1 --measurement-time 3
//! REDIS_URL=redis://127.0.0.1:6379/ cargo bench --features redis --bench limits -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Each variant verifies 10 000 cached keys in a shuffled order over a `MemoryStore`; the keys
//! never hit their limits (the limits are large), so every verification spends. Ratios
//! against `no_limits` of the same run are what the README reports.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use api_keys::{
    Actor, Credits, GenerateRequest, KeyManager, MemoryStore, OrgId, Policy, RateLimit, Scope,
    UsageCounters, UserId,
};
use criterion::{Criterion, criterion_group, criterion_main};

const KEYS: usize = 10_000;
const KEYS_PER_ORG: usize = 50;

/// Polls a future that is ready at once (the in-process engine and `MemoryStore` are).
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[derive(Clone, Copy)]
enum Variant {
    None,
    One,
    ThreeAndCredits,
}

fn request(v: Variant) -> GenerateRequest {
    let r = GenerateRequest::new("bench").scope(Scope::Prometheus);
    let hour = Duration::from_secs(3600);
    match v {
        Variant::None => r,
        Variant::One => r.rate_limit(RateLimit::new("burst", 1 << 40, hour)),
        Variant::ThreeAndCredits => r
            .rate_limit(RateLimit::new("burst", 1 << 40, Duration::from_secs(1)))
            .rate_limit(RateLimit::new("hourly", 1 << 40, hour))
            .rate_limit(RateLimit::new("org", 1 << 40, hour).per_org())
            .credits(Credits::new(1 << 50)),
    }
}

/// A manager with `KEYS` keys of one variant, every key verified once (cached), and the
/// tokens in a shuffled order.
async fn world(
    v: Variant,
    counters: Option<std::sync::Arc<dyn UsageCounters>>,
) -> (KeyManager<MemoryStore>, Vec<String>) {
    let mut b = KeyManager::builder(
        MemoryStore::new(),
        api_keys::Keyring::new(1, api_keys::MasterKey::from_bytes([3; 16])),
    )
    .policy(Policy::default().max_active_keys(KEYS_PER_ORG));
    if let Some(c) = counters {
        b = b.shared_counters(c);
    }
    let m = b.build().unwrap();
    let mut tokens = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let actor = Actor::manager(
            OrgId::new(format!("org{}", i / KEYS_PER_ORG)),
            UserId::new("bench"),
        );
        let (key, _) = m.generate(&actor, request(v)).await.unwrap();
        tokens.push(key.expose_secret().to_string());
    }
    // A fixed shuffle (xorshift), so runs are comparable.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for i in (1..tokens.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokens.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for t in &tokens {
        m.verify(t, &Scope::Prometheus).await.unwrap();
    }
    (m, tokens)
}

fn in_process(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits");
    for (name, v) in [
        ("no_limits", Variant::None),
        ("one_limit", Variant::One),
        ("three_limits_and_credits", Variant::ThreeAndCredits),
    ] {
        let (m, tokens) = block_on(world(v, None));
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                let t = &tokens[i];
                i = (i + 1) % tokens.len();
                block_on(m.verify(black_box(t), &Scope::Prometheus)).is_ok()
            })
        });
    }
    g.finish();
}

#[cfg(feature = "redis")]
fn redis_strict(c: &mut Criterion) {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("limits/redis_*: skipped (REDIS_URL is not set)");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The connection manager spawns its task on the runtime it is built in.
    let _guard = rt.enter();
    let mut g = c.benchmark_group("limits");
    for (name, v) in [
        ("redis_strict_one_limit", Variant::One),
        (
            "redis_strict_three_limits_and_credits",
            Variant::ThreeAndCredits,
        ),
    ] {
        let engine = api_keys::RedisCounters::builder(url.clone())
            .prefix(format!("api-keys-bench-{}", std::process::id()))
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let (m, tokens) = rt.block_on(world(v, Some(std::sync::Arc::new(engine))));
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                let t = &tokens[i];
                i = (i + 1) % tokens.len();
                rt.block_on(m.verify(black_box(t), &Scope::Prometheus))
                    .is_ok()
            })
        });
    }
    // Local-first: the key's lease is taken during the warm-up, so every measured
    // verification is decided from it, with no network.
    let engine = api_keys::RedisCounters::builder(url.clone())
        .prefix(format!("api-keys-bench-lf-{}", std::process::id()))
        .timeout(Duration::from_secs(1))
        .local_first(Duration::from_millis(10))
        .build()
        .unwrap();
    let (m, tokens) = rt.block_on(world(Variant::One, Some(std::sync::Arc::new(engine))));
    g.bench_function("redis_local_first_one_limit", |b| {
        let mut i = 0;
        b.iter(|| {
            let t = &tokens[i];
            i = (i + 1) % tokens.len();
            rt.block_on(m.verify(black_box(t), &Scope::Prometheus))
                .is_ok()
        })
    });
    // One loopback round trip for comparison: PING.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    g.bench_function("redis_ping_round_trip", |b| {
        b.iter(|| {
            rt.block_on(redis::cmd("PING").query_async::<String>(&mut conn))
                .unwrap()
        })
    });
    g.finish();
}

#[cfg(not(feature = "redis"))]
fn redis_strict(_: &mut Criterion) {}

criterion_group!(benches, in_process, redis_strict);
criterion_main!(benches);
