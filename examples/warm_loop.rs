//! Warm verifications in a loop, for counting instructions and cache misses per verification
//! with `valgrind --tool=callgrind` (the times of this VM move by ±20 % between runs; the
//! counts repeat). Usage limits' cost is the difference between the kinds.
//!
//! ```text
//! cargo build --release --example warm_loop
//! for r in 2 4; do
//!   valgrind --tool=callgrind --cache-sim=yes --toggle-collect='warm_loop::run*' \
//!     --callgrind-out-file=cg.$r target/release/examples/warm_loop one $r
//! done
//! # instructions per verification: (Ir of cg.4 - Ir of cg.2) / (2 * keys)
//! ```
//!
//! Arguments: the kind (`none`, `one`: one rate limit, `three`: three limits, one of them
//! per organization, and credits, `three_own`: three limits of the key's own and credits,
//! `credits`: one limit and credits, `monthly`: one limit and credits refilled monthly, `cold`:
//! no limits and the cache off, so every verification reads the store), the rounds, and
//! optionally the number of keys (10 000).
//! Every key is verified once first (cached); each round then verifies every key once, in a
//! fixed shuffled order. The limits are large and their windows an hour long, so nothing is
//! refused and no window rolls, however slowly valgrind runs.
//!
//! The manager's clock answers a fixed time, so that the counts repeat (within ±3 instructions
//! a verification between runs here): each key's last use is recorded once and never again,
//! and no wall-clock reading is redone at a rate set by how slowly valgrind runs. (With the
//! system clock, runs of one binary moved by ~±80: store touches fell on random keys.)

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use api_keys::{
    Actor, Clock, Credits, GenerateRequest, KeyManager, Keyring, MasterKey, MemoryStore, OrgId,
    Policy, RateLimit, Scope, UserId,
};
use time::OffsetDateTime;

/// 2026-12-01T00:00:00Z, always.
struct FixedClock;

const NOW: i64 = 1_796_083_200;

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(NOW).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
    fn now_unix(&self) -> i64 {
        NOW
    }
    fn now_unix_at(&self, _: Instant) -> i64 {
        NOW
    }
    fn now_unix_ms(&self) -> i64 {
        NOW * 1000
    }
    fn now_unix_ms_at(&self, _: Instant) -> i64 {
        NOW * 1000
    }
}

/// Polls a future that is ready at once (the in-process engine and `MemoryStore` are), pinned
/// in place: `futures_util`'s `now_or_never` moves the future by value, which added ~140
/// instructions to every counted verification.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn request(kind: &str) -> GenerateRequest {
    let r = GenerateRequest::new("warm").scope(Scope::Prometheus);
    let hour = Duration::from_secs(3600);
    match kind {
        "none" | "cold" => r,
        "one" => r.rate_limit(RateLimit::new("burst", 1 << 40, hour)),
        "three" => r
            .rate_limit(RateLimit::new("burst", 1 << 40, hour))
            .rate_limit(RateLimit::new("hourly", 1 << 40, hour))
            .rate_limit(RateLimit::new("org", 1 << 40, hour).per_org())
            .credits(Credits::new(1 << 50)),
        "three_own" => r
            .rate_limit(RateLimit::new("burst", 1 << 40, hour))
            .rate_limit(RateLimit::new("hourly", 1 << 40, hour))
            .rate_limit(RateLimit::new("daily", 1 << 40, hour))
            .credits(Credits::new(1 << 50)),
        "monthly" => r
            .rate_limit(RateLimit::new("burst", 1 << 40, hour))
            .credits(Credits::new(1 << 50).refill(api_keys::Refill::monthly(15, 1 << 50))),
        "credits" => r
            .rate_limit(RateLimit::new("burst", 1 << 40, hour))
            .credits(Credits::new(1 << 50)),
        other => {
            eprintln!(
                "unknown kind {other:?}: none, one, three, three_own, credits, monthly or cold"
            );
            std::process::exit(2);
        }
    }
}

/// The measured loop (`--toggle-collect='warm_loop::run*'`).
#[inline(never)]
fn run(m: &KeyManager<MemoryStore>, tokens: &[String], rounds: usize) -> usize {
    let mut ok = 0;
    for _ in 0..rounds {
        for t in tokens {
            ok += usize::from(block_on(m.verify(black_box(t), &Scope::Prometheus)).is_ok());
        }
    }
    ok
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args.first().map_or("none", String::as_str);
    let number = |i: usize, default: usize| {
        args.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("not a number: {s}");
                std::process::exit(2)
            })
        })
    };
    let rounds = number(1, 2);
    let keys = number(2, 10_000);
    let m = KeyManager::builder(
        MemoryStore::new(),
        Keyring::new(1, MasterKey::from_bytes([3; 16])),
    )
    .clock(FixedClock)
    .policy(Policy::default().max_active_keys(50))
    .cache_capacity(if kind == "cold" { 0 } else { 100_000 })
    .build()
    .expect("a manager");
    let mut tokens = Vec::with_capacity(keys);
    for i in 0..keys {
        let actor = Actor::manager(OrgId::new(format!("org{}", i / 50)), UserId::new("warm"));
        let (key, _) = block_on(m.generate(&actor, request(kind))).expect("a key");
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
    let warmed = run(&m, &tokens, 1);
    let started = Instant::now();
    let ok = run(&m, &tokens, rounds);
    let per = started.elapsed().as_nanos() as f64 / (rounds * keys).max(1) as f64;
    println!(
        "{kind}: {keys} keys, {warmed} warmed, {ok} of {} verified in {rounds} rounds, {per:.0} ns each",
        rounds * keys
    );
}
