use std::time::Duration as StdDuration;

use super::decide::MORE_ORG_WINDOWS;
use super::*;
use crate::OrgId;
use crate::limits::engine::Refused;

fn cells(c: &LocalCounters) -> (usize, usize) {
    c.shards.iter().fold((0, 0), |(k, o), s| {
        let s = lock(s);
        (k + s.keys.len(), o + s.orgs.len())
    })
}

fn org_request<'a>(org: &'a OrgId, limit: &'a [RateLimit], now_ms: i64) -> UsageRequest<'a> {
    UsageRequest {
        key: KeyId(1),
        org,
        limits: limit,
        credits: None,
        cost: 1,
        now_ms,
    }
}

#[test]
fn an_organizations_counters_stay_bounded_and_reuse_windows_that_are_over() {
    let c = LocalCounters::new();
    let org = OrgId::try_new("acme").unwrap();
    let minute =
        |i: usize| [RateLimit::new(format!("org-{i}"), 1, StdDuration::from_secs(60)).per_org()];
    let more = |c: &LocalCounters| lock(&c.org_cell("acme")).more.len();
    // One name per key, many keys: each name keeps its own count...
    let names = MAX_RATE_LIMITS + MORE_ORG_WINDOWS;
    for i in 0..names {
        assert!(matches!(
            c.decide(&org_request(&org, &minute(i), 0)),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            c.decide(&org_request(&org, &minute(i), 0)),
            Decision::RateLimited { .. }
        ));
    }
    assert_eq!(more(&c), MORE_ORG_WINDOWS);
    // ...up to the bound: a further name takes the slot whose window ends first.
    assert!(matches!(
        c.decide(&org_request(&org, &minute(names), 0)),
        Decision::Allowed { .. }
    ));
    assert_eq!(more(&c), MORE_ORG_WINDOWS);
    // Once the windows are over, new names reuse their slots instead of growing.
    for i in names + 1..names + 10 {
        assert!(matches!(
            c.decide(&org_request(&org, &minute(i), 60_000)),
            Decision::Allowed { .. }
        ));
    }
    assert_eq!(more(&c), MORE_ORG_WINDOWS);
}

#[test]
fn a_reading_far_before_the_counting_window_starts_over_and_never_overflows() {
    let c = LocalCounters::new();
    let org = OrgId::try_new("acme").unwrap();
    let limit = [RateLimit::new("second", 1, StdDuration::from_secs(1))];
    let req = |now_ms| UsageRequest {
        key: KeyId(2),
        ..org_request(&org, &limit, now_ms)
    };
    assert!(matches!(
        c.decide(&req(1_000_000)),
        Decision::Allowed { .. }
    ));
    // Just before the window: counted in it (refused), retry at its end.
    match c.decide(&req(999_500)) {
        Decision::RateLimited { retry_after, .. } => {
            assert_eq!(retry_after, StdDuration::from_millis(1_500));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Far before (a clock stepped back, or any value a caller passes): its own window.
    assert!(matches!(
        c.decide(&req(i64::MIN + 5)),
        Decision::Allowed { .. }
    ));
    assert!(matches!(
        c.decide(&req(i64::MIN + 5)),
        Decision::RateLimited { .. }
    ));
    assert!(matches!(c.decide(&req(i64::MAX)), Decision::Allowed { .. }));
}

#[test]
fn a_reading_up_to_a_second_before_a_short_window_counts_in_it() {
    let c = LocalCounters::new();
    let org = OrgId::try_new("acme").unwrap();
    let limit = [RateLimit::new("burst", 1, StdDuration::from_millis(10))];
    let req = |now_ms| UsageRequest {
        key: KeyId(3),
        ..org_request(&org, &limit, now_ms)
    };
    assert!(matches!(c.decide(&req(30_000)), Decision::Allowed { .. }));
    // A thread that read the clock 20 ms (two windows) earlier and then waited for the lock:
    // counted in [30 000, 30 010), which is full; retry at its end.
    match c.decide(&req(29_980)) {
        Decision::RateLimited { retry_after, .. } => {
            assert_eq!(retry_after, StdDuration::from_millis(30));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // The window being counted kept its count.
    assert!(matches!(
        c.decide(&req(30_001)),
        Decision::RateLimited { .. }
    ));
    // More than a second back (a clock stepped back): its own window, from zero.
    assert!(matches!(c.decide(&req(28_990)), Decision::Allowed { .. }));
}

#[test]
fn the_last_window_below_i64_max_counts_like_any_other() {
    let c = LocalCounters::new();
    let org = OrgId::try_new("acme").unwrap();
    let limit = [RateLimit::new("second", 1, StdDuration::from_secs(1))];
    let req = |now_ms| UsageRequest {
        key: KeyId(4),
        ..org_request(&org, &limit, now_ms)
    };
    assert!(matches!(
        c.decide(&req(i64::MAX - 10)),
        Decision::Allowed { .. }
    ));
    assert!(matches!(
        c.decide(&req(i64::MAX - 9)),
        Decision::RateLimited { .. }
    ));
    assert!(matches!(
        c.decide(&req(i64::MAX)),
        Decision::RateLimited { .. }
    ));
}

#[test]
fn a_handle_creates_counters_only_when_a_decision_needs_them() {
    let c = LocalCounters::new();
    let limits = [
        RateLimit::new("own", 5, StdDuration::from_secs(1)),
        RateLimit::new("shared", 5, StdDuration::from_secs(1)).per_org(),
    ];
    let h = c.handle(&limits, None);
    // Facts built for a record that is then refused (wrong secret, revoked) stop here.
    assert_eq!(cells(&c), (0, 0));
    let id = KeyId(7);
    let org = OrgId::try_new("acme").unwrap();
    assert_eq!(
        c.decide_with(&h, id, org.as_str(), 1, 0, None).refused,
        Refused::No
    );
    assert_eq!(cells(&c), (1, 1));
    // The map and the handle count in the same cells.
    let req = UsageRequest {
        key: id,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 4,
        now_ms: 0,
    };
    assert!(matches!(c.decide(&req), Decision::Allowed { .. }));
    assert!(matches!(
        c.decide_with(&h, id, org.as_str(), 1, 0, None).refused,
        Refused::Rate { limit: 0, .. }
    ));
}

proptest::proptest! {
    /// The handle's common case (one limit of the key's own, no credits) has a path of its
    /// own: it decides exactly as the general one, call for call (window edges, costs above
    /// the limit, readings before the window).
    #[test]
    fn the_one_limit_path_decides_as_the_general_one(
        limit in 1u64..6,
        window_ms in 1u64..5_000,
        steps in proptest::collection::vec((0u64..8, -6_000i64..6_000), 1..80),
    ) {
        let limits = [RateLimit::new("own", limit, StdDuration::from_millis(window_ms))];
        let (fast, general) = (LocalCounters::new(), LocalCounters::new());
        let (hf, hg) = (fast.handle(&limits, None), general.handle(&limits, None));
        proptest::prop_assert!(hf.one);
        let mut now = 1_000_000_i64;
        for (cost, step) in steps {
            now += step;
            let a = fast.decide_with(&hf, KeyId(1), "acme", cost, now, None);
            let mut ends = [0; MAX_RATE_LIMITS];
            let b = general.decide_with(&hg, KeyId(1), "acme", cost, now, Some(&mut ends));
            proptest::prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
    }
}

/// [`Window::roll`] with every test in one condition: the model its fast path must agree
/// with.
fn roll_model(w: &mut super::decide::Window, window_ms: i64, now: i64) -> i64 {
    let win = window_ms.max(1);
    let counting = w.end == w.start.saturating_add(win);
    let inside = now < w.end || w.end == i64::MAX;
    let slack = win.max(super::decide::STALE_MS);
    if !counting || !inside || now < w.start.saturating_sub(slack) {
        let start = now.div_euclid(win).saturating_mul(win);
        w.start = start;
        w.end = start.saturating_add(win);
        w.used = 0;
    }
    w.end
}

proptest::proptest! {
    /// The window check's usual-case shortcut decides as the full condition for any count
    /// the engine can hold and any reading, the extremes of `i64` included.
    #[test]
    fn the_window_shortcut_agrees_with_the_full_check(
        start in proptest::prop_oneof![
            proptest::prelude::any::<i64>(),
            proptest::prelude::Just(i64::MIN),
            proptest::prelude::Just(i64::MAX),
            -5_000i64..5_000
        ],
        window_ms in proptest::prop_oneof![1i64..5_000, 1i64..(1 << 40)],
        near in -12_000i64..12_000,
        far in proptest::prelude::any::<i64>(),
        pick in 0u8..10,
        aligned in proptest::prelude::any::<bool>(),
        used in 0u64..10,
    ) {
        // Counts as the engine holds them: `end` is `start` plus a length, saturating, never
        // below `start` (a count not started is (MIN, MIN)).
        let end = if aligned { start.saturating_add(window_ms) } else { start.saturating_add(7) };
        // The edges of the window and of the one before it, anywhere near, anywhere at all.
        let now = match pick {
            0 => start.wrapping_add(window_ms),
            1 => start.wrapping_add(window_ms - 1),
            2 => start,
            3 => start.wrapping_sub(window_ms),
            4 => start.wrapping_sub(window_ms + 1),
            5 => far,
            6 => start.wrapping_sub(super::decide::STALE_MS),
            7 => start.wrapping_sub(super::decide::STALE_MS + 1),
            _ => start.saturating_add(near),
        };
        let mut a = super::decide::Window { name: 1, used, start, end };
        let mut b = super::decide::Window { name: 1, used, start, end };
        let ra = a.roll(window_ms, now);
        let rb = roll_model(&mut b, window_ms, now);
        proptest::prop_assert_eq!((ra, a.start, a.end, a.used), (rb, b.start, b.end, b.used));
    }
}

proptest::proptest! {
    /// A balance compares its reading with the remembered first due millisecond instead of
    /// redoing the calendar: for every schedule (refill days past 28 too, as a `Refill` built
    /// without `Credits::check` may say), every day a balance can hold and every reading around
    /// the next refill, that comparison is `refill_period`'s answer.
    #[test]
    fn the_remembered_refill_time_agrees_with_the_calendar(
        monthly in proptest::prelude::any::<bool>(),
        refill_day in 0u8..=32,
        day in proptest::prop_oneof![-800_000i64..800_000, 20_000i64..25_000],
        around in -3i64 * 86_400_000..40 * 86_400_000,
        edge in proptest::prelude::any::<bool>(),
    ) {
        let r = if monthly {
            crate::Refill::monthly(refill_day, 5)
        } else {
            crate::Refill::daily(5)
        };
        let due = crate::limits::engine::next_refill_ms(r, day);
        proptest::prop_assert!(due.is_some(), "a day within ±2 000 years has a next refill");
        let due = due.unwrap_or(0);
        // The millisecond before the due one, the due one, or anywhere from three days
        // before the balance's day to 40 days after it.
        let now = if edge {
            due - i64::from(around % 2 == 0)
        } else {
            day * 86_400_000 + around
        };
        let calendar = crate::limits::engine::refill_period(Some(r), now) > day;
        proptest::prop_assert_eq!(now >= due, calendar, "day {} now {} due {}", day, now, due);
    }
}

/// A monthly balance through the engine: spent, not refilled before the 15th, refilled
/// (set, not added) on it, and not again until the next month's 15th — with the refill time
/// remembered between verifications and worked out again after each refill.
#[test]
fn a_monthly_balance_refills_on_its_day_only() {
    let c = LocalCounters::new();
    let org = crate::OrgId::try_new("acme").unwrap();
    let credits = crate::Credits::new(3).refill(crate::Refill::monthly(15, 2));
    let at = |m: u8, d: u8| {
        let date =
            time::Date::from_calendar_date(2026, time::Month::try_from(m).unwrap(), d).unwrap();
        date.midnight().assume_utc().unix_timestamp() * 1000
    };
    let spend = |now_ms: i64| {
        c.decide(&UsageRequest {
            key: KeyId(7),
            org: &org,
            limits: &[],
            credits: Some(&credits),
            cost: 1,
            now_ms,
        })
    };
    let left = |d: Decision| match d {
        Decision::Allowed { usage, .. } => usage.credits,
        other => panic!("{other:?}"),
    };
    assert_eq!(left(spend(at(3, 10))), Some(2));
    assert_eq!(left(spend(at(3, 14) + 86_399_999)), Some(1));
    assert_eq!(left(spend(at(3, 15) - 1)), Some(0));
    assert!(matches!(
        spend(at(3, 15) - 1),
        Decision::OutOfCredits { .. }
    ));
    // The 15th: set to 2 (then 1 after this verification), not 0 + 2.
    assert_eq!(left(spend(at(3, 15))), Some(1));
    assert_eq!(left(spend(at(4, 14))), Some(0));
    assert!(matches!(
        spend(at(4, 15) - 1),
        Decision::OutOfCredits { .. }
    ));
    assert_eq!(left(spend(at(4, 15) + 1)), Some(1));
}
