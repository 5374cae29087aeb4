//! The verified-record cache never serves what it must not (DESIGN.md, "Caching").

mod common;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration as StdDuration;

use api_keys::time::OffsetDateTime;
use api_keys::{
    ChangeListener, Error, GenerateRequest, KeyId, KeyManager, KeyRecord, KeyStore, MemoryStore,
    OrgId, Policy, Scope, StoreError,
};
use common::*;
use tokio::sync::oneshot;

/// The pause of the next `get`: "I have read" and "go on".
type Pause = Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>;

/// A store whose next `get` reads its snapshot, reports it, then waits to be released: the
/// window in which a revoke can complete while a verification holds the old record.
#[derive(Clone, Default)]
struct PausingStore {
    inner: MemoryStore,
    pause: Arc<Mutex<Pause>>,
    listener: Arc<Mutex<Option<Weak<dyn ChangeListener>>>>,
    feed: bool,
}

impl KeyStore for PausingStore {
    async fn insert(&self, r: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(r).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let snapshot = self.inner.get(id).await;
        let pause = self.pause.lock().unwrap().take();
        if let Some((read_done, release)) = pause {
            let _ = read_done.send(());
            let _ = release.await;
        }
        snapshot
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(org).await
    }
    async fn update(&self, r: KeyRecord, e: u64) -> Result<(), StoreError> {
        self.inner.update(r, e).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }
    async fn scan(&self, a: Option<&KeyId>, l: usize) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.scan(a, l).await
    }
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        self.inner.touch(id, at).await
    }
    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        if !self.feed {
            return false;
        }
        *self.listener.lock().unwrap() = Some(listener);
        true
    }
}

fn prom() -> GenerateRequest {
    GenerateRequest::new("k").scope(Scope::Prometheus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_racing_a_revoke_never_puts_the_old_record_back() {
    let store = PausingStore::default();
    // Long TTLs: only the generation fence can keep the stale record out.
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_ttl(StdDuration::from_secs(3600))
        .cache_fallback_ttl(StdDuration::from_secs(3600))
        .build()
        .unwrap();
    let (key, info) = m.generate(&alice(), prom()).await.unwrap();
    let (read_done_tx, read_done) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    *store.pause.lock().unwrap() = Some((read_done_tx, release_rx));
    let token = key.expose_secret().to_string();
    let racing = {
        let m = m.clone();
        let t = token.clone();
        tokio::spawn(async move { m.verify(&t, &Scope::Prometheus).await.map(|_| ()) })
    };
    read_done.await.unwrap(); // the verification holds the pre-revoke record
    m.revoke(&alice(), &info.id).await.unwrap();
    release.send(()).unwrap();
    // It began before the revoke returned, so it may still succeed; what matters is that its
    // stale record was not installed.
    racing.await.unwrap().unwrap();
    assert_eq!(m.cached_records(), 0);
    let after = m.verify(&token, &Scope::Prometheus).await;
    assert!(
        matches!(after, Err(Error::Revoked)),
        "stale record served: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_event_fences_off_a_fill_that_began_before_it() {
    let store = PausingStore {
        feed: true,
        ..Default::default()
    };
    let verifier = KeyManager::builder(store.clone(), keyring())
        .cache_ttl(StdDuration::from_secs(3600))
        .cache_fallback_ttl(StdDuration::from_secs(3600))
        .build()
        .unwrap();
    let listener = store
        .listener
        .lock()
        .unwrap()
        .clone()
        .unwrap()
        .upgrade()
        .unwrap();
    listener.connected();
    // Another node (no shared process) revokes directly in the store.
    let other = KeyManager::builder(store.inner.clone(), keyring())
        .build()
        .unwrap();
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    let (read_done_tx, read_done) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    *store.pause.lock().unwrap() = Some((read_done_tx, release_rx));
    let token = key.expose_secret().to_string();
    let racing = {
        let v = verifier.clone();
        let t = token.clone();
        tokio::spawn(async move { v.verify(&t, &Scope::Prometheus).await.map(|_| ()) })
    };
    read_done.await.unwrap();
    other.revoke(&alice(), &info.id).await.unwrap();
    // The feed delivers the change while the verification still holds the old record.
    listener.changed(api_keys::Change {
        id: info.id,
        revision: 2,
        kind: api_keys::ChangeKind::Updated,
    });
    release.send(()).unwrap();
    let _ = racing.await.unwrap();
    assert_eq!(
        verifier.cached_records(),
        0,
        "the fill that began before the event was dropped"
    );
    assert!(matches!(
        verifier.verify(&token, &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn losing_or_regaining_the_feed_flushes_the_cache() {
    let store = PausingStore {
        feed: true,
        ..Default::default()
    };
    let s = setup_with(store.clone(), Policy::default());
    let listener = store
        .listener
        .lock()
        .unwrap()
        .clone()
        .unwrap()
        .upgrade()
        .unwrap();
    listener.connected();
    let (key, _) = s.manager.generate(&alice(), prom()).await.unwrap();
    s.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(s.manager.cached_records(), 1);
    listener.disconnected();
    assert_eq!(s.manager.cached_records(), 0);
    s.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(s.manager.cached_records(), 1);
    listener.connected();
    assert_eq!(s.manager.cached_records(), 0);
}

#[tokio::test]
async fn without_a_feed_entries_expire_after_the_fallback_ttl() {
    let store = PausingStore::default();
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(StdDuration::from_millis(200))
        .build()
        .unwrap();
    let other = KeyManager::builder(store.inner.clone(), keyring())
        .build()
        .unwrap();
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    other.revoke(&alice(), &info.id).await.unwrap();
    // After the TTL the revoke made elsewhere is seen (bounded wait, no timing assertion).
    tokio::time::sleep(StdDuration::from_millis(250)).await;
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn a_zero_capacity_cache_caches_nothing_and_still_verifies() {
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .cache_capacity(0)
        .build()
        .unwrap();
    let (key, info) = m.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(m.cached_records(), 0);
    m.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn the_cache_stays_within_its_capacity() {
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .cache_capacity(64)
        .policy(Policy::default().max_active_keys(1000))
        .build()
        .unwrap();
    let mut keys = Vec::new();
    for _ in 0..300 {
        keys.push(m.generate(&alice(), prom()).await.unwrap().0);
    }
    for k in &keys {
        m.verify(k.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    assert!(m.cached_records() <= 64, "{}", m.cached_records());
    for k in &keys {
        m.verify(k.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn wrong_secrets_do_not_fill_the_cache() {
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .build()
        .unwrap();
    let (key, _) = m.generate(&alice(), prom()).await.unwrap();
    let t = key.expose_secret();
    let wrong = wrong_secret(t); // same id, other secret, valid checksum
    assert!(matches!(
        m.verify(&wrong, &Scope::Prometheus).await,
        Err(Error::InvalidKey)
    ));
    assert_eq!(m.cached_records(), 0);
    m.verify(t, &Scope::Prometheus).await.unwrap();
    assert_eq!(m.cached_records(), 1);
    assert!(matches!(
        m.verify(&wrong, &Scope::Prometheus).await,
        Err(Error::InvalidKey)
    ));
}

#[tokio::test]
async fn an_enormous_ttl_means_cache_for_long_not_panic() {
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .cache_ttl(StdDuration::MAX)
        .cache_fallback_ttl(StdDuration::MAX)
        .build()
        .unwrap();
    let (key, info) = m.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    m.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}
