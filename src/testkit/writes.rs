//! Writes: `update` is compare-and-swap with one winner under concurrency, so is `insert` of
//! one id, `delete` removes, and a damaged row stays deletable.

use futures_util::future::join_all;

use super::{Check, fail, random_id, random_org, sample_record, store_err, t};
use crate::{KeyId, KeyRecord, KeyStore, StoreError, UserId};

/// `update` stores the record only when the revision matches, keeps `record.revision` as
/// given, is `Conflict` on a stale revision and `NotFound` for a missing row.
pub async fn update_is_compare_and_swap<S: KeyStore>(store: &S) -> Check {
    const C: &str = "update_is_compare_and_swap";
    let org = random_org();
    let rec = sample_record(random_id(), &org);
    store
        .insert(rec.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    let mut next = rec.clone();
    next.revision = rec.revision + 1;
    next.revoked_at = Some(t(1_750_000_000));
    next.revoked_by = Some(UserId::new("revoker"));
    store
        .update(next.clone(), rec.revision)
        .await
        .map_err(|e| store_err(C, "update", e))?;
    let got = store
        .get(&rec.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        got.as_ref() == Some(&next),
        "after update, get returned {got:?}, expected {next:?}"
    );
    let mut stale = rec.clone();
    stale.revision = rec.revision + 1;
    stale.name = "stale writer".into();
    match store.update(stale, rec.revision).await {
        Err(StoreError::Conflict) => {}
        r => {
            return Err(fail(
                C,
                format!("update with a stale revision returned {r:?}, expected Err(Conflict)"),
            ));
        }
    }
    let got = store
        .get(&rec.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        got.as_ref() == Some(&next),
        "a rejected update changed the record: {got:?}"
    );
    let ghost = sample_record(random_id(), &org);
    match store.update(ghost.clone(), ghost.revision).await {
        Err(StoreError::NotFound) => {}
        r => {
            return Err(fail(
                C,
                format!("update of a missing row returned {r:?}, expected Err(NotFound)"),
            ));
        }
    }
    let got = store
        .get(&ghost.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(C, got.is_none(), "update of a missing row created it");
    Ok(())
}

/// `delete` returns `true` once, then `false`; the record is gone from `get` and `list`, and
/// every other record (of the same organization too) is still there.
pub async fn delete_removes<S: KeyStore>(store: &S) -> Check {
    const C: &str = "delete_removes";
    let org = random_org();
    let rec = sample_record(random_id(), &org);
    let sibling = sample_record(random_id(), &org);
    for r in [&rec, &sibling] {
        store
            .insert(r.clone())
            .await
            .map_err(|e| store_err(C, "insert", e))?;
    }
    let first = store
        .delete(&rec.id)
        .await
        .map_err(|e| store_err(C, "delete", e))?;
    ensure!(C, first, "delete of an existing row returned false");
    let second = store
        .delete(&rec.id)
        .await
        .map_err(|e| store_err(C, "delete", e))?;
    ensure!(C, !second, "second delete returned true");
    let got = store
        .get(&rec.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(C, got.is_none(), "deleted record still returned by get");
    let listed = store
        .list(&org)
        .await
        .map_err(|e| store_err(C, "list", e))?;
    ensure!(
        C,
        !listed.iter().any(|r| r.id == rec.id),
        "deleted record still listed: {listed:?}"
    );
    // A `DELETE` whose `WHERE` names the wrong column (the organization) removes every key
    // of the organization with the one asked for.
    ensure!(
        C,
        listed == [sibling.clone()],
        "deleting one record changed its organization's others: list returned {listed:?}"
    );
    let kept = store
        .get(&sibling.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        kept.as_ref() == Some(&sibling),
        "deleting one record removed another of its organization: get returned {kept:?}"
    );
    Ok(())
}

/// Eight updates of `rec`, each expecting its revision and naming its writer.
fn rival_updates(rec: &KeyRecord) -> Vec<KeyRecord> {
    (0..8)
        .map(|i| {
            let mut r = rec.clone();
            r.revision = rec.revision + 1;
            r.name = format!("writer {i}");
            r
        })
        .collect()
}

/// Eight concurrent `update`s expecting the same revision: exactly one wins, the others get
/// `Conflict`, and the stored record is the winner's.
pub async fn concurrent_updates_have_one_winner<S: KeyStore>(store: &S) -> Check {
    const C: &str = "concurrent_updates_have_one_winner";
    let org = random_org();
    let rec = sample_record(random_id(), &org);
    store
        .insert(rec.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    let candidates = rival_updates(&rec);
    let results = join_all(
        candidates
            .iter()
            .map(|r| store.update(r.clone(), rec.revision)),
    )
    .await;
    let mut winners = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(()) => winners.push(i),
            Err(StoreError::Conflict) => {}
            Err(e) => return Err(store_err(C, "a concurrent update", e)),
        }
    }
    ensure!(
        C,
        winners.len() == 1,
        "{} of 8 concurrent updates won: {winners:?}",
        winners.len()
    );
    let got = store
        .get(&rec.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        got.as_ref() == Some(&candidates[winners[0]]),
        "stored record {got:?} is not the winner's"
    );
    Ok(())
}

/// Eight concurrent `insert`s of one new id: exactly one wins, the others get `Duplicate`
/// (not a backend error: the manager retries a new id on `Duplicate` alone), and the stored
/// record is the winner's (a look-up followed by a write lets every insert "win", the last
/// overwriting the others).
pub async fn concurrent_inserts_have_one_winner<S: KeyStore>(store: &S) -> Check {
    const C: &str = "concurrent_inserts_have_one_winner";
    let org = random_org();
    let id = random_id();
    let candidates: Vec<KeyRecord> = (0..8)
        .map(|i| {
            let mut r = sample_record(id, &org);
            r.name = format!("inserter {i}");
            r
        })
        .collect();
    let results = join_all(candidates.iter().map(|r| store.insert(r.clone()))).await;
    let mut winners = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(()) => winners.push(i),
            Err(StoreError::Duplicate) => {}
            Err(e) => return Err(store_err(C, "a concurrent insert of one id", e)),
        }
    }
    ensure!(
        C,
        winners.len() == 1,
        "{} of 8 concurrent inserts of one id succeeded: {winners:?}",
        winners.len()
    );
    let got = store.get(&id).await.map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        got.as_ref() == Some(&candidates[winners[0]]),
        "stored record {got:?} is not the winner's"
    );
    Ok(())
}

/// [`concurrent_updates_have_one_winner`] and [`concurrent_inserts_have_one_winner`] with the
/// writes split between two handles on the same database (`other`: another connection, as
/// another node opens it): exactly one `update` expecting a revision and one `insert` of an
/// id win, the others get `Conflict` and `Duplicate`; and a use recorded through `other`
/// (`touch`, `touch_many`) racing a revoke through `store` leaves the key revoked. A
/// compare-and-swap (or a last use written as a read and a write of the record) made atomic
/// by a lock of the handle passes [`run`](super::run), while two nodes' writes both win: a
/// revoke on one node is overwritten by a change of limits or a use on another, made from the
/// record before the revoke.
///
/// Not part of [`run`](super::run), which has one handle.
///
/// # Errors
/// A [`Failure`](super::Failure) naming `writes_are_atomic_across_handles`.
pub async fn writes_are_atomic_across_handles<S: KeyStore, O: KeyStore>(
    store: &S,
    other: &O,
) -> Check {
    const C: &str = "writes_are_atomic_across_handles";
    let org = random_org();
    let rec = sample_record(random_id(), &org);
    store
        .insert(rec.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    let updates = rival_updates(&rec);
    let inserts: Vec<KeyRecord> = (0..8)
        .map(|i| {
            let mut r = sample_record(random_id(), &org);
            r.name = format!("inserter {i}");
            r
        })
        .collect();
    let id = inserts[0].id;
    let inserts: Vec<KeyRecord> = inserts
        .into_iter()
        .map(|mut r| {
            r.id = id;
            r
        })
        .collect();
    for (what, expected, candidates) in [
        ("update", StoreError::Conflict, &updates),
        ("insert", StoreError::Duplicate, &inserts),
    ] {
        let write = |i: usize| {
            let r = candidates[i].clone();
            let update = what == "update";
            async move {
                match (i % 2, update) {
                    (0, true) => store.update(r, rec.revision).await,
                    (_, true) => other.update(r, rec.revision).await,
                    (0, false) => store.insert(r).await,
                    (_, false) => other.insert(r).await,
                }
            }
        };
        let results = join_all((0..8).map(write)).await;
        let mut winners = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => winners.push(i),
                Err(e) if std::mem::discriminant(&e) == std::mem::discriminant(&expected) => {}
                Err(e) => return Err(store_err(C, &format!("a concurrent {what}"), e)),
            }
        }
        ensure!(
            C,
            winners.len() == 1,
            "{} of 8 concurrent {what}s through two handles won: {winners:?}",
            winners.len()
        );
        let got = store
            .get(&candidates[0].id)
            .await
            .map_err(|e| store_err(C, "get", e))?;
        ensure!(
            C,
            got.as_ref() == Some(&candidates[winners[0]]),
            "after concurrent {what}s through two handles, the stored record {got:?} is not \
             the winner's"
        );
    }
    // A use recorded by one node racing a revoke by another: the revocation survives.
    for many in [false, true] {
        super::last_use::use_racing_a_revoke(store, other, C, &org, many).await?;
    }
    Ok(())
}

/// One damaged row never fails a whole read, and can still be deleted by its id.
///
/// Not part of [`run`](super::run): it needs `damage`, a hook that damages the stored row of
/// the given id in the store's own backend (for a SQL store, e.g. bump its `revision` column
/// so that it disagrees with the serialized record, or write JSON that does not decode).
/// Afterwards `get`, `list` and `scan` must still succeed and still name the row's id (as the
/// record, or as a [`KeyRecord::undecodable`] placeholder that the manager reports and leaves
/// out), the other rows must come back intact, and `delete` must remove the row.
///
/// # Errors
/// A [`Failure`](super::Failure) naming `damaged_rows_stay_deletable`.
pub async fn damaged_rows_stay_deletable<S, F, Fut>(store: &S, damage: F) -> Check
where
    S: KeyStore,
    F: FnOnce(KeyId) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const C: &str = "damaged_rows_stay_deletable";
    let org = random_org();
    let bad = sample_record(random_id(), &org);
    let good = sample_record(random_id(), &org);
    for r in [&bad, &good] {
        store
            .insert(r.clone())
            .await
            .map_err(|e| store_err(C, "insert", e))?;
    }
    damage(bad.id).await;
    let got = store
        .get(&bad.id)
        .await
        .map_err(|e| store_err(C, "get of the damaged row", e))?;
    ensure!(
        C,
        got.as_ref().is_some_and(|r| r.id == bad.id),
        "get of the damaged row returned {got:?}"
    );
    let listed = store
        .list(&org)
        .await
        .map_err(|e| store_err(C, "list of an organization with a damaged row", e))?;
    ensure!(
        C,
        listed.iter().any(|r| r.id == bad.id) && listed.contains(&good),
        "list lost a row: {listed:?}"
    );
    let mut seen_bad = false;
    let mut seen_good = false;
    let mut after = None;
    loop {
        let page = store
            .scan(after.as_ref(), 100)
            .await
            .map_err(|e| store_err(C, "scan over a damaged row", e))?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen_bad |= page.iter().any(|r| r.id == bad.id);
        seen_good |= page.contains(&good);
    }
    ensure!(C, seen_bad && seen_good, "scan lost a row");
    let removed = store
        .delete(&bad.id)
        .await
        .map_err(|e| store_err(C, "delete of the damaged row", e))?;
    ensure!(C, removed, "delete of the damaged row returned false");
    let gone = store
        .get(&bad.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(C, gone.is_none(), "the damaged row is still there");
    store
        .delete(&good.id)
        .await
        .map_err(|e| store_err(C, "delete", e))?;
    Ok(())
}
