//! Helpers shared by the SQLite and PostgreSQL store tests: a store wrapper that records its
//! change feed and can hold a `get` after it read the row (to build exact races), and a
//! bounded wait.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use api_keys::time::OffsetDateTime;
use api_keys::{Change, ChangeListener, KeyId, KeyRecord, KeyStore, OrgId, StoreError};
use tokio::sync::Notify;

/// What a store's change feed reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    Connected,
    Disconnected,
    Changed(Change),
}

/// The events a feed delivered, in order.
#[derive(Default)]
pub struct FeedLog(Mutex<Vec<FeedEvent>>);

impl FeedLog {
    pub fn events(&self) -> Vec<FeedEvent> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self, e: &FeedEvent) -> usize {
        self.events().iter().filter(|x| *x == e).count()
    }

    fn push(&self, e: FeedEvent) {
        self.0.lock().unwrap().push(e);
    }
}

/// A listener that records every call and forwards it to the real listener (if any).
pub struct Spy {
    pub log: Arc<FeedLog>,
    target: Option<Weak<dyn ChangeListener>>,
}

impl Spy {
    /// A listener that only records.
    pub fn recorder() -> (Arc<Spy>, Arc<FeedLog>) {
        let log = Arc::new(FeedLog::default());
        (
            Arc::new(Spy {
                log: log.clone(),
                target: None,
            }),
            log,
        )
    }

    fn forward(&self, f: impl FnOnce(&dyn ChangeListener)) {
        if let Some(t) = self.target.as_ref().and_then(Weak::upgrade) {
            f(&*t);
        }
    }
}

impl ChangeListener for Spy {
    fn changed(&self, change: Change) {
        // Forward first: an observer who saw the event may rely on its effect.
        self.forward(|t| t.changed(change));
        self.log.push(FeedEvent::Changed(change));
    }
    fn connected(&self) {
        self.forward(|t| t.connected());
        self.log.push(FeedEvent::Connected);
    }
    fn disconnected(&self) {
        self.forward(|t| t.disconnected());
        self.log.push(FeedEvent::Disconnected);
    }
    fn proven(&self, sent: std::time::Instant) {
        self.forward(|t| t.proven(sent));
    }
}

/// Holds one `get` after it has read its row, until released.
#[derive(Default)]
pub struct Gate {
    armed: AtomicBool,
    reached: Notify,
    release: Notify,
}

impl Gate {
    /// The next `get` will stop after reading.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
    /// Waits until the armed `get` has read its row (bounded).
    pub async fn reached(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.reached.notified())
            .await
            .expect("the armed get was never reached");
    }
    /// Lets the held `get` return what it read.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

/// Wraps a store: records its change feed and can hold a `get`.
pub struct Observed<S> {
    pub inner: S,
    pub feed: Arc<FeedLog>,
    pub gate: Arc<Gate>,
    spies: Mutex<Vec<Arc<Spy>>>,
}

impl<S> Observed<S> {
    pub fn new(inner: S) -> Self {
        Observed {
            inner,
            feed: Arc::new(FeedLog::default()),
            gate: Arc::new(Gate::default()),
            spies: Mutex::new(Vec::new()),
        }
    }
}

impl<S: KeyStore> KeyStore for Observed<S> {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let got = self.inner.get(id).await;
        if self.gate.armed.swap(false, Ordering::SeqCst) {
            self.gate.reached.notify_one();
            self.gate.release.notified().await;
        }
        got
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(org).await
    }
    async fn update(&self, record: KeyRecord, expected: u64) -> Result<(), StoreError> {
        self.inner.update(record, expected).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }
    async fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.scan(after, limit).await
    }
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        self.inner.touch(id, at).await
    }
    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        let spy = Arc::new(Spy {
            log: self.feed.clone(),
            target: Some(listener),
        });
        let weak: Weak<dyn ChangeListener> =
            Arc::downgrade(&(spy.clone() as Arc<dyn ChangeListener>));
        self.spies.lock().unwrap().push(spy);
        self.inner.changes(weak)
    }
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns the time it took.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes a measurement to the real stderr (not captured by the test harness), so CI logs
/// show it.
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "[measured] {line}");
}
