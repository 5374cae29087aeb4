//! `KeyManager::verify` over a `MemoryStore` holding a few generated keys. For any input:
//! no panic; `Ok` only for exactly one of the generated tokens; every generated key still
//! verifies afterwards (the input cannot poison the cache or the store).
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use api_keys::bench_support::{format_token, key_id};
use api_keys::{
    Actor, GenerateRequest, KeyManager, Keyring, MasterKey, MemoryStore, OrgId, Scope, UserId,
};
use common::block_on;
use libfuzzer_sys::fuzz_target;

struct World {
    manager: KeyManager<MemoryStore>,
    tokens: Vec<String>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let manager = KeyManager::builder(
            MemoryStore::new(),
            Keyring::new(1, MasterKey::from_bytes([7; 16])),
        )
        .build()
        .unwrap();
        let admin = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
        let mut tokens = Vec::new();
        for i in 0..3 {
            let (key, _) = block_on(manager.generate(
                &admin,
                GenerateRequest::new(format!("k{i}")).scope(Scope::Scim),
            ))
            .unwrap();
            tokens.push(key.expose_secret().to_string());
        }
        World { manager, tokens }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let candidate: String = match mode % 4 {
        // Raw input.
        0 => String::from_utf8_lossy(rest).into_owned(),
        // A generated key's id with a secret from the input and a valid checksum: reaches the
        // cache and the store.
        1 | 2 => {
            let tok = &w.tokens[usize::from(mode / 4) % w.tokens.len()];
            let id = api_keys::UntrustedToken::parse("sak", tok).unwrap().id();
            let mut secret = [0u8; 32];
            for (s, b) in secret.iter_mut().zip(rest) {
                *s = *b;
            }
            format_token("sak", id, &secret)
        }
        // Any id from the input.
        _ => {
            let mut raw = [0u8; 8];
            for (s, b) in raw.iter_mut().zip(rest) {
                *s = *b;
            }
            let mut secret = [0u8; 32];
            for (s, b) in secret.iter_mut().zip(rest.iter().skip(8)) {
                *s = *b;
            }
            format_token("sak", key_id(u64::from_le_bytes(raw)), &secret)
        }
    };
    for scope in [Scope::Scim, Scope::Prometheus] {
        if block_on(w.manager.verify(&candidate, &scope)).is_ok() {
            assert!(
                w.tokens.contains(&candidate),
                "accepted a token that is not a generated key"
            );
        }
    }
    for t in &w.tokens {
        assert!(
            block_on(w.manager.verify(t, &Scope::Scim)).is_ok(),
            "a generated key stopped verifying"
        );
    }
});
