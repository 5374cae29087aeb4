//! Reads after writes: every field written comes back, and no read — `get`, `list` or
//! `scan` — serves a record an `update` replaced or a `delete` removed, even after the same
//! read ran before the write (a store that caches reads).

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use super::{Check, fail, random_org, random_u64, sample_record, store_err, t};
use crate::{
    Credits, KeyId, KeyRecord, KeyStore, Notices, OrgId, RateLimit, Refill, RevocationReason,
    UserId,
};

/// `rec` with every optional field set (stores never open records, so the tag need not
/// match), one revision on, a last use later than any it had, a shorter expiry (as a roll
/// writes) and a new seal (as every change of the manager writes: a column-mapped store that
/// takes the sealed secret or the expiry for immutable stores changes under the old ones).
pub(super) fn with_every_field(rec: &KeyRecord) -> KeyRecord {
    let mut r = rec.clone();
    r.revision = rec.revision + 1;
    r.expires_at = Some(t(1_800_000_200));
    r.sealed.key_version = rec.sealed.key_version.wrapping_add(1);
    for b in r
        .sealed
        .iv
        .iter_mut()
        .chain(&mut r.sealed.ciphertext)
        .chain(&mut r.sealed.details_tag)
        .chain(&mut r.sealed.tag)
    {
        *b = !*b;
    }
    r.name = "every field — ünïcode 🔑".into();
    r.revoked_at = Some(t(1_800_000_100));
    r.revoked_by = Some(UserId::new("testkit-admin"));
    r.revocation = Some(RevocationReason::Leaked {
        source: "https://example.com/paste/1?a=b&c=d".into(),
    });
    r.replaces = Some(KeyId(random_u64()));
    r.replaced_by = Some(KeyId(random_u64()));
    r.owner = Some("customer-42 (ext)".into());
    r.meta = BTreeMap::from([
        ("plan".to_owned(), "pro".to_owned()),
        ("région".to_owned(), "eu-west — ✓".to_owned()),
    ]);
    r.rate_limits = vec![
        RateLimit::new("burst", 10, StdDuration::from_secs(1)),
        RateLimit::new("org.hourly", 10_000, StdDuration::from_secs(3600)).per_org(),
    ];
    r.credits = Some(Credits::new(500).refill(Refill::monthly(28, 400)));
    r.notices = Notices {
        expiry_warned: vec![2_592_000, 604_800],
        expired: true,
        unused_warned: true,
        unused_warned_at: Some(t(1_800_000_000)),
    };
    r.last_used_at = Some(t(1_800_000_050));
    r
}

/// The record `id` as `scan` returns it (paging from just below it), if it does.
async fn scanned<S: KeyStore>(
    store: &S,
    id: KeyId,
) -> Result<Option<KeyRecord>, crate::StoreError> {
    let below = KeyId(id.0 - 1);
    let page = store.scan(Some(&below), 1).await?;
    Ok(page.into_iter().find(|r| r.id == id))
}

/// What `get`, `list` and `scan` return for `id` of `org`.
async fn reads<S: KeyStore>(
    store: &S,
    id: KeyId,
    org: &OrgId,
) -> Result<[Option<KeyRecord>; 3], crate::StoreError> {
    let got = store.get(&id).await?;
    let listed = store.list(org).await?.into_iter().find(|r| r.id == id);
    Ok([got, listed, scanned(store, id).await?])
}

/// Fails unless `get`, `list` and `scan` (in `got`) all returned `want` after `step`.
fn all_read(
    check: &'static str,
    got: &[Option<KeyRecord>; 3],
    want: Option<&KeyRecord>,
    step: &str,
) -> Check {
    for (read, got) in ["get", "list", "scan"].iter().zip(got) {
        if got.as_ref() != want {
            return Err(fail(
                check,
                format!("{read} after {step} returned {got:?}, expected {want:?}"),
            ));
        }
    }
    Ok(())
}

/// After an `update` that sets every optional field, `get`, `list` and `scan` return exactly
/// the record written (each read also ran before the write); after a `delete`, none returns
/// it.
pub async fn reads_follow_every_write<S: KeyStore>(store: &S) -> Check {
    follow("reads_follow_every_write", store, store, "").await
}

/// [`reads_follow_every_write`] for the writes of another node: the writes go through
/// `other`, a second handle on the same database (another connection, as another node opens
/// it), and the reads through `store`. A store that caches reads per handle and forgets only
/// what its own handle writes passes [`run`](super::run), while another node's revoke never
/// reaches this node's reads (its manager, told by the feed, reads the key again and gets the
/// live record back).
///
/// Not part of [`run`](super::run), which has one handle.
///
/// # Errors
/// A [`Failure`](super::Failure) naming `reads_follow_writes_of_other_handles`.
pub async fn reads_follow_writes_of_other_handles<S: KeyStore, O: KeyStore>(
    store: &S,
    other: &O,
) -> Check {
    follow(
        "reads_follow_writes_of_other_handles",
        store,
        other,
        " through another handle",
    )
    .await
}

/// Writes through `writer` and reads each write back through `store` (having read it before).
async fn follow<S: KeyStore, W: KeyStore>(
    check: &'static str,
    store: &S,
    writer: &W,
    through: &str,
) -> Check {
    let org = random_org();
    // Above 0, so that `scan` can page from just below it.
    let rec = sample_record(KeyId(random_u64() | 1), &org);
    writer
        .insert(rec.clone())
        .await
        .map_err(|e| store_err(check, "insert", e))?;
    let org = &org;
    let read = |id| async move {
        reads(store, id, org)
            .await
            .map_err(|e| store_err(check, "a read", e))
    };
    all_read(
        check,
        &read(rec.id).await?,
        Some(&rec),
        &format!("insert{through}"),
    )?;
    let next = with_every_field(&rec);
    writer
        .update(next.clone(), rec.revision)
        .await
        .map_err(|e| store_err(check, "update", e))?;
    let step = format!("an update setting every field{through}");
    all_read(check, &read(rec.id).await?, Some(&next), &step)?;
    let removed = writer
        .delete(&rec.id)
        .await
        .map_err(|e| store_err(check, "delete", e))?;
    ensure!(
        check,
        removed,
        "delete of an existing record returned false"
    );
    all_read(
        check,
        &read(rec.id).await?,
        None,
        &format!("delete{through}"),
    )?;
    // Every field through `insert` too.
    let full = with_every_field(&sample_record(KeyId(random_u64() | 1), org));
    writer
        .insert(full.clone())
        .await
        .map_err(|e| store_err(check, "insert", e))?;
    let step = format!("an insert setting every field{through}");
    all_read(check, &read(full.id).await?, Some(&full), &step)
}
