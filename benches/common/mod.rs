//! Shared by the bench binaries: bulk stores built once per process, shuffled token lists,
//! the SHA-256 baseline table, a store that counts calls.
#![allow(dead_code)]

pub mod lean;

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use api_keys::bench_support::{format_token, key_id, seal_record};
use api_keys::time::{Duration as Span, OffsetDateTime};
use api_keys::{
    ChangeListener, Error, KeyId, KeyManager, KeyRecord, KeyStore, Keyring, MasterKey, MemoryStore,
    OrgId, Scope, StoreError, UserId,
};
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "sak";
/// Keys per organization in the bulk stores.
const KEYS_PER_ORG: usize = 100;
/// At most this many distinct tokens are kept per kind (the 10 M store samples them).
const MAX_TOKENS: usize = 1_000_000;

/// Polls a future that is ready at once (every `MemoryStore` future is).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// SplitMix64: deterministic, uniformly spread ids and secrets (reproducible runs).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn secret(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        for c in s.chunks_exact_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        s
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

pub fn master(byte: u8) -> MasterKey {
    MasterKey::from_bytes([byte; 16])
}

/// A `KeyStore` that counts the calls it forwards (to show that a broken checksum never
/// reaches the store).
#[derive(Clone)]
pub struct Counting {
    pub inner: MemoryStore,
    pub calls: Arc<AtomicU64>,
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
pub struct World {
    pub n: usize,
    /// Cache large enough for every key (twice the key count: each of the 64 shards holds
    /// 1/64 of the capacity and random ids do not spread evenly), TTL long enough for a run.
    pub warm: KeyManager<MemoryStore>,
    /// Cache disabled: every verify reads the store and checks the tag.
    pub cold: KeyManager<Counting>,
    pub calls: Arc<AtomicU64>,
    pub valid: Vec<String>,
    pub wrong: Vec<String>,
    pub broken: Vec<String>,
    pub unknown: Vec<String>,
    /// The yardstick: no encryption at rest, `HashMap<id, sha256(secret)>`.
    pub baseline: HashMap<KeyId, [u8; 32], foldhash::fast::FixedState>,
}

pub fn build_world(n: usize) -> World {
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
    let mut kept: Vec<(KeyId, [u8; 32])> = Vec::with_capacity(keep);
    let mut baseline = HashMap::with_capacity_and_hasher(n, Default::default());
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
        // The yardstick holds every key, like the store.
        baseline.insert(id, Sha256::digest(secret).into());
        if k % stride == 0 && kept.len() < keep {
            kept.push((id, secret));
        }
    }
    let mut absent: Vec<(KeyId, [u8; 32])> = Vec::with_capacity(keep);
    let mut urng = Rng(0xDEAD_BEEF);
    while absent.len() < keep {
        let id = key_id(urng.next());
        if block_on(store.get(&id)).unwrap().is_none() {
            absent.push((id, urng.secret()));
        }
    }
    // One shuffled order for every list, so each visits keys at random. The four lists'
    // strings are allocated together, entry by entry, so that each list lies in memory in the
    // order it is read, with the same stride: no list pays more for reading its tokens.
    rng.shuffle(&mut kept);
    let mut valid = Vec::with_capacity(keep);
    let mut wrong = Vec::with_capacity(keep);
    let mut broken = Vec::with_capacity(keep);
    let mut unknown = Vec::with_capacity(keep);
    for ((id, secret), (uid, usecret)) in kept.iter().zip(&absent) {
        let token = format_token(PREFIX, *id, secret);
        let mut other = *secret;
        other[31] ^= 1;
        wrong.push(format_token(PREFIX, *id, &other));
        let mut b = token.clone().into_bytes();
        let last = b.len() - 1;
        b[last] = if b[last] == b'0' { b'1' } else { b'0' };
        broken.push(String::from_utf8(b).unwrap());
        unknown.push(format_token(PREFIX, *uid, usecret));
        valid.push(token);
    }

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

pub trait Check {
    fn check(&self, token: &str, scope: &Scope) -> Result<(), Error>;
}

impl<S: KeyStore + 'static> Check for KeyManager<S> {
    fn check(&self, token: &str, scope: &Scope) -> Result<(), Error> {
        block_on(self.verify(token, scope)).map(drop)
    }
}

/// Each store is built once per process and shared.
pub fn world(n: usize) -> &'static World {
    static WORLDS: OnceLock<Mutex<HashMap<usize, &'static World>>> = OnceLock::new();
    let mut worlds = WORLDS.get_or_init(Default::default).lock().unwrap();
    worlds
        .entry(n)
        .or_insert_with(|| Box::leak(Box::new(build_world(n))))
}

pub fn label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}
