//! The core rules of issue 2: generation, policy, roles, verification order, tampering.

mod common;

use api_keys::time::{Duration, OffsetDateTime};
use api_keys::{
    Actor, AnyStore, Error, Expiry, GenerateRequest, KeyId, KeyManager, KeyStatus, KeyStore,
    Keyring, MasterKey, MemoryStore, OrgId, Policy, Scope, UserId,
};
use common::*;

fn prom(name: &str) -> GenerateRequest {
    GenerateRequest::new(name).scope(Scope::Prometheus)
}

#[tokio::test]
async fn generate_then_verify_with_default_expiry_of_exactly_90_days() {
    let s = setup();
    let (key, info) = s
        .manager
        .generate(&alice(), prom("prometheus"))
        .await
        .unwrap();
    assert_eq!(info.expires_at, Some(start() + Duration::days(90)));
    assert_eq!(info.status, KeyStatus::Active);
    assert_eq!(info.org, OrgId::new("acme"));
    assert_eq!(info.created_by, UserId::new("alice"));
    assert_eq!(info.scopes, vec![Scope::Prometheus]);
    assert!(key.expose_secret().starts_with("sak_"));
    assert_eq!(key.id(), &info.id);
    assert!(info.hint.starts_with("sak_…"));
    assert!(key.expose_secret().len() <= 80);

    let ok = s
        .manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(ok.key_id(), &info.id);
    assert_eq!(ok.org(), &OrgId::new("acme"));
    assert_eq!(ok.scopes(), &[Scope::Prometheus]);
    assert_eq!(ok.expires_at(), info.expires_at);
    ok.require_org(&OrgId::new("acme")).unwrap();
    assert!(matches!(
        ok.require_org(&OrgId::new("globex")),
        Err(Error::InvalidKey)
    ));
}

#[tokio::test]
async fn keys_are_unique_and_tokens_differ() {
    let s = setup();
    let (a, _) = s.manager.generate(&alice(), prom("a")).await.unwrap();
    let (b, _) = s.manager.generate(&alice(), prom("b")).await.unwrap();
    assert_ne!(a.id(), b.id());
    assert_ne!(a.expose_secret(), b.expose_secret());
}

#[tokio::test]
async fn expiry_is_enforced_at_clock_now() {
    let s = setup();
    let (key, _) = s
        .manager
        .generate(&alice(), prom("weekly").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    s.clock.advance(Duration::days(7) - Duration::seconds(1));
    s.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    s.clock.advance(Duration::seconds(1));
    assert!(matches!(
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Expired)
    ));
    let listed = s.manager.list(&alice()).await.unwrap();
    assert_eq!(listed[0].status, KeyStatus::Expired);
}

#[tokio::test]
async fn every_allowed_period_and_explicit_date_works() {
    let s = setup();
    for d in [7u16, 30, 60, 90, 180, 365] {
        let (_, info) = s
            .manager
            .generate(&alice(), prom("p").expiry(Expiry::Days(d)))
            .await
            .unwrap();
        assert_eq!(info.expires_at, Some(start() + Duration::days(d.into())));
    }
    let at = start() + Duration::days(12) + Duration::milliseconds(700);
    let (_, info) = s
        .manager
        .generate(&alice(), prom("p").expiry(Expiry::At(at)))
        .await
        .unwrap();
    assert_eq!(
        info.expires_at,
        Some(start() + Duration::days(12)),
        "explicit dates are truncated to whole seconds"
    );
}

fn policy_message(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::Policy(m)) => m,
        other => panic!("expected Error::Policy, got {other:?}"),
    }
}

/// `max_days` caps every period: one still in the allowed list but longer than
/// `max_days` is refused.
#[tokio::test]
async fn max_days_caps_every_allowed_period() {
    let s = setup_with(
        MemoryStore::new(),
        Policy::default().max_days(30).default_days(30),
    );
    let (a, m) = (alice(), &s.manager);
    // 60, 90 and 365 are still in the (default) allowed list, but beyond max_days.
    for days in [60, 90, 365] {
        let msg = policy_message(m.generate(&a, prom("x").expiry(Expiry::Days(days))).await);
        assert!(msg.contains("allowed: 7, 30 days,"), "{msg}");
    }
    let (_, info) = m
        .generate(&a, prom("x").expiry(Expiry::Days(30)))
        .await
        .unwrap();
    assert_eq!(info.expires_at, Some(start() + Duration::days(30)));
}

/// An explicit date is allowed up to exactly `max_days` from now, and not a second more.
#[tokio::test]
async fn an_explicit_date_at_exactly_max_days_is_allowed() {
    let s = setup_with(
        MemoryStore::new(),
        Policy::default().max_days(30).default_days(30),
    );
    let (a, m) = (alice(), &s.manager);
    let edge = start() + Duration::days(30);
    let (_, info) = m
        .generate(&a, prom("x").expiry(Expiry::At(edge)))
        .await
        .unwrap();
    assert_eq!(info.expires_at, Some(edge));
    let past_edge = edge + Duration::seconds(1);
    policy_message(
        m.generate(&a, prom("x").expiry(Expiry::At(past_edge)))
            .await,
    );
}

#[tokio::test]
async fn each_policy_refusal_says_what_is_allowed() {
    let s = setup();
    let a = alice();
    let m = &s.manager;
    let msg = policy_message(m.generate(&a, prom("x").expiry(Expiry::Days(45))).await);
    assert!(msg.contains("7, 30, 60, 90, 180, 365"), "{msg}");
    let msg = policy_message(m.generate(&a, prom("x").expiry(Expiry::Days(0))).await);
    assert!(msg.contains("allowed"), "{msg}");
    let msg = policy_message(m.generate(&a, prom("x").expiry(Expiry::Never)).await);
    assert!(msg.contains("never"), "{msg}");
    let past = start() - Duration::seconds(1);
    let msg = policy_message(m.generate(&a, prom("x").expiry(Expiry::At(past))).await);
    assert!(msg.contains("365 days"), "{msg}");
    let far = start() + Duration::days(366);
    policy_message(m.generate(&a, prom("x").expiry(Expiry::At(far))).await);
    policy_message(m.generate(&a, prom("x").expiry(Expiry::At(start()))).await);

    // Names.
    for bad in ["", "tab\there", "nul\0", &"n".repeat(129)] {
        let msg = policy_message(m.generate(&a, prom(bad)).await);
        assert!(msg.contains("128"), "{msg}");
    }
    // Names a person cannot read: blank, only zero-width characters, or with bidirectional
    // controls that make `abc\u{202e}txt.exe` display as `abcexe.txt`.
    for blank in [
        "   ",
        "\u{200b}\u{200b}",
        "\u{feff}\u{2060} \u{200d}",
        "\u{3164}",
    ] {
        let msg = policy_message(m.generate(&a, prom(blank)).await);
        assert!(msg.contains("visible"), "{msg}");
    }
    for bidi in ["abc\u{202e}txt.exe", "\u{2066}x", "a\u{202a}b", "\u{2069}z"] {
        let msg = policy_message(m.generate(&a, prom(bidi)).await);
        assert!(msg.contains("bidirectional"), "{msg}");
    }
    m.generate(&a, prom("prometheus \u{1F525} ключ"))
        .await
        .unwrap();
    m.generate(&a, prom(&"é".repeat(128))).await.unwrap();

    // Scopes.
    let msg = policy_message(m.generate(&a, GenerateRequest::new("none")).await);
    assert!(msg.contains("1 to 8"), "{msg}");
    let nine = (0..9).map(|i| Scope::custom(format!("s{i}")).unwrap());
    policy_message(
        m.generate(&a, GenerateRequest::new("nine").scopes(nine))
            .await,
    );
    for bad in [
        "",
        "Upper",
        "9lead",
        "has space",
        "scim",
        "prometheus",
        &"a".repeat(33),
        "ü",
    ] {
        assert!(
            matches!(Scope::custom(bad), Err(Error::Policy(_))),
            "{bad:?}"
        );
    }
    assert!(Scope::custom("billing.read:v2-x_y").is_ok());
    // Duplicates collapse, so eight distinct plus a repeat is fine.
    let eight = (0..8).map(|i| Scope::custom(format!("s{i}")).unwrap());
    let (_, info) = m
        .generate(
            &a,
            GenerateRequest::new("eight")
                .scopes(eight)
                .scope(Scope::custom("s0").unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(info.scopes.len(), 8);
}

/// NUL (U+0000), which PostgreSQL cannot store, in what an actor writes into a record (its
/// organization and user ids) or in a metadata value is a policy error before anything is
/// written, on every store, never a store error on one of them; a revocation is never refused
/// for it.
#[tokio::test]
async fn ids_and_metadata_no_store_can_keep_are_refused_before_the_store() {
    let s = setup();
    let m = &s.manager;
    for (org, user) in [("acme\0", "alice"), ("acme", "al\0ice")] {
        let bad = Actor::manager(OrgId::new(org), UserId::new(user));
        let msg = policy_message(m.generate(&bad, prom("k")).await);
        assert!(msg.contains("NUL"), "{msg}");
        assert!(
            !msg.contains(org) && !msg.contains(user),
            "the id is not echoed: {msg}"
        );
    }
    let msg = policy_message(m.generate(&alice(), prom("k").meta("plan", "pro\0")).await);
    assert!(msg.contains("NUL"), "{msg}");
    assert!(
        m.list(&alice()).await.unwrap().is_empty(),
        "nothing was written"
    );

    // A roll, which would record such a user as the replacement's creator, is refused.
    let (key, info) = m.generate(&alice(), prom("k")).await.unwrap();
    let odd = Actor::manager(OrgId::new("acme"), UserId::new("eve\0admin"));
    policy_message(m.roll(&odd, &info.id, Duration::hours(1)).await);
    assert_eq!(m.list(&alice()).await.unwrap().len(), 1, "no replacement");
    // A revocation never is: the revoker's NUL is recorded as U+FFFD.
    let revoked = m.revoke(&odd, &info.id).await.unwrap();
    assert_eq!(revoked.status, KeyStatus::Revoked);
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
    let rec = m.store().get(&info.id).await.unwrap().unwrap();
    assert_eq!(rec.revoked_by, Some(UserId::new("eve\u{FFFD}admin")));
    // Other control characters are the host's to allow (and escaped where shown).
    let (_, other) = m.generate(&alice(), prom("k2")).await.unwrap();
    let tab = Actor::manager(OrgId::new("acme"), UserId::new("eve\tadmin"));
    m.revoke(&tab, &other.id).await.unwrap();
    let rec = m.store().get(&other.id).await.unwrap().unwrap();
    assert_eq!(rec.revoked_by, Some(UserId::new("eve\tadmin")));
}

#[tokio::test]
async fn never_and_custom_periods_follow_the_policy() {
    let policy = Policy::default()
        .allowed_days(&[1, 14])
        .default_days(14)
        .max_days(14)
        .allow_never(true);
    let s = setup_with(MemoryStore::new(), policy);
    let (_, info) = s.manager.generate(&alice(), prom("default")).await.unwrap();
    assert_eq!(info.expires_at, Some(start() + Duration::days(14)));
    let (key, info) = s
        .manager
        .generate(&alice(), prom("forever").expiry(Expiry::Never))
        .await
        .unwrap();
    assert_eq!(info.expires_at, None);
    s.clock.advance(Duration::days(100_000));
    s.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    let msg = policy_message(
        s.manager
            .generate(&alice(), prom("x").expiry(Expiry::Days(90)))
            .await,
    );
    assert!(msg.contains("1, 14"), "{msg}");
}

#[tokio::test]
async fn invalid_configuration_is_refused_at_build() {
    let bad_prefix = ["", "a", "Sak", "1ab", "sak_", "abcdefghijklmnopq", "s-k"];
    for p in bad_prefix {
        let r = KeyManager::builder(MemoryStore::new(), keyring())
            .prefix(p)
            .build();
        assert!(matches!(r, Err(Error::Policy(_))), "{p:?}");
    }
    let r = KeyManager::builder(MemoryStore::new(), keyring())
        .policy(Policy::default().default_days(45))
        .build();
    assert!(matches!(r, Err(Error::Policy(_))));
    let dup = Keyring::new(1, MasterKey::generate()).with_previous(1, MasterKey::generate());
    assert!(matches!(
        KeyManager::builder(MemoryStore::new(), dup).build(),
        Err(Error::Policy(_))
    ));
}

#[tokio::test]
async fn max_active_keys_counts_only_active_keys() {
    let s = setup_with(MemoryStore::new(), Policy::default().max_active_keys(2));
    let (_, a) = s.manager.generate(&alice(), prom("a")).await.unwrap();
    s.manager.generate(&alice(), prom("b")).await.unwrap();
    let msg = policy_message(s.manager.generate(&alice(), prom("c")).await);
    assert!(msg.contains("at most 2"), "{msg}");
    // Another org has its own budget.
    s.manager
        .generate(&mallory_other_org(), prom("m"))
        .await
        .unwrap();
    s.manager.revoke(&alice(), &a.id).await.unwrap();
    s.manager.generate(&alice(), prom("c")).await.unwrap();
}

#[tokio::test]
async fn a_member_is_denied_everything_existing_or_not() {
    let s = setup();
    let (_, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let bob = bob_member();
    let m = &s.manager;
    let unknown = KeyId::parse("00000000000").unwrap();
    for id in [info.id, unknown] {
        assert!(matches!(
            m.get(&bob, &id).await,
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            m.revoke(&bob, &id).await,
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            m.delete(&bob, &id).await,
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            m.reveal(&bob, &id).await,
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            m.roll(&bob, &id, Duration::hours(1)).await,
            Err(Error::PermissionDenied)
        ));
    }
    assert!(matches!(
        m.generate(&bob, prom("x")).await,
        Err(Error::PermissionDenied)
    ));
    assert!(matches!(m.list(&bob).await, Err(Error::PermissionDenied)));
    assert!(matches!(
        m.expiring_within(&bob, Duration::days(1)).await,
        Err(Error::PermissionDenied)
    ));
    // Nothing changed.
    assert_eq!(
        m.get(&alice(), &info.id).await.unwrap().status,
        KeyStatus::Active
    );
}

#[tokio::test]
async fn another_orgs_manager_gets_not_found_and_sees_nothing() {
    let s = setup();
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let mallory = mallory_other_org();
    let m = &s.manager;
    assert!(matches!(
        m.get(&mallory, &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        m.revoke(&mallory, &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        m.delete(&mallory, &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        m.roll(&mallory, &info.id, Duration::ZERO).await,
        Err(Error::NotFound)
    ));
    assert!(m.list(&mallory).await.unwrap().is_empty());
    assert!(
        m.expiring_within(&mallory, Duration::days(365))
            .await
            .unwrap()
            .is_empty()
    );
    // The key still works and is untouched.
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(m.list(&alice()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn revoke_takes_effect_on_the_very_next_verify_even_when_cached() {
    let s = setup();
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    for _ in 0..3 {
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    assert_eq!(
        s.manager.cached_records(),
        1,
        "the key is served from the cache"
    );
    let revoked = s.manager.revoke(&alice(), &info.id).await.unwrap();
    assert_eq!(revoked.status, KeyStatus::Revoked);
    assert!(revoked.revoked_at.is_some());
    assert!(matches!(
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));
    // Still listed, as revoked; revoking again changes nothing.
    let again = s.manager.revoke(&alice(), &info.id).await.unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);
    let listed = s.manager.list(&alice()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, KeyStatus::Revoked);
}

#[tokio::test]
async fn delete_takes_effect_on_the_very_next_verify_and_the_key_disappears() {
    let s = setup();
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    s.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    s.manager.delete(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::InvalidKey)
    ));
    assert!(s.manager.list(&alice()).await.unwrap().is_empty());
    assert!(matches!(
        s.manager.get(&alice(), &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        s.manager.delete(&alice(), &info.id).await,
        Err(Error::NotFound)
    ));
}

#[tokio::test]
async fn a_second_manager_over_a_shared_memory_store_sees_revocation_at_once() {
    let store = MemoryStore::new();
    let a = setup_with(store.clone(), Policy::default());
    let b = setup_with(store, Policy::default());
    let (key, info) = a.manager.generate(&alice(), prom("k")).await.unwrap();
    b.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(b.manager.cached_records(), 1);
    a.manager.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        b.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));
}

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

/// Transplants one field from another record and verifies through a fresh manager.
#[tokio::test]
async fn transplanting_any_deciding_field_fails_integrity() {
    type Transplant = fn(&mut api_keys::KeyRecord, &api_keys::KeyRecord);
    let cases: Vec<(&str, Transplant)> = vec![
        ("expires_at", |a, b| a.expires_at = b.expires_at),
        ("scopes", |a, b| a.scopes = b.scopes.clone()),
        ("org", |a, b| a.org = b.org.clone()),
        ("revoked_at (un-revoke)", |a, b| {
            a.revoked_at = b.revoked_at;
            a.revoked_by = b.revoked_by.clone();
        }),
        ("sealed", |a, b| a.sealed = b.sealed.clone()),
        ("created_at", |a, b| a.created_at = b.created_at),
        ("created_by", |a, b| a.created_by = b.created_by.clone()),
        ("ciphertext", |a, b| {
            a.sealed.ciphertext = b.sealed.ciphertext
        }),
        ("iv", |a, b| a.sealed.iv = b.sealed.iv),
        ("tag", |a, b| a.sealed.tag = b.sealed.tag),
    ];
    for (field, transplant) in cases {
        let store = MemoryStore::new();
        let s = setup_with(store.clone(), Policy::default());
        let (key, info) = s
            .manager
            .generate(
                &alice(),
                GenerateRequest::new("victim")
                    .scope(Scope::Prometheus)
                    .expiry(Expiry::Days(7)),
            )
            .await
            .unwrap();
        s.clock.advance(Duration::seconds(5));
        let (_, donor) = s
            .manager
            .generate(
                &mallory_other_org(),
                GenerateRequest::new("donor")
                    .scope(Scope::Scim)
                    .scope(Scope::Prometheus)
                    .expiry(Expiry::Days(365)),
            )
            .await
            .unwrap();
        // The victim is revoked, so "un-revoking" it by copying the donor's None is a tamper too.
        if field.starts_with("revoked") {
            s.manager.revoke(&alice(), &info.id).await.unwrap();
        }
        let donor = store.get(&donor.id).await.unwrap().unwrap();
        let mut victim = store.get(&info.id).await.unwrap().unwrap();
        let before = victim.clone();
        transplant(&mut victim, &donor);
        assert_ne!(victim, before, "{field}: the transplant changed nothing");
        store.overwrite_unchecked(victim);
        let fresh = setup_with(store.clone(), Policy::default());
        let r = fresh
            .manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await;
        assert!(
            matches!(r, Err(Error::Integrity)),
            "{field}: expected Integrity, got {r:?}"
        );
        // Management refuses to re-seal it (a moved org reads as another org's key), and it is
        // reported, not listed.
        let revoke = fresh.manager.revoke(&alice(), &info.id).await;
        assert!(
            matches!(revoke, Err(Error::Integrity | Error::NotFound)),
            "{field}: {revoke:?}"
        );
        let listed = fresh.manager.list(&alice()).await.unwrap();
        assert!(listed.iter().all(|i| i.id != info.id), "{field}");
    }
}

#[tokio::test]
async fn a_record_stored_under_another_id_fails_integrity() {
    // A row copied under a different id (its sealed fields name the original id).
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default());
    let (key_a, a) = s.manager.generate(&alice(), prom("a")).await.unwrap();
    let (_, b) = s.manager.generate(&alice(), prom("b")).await.unwrap();
    let mut rec_b = store.get(&b.id).await.unwrap().unwrap();
    rec_b.id = a.id;
    store.overwrite_unchecked(rec_b);
    let fresh = setup_with(store, Policy::default());
    assert!(matches!(
        fresh
            .manager
            .verify(key_a.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Integrity)
    ));
}

#[tokio::test]
async fn a_different_master_key_under_the_same_version_fails_integrity() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default());
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let other = KeyManager::builder(store.clone(), Keyring::new(1, MasterKey::generate()))
        .build()
        .unwrap();
    assert!(matches!(
        other.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        other.get(&alice(), &info.id).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        other.revoke(&alice(), &info.id).await,
        Err(Error::Integrity)
    ));
    // An unknown version is the same failure.
    let v2 = KeyManager::builder(store, Keyring::new(2, MasterKey::from_bytes(MASTER)))
        .build()
        .unwrap();
    assert!(matches!(
        v2.verify(key.expose_secret(), &Scope::Prometheus).await,
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
async fn any_store_and_arc_store_work_with_the_manager() {
    let s = setup_with(AnyStore::new(MemoryStore::new()), Policy::default());
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    s.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    s.manager.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));

    let shared = std::sync::Arc::new(MemoryStore::new());
    let s = setup_with(shared.clone(), Policy::default());
    let (key, _) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    assert_eq!(shared.len(), 1);
    s.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
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

#[tokio::test]
async fn custom_scopes_built_directly_are_still_checked() {
    let s = setup();
    for bad in ["scim", "prometheus", "Bad Name", ""] {
        let req = GenerateRequest::new("k").scope(Scope::Custom(bad.into()));
        assert!(
            matches!(
                s.manager.generate(&alice(), req).await,
                Err(Error::Policy(_))
            ),
            "{bad:?}"
        );
    }
    let long = "a".repeat(10_000);
    let req = GenerateRequest::new("k").scope(Scope::Custom(long.as_str().into()));
    assert!(matches!(
        s.manager.generate(&alice(), req).await,
        Err(Error::Policy(_))
    ));
}

/// A store whose row for `alias` holds the authentic record of `target` (id field and all),
/// as a database row overwritten by copying another row would.
#[derive(Clone)]
struct Misdirecting {
    inner: MemoryStore,
    alias: KeyId,
    target: KeyId,
}

impl KeyStore for Misdirecting {
    async fn insert(&self, r: api_keys::KeyRecord) -> Result<(), api_keys::StoreError> {
        self.inner.insert(r).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<api_keys::KeyRecord>, api_keys::StoreError> {
        let id = if *id == self.alias { self.target } else { *id };
        self.inner.get(&id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.list(org).await
    }
    async fn update(&self, r: api_keys::KeyRecord, e: u64) -> Result<(), api_keys::StoreError> {
        self.inner.update(r, e).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, api_keys::StoreError> {
        self.inner.delete(id).await
    }
    async fn scan(
        &self,
        a: Option<&KeyId>,
        l: usize,
    ) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.scan(a, l).await
    }
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), api_keys::StoreError> {
        self.inner.touch(id, at).await
    }
}

#[tokio::test]
async fn a_row_holding_another_keys_record_is_never_acted_on() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default().allow_reveal(true));
    let (key_x, x) = s.manager.generate(&alice(), prom("x")).await.unwrap();
    let (_, y) = s.manager.generate(&alice(), prom("y")).await.unwrap();
    let bad = setup_with(
        Misdirecting {
            inner: store.clone(),
            alias: y.id,
            target: x.id,
        },
        Policy::default().allow_reveal(true),
    );
    let m = &bad.manager;
    assert!(matches!(
        m.get(&alice(), &y.id).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        m.revoke(&alice(), &y.id).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        m.reveal(&alice(), &y.id).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        m.roll(&alice(), &y.id, Duration::ZERO).await,
        Err(Error::Integrity)
    ));
    // x was not touched by any of it.
    m.verify(key_x.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    let rec_x = store.get(&x.id).await.unwrap().unwrap();
    assert_eq!(
        (rec_x.revision, rec_x.revoked_at, rec_x.expires_at),
        (1, None, x.expires_at)
    );
}

#[tokio::test]
async fn non_canonical_records_fail_integrity() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default());
    let (key, info) = s
        .manager
        .generate(
            &alice(),
            GenerateRequest::new("k")
                .scope(Scope::Scim)
                .scope(Scope::Prometheus),
        )
        .await
        .unwrap();
    let good = store.get(&info.id).await.unwrap().unwrap();
    let variants: Vec<api_keys::KeyRecord> = vec![
        api_keys::KeyRecord {
            scopes: vec![Scope::Prometheus, Scope::Scim],
            ..good.clone()
        },
        api_keys::KeyRecord {
            scopes: vec![Scope::Scim, Scope::Scim, Scope::Prometheus],
            ..good.clone()
        },
        api_keys::KeyRecord {
            created_at: good.created_at + Duration::milliseconds(1),
            ..good.clone()
        },
    ];
    for bad in variants {
        store.overwrite_unchecked(bad.clone());
        let fresh = setup_with(store.clone(), Policy::default());
        let r = fresh
            .manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await;
        assert!(matches!(r, Err(Error::Integrity)), "{bad:?}: {r:?}");
    }
    store.overwrite_unchecked(good);
    let fresh = setup_with(store, Policy::default());
    fresh
        .manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_revision_at_the_i64_limit_is_refused_not_wrapped() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default());
    let (_, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let mut rec = store.get(&info.id).await.unwrap().unwrap();
    rec.revision = i64::MAX as u64;
    store.overwrite_unchecked(rec);
    assert!(matches!(
        s.manager.revoke(&alice(), &info.id).await,
        Err(Error::Integrity)
    ));
    let mut rec = store.get(&info.id).await.unwrap().unwrap();
    rec.revision = u64::MAX;
    store.overwrite_unchecked(rec);
    assert!(matches!(
        s.manager.revoke(&alice(), &info.id).await,
        Err(Error::Integrity)
    ));
}

#[test]
fn a_policy_without_a_fitting_default_says_how_to_fix_it() {
    let err = KeyManager::builder(MemoryStore::new(), keyring())
        .policy(Policy::default().allowed_days(&[7, 14]))
        .build()
        .expect_err("a default of 90 days is not among 7 and 14");
    let Error::Policy(msg) = err else {
        panic!("expected Error::Policy, got {err:?}")
    };
    assert!(msg.contains("default_days"), "{msg}");
    assert!(msg.contains("[7, 14]"), "{msg}");
    // Following the message fixes it.
    KeyManager::builder(MemoryStore::new(), keyring())
        .policy(Policy::default().allowed_days(&[7, 14]).default_days(14))
        .build()
        .unwrap();
}
