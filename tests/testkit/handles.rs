//! Stores checked through two handles on one database, as two nodes open it: what `run`, with
//! one handle, cannot see.

use std::collections::HashMap;
use std::sync::Mutex;

use api_keys::testkit;
use api_keys::time::OffsetDateTime;
use api_keys::{KeyId, KeyRecord, KeyStore, MemoryStore, OrgId, StoreError};

/// A handle that caches `get` and forgets only what it writes itself (a read-through cache in
/// the host's store adapter), over a database (here a `MemoryStore`) every node shares.
struct CachingHandle {
    shared: MemoryStore,
    cache: Mutex<HashMap<KeyId, KeyRecord>>,
}

impl CachingHandle {
    fn new(shared: &MemoryStore) -> Self {
        CachingHandle {
            shared: shared.clone(),
            cache: Mutex::default(),
        }
    }

    fn forget(&self, id: &KeyId) {
        self.cache.lock().unwrap().remove(id);
    }
}

impl KeyStore for CachingHandle {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.forget(&record.id);
        self.shared.insert(record).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        if let Some(r) = self.cache.lock().unwrap().get(id) {
            return Ok(Some(r.clone()));
        }
        let got = self.shared.get(id).await?;
        if let Some(r) = &got {
            self.cache.lock().unwrap().insert(*id, r.clone());
        }
        Ok(got)
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.shared.list(org).await
    }
    async fn update(&self, record: KeyRecord, expected: u64) -> Result<(), StoreError> {
        self.forget(&record.id);
        self.shared.update(record, expected).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.forget(id);
        self.shared.delete(id).await
    }
    async fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.shared.scan(after, limit).await
    }
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        self.forget(id);
        self.shared.touch(id, at).await
    }
}

#[tokio::test]
async fn a_read_cache_of_each_handle_is_caught_with_a_second_handle() {
    let shared = MemoryStore::new();
    let (node_a, node_b) = (CachingHandle::new(&shared), CachingHandle::new(&shared));
    testkit::run(&node_a).await.unwrap();
    let f = testkit::reads_follow_writes_of_other_handles(&node_a, &node_b)
        .await
        .expect_err("a read cache of each handle passed");
    assert_eq!(
        f.check, "reads_follow_writes_of_other_handles",
        "reported as: {f}"
    );
    let memory = MemoryStore::new();
    testkit::reads_follow_writes_of_other_handles(&memory, &memory.clone())
        .await
        .unwrap();
}

/// A handle whose compare-and-swap `update` and `insert` are a read and a write under a lock
/// of the handle: atomic for the callers of one handle (so `run` passes it), not for two
/// nodes, whose reads both see the old row and whose writes both succeed.
struct LockedHandle {
    shared: MemoryStore,
    lock: tokio::sync::Mutex<()>,
    fault: Fault,
}

/// What a [`LockedHandle`] does under its lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `update` and `insert`: a read and a write.
    WritesUnderLock,
    /// `touch` (and so `touch_many`): a read of the whole record and a write of it back, and
    /// `update` under the same lock (so that the handle's own uses never land in between).
    TouchUnderLock,
}

impl KeyStore for LockedHandle {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        if self.fault != Fault::WritesUnderLock {
            return self.shared.insert(record).await;
        }
        let _held = self.lock.lock().await;
        if self.shared.get(&record.id).await?.is_some() {
            return Err(StoreError::Duplicate);
        }
        tokio::task::yield_now().await;
        // An upsert.
        self.shared.overwrite_unchecked(record);
        Ok(())
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.shared.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.shared.list(org).await
    }
    async fn update(&self, record: KeyRecord, expected: u64) -> Result<(), StoreError> {
        let _held = self.lock.lock().await;
        if self.fault != Fault::WritesUnderLock {
            return self.shared.update(record, expected).await;
        }
        match self.shared.get(&record.id).await? {
            None => return Err(StoreError::NotFound),
            Some(r) if r.revision != expected => return Err(StoreError::Conflict),
            Some(_) => {}
        }
        tokio::task::yield_now().await;
        self.shared.overwrite_unchecked(record);
        Ok(())
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.shared.delete(id).await
    }
    async fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.shared.scan(after, limit).await
    }
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        if self.fault != Fault::TouchUnderLock {
            return self.shared.touch(id, at).await;
        }
        let _held = self.lock.lock().await;
        let Some(mut rec) = self.shared.get(id).await? else {
            return Ok(());
        };
        // Two round trips: the other node's compare-and-swap lands in between.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        if rec.last_used_at.is_none_or(|p| p < at) {
            rec.last_used_at = Some(at);
        }
        self.shared.overwrite_unchecked(rec);
        Ok(())
    }
}

#[tokio::test]
async fn a_compare_and_swap_atomic_per_handle_only_is_caught_with_a_second_handle() {
    for fault in [Fault::WritesUnderLock, Fault::TouchUnderLock] {
        let shared = MemoryStore::new();
        let [node_a, node_b] = [(), ()].map(|()| LockedHandle {
            shared: shared.clone(),
            lock: Default::default(),
            fault,
        });
        testkit::run(&node_a).await.unwrap();
        let f = testkit::writes_are_atomic_across_handles(&node_a, &node_b)
            .await
            .expect_err("a handle atomic on its own passed");
        assert_eq!(
            f.check, "writes_are_atomic_across_handles",
            "{fault:?} reported as: {f}"
        );
    }
    let memory = MemoryStore::new();
    testkit::writes_are_atomic_across_handles(&memory, &memory.clone())
        .await
        .unwrap();
}
