//! Usage limits on verify (issue 11): rate limits, credits, per-org limits, with ManualClock.

mod common;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use api_keys::time::Duration;
use api_keys::{
    AuditAction, Credits, Error, FailureClass, GenerateRequest, KeyManager, KeyStore, MemoryStore,
    Policy, RateLimit, Refill, Scope,
};
use common::*;

fn req(name: &str) -> GenerateRequest {
    GenerateRequest::new(name).scope(Scope::Prometheus)
}

fn secs(n: u64) -> StdDuration {
    StdDuration::from_secs(n)
}

async fn ok(m: &KeyManager<MemoryStore>, token: &str) -> api_keys::Verified {
    m.verify(token, &Scope::Prometheus).await.unwrap()
}

fn retry_after(r: Result<api_keys::Verified, Error>) -> (String, StdDuration) {
    match r {
        Err(Error::RateLimited {
            limit, retry_after, ..
        }) => (limit, retry_after),
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test]
async fn a_window_admits_up_to_its_limit_then_refuses_until_the_next_window() {
    let s = setup();
    let (key, _) = s
        .manager
        .generate(
            &alice(),
            req("w").rate_limit(RateLimit::new("burst", 3, secs(10))),
        )
        .await
        .unwrap();
    // The test clock starts on a 10-second boundary; 2 s into the window.
    s.clock.advance(Duration::seconds(2));
    for left in [2, 1, 0] {
        let v = ok(&s.manager, key.expose_secret()).await;
        let l: Vec<_> = v.limits().collect();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].name, l[0].limit, l[0].remaining), ("burst", 3, left));
        assert_eq!(l[0].reset_after, secs(8));
        assert_eq!(l[0].window, secs(10));
    }
    let (name, after) = retry_after(
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
    );
    assert_eq!((name.as_str(), after), ("burst", secs(8)));
    s.clock.advance(Duration::milliseconds(7_999));
    let (_, after) = retry_after(
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
    );
    assert_eq!(after, StdDuration::from_millis(1));
    s.clock.advance(Duration::milliseconds(1));
    let v = ok(&s.manager, key.expose_secret()).await;
    assert_eq!(v.limits().next().unwrap().remaining, 2);
    // Refusals are audited as failed verifications of that class.
    let refused = s
        .audit
        .events()
        .iter()
        .filter(|e| e.action == AuditAction::VerificationFailed(FailureClass::RateLimited))
        .count();
    assert_eq!(refused, 2);
}

#[tokio::test]
async fn a_cost_above_one_spends_that_many_units() {
    let s = setup();
    let (key, _) = s
        .manager
        .generate(
            &alice(),
            req("c").rate_limit(RateLimit::new("units", 10, secs(60))),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    let v = s
        .manager
        .verify_with(t, &Scope::Prometheus, 4)
        .await
        .unwrap();
    assert_eq!(v.limits().next().unwrap().remaining, 6);
    let v = s
        .manager
        .verify_with(t, &Scope::Prometheus, 4)
        .await
        .unwrap();
    assert_eq!(v.limits().next().unwrap().remaining, 2);
    retry_after(s.manager.verify_with(t, &Scope::Prometheus, 3).await);
    let v = s
        .manager
        .verify_with(t, &Scope::Prometheus, 2)
        .await
        .unwrap();
    assert_eq!(v.limits().next().unwrap().remaining, 0);
}

#[tokio::test]
async fn all_limits_of_a_key_are_spent_together_or_not_at_all() {
    let s = setup();
    let (key, _) = s
        .manager
        .generate(
            &alice(),
            req("a")
                .rate_limit(RateLimit::new("minute", 2, secs(60)))
                .rate_limit(RateLimit::new("second", 1, secs(1))),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    let v = ok(&s.manager, t).await;
    let left: Vec<_> = v.limits().map(|l| (l.name, l.remaining)).collect();
    assert_eq!(left, vec![("minute", 1), ("second", 0)]);
    // Refused by `second`: `minute` must not have been spent by the refusal.
    let (name, after) = retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    assert_eq!((name.as_str(), after), ("second", secs(1)));
    s.clock.advance(Duration::seconds(1));
    let v = ok(&s.manager, t).await;
    let left: Vec<_> = v.limits().map(|l| (l.name, l.remaining)).collect();
    assert_eq!(left, vec![("minute", 0), ("second", 0)]);
    // Both full now: retry_after waits for the later window.
    s.clock.advance(Duration::seconds(1));
    let (name, after) = retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    let to_minute = 60 - (s.manager.now().unix_timestamp() % 60) as u64;
    assert_eq!((name.as_str(), after), ("minute", secs(to_minute)));
}

#[tokio::test]
async fn a_rate_limited_request_spends_no_credits() {
    let s = setup();
    let (key, _) = s
        .manager
        .generate(
            &alice(),
            req("r")
                .rate_limit(RateLimit::new("minute", 1, secs(60)))
                .credits(Credits::new(5)),
        )
        .await
        .unwrap();
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
    let (key, info) = s
        .manager
        .generate(
            &alice(),
            req("n")
                .rate_limit(RateLimit::new("minute", 1, secs(60)))
                .credits(Credits::new(2)),
        )
        .await
        .unwrap();
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
    let (key, _) = s
        .manager
        .generate(&alice(), req("n").credits(Credits::new(50)))
        .await
        .unwrap();
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
    let (key, _) = s
        .manager
        .generate(
            &alice(),
            req("d").credits(Credits::new(2).refill(Refill::daily(5))),
        )
        .await
        .unwrap();
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
    let (key, _) = s
        .manager
        .generate(
            &alice(),
            req("m").credits(Credits::new(1).refill(Refill::monthly(1, 3))),
        )
        .await
        .unwrap();
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
async fn an_org_limit_is_shared_by_the_organizations_keys() {
    let s = setup();
    let shared = || RateLimit::new("org-minute", 3, secs(60)).per_org();
    let (a, _) = s
        .manager
        .generate(&alice(), req("a").rate_limit(shared()))
        .await
        .unwrap();
    let (b, _) = s
        .manager
        .generate(&alice(), req("b").rate_limit(shared()))
        .await
        .unwrap();
    let (other, _) = s
        .manager
        .generate(&mallory_other_org(), req("c").rate_limit(shared()))
        .await
        .unwrap();
    ok(&s.manager, a.expose_secret()).await;
    ok(&s.manager, a.expose_secret()).await;
    let v = ok(&s.manager, b.expose_secret()).await;
    assert_eq!(v.limits().next().unwrap().remaining, 0);
    retry_after(
        s.manager
            .verify(b.expose_secret(), &Scope::Prometheus)
            .await,
    );
    retry_after(
        s.manager
            .verify(a.expose_secret(), &Scope::Prometheus)
            .await,
    );
    // Another organization's count is its own.
    let v = ok(&s.manager, other.expose_secret()).await;
    assert_eq!(v.limits().next().unwrap().remaining, 2);
}

#[tokio::test]
async fn roll_copies_the_limits_and_never_refills_the_credits() {
    let s = setup();
    let (key, info) = s
        .manager
        .generate(
            &alice(),
            req("r")
                .rate_limit(RateLimit::new("minute", 100, secs(60)))
                .credits(Credits::new(3)),
        )
        .await
        .unwrap();
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
    let (key, info) = s.manager.generate(&alice(), req("s")).await.unwrap();
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

#[tokio::test]
async fn a_changed_limit_keeps_its_count_only_while_its_name_and_window_stay() {
    let s = setup();
    let (key, info) = s
        .manager
        .generate(
            &alice(),
            req("c").rate_limit(RateLimit::new("burst", 2, secs(60))),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    s.clock.advance(Duration::seconds(1));
    let left = |v: api_keys::Verified| v.limits().next().map(|l| (l.remaining, l.reset_after));
    // (The test clock starts on a 10-second boundary, not necessarily a minute's.)
    let (first, reset) = left(ok(&s.manager, t).await).unwrap();
    assert_eq!(first, 1);
    assert!(reset <= secs(59));
    // Same name and window, a higher limit: the count carries on (1 used + this one).
    s.manager
        .set_limits(
            &alice(),
            &info.id,
            vec![RateLimit::new("burst", 3, secs(60))],
        )
        .await
        .unwrap();
    assert_eq!(left(ok(&s.manager, t).await), Some((1, reset)));
    // Same name, another window: a fresh count in a window of the new length.
    s.manager
        .set_limits(
            &alice(),
            &info.id,
            vec![RateLimit::new("burst", 3, secs(10))],
        )
        .await
        .unwrap();
    assert_eq!(left(ok(&s.manager, t).await), Some((2, secs(9))));
    assert_eq!(left(ok(&s.manager, t).await), Some((1, secs(9))));
    assert_eq!(left(ok(&s.manager, t).await), Some((0, secs(9))));
    retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    // Back to the first window: fresh again (the count of the 60 s window is gone).
    s.manager
        .set_limits(
            &alice(),
            &info.id,
            vec![RateLimit::new("burst", 3, secs(60))],
        )
        .await
        .unwrap();
    assert_eq!(left(ok(&s.manager, t).await), Some((2, reset)));
}

#[tokio::test]
async fn a_clock_stepping_back_a_moment_never_gives_a_window_a_fresh_count() {
    let s = setup();
    let (key, _) = s
        .manager
        .generate(
            &alice(),
            req("c").rate_limit(RateLimit::new("ten", 2, secs(10))),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    // The test clock starts on a 10-second boundary: this is the next window's first second.
    s.clock.advance(Duration::seconds(10));
    ok(&s.manager, t).await;
    // A reading a second earlier (another thread's clock, an NTP step) counts in the window
    // already counting, instead of starting the previous one afresh, and says when that
    // window ends...
    s.clock.advance(Duration::seconds(-1));
    let v = ok(&s.manager, t).await;
    let l = v.limits().next().unwrap();
    assert_eq!((l.remaining, l.reset_after), (0, secs(11)));
    // ...so that, back in the window, the limit is spent: 2 admitted, not 3.
    s.clock.advance(Duration::seconds(1));
    retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    // The next window starts fresh as always.
    s.clock.advance(Duration::seconds(10));
    ok(&s.manager, t).await;
}

#[tokio::test]
async fn a_clock_stepped_back_by_more_than_a_window_does_not_lock_a_key_out() {
    let s = setup();
    let (key, _) = s
        .manager
        .generate(
            &alice(),
            req("c").rate_limit(RateLimit::new("ten", 1, secs(10))),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    s.clock.advance(Duration::seconds(30));
    ok(&s.manager, t).await;
    retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    // The wall clock steps back by 25 s (more than the window): the key is counted in the
    // window of that time, not refused until the clock is back where it was.
    s.clock.advance(Duration::seconds(-25));
    let v = ok(&s.manager, t).await;
    let l = v.limits().next().unwrap();
    assert_eq!((l.remaining, l.reset_after), (0, secs(5)));
    let (_, after) = retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    assert_eq!(after, secs(5));
}

#[tokio::test]
async fn limits_renamed_many_times_keep_their_own_counts() {
    let s = setup();
    let minute = |name: &str, n| RateLimit::new(name, n, secs(60));
    let (key, info) = s
        .manager
        .generate(&alice(), req("r").rate_limit(minute("n0", 100)))
        .await
        .unwrap();
    let t = key.expose_secret();
    ok(&s.manager, t).await;
    // Eight names counted over time (each rename counts once under the new name)...
    for i in 1..8 {
        s.manager
            .set_limits(&alice(), &info.id, vec![minute(&format!("n{i}"), 100)])
            .await
            .unwrap();
        ok(&s.manager, t).await;
    }
    // ...then two new names at once: each keeps its own count, so both are enforced.
    s.manager
        .set_limits(&alice(), &info.id, vec![minute("x", 1), minute("y", 2)])
        .await
        .unwrap();
    let v = ok(&s.manager, t).await;
    let remaining: Vec<u64> = v.limits().map(|l| l.remaining).collect();
    assert_eq!(remaining, [0, 1]);
    let (limit, _) = retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    assert_eq!(limit, "x");
}

#[tokio::test]
async fn an_organization_counts_more_org_wide_names_than_one_key_can_have() {
    let s = setup();
    let mut tokens = Vec::new();
    for i in 0..api_keys::MAX_RATE_LIMITS + 2 {
        let (key, _) = s
            .manager
            .generate(
                &alice(),
                req(&format!("k{i}"))
                    .rate_limit(RateLimit::new(format!("org-{i}"), 1, secs(60)).per_org()),
            )
            .await
            .unwrap();
        tokens.push(key);
    }
    for key in &tokens {
        ok(&s.manager, key.expose_secret()).await;
    }
    // Every key's org-wide limit kept its own count: none is admitted a second time.
    for key in &tokens {
        retry_after(
            s.manager
                .verify(key.expose_secret(), &Scope::Prometheus)
                .await,
        );
    }
}

#[tokio::test]
async fn a_tampered_limit_in_the_stored_record_is_an_integrity_failure() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), api_keys::Policy::default());
    let (key, info) = s
        .manager
        .generate(
            &alice(),
            req("t")
                .rate_limit(RateLimit::new("minute", 1, secs(60)))
                .credits(Credits::new(1)),
        )
        .await
        .unwrap();
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
    let (key, info) = s.manager.generate(&alice(), req("d")).await.unwrap();
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
    let (key, info) = s
        .manager
        .generate(
            &alice(),
            req("e")
                .rate_limit(RateLimit::new("minute", 300, secs(60)))
                .credits(Credits::new(1)),
        )
        .await
        .unwrap();
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
    let (_, info) = s
        .manager
        .generate(
            &alice(),
            req("f").rate_limit(RateLimit::new("minute", 300, secs(60))),
        )
        .await
        .unwrap();
    assert_eq!(info.credits, Some(Credits::new(5).refill(Refill::daily(5))));
    // Without maxima, a default-less policy adds nothing.
    let plain = setup();
    let (_, info) = plain.manager.generate(&alice(), req("g")).await.unwrap();
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
    // Credits above the maximum, initially or by refill.
    for c in [
        Credits::new(1_001),
        Credits::new(10).refill(Refill::monthly(1, 5_000)),
    ] {
        let msg = policy_error(s.manager.generate(&alice(), req("c").credits(c)).await);
        assert!(msg.contains("maximum of 1000"), "{msg}");
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
    let (key, info) = s.manager.generate(&alice(), req("m")).await.unwrap();
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
    let (key, info) = s.manager.generate(&alice(), req("r")).await.unwrap();
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
    assert!(build(limited_policy()).is_ok());
}
