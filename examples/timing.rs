//! Statistical timing-leak test of `verify` in the style of dudect (Reparaz, Balasch,
//! Verbauwhede 2016), with the `dudect-bencher` crate. Not part of the test suite: timing
//! depends on the machine and its load.
//!
//! ```text
//! cargo run --release --features bench --example timing
//! cargo run --release --features bench --example timing -- --filter secret_position
//! ```
//!
//! Each bench runs 1.1 M samples, the two classes interleaved at random, and prints the
//! largest |t| over dudect's cropped t-tests (`max t`); |t| < 4.5 means no leak was detected.
//!
//! - `secret_position_{warm,cold}`: the right id and a secret that differs from the real
//!   one in its first byte (left class) or its last byte (right class). Both are
//!   `InvalidKey`; a byte-by-byte early-exit comparison would separate them.
//! - `revoked_state_{warm,cold}`: a wrong secret for a valid key (left) or for a revoked key
//!   (right). Both are `InvalidKey`: a key's state must not be observable without its secret.
//!
//! - `control_pools_{warm,cold}`: an A/A control, wrong secrets for two pools of active keys;
//!   it shows how large |t| gets from key placement alone.
//!
//! Each class draws its key at random from a pool of 256 (created in interleaved order), so
//! where one key's records happen to sit in memory does not separate the classes.
//! `warm` runs against the manager's cache (fingerprint compare), `cold` with the cache off
//! (store read, tag check, decryption, secret compare).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use api_keys::bench_support::{format_token, parse_token};
use api_keys::{
    Actor, Error, GenerateRequest, KeyId, KeyManager, Keyring, MasterKey, MemoryStore, OrgId,
    Scope, UserId,
};
use dudect_bencher::rand::RngExt;
use dudect_bencher::{BenchRng, Class, CtRunner, ctbench_main};

const SAMPLES: usize = 1_100_000;

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Keys per class: each sample picks one at random, so effects of where a key's records
/// happen to sit in memory (cache sets, shard, hash bucket) average out within each class
/// instead of separating the classes.
const POOL: usize = 256;

struct Setup {
    warm: KeyManager<MemoryStore>,
    cold: KeyManager<MemoryStore>,
    /// (id, secret) of active keys, of other active keys (the control) and of revoked keys.
    active: Vec<(KeyId, [u8; 32])>,
    control: Vec<(KeyId, [u8; 32])>,
    revoked: Vec<(KeyId, [u8; 32])>,
}

fn setup() -> Setup {
    let store = MemoryStore::new();
    let keyring = Keyring::new(1, MasterKey::from_bytes([3; 16]));
    let warm = KeyManager::builder(store.clone(), keyring.clone())
        .policy(api_keys::Policy::default().max_active_keys(4 * POOL))
        .cache_ttl(Duration::from_secs(3600))
        .cache_fallback_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let cold = KeyManager::builder(store, keyring)
        .cache_capacity(0)
        .build()
        .unwrap();
    let admin = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    // The pools are created, revoked and cached in interleaved order, so that allocation
    // order does not differ between them.
    let mut pools: [Vec<(KeyId, [u8; 32])>; 3] = Default::default();
    for i in 0..3 * POOL {
        let (key, _) = block_on(warm.generate(
            &admin,
            GenerateRequest::new("timing").scope(Scope::Prometheus),
        ))
        .unwrap();
        pools[i % 3].push(parse_token("sak", key.expose_secret()).unwrap());
    }
    let [active, control, revoked] = pools;
    for k in &revoked {
        block_on(warm.revoke(&admin, &k.0)).unwrap();
    }
    for m in [&warm, &cold] {
        // Fill the warm cache with every record; check what each class returns.
        for ((a, c), r) in active.iter().zip(&control).zip(&revoked) {
            for k in [a, c] {
                let t = format_token("sak", k.0, &k.1);
                assert!(block_on(m.verify(&t, &Scope::Prometheus)).is_ok());
            }
            let t = format_token("sak", r.0, &r.1);
            assert!(matches!(
                block_on(m.verify(&t, &Scope::Prometheus)),
                Err(Error::Revoked)
            ));
        }
    }
    Setup {
        warm,
        cold,
        active,
        control,
        revoked,
    }
}

/// A token for a random key of `pool` whose secret differs in byte `at` (by a random
/// non-zero mask).
fn altered(pool: &[(KeyId, [u8; 32])], at: usize, rng: &mut BenchRng) -> String {
    let key = &pool[rng.random_range(0..pool.len())];
    let mut s = key.1;
    s[at] ^= rng.random_range(1..=255u8);
    format_token("sak", key.0, &s)
}

fn run(runner: &mut CtRunner, m: &KeyManager<MemoryStore>, inputs: Vec<(Class, String)>) {
    for (class, token) in inputs {
        runner.run_one(class, || {
            let r = block_on(m.verify(&token, &Scope::Prometheus));
            debug_assert!(matches!(r, Err(Error::InvalidKey)));
            r.is_err()
        });
    }
}

fn secret_position(runner: &mut CtRunner, rng: &mut BenchRng, warm: bool) {
    let s = setup();
    let inputs = (0..SAMPLES)
        .map(|_| {
            if rng.random::<bool>() {
                (Class::Left, altered(&s.active, 0, rng))
            } else {
                (Class::Right, altered(&s.active, 31, rng))
            }
        })
        .collect();
    run(runner, if warm { &s.warm } else { &s.cold }, inputs);
}

fn revoked_state(runner: &mut CtRunner, rng: &mut BenchRng, warm: bool) {
    let s = setup();
    let inputs = (0..SAMPLES)
        .map(|_| {
            let at = rng.random_range(0..32);
            if rng.random::<bool>() {
                (Class::Left, altered(&s.active, at, rng))
            } else {
                (Class::Right, altered(&s.revoked, at, rng))
            }
        })
        .collect();
    run(runner, if warm { &s.warm } else { &s.cold }, inputs);
}

/// Control (A/A): wrong secrets for two pools of active keys. Whatever |t| this shows comes
/// from which keys were drawn (where their records sit in memory), not from a key's state.
fn control_pools(runner: &mut CtRunner, rng: &mut BenchRng, warm: bool) {
    let s = setup();
    let inputs = (0..SAMPLES)
        .map(|_| {
            let at = rng.random_range(0..32);
            if rng.random::<bool>() {
                (Class::Left, altered(&s.active, at, rng))
            } else {
                (Class::Right, altered(&s.control, at, rng))
            }
        })
        .collect();
    run(runner, if warm { &s.warm } else { &s.cold }, inputs);
}

fn control_pools_warm(runner: &mut CtRunner, rng: &mut BenchRng) {
    control_pools(runner, rng, true)
}

fn control_pools_cold(runner: &mut CtRunner, rng: &mut BenchRng) {
    control_pools(runner, rng, false)
}

fn secret_position_warm(runner: &mut CtRunner, rng: &mut BenchRng) {
    secret_position(runner, rng, true)
}

fn secret_position_cold(runner: &mut CtRunner, rng: &mut BenchRng) {
    secret_position(runner, rng, false)
}

fn revoked_state_warm(runner: &mut CtRunner, rng: &mut BenchRng) {
    revoked_state(runner, rng, true)
}

fn revoked_state_cold(runner: &mut CtRunner, rng: &mut BenchRng) {
    revoked_state(runner, rng, false)
}

ctbench_main!(
    secret_position_warm,
    secret_position_cold,
    revoked_state_warm,
    revoked_state_cold,
    control_pools_warm,
    control_pools_cold
);
