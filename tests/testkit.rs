//! The conformance suite passes on our in-memory store (and its adapters), and catches each
//! deliberately broken duty of a faulty store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use api_keys::testkit::{self, Failure};
use api_keys::time::OffsetDateTime;
use api_keys::{
    AnyStore, KeyId, KeyRecord, KeyStore, MemoryStore, OrgId, RevocationReason, StoreError,
};

#[tokio::test]
async fn memory_store_conforms() {
    testkit::run(&MemoryStore::new()).await.unwrap();
    testkit::run(&Arc::new(MemoryStore::new())).await.unwrap();
    testkit::run(&AnyStore::new(MemoryStore::new()))
        .await
        .unwrap();
    // A store already holding other data conforms too (the suite uses its own random ids).
    let shared = MemoryStore::new();
    testkit::run(&shared).await.unwrap();
    testkit::run(&shared).await.unwrap();
    // A row damaged behind the store's back (here: a tampered tag) is still read and deleted.
    let store = MemoryStore::new();
    let damaging = store.clone();
    testkit::damaged_rows_stay_deletable(&store, |id| async move {
        let mut rec = damaging.get(&id).await.unwrap().unwrap();
        rec.sealed.tag[0] ^= 1;
        damaging.overwrite_unchecked(rec);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms_on_a_multi_threaded_runtime() {
    testkit::run(&MemoryStore::new()).await.unwrap();
}

/// One broken duty at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    InsertOverwrites,
    UpdateIgnoresRevision,
    UpdateBumpsRevisionItself,
    UpdateUpserts,
    DeleteAlwaysTrue,
    ListLeaksOtherOrgs,
    ScanIncludesAfter,
    ScanUnordered,
    IdsCaseInsensitive,
    TouchBumpsRevision,
    TouchLowersLastUse,
    TouchRewritesStaleRecord,
    TouchCreatesRow,
    CasNotAtomic,
    LosesUnicode,
    /// `get` answers from a read cache that only `touch` clears.
    GetCachesReads,
    /// `list` and `scan` serve the copies written by `insert`.
    ListAndScanServeInsertedCopies,
    /// The sweep's notice marks are not stored.
    DropsNotices,
    /// The revocation reason, owner and metadata are not stored.
    DropsRevocationOwnerMeta,
    /// `update` clears `last_used_at`.
    UpdateClearsLastUse,
    /// `scan` still returns deleted rows.
    ScanKeepsDeleted,
    /// The revocation is stored as "revoked" plus an optional leak source (a column-mapped
    /// store written before the other reasons existed): any other reason reads back as
    /// `Manual`.
    CollapsesRevocationReasons,
    /// Text longer than 255 bytes is cut to 255 (a `VARCHAR(255)` column that truncates).
    TruncatesLongText,
    /// `touch_many` stops at the first id that has no row (a Lua loop's `return` where a
    /// `continue` was meant): the uses after it are lost.
    TouchManyStopsAtMissingRow,
}

/// A deliberately faulty store: a `BTreeMap` behind a mutex, with one duty broken.
#[derive(Clone)]
struct Faulty {
    fault: Fault,
    rows: Arc<Mutex<BTreeMap<String, KeyRecord>>>,
    /// Snapshot taken at insert, used by the stale read-modify-write `touch`.
    snapshots: Arc<Mutex<BTreeMap<String, KeyRecord>>>,
    /// `get`'s read cache ([`Fault::GetCachesReads`]).
    cache: Arc<Mutex<BTreeMap<String, KeyRecord>>>,
}

impl Faulty {
    fn new(fault: Fault) -> Self {
        Faulty {
            fault,
            rows: Arc::default(),
            snapshots: Arc::default(),
            cache: Arc::default(),
        }
    }

    fn key(&self, id: &KeyId) -> String {
        if self.fault == Fault::IdsCaseInsensitive {
            id.to_string().to_lowercase()
        } else {
            id.to_string()
        }
    }

    fn stored(&self, mut r: KeyRecord) -> KeyRecord {
        match self.fault {
            Fault::LosesUnicode => r.name = r.name.chars().filter(char::is_ascii).collect(),
            Fault::DropsNotices => r.notices = Default::default(),
            Fault::DropsRevocationOwnerMeta => {
                r.revocation = None;
                r.owner = None;
                r.meta.clear();
            }
            Fault::CollapsesRevocationReasons => {
                let other = !matches!(r.revocation, None | Some(RevocationReason::Leaked { .. }));
                if other {
                    r.revocation = Some(RevocationReason::Manual);
                }
            }
            Fault::TruncatesLongText => {
                fn cut(s: &mut String) {
                    let mut n = s.len().min(255);
                    while !s.is_char_boundary(n) {
                        n -= 1;
                    }
                    s.truncate(n);
                }
                cut(&mut r.name);
                r.meta.values_mut().for_each(cut);
            }
            _ => {}
        }
        r
    }
}

impl KeyStore for Faulty {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let k = self.key(&record.id);
        let mut rows = self.rows.lock().unwrap();
        if rows.contains_key(&k) && self.fault != Fault::InsertOverwrites {
            return Err(StoreError::Duplicate);
        }
        self.snapshots
            .lock()
            .unwrap()
            .insert(k.clone(), record.clone());
        rows.insert(k, self.stored(record));
        Ok(())
    }

    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let k = self.key(id);
        if self.fault == Fault::GetCachesReads
            && let Some(r) = self.cache.lock().unwrap().get(&k)
        {
            return Ok(Some(r.clone()));
        }
        let r = self.rows.lock().unwrap().get(&k).cloned();
        if let Some(r) = &r {
            self.cache.lock().unwrap().insert(k, r.clone());
        }
        Ok(r)
    }

    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = if self.fault == Fault::ListAndScanServeInsertedCopies {
            self.snapshots.lock().unwrap()
        } else {
            self.rows.lock().unwrap()
        };
        let leak = self.fault == Fault::ListLeaksOtherOrgs;
        Ok(rows
            .values()
            .filter(|r| leak || &r.org == org)
            .cloned()
            .collect())
    }

    async fn update(&self, mut record: KeyRecord, expected: u64) -> Result<(), StoreError> {
        let k = self.key(&record.id);
        let current = self.rows.lock().unwrap().get(&k).map(|r| r.revision);
        match current {
            None if self.fault == Fault::UpdateUpserts => {}
            None => return Err(StoreError::NotFound),
            Some(rev) if rev != expected && self.fault != Fault::UpdateIgnoresRevision => {
                return Err(StoreError::Conflict);
            }
            Some(_) => {}
        }
        if self.fault == Fault::CasNotAtomic {
            // Check, then act after a suspension point: racing writers all pass the check.
            tokio::task::yield_now().await;
        }
        if self.fault == Fault::UpdateBumpsRevisionItself {
            record.revision = expected + 2;
        }
        if self.fault == Fault::UpdateClearsLastUse {
            record.last_used_at = None;
        }
        let record = self.stored(record);
        self.rows.lock().unwrap().insert(k, record);
        Ok(())
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        let k = self.key(id);
        let removed = self.rows.lock().unwrap().remove(&k).is_some();
        if self.fault != Fault::ScanKeepsDeleted {
            self.snapshots.lock().unwrap().remove(&k);
        }
        Ok(removed || self.fault == Fault::DeleteAlwaysTrue)
    }

    async fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut rows = self.rows.lock().unwrap().clone();
        match self.fault {
            Fault::ListAndScanServeInsertedCopies => rows = self.snapshots.lock().unwrap().clone(),
            Fault::ScanKeepsDeleted => {
                for (k, r) in self.snapshots.lock().unwrap().iter() {
                    rows.entry(k.clone()).or_insert_with(|| r.clone());
                }
            }
            _ => {}
        }
        let mut out: Vec<KeyRecord> = rows
            .values()
            .filter(|r| match after {
                None => true,
                Some(a) if self.fault == Fault::ScanIncludesAfter => r.id >= *a,
                Some(a) => r.id > *a,
            })
            .cloned()
            .collect();
        out.sort_by_key(|r| r.id);
        if self.fault == Fault::ScanUnordered {
            out.sort_by_key(|r| std::cmp::Reverse(r.id.to_string().to_lowercase()));
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        let k = self.key(id);
        self.cache.lock().unwrap().remove(&k);
        let mut rows = self.rows.lock().unwrap();
        let Some(row) = rows.get_mut(&k) else {
            if self.fault == Fault::TouchCreatesRow {
                let snap = self.snapshots.lock().unwrap().values().next().cloned();
                if let Some(mut r) = snap {
                    r.id = *id;
                    r.last_used_at = Some(at);
                    rows.insert(k, r);
                }
            }
            return Ok(());
        };
        match self.fault {
            Fault::TouchBumpsRevision => {
                row.revision += 1;
                row.last_used_at = Some(at);
            }
            Fault::TouchLowersLastUse => row.last_used_at = Some(at),
            Fault::TouchRewritesStaleRecord => {
                // Read-modify-write from an old snapshot: can un-revoke a key.
                let mut stale = self
                    .snapshots
                    .lock()
                    .unwrap()
                    .get(&k)
                    .cloned()
                    .unwrap_or(row.clone());
                stale.revision = row.revision;
                stale.last_used_at = Some(at);
                *row = stale;
            }
            _ => {
                if row.last_used_at.is_none_or(|p| p < at) {
                    row.last_used_at = Some(at);
                }
            }
        }
        Ok(())
    }

    async fn touch_many(&self, uses: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError> {
        for (id, at) in uses {
            if self.fault == Fault::TouchManyStopsAtMissingRow
                && !self.rows.lock().unwrap().contains_key(&self.key(id))
            {
                return Ok(());
            }
            self.touch(id, *at).await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_faulty_store_with_no_fault_switched_on_conforms() {
    // So every failure below is the fault's, not the harness's.
    testkit::run(&Faulty::new(Fault::None)).await.unwrap();
}

async fn failure_of(fault: Fault) -> Failure {
    match testkit::run(&Faulty::new(fault)).await {
        Err(f) => f,
        Ok(()) => panic!("the test kit did not notice {fault:?}"),
    }
}

#[tokio::test]
async fn the_kit_catches_each_fault() {
    let cases = [
        (Fault::InsertOverwrites, "insert_get_and_duplicate"),
        (Fault::LosesUnicode, "round_trip_is_exact"),
        (Fault::ListLeaksOtherOrgs, "list_is_isolated_by_org"),
        (Fault::UpdateIgnoresRevision, "update_is_compare_and_swap"),
        (
            Fault::UpdateBumpsRevisionItself,
            "update_is_compare_and_swap",
        ),
        (Fault::UpdateUpserts, "update_is_compare_and_swap"),
        (Fault::DeleteAlwaysTrue, "delete_removes"),
        (Fault::ScanIncludesAfter, "scan_pages_in_id_order"),
        (Fault::ScanUnordered, "scan_pages_in_id_order"),
        (Fault::IdsCaseInsensitive, "ids_compare_byte_for_byte"),
        (Fault::TouchBumpsRevision, "touch_only_raises_last_use"),
        (Fault::TouchLowersLastUse, "touch_only_raises_last_use"),
        (
            Fault::TouchRewritesStaleRecord,
            "touch_only_raises_last_use",
        ),
        (Fault::TouchCreatesRow, "touch_only_raises_last_use"),
        (Fault::CasNotAtomic, "concurrent_updates_have_one_winner"),
        (Fault::GetCachesReads, "reads_follow_every_write"),
        (
            Fault::ListAndScanServeInsertedCopies,
            "reads_follow_every_write",
        ),
        (Fault::DropsNotices, "reads_follow_every_write"),
        (Fault::DropsRevocationOwnerMeta, "reads_follow_every_write"),
        (Fault::UpdateClearsLastUse, "reads_follow_every_write"),
        (Fault::ScanKeepsDeleted, "reads_follow_every_write"),
        (
            Fault::CollapsesRevocationReasons,
            "every_value_shape_round_trips",
        ),
        (Fault::TruncatesLongText, "every_value_shape_round_trips"),
        (
            Fault::TouchManyStopsAtMissingRow,
            "touch_many_raises_each_last_use",
        ),
    ];
    for (fault, check) in cases {
        let f = failure_of(fault).await;
        assert_eq!(f.check, check, "{fault:?} was reported as: {f}");
        assert!(!f.message.is_empty());
    }
}

#[path = "testkit/mutations.rs"]
mod mutations;

#[path = "testkit/counter_mutations.rs"]
mod counter_mutations;

#[path = "testkit/handles.rs"]
mod handles;
