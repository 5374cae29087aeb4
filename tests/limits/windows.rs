//! Rate-limit windows: limits, costs, several limits together, org-wide names, changed limits and clock steps.

use super::*;

#[tokio::test]
async fn a_window_admits_up_to_its_limit_then_refuses_until_the_next_window() {
    let s = setup();
    let (key, _) = generate(
        &s.manager,
        req("w").rate_limit(RateLimit::new("burst", 3, secs(10))),
    )
    .await;
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
    let (key, _) = generate(
        &s.manager,
        req("c").rate_limit(RateLimit::new("units", 10, secs(60))),
    )
    .await;
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
    let (key, _) = generate(
        &s.manager,
        req("a")
            .rate_limit(RateLimit::new("minute", 2, secs(60)))
            .rate_limit(RateLimit::new("second", 1, secs(1))),
    )
    .await;
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

/// All or nothing, whichever limit refuses: a refusal by the key's *first* limit must not
/// spend the limits after it either.
#[tokio::test]
async fn a_refusal_by_an_earlier_limit_spends_none_of_the_later_ones() {
    let s = setup();
    let (key, _) = generate(
        &s.manager,
        req("a")
            .rate_limit(RateLimit::new("second", 1, secs(1)))
            .rate_limit(RateLimit::new("minute", 2, secs(60))),
    )
    .await;
    let t = key.expose_secret();
    let v = ok(&s.manager, t).await;
    let left: Vec<_> = v.limits().map(|l| (l.name, l.remaining)).collect();
    assert_eq!(left, vec![("second", 0), ("minute", 1)]);
    // Refused by `second`, the first limit: `minute` keeps its one remaining use.
    let (name, _) = retry_after(s.manager.verify(t, &Scope::Prometheus).await);
    assert_eq!(name, "second");
    s.clock.advance(Duration::seconds(1));
    let v = ok(&s.manager, t).await;
    let left: Vec<_> = v.limits().map(|l| (l.name, l.remaining)).collect();
    assert_eq!(left, vec![("second", 0), ("minute", 0)]);
}

#[tokio::test]
async fn an_org_limit_is_shared_by_the_organizations_keys() {
    let s = setup();
    let shared = || RateLimit::new("org-minute", 3, secs(60)).per_org();
    let (a, _) = generate(&s.manager, req("a").rate_limit(shared())).await;
    let (b, _) = generate(&s.manager, req("b").rate_limit(shared())).await;
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

/// Two keys naming one org-wide limit with different windows (one key's limits changed,
/// or a policy's defaults): each window is its own count, never reset by the other's use.
#[tokio::test]
async fn one_org_wide_name_with_two_windows_keeps_two_counts() {
    let s = setup();
    let (day, _) = generate(
        &s.manager,
        req("a").rate_limit(RateLimit::new("quota", 3, secs(86_400)).per_org()),
    )
    .await;
    let (hour, _) = generate(
        &s.manager,
        req("b").rate_limit(RateLimit::new("quota", 2, secs(3_600)).per_org()),
    )
    .await;
    let (mut by_day, mut by_hour) = (0, 0);
    for _ in 0..10 {
        for (key, admitted) in [(&day, &mut by_day), (&hour, &mut by_hour)] {
            let r = s
                .manager
                .verify(key.expose_secret(), &Scope::Prometheus)
                .await;
            *admitted += usize::from(r.is_ok());
        }
    }
    assert_eq!((by_day, by_hour), (3, 2));
}

#[tokio::test]
async fn a_changed_limit_keeps_its_count_only_while_its_name_and_window_stay() {
    let s = setup();
    let (key, info) = generate(
        &s.manager,
        req("c").rate_limit(RateLimit::new("burst", 2, secs(60))),
    )
    .await;
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
    // Back to the first window inside it: its count is still there (2 used + this one), as
    // a count is a name and a window length, here as on Redis.
    s.manager
        .set_limits(
            &alice(),
            &info.id,
            vec![RateLimit::new("burst", 3, secs(60))],
        )
        .await
        .unwrap();
    assert_eq!(left(ok(&s.manager, t).await), Some((0, reset)));
    retry_after(s.manager.verify(t, &Scope::Prometheus).await);
}

#[tokio::test]
async fn a_clock_stepping_back_a_moment_never_gives_a_window_a_fresh_count() {
    stepping_back_a_moment(setup()).await;
    // The same through the counters trait (an engine given as `shared_counters`), whose
    // decisions report each window's end themselves.
    let clock = api_keys::ManualClock::new(start());
    let manager = KeyManager::builder(MemoryStore::new(), keyring())
        .clock(clock.clone())
        .shared_counters(std::sync::Arc::new(api_keys::LocalCounters::new()))
        .build()
        .unwrap();
    stepping_back_a_moment(common::Setup {
        manager,
        clock,
        audit: Recorder::default(),
    })
    .await;
}

async fn stepping_back_a_moment(s: common::Setup<MemoryStore>) {
    let (key, _) = generate(
        &s.manager,
        req("c").rate_limit(RateLimit::new("ten", 2, secs(10))),
    )
    .await;
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
    let (key, _) = generate(
        &s.manager,
        req("c").rate_limit(RateLimit::new("ten", 1, secs(10))),
    )
    .await;
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
    let (key, info) = generate(&s.manager, req("r").rate_limit(minute("n0", 100))).await;
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
        let (key, _) = generate(
            &s.manager,
            req(&format!("k{i}"))
                .rate_limit(RateLimit::new(format!("org-{i}"), 1, secs(60)).per_org()),
        )
        .await;
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

/// A window that ends past the calendar's last moment (year 9999, where `time` stops) was
/// reported as resetting at the Unix epoch: a client told by a `reset` in 1970 that its window
/// is long over. It is the calendar's last moment now; `reset_after` was right and still is.
#[tokio::test]
async fn a_window_ending_past_the_calendar_reports_its_last_moment_not_1970() {
    let s = setup();
    let last = api_keys::time::PrimitiveDateTime::MAX.assume_utc();
    // 9999-12-31T23:30:00Z, and a key that expires at the calendar's end.
    let near_end = api_keys::time::OffsetDateTime::from_unix_timestamp(253_402_299_000).unwrap();
    s.clock.set(near_end);
    let (key, _) = generate(
        &s.manager,
        req("end")
            .expiry(api_keys::Expiry::At(last))
            .rate_limit(RateLimit::new("hourly", 10, secs(3600))),
    )
    .await;
    let v = ok(&s.manager, key.expose_secret()).await;
    let l = v.limits().next().unwrap();
    assert_eq!(l.reset_after, secs(1800));
    assert!(l.reset > near_end, "{}", l.reset);
    assert!(l.reset <= last, "{}", l.reset);
}
