//! The crate's metrics (feature `metrics`), read back through `metrics-util`'s debugging
//! recorder: every counter a dashboard relies on moves when, and only when, it should.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration as StdDuration;

use api_keys::metrics as names;
use api_keys::{
    Actor, Expiry, GenerateRequest, KeyManager, KeyStore, ManualClock, OrgId, Scope, TracingAudit,
    UserId,
};
use common::{CountingStore, Recorder, alice, days, keyring, start, wrong_secret};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

/// Runs `f` on a current-thread runtime with `recorder` as this thread's recorder (the whole
/// future runs on this thread, so everything it records lands there).
fn recorded<F: Future>(f: F) -> (F::Output, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let out = metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    });
    (out, snapshotter)
}

/// Counter values by (name, labels as `k=v` sorted and joined by `,`), histogram sample
/// counts under the same key, gauges likewise.
fn values(s: &Snapshotter) -> HashMap<(String, String), f64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in s.snapshot().into_vec() {
        let key: CompositeKey = key;
        let (kind, key) = key.into_parts();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let v = match (kind, value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => n as f64,
            (MetricKind::Gauge, DebugValue::Gauge(g)) => g.into_inner(),
            (MetricKind::Histogram, DebugValue::Histogram(h)) => h.len() as f64,
            _ => continue,
        };
        out.insert((key.name().to_string(), labels.join(",")), v);
    }
    out
}

fn get(v: &HashMap<(String, String), f64>, name: &str, labels: &str) -> f64 {
    v.get(&(name.to_string(), labels.to_string()))
        .copied()
        .unwrap_or(0.0)
}

fn manager<S: KeyStore + 'static>(store: S, clock: &ManualClock) -> KeyManager<S> {
    KeyManager::builder(store, keyring())
        .clock(clock.clone())
        .audit(Recorder::default())
        // Entries stay valid however slow the machine: hits and misses are decided by the
        // test, never by the wall clock.
        .cache_ttl(StdDuration::from_secs(3600))
        .cache_fallback_ttl(StdDuration::from_secs(3600))
        .build()
        .unwrap()
}

#[test]
fn each_verification_outcome_is_counted_under_its_label() {
    let clock = ManualClock::new(start());
    let (_, snap) = recorded(async {
        let m = manager(CountingStore::default(), &clock);
        let read = Scope::custom("read").unwrap();
        let write = Scope::custom("write").unwrap();
        let req = || GenerateRequest::new("ci").scopes([read.clone()]);
        let (ok, _) = m.generate(&alice(), req()).await.unwrap();
        let (revoked, info) = m.generate(&alice(), req()).await.unwrap();
        m.revoke(&alice(), &info.id).await.unwrap();
        let (expiring, _) = m
            .generate(&alice(), req().expiry(Expiry::Days(7)))
            .await
            .unwrap();

        m.verify(ok.expose_secret(), &read).await.unwrap();
        m.verify(ok.expose_secret(), &read).await.unwrap();
        m.verify(&wrong_secret(ok.expose_secret()), &read)
            .await
            .unwrap_err();
        m.verify("sak_not_a_token", &read).await.unwrap_err();
        m.verify(revoked.expose_secret(), &read).await.unwrap_err();
        m.verify(ok.expose_secret(), &write).await.unwrap_err();
        clock.advance(days(8));
        m.verify(expiring.expose_secret(), &read).await.unwrap_err();
    });
    let v = values(&snap);
    let total = names::VERIFICATIONS_TOTAL;
    assert_eq!(get(&v, total, "outcome=ok"), 2.0);
    assert_eq!(get(&v, total, "outcome=invalid_key"), 1.0);
    assert_eq!(get(&v, total, "outcome=malformed"), 1.0);
    assert_eq!(get(&v, total, "outcome=revoked"), 1.0);
    assert_eq!(get(&v, total, "outcome=scope_not_allowed"), 1.0);
    assert_eq!(get(&v, total, "outcome=expired"), 1.0);
    // One latency sample per verification, whatever its outcome.
    assert_eq!(get(&v, names::VERIFICATION_DURATION_SECONDS, ""), 7.0);
    // No key id or organization ever becomes a label.
    for (name, labels) in v.keys() {
        assert!(
            labels.is_empty() || labels.starts_with("outcome=") || labels.starts_with("kind="),
            "{name}{{{labels}}}"
        );
        assert!(!labels.contains("acme"), "{labels}");
    }
}

#[test]
fn cache_hits_misses_and_evictions_are_counted() {
    let clock = ManualClock::new(start());
    let store = CountingStore::default();
    let (_, snap) = recorded({
        let store = store.clone();
        async move {
            let m = manager(store.clone(), &clock);
            let scope = Scope::custom("read").unwrap();
            let (key, _) = m
                .generate(&alice(), GenerateRequest::new("k").scopes([scope.clone()]))
                .await
                .unwrap();
            // A new key is installed in the cache: a hit, no store read.
            m.verify(key.expose_secret(), &scope).await.unwrap();
            assert_eq!(store.gets(), 0);
            // A keyring change flushes the cache: the next verify reads the store (a miss)
            // and the one after is a hit again.
            m.set_keyring(keyring()).unwrap();
            m.verify(key.expose_secret(), &scope).await.unwrap();
            m.verify(key.expose_secret(), &scope).await.unwrap();
            assert_eq!(store.gets(), 1);
            // An unknown id misses.
            m.verify(&common::with_id(key.expose_secret(), "00000000001"), &scope)
                .await
                .unwrap_err();
        }
    });
    let v = values(&snap);
    assert_eq!(get(&v, names::CACHE_HITS_TOTAL, ""), 2.0);
    assert_eq!(get(&v, names::CACHE_MISSES_TOTAL, ""), 2.0);
    assert_eq!(get(&v, names::CACHE_EVICTIONS_TOTAL, ""), 0.0);
}

#[test]
fn a_full_cache_counts_what_it_evicts() {
    let clock = ManualClock::new(start());
    let ((cached, made), snap) = recorded(async {
        // Room for one entry per shard; every new key is installed, so more keys than shards
        // must evict.
        let m = KeyManager::builder(CountingStore::default(), keyring())
            .clock(clock.clone())
            .audit(Recorder::default())
            .cache_capacity(1)
            .cache_fallback_ttl(StdDuration::from_secs(3600))
            .build()
            .unwrap();
        let made = 100;
        for i in 0..made {
            let actor = Actor::manager(OrgId::new(format!("org{i}")), UserId::new("u"));
            m.generate(
                &actor,
                GenerateRequest::new("k").scope(Scope::custom("read").unwrap()),
            )
            .await
            .unwrap();
        }
        (m.cached_records(), made)
    });
    let v = values(&snap);
    let evicted = get(&v, names::CACHE_EVICTIONS_TOTAL, "");
    assert!(evicted > 0.0);
    assert_eq!(evicted as usize, made - cached);
}

#[test]
fn feed_state_and_reconnects_are_reported() {
    let clock = ManualClock::new(start());
    let store = CountingStore::default();
    let (_, snap) = recorded({
        let store = store.clone();
        async move {
            let _m = manager(store.clone(), &clock);
            store.feed(true);
            store.feed(false);
            store.feed(true);
        }
    });
    let v = values(&snap);
    // Connected once at first (not a reconnect), then down, then back: one reconnect, live.
    assert_eq!(get(&v, names::FEED_RECONNECTS_TOTAL, ""), 1.0);
    assert_eq!(get(&v, names::FEED_CONNECTED, ""), 1.0);
}

#[test]
fn a_feed_that_drops_sets_the_gauge_to_zero() {
    let clock = ManualClock::new(start());
    let store = CountingStore::default();
    let (_, snap) = recorded({
        let store = store.clone();
        async move {
            let _m = manager(store.clone(), &clock);
            store.feed(true);
            store.feed(false);
        }
    });
    let v = values(&snap);
    assert_eq!(get(&v, names::FEED_CONNECTED, ""), 0.0);
    assert_eq!(get(&v, names::FEED_RECONNECTS_TOTAL, ""), 0.0);
}

/// README: `api_keys_feed_connected` is "0 while down", and its alert is
/// `max_over_time(api_keys_feed_connected[5m]) == 0`. A store with a change feed that never
/// came up (the feed's database refuses it from the start) left the gauge unset: no series,
/// and the alert never fired however long the feed stayed down.
#[test]
fn a_feed_that_never_connects_reports_the_gauge_as_zero() {
    let clock = ManualClock::new(start());
    let store = api_keys::MemoryStore::new();
    let (_, snap) = recorded(async move {
        let _m = manager(FeedNeverUp(store), &clock);
    });
    let v = values(&snap);
    let key = (names::FEED_CONNECTED.to_string(), String::new());
    assert_eq!(v.get(&key), Some(&0.0), "{v:?}");
    assert_eq!(get(&v, names::FEED_RECONNECTS_TOTAL, ""), 0.0);
}

/// A store with a change feed that never comes up: it subscribes the listener and never
/// reports it connected.
struct FeedNeverUp(api_keys::MemoryStore);

impl KeyStore for FeedNeverUp {
    async fn insert(&self, record: api_keys::KeyRecord) -> Result<(), api_keys::StoreError> {
        self.0.insert(record).await
    }
    async fn get(
        &self,
        id: &api_keys::KeyId,
    ) -> Result<Option<api_keys::KeyRecord>, api_keys::StoreError> {
        self.0.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.0.list(org).await
    }
    async fn update(
        &self,
        record: api_keys::KeyRecord,
        expected: u64,
    ) -> Result<(), api_keys::StoreError> {
        self.0.update(record, expected).await
    }
    async fn delete(&self, id: &api_keys::KeyId) -> Result<bool, api_keys::StoreError> {
        self.0.delete(id).await
    }
    async fn scan(
        &self,
        after: Option<&api_keys::KeyId>,
        limit: usize,
    ) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.0.scan(after, limit).await
    }
    async fn touch(
        &self,
        id: &api_keys::KeyId,
        at: api_keys::time::OffsetDateTime,
    ) -> Result<(), api_keys::StoreError> {
        self.0.touch(id, at).await
    }
    fn changes(&self, _: std::sync::Weak<dyn api_keys::ChangeListener>) -> bool {
        true
    }
}

#[test]
fn store_errors_are_counted_by_kind() {
    let clock = ManualClock::new(start());
    let store = CountingStore::default();
    store
        .fail_touch
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (_, snap) = recorded({
        let store = store.clone();
        async move {
            let m = manager(store.clone(), &clock);
            let scope = Scope::custom("read").unwrap();
            let (key, _) = m
                .generate(&alice(), GenerateRequest::new("k").scopes([scope.clone()]))
                .await
                .unwrap();
            // Recording last use fails; the verification still succeeds.
            m.verify(key.expose_secret(), &scope).await.unwrap();
            // The buffered use reaches the store (and fails) when written: by this flush, and
            // before it by the verify itself when no runtime feature writes in the background
            // (the failed use is kept, so this flush tries it again).
            assert!(m.flush_last_use().await.is_err());
            assert_eq!(m.pending_last_uses(), 1);
        }
    });
    // One write with a runtime feature (this flush), two without (the verify's own, then it).
    let writes = store.touches.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&writes), "{writes}");
    let v = values(&snap);
    // Each failed write counted once.
    assert_eq!(
        get(&v, names::STORE_ERRORS_TOTAL, "kind=backend"),
        writes as f64
    );
    assert_eq!(
        get(&v, names::VERIFICATIONS_TOTAL, "outcome=ok"),
        1.0,
        "{v:?}"
    );
}

#[test]
fn audit_lines_dropped_by_the_log_bound_are_counted() {
    // The log bound is per process: compare with its own count over the same calls.
    let before = TracingAudit::suppressed_total();
    let failures = 4 * api_keys::LOG_FULL_PER_WINDOW as usize + 4;
    let (_, snap) = recorded(async {
        let m = KeyManager::builder(CountingStore::default(), keyring())
            .build()
            .unwrap();
        let scope = Scope::custom("read").unwrap();
        for _ in 0..failures {
            m.verify("sak_not_a_token", &scope).await.unwrap_err();
        }
    });
    let dropped = TracingAudit::suppressed_total() - before;
    let v = values(&snap);
    // More failures than two windows' worth of full lines: some lines were left out,
    // and each one is counted.
    assert!(dropped > 0);
    assert_eq!(
        get(&v, names::AUDIT_LINES_DROPPED_TOTAL, "") as u64,
        dropped
    );
    assert_eq!(
        get(&v, names::VERIFICATIONS_TOTAL, "outcome=malformed") as usize,
        failures
    );
}

/// A store failure that a sweep only logs (a purge whose delete failed: the sweep reports it
/// in `failed` and goes on) is counted like every other one, so an alert on the store-error
/// counter sees a store that refuses deletes.
#[test]
fn a_purge_the_store_refused_is_a_counted_store_error() {
    let clock = ManualClock::new(start());
    let store = CountingStore::default();
    let (report, snap) = recorded({
        let store = store.clone();
        let clock = clock.clone();
        async move {
            let m = KeyManager::builder(store.clone(), keyring())
                .clock(clock.clone())
                .policy(api_keys::Policy::default().purge_after(days(30)))
                .audit(Recorder::default())
                .build()
                .unwrap();
            let (_, rec) = m
                .generate(&alice(), GenerateRequest::new("k").scope(Scope::Prometheus))
                .await
                .unwrap();
            m.revoke(&alice(), &rec.id).await.unwrap();
            clock.advance(days(31));
            store
                .fail_delete
                .store(true, std::sync::atomic::Ordering::SeqCst);
            m.sweep().await.unwrap()
        }
    });
    assert_eq!((report.purged, report.failed), (0, 1), "{report:?}");
    let v = values(&snap);
    assert_eq!(
        get(&v, names::STORE_ERRORS_TOTAL, "kind=backend"),
        1.0,
        "{v:?}"
    );
}

/// A roll that failed deletes its replacement best effort; when the store refuses that delete
/// too, the failure is only logged, and is counted with the roll's own.
#[test]
fn a_failed_rolls_refused_cleanup_is_a_counted_store_error() {
    let clock = ManualClock::new(start());
    let store = CountingStore::default();
    let (_, snap) = recorded({
        let store = store.clone();
        async move {
            let m = manager(store.clone(), &clock);
            let (_, rec) = m
                .generate(&alice(), GenerateRequest::new("k").scope(Scope::Prometheus))
                .await
                .unwrap();
            let seq = std::sync::atomic::Ordering::SeqCst;
            // Shortening the old key fails (nothing written), then so does deleting the
            // replacement.
            store.fail_update.store(true, seq);
            store.fail_delete.store(true, seq);
            m.roll(&alice(), &rec.id, days(1)).await.unwrap_err();
            assert!(!store.fail_delete.load(seq), "the cleanup was not tried");
        }
    });
    let v = values(&snap);
    assert_eq!(
        get(&v, names::STORE_ERRORS_TOTAL, "kind=backend"),
        2.0,
        "{v:?}"
    );
}
