//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use api_keys::time::{Duration, OffsetDateTime};
use api_keys::{
    Actor, AuditAction, AuditEvent, AuditSink, BoxError, ChangeListener, KeyId, KeyManager,
    KeyRecord, KeyStore, Keyring, ManualClock, MasterKey, MemoryStore, OrgId, Policy, StoreError,
    UserId,
};

pub const MASTER: [u8; 16] = *b"0123456789abcdef";

pub fn start() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()
}

pub fn keyring() -> Keyring {
    Keyring::new(1, MasterKey::from_bytes(MASTER))
}

pub fn alice() -> Actor {
    Actor::manager(OrgId::new("acme"), UserId::new("alice"))
}

pub fn bob_member() -> Actor {
    Actor::member(OrgId::new("acme"), UserId::new("bob"))
}

pub fn mallory_other_org() -> Actor {
    Actor::manager(OrgId::new("globex"), UserId::new("mallory"))
}

/// An audit sink that keeps every event.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<AuditEvent>>>);

impl Recorder {
    pub fn events(&self) -> Vec<AuditEvent> {
        self.0.lock().unwrap().clone()
    }

    /// How many events about key `id` have an action that `what` accepts.
    #[allow(dead_code)] // not every test binary counts events
    pub fn count(&self, id: KeyId, what: impl Fn(&AuditAction) -> bool) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.key_id == Some(id) && what(&e.action))
            .count()
    }
}

impl AuditSink for Recorder {
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

pub struct Setup<S> {
    pub manager: KeyManager<S>,
    pub clock: ManualClock,
    pub audit: Recorder,
}

pub fn setup_with<S: KeyStore + 'static>(store: S, policy: Policy) -> Setup<S> {
    let clock = ManualClock::new(start());
    let audit = Recorder::default();
    let manager = KeyManager::builder(store, keyring())
        .clock(clock.clone())
        .policy(policy)
        .audit(audit.clone())
        .build()
        .unwrap();
    Setup {
        manager,
        clock,
        audit,
    }
}

pub fn setup() -> Setup<MemoryStore> {
    setup_with(MemoryStore::new(), Policy::default())
}

/// A store that counts calls and can be told to fail.
#[derive(Clone, Default)]
pub struct CountingStore {
    pub inner: MemoryStore,
    pub gets: Arc<AtomicUsize>,
    pub fail_touch: Arc<std::sync::atomic::AtomicBool>,
    pub touches: Arc<AtomicUsize>,
    /// Makes `get` fail as an unreachable store would.
    pub fail_get: Arc<std::sync::atomic::AtomicBool>,
    /// When set, every call first yields to the runtime, so that concurrent tasks interleave
    /// between a read and a write (as over a network store).
    pub yields: Arc<std::sync::atomic::AtomicBool>,
    /// The manager's change listener, kept (the store reports no feed of its own) so that a
    /// test can play a feed going down and coming back with [`CountingStore::feed`].
    pub listeners: Arc<Mutex<Vec<Weak<dyn ChangeListener>>>>,
    pub lists: Arc<AtomicUsize>,
    /// The next `update` commits, then reports a failure (a reply lost on the way back).
    pub lose_update_reply: Arc<std::sync::atomic::AtomicBool>,
    /// The next `update` writes nothing and reports a failure (a request that never reached
    /// the store).
    pub fail_update: Arc<std::sync::atomic::AtomicBool>,
    /// The next `insert` commits, then reports a failure (a reply lost on the way back).
    pub lose_insert_reply: Arc<std::sync::atomic::AtomicBool>,
    /// The next `delete` commits, then reports a failure (a reply lost on the way back).
    pub lose_delete_reply: Arc<std::sync::atomic::AtomicBool>,
    /// The next `delete` removes nothing and reports a failure (a request that never
    /// reached the store).
    pub fail_delete: Arc<std::sync::atomic::AtomicBool>,
    /// Runs once, right after the next `insert` committed (set with
    /// [`CountingStore::after_next_insert`]).
    pub after_insert: Arc<Mutex<Option<Hook>>>,
    /// Runs once, right after the next `update` committed and before its reply (set with
    /// [`CountingStore::after_next_update`]).
    pub after_update: Arc<Mutex<Option<Hook>>>,
    /// Runs once, right after the next successful `get` read (set with
    /// [`CountingStore::after_next_get`]).
    pub after_get: Arc<Mutex<Option<Hook>>>,
}

/// A step a test runs inside a store call, so that it lands deterministically between two
/// steps of the operation being tested (e.g. another manager's change).
pub type Hook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

fn hook<F, Fut>(step: F) -> Hook
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Box::new(move || Box::pin(step()))
}

async fn run(slot: &Mutex<Option<Hook>>) {
    // Taken before it runs: the step may call this store again without running twice.
    let step = slot.lock().unwrap().take();
    if let Some(step) = step {
        step().await;
    }
}

impl CountingStore {
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    async fn pause(&self) {
        if self.yields.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    }

    /// Tells the managers built over this store that the change feed is live or down.
    pub fn feed(&self, live: bool) {
        for l in self
            .listeners
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
        {
            if live {
                l.connected();
            } else {
                l.disconnected();
            }
        }
    }

    pub fn lists(&self) -> usize {
        self.lists.load(Ordering::SeqCst)
    }

    /// Runs `step` once, right after the next `insert` committed.
    pub fn after_next_insert<F, Fut>(&self, step: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self.after_insert.lock().unwrap() = Some(hook(step));
    }

    /// Runs `step` once, right after the next `get` read (before its reply).
    pub fn after_next_get<F, Fut>(&self, step: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self.after_get.lock().unwrap() = Some(hook(step));
    }

    /// Runs `step` once, right after the next `update` committed (before its reply, which
    /// [`CountingStore::lose_update_reply`] may then lose).
    pub fn after_next_update<F, Fut>(&self, step: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self.after_update.lock().unwrap() = Some(hook(step));
    }
}

impl KeyStore for CountingStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.pause().await;
        self.inner.insert(record).await?;
        run(&self.after_insert).await;
        if self.lose_insert_reply.swap(false, Ordering::SeqCst) {
            return Err(StoreError::backend(std::io::Error::other(
                "connection reset after commit",
            )));
        }
        Ok(())
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.pause().await;
        self.gets.fetch_add(1, Ordering::SeqCst);
        if self.fail_get.load(Ordering::SeqCst) {
            return Err(StoreError::backend(std::io::Error::other(
                "store unreachable",
            )));
        }
        let found = self.inner.get(id).await?;
        run(&self.after_get).await;
        Ok(found)
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.pause().await;
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(org).await
    }
    async fn update(&self, record: KeyRecord, expected: u64) -> Result<(), StoreError> {
        self.pause().await;
        if self.fail_update.swap(false, Ordering::SeqCst) {
            return Err(StoreError::backend(std::io::Error::other(
                "connection refused",
            )));
        }
        self.inner.update(record, expected).await?;
        run(&self.after_update).await;
        if self.lose_update_reply.swap(false, Ordering::SeqCst) {
            return Err(StoreError::backend(std::io::Error::other(
                "connection reset after commit",
            )));
        }
        Ok(())
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.pause().await;
        if self.fail_delete.swap(false, Ordering::SeqCst) {
            return Err(StoreError::backend(std::io::Error::other(
                "connection refused",
            )));
        }
        let removed = self.inner.delete(id).await?;
        if self.lose_delete_reply.swap(false, Ordering::SeqCst) {
            return Err(StoreError::backend(std::io::Error::other(
                "connection reset after commit",
            )));
        }
        Ok(removed)
    }
    async fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.pause().await;
        self.inner.scan(after, limit).await
    }
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        self.pause().await;
        self.touches.fetch_add(1, Ordering::SeqCst);
        if self.fail_touch.load(Ordering::SeqCst) {
            return Err(StoreError::backend(std::io::Error::other("touch refused")));
        }
        self.inner.touch(id, at).await
    }
    // No change feed: like a store shared with processes we cannot hear from (a test may
    // still play one with `feed`).
    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        self.listeners.lock().unwrap().push(listener);
        false
    }
}

pub fn days(n: i64) -> Duration {
    Duration::days(n)
}

/// Replaces the id of a token and fixes its checksum.
pub fn with_id(token: &str, id: &str) -> String {
    let body = format!("sak_{id}{}", &token[15..token.len() - 6]);
    fix_checksum(&body)
}

/// The same id with another secret (valid checksum).
pub fn wrong_secret(token: &str) -> String {
    let mut b = token[..token.len() - 6].to_string();
    let last = b.pop().unwrap();
    b.push(if last == '0' { '1' } else { '0' });
    fix_checksum(&b)
}

pub fn fix_checksum(body: &str) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut v = crc32fast::hash(body.as_bytes()) as u64;
    let mut c = [b'0'; 6];
    for slot in c.iter_mut().rev() {
        *slot = A[(v % 62) as usize];
        v /= 62;
    }
    format!("{body}{}", std::str::from_utf8(&c).unwrap())
}

/// A `tracing` writer that keeps everything written, for tests that read the log.
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's `tracing` events (every level, no colours) into a buffer, until
/// the guard is dropped.
pub fn capture_thread_logs() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

impl LogBuffer {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}
