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
