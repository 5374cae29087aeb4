//! Benchmarks of the verification hot path and of the operations around it.
//!
//! ```text
//! cargo bench --features bench --bench verify                 # everything (~4 min)
//! cargo bench --features bench --bench verify -- 'verify/'    # one group
//! BENCH_10M=1 cargo bench --features bench --bench verify -- 'scaling/(verify|baseline)'
//! ```
//!
//! Every store is filled once per process (records sealed in bulk with the crate's own sealing
//! code, tokens formatted with its own formatter) and shared by the groups that need it.
//! Tokens are visited in a shuffled order, so lookups land at random as real traffic does.
//! See `docs/performance.md` for the machine, the measured table and how to read it.

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use api_keys::bench_support::{format_token, key_id, open_record, parse_token, seal_record};
use api_keys::time::{Duration as Span, OffsetDateTime};
use api_keys::{
    Actor, GenerateRequest, KeyManager, KeyRecord, KeyStore, Keyring, MemoryStore, OrgId, Scope,
    UserId,
};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

mod common;

use common::{PREFIX, Rng, World, block_on, label, master, world};

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
