//! The hot path against the yardstick issue 15 names, in one run (criterion).
//!
//! ```text
//! cargo bench --features bench --bench yardstick                  # 100 k and 1 M keys
//! cargo bench --features bench --bench yardstick -- 'yardstick/.*/1M'
//! ```
//!
//! - `lean_sha256`: `std::collections::HashMap<[u8; 8], [u8; 32]>` (std's SipHash) from an
//!   8-byte id to SHA-256 of the secret; the token is `sk_` + lowercase hex of id ‖ secret,
//!   parsed through a 256-entry table with no branch on the digits; `sha2` over the 32 secret
//!   bytes; `subtle` compare.
//! - `cold_model`: the work a cold verification cannot avoid — `HashMap<u64, record>`, AES-CMAC
//!   over the record's 112 authenticated bytes, CBC-decrypt of the 2 secret blocks, `subtle`
//!   compare of the tag and of the secret (same token parse as `lean_sha256`).
//! - `verify/*`: the crate (`MemoryStore`, cache warm or off).
//!
//! Every variant walks its tokens in one shuffled order, the tokens laid back to back in one
//! buffer, so reading a token is cheap while the lookups land at random. (The older
//! `baseline_sha256` of `benches/verify.rs` was slower than this lean one for three reasons:
//! it parsed the crate's token format with its checksum, it kept each token in its own heap
//! string, and it looked up a `KeyId` in a map sized like the crate's store rather than a
//! plain array key.)

use std::hint::black_box;
use std::time::Duration;

use api_keys::Scope;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

mod common;

use common::lean::{Packed, lean_verify, model_verify, worlds};
use common::{block_on, label, world};

fn walk(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    n: usize,
    tokens: &Packed,
    mut f: impl FnMut(&str) -> bool,
) {
    // Every variant must do what its name says before it is timed.
    let expect_ok = !name.contains("wrong");
    assert_eq!(f(tokens.get(0)), expect_ok, "{name}: unexpected answer");
    let count = tokens.count();
    g.bench_function(BenchmarkId::new(name, label(n)), |b| {
        let mut i = 0;
        b.iter(|| {
            let ok = f(black_box(tokens.get(i)));
            i += 1;
            if i == count {
                i = 0;
            }
            ok
        })
    });
}

fn yardstick(c: &mut Criterion) {
    let mut g = c.benchmark_group("yardstick");
    for n in [100_000, 1_000_000] {
        let y = worlds(n);
        assert_eq!(y.lean.len(), y.n);
        walk(&mut g, "lean_sha256", n, &y.lean_tokens, |t| {
            lean_verify(&y, t)
        });
        walk(&mut g, "cold_model", n, &y.lean_tokens, |t| {
            model_verify(&y, t)
        });
        drop(y);
        let w = world(n);
        let valid = Packed::new(w.valid.iter().map(String::as_str));
        let wrong = Packed::new(w.wrong.iter().map(String::as_str));
        let s = &Scope::Prometheus;
        let warm = |t: &str| block_on(w.warm.verify(t, s)).is_ok();
        let cold = |t: &str| block_on(w.cold.verify(t, s)).is_ok();
        walk(&mut g, "verify/valid/warm", n, &valid, warm);
        walk(&mut g, "verify/wrong/warm", n, &wrong, warm);
        walk(&mut g, "verify/valid/cold", n, &valid, cold);
        walk(&mut g, "verify/wrong/cold", n, &wrong, cold);
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = yardstick
}
criterion_main!(benches);
