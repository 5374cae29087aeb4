//! The in-memory store: the embedded default for examples and tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::{Future, ready};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use time::OffsetDateTime;

use super::{Change, ChangeKind, ChangeListener, KeyStore};
use crate::{KeyId, KeyRecord, OrgId, StoreError};

#[derive(Default)]
struct Data {
    records: BTreeMap<KeyId, KeyRecord>,
    by_org: HashMap<OrgId, BTreeSet<KeyId>>,
}

#[derive(Default)]
struct Inner {
    data: RwLock<Data>,
    listeners: Mutex<Vec<Weak<dyn ChangeListener>>>,
}

/// An in-memory [`KeyStore`]. Clones share one map, and every manager over a clone sees the
/// others' changes at once through the in-process change feed. Nothing survives the process.
#[derive(Clone, Default)]
pub struct MemoryStore(Arc<Inner>);

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.read().records.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces a stored record without any check or change event: for tests that simulate a
    /// tampered database row or a restored backup.
    pub fn overwrite_unchecked(&self, record: KeyRecord) {
        let mut d = self.write();
        d.by_org
            .entry(record.org.clone())
            .or_default()
            .insert(record.id);
        d.records.insert(record.id, record);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Data> {
        self.0.data.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Data> {
        self.0.data.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self, change: Change) {
        let mut ls = self
            .0
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ls.retain(|l| match l.upgrade() {
            Some(l) => {
                l.changed(change);
                true
            }
            None => false,
        });
    }

    fn insert_now(&self, record: KeyRecord) -> Result<(), StoreError> {
        let change = Change {
            id: record.id,
            revision: record.revision,
            kind: ChangeKind::Inserted,
        };
        {
            let mut d = self.write();
            if d.records.contains_key(&record.id) {
                return Err(StoreError::Duplicate);
            }
            d.by_org
                .entry(record.org.clone())
                .or_default()
                .insert(record.id);
            d.records.insert(record.id, record);
        }
        self.notify(change);
        Ok(())
    }

    fn update_now(&self, record: KeyRecord, expected: u64) -> Result<(), StoreError> {
        let change = Change {
            id: record.id,
            revision: record.revision,
            kind: ChangeKind::Updated,
        };
        {
            let mut d = self.write();
            let Some(cur) = d.records.get(&record.id) else {
                return Err(StoreError::NotFound);
            };
            if cur.revision != expected {
                return Err(StoreError::Conflict);
            }
            let old_org = cur.org.clone();
            if old_org != record.org {
                if let Some(set) = d.by_org.get_mut(&old_org) {
                    set.remove(&record.id);
                }
                d.by_org
                    .entry(record.org.clone())
                    .or_default()
                    .insert(record.id);
            }
            d.records.insert(record.id, record);
        }
        self.notify(change);
        Ok(())
    }

    fn delete_now(&self, id: &KeyId) -> bool {
        let removed = {
            let mut d = self.write();
            match d.records.remove(id) {
                Some(r) => {
                    if let Some(set) = d.by_org.get_mut(&r.org) {
                        set.remove(id);
                        if set.is_empty() {
                            d.by_org.remove(&r.org);
                        }
                    }
                    true
                }
                None => false,
            }
        };
        if removed {
            self.notify(Change {
                id: *id,
                revision: 0,
                kind: ChangeKind::Deleted,
            });
        }
        removed
    }
}

impl KeyStore for MemoryStore {
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.insert_now(record))
    }

    fn get(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        ready(Ok(self.read().records.get(id).cloned()))
    }

    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        let d = self.read();
        let out = d
            .by_org
            .get(org)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| d.records.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default();
        ready(Ok(out))
    }

    fn update(
        &self,
        record: KeyRecord,
        expected_revision: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.update_now(record, expected_revision))
    }

    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.delete_now(id)))
    }

    fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        use std::ops::Bound;
        let d = self.read();
        let lower = match after {
            Some(a) => Bound::Excluded(*a),
            None => Bound::Unbounded,
        };
        let out = d
            .records
            .range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect();
        ready(Ok(out))
    }

    fn touch(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let mut d = self.write();
        if let Some(r) = d.records.get_mut(id)
            && r.last_used_at.is_none_or(|prev| prev < at)
        {
            r.last_used_at = Some(at);
        }
        ready(Ok(()))
    }

    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        if let Some(l) = listener.upgrade() {
            l.connected();
        }
        self.0
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
        true
    }
}
