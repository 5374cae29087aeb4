//! The persistence trait that hosts implement, and the stores this crate ships.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use time::OffsetDateTime;

use crate::{KeyId, KeyRecord, OrgId, StoreError};

mod memory;
pub use memory::MemoryStore;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteError, SqliteErrorKind, SqliteStore};

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresError, PostgresErrorKind, PostgresOptions, PostgresStore};

/// What happened to a record, as a change feed reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new record.
    Inserted,
    /// A record was replaced (revoke, roll, rewrap, ...).
    Updated,
    /// A record was deleted.
    Deleted,
}

/// One change reported by a store's change feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The record's id.
    pub id: KeyId,
    /// The revision after the change (0 for a deletion).
    pub revision: u64,
    /// What happened.
    pub kind: ChangeKind,
}

/// Receives a store's change feed. [`KeyManager`](crate::KeyManager) implements it to keep its
/// verified-record cache honest; a store calls it from whatever task delivers its
/// notifications.
pub trait ChangeListener: Send + Sync {
    /// A record changed (called after the change is committed).
    fn changed(&self, change: Change);
    /// The feed is (re)connected: from now on every committed change will be reported.
    fn connected(&self);
    /// The feed is lost: changes may go unreported until [`ChangeListener::connected`].
    fn disconnected(&self);
    /// The feed delivered a probe that was sent (through the database, on the feed's own
    /// channel) at `sent`: every change committed before `sent` has been reported.
    ///
    /// A store whose feed may hang silently calls this regularly, and before its
    /// [`ChangeListener::connected`] (once the first probe came back). From the first call
    /// on, the listener trusts the feed only until the last probe's `sent` + its fallback
    /// TTL, instead of until [`ChangeListener::disconnected`]. The default does nothing.
    fn proven(&self, sent: std::time::Instant) {
        let _ = sent;
    }
    /// Every record may have changed at once (a `TRUNCATE`, a notification that names no
    /// key): forget everything. The default reports a drop and a reconnection, which leaves
    /// each entry its fallback TTL; the manager's cache empties itself.
    fn reset(&self) {
        self.disconnected();
        self.connected();
    }
}

/// Where an organization's keys live. Hosts implement it over their own database; this crate
/// ships [`MemoryStore`] and, behind features, SQLite and PostgreSQL stores. The `testkit`
/// feature's conformance suite checks every duty written here.
///
/// Duties of an implementation:
/// - `get` sees the store's own completed writes (no lagging replica), whichever node made
///   them (`testkit::reads_follow_writes_of_other_handles`).
/// - `insert` **must** fail with [`StoreError::Duplicate`] when the id exists, and never
///   overwrite.
/// - `update` **must** be one atomic compare-and-swap on `(id, revision)`: it stores `record`
///   (with `record.revision` as given) only if the stored revision equals
///   `expected_revision`, fails with [`StoreError::Conflict`] when it does not, and with
///   [`StoreError::NotFound`] for a missing row — atomic between nodes, not only within one
///   process (`testkit::writes_are_atomic_across_handles`).
/// - `delete` returns whether a row was removed.
/// - `touch` writes only `last_used_at`, never lowers it, never creates a row, does not change
///   the revision, and never rewrites the whole record (a read-modify-write there could
///   un-revoke a key that was revoked in between).
/// - ids compare byte for byte (binary collation of [`KeyId`]'s text form, which equals
///   [`KeyId`]'s `Ord`); `scan` returns records of all organizations with ids strictly greater
///   than `after`, ascending by that same order, at most `limit` of them.
/// - revisions fit in an `i64`.
/// - `update` should keep the later of the stored and the given `last_used_at` (the shipped
///   stores do): otherwise a `touch` that lands between a manager's read and its
///   compare-and-swap `update` of the same record is overwritten by the older copy's value,
///   and until the key's next recorded use (a minute later at most while it is in use) it
///   looks unused to [`KeyManager::sweep`](crate::KeyManager::sweep). (Not checked by
///   `testkit::run`, so that stores written to the earlier contract keep passing.)
/// - a record read back is equal to the one written (timestamps are whole seconds), except
///   for a later `last_used_at` that `update` kept (above).
pub trait KeyStore: Send + Sync {
    /// Inserts a new record.
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Reads one record.
    fn get(&self, id: &KeyId)
    -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;
    /// Every record of one organization (any order).
    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;
    /// Compare-and-swap replacement of a record.
    fn update(
        &self,
        record: KeyRecord,
        expected_revision: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes a record; `true` if it existed.
    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A page of records of all organizations in id order, after `after`.
    fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;
    /// Records a use: raises `last_used_at` to `at` if it is lower (or unset).
    fn touch(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records many uses at once (`touch` for each, with the same duties). The manager
    /// buffers last uses and writes them with this, once per flush interval, off the verify
    /// path. The default calls [`KeyStore::touch`] for each in turn; a store that can do it
    /// in one statement should.
    fn touch_many(
        &self,
        uses: &[(KeyId, OffsetDateTime)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            for (id, at) in uses {
                self.touch(id, *at).await?;
            }
            Ok(())
        }
    }

    /// Subscribes `listener` to the store's change feed, if the store has one (every listener
    /// subscribed, not only the latest: managers sharing one store each subscribe). Returns
    /// `false` (the default) when it has none; the manager then relies on its cache TTL alone.
    /// A store that returns `true` calls [`ChangeListener::connected`] once its feed is live
    /// (possibly before returning) and [`ChangeListener::disconnected`] whenever it may miss
    /// changes, and while connected reports every committed insert, update and delete (with the
    /// revision after it, 0 for a delete) — whoever made it: this is how the other nodes'
    /// caches hear of a revoke (`testkit::change_feed_reports_every_write`, and
    /// `testkit::change_feed_reports_writes_of_other_handles` with a second handle).
    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        let _ = listener;
        false
    }
}

impl<S: KeyStore + ?Sized> KeyStore for Arc<S> {
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).insert(record)
    }
    fn get(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        (**self).get(id)
    }
    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        (**self).list(org)
    }
    fn update(
        &self,
        record: KeyRecord,
        expected_revision: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).update(record, expected_revision)
    }
    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).delete(id)
    }
    fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        (**self).scan(after, limit)
    }
    fn touch(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).touch(id, at)
    }
    fn touch_many(
        &self,
        uses: &[(KeyId, OffsetDateTime)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).touch_many(uses)
    }
    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        (**self).changes(listener)
    }
}

/// A boxed future, as the object-safe [`DynKeyStore`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe twin of [`KeyStore`], implemented for every `KeyStore`. Wrap a store
/// chosen at run time in [`AnyStore`] to use it with [`KeyManager`](crate::KeyManager).
#[allow(missing_docs)]
pub trait DynKeyStore: Send + Sync {
    fn dyn_insert(&self, record: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    fn dyn_get<'a>(&'a self, id: &'a KeyId)
    -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>>;
    fn dyn_list<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<Vec<KeyRecord>, StoreError>>;
    fn dyn_update(
        &self,
        record: KeyRecord,
        expected_revision: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    fn dyn_delete<'a>(&'a self, id: &'a KeyId) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn dyn_scan<'a>(
        &'a self,
        after: Option<&'a KeyId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<KeyRecord>, StoreError>>;
    fn dyn_touch<'a>(
        &'a self,
        id: &'a KeyId,
        at: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn dyn_touch_many<'a>(
        &'a self,
        uses: &'a [(KeyId, OffsetDateTime)],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn dyn_changes(&self, listener: Weak<dyn ChangeListener>) -> bool;
}

impl<S: KeyStore> DynKeyStore for S {
    fn dyn_insert(&self, record: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.insert(record))
    }
    fn dyn_get<'a>(
        &'a self,
        id: &'a KeyId,
    ) -> BoxFuture<'a, Result<Option<KeyRecord>, StoreError>> {
        Box::pin(self.get(id))
    }
    fn dyn_list<'a>(&'a self, org: &'a OrgId) -> BoxFuture<'a, Result<Vec<KeyRecord>, StoreError>> {
        Box::pin(self.list(org))
    }
    fn dyn_update(
        &self,
        record: KeyRecord,
        expected_revision: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.update(record, expected_revision))
    }
    fn dyn_delete<'a>(&'a self, id: &'a KeyId) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.delete(id))
    }
    fn dyn_scan<'a>(
        &'a self,
        after: Option<&'a KeyId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<KeyRecord>, StoreError>> {
        Box::pin(self.scan(after, limit))
    }
    fn dyn_touch<'a>(
        &'a self,
        id: &'a KeyId,
        at: OffsetDateTime,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.touch(id, at))
    }
    fn dyn_touch_many<'a>(
        &'a self,
        uses: &'a [(KeyId, OffsetDateTime)],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.touch_many(uses))
    }
    fn dyn_changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        self.changes(listener)
    }
}

/// A store chosen at run time (e.g. from configuration), behind one type.
///
/// ```
/// use api_keys::{AnyStore, MemoryStore};
/// let store = AnyStore::new(MemoryStore::new());
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct AnyStore(Arc<dyn DynKeyStore>);

impl AnyStore {
    /// Boxes `store`.
    pub fn new(store: impl KeyStore + 'static) -> Self {
        AnyStore(Arc::new(store))
    }
}

impl std::fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnyStore")
    }
}

// The futures own what they need (an `Arc` of the store and copies of the small arguments),
// so they borrow nothing.
impl KeyStore for AnyStore {
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        let s = self.0.clone();
        async move { s.dyn_insert(record).await }
    }
    fn get(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        let (s, id) = (self.0.clone(), *id);
        async move { s.dyn_get(&id).await }
    }
    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        let (s, org) = (self.0.clone(), org.clone());
        async move { s.dyn_list(&org).await }
    }
    fn update(
        &self,
        record: KeyRecord,
        expected_revision: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let s = self.0.clone();
        async move { s.dyn_update(record, expected_revision).await }
    }
    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let (s, id) = (self.0.clone(), *id);
        async move { s.dyn_delete(&id).await }
    }
    fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        let (s, after) = (self.0.clone(), after.copied());
        async move { s.dyn_scan(after.as_ref(), limit).await }
    }
    fn touch(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (s, id) = (self.0.clone(), *id);
        async move { s.dyn_touch(&id, at).await }
    }
    fn touch_many(
        &self,
        uses: &[(KeyId, OffsetDateTime)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (s, uses) = (self.0.clone(), uses.to_vec());
        async move { s.dyn_touch_many(&uses).await }
    }
    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        self.0.dyn_changes(listener)
    }
}
