//! `serde_json::from_slice::<KeyRecord>` of arbitrary bytes, then the decoded record is put
//! into a store (as a tampered database row would be) and used through a manager: no panic,
//! and `verify` never accepts a token unless the record is the genuine one (every field under
//! the tag unchanged) and the token carries the genuine secret.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use api_keys::bench_support::format_token;
use api_keys::{Actor, KeyManager, KeyRecord, Keyring, MasterKey, MemoryStore, Scope, UserId};
use common::block_on;
use libfuzzer_sys::fuzz_target;

const SECRET: [u8; 32] = [0x42; 32];

fn keyring() -> Keyring {
    Keyring::new(1, MasterKey::from_bytes([9; 16]))
}

/// The genuine record: sealed under `keyring()` for `SECRET` (by `seal_record`, once) and
/// kept as the seed corpus, so the fuzzer mutates a real record.
fn genuine() -> &'static KeyRecord {
    static G: OnceLock<KeyRecord> = OnceLock::new();
    G.get_or_init(|| {
        serde_json::from_str(include_str!("../seeds/record_decode/genuine.json")).unwrap()
    })
}

/// Equal to the genuine record in every field under the tag.
fn authentic(rec: &KeyRecord) -> bool {
    let mut r = rec.clone();
    let g = genuine();
    r.name = g.name.clone();
    r.last_used_at = g.last_used_at;
    r.revision = g.revision;
    r == *g
}

fuzz_target!(|data: &[u8]| {
    let Ok(rec) = serde_json::from_slice::<KeyRecord>(data) else {
        return;
    };
    let store = MemoryStore::new();
    store.overwrite_unchecked(rec.clone());
    let manager = KeyManager::builder(store, keyring())
        .policy(api_keys::Policy::default().allow_reveal(true))
        .build()
        .unwrap();
    let genuine_secret = format_token("sak", rec.id, &SECRET);
    let other_secret = format_token("sak", rec.id, &[0x43; 32]);
    for scope in rec.scopes.iter().cloned().chain([Scope::Scim]) {
        if block_on(manager.verify(&genuine_secret, &scope)).is_ok() {
            assert!(authentic(&rec), "accepted a tampered record");
        }
        assert!(
            block_on(manager.verify(&other_secret, &scope)).is_err(),
            "accepted a wrong secret"
        );
    }
    let actor = Actor::manager(rec.org.clone(), UserId::new("mallory"));
    if block_on(manager.get(&actor, &rec.id)).is_ok() {
        assert!(authentic(&rec), "get showed a tampered record as genuine");
    }
    let listed = block_on(manager.list(&actor)).unwrap();
    assert!(listed.is_empty() || authentic(&rec));
    if let Ok(key) = block_on(manager.reveal(&actor, &rec.id)) {
        assert!(authentic(&rec), "revealed a tampered record");
        assert_eq!(key.expose_secret(), genuine_secret);
    }
    let before = manager.store().len();
    match block_on(manager.rewrap()) {
        Ok(report) => assert_eq!(report.rewrapped, 0),
        // The only record under the current version, failing its check: `rewrap` cannot tell
        // a tampered row from a wrong key and re-seals nothing.
        Err(api_keys::Error::Integrity) => assert!(!authentic(&rec)),
        Err(e) => panic!("rewrap: {e:?}"),
    }
    if block_on(manager.revoke(&actor, &rec.id)).is_ok() {
        assert!(authentic(&rec), "re-sealed (laundered) a tampered record");
    }
    assert_eq!(manager.store().len(), before);
});
