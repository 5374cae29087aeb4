//! The in-memory store: the embedded default for examples and tests.
//!
//! Layout (measured in `examples/memory.rs`: 275 resident bytes per key at 1 M keys, against
//! 463 for a `BTreeMap<KeyId, KeyRecord>`): records live as compact [`Row`]s (192 bytes) in
//! one slab (`Vec`), found for point reads through a hash index of slots and for `scan`
//! through an ordered `BTreeMap<KeyId, u32>`; timestamps are Unix seconds (sub-second parts,
//! which records never have, are kept aside only when present); built-in scope lists are a
//! bit mask; organization, class and user ids are interned, and a row holds their numbers;
//! the revocation reason is a code. Fields most keys leave empty sit in one optional box, but
//! what a revoke or a roll writes (the reason's kind, the revoker, the replacement) stays
//! inline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::{Future, ready};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use hashbrown::HashTable;
use time::OffsetDateTime;

use super::{Change, ChangeKind, ChangeListener, KeyStore};
use crate::{KeyId, KeyRecord, OrgId, StoreError, UserId};

mod row;
use row::*;

#[derive(Default)]
struct Data {
    /// Slot of each id in `rows`, in id order (for `scan`).
    index: BTreeMap<KeyId, u32>,
    /// The same slots by a hash of the id, for point reads (`get`, `touch`, updates): one
    /// probe where the B-tree's descent is a chain of dependent memory reads — at 1 M keys the
    /// largest part of a cold verification's misses. 4 bytes a slot plus a control byte
    /// (~10 bytes a key); an entry's id is the id of the row it points to.
    slots: HashTable<u32>,
    /// Seeded per store.
    hasher: foldhash::fast::RandomState,
    rows: Vec<Row>,
    /// The ids of each organization's keys, by the organization's number in `orgs`.
    by_org: HashMap<u32, BTreeSet<KeyId>>,
    orgs: Interner<OrgId>,
    users: Interner<UserId>,
    classes: Interner<Arc<str>>,
}

impl Data {
    fn hash(&self, id: &KeyId) -> u64 {
        hash_id(&self.hasher, id)
    }

    /// The slot of `id`'s row.
    fn slot(&self, id: &KeyId) -> Option<u32> {
        let rows = &self.rows;
        self.slots
            .find(self.hash(id), |&s| rows[s as usize].id == *id)
            .copied()
    }

    fn row(&self, id: &KeyId) -> Option<&Row> {
        self.slot(id).map(|slot| &self.rows[slot as usize])
    }

    fn row_mut(&mut self, id: &KeyId) -> Option<&mut Row> {
        self.slot(id).map(|slot| &mut self.rows[slot as usize])
    }

    /// Inserts or replaces the record with `record.id`, keeping `by_org` in step.
    fn put(&mut self, record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        let row = self.compact(record)?;
        let org = row.org;
        match self.slot(&id) {
            Some(slot) => {
                let old = std::mem::replace(&mut self.rows[slot as usize], row);
                if old.org != org {
                    self.unlink(old.org, &id);
                    self.by_org.entry(org).or_default().insert(id);
                }
            }
            None => {
                let Ok(slot) = u32::try_from(self.rows.len()) else {
                    return Err(StoreError::backend("MemoryStore holds at most 2^32 keys"));
                };
                self.rows.push(row);
                self.index.insert(id, slot);
                let hash = self.hash(&id);
                let Data {
                    slots,
                    rows,
                    hasher,
                    ..
                } = self;
                slots.insert_unique(hash, slot, |&s| hash_id(hasher, &rows[s as usize].id));
                self.by_org.entry(org).or_default().insert(id);
            }
        }
        Ok(())
    }

    fn unlink(&mut self, org: u32, id: &KeyId) {
        if let Some(set) = self.by_org.get_mut(&org) {
            set.remove(id);
            if set.is_empty() {
                self.by_org.remove(&org);
            }
        }
    }

    fn remove(&mut self, id: &KeyId) -> bool {
        let Some(slot) = self.index.remove(id) else {
            return false;
        };
        if let Ok(entry) = self.slots.find_entry(self.hash(id), |&s| s == slot) {
            entry.remove();
        }
        let row = self.rows.swap_remove(slot as usize);
        if let Some(moved) = self.rows.get(slot as usize) {
            // The last row moved from slot `len` into `slot`.
            let (moved_id, from) = (moved.id, self.rows.len() as u32);
            self.index.insert(moved_id, slot);
            let hash = self.hash(&moved_id);
            if let Some(s) = self.slots.find_mut(hash, |&s| s == from) {
                *s = slot;
            }
        }
        self.unlink(row.org, id);
        true
    }
}

/// The hash index's hash of an id.
fn hash_id(hasher: &foldhash::fast::RandomState, id: &KeyId) -> u64 {
    hasher.hash_one(id.value())
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
        self.read().rows.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces a stored record without any check or change event: for tests that simulate a
    /// tampered database row or a restored backup.
    pub fn overwrite_unchecked(&self, record: KeyRecord) {
        // Fails only beyond 2^32 keys; a test helper has nothing to report it to.
        let _ = self.write().put(record);
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
            if d.slot(&record.id).is_some() {
                return Err(StoreError::Duplicate);
            }
            d.put(record)?;
        }
        self.notify(change);
        Ok(())
    }

    fn update_now(&self, mut record: KeyRecord, expected: u64) -> Result<(), StoreError> {
        let change = Change {
            id: record.id,
            revision: record.revision,
            kind: ChangeKind::Updated,
        };
        {
            let mut d = self.write();
            let Some(cur) = d.row(&record.id) else {
                return Err(StoreError::NotFound);
            };
            if cur.revision != expected {
                return Err(StoreError::Conflict);
            }
            // The last use only rises (as in the SQL stores): a `touch` that landed after the
            // caller read the record is kept, not replaced by the caller's older copy (which
            // would make a key in use look unused to `sweep`).
            let stored = row::join(cur.last_used.load(Ordering::Relaxed), cur.last_used_nanos())?;
            if stored > record.last_used_at {
                record.last_used_at = stored;
            }
            d.put(record)?;
        }
        self.notify(change);
        Ok(())
    }

    fn delete_now(&self, id: &KeyId) -> bool {
        let removed = self.write().remove(id);
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
        let d = self.read();
        ready(d.row(id).map(|r| d.to_record(r)).transpose())
    }

    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        let d = self.read();
        let out = match d.orgs.find(org).and_then(|n| d.by_org.get(&n)) {
            Some(ids) => ids
                .iter()
                .filter_map(|id| d.row(id))
                .map(|r| d.to_record(r))
                .collect(),
            None => Ok(Vec::new()),
        };
        ready(out)
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
            .index
            .range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(_, &slot)| d.to_record(&d.rows[slot as usize]))
            .collect();
        ready(out)
    }

    fn touch(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (secs, nanos) = split(Some(at));
        {
            // Whole seconds into a row without sub-second times (every touch the manager
            // sends): raise the atomic under the shared lock, never lowering it.
            let d = self.read();
            match d.row(id) {
                None => return ready(Ok(())),
                Some(r) if nanos == 0 && r.extra.as_ref().is_none_or(|e| e.nanos.is_none()) => {
                    r.last_used.fetch_max(secs, Ordering::Relaxed);
                    return ready(Ok(()));
                }
                Some(_) => {}
            }
        }
        let mut d = self.write();
        if let Some(r) = d.row_mut(id) {
            let prev = (r.last_used.load(Ordering::Relaxed), r.last_used_nanos());
            // `NO_TIME` is below every real time, so an unset last use is always raised.
            if (secs, nanos) > prev {
                r.last_used.store(secs, Ordering::Relaxed);
                match (r.extra.as_mut().and_then(|e| e.nanos.as_mut()), nanos) {
                    (Some(n), _) => n[LAST_USED] = nanos,
                    (None, 0) => {}
                    (None, _) => {
                        let mut n = [0u32; 4];
                        n[LAST_USED] = nanos;
                        r.extra.get_or_insert_with(Box::default).nanos = Some(n);
                    }
                }
            }
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

#[cfg(test)]
mod tests;
