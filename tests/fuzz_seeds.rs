//! The fuzz targets' seed record as a regression test, and the inputs that crashed a fuzz
//! run: the genuine record verifies with its secret, and every tampering with a field under
//! the tag is an integrity failure, never a success.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use api_keys::time::OffsetDateTime;
use api_keys::{
    Actor, Error, KeyManager, KeyRecord, Keyring, MasterKey, MemoryStore, OrgId, Scope, UserId,
};

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

const GENUINE: &str = include_str!("../fuzz/seeds/record_decode/genuine.json");
/// Token of the seed record: id 0x0123456789abcdef, secret [0x42; 32] (see fuzz/seeds).
const TOKEN: &str = "sak_063UfDVRKBz5gh2MS08Uni5gh2MS08Uni5gh2MS08Uni5gh2MS08Uni2q7cEL";

fn verify_with(rec: KeyRecord) -> Result<(), Error> {
    let store = MemoryStore::new();
    store.overwrite_unchecked(rec);
    let m = KeyManager::builder(store, Keyring::new(1, MasterKey::from_bytes([9; 16])))
        .build()
        .unwrap();
    block_on(m.verify(TOKEN, &Scope::Prometheus)).map(drop)
}

#[test]
fn genuine_seed_verifies_and_every_tampering_fails_closed() {
    let genuine: KeyRecord = serde_json::from_str(GENUINE).unwrap();
    verify_with(genuine.clone()).unwrap();

    // Fields outside the tag may change.
    let mut r = genuine.clone();
    r.name = "renamed".into();
    r.revision = 7;
    r.last_used_at = Some(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap());
    verify_with(r).unwrap();

    let t = |s| Some(OffsetDateTime::from_unix_timestamp(s).unwrap());
    type Tamper = Box<dyn Fn(&mut KeyRecord)>;
    let tampered: Vec<Tamper> = vec![
        Box::new(|r| r.org = OrgId::new("evil")),
        Box::new(|r| r.scopes.push(Scope::Scim)),
        Box::new(move |r| r.expires_at = t(4_100_000_000)),
        Box::new(|r| r.expires_at = None),
        Box::new(|r| r.created_by = UserId::new("mallory")),
        Box::new(|r| r.sealed.key_version = 2),
        Box::new(|r| r.sealed.iv[0] ^= 1),
        Box::new(|r| r.sealed.ciphertext[31] ^= 1),
        Box::new(|r| r.sealed.tag[15] ^= 1),
        Box::new(|r| r.format = 1),
        Box::new(|r| r.format = 3),
        // The key class: a `sak` record relabelled for another manager's prefix.
        Box::new(|r| r.class = "sap".into()),
        Box::new(|r| r.class = String::new()),
        Box::new(|r| r.owner = Some("other".into())),
        Box::new(|r| {
            r.meta.insert("plan".into(), "enterprise".into());
        }),
        Box::new(|r| r.credits = Some(api_keys::Credits::new(1_000_000))),
        Box::new(|r| r.sealed.details_tag[0] ^= 1),
    ];
    for (i, tamper) in tampered.iter().enumerate() {
        let mut r = genuine.clone();
        tamper(&mut r);
        assert!(
            matches!(verify_with(r), Err(Error::Integrity)),
            "tampering #{i} was not an integrity failure"
        );
    }

    // Restoring an older, un-revoked row is what the tag cannot see (SECURITY.md); a revoked
    // row with its revocation stripped fails, since revoked_at is under the tag.
    let store = MemoryStore::new();
    store.overwrite_unchecked(genuine.clone());
    let m = KeyManager::builder(
        store.clone(),
        Keyring::new(1, MasterKey::from_bytes([9; 16])),
    )
    .build()
    .unwrap();
    let admin = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    block_on(m.revoke(&admin, &genuine.id)).unwrap();
    assert!(matches!(
        block_on(m.verify(TOKEN, &Scope::Prometheus)),
        Err(Error::Revoked)
    ));
    let mut stripped = block_on(api_keys::KeyStore::get(&store, &genuine.id))
        .unwrap()
        .unwrap();
    stripped.revoked_at = None;
    stripped.revoked_by = None;
    assert!(matches!(verify_with(stripped), Err(Error::Integrity)));
}

/// The fuzz smoke run's first crash (`record_decode`, fifteenth stop): the genuine record with
/// one bit of its IV flipped, alone in the store. `rewrap` returned `Integrity` where the
/// target expected a report — the target was wrong, not the crate: since `rewrap` checks its
/// current key against the records sealed under the current version, a store whose only such
/// record fails its check cannot be told from a wrong key, and nothing is re-sealed. The
/// record fails closed everywhere, and the store is unchanged.
#[test]
fn the_fuzz_crash_of_a_lone_tampered_record_fails_closed_and_reseals_nothing() {
    let rec: KeyRecord = serde_json::from_str(include_str!(
        "../fuzz/seeds/record_decode/tampered-iv-only-current.json"
    ))
    .unwrap();
    assert!(matches!(verify_with(rec.clone()), Err(Error::Integrity)));
    let store = MemoryStore::new();
    store.overwrite_unchecked(rec.clone());
    let m = KeyManager::builder(
        store.clone(),
        Keyring::new(1, MasterKey::from_bytes([9; 16])),
    )
    .build()
    .unwrap();
    assert!(matches!(block_on(m.rewrap()), Err(Error::Integrity)));
    let after = block_on(api_keys::KeyStore::get(&store, &rec.id))
        .unwrap()
        .unwrap();
    assert_eq!(after, rec);
}
