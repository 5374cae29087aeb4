//! The verified-record cache never serves what it must not (DESIGN.md, "Caching").

#[path = "../common/mod.rs"]
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

mod eviction_and_stale;
mod feed;
mod older_reads;
mod races;

/// The pause of the next `get`: "I have read" and "go on".
type Pause = Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>;

/// A store whose next `get` reads its snapshot, reports it, then waits to be released: the
/// window in which a revoke can complete while a verification holds the old record.
#[derive(Clone, Default)]
struct PausingStore {
    inner: MemoryStore,
    pause: Arc<Mutex<Pause>>,
    /// The same for the next `update`, before it writes.
    pause_update: Arc<Mutex<Pause>>,
    /// The same for the next `delete`, before it deletes.
    pause_delete: Arc<Mutex<Pause>>,
    listener: Arc<Mutex<Option<Weak<dyn ChangeListener>>>>,
    feed: bool,
    /// Makes `get` fail as an unreachable store would.
    fail_get: Arc<std::sync::atomic::AtomicBool>,
    /// Makes `get` report the row as undecodable (`StoreError::Corrupt`: a damaged row).
    corrupt_get: Arc<std::sync::atomic::AtomicBool>,
}

impl KeyStore for PausingStore {
    async fn insert(&self, r: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(r).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        if self.fail_get.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::backend(std::io::Error::other(
                "store unreachable",
            )));
        }
        if self.corrupt_get.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Corrupt("row does not decode".into()));
        }
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
        let pause = self.pause_update.lock().unwrap().take();
        if let Some((entered, release)) = pause {
            let _ = entered.send(());
            let _ = release.await;
        }
        self.inner.update(r, e).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        let pause = self.pause_delete.lock().unwrap().take();
        if let Some((entered, release)) = pause {
            let _ = entered.send(());
            let _ = release.await;
        }
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

/// A manager whose entries live an hour: only fencing can keep a stale record out.
fn long_lived(store: &PausingStore) -> KeyManager<PausingStore> {
    KeyManager::builder(store.clone(), keyring())
        .cache_ttl(StdDuration::from_secs(3600))
        .cache_fallback_ttl(StdDuration::from_secs(3600))
        .build()
        .unwrap()
}

/// Arms a pause (the next `get`'s or `update`'s): "reached" and "go on".
fn arm(slot: &Mutex<Pause>) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (reached_tx, reached) = oneshot::channel();
    let (go_on, go_on_rx) = oneshot::channel();
    *slot.lock().unwrap() = Some((reached_tx, go_on_rx));
    (reached, go_on)
}

/// The manager's listener on `store`'s feed, told the feed is connected.
fn connected_feed(store: &PausingStore) -> Arc<dyn ChangeListener> {
    let listener = store
        .listener
        .lock()
        .unwrap()
        .clone()
        .expect("the manager listens to the feed")
        .upgrade()
        .expect("the manager is alive");
    listener.connected();
    listener
}

/// Another node on the same rows, which the manager under test does not hear from.
fn other_node(store: &PausingStore) -> KeyManager<MemoryStore> {
    KeyManager::builder(store.inner.clone(), keyring())
        .build()
        .unwrap()
}

/// A verification of `token` in its own task.
fn spawn_verify(
    m: &KeyManager<PausingStore>,
    token: &str,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    let (m, t) = (m.clone(), token.to_string());
    tokio::spawn(async move { m.verify(&t, &Scope::Prometheus).await.map(|_| ()) })
}

async fn is_revoked(m: &KeyManager<PausingStore>, key: &str) -> bool {
    matches!(m.verify(key, &Scope::Prometheus).await, Err(Error::Revoked))
}
