//! The policy's default and maximum limits: applied, replaced, refused and checked at build.

use super::*;

fn limited_policy() -> Policy {
    Policy::default()
        .default_rate_limits(&[RateLimit::new("burst", 2, secs(10))])
        .default_credits(Credits::new(5).refill(Refill::daily(5)))
        .max_rate(10, secs(1))
        .max_credits(1_000)
        .max_rate_limits(2)
}

fn policy_error<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::Policy(msg)) => msg,
        other => panic!("expected Error::Policy, got {other:?}"),
    }
}

#[tokio::test]
async fn a_policys_default_limits_apply_when_a_request_names_none() {
    let s = setup_with(MemoryStore::new(), limited_policy());
    let (key, info) = generate(&s.manager, req("d")).await;
    assert_eq!(info.rate_limits, vec![RateLimit::new("burst", 2, secs(10))]);
    assert_eq!(info.credits, Some(Credits::new(5).refill(Refill::daily(5))));
    let t = key.expose_secret();
    // Enforced: two per window, and each admitted request spends a credit.
    for (left, credits) in [(1, 4), (0, 3)] {
        let v = ok(&s.manager, t).await;
        assert_eq!(v.limits().next().unwrap().remaining, left);
        assert_eq!(v.credits_remaining(), Some(credits));
    }
    let (name, after) = retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    assert_eq!((name.as_str(), after), ("burst", secs(10)));
    s.clock.advance(Duration::seconds(10));
    assert_eq!(ok(&s.manager, t).await.credits_remaining(), Some(2));
}

#[tokio::test]
async fn limits_named_by_the_request_replace_the_policys_defaults() {
    let s = setup_with(MemoryStore::new(), limited_policy());
    let (key, info) = generate(
        &s.manager,
        req("e")
            .rate_limit(RateLimit::new("minute", 300, secs(60)))
            .credits(Credits::new(1)),
    )
    .await;
    // The defaults are not added to the request's limits: exactly what it named.
    assert_eq!(
        info.rate_limits,
        vec![RateLimit::new("minute", 300, secs(60))]
    );
    assert_eq!(info.credits, Some(Credits::new(1)));
    let v = ok(&s.manager, key.expose_secret()).await;
    assert_eq!(v.limits().next().unwrap().name, "minute");
    assert_eq!(v.credits_remaining(), Some(0));
    assert!(matches!(
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::UsageExceeded)
    ));
    // Only rate limits named: the credits still come from the policy.
    let (_, info) = generate(
        &s.manager,
        req("f").rate_limit(RateLimit::new("minute", 300, secs(60))),
    )
    .await;
    assert_eq!(info.credits, Some(Credits::new(5).refill(Refill::daily(5))));
    // Without maxima, a default-less policy adds nothing.
    let plain = setup();
    let (_, info) = generate(&plain.manager, req("g")).await;
    assert!(info.rate_limits.is_empty());
    assert_eq!(info.credits, None);
}

#[tokio::test]
async fn the_policys_maxima_are_refused_on_generate() {
    let s = setup_with(MemoryStore::new(), limited_policy());
    // Above the maximum rate (10 per second): 11 per second, and 1 000 per minute (16.7/s).
    for l in [
        RateLimit::new("fast", 11, secs(1)),
        RateLimit::new("minute", 1_000, secs(60)),
        RateLimit::new("tiny", 1, StdDuration::from_millis(50)),
    ] {
        let name = l.name().to_string();
        let msg = policy_error(s.manager.generate(&alice(), req("x").rate_limit(l)).await);
        assert!(msg.contains(&name) && msg.contains("maximum rate"), "{msg}");
    }
    // At the maximum rate exactly, and slower: accepted.
    s.manager
        .generate(
            &alice(),
            req("y")
                .rate_limit(RateLimit::new("second", 10, secs(1)))
                .rate_limit(RateLimit::new("minute", 600, secs(60)).per_org()),
        )
        .await
        .unwrap();
    // Three limits, above max_rate_limits (2), each one fine on its own.
    let three = (0..3).fold(req("z"), |r, i| {
        r.rate_limit(RateLimit::new(format!("l{i}"), 1, secs(1)))
    });
    let msg = policy_error(s.manager.generate(&alice(), three).await);
    assert!(msg.contains("at most 2 rate limits"), "{msg}");
    // Credits above the maximum, initially or by refill; the message names only what the
    // request gave (no refill "to 0" for credits that are never refilled).
    for (c, says, not) in [
        (Credits::new(1_001), "1001", "refill"),
        (
            Credits::new(10).refill(Refill::monthly(1, 5_000)),
            "refilled to 5000",
            "refilled to 0",
        ),
    ] {
        let msg = policy_error(s.manager.generate(&alice(), req("c").credits(c)).await);
        assert!(msg.contains("maximum of 1000"), "{msg}");
        assert!(msg.contains(says) && !msg.contains(not), "{msg}");
    }
    s.manager
        .generate(&alice(), req("c").credits(Credits::new(1_000)))
        .await
        .unwrap();
    // Nothing was stored for the refused requests: the two accepted keys only.
    assert_eq!(
        s.manager.list(&alice()).await.unwrap().len(),
        2,
        "refused requests stored no key"
    );
}

#[tokio::test]
async fn the_policys_maxima_are_refused_on_set_limits_and_set_credits() {
    let s = setup_with(MemoryStore::new(), limited_policy());
    let (key, info) = generate(&s.manager, req("m")).await;
    let t = key.expose_secret();
    let msg = policy_error(
        s.manager
            .set_limits(
                &alice(),
                &info.id,
                vec![RateLimit::new("fast", 20, secs(1))],
            )
            .await,
    );
    assert!(msg.contains("maximum rate"), "{msg}");
    // With a maximum rate, removing every limit would make the key unlimited.
    let msg = policy_error(s.manager.set_limits(&alice(), &info.id, vec![]).await);
    assert!(msg.contains("needs at least one rate limit"), "{msg}");
    let three: Vec<_> = (0..3)
        .map(|i| RateLimit::new(format!("l{i}"), 1, secs(1)))
        .collect();
    policy_error(s.manager.set_limits(&alice(), &info.id, three).await);
    let msg = policy_error(
        s.manager
            .set_credits(&alice(), &info.id, Some(Credits::new(5_000)))
            .await,
    );
    assert!(msg.contains("maximum of 1000"), "{msg}");
    let msg = policy_error(s.manager.set_credits(&alice(), &info.id, None).await);
    assert!(msg.contains("needs credits"), "{msg}");
    // The refusals changed nothing: the defaults still hold and nothing was audited.
    let now = s.manager.get(&alice(), &info.id).await.unwrap();
    assert_eq!(now.rate_limits, info.rate_limits);
    assert_eq!(now.credits, info.credits);
    let v = ok(&s.manager, t).await;
    assert_eq!(v.limits().next().unwrap().limit, 2);
    assert_eq!(v.credits_remaining(), Some(4));
    let events = s.audit.events();
    assert!(!events.iter().any(|e| matches!(
        e.action,
        AuditAction::LimitsChanged | AuditAction::CreditsChanged
    )));
    // Within the maxima: accepted.
    s.manager
        .set_limits(
            &alice(),
            &info.id,
            vec![RateLimit::new("second", 10, secs(1))],
        )
        .await
        .unwrap();
    s.manager
        .set_credits(&alice(), &info.id, Some(Credits::new(1_000)))
        .await
        .unwrap();
    assert_eq!(ok(&s.manager, t).await.credits_remaining(), Some(999));
}

#[tokio::test]
async fn roll_keeps_the_limits_a_policy_gave() {
    let s = setup_with(MemoryStore::new(), limited_policy());
    let (key, info) = generate(&s.manager, req("r")).await;
    ok(&s.manager, key.expose_secret()).await;
    let (new, new_info) = s
        .manager
        .roll(&alice(), &info.id, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(new_info.rate_limits, info.rate_limits);
    assert_eq!(new_info.credits, info.credits);
    // The replacement spends from the same balance (4 left) and carries the same limit.
    let v = ok(&s.manager, new.expose_secret()).await;
    assert_eq!(v.credits_remaining(), Some(3));
    assert_eq!(v.limits().next().unwrap().name, "burst");
}

#[test]
fn a_policy_whose_defaults_break_its_maxima_is_refused_at_build() {
    let build = |p: Policy| {
        KeyManager::builder(MemoryStore::new(), keyring())
            .policy(p)
            .build()
    };
    for p in [
        Policy::default()
            .default_rate_limits(&[RateLimit::new("burst", 100, secs(1))])
            .max_rate(10, secs(1)),
        Policy::default()
            .default_credits(Credits::new(50))
            .max_credits(10),
        Policy::default().default_rate_limits(&[RateLimit::new("Bad", 1, secs(1))]),
        Policy::default().max_rate_limits(0),
        Policy::default().max_rate_limits(9),
        Policy::default().max_rate(0, secs(1)),
    ] {
        assert!(matches!(build(p), Err(Error::Policy(_))));
    }
    // A refusal of a default names it, once, whatever is wrong with it.
    for (p, names) in [
        (
            Policy::default().default_rate_limits(&[RateLimit::new("Bad", 1, secs(1))]),
            "default_rate_limits",
        ),
        (
            Policy::default()
                .default_rate_limits(&[RateLimit::new("burst", 100, secs(1))])
                .max_rate(10, secs(1)),
            "default_rate_limits",
        ),
        (
            Policy::default().default_credits(Credits::new(1).refill(Refill::monthly(29, 1))),
            "default_credits",
        ),
        (
            Policy::default()
                .default_credits(Credits::new(50))
                .max_credits(10),
            "default_credits",
        ),
    ] {
        let Err(e) = build(p) else {
            panic!("{names}: accepted")
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("policy: {names}: ")) && msg.matches("policy:").count() == 1,
            "{msg}"
        );
    }
    assert!(build(limited_policy()).is_ok());
}

/// `max_rate(limit, per)` caps the average rate at `limit / per`; a `per` with a fraction
/// of a millisecond was cut to whole milliseconds, which raised the cap: with at most 1 per
/// 1.5 ms, a limit of 1 per 1 ms (a third faster) was accepted, and `rate_cap` reported
/// 1 per 1 ms.
#[tokio::test]
async fn max_rate_is_not_raised_by_a_fraction_of_a_millisecond() {
    let per = StdDuration::from_micros(1_500);
    let s = setup_with(MemoryStore::new(), Policy::default().max_rate(1, per));
    assert_eq!(s.manager.policy().rate_cap(), Some((1, per)));
    let one_per_ms = RateLimit::new("fast", 1, StdDuration::from_millis(1));
    policy_error(
        s.manager
            .generate(&alice(), req("f").rate_limit(one_per_ms.clone()))
            .await,
    );
    // At the cap exactly (2 per 3 ms) and below it pass.
    for ok_limit in [
        RateLimit::new("even", 2, StdDuration::from_millis(3)),
        RateLimit::new("slow", 1, StdDuration::from_millis(2)),
    ] {
        let (_, info) = generate(&s.manager, req("s").rate_limit(ok_limit.clone())).await;
        assert_eq!(info.rate_limits, vec![ok_limit]);
    }
    // set_limits applies the same cap.
    let (_, info) = generate(
        &s.manager,
        req("t").rate_limit(RateLimit::new("slow", 1, StdDuration::from_millis(2))),
    )
    .await;
    policy_error(
        s.manager
            .set_limits(&alice(), &info.id, vec![one_per_ms])
            .await,
    );
    // A window under a millisecond is still refused when the manager is built.
    assert!(matches!(
        KeyManager::builder(MemoryStore::new(), keyring())
            .policy(Policy::default().max_rate(1, StdDuration::from_micros(999)))
            .build(),
        Err(Error::Policy(_))
    ));
}
