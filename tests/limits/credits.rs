//! Credits: refusals that spend nothing, concurrent verifies, refills, rolls, audited changes and tampered records.

use super::*;

#[tokio::test]
async fn a_rate_limited_request_spends_no_credits() {
    let s = setup();
    let (key, _) = generate(
        &s.manager,
        req("r")
            .rate_limit(RateLimit::new("minute", 1, secs(60)))
            .credits(Credits::new(5)),
    )
    .await;
    let t = key.expose_secret();
    assert_eq!(ok(&s.manager, t).await.credits_remaining(), Some(4));
    for _ in 0..3 {
        retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    }
    s.clock.advance(Duration::seconds(60));
    assert_eq!(ok(&s.manager, t).await.credits_remaining(), Some(3));
    assert_eq!(
        s.manager
            .credits_remaining(&alice(), key.id())
            .await
            .unwrap(),
        Some(3)
    );
}

#[tokio::test]
async fn a_key_refused_for_another_reason_consumes_nothing() {
    let s = setup();
    let (key, info) = generate(
        &s.manager,
        req("n")
            .rate_limit(RateLimit::new("minute", 1, secs(60)))
            .credits(Credits::new(2)),
    )
    .await;
    let t = key.expose_secret();
    for _ in 0..3 {
        assert!(matches!(
            s.manager.verify(t, &Scope::Scim).await,
            Err(Error::ScopeNotAllowed)
        ));
        assert!(matches!(
            s.manager.verify(&wrong_secret(t), &Scope::Prometheus).await,
            Err(Error::InvalidKey)
        ));
    }
    let v = ok(&s.manager, t).await;
    assert_eq!(v.credits_remaining(), Some(1));
    assert_eq!(v.limits().next().unwrap().remaining, 0);
    s.manager.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        s.manager.verify(t, &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
    assert_eq!(
        s.manager
            .credits_remaining(&alice(), &info.id)
            .await
            .unwrap(),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_n_of_many_concurrent_verifies_pass_with_n_credits() {
    let s = setup();
    let (key, _) = generate(&s.manager, req("n").credits(Credits::new(50))).await;
    let token: Arc<str> = key.expose_secret().into();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let m = s.manager.clone();
            let t = token.clone();
            tokio::spawn(async move { m.verify(&t, &Scope::Prometheus).await })
        })
        .collect();
    let (mut passed, mut exhausted) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => passed += 1,
            Err(Error::UsageExceeded) => exhausted += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((passed, exhausted), (50, 150));
    assert_eq!(
        s.manager
            .credits_remaining(&alice(), key.id())
            .await
            .unwrap(),
        Some(0)
    );
    let events = s.audit.events();
    let count = |a: AuditAction| events.iter().filter(|e| e.action == a).count();
    assert_eq!(count(AuditAction::CreditsExhausted), 1);
    assert_eq!(
        count(AuditAction::VerificationFailed(FailureClass::UsageExceeded)),
        150
    );
}

#[tokio::test]
async fn a_refill_sets_the_balance_on_its_day() {
    let s = setup();
    let (key, _) = generate(
        &s.manager,
        req("d").credits(Credits::new(2).refill(Refill::daily(5))),
    )
    .await;
    let t = key.expose_secret();
    ok(&s.manager, t).await;
    assert_eq!(ok(&s.manager, t).await.credits_remaining(), Some(0));
    assert!(matches!(
        s.manager.verify(t, &Scope::Prometheus).await,
        Err(Error::UsageExceeded)
    ));
    // One second before the next UTC midnight: still empty.
    let now = s.manager.now();
    let midnight = now.date().next_day().unwrap().midnight().assume_utc();
    s.clock.set(midnight - Duration::seconds(1));
    assert!(matches!(
        s.manager.verify(t, &Scope::Prometheus).await,
        Err(Error::UsageExceeded)
    ));
    s.clock.set(midnight);
    assert_eq!(ok(&s.manager, t).await.credits_remaining(), Some(4));
    // A refill sets, it does not add: the next day starts at 5 again, not 9.
    s.clock.advance(Duration::days(1));
    assert_eq!(ok(&s.manager, t).await.credits_remaining(), Some(4));

    // Monthly on a day: nothing on the days between.
    let (key, _) = generate(
        &s.manager,
        req("m").credits(Credits::new(1).refill(Refill::monthly(1, 3))),
    )
    .await;
    let t = key.expose_secret();
    ok(&s.manager, t).await;
    s.clock.advance(Duration::days(1));
    let today = s.manager.now().date();
    if today.day() != 1 {
        assert!(matches!(
            s.manager.verify(t, &Scope::Prometheus).await,
            Err(Error::UsageExceeded)
        ));
    }
    let first = api_keys::time::Date::from_calendar_date(
        today.year() + i32::from(today.month() == api_keys::time::Month::December),
        today.month().next(),
        1,
    )
    .unwrap();
    s.clock.set(first.midnight().assume_utc());
    assert_eq!(ok(&s.manager, t).await.credits_remaining(), Some(2));
}

#[tokio::test]
async fn roll_copies_the_limits_and_never_refills_the_credits() {
    let s = setup();
    let (key, info) = generate(
        &s.manager,
        req("r")
            .rate_limit(RateLimit::new("minute", 100, secs(60)))
            .credits(Credits::new(3)),
    )
    .await;
    ok(&s.manager, key.expose_secret()).await;
    ok(&s.manager, key.expose_secret()).await;
    let (new, new_info) = s
        .manager
        .roll(&alice(), &info.id, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(new_info.rate_limits, info.rate_limits);
    assert_eq!(new_info.credits, info.credits);
    // One credit left, shared by the old key (inside its overlap) and the replacement.
    assert_eq!(
        ok(&s.manager, new.expose_secret())
            .await
            .credits_remaining(),
        Some(0)
    );
    for t in [new.expose_secret(), key.expose_secret()] {
        assert!(matches!(
            s.manager.verify(t, &Scope::Prometheus).await,
            Err(Error::UsageExceeded)
        ));
    }
}

#[tokio::test]
async fn managers_change_limits_and_credits_audited() {
    let s = setup();
    let (key, info) = generate(&s.manager, req("s")).await;
    let t = key.expose_secret();
    let v = ok(&s.manager, t).await;
    assert_eq!(v.limits().count(), 0);
    assert_eq!(v.credits_remaining(), None);
    assert!(matches!(
        s.manager.set_limits(&bob_member(), &info.id, vec![]).await,
        Err(Error::PermissionDenied)
    ));
    assert!(matches!(
        s.manager
            .set_limits(&mallory_other_org(), &info.id, vec![])
            .await,
        Err(Error::NotFound)
    ));
    let bad = vec![RateLimit::new("x", 0, secs(1))];
    assert!(matches!(
        s.manager.set_limits(&alice(), &info.id, bad).await,
        Err(Error::Policy(_))
    ));
    // Every engine counts up to 2^53 exactly (Redis in Lua's doubles): no more is accepted.
    let huge = vec![RateLimit::new("x", api_keys::MAX_UNITS + 1, secs(1))];
    assert!(matches!(
        s.manager.set_limits(&alice(), &info.id, huge).await,
        Err(Error::Policy(_))
    ));
    for c in [
        Credits::new(api_keys::MAX_UNITS + 1),
        Credits::new(1).refill(Refill::daily(api_keys::MAX_UNITS + 1)),
    ] {
        assert!(matches!(
            s.manager.set_credits(&alice(), &info.id, Some(c)).await,
            Err(Error::Policy(_))
        ));
    }
    let got = s
        .manager
        .set_limits(
            &alice(),
            &info.id,
            vec![RateLimit::new("minute", 1, secs(60))],
        )
        .await
        .unwrap();
    assert_eq!(got.rate_limits.len(), 1);
    ok(&s.manager, t).await;
    retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    s.manager
        .set_credits(&alice(), &info.id, Some(Credits::new(7)))
        .await
        .unwrap();
    s.manager
        .set_limits(&alice(), &info.id, vec![])
        .await
        .unwrap();
    assert_eq!(ok(&s.manager, t).await.credits_remaining(), Some(6));
    s.manager
        .set_credits(&alice(), &info.id, None)
        .await
        .unwrap();
    assert_eq!(ok(&s.manager, t).await.credits_remaining(), None);
    let events = s.audit.events();
    let count = |a: AuditAction| events.iter().filter(|e| e.action == a).count();
    assert_eq!(count(AuditAction::LimitsChanged), 2);
    assert_eq!(count(AuditAction::CreditsChanged), 2);
}

/// `limits_changed` says a key's rate limits were changed: `set_limits` with the limits the
/// key already has changes nothing, writes nothing and audits nothing.
#[tokio::test]
async fn set_limits_to_the_same_limits_audits_no_change() {
    let s = setup();
    let limits = vec![RateLimit::new("minute", 5, secs(60))];
    let (_, info) = generate(&s.manager, req("same").rate_limit(limits[0].clone())).await;
    let changes = || {
        s.audit
            .events()
            .iter()
            .filter(|e| e.action == AuditAction::LimitsChanged)
            .count()
    };
    let got = s
        .manager
        .set_limits(&alice(), &info.id, limits.clone())
        .await
        .unwrap();
    assert_eq!(got.rate_limits, limits);
    assert_eq!(
        changes(),
        0,
        "nothing changed, so nothing is audited as changed"
    );
    s.manager
        .set_limits(
            &alice(),
            &info.id,
            vec![RateLimit::new("minute", 4, secs(60))],
        )
        .await
        .unwrap();
    assert_eq!(changes(), 1);
}

#[tokio::test]
async fn a_tampered_limit_in_the_stored_record_is_an_integrity_failure() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), api_keys::Policy::default());
    let (key, info) = generate(
        &s.manager,
        req("t")
            .rate_limit(RateLimit::new("minute", 1, secs(60)))
            .credits(Credits::new(1)),
    )
    .await;
    type Tamper = fn(&mut api_keys::KeyRecord);
    let cases: [(&str, Tamper); 4] = [
        ("limit", |r| {
            r.rate_limits[0] = RateLimit::new("minute", 1_000_000, StdDuration::from_secs(60))
        }),
        ("removed", |r| r.rate_limits.clear()),
        ("credits", |r| r.credits = Some(Credits::new(1_000_000))),
        ("no credits", |r| r.credits = None),
    ];
    let original = store.get(&info.id).await.unwrap().unwrap();
    for (what, tamper) in cases {
        let mut rec = original.clone();
        tamper(&mut rec);
        store.overwrite_unchecked(rec);
        // A fresh manager: nothing cached.
        let fresh = setup_with(store.clone(), api_keys::Policy::default());
        let r = fresh
            .manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await;
        assert!(matches!(r, Err(Error::Integrity)), "{what}: {r:?}");
    }
}

#[cfg(feature = "testkit")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_in_process_engine_passes_the_counters_conformance_suite() {
    api_keys::testkit::counters::run(&api_keys::LocalCounters::new())
        .await
        .unwrap();
}
