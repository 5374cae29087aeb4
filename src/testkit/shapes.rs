//! Every shape of value a manager writes: each revocation reason and refill schedule, and a
//! record at the largest size the policy allows (a store mapping fields to columns can lose a
//! variant, or cut long text, and still pass the other checks).

use std::time::Duration as StdDuration;

use super::{Check, fail, random_id, random_org, sample_record, store_err, t};
use crate::ids::MAX_ID_BYTES;
use crate::policy::{MAX_META_BYTES, MAX_NAME_CHARS, MAX_OWNER_BYTES, MAX_SCOPES};
use crate::{
    Credits, KeyRecord, KeyStore, MAX_LEAK_SOURCE_BYTES, MAX_RATE_LIMITS, OrgId, RateLimit, Refill,
    RevocationReason, Scope, UserId,
};

/// `n` bytes of `fill` (a multi-byte character), padded with `x` to exactly `n`.
fn text(fill: char, n: usize) -> String {
    let mut s: String = std::iter::repeat_n(fill, n / fill.len_utf8()).collect();
    while s.len() < n {
        s.push('x');
    }
    s
}

/// Records of `org` with every revocation reason and refill schedule, and one with every
/// text and list at its largest.
fn shapes(org: &OrgId) -> Vec<KeyRecord> {
    let reasons = [
        RevocationReason::Manual,
        RevocationReason::Leaked {
            source: text('é', MAX_LEAK_SOURCE_BYTES),
        },
        RevocationReason::Unused,
        RevocationReason::DepartedUser,
        RevocationReason::Rolled,
    ];
    let credits = [
        Some(Credits::new(1 << 53).refill(Refill::daily(1 << 53))),
        Some(Credits::new(0).refill(Refill::monthly(1, 7))),
        Some(Credits::new(3)),
        None,
        None,
    ];
    let mut out: Vec<KeyRecord> = reasons
        .into_iter()
        .zip(credits)
        .map(|(reason, credits)| {
            let mut r = sample_record(random_id(), org);
            r.revoked_at = Some(t(1_750_000_000));
            r.revoked_by = Some(UserId::new("testkit-admin"));
            if reason == RevocationReason::Rolled {
                r.replaced_by = Some(random_id());
            }
            r.revocation = Some(reason);
            r.credits = credits;
            r
        })
        .collect();
    let mut big = sample_record(random_id(), org);
    big.name = "🔑".repeat(MAX_NAME_CHARS);
    big.owner = Some(text('ü', MAX_OWNER_BYTES));
    big.created_by = UserId::new(text('ü', MAX_ID_BYTES));
    let half = MAX_META_BYTES / 2;
    big.meta = [
        (text('é', 8), text('€', half - 8)),
        (text('ß', 8), text('✓', MAX_META_BYTES - half - 8)),
    ]
    .into();
    big.scopes = (0..MAX_SCOPES)
        .map(|i| Scope::custom(format!("s{i}{}", "x".repeat(30))).expect("valid scope"))
        .collect();
    big.scopes.sort();
    big.rate_limits = (0..MAX_RATE_LIMITS)
        .map(|i| {
            RateLimit::new(
                format!("l{i}{}", "x".repeat(30)),
                1 << 53,
                StdDuration::from_secs(366 * 86_400),
            )
        })
        .collect();
    out.push(big);
    out
}

/// Every revocation reason, every refill schedule, and a record whose name, owner, creator,
/// organization, metadata (4 KiB of non-ASCII text), scopes and rate limits are as large as
/// the policy allows: each is read back by `get` and `list` exactly as written.
pub async fn every_value_shape_round_trips<S: KeyStore>(store: &S) -> Check {
    const C: &str = "every_value_shape_round_trips";
    // The longest organization id, still under the suite's `testkit-` prefix.
    let org = random_org();
    let org = OrgId::new(format!(
        "{org}-{}",
        "o".repeat(MAX_ID_BYTES - org.as_str().len() - 1)
    ));
    let recs = shapes(&org);
    for rec in &recs {
        store
            .insert(rec.clone())
            .await
            .map_err(|e| store_err(C, "insert", e))?;
        let got = store
            .get(&rec.id)
            .await
            .map_err(|e| store_err(C, "get", e))?;
        if got.as_ref() != Some(rec) {
            // (A record's `Debug` leaves most fields out: name the ones this check varies.)
            return Err(fail(
                C,
                format!(
                    "read back {got:?}, expected {rec:?} with revocation {:?}, credits {:?}, \
                     a {}-byte name and {} metadata entries",
                    rec.revocation,
                    rec.credits,
                    rec.name.len(),
                    rec.meta.len()
                ),
            ));
        }
    }
    let listed = store
        .list(&org)
        .await
        .map_err(|e| store_err(C, "list", e))?;
    if listed.len() != recs.len() || !recs.iter().all(|r| listed.contains(r)) {
        return Err(fail(
            C,
            format!("list returned {listed:?}, expected {recs:?}"),
        ));
    }
    Ok(())
}
