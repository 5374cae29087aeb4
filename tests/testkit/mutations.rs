//! Plausible broken stores, each a `MemoryStore` with one written duty broken the way a
//! host's own SQL might break it, that the suite must catch (and the same wrapper with
//! nothing broken, that it must pass).

use std::sync::{Arc, Mutex, Weak};

use api_keys::testkit::{self, Failure};
use api_keys::time::OffsetDateTime;
use api_keys::{
    Change, ChangeKind, ChangeListener, KeyId, KeyRecord, KeyStore, MemoryStore, OrgId, StoreError,
};

/// The one duty a [`Mutant`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    None,
    /// `DELETE FROM api_keys WHERE org = (SELECT org FROM api_keys WHERE id = $1)`: deleting
    /// one key deletes every key of its organization.
    DeleteRemovesWholeOrg,
    /// `touch` reads the whole record, raises its last use and writes it all back (a store
    /// of serialized records without a column to update alone): a revocation landing between
    /// the read and the write is undone.
    TouchReadModifyWrite,
    /// `touch_many` does the same, use by use.
    TouchManyReadModifyWrite,
    /// `list` compares organization ids ignoring letter case and trailing spaces (MySQL's
    /// default collations of a text column): `acme` is listed with `ACME` and `acme `.
    ListFoldsOrgCase,
    /// `touch_many` keeps one use per id, the last of the batch (an `UPDATE ... FROM
    /// (VALUES ...)` without a `max` per id), instead of the latest.
    TouchManyKeepsLastOfEachId,
    /// The primary key is `(org, id)`: an insert of an existing id in another organization
    /// succeeds, and `get` of the id goes on returning the first row.
    UniqueOnlyWithinOrg,
    /// The change feed's trigger fires on `INSERT OR DELETE` only: a revoke (an update) is
    /// never reported, so other nodes go on accepting the key from their caches.
    FeedDropsUpdates,
    /// The trigger reports `OLD.revision` instead of `NEW.revision` for an update.
    FeedReportsOldRevision,
    /// `update` leaves the seal (key version, IV, ciphertext, tags) as inserted (a
    /// column-mapped store that takes the sealed secret for immutable): every change the
    /// manager reseals (revoke, limits, rewrap) is stored under the old seal.
    UpdateKeepsSeal,
    /// `update` leaves `expires_at` as inserted (a column left out of the `UPDATE`): a roll's
    /// shortened expiry of the old key is lost.
    UpdateKeepsExpiry,
    /// `touch_many` loses the first use of each batch (a loop from 1 where 0 was meant): a key
    /// used once per flush interval never gets its last use, and the sweep revokes it as
    /// unused.
    TouchManyDropsFirst,
    /// `touch_many` loses the last use of each batch (a loop to `len - 1`).
    TouchManyDropsLast,
    /// `list` returns at most 100 records (a query with an ORM's default page size, or the
    /// first page of a paged API): offboarding, rolls and the active-key limit miss the rest
    /// of a large organization's keys.
    ListReturnsOnePage,
    /// `insert` looks the id up, then writes the row in a second statement (an upsert, or a
    /// write to a map): of two inserts of one id at once, both succeed and the later
    /// overwrites the earlier.
    InsertChecksThenWrites,
    /// The same look-up first, and the loser of two inserts at once meets the primary key's
    /// unique violation, reported as a backend error instead of `Duplicate`.
    InsertRaceIsBackendError,
    /// `touch_many` binds two parameters per use in one statement, past SQLite's old limit of
    /// 999 variables for a batch of 500 uses or more: it fails, the manager keeps the batch
    /// and tries again at each flush, and no last use is recorded any more.
    TouchManyFailsLargeBatches,
    /// `touch_many` writes the first chunk of 1 000 uses and forgets the rest.
    TouchManyWritesOneChunk,
    /// The feed keeps one listener, the latest (`changes` replaces it): of two managers on one
    /// store (two key classes), the first never hears of a revoke again.
    FeedKeepsOneListener,
    /// Breaks no duty: the feed drops once at the first update (`disconnected`, the update
    /// unreported, then `connected` again), as a real feed does under load or a restart.
    FeedDropsOnce,
}

/// A `MemoryStore` with one [`Mutation`] (its change feed passed on through [`Relay`]s).
struct Mutant {
    inner: MemoryStore,
    mutation: Mutation,
    relays: Mutex<Vec<Arc<Relay>>>,
}

impl Mutant {
    fn new(mutation: Mutation) -> Self {
        Mutant {
            inner: MemoryStore::new(),
            mutation,
            relays: Mutex::default(),
        }
    }
}

/// Passes the inner store's feed on to a subscriber, as the [`Mutation`] says.
struct Relay {
    to: Weak<dyn ChangeListener>,
    mutation: Mutation,
    dropped: std::sync::atomic::AtomicBool,
}

impl ChangeListener for Relay {
    fn changed(&self, mut change: Change) {
        match (self.mutation, change.kind) {
            (Mutation::FeedDropsUpdates, ChangeKind::Updated) => return,
            (Mutation::FeedReportsOldRevision, ChangeKind::Updated) => change.revision -= 1,
            (Mutation::FeedDropsOnce, ChangeKind::Updated)
                if !self.dropped.swap(true, std::sync::atomic::Ordering::SeqCst) =>
            {
                if let Some(l) = self.to.upgrade() {
                    l.disconnected();
                    l.connected();
                }
                return;
            }
            _ => {}
        }
        if let Some(l) = self.to.upgrade() {
            l.changed(change);
        }
    }
    fn connected(&self) {
        if let Some(l) = self.to.upgrade() {
            l.connected();
        }
    }
    fn disconnected(&self) {
        if let Some(l) = self.to.upgrade() {
            l.disconnected();
        }
    }
}

impl KeyStore for Mutant {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        if self.mutation == Mutation::UniqueOnlyWithinOrg
            && self
                .inner
                .get(&record.id)
                .await?
                .is_some_and(|r| r.org != record.org)
        {
            // A second row, which `get` (reading the first) never returns.
            return Ok(());
        }
        if matches!(
            self.mutation,
            Mutation::InsertChecksThenWrites | Mutation::InsertRaceIsBackendError
        ) {
            if self.inner.get(&record.id).await?.is_some() {
                return Err(StoreError::Duplicate);
            }
            // The second round trip.
            tokio::task::yield_now().await;
            return match self.inner.insert(record.clone()).await {
                // An upsert: the row found there is replaced.
                Err(StoreError::Duplicate) if self.mutation == Mutation::InsertChecksThenWrites => {
                    self.inner.overwrite_unchecked(record);
                    Ok(())
                }
                Err(StoreError::Duplicate) => Err(StoreError::backend("unique violation")),
                r => r,
            };
        }
        self.inner.insert(record).await
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(id).await
    }

    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        if self.mutation == Mutation::ListReturnsOnePage {
            let mut all = self.inner.list(org).await?;
            all.truncate(100);
            return Ok(all);
        }
        if self.mutation != Mutation::ListFoldsOrgCase {
            return self.inner.list(org).await;
        }
        let folded = |o: &OrgId| o.as_str().trim_end_matches(' ').to_lowercase();
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.inner.scan(after.as_ref(), 100).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            out.extend(page.into_iter().filter(|r| folded(&r.org) == folded(org)));
        }
        Ok(out)
    }

    async fn update(&self, mut record: KeyRecord, expected: u64) -> Result<(), StoreError> {
        if let Some(stored) = self.inner.get(&record.id).await? {
            match self.mutation {
                Mutation::UpdateKeepsSeal => record.sealed = stored.sealed,
                Mutation::UpdateKeepsExpiry => record.expires_at = stored.expires_at,
                _ => {}
            }
        }
        self.inner.update(record, expected).await
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        if self.mutation == Mutation::DeleteRemovesWholeOrg
            && let Some(rec) = self.inner.get(id).await?
        {
            for r in self.inner.list(&rec.org).await? {
                self.inner.delete(&r.id).await?;
            }
            return Ok(true);
        }
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
        if self.mutation == Mutation::TouchReadModifyWrite {
            return self.read_modify_write(id, at).await;
        }
        self.inner.touch(id, at).await
    }

    async fn touch_many(&self, uses: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError> {
        if self.mutation == Mutation::TouchManyReadModifyWrite {
            for (id, at) in uses {
                self.read_modify_write(id, *at).await?;
            }
            return Ok(());
        }
        if self.mutation == Mutation::TouchManyKeepsLastOfEachId {
            let last: std::collections::BTreeMap<KeyId, OffsetDateTime> =
                uses.iter().copied().collect();
            for (id, at) in last {
                self.inner.touch(&id, at).await?;
            }
            return Ok(());
        }
        match self.mutation {
            Mutation::TouchManyFailsLargeBatches if uses.len() >= 500 => {
                Err(StoreError::backend("too many SQL variables"))
            }
            Mutation::TouchManyWritesOneChunk => {
                self.inner.touch_many(&uses[..uses.len().min(1_000)]).await
            }
            Mutation::TouchManyDropsFirst => {
                self.inner.touch_many(&uses[1.min(uses.len())..]).await
            }
            Mutation::TouchManyDropsLast => {
                self.inner
                    .touch_many(&uses[..uses.len().saturating_sub(1)])
                    .await
            }
            _ => self.inner.touch_many(uses).await,
        }
    }

    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        let relay = Arc::new(Relay {
            to: listener,
            mutation: self.mutation,
            dropped: Default::default(),
        });
        let weak: Weak<dyn ChangeListener> = Arc::downgrade(&relay) as Weak<dyn ChangeListener>;
        let mut relays = self.relays.lock().unwrap();
        if self.mutation == Mutation::FeedKeepsOneListener {
            relays.clear();
        }
        relays.push(relay);
        drop(relays);
        self.inner.changes(weak)
    }
}

impl Mutant {
    /// A last use written as a read of the whole record and a write of it back, with a round
    /// trip (here a yield) in between.
    async fn read_modify_write(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        let Some(mut rec) = self.inner.get(id).await? else {
            return Ok(());
        };
        tokio::task::yield_now().await;
        if rec.last_used_at.is_none_or(|p| p < at) {
            rec.last_used_at = Some(at);
        }
        self.inner.overwrite_unchecked(rec);
        Ok(())
    }
}

async fn failure_of(mutation: Mutation) -> Failure {
    match testkit::run(&Mutant::new(mutation)).await {
        Err(f) => f,
        Ok(()) => panic!("the test kit passed a store with {mutation:?}"),
    }
}

#[tokio::test]
async fn the_unmutated_wrapper_conforms() {
    testkit::run(&Mutant::new(Mutation::None)).await.unwrap();
}

#[tokio::test]
async fn a_delete_that_removes_the_whole_organization_is_caught() {
    let f = failure_of(Mutation::DeleteRemovesWholeOrg).await;
    assert_eq!(f.check, "delete_removes", "reported as: {f}");
}

#[tokio::test]
async fn a_touch_that_rewrites_the_whole_record_is_caught() {
    let f = failure_of(Mutation::TouchReadModifyWrite).await;
    assert_eq!(f.check, "touch_only_raises_last_use", "reported as: {f}");
    let f = failure_of(Mutation::TouchManyReadModifyWrite).await;
    assert_eq!(
        f.check, "touch_many_raises_each_last_use",
        "reported as: {f}"
    );
}

#[tokio::test]
async fn a_list_that_folds_organization_case_is_caught() {
    let f = failure_of(Mutation::ListFoldsOrgCase).await;
    assert_eq!(f.check, "list_is_isolated_by_org", "reported as: {f}");
}

#[tokio::test]
async fn a_touch_many_that_keeps_the_last_use_of_an_id_is_caught() {
    let f = failure_of(Mutation::TouchManyKeepsLastOfEachId).await;
    assert_eq!(
        f.check, "touch_many_raises_each_last_use",
        "reported as: {f}"
    );
}

#[tokio::test]
async fn an_id_unique_only_within_its_organization_is_caught() {
    let f = failure_of(Mutation::UniqueOnlyWithinOrg).await;
    assert_eq!(f.check, "insert_get_and_duplicate", "reported as: {f}");
}

#[tokio::test]
async fn a_change_feed_that_misses_revokes_or_misreports_revisions_is_caught() {
    for mutation in [Mutation::FeedDropsUpdates, Mutation::FeedReportsOldRevision] {
        let f = failure_of(mutation).await;
        assert_eq!(
            f.check, "change_feed_reports_every_write",
            "{mutation:?} reported as: {f}"
        );
    }
}

#[tokio::test]
async fn an_update_that_keeps_the_seal_or_the_expiry_is_caught() {
    for mutation in [Mutation::UpdateKeepsSeal, Mutation::UpdateKeepsExpiry] {
        let f = failure_of(mutation).await;
        assert_eq!(
            f.check, "reads_follow_every_write",
            "{mutation:?} reported as: {f}"
        );
    }
}

#[tokio::test]
async fn a_touch_many_that_loses_the_first_or_last_use_of_a_batch_is_caught() {
    for mutation in [Mutation::TouchManyDropsFirst, Mutation::TouchManyDropsLast] {
        let f = failure_of(mutation).await;
        assert_eq!(
            f.check, "touch_many_raises_each_last_use",
            "{mutation:?} reported as: {f}"
        );
    }
}

#[tokio::test]
async fn a_list_that_returns_one_page_is_caught() {
    let f = failure_of(Mutation::ListReturnsOnePage).await;
    assert_eq!(f.check, "list_returns_every_record", "reported as: {f}");
}

#[tokio::test]
async fn an_insert_that_looks_up_then_writes_is_caught() {
    for mutation in [
        Mutation::InsertChecksThenWrites,
        Mutation::InsertRaceIsBackendError,
    ] {
        let f = failure_of(mutation).await;
        assert_eq!(
            f.check, "concurrent_inserts_have_one_winner",
            "{mutation:?} reported as: {f}"
        );
    }
}

#[tokio::test]
async fn a_touch_many_that_cannot_write_a_large_batch_is_caught() {
    for mutation in [
        Mutation::TouchManyFailsLargeBatches,
        Mutation::TouchManyWritesOneChunk,
    ] {
        let f = failure_of(mutation).await;
        assert_eq!(
            f.check, "touch_many_raises_each_last_use",
            "{mutation:?} reported as: {f}"
        );
    }
}

#[tokio::test]
async fn a_change_feed_that_keeps_one_listener_is_caught() {
    let f = failure_of(Mutation::FeedKeepsOneListener).await;
    assert_eq!(
        f.check, "change_feed_reports_every_write",
        "reported as: {f}"
    );
}

/// A feed may drop (`disconnected`: changes may go unreported until `connected`) — under load,
/// at a server restart — and a cache then empties itself: a store whose feed dropped once
/// during the check is correct, and the check must try its writes again rather than fail it.
#[tokio::test]
async fn a_change_feed_that_drops_once_and_reconnects_conforms() {
    testkit::change_feed_reports_every_write(&Mutant::new(Mutation::FeedDropsOnce))
        .await
        .unwrap();
}

/// A store whose feed reports only the writes made through its own handle (listeners kept in
/// process, called after each write), over a database (here a `MemoryStore`) that every
/// handle — every node — shares: the other nodes never hear of a revoke.
struct OwnWritesFeed {
    shared: MemoryStore,
    listeners: Mutex<Vec<Weak<dyn ChangeListener>>>,
}

impl OwnWritesFeed {
    fn new(shared: &MemoryStore) -> Self {
        OwnWritesFeed {
            shared: shared.clone(),
            listeners: Mutex::default(),
        }
    }

    fn tell(&self, id: KeyId, revision: u64, kind: ChangeKind) {
        for l in self.listeners.lock().unwrap().iter() {
            if let Some(l) = l.upgrade() {
                l.changed(Change { id, revision, kind });
            }
        }
    }
}

impl KeyStore for OwnWritesFeed {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let (id, revision) = (record.id, record.revision);
        self.shared.insert(record).await?;
        self.tell(id, revision, ChangeKind::Inserted);
        Ok(())
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.shared.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.shared.list(org).await
    }
    async fn update(&self, record: KeyRecord, expected: u64) -> Result<(), StoreError> {
        let (id, revision) = (record.id, record.revision);
        self.shared.update(record, expected).await?;
        self.tell(id, revision, ChangeKind::Updated);
        Ok(())
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        let removed = self.shared.delete(id).await?;
        if removed {
            self.tell(*id, 0, ChangeKind::Deleted);
        }
        Ok(removed)
    }
    async fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.shared.scan(after, limit).await
    }
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        self.shared.touch(id, at).await
    }
    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        if let Some(l) = listener.upgrade() {
            l.connected();
        }
        self.listeners.lock().unwrap().push(listener);
        true
    }
}

/// `run` cannot see it (every write it makes goes through the handle it listens on); the
/// check given a second handle does. A `MemoryStore`'s clones share one feed, as every node
/// of a database with a real feed hears every write.
#[tokio::test]
async fn a_change_feed_of_its_own_writes_only_is_caught_with_a_second_handle() {
    let shared = MemoryStore::new();
    let (node_a, node_b) = (OwnWritesFeed::new(&shared), OwnWritesFeed::new(&shared));
    testkit::run(&node_a).await.unwrap();
    let f = testkit::change_feed_reports_writes_of_other_handles(&node_a, &node_b)
        .await
        .expect_err("a feed of its own writes only passed");
    assert_eq!(
        f.check, "change_feed_reports_writes_of_other_handles",
        "reported as: {f}"
    );
    let memory = MemoryStore::new();
    testkit::change_feed_reports_writes_of_other_handles(&memory, &memory.clone())
        .await
        .unwrap();
}
