use super::*;
use crate::{Keyring, MasterKey, RevocationReason, Scope};

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

/// Every revocation reason, a replacement and a revoker survive the compact row (they
/// are stored as codes and interned numbers).
#[test]
fn revocation_details_round_trip() {
    let store = MemoryStore::new();
    let reasons = [
        RevocationReason::Manual,
        RevocationReason::Leaked {
            source: "https://gist.example/1".into(),
        },
        RevocationReason::Leaked {
            source: "https://gist.example/2".into(),
        },
        RevocationReason::Unused,
        RevocationReason::DepartedUser,
        RevocationReason::Rolled,
    ];
    let mut expected = Vec::new();
    for (i, reason) in reasons.into_iter().enumerate() {
        let mut r = record(10 + i as u64, "acme", vec![Scope::Scim]);
        r.revocation = Some(reason);
        r.revoked_at = Some(r.created_at + time::Duration::days(1));
        r.revoked_by = Some(UserId::new(format!("user-{}", i % 2)));
        r.replaced_by = (i % 2 == 0).then_some(KeyId(u64::MAX - i as u64));
        block_on(store.insert(r.clone())).unwrap();
        expected.push(r);
    }
    for r in &expected {
        assert_eq!(block_on(store.get(&r.id)).unwrap().as_ref(), Some(r));
    }
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

/// An update made from a copy read before a `touch` keeps the touch's later last use (a key
/// in use must not look unused to `sweep`); a later last use in the update itself is taken.
#[test]
fn update_never_lowers_the_last_use() {
    let store = MemoryStore::new();
    let t = |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap();
    let mut rec = record(7, "acme", vec![Scope::Scim]);
    rec.last_used_at = Some(t(1_700_000_100));
    block_on(store.insert(rec.clone())).unwrap();
    let read = block_on(store.get(&KeyId(7))).unwrap().unwrap();
    block_on(store.touch(&KeyId(7), t(1_700_000_500))).unwrap();

    let mut changed = read.clone();
    changed.name = "renamed".into();
    changed.revision = read.revision + 1;
    block_on(store.update(changed.clone(), read.revision)).unwrap();
    let got = block_on(store.get(&KeyId(7))).unwrap().unwrap();
    assert_eq!(got.last_used_at, Some(t(1_700_000_500)));
    assert_eq!(got.name, "renamed");
    assert_eq!(got.revision, read.revision + 1);

    // Sub-second touches are kept too; an update carrying a later use sets it.
    let precise = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_600_250_000_000).unwrap();
    block_on(store.touch(&KeyId(7), precise)).unwrap();
    let mut again = got.clone();
    again.revision += 1;
    block_on(store.update(again.clone(), got.revision)).unwrap();
    let got = block_on(store.get(&KeyId(7))).unwrap().unwrap();
    assert_eq!(got.last_used_at, Some(precise));
    let mut later = got.clone();
    later.revision += 1;
    later.last_used_at = Some(t(1_700_000_900));
    block_on(store.update(later.clone(), got.revision)).unwrap();
    assert_eq!(block_on(store.get(&KeyId(7))).unwrap(), Some(later));
}
