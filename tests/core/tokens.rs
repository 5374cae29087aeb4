//! Verifying tokens: state errors after the secret, malformed tokens, other prefixes and classes, debug output, bad input.

use super::*;

#[tokio::test]
async fn state_errors_come_only_after_the_secret_matched() {
    let s = setup();
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let wrong = wrong_secret(key.expose_secret());
    // Wrong scope: the right secret learns ScopeNotAllowed, a wrong one learns nothing.
    assert!(matches!(
        s.manager.verify(key.expose_secret(), &Scope::Scim).await,
        Err(Error::ScopeNotAllowed)
    ));
    assert!(matches!(
        s.manager.verify(&wrong, &Scope::Scim).await,
        Err(Error::InvalidKey)
    ));
    assert!(matches!(
        s.manager.verify(&wrong, &Scope::Prometheus).await,
        Err(Error::InvalidKey)
    ));
    // Revoked.
    s.manager.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        s.manager.verify(&wrong, &Scope::Prometheus).await,
        Err(Error::InvalidKey)
    ));
    // Expired.
    let (key2, _) = s
        .manager
        .generate(&alice(), prom("k2").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    s.clock.advance(Duration::days(8));
    assert!(matches!(
        s.manager
            .verify(key2.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Expired)
    ));
    let wrong2 = wrong_secret(key2.expose_secret());
    assert!(matches!(
        s.manager.verify(&wrong2, &Scope::Prometheus).await,
        Err(Error::InvalidKey)
    ));
    // Unknown id with a valid checksum.
    let unknown = with_id(key2.expose_secret(), "0000000000z");
    assert!(matches!(
        s.manager.verify(&unknown, &Scope::Prometheus).await,
        Err(Error::InvalidKey)
    ));
}

#[tokio::test]
async fn malformed_tokens_never_reach_the_store() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (key, _) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let t = key.expose_secret();
    let inputs = vec![
        String::new(),
        " ".into(),
        "\n\t ".into(),
        "a".repeat(1 << 20),
        "ключ".repeat(20),
        "\0".repeat(65),
        format!("{t}\0"),
        format!(" {t}"),
        format!("{t}\n"),
        t[..t.len() - 1].to_string(),
        format!("{t}0"),
        t.to_uppercase(),
        t.replacen("sak_", "sak-", 1),
        t.replacen("sak_", "pak_", 1),
        format!("{}é{}", &t[..20], &t[22..]),
    ];
    for input in &inputs {
        assert!(
            matches!(
                s.manager.verify(input, &Scope::Prometheus).await,
                Err(Error::Malformed)
            ),
            "input of length {}",
            input.len()
        );
    }
    assert_eq!(store.gets(), 0, "no malformed token may cause a store read");
}

#[tokio::test]
async fn every_single_character_substitution_is_rejected() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (key, _) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let t = key.expose_secret().as_bytes().to_vec();
    let charset: Vec<u8> = (b'0'..=b'9')
        .chain(b'A'..=b'Z')
        .chain(b'a'..=b'z')
        .chain([b'_', b'-'])
        .collect();
    let mut tried = 0;
    for pos in 0..t.len() {
        for &c in &charset {
            if c == t[pos] {
                continue;
            }
            let mut m = t.clone();
            m[pos] = c;
            let m = String::from_utf8(m).unwrap();
            let r = s.manager.verify(&m, &Scope::Prometheus).await;
            assert!(r.is_err(), "substitution at {pos} accepted");
            tried += 1;
        }
    }
    assert!(tried > 60 * 60);
    // CRC32 catches every single-character change before the store.
    assert_eq!(store.gets(), 0);
}

#[tokio::test]
async fn a_manager_with_another_prefix_rejects_our_tokens_as_malformed() {
    let store = MemoryStore::new();
    let system = KeyManager::builder(store.clone(), keyring())
        .build()
        .unwrap();
    let pool = KeyManager::builder(store, keyring())
        .prefix("sap")
        .build()
        .unwrap();
    let (sys_key, _) = system.generate(&alice(), prom("sys")).await.unwrap();
    let (pool_key, _) = pool.generate(&alice(), prom("pool")).await.unwrap();
    assert!(pool_key.expose_secret().starts_with("sap_"));
    assert!(matches!(
        pool.verify(sys_key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Malformed)
    ));
    assert!(matches!(
        system
            .verify(pool_key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Malformed)
    ));
    pool.verify(pool_key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
}

/// Two key classes over one store: a `sak` key's public id under the `sap` prefix (with its
/// public checksum recomputed) names an authentic record of the other class. The `sap` manager
/// answers exactly as for an unknown id — `InvalidKey`, audited as `invalid_key` without the
/// key's organization, nothing cached — with the genuine secret or any other.
#[tokio::test]
async fn another_class_key_id_is_an_invalid_key_like_an_unknown_id() {
    use api_keys::{AuditAction, FailureClass};
    let store = MemoryStore::new();
    let system = setup_with(store.clone(), Policy::default());
    let pool_audit = Recorder::default();
    let pool = KeyManager::builder(store.clone(), keyring())
        .prefix("sap")
        .audit(pool_audit.clone())
        .build()
        .unwrap();
    let (key, info) = system
        .manager
        .generate(&alice(), prom("sys"))
        .await
        .unwrap();
    let sap = |token: &str| fix_checksum(&format!("sap_{}", &token[4..token.len() - 6]));
    let t = key.expose_secret();
    let moved = sap(t);
    let guessed = sap(&wrong_secret(t));
    let unknown = sap(&with_id(t, "0000000000z"));
    for token in [&moved, &guessed, &unknown, &moved] {
        let r = pool.verify(token, &Scope::Prometheus).await;
        assert!(matches!(r, Err(Error::InvalidKey)), "{r:?}");
    }
    assert_eq!(pool.cached_records(), 0);
    let events = pool_audit.events();
    assert_eq!(events.len(), 4);
    for e in &events {
        assert!(
            matches!(
                e.action,
                AuditAction::VerificationFailed(FailureClass::InvalidKey)
            ),
            "{e:?}"
        );
        assert_eq!(e.org, None, "{e:?}");
    }
    assert_eq!(events[0].key_id, Some(info.id));
    // The `sak` manager still accepts its key.
    system.manager.verify(t, &Scope::Prometheus).await.unwrap();
    // A record whose tag fails stays an integrity failure: relabelled for the other class.
    let mut relabelled = store.get(&info.id).await.unwrap().unwrap();
    relabelled.class = "sap".into();
    store.overwrite_unchecked(relabelled);
    assert!(matches!(
        pool.verify(&moved, &Scope::Prometheus).await,
        Err(Error::Integrity)
    ));
}

#[tokio::test]
async fn debug_output_never_contains_a_token_or_key_bytes() {
    let s = setup();
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let token = key.expose_secret().to_string();
    let secret_part = &token[15..59];
    let verified = s.manager.verify(&token, &Scope::Prometheus).await.unwrap();
    let record = s.manager.store().get(&info.id).await.unwrap().unwrap();
    let parsed = api_keys::UntrustedToken::parse("sak", &token).unwrap();
    let outputs = vec![
        format!("{key:?}"),
        format!("{info:?}"),
        format!("{verified:?}"),
        format!("{record:?}"),
        format!("{parsed:?}"),
        format!("{:?}", MasterKey::from_bytes(MASTER)),
        format!("{:?}", keyring()),
        format!("{:?}", s.manager),
        format!("{:?}", s.audit.events()),
        serde_json::to_string(&info).unwrap(),
    ];
    for out in &outputs {
        assert!(!out.contains(&token), "{out}");
        assert!(!out.contains(secret_part), "{out}");
        assert!(
            !out.contains("0123456789abcdef"),
            "master key bytes in {out}"
        );
    }
    assert!(!format!("{record:?}").contains(&hex::encode(record.sealed.ciphertext)));
    assert!(!format!("{record:?}").contains(&hex::encode(record.sealed.tag)));
    assert_eq!(
        format!("{key:?}"),
        format!("ApiKey {{ id: KeyId({}), token: \"[redacted]\" }}", info.id)
    );
    // Errors never echo their input.
    // The token with its last character changed (always a different one).
    let last = if token.ends_with('0') { '1' } else { '0' };
    let near = format!("{}{last}", &token[..token.len() - 1]);
    let err = s
        .manager
        .verify(&near, &Scope::Prometheus)
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(&near[4..40]));
}

#[tokio::test]
async fn ids_and_actors_reject_bad_input_without_panicking() {
    assert!(OrgId::try_new("").is_err());
    assert!(OrgId::try_new("x".repeat(129)).is_err());
    assert!(OrgId::try_new("x".repeat(128)).is_ok());
    assert!(UserId::try_new("").is_err());
    for bad in [
        "",
        "0000000000",
        "000000000000",
        "LygHa16AHYG",
        "zzzzzzzzzzz",
        "0000000000-",
        "ééééé",
    ] {
        assert!(
            matches!(KeyId::parse(bad), Err(Error::Malformed)),
            "{bad:?}"
        );
    }
    assert_eq!(
        KeyId::parse("LygHa16AHYF").unwrap().to_string(),
        "LygHa16AHYF"
    );
    let a = Actor::manager(OrgId::new("o"), UserId::new("u"));
    assert!(a.is_manager());
    assert!(!Actor::member(OrgId::new("o"), UserId::new("u")).is_manager());
    let _ = OffsetDateTime::UNIX_EPOCH;
}
