//! The in-memory store: the embedded default for examples and tests.
//!
//! Layout (measured in `examples/memory.rs`: about 250 resident bytes per key at 1 M keys,
//! against 463 for a `BTreeMap<KeyId, KeyRecord>`): records live as compact [`Row`]s in one
//! slab (`Vec`), found through an ordered index `BTreeMap<KeyId, u32>` (which also gives
//! `scan` its id order); timestamps are Unix seconds (sub-second parts, which records never
//! have, are kept aside only when present); built-in scope lists are a bit mask; organization
//! and user ids are shared (interned) between the rows that name them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::{Future, ready};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use hashbrown::HashTable;
use time::OffsetDateTime;

use super::{Change, ChangeKind, ChangeListener, KeyStore};
use crate::record::Notices;
use crate::{
    Credits, KeyId, KeyRecord, OrgId, RateLimit, RevocationReason, Scope, Sealed, StoreError,
    UserId,
};

/// No timestamp (`None`). Real timestamps never reach `i64::MIN` seconds.
const NO_TIME: i64 = i64::MIN;

/// Scopes of one row: the canonical lists of built-in scopes as a bit mask (no allocation),
/// anything else as given.
enum Scopes {
    /// Bit 0: `Scim`, bit 1: `Prometheus`, in that (sorted) order.
    Builtin(u8),
    List(Box<[Scope]>),
}

impl Scopes {
    fn of(scopes: Vec<Scope>) -> Scopes {
        let bits = match scopes.as_slice() {
            [] => Some(0),
            [Scope::Scim] => Some(1),
            [Scope::Prometheus] => Some(2),
            [Scope::Scim, Scope::Prometheus] => Some(3),
            _ => None,
        };
        match bits {
            Some(b) => Scopes::Builtin(b),
            None => Scopes::List(scopes.into_boxed_slice()),
        }
    }

    fn to_vec(&self) -> Vec<Scope> {
        match self {
            Scopes::Builtin(b) => {
                let mut v = Vec::with_capacity(b.count_ones() as usize);
                if b & 1 != 0 {
                    v.push(Scope::Scim);
                }
                if b & 2 != 0 {
                    v.push(Scope::Prometheus);
                }
                v
            }
            Scopes::List(l) => l.to_vec(),
        }
    }
}

/// The fields most keys leave empty, boxed only when one is set. (What a revoke or a roll
/// writes — the reason, the replacement — stays inline in the row: reading a revoked or a
/// rolled key must cost what reading an active one does.)
#[derive(Default, PartialEq)]
struct Extra {
    replaces: Option<KeyId>,
    owner: Option<String>,
    meta: BTreeMap<String, String>,
    rate_limits: Vec<RateLimit>,
    credits: Option<Credits>,
    notices: Notices,
}

/// One record, compactly. Converts back to an equal [`KeyRecord`].
struct Row {
    id: KeyId,
    org: OrgId,
    /// The key class, shared between the rows that name it.
    class: Arc<str>,
    extra: Option<Box<Extra>>,
    revocation: Option<RevocationReason>,
    replaced_by: Option<KeyId>,
    name: Box<str>,
    scopes: Scopes,
    created_by: UserId,
    revoked_by: Option<UserId>,
    /// Unix seconds of `created_at`, `expires_at`, `revoked_at` (`NO_TIME` for `None`).
    secs: [i64; 3],
    /// Unix seconds of `last_used_at` (`NO_TIME` for `None`): atomic, so that `touch` of a
    /// whole second (what the manager sends) needs only the shared lock.
    last_used: AtomicI64,
    /// Their nanoseconds, only when one is not a whole second.
    nanos: Option<Box<[u32; 4]>>,
    revision: u64,
    key_version: u32,
    format: u16,
    iv: [u8; 16],
    ciphertext: [u8; 32],
    details_tag: [u8; 16],
    tag: [u8; 16],
}

const CREATED: usize = 0;
const EXPIRES: usize = 1;
const REVOKED: usize = 2;
const LAST_USED: usize = 3;

fn split(t: Option<OffsetDateTime>) -> (i64, u32) {
    t.map_or((NO_TIME, 0), |t| (t.unix_timestamp(), t.nanosecond()))
}

fn join(secs: i64, nanos: u32) -> Result<Option<OffsetDateTime>, StoreError> {
    // The same conversion whether the time is set or not: a row without a revocation time
    // must not read faster than one with it.
    let present = secs != NO_TIME;
    let t =
        OffsetDateTime::from_unix_timestamp(std::hint::black_box(if present { secs } else { 0 }))
            .and_then(|t| t.replace_nanosecond(nanos))
            .map_err(|e| StoreError::Corrupt(e.into()))?;
    Ok(present.then_some(t))
}

/// Shares one `Arc` among equal ids (they are compared by value, so sharing is invisible).
fn intern<T: Clone + Eq + std::hash::Hash>(set: &mut HashSet<T>, v: T) -> T {
    match set.get(&v) {
        Some(shared) => shared.clone(),
        None => {
            set.insert(v.clone());
            v
        }
    }
}

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
    by_org: HashMap<OrgId, BTreeSet<KeyId>>,
    users: HashSet<UserId>,
    classes: HashSet<Arc<str>>,
}

impl Data {
    fn hash(&self, id: &KeyId) -> u64 {
        self.hasher.hash_one(id.value())
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

    fn compact(&mut self, r: KeyRecord) -> Row {
        let times = [
            split(Some(r.created_at)),
            split(r.expires_at),
            split(r.revoked_at),
            split(r.last_used_at),
        ];
        let nanos = times
            .iter()
            .any(|t| t.1 != 0)
            .then(|| Box::new(times.map(|t| t.1)));
        // The organization's `Arc` is the one `by_org` already holds, if any.
        let org = match self.by_org.get_key_value(&r.org) {
            Some((shared, _)) => shared.clone(),
            None => r.org,
        };
        let extra = Extra {
            replaces: r.replaces,
            owner: r.owner,
            meta: r.meta,
            rate_limits: r.rate_limits,
            credits: r.credits,
            notices: r.notices,
        };
        Row {
            id: r.id,
            org,
            class: intern(&mut self.classes, Arc::from(r.class)),
            extra: (extra != Extra::default()).then(|| Box::new(extra)),
            revocation: r.revocation,
            replaced_by: r.replaced_by,
            name: r.name.into_boxed_str(),
            scopes: Scopes::of(r.scopes),
            created_by: intern(&mut self.users, r.created_by),
            revoked_by: r.revoked_by.map(|u| intern(&mut self.users, u)),
            secs: [times[0].0, times[1].0, times[2].0],
            last_used: AtomicI64::new(times[3].0),
            nanos,
            revision: r.revision,
            key_version: r.sealed.key_version,
            format: r.format,
            iv: r.sealed.iv,
            ciphertext: r.sealed.ciphertext,
            details_tag: r.sealed.details_tag,
            tag: r.sealed.tag,
        }
    }

    fn to_record(row: &Row) -> Result<KeyRecord, StoreError> {
        let n = |i: usize| row.nanos.as_ref().map_or(0, |n| n[i]);
        let time = |i: usize| {
            let secs = match i {
                LAST_USED => row.last_used.load(Ordering::Relaxed),
                i => row.secs[i],
            };
            join(secs, n(i))
        };
        // The same work whether the key was revoked or not: one clone (and, later, one drop)
        // of an interned user id either way, so reading a revoked row costs what reading an
        // active one does.
        let by = row.revoked_by.as_ref().unwrap_or(&row.created_by).clone();
        let revoked_by = if row.revoked_by.is_some() {
            Some(by)
        } else {
            drop(by);
            None
        };
        let extra = row.extra.as_deref();
        Ok(KeyRecord {
            format: row.format,
            class: String::from(&*row.class),
            revocation: row.revocation.clone(),
            replaces: extra.and_then(|e| e.replaces),
            replaced_by: row.replaced_by,
            owner: extra.and_then(|e| e.owner.clone()),
            meta: extra.map(|e| e.meta.clone()).unwrap_or_default(),
            rate_limits: extra.map(|e| e.rate_limits.clone()).unwrap_or_default(),
            credits: extra.and_then(|e| e.credits),
            notices: extra.map(|e| e.notices.clone()).unwrap_or_default(),
            id: row.id,
            org: row.org.clone(),
            name: String::from(&*row.name),
            scopes: row.scopes.to_vec(),
            created_at: time(CREATED)?
                .ok_or_else(|| StoreError::Corrupt("stored record has no creation time".into()))?,
            created_by: row.created_by.clone(),
            expires_at: time(EXPIRES)?,
            revoked_at: time(REVOKED)?,
            revoked_by,
            last_used_at: time(LAST_USED)?,
            revision: row.revision,
            sealed: Sealed {
                key_version: row.key_version,
                iv: row.iv,
                ciphertext: row.ciphertext,
                details_tag: row.details_tag,
                tag: row.tag,
            },
        })
    }

    /// Inserts or replaces the record with `record.id`, keeping `by_org` in step.
    fn put(&mut self, record: KeyRecord) -> Result<(), StoreError> {
        let id = record.id;
        let new_org = record.org.clone();
        let row = self.compact(record);
        let org = row.org.clone();
        match self.slot(&id) {
            Some(slot) => {
                let old = std::mem::replace(&mut self.rows[slot as usize], row);
                if old.org != new_org {
                    self.unlink(&old.org, &id);
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
                slots.insert_unique(hash, slot, |&s| {
                    hasher.hash_one(rows[s as usize].id.value())
                });
                self.by_org.entry(org).or_default().insert(id);
            }
        }
        Ok(())
    }

    fn unlink(&mut self, org: &OrgId, id: &KeyId) {
        if let Some(set) = self.by_org.get_mut(org) {
            set.remove(id);
            if set.is_empty() {
                self.by_org.remove(org);
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
        self.unlink(&row.org, id);
        true
    }
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

    fn update_now(&self, record: KeyRecord, expected: u64) -> Result<(), StoreError> {
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
        ready(self.read().row(id).map(Data::to_record).transpose())
    }

    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        let d = self.read();
        let out = match d.by_org.get(org) {
            Some(ids) => ids
                .iter()
                .filter_map(|id| d.row(id))
                .map(Data::to_record)
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
            .map(|(_, &slot)| Data::to_record(&d.rows[slot as usize]))
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
                Some(r) if nanos == 0 && r.nanos.is_none() => {
                    r.last_used.fetch_max(secs, Ordering::Relaxed);
                    return ready(Ok(()));
                }
                Some(_) => {}
            }
        }
        let mut d = self.write();
        if let Some(r) = d.row_mut(id) {
            let prev = (
                r.last_used.load(Ordering::Relaxed),
                r.nanos.as_ref().map_or(0, |n| n[LAST_USED]),
            );
            // `NO_TIME` is below every real time, so an unset last use is always raised.
            if (secs, nanos) > prev {
                r.last_used.store(secs, Ordering::Relaxed);
                match (&mut r.nanos, nanos) {
                    (Some(n), _) => n[LAST_USED] = nanos,
                    (None, 0) => {}
                    (None, _) => {
                        let mut n = [0u32; 4];
                        n[LAST_USED] = nanos;
                        r.nanos = Some(Box::new(n));
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
mod tests {
    use super::*;
    use crate::{Keyring, MasterKey};

    fn block_on<F: Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    fn record(id: u64, org: &str, scopes: Vec<Scope>) -> KeyRecord {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let draft = crate::record::Draft {
            id: KeyId(id),
            org: OrgId::new(org),
            name: "n".into(),
            scopes,
            created_at: t,
            created_by: UserId::new("alice"),
            expires_at: Some(t + time::Duration::days(90)),
            ..crate::record::Draft::new("sak")
        };
        let ring = Keyring::new(1, MasterKey::from_bytes([1; 16]));
        KeyRecord::seal_new(&ring, draft, &[7; 32]).unwrap()
    }

    /// The compact rows give back records equal to what went in, including shapes the crate
    /// never writes itself (unsorted or duplicate scopes, sub-second and negative times).
    #[test]
    fn rows_round_trip_every_shape() {
        let store = MemoryStore::new();
        let mut odd = record(3, "acme", vec![Scope::Prometheus, Scope::Scim]);
        odd.scopes = vec![Scope::Prometheus, Scope::Scim, Scope::Prometheus];
        odd.created_at = OffsetDateTime::from_unix_timestamp_nanos(-1_500_000_000).unwrap();
        odd.revoked_at = Some(OffsetDateTime::from_unix_timestamp(5).unwrap());
        odd.revoked_by = Some(UserId::new("bob"));
        odd.revocation = Some(RevocationReason::Leaked {
            source: "https://example.com".into(),
        });
        odd.owner = Some("team".into());
        odd.meta.insert("plan".into(), "pro".into());
        odd.notices.expiry_warned.push(86_400);
        odd.last_used_at = Some(OffsetDateTime::UNIX_EPOCH);
        let custom = record(
            4,
            "acme",
            vec![Scope::custom("billing:read").unwrap(), Scope::Scim],
        );
        let cases = [
            record(1, "acme", vec![Scope::Scim]),
            record(2, "other", vec![Scope::Scim, Scope::Prometheus]),
            record(5, "acme", vec![]),
            odd,
            custom,
        ];
        for r in &cases {
            block_on(store.insert(r.clone())).unwrap();
        }
        for r in &cases {
            assert_eq!(block_on(store.get(&r.id)).unwrap().as_ref(), Some(r));
        }
        assert_eq!(block_on(store.list(&OrgId::new("acme"))).unwrap().len(), 4);
        let all = block_on(store.scan(None, 10)).unwrap();
        assert_eq!(
            all.iter().map(|r| r.id.0).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );

        // Touch raises last use (also from the epoch, and with sub-second precision), never
        // lowers it, and leaves everything else alone.
        let later = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_250_000_000).unwrap();
        block_on(store.touch(&KeyId(3), later)).unwrap();
        block_on(store.touch(&KeyId(3), OffsetDateTime::UNIX_EPOCH)).unwrap();
        let mut expected = cases[3].clone();
        expected.last_used_at = Some(later);
        assert_eq!(block_on(store.get(&KeyId(3))).unwrap(), Some(expected));

        // The shared-lock path (whole seconds, no sub-second times stored) too.
        let t = |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap();
        block_on(store.touch(&KeyId(2), t(1_800_000_000))).unwrap();
        block_on(store.touch(&KeyId(2), t(1_700_000_000))).unwrap();
        block_on(store.touch(&KeyId(99), t(1_800_000_000))).unwrap();
        let mut expected = cases[1].clone();
        expected.last_used_at = Some(t(1_800_000_000));
        assert_eq!(block_on(store.get(&KeyId(2))).unwrap(), Some(expected));
        assert_eq!(block_on(store.get(&KeyId(99))).unwrap(), None);

        // Delete moves the last row into the freed slot; every id still finds its record.
        assert!(block_on(store.delete(&KeyId(1))).unwrap());
        assert!(!block_on(store.delete(&KeyId(1))).unwrap());
        assert_eq!(store.len(), 4);
        for r in &cases[2..] {
            assert_eq!(block_on(store.get(&r.id)).unwrap().unwrap().id, r.id);
        }
        assert_eq!(
            block_on(store.get(&KeyId(5))).unwrap().as_ref(),
            Some(&cases[2])
        );
        assert_eq!(block_on(store.list(&OrgId::new("acme"))).unwrap().len(), 3);

        // Moving a record to another organization (overwrite) re-indexes it.
        let mut moved = cases[2].clone();
        moved.org = OrgId::new("other");
        store.overwrite_unchecked(moved.clone());
        assert_eq!(block_on(store.list(&OrgId::new("other"))).unwrap().len(), 2);
        assert_eq!(block_on(store.get(&KeyId(5))).unwrap(), Some(moved));
    }

    /// The hash index, the ordered index and the slab stay in step through any sequence of
    /// inserts, overwrites (also to another organization) and deletes (which move the last
    /// row): every id reads back what a plain map says, absent ids read nothing, and `scan`
    /// walks the live ids in order.
    #[test]
    fn indexes_agree_with_a_map_through_random_changes() {
        let store = MemoryStore::new();
        let mut model = std::collections::BTreeMap::new();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..3_000 {
            let id = next() % 200;
            match next() % 4 {
                0 | 1 => {
                    let org = if next() % 2 == 0 { "acme" } else { "other" };
                    let r = record(id, org, vec![Scope::Scim]);
                    if model.contains_key(&id) {
                        store.overwrite_unchecked(r.clone());
                    } else {
                        block_on(store.insert(r.clone())).unwrap();
                    }
                    model.insert(id, r);
                }
                _ => {
                    let removed = block_on(store.delete(&KeyId(id))).unwrap();
                    assert_eq!(removed, model.remove(&id).is_some(), "step {step}");
                }
            }
            if step % 100 == 0 {
                for probe in 0..200 {
                    let got = block_on(store.get(&KeyId(probe))).unwrap();
                    assert_eq!(got.as_ref(), model.get(&probe), "step {step} id {probe}");
                }
            }
        }
        assert_eq!(store.len(), model.len());
        let all = block_on(store.scan(None, 1_000)).unwrap();
        assert!(all.iter().map(|r| r.id.0).eq(model.keys().copied()));
        for (id, r) in &model {
            assert_eq!(block_on(store.get(&KeyId(*id))).unwrap().as_ref(), Some(r));
        }
    }

    #[cfg(feature = "testkit")]
    #[test]
    fn passes_the_conformance_suite() {
        block_on(crate::testkit::run(&MemoryStore::new())).unwrap();
    }
}
