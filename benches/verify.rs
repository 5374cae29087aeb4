//! Benchmarks of the verification hot path and of the operations around it.
//!
//! ```text
//! cargo bench --features bench --bench verify                 # everything (~8 min)
//! cargo bench --features bench --bench verify -- 'verify/'    # one group
//! BENCH_10M=1 cargo bench --features bench --bench verify -- scaling/verify
//! ```
//!
//! Every store is filled once per process (records sealed in bulk with the crate's own sealing
//! code, tokens formatted with its own formatter) and shared by the groups that need it.
//! Tokens are visited in a shuffled order, so lookups land at random as real traffic does.
//! See `docs/performance.md` for the machine, the measured table and how to read it.

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use api_keys::bench_support::{format_token, key_id, open_record, parse_token, seal_record};
use api_keys::time::{Duration as Span, OffsetDateTime};
use api_keys::{
    Actor, ChangeListener, Error, GenerateRequest, KeyId, KeyManager, KeyRecord, KeyStore, Keyring,
    MasterKey, MemoryStore, OrgId, Scope, StoreError, UserId,
};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "sak";
/// Keys per organization in the bulk stores.
const KEYS_PER_ORG: usize = 100;
/// At most this many distinct tokens are kept per kind (the 10 M store samples them).
const MAX_TOKENS: usize = 1_000_000;

/// Polls a future that is ready at once (every `MemoryStore` future is).
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// SplitMix64: deterministic, uniformly spread ids and secrets (reproducible runs).
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

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

fn master(byte: u8) -> MasterKey {
    MasterKey::from_bytes([byte; 16])
}

/// A `KeyStore` that counts the calls it forwards (to show that a broken checksum never
/// reaches the store).
#[derive(Clone)]
struct Counting {
    inner: MemoryStore,
    calls: Arc<AtomicU64>,
}

impl Counting {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl KeyStore for Counting {
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.count();
        self.inner.insert(record)
    }
    fn get(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        self.count();
        self.inner.get(id)
    }
    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        self.count();
        self.inner.list(org)
    }
    fn update(
        &self,
        record: KeyRecord,
        expected_revision: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.count();
        self.inner.update(record, expected_revision)
    }
    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.count();
        self.inner.delete(id)
    }
    fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        self.count();
        self.inner.scan(after, limit)
    }
    fn touch(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.count();
        self.inner.touch(id, at)
    }
    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        self.inner.changes(listener)
    }
}

/// One bulk store with its managers and its shuffled token lists.
struct World {
    n: usize,
    /// Cache large enough for every key (twice the key count: each of the 64 shards holds
    /// 1/64 of the capacity and random ids do not spread evenly), TTL long enough for a run.
    warm: KeyManager<MemoryStore>,
    /// Cache disabled: every verify reads the store and checks the tag.
    cold: KeyManager<Counting>,
    calls: Arc<AtomicU64>,
    valid: Vec<String>,
    wrong: Vec<String>,
    broken: Vec<String>,
    unknown: Vec<String>,
    /// The yardstick: no encryption at rest, `HashMap<id, sha256(secret)>`.
    baseline: HashMap<KeyId, [u8; 32], foldhash::fast::FixedState>,
}

fn build_world(n: usize) -> World {
    let t0 = Instant::now();
    let keyring = Keyring::new(1, master(1));
    let store = MemoryStore::new();
    let now = OffsetDateTime::now_utc();
    let created = OffsetDateTime::from_unix_timestamp(now.unix_timestamp() - 86_400).unwrap();
    let expires = Some(created + Span::days(90));
    let creator = UserId::new("alice");
    let mut rng = Rng(0x5EED_0000 + n as u64);
    let mut org = OrgId::new("org-0");
    let keep = n.min(MAX_TOKENS);
    // Keep every (n / keep)-th key's token: a uniform sample when n > MAX_TOKENS.
    let stride = n / keep;
    let mut valid = Vec::with_capacity(keep);
    let mut wrong = Vec::with_capacity(keep);
    let mut broken = Vec::with_capacity(keep);
    let mut baseline = HashMap::with_capacity_and_hasher(n.min(MAX_TOKENS), Default::default());
    let mut ids = Vec::with_capacity(keep);
    for k in 0..n {
        if k % KEYS_PER_ORG == 0 {
            org = OrgId::new(format!("org-{}", k / KEYS_PER_ORG));
        }
        let id = key_id(rng.next());
        let secret = rng.secret();
        let rec = seal_record(
            &keyring,
            id,
            org.clone(),
            "prometheus scraper".into(),
            vec![Scope::Prometheus],
            created,
            creator.clone(),
            expires,
            &secret,
        )
        .unwrap();
        block_on(store.insert(rec)).unwrap();
        if k % stride == 0 && valid.len() < keep {
            valid.push(format_token(PREFIX, id, &secret));
            let mut other = secret;
            other[31] ^= 1;
            wrong.push(format_token(PREFIX, id, &other));
            let mut b = valid.last().unwrap().clone().into_bytes();
            let last = b.len() - 1;
            b[last] = if b[last] == b'0' { b'1' } else { b'0' };
            broken.push(String::from_utf8(b).unwrap());
            baseline.insert(id, Sha256::digest(secret).into());
            ids.push(id);
        }
    }
    let mut unknown = Vec::with_capacity(keep);
    let mut urng = Rng(0xDEAD_BEEF);
    while unknown.len() < keep {
        let id = key_id(urng.next());
        if block_on(store.get(&id)).unwrap().is_none() {
            unknown.push(format_token(PREFIX, id, &urng.secret()));
        }
    }
    // One shuffled order, applied to every list, so each visits keys at random.
    let mut order: Vec<usize> = (0..keep).collect();
    rng.shuffle(&mut order);
    let pick = |v: Vec<String>| -> Vec<String> { order.iter().map(|&i| v[i].clone()).collect() };
    let (valid, wrong, broken, unknown) = (pick(valid), pick(wrong), pick(broken), pick(unknown));

    let warm = KeyManager::builder(store.clone(), keyring.clone())
        .cache_capacity(2 * n)
        .cache_ttl(Duration::from_secs(3600))
        .cache_fallback_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let cold = KeyManager::builder(
        Counting {
            inner: store.clone(),
            calls: calls.clone(),
        },
        keyring,
    )
    .cache_capacity(0)
    .build()
    .unwrap();
    // Warm every key of the store (the cache table reaches its full size), then check that
    // each list does what its name says.
    if n > keep {
        let mut rng = Rng(0x5EED_0000 + n as u64);
        for _ in 0..n {
            let id = key_id(rng.next());
            let t = format_token(PREFIX, id, &rng.secret());
            block_on(warm.verify(&t, &Scope::Prometheus)).unwrap();
        }
    } else {
        for t in &valid {
            block_on(warm.verify(t, &Scope::Prometheus)).unwrap();
        }
    }
    assert_eq!(warm.cached_records(), n);
    let s = &Scope::Prometheus;
    for m in [&warm as &dyn Check, &cold] {
        assert!(m.check(&valid[0], s).is_ok());
        assert!(matches!(m.check(&wrong[0], s), Err(Error::InvalidKey)));
        assert!(matches!(m.check(&broken[0], s), Err(Error::Malformed)));
        assert!(matches!(m.check(&unknown[0], s), Err(Error::InvalidKey)));
    }
    eprintln!(
        "[setup] {n} keys stored and warmed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    World {
        n,
        warm,
        cold,
        calls,
        valid,
        wrong,
        broken,
        unknown,
        baseline,
    }
}

trait Check {
    fn check(&self, token: &str, scope: &Scope) -> Result<(), Error>;
}

impl<S: KeyStore + 'static> Check for KeyManager<S> {
    fn check(&self, token: &str, scope: &Scope) -> Result<(), Error> {
        block_on(self.verify(token, scope)).map(drop)
    }
}

/// Each store is built once per process and shared.
fn world(n: usize) -> &'static World {
    static WORLDS: OnceLock<Mutex<HashMap<usize, &'static World>>> = OnceLock::new();
    let mut worlds = WORLDS.get_or_init(Default::default).lock().unwrap();
    worlds
        .entry(n)
        .or_insert_with(|| Box::leak(Box::new(build_world(n))))
}

fn label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// Verifies `tokens` in order, round and round.
fn bench_verify<S: KeyStore + 'static>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    n: usize,
    m: &KeyManager<S>,
    tokens: &[String],
) {
    c.bench_function(BenchmarkId::new(name, label(n)), |b| {
        let mut i = 0;
        b.iter(|| {
            let t = &tokens[i];
            i += 1;
            if i == tokens.len() {
                i = 0;
            }
            block_on(m.verify(black_box(t), &Scope::Prometheus))
        })
    });
}

fn bench_baseline(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    w: &World,
) {
    c.bench_function(BenchmarkId::new("baseline_sha256", label(w.n)), |b| {
        let mut i = 0;
        b.iter(|| {
            let t = &w.valid[i];
            i += 1;
            if i == w.valid.len() {
                i = 0;
            }
            let Ok((id, secret)) = parse_token(PREFIX, black_box(t)) else {
                return false;
            };
            let Some(stored) = w.baseline.get(&id) else {
                return false;
            };
            let presented: [u8; 32] = Sha256::digest(secret).into();
            bool::from(presented.ct_eq(stored))
        })
    });
}

fn verify_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    for n in [10_000, 1_000_000] {
        let w = world(n);
        bench_baseline(&mut g, w);
        bench_verify(&mut g, "valid/warm", n, &w.warm, &w.valid);
        bench_verify(&mut g, "wrong_secret/warm", n, &w.warm, &w.wrong);
        bench_verify(&mut g, "valid/cold", n, &w.cold, &w.valid);
        bench_verify(&mut g, "wrong_secret/cold", n, &w.cold, &w.wrong);
        let before = w.calls.load(Ordering::Relaxed);
        bench_verify(&mut g, "broken_checksum", n, &w.cold, &w.broken);
        let during = w.calls.load(Ordering::Relaxed) - before;
        eprintln!(
            "[check] store calls during broken_checksum/{}: {during}",
            label(n)
        );
        assert_eq!(during, 0, "a broken checksum reached the store");
        bench_verify(&mut g, "unknown_id/warm", n, &w.warm, &w.unknown);
        bench_verify(&mut g, "unknown_id/cold", n, &w.cold, &w.unknown);
    }
    g.finish();
}

/// Throughput of warm verification on 1 and 2 threads, each thread on its own slice of the
/// shuffled tokens.
fn threads_group(c: &mut Criterion) {
    let w = world(1_000_000);
    let mut g = c.benchmark_group("threads");
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(BenchmarkId::new("verify_warm_1M", threads), |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(threads);
                std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|t| {
                            let barrier = &barrier;
                            s.spawn(move || {
                                let tokens = &w.valid;
                                let mut i = t * tokens.len() / threads;
                                barrier.wait();
                                let start = Instant::now();
                                for _ in 0..iters {
                                    let r = block_on(
                                        w.warm.verify(black_box(&tokens[i]), &Scope::Prometheus),
                                    );
                                    black_box(r.is_ok());
                                    i += 1;
                                    if i == tokens.len() {
                                        i = 0;
                                    }
                                }
                                start.elapsed()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap())
                        .max()
                        .unwrap()
                })
            })
        });
    }
    g.finish();
}

fn crypto_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("ops");
    let keyring = Keyring::new(1, master(1));
    let org = OrgId::new("acme");
    let user = UserId::new("alice");
    let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let secret = [7u8; 32];
    let seal = || {
        seal_record(
            &keyring,
            key_id(42),
            org.clone(),
            "prometheus scraper".into(),
            vec![Scope::Prometheus],
            now,
            user.clone(),
            Some(now + Span::days(90)),
            &secret,
        )
        .unwrap()
    };
    g.bench_function("seal", |b| b.iter(seal));
    let rec = seal();
    g.bench_function("open", |b| {
        b.iter(|| open_record(&keyring, black_box(&rec), &secret).unwrap())
    });
    g.bench_function("parse", |b| {
        let t = format_token(PREFIX, key_id(42), &secret);
        b.iter(|| parse_token(PREFIX, black_box(&t)).unwrap())
    });
    g.bench_function("generate", |b| {
        let m = KeyManager::builder(MemoryStore::new(), keyring.clone())
            .build()
            .unwrap();
        let admin = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
        // Each timed generate is followed by an untimed delete, so the organization never
        // fills up and `generate`'s active-key count sees one org of constant size.
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let req = GenerateRequest::new("prometheus").scope(Scope::Prometheus);
                let start = Instant::now();
                let (key, _) = block_on(m.generate(&admin, req)).unwrap();
                total += start.elapsed();
                block_on(m.delete(&admin, key.id())).unwrap();
            }
            total
        })
    });
    g.finish();
}

/// How cost grows with work: verify over 1 k … 10 M keys, list of an org with 10 … 100 000
/// keys, rewrap of 100 000 records.
fn scaling_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("scaling");
    let mut sizes = vec![1_000, 100_000, 1_000_000];
    if std::env::var_os("BENCH_10M").is_some() {
        sizes.push(10_000_000);
    }
    for n in sizes {
        let w = world(n);
        bench_verify(&mut g, "verify/warm", n, &w.warm, &w.valid);
        bench_verify(&mut g, "verify/cold", n, &w.cold, &w.valid);
        bench_baseline(&mut g, w);
    }
    g.sample_size(10);
    let keyring = Keyring::new(1, master(1));
    let user = UserId::new("alice");
    let now = OffsetDateTime::now_utc();
    let seal_many = |org: &OrgId, n: usize, seed: u64| -> Vec<KeyRecord> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|_| {
                seal_record(
                    &keyring,
                    key_id(rng.next()),
                    org.clone(),
                    "prometheus scraper".into(),
                    vec![Scope::Prometheus],
                    now,
                    user.clone(),
                    Some(now + Span::days(90)),
                    &rng.secret(),
                )
                .unwrap()
            })
            .collect()
    };
    for n in [10, 1_000, 100_000] {
        let org = OrgId::new("acme");
        let store = MemoryStore::new();
        // The org sits among 10 000 keys of other orgs.
        for r in seal_many(&org, n, 1)
            .into_iter()
            .chain(seal_many(&OrgId::new("other"), 10_000, 2))
        {
            block_on(store.insert(r)).unwrap();
        }
        let m = KeyManager::builder(store, keyring.clone()).build().unwrap();
        let admin = Actor::manager(org, user.clone());
        assert_eq!(block_on(m.list(&admin)).unwrap().len(), n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("list", label(n)), |b| {
            b.iter(|| block_on(m.list(&admin)).unwrap())
        });
    }
    let n = 100_000;
    let records = seal_many(&OrgId::new("acme"), n, 3);
    let next = Keyring::new(2, master(2)).with_previous(1, master(1));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("rewrap", label(n)), |b| {
        b.iter_batched(
            || {
                let store = MemoryStore::new();
                for r in &records {
                    block_on(store.insert(r.clone())).unwrap();
                }
                KeyManager::builder(store, next.clone()).build().unwrap()
            },
            |m| {
                let report = block_on(m.rewrap()).unwrap();
                assert_eq!(report.rewrapped, n);
                m
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = verify_group, threads_group, crypto_group, scaling_group
}
criterion_main!(benches);
