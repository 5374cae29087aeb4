//! Last use: `touch` and `touch_many` write only `last_used_at`, only upwards, never a row
//! that is not there, and never over a change made in between (a touch racing a revoke must
//! not un-revoke).

use futures_util::future::join;

use super::{Check, Failure, fail, random_id, random_org, sample_record, store_err, t};
use crate::{KeyId, KeyRecord, KeyStore, OrgId, UserId};

/// The stored record `id` of check `check`, which must still be there.
async fn read<S: KeyStore>(
    store: &S,
    check: &'static str,
    id: &KeyId,
) -> Result<KeyRecord, Failure> {
    store
        .get(id)
        .await
        .map_err(|e| store_err(check, "get", e))?
        .ok_or_else(|| fail(check, "record vanished"))
}

/// A use (`touch`, or `touch_many` if `many`, through `user`) and a revoking `update` of a
/// new record of `org` (through `store`), started together (the use first): the revocation
/// must survive, whichever lands first. A use written as a read of the whole record and a
/// write of it back un-revokes the key when the revocation lands in between.
pub(super) async fn use_racing_a_revoke<S: KeyStore, U: KeyStore>(
    store: &S,
    user: &U,
    check: &'static str,
    org: &OrgId,
    many: bool,
) -> Check {
    let rec = sample_record(random_id(), org);
    store
        .insert(rec.clone())
        .await
        .map_err(|e| store_err(check, "insert", e))?;
    let mut revoked = rec.clone();
    revoked.revision += 1;
    revoked.revoked_at = Some(t(1_711_000_000));
    revoked.revoked_by = Some(UserId::new("revoker"));
    let at = t(1_712_000_000);
    let using = async {
        if many {
            user.touch_many(&[(rec.id, at)]).await
        } else {
            user.touch(&rec.id, at).await
        }
    };
    let (used, updated) = join(using, store.update(revoked.clone(), rec.revision)).await;
    used.map_err(|e| store_err(check, "a use racing a revoke", e))?;
    updated.map_err(|e| store_err(check, "a revoke racing a use", e))?;
    let mut got = read(store, check, &rec.id).await?;
    // The use may land before the revoke (which then writes its own, older last use).
    if got.last_used_at == Some(at) {
        got.last_used_at = revoked.last_used_at;
    }
    ensure!(
        check,
        got == revoked,
        "a use racing a revoke left {got:?}, expected the revoked record {revoked:?}"
    );
    Ok(())
}

/// The uses in [`touch_many_raises_each_last_use`]'s large batch: a manager's default
/// last-use buffer.
const LARGE_BATCH: usize = 10_000;

/// `touch_many` does what `touch` does for each use of the batch: raises each
/// `last_used_at` (to the latest of its uses), never lowers one, never changes the revision,
/// never creates a row, skips a use of a missing row without dropping the others, loses
/// neither the first nor the last use of the batch, writes a batch of 10 000 uses (a
/// manager's default buffer), and does not un-revoke a key revoked while it runs.
pub async fn touch_many_raises_each_last_use<S: KeyStore>(store: &S) -> Check {
    const C: &str = "touch_many_raises_each_last_use";
    let org = random_org();
    let [a, b, first, last] = [(); 4].map(|()| sample_record(random_id(), &org));
    for r in [&a, &b, &first, &last] {
        store
            .insert(r.clone())
            .await
            .map_err(|e| store_err(C, "insert", e))?;
    }
    store
        .touch(&b.id, t(1_720_000_000))
        .await
        .map_err(|e| store_err(C, "touch", e))?;
    let ghost = random_id();
    // A missing row early on: the uses after it must still be written (a batch holds the ids
    // of keys deleted since their use, in any order). The first and the last use of the batch
    // are each a key's only one (a loop off by one at either end loses it).
    store
        .touch_many(&[
            (first.id, t(1_713_000_000)),
            (ghost, t(1_711_000_000)),
            (a.id, t(1_710_000_000)),
            (a.id, t(1_715_000_000)),
            (b.id, t(1_711_000_000)),
            // Not last, not first: a store that keeps either use of an id (a `VALUES` list
            // joined without a `max` per id) loses the latest.
            (a.id, t(1_712_000_000)),
            (last.id, t(1_714_000_000)),
        ])
        .await
        .map_err(|e| store_err(C, "touch_many", e))?;
    let got_a = read(store, C, &a.id).await?;
    ensure!(
        C,
        got_a.last_used_at == Some(t(1_715_000_000)) && got_a.revision == a.revision,
        "touch_many did not raise last_used_at to the latest use: {:?}",
        got_a.last_used_at
    );
    let got_b = read(store, C, &b.id).await?;
    ensure!(
        C,
        got_b.last_used_at == Some(t(1_720_000_000)),
        "touch_many lowered last_used_at to {:?}",
        got_b.last_used_at
    );
    for (r, at) in [(&first, t(1_713_000_000)), (&last, t(1_714_000_000))] {
        let got = read(store, C, &r.id).await?;
        ensure!(
            C,
            got.last_used_at == Some(at),
            "touch_many lost the {} use of its batch: last_used_at is {:?}, expected {at}",
            if r.id == first.id { "first" } else { "last" },
            got.last_used_at
        );
    }
    // A batch as large as a manager's default buffer, most of its uses of keys deleted since:
    // a statement binding a parameter per use can pass the database's limit (and the manager
    // then retries the batch at every flush, recording no use any more), and a store writing
    // it in chunks must write every chunk.
    let tail = sample_record(random_id(), &org);
    store
        .insert(tail.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    let mut batch: Vec<_> = (1..LARGE_BATCH)
        .map(|_| (random_id(), t(1_716_000_000)))
        .collect();
    batch.push((tail.id, t(1_716_000_000)));
    store
        .touch_many(&batch)
        .await
        .map_err(|e| store_err(C, &format!("touch_many of {LARGE_BATCH} uses"), e))?;
    let got = read(store, C, &tail.id).await?;
    ensure!(
        C,
        got.last_used_at == Some(t(1_716_000_000)),
        "touch_many of {LARGE_BATCH} uses lost the last: last_used_at is {:?}",
        got.last_used_at
    );
    let got = store
        .get(&ghost)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(C, got.is_none(), "touch_many created a row: {got:?}");
    use_racing_a_revoke(store, store, C, &org, true).await
}

/// `touch` raises `last_used_at`, never lowers it, never changes the revision or any other
/// field, never creates a row, and a touch racing a revoke does not un-revoke (the touch is not
/// a read-modify-write of the whole record).
pub async fn touch_only_raises_last_use<S: KeyStore>(store: &S) -> Check {
    const C: &str = "touch_only_raises_last_use";
    let org = random_org();
    let rec = sample_record(random_id(), &org);
    store
        .insert(rec.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    store
        .touch(&rec.id, t(1_710_000_000))
        .await
        .map_err(|e| store_err(C, "touch", e))?;
    let got = read(store, C, &rec.id).await?;
    ensure!(
        C,
        got.last_used_at == Some(t(1_710_000_000)),
        "touch did not set last_used_at: {:?}",
        got.last_used_at
    );
    ensure!(
        C,
        got.revision == rec.revision,
        "touch changed the revision from {} to {}",
        rec.revision,
        got.revision
    );
    store
        .touch(&rec.id, t(1_705_000_000))
        .await
        .map_err(|e| store_err(C, "touch", e))?;
    let got = read(store, C, &rec.id).await?;
    ensure!(
        C,
        got.last_used_at == Some(t(1_710_000_000)),
        "touch lowered last_used_at to {:?}",
        got.last_used_at
    );
    // Revoke through CAS, then touch: the revocation must survive.
    let mut revoked = got.clone();
    revoked.revision += 1;
    revoked.revoked_at = Some(t(1_711_000_000));
    revoked.revoked_by = Some(UserId::new("revoker"));
    store
        .update(revoked.clone(), got.revision)
        .await
        .map_err(|e| store_err(C, "update", e))?;
    store
        .touch(&rec.id, t(1_712_000_000))
        .await
        .map_err(|e| store_err(C, "touch", e))?;
    let got = read(store, C, &rec.id).await?;
    let mut expected = revoked;
    expected.last_used_at = Some(t(1_712_000_000));
    ensure!(
        C,
        got == expected,
        "touch changed more than last_used_at: got {got:?}, expected {expected:?}"
    );
    let ghost = random_id();
    store
        .touch(&ghost, t(1_712_000_000))
        .await
        .map_err(|e| store_err(C, "touch of a missing row", e))?;
    let got = store
        .get(&ghost)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(C, got.is_none(), "touch created a row: {got:?}");
    use_racing_a_revoke(store, store, C, &org, false).await
}
