//! Generating keys under the expiry policy: periods, dates, caps, refusals that say what is allowed, configuration.

use super::*;

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
        // Default-ignorable code points outside the commonly known ones: shorthand format
        // controls and the reserved U+FFF0–U+FFF8 show nothing either.
        "\u{1bca0}\u{1bca3}",
        "\u{fff0} \u{fff8}",
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
