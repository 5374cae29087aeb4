//! A conformance suite for [`KeyStore`] implementations (feature `testkit`).
//!
//! Run it from your store's tests, best on a fresh store. On one shared with other data every
//! check uses its own random organization (`testkit-…`) and ids, and the records it leaves
//! behind are of class [`TESTKIT_CLASS`], which managers of other prefixes skip (`sweep` and
//! `rewrap` count them as `other_class`); delete them afterwards by that organization prefix:
//!
//! ```
//! # async fn demo() {
//! let store = api_keys::MemoryStore::new();
//! api_keys::testkit::run(&store).await.expect("store conforms");
//! # }
//! ```
//!
//! Each check is also public, so a failing duty can be run alone. A check returns a
//! [`Failure`] naming the duty it found broken.

use std::fmt;

pub mod counters;

use time::{Duration, OffsetDateTime};

use crate::crypto::fill_random;
use crate::record::Draft;
use crate::{KeyId, KeyRecord, KeyStore, Keyring, MasterKey, OrgId, Scope, StoreError, UserId};

/// A broken duty found by the suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The check that failed (e.g. `update_is_compare_and_swap`).
    pub check: &'static str,
    /// What was expected and what happened.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.message)
    }
}

impl std::error::Error for Failure {}

type Check = Result<(), Failure>;

pub(crate) fn fail(check: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        check,
        message: message.into(),
    }
}

macro_rules! ensure {
    ($check:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(fail($check, format!($($msg)+)));
        }
    };
}

mod feed;
mod last_use;
mod reads;
mod shapes;
mod writes;
pub use feed::{change_feed_reports_every_write, change_feed_reports_writes_of_other_handles};
pub use last_use::{touch_many_raises_each_last_use, touch_only_raises_last_use};
pub use reads::{reads_follow_every_write, reads_follow_writes_of_other_handles};
pub use shapes::every_value_shape_round_trips;
pub use writes::{
    concurrent_inserts_have_one_winner, concurrent_updates_have_one_winner,
    damaged_rows_stay_deletable, delete_removes, update_is_compare_and_swap,
    writes_are_atomic_across_handles,
};

fn store_err(check: &'static str, what: &str, e: StoreError) -> Failure {
    fail(check, format!("{what} failed unexpectedly: {e} ({e:?})"))
}

/// Runs every check, stopping at the first failure.
///
/// # Errors
/// The first [`Failure`].
pub async fn run<S: KeyStore>(store: &S) -> Check {
    insert_get_and_duplicate(store).await?;
    round_trip_is_exact(store).await?;
    list_is_isolated_by_org(store).await?;
    list_returns_every_record(store).await?;
    update_is_compare_and_swap(store).await?;
    delete_removes(store).await?;
    scan_pages_in_id_order(store).await?;
    ids_compare_byte_for_byte(store).await?;
    touch_only_raises_last_use(store).await?;
    touch_many_raises_each_last_use(store).await?;
    concurrent_updates_have_one_winner(store).await?;
    concurrent_inserts_have_one_winner(store).await?;
    reads_follow_every_write(store).await?;
    every_value_shape_round_trips(store).await?;
    change_feed_reports_every_write(store).await?;
    Ok(())
}

pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // The OS generator failing makes every later check meaningless anyway.
    fill_random(&mut b).expect("operating system randomness");
    u64::from_le_bytes(b)
}

pub(crate) fn random_org() -> OrgId {
    OrgId::new(format!("testkit-{:016x}", random_u64()))
}

fn t(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).expect("valid timestamp")
}

/// The key class (token prefix) of the records the suite writes. Give no manager this prefix:
/// managers of every other prefix sharing the store skip these records in their sweeps,
/// rewraps and verifications.
pub const TESTKIT_CLASS: &str = "testkit";

/// A sealed record for tests (class [`TESTKIT_CLASS`], sealed under a throwaway key; stores
/// never open records).
pub fn sample_record(id: KeyId, org: &OrgId) -> KeyRecord {
    let keyring = Keyring::new(1, MasterKey::from_bytes([7; 16]));
    let draft = Draft {
        id,
        org: org.clone(),
        name: "testkit key".into(),
        scopes: vec![Scope::Prometheus],
        created_at: t(1_700_000_000),
        created_by: UserId::new("testkit"),
        expires_at: Some(t(1_700_000_000) + Duration::days(90)),
        ..Draft::new(TESTKIT_CLASS)
    };
    KeyRecord::seal_new(&keyring, draft, &[9; 32]).expect("sealing a sample record")
}

fn random_id() -> KeyId {
    KeyId(random_u64())
}

/// `insert` then `get` returns the record; a second `insert` of the id, in its organization
/// or another, is `Duplicate` and changes nothing; `get` of an unknown id is `None`.
pub async fn insert_get_and_duplicate<S: KeyStore>(store: &S) -> Check {
    const C: &str = "insert_get_and_duplicate";
    let org = random_org();
    let rec = sample_record(random_id(), &org);
    store
        .insert(rec.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    let got = store
        .get(&rec.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        got.as_ref() == Some(&rec),
        "get returned {got:?}, expected the inserted record"
    );
    let mut other = sample_record(rec.id, &org);
    other.name = "a different record with the same id".into();
    match store.insert(other).await {
        Err(StoreError::Duplicate) => {}
        r => {
            return Err(fail(
                C,
                format!("insert of an existing id returned {r:?}, expected Err(Duplicate)"),
            ));
        }
    }
    // The id alone is the key: not (organization, id).
    let mut elsewhere = sample_record(rec.id, &random_org());
    elsewhere.name = "the same id in another organization".into();
    match store.insert(elsewhere).await {
        Err(StoreError::Duplicate) => {}
        r => {
            return Err(fail(
                C,
                format!(
                    "insert of an existing id in another organization returned {r:?}, \
                     expected Err(Duplicate)"
                ),
            ));
        }
    }
    let got = store
        .get(&rec.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        got.as_ref() == Some(&rec),
        "a duplicate insert overwrote the record: {got:?}"
    );
    let missing = store
        .get(&random_id())
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        missing.is_none(),
        "get of an unknown id returned {missing:?}"
    );
    Ok(())
}

/// Every field survives a round trip exactly: options set and unset, custom scopes, unicode
/// names, large revisions (`i64::MAX`), far timestamps.
pub async fn round_trip_is_exact<S: KeyStore>(store: &S) -> Check {
    const C: &str = "round_trip_is_exact";
    let org = random_org();
    let mut rec = sample_record(random_id(), &org);
    rec.name = "Prométhée — scrape 🔑".into();
    rec.scopes = vec![
        Scope::Scim,
        Scope::Prometheus,
        Scope::custom("billing.read:v2").expect("valid scope"),
    ];
    rec.scopes.sort();
    rec.expires_at = Some(t(4_102_444_800));
    rec.revoked_at = Some(t(1_800_000_001));
    rec.revoked_by = Some(UserId::new("ünïcode-admin"));
    rec.last_used_at = Some(t(1_799_999_999));
    rec.revision = i64::MAX as u64;
    store
        .insert(rec.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    let got = store
        .get(&rec.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        got.as_ref() == Some(&rec),
        "read back {got:?}, expected {rec:?}"
    );
    let mut never = sample_record(random_id(), &org);
    never.expires_at = None;
    store
        .insert(never.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    let got = store
        .get(&never.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        got.as_ref() == Some(&never),
        "read back {got:?}, expected {never:?}"
    );
    Ok(())
}

/// `list(org)` returns exactly that organization's records: organization ids compare byte
/// for byte, so one that differs only in letter case or by a trailing space is another
/// organization.
pub async fn list_is_isolated_by_org<S: KeyStore>(store: &S) -> Check {
    const C: &str = "list_is_isolated_by_org";
    let base = random_org();
    let (a, b) = (OrgId::new(format!("{base}-org")), random_org());
    // A case-insensitive or space-padding collation of the org column (MySQL's defaults)
    // lists these with `a`.
    let look_alikes = [
        OrgId::new(format!("{base}-ORG")),
        OrgId::new(format!("{base}-org ")),
    ];
    let mut want_a = Vec::new();
    for _ in 0..3 {
        let r = sample_record(random_id(), &a);
        want_a.push(r.id);
        store
            .insert(r)
            .await
            .map_err(|e| store_err(C, "insert", e))?;
    }
    let rb = sample_record(random_id(), &b);
    store
        .insert(rb.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    for org in &look_alikes {
        store
            .insert(sample_record(random_id(), org))
            .await
            .map_err(|e| store_err(C, "insert", e))?;
    }
    let mut got: Vec<KeyId> = store
        .list(&a)
        .await
        .map_err(|e| store_err(C, "list", e))?
        .iter()
        .map(|r| r.id)
        .collect();
    got.sort();
    want_a.sort();
    ensure!(
        C,
        got == want_a,
        "list(a) returned {got:?}, expected {want_a:?}"
    );
    let got_b = store.list(&b).await.map_err(|e| store_err(C, "list", e))?;
    ensure!(
        C,
        got_b.len() == 1 && got_b[0] == rb,
        "list(b) returned {got_b:?}"
    );
    let none = store
        .list(&random_org())
        .await
        .map_err(|e| store_err(C, "list", e))?;
    ensure!(
        C,
        none.is_empty(),
        "list of an unknown org returned {none:?}"
    );
    Ok(())
}

/// How many records [`list_returns_every_record`] gives one organization: more than a page
/// of the common default sizes (100, 128, 250, 256).
const LARGE_ORG: usize = 300;

/// `list` returns every record of a large organization (300), not a first page of them
/// (offboarding, rolls and the active-key limit read an organization's keys with it). The
/// check deletes its records afterwards.
pub async fn list_returns_every_record<S: KeyStore>(store: &S) -> Check {
    const C: &str = "list_returns_every_record";
    let org = random_org();
    let mut want = Vec::with_capacity(LARGE_ORG);
    for _ in 0..LARGE_ORG {
        let r = sample_record(random_id(), &org);
        want.push(r.id);
        store
            .insert(r)
            .await
            .map_err(|e| store_err(C, "insert", e))?;
    }
    let mut got: Vec<KeyId> = store
        .list(&org)
        .await
        .map_err(|e| store_err(C, "list", e))?
        .iter()
        .map(|r| r.id)
        .collect();
    got.sort();
    want.sort();
    if got != want {
        let missing = want.iter().filter(|id| !got.contains(id)).count();
        return Err(fail(
            C,
            format!(
                "list of an organization of {LARGE_ORG} records returned {} of them \
                 ({missing} missing)",
                got.len()
            ),
        ));
    }
    for id in &want {
        store
            .delete(id)
            .await
            .map_err(|e| store_err(C, "delete", e))?;
    }
    Ok(())
}

/// `scan` returns every organization's records, strictly after `after`, ascending, pages of
/// at most `limit`, and the pages together hold every record exactly once.
pub async fn scan_pages_in_id_order<S: KeyStore>(store: &S) -> Check {
    const C: &str = "scan_pages_in_id_order";
    let orgs = [random_org(), random_org(), random_org()];
    let mut mine = Vec::new();
    for i in 0..11 {
        let r = sample_record(random_id(), &orgs[i % 3]);
        mine.push(r.id);
        store
            .insert(r)
            .await
            .map_err(|e| store_err(C, "insert", e))?;
    }
    mine.sort();
    let mut seen = Vec::new();
    let mut after: Option<KeyId> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        ensure!(C, pages < 1_000_000, "scan never ended");
        let page = store
            .scan(after.as_ref(), 4)
            .await
            .map_err(|e| store_err(C, "scan", e))?;
        ensure!(
            C,
            page.len() <= 4,
            "scan with limit 4 returned {} records",
            page.len()
        );
        for w in page.windows(2) {
            ensure!(
                C,
                w[0].id < w[1].id,
                "scan page out of order: {} before {}",
                w[0].id,
                w[1].id
            );
        }
        if let (Some(a), Some(first)) = (after, page.first()) {
            ensure!(C, first.id > a, "scan after {a} returned {}", first.id);
        }
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(
            page.iter()
                .map(|r| r.id)
                .filter(|id| mine.binary_search(id).is_ok()),
        );
        if page.len() < 4 {
            break;
        }
    }
    ensure!(C, seen == mine, "scan visited {seen:?}, expected {mine:?}");
    Ok(())
}

/// Ids differing only in letter case are different ids (binary collation), and `scan`
/// orders uppercase before lowercase as bytes do.
pub async fn ids_compare_byte_for_byte<S: KeyStore>(store: &S) -> Check {
    const C: &str = "ids_compare_byte_for_byte";
    let org = random_org();
    // Last digit 10 is 'A', 36 is 'a': the two texts differ only in case.
    let base = (random_u64() % (u64::MAX / 62 - 1)) * 62;
    let upper = sample_record(KeyId(base + 10), &org);
    let lower = sample_record(KeyId(base + 36), &org);
    let (tu, tl) = (upper.id.to_string(), lower.id.to_string());
    ensure!(
        C,
        tu.eq_ignore_ascii_case(&tl) && tu != tl,
        "internal: {tu} / {tl}"
    );
    store
        .insert(upper.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    store
        .insert(lower.clone())
        .await
        .map_err(|e| store_err(C, "insert of an id differing only in case", e))?;
    let gu = store
        .get(&upper.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    let gl = store
        .get(&lower.id)
        .await
        .map_err(|e| store_err(C, "get", e))?;
    ensure!(
        C,
        gu.as_ref() == Some(&upper) && gl.as_ref() == Some(&lower),
        "ids {tu} and {tl} were confused"
    );
    let page = store
        .scan(Some(&KeyId(base + 9)), 2)
        .await
        .map_err(|e| store_err(C, "scan", e))?;
    let ids: Vec<KeyId> = page.iter().map(|r| r.id).collect();
    ensure!(
        C,
        ids.first() == Some(&upper.id),
        "scan after {} started at {:?}, expected {tu}",
        KeyId(base + 9),
        ids.first()
    );
    Ok(())
}
