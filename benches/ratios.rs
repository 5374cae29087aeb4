//! The issue's targets as ratios within one run, measured so that a busy machine cannot
//! favour one side: the variants alternate in short batches (20 000 verifications each,
//! 41 rounds), each batch is timed in the thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`,
//! so time spent descheduled does not count), and the median batch is reported. Thread scaling is measured in wall time (throughput of 1 vs 2 threads,
//! alternating, median of the rounds).
//!
//! ```text
//! cargo bench --features bench --bench ratios            # 1 M keys
//! cargo bench --features bench --bench ratios -- 10000   # another store size
//! ```
//!
//! Instruction counts (repeatable on a busy machine), one round over 20 000 keys:
//!
//! ```text
//! cargo bench --features bench --bench ratios --no-run   # prints the binary's path
//! RATIOS_ROUNDS=1 valgrind --tool=callgrind --toggle-collect='ratios::verify_batch*' \
//!     --toggle-collect='ratios::baseline_batch*' target/release/deps/ratios-<hash> 20000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//!
//! With `RATIOS_ONLY=<name>` (e.g. `valid_warm`) only that kind runs: its instructions per
//! verification are the collected total divided by 20 000.

mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::Ordering;
use std::time::Instant;

use api_keys::bench_support::parse_token;
use api_keys::{KeyManager, KeyStore, Scope};
use common::{PREFIX, World, block_on, lean, world};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const BATCH: usize = 20_000;
/// Rounds (override with `RATIOS_ROUNDS`, e.g. 1 under valgrind).
fn rounds() -> usize {
    std::env::var("RATIOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(41)
}

/// CPU time of the calling thread in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`; unlike
/// `/proc/thread-self/schedstat`, which only advances at scheduler ticks, it is exact).
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[inline(never)]
fn verify_batch<S: KeyStore + 'static>(m: &KeyManager<S>, tokens: &[String]) -> usize {
    tokens
        .iter()
        .filter(|t| block_on(m.verify(black_box(t), &Scope::Prometheus)).is_ok())
        .count()
}

#[inline(never)]
fn baseline_batch(w: &World, tokens: &[String]) -> usize {
    tokens
        .iter()
        .filter(|t| {
            let Ok((id, secret)) = parse_token(PREFIX, black_box(t)) else {
                return false;
            };
            let Some(stored) = w.baseline.get(&id) else {
                return false;
            };
            let presented: [u8; 32] = Sha256::digest(secret).into();
            presented.ct_eq(stored).into()
        })
        .count()
}

/// Wall time of `threads` threads each verifying `BATCH` tokens (own slices).
fn threads_batch(w: &World, threads: usize, offset: usize) -> f64 {
    let barrier = Barrier::new(threads);
    let n = w.valid.len();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let start = (offset + t * n / threads) % (n - BATCH);
                    barrier.wait();
                    let t0 = Instant::now();
                    black_box(verify_batch(&w.warm, &w.valid[start..start + BATCH]));
                    t0.elapsed().as_secs_f64()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .fold(0.0, f64::max)
    })
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let w = world(n);
    let len = w.valid.len();
    // Issue 15's yardstick over the same number of keys: the lean SHA-256 lookup and the
    // model of the cold path's work (benches/common/lean.rs).
    let y = lean::worlds(n);
    type Run<'a> = Box<dyn Fn(usize, usize) -> usize + 'a>;
    let over = |m: &'static KeyManager<_>, t: &'static Vec<String>| -> Run<'static> {
        Box::new(move |off, b| verify_batch(m, &t[off..off + b]))
    };
    let kinds: Vec<(&str, Run)> = vec![
        (
            "baseline_sha256",
            Box::new(|off, b| baseline_batch(w, &w.valid[off..off + b])),
        ),
        ("valid_warm", over(&w.warm, &w.valid)),
        ("wrong_secret_warm", over(&w.warm, &w.wrong)),
        (
            "broken_checksum",
            Box::new(|off, b| verify_batch(&w.cold, &w.broken[off..off + b])),
        ),
        ("unknown_id_warm", over(&w.warm, &w.unknown)),
        (
            "valid_cold",
            Box::new(|off, b| verify_batch(&w.cold, &w.valid[off..off + b])),
        ),
        (
            "wrong_secret_cold",
            Box::new(|off, b| verify_batch(&w.cold, &w.wrong[off..off + b])),
        ),
        (
            "lean_sha256",
            Box::new(|off, b| {
                (off..off + b)
                    .filter(|&i| lean::lean_verify(&y, black_box(y.lean_tokens.get(i))))
                    .count()
            }),
        ),
        (
            "cold_model",
            Box::new(|off, b| {
                (off..off + b)
                    .filter(|&i| lean::model_verify(&y, black_box(y.lean_tokens.get(i))))
                    .count()
            }),
        ),
    ];
    // `RATIOS_ONLY=valid_warm` (a name from the list) runs one kind alone, e.g. to count
    // its instructions under callgrind.
    let only = std::env::var("RATIOS_ONLY").ok();
    let kinds: Vec<_> = kinds
        .into_iter()
        .filter(|k| only.as_deref().is_none_or(|o| o == k.0))
        .collect();
    let batch = BATCH.min(len);
    let mut per_op: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let calls_before = w.calls.load(Ordering::Relaxed);
    let mut broken_calls = 0;
    let rounds = rounds();
    for r in 0..rounds {
        let off = (r * 7919 * batch) % (len - batch + 1);
        for (k, (name, f)) in kinds.iter().enumerate() {
            let before = w.calls.load(Ordering::Relaxed);
            let t0 = cpu_ns();
            black_box(f(off, batch));
            per_op[k].push((cpu_ns() - t0) as f64 / batch as f64);
            if *name == "broken_checksum" {
                broken_calls += w.calls.load(Ordering::Relaxed) - before;
            }
        }
    }
    let _ = calls_before;
    let med: Vec<f64> = per_op.into_iter().map(median).collect();
    println!(
        "store of {n} keys; median of {rounds} interleaved batches of {batch}, thread CPU time"
    );
    for ((name, _), m) in kinds.iter().zip(&med) {
        println!("  {name:18} {m:8.1} ns/op");
    }
    if only.is_some() {
        return;
    }
    let (base, valid, wrong, broken) = (med[0], med[1], med[2], med[3]);
    let (valid_cold, wrong_cold, lean, model) = (med[5], med[6], med[7], med[8]);
    println!("issue 15 (lean yardstick):");
    println!(
        "  valid warm / lean SHA-256   = {:.3}  (target <= 1.0 at 1M keys, <= 1.3 at 100k)",
        valid / lean
    );
    println!(
        "  valid cold / cold model     = {:.3}  (target <= 1.3)",
        valid_cold / model
    );
    println!(
        "  wrong / valid: warm {:.3}, cold {:.3}  (target 0.9..1.1)",
        wrong / valid,
        wrong_cold / valid_cold
    );
    println!("targets:");
    println!(
        "  valid warm / baseline      = {:.3}  (target <= 1.0)",
        valid / base
    );
    println!(
        "  wrong secret / valid (warm) = {:.3}  (target 0.85..1.15)",
        wrong / valid
    );
    println!(
        "  broken checksum            = {broken:.1} ns, {broken_calls} store calls (target <= 50 ns, 0 calls)"
    );
    if n >= BATCH * 2 {
        let mut one = Vec::new();
        let mut two = Vec::new();
        for r in 0..rounds {
            let off = r * 7919 % (len - BATCH);
            one.push(BATCH as f64 / threads_batch(w, 1, off));
            two.push(2.0 * BATCH as f64 / threads_batch(w, 2, off));
        }
        let (one, two) = (median(one), median(two));
        println!(
            "  threads: 1 -> {:.2} M verify/s, 2 -> {:.2} M verify/s: {:.2}x  (target >= 1.8x; wall time)",
            one / 1e6,
            two / 1e6,
            two / one
        );
    }
}
