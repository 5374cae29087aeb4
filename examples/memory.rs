//! Resident memory of a `MemoryStore` per key (and of a warm verification cache per key).
//!
//! ```text
//! cargo run --release --features bench --example memory -- 1000000
//! ```
//!
//! Method: read the resident set size from `/proc/self/statm` (Linux) before and after
//! inserting `n` sealed records one at a time (no batch of records is held outside the
//! store), and divide the growth by `n`. Then warm a manager's cache with every key and
//! report its growth the same way. Records look like real ones: a 20-character name, one
//! scope, an expiry, 100 keys per organization, ids and secrets from a seeded generator.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use api_keys::bench_support::{format_token, key_id, seal_record};
use api_keys::time::{Duration as Span, OffsetDateTime};
use api_keys::{KeyManager, KeyStore, Keyring, MasterKey, MemoryStore, OrgId, Scope, UserId};

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Resident set size in bytes, from `/proc/self/statm` (second field, in pages).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux)");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm format");
    pages * 4096
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn secret(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        for c in s.chunks_exact_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        s
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("key count"))
        .unwrap_or(1_000_000);
    let keyring = Keyring::new(1, MasterKey::from_bytes([1; 16]));
    let created =
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let creator = UserId::new("alice");
    let store = MemoryStore::new();
    let mut org = OrgId::new("org-0");
    let mut rng = Rng(7);
    let before = rss();
    for k in 0..n {
        if k % 100 == 0 {
            org = OrgId::new(format!("org-{}", k / 100));
        }
        let rec = seal_record(
            &keyring,
            key_id(rng.next()),
            org.clone(),
            "prometheus scraper 1".into(),
            vec![Scope::Prometheus],
            created,
            creator.clone(),
            Some(created + Span::days(90)),
            &rng.secret(),
        )
        .unwrap();
        block_on(store.insert(rec)).unwrap();
    }
    let after = rss();
    let per_key = (after - before) as f64 / n as f64;
    println!(
        "MemoryStore: {n} keys, RSS {:.1} MiB -> {:.1} MiB: {per_key:.0} bytes per key",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );

    let manager = KeyManager::builder(store, keyring)
        .cache_capacity(2 * n)
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut rng = Rng(7);
    let before = rss();
    for _ in 0..n {
        let id = key_id(rng.next());
        let token = format_token("sak", id, &rng.secret());
        block_on(manager.verify(&token, &Scope::Prometheus)).unwrap();
    }
    let after = rss();
    println!(
        "verification cache: {} entries, {:.0} bytes per entry",
        manager.cached_records(),
        (after - before) as f64 / n as f64
    );
}
