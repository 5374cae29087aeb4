//! A conformance suite for [`UsageCounters`] engines: each duty written on the trait.
//!
//! ```
//! # async fn demo() {
//! let engine = api_keys::LocalCounters::new();
//! api_keys::testkit::counters::run(&engine).await.expect("engine conforms");
//! # }
//! ```
//!
//! Every check uses its own random key ids and organization, so an engine shared with other
//! data (a Redis database in use) can be checked. Times are fixed instants far from the real
//! clock, aligned so that windows start where the checks expect.

use std::time::Duration as StdDuration;

use super::{Failure, fail, random_org, random_u64};
use crate::{
    Consumed, CounterError, Credits, Decision, KeyId, OrgId, RateLimit, UsageCounters, UsageRequest,
};

type Check = Result<(), Failure>;

mod credits;
pub use credits::{
    credits_are_exact_under_concurrency, refill_sets_the_balance, schedules_compare_by_day,
    set_and_link_credits,
};

/// 2026-01-01T00:00:00Z in Unix milliseconds: a day, hour and minute boundary.
const T0: i64 = 1_767_225_600_000;
const DAY: i64 = 86_400_000;

/// Runs every check, stopping at the first failure.
///
/// # Errors
/// The first [`Failure`].
pub async fn run<C: UsageCounters>(engine: &C) -> Check {
    window_edges(engine).await?;
    all_or_nothing(engine).await?;
    rate_limited_spends_no_credits(engine).await?;
    cost_zero_is_never_refused(engine).await?;
    org_limits_are_shared(engine).await?;
    rate_limits_are_exact_under_concurrency(engine).await?;
    credits_are_exact_under_concurrency(engine).await?;
    refill_sets_the_balance(engine).await?;
    set_and_link_credits(engine).await?;
    schedules_compare_by_day(engine).await?;
    Ok(())
}

async fn consume<C: UsageCounters>(
    engine: &C,
    req: UsageRequest<'_>,
) -> Result<Decision, CounterError> {
    match engine.consume(req) {
        Consumed::Ready(r) => r,
        Consumed::Pending(f) => f.await,
    }
}

fn key() -> KeyId {
    KeyId(random_u64())
}

fn request<'a>(
    key: KeyId,
    org: &'a OrgId,
    limits: &'a [RateLimit],
    credits: Option<&'a Credits>,
    cost: u64,
    now_ms: i64,
) -> UsageRequest<'a> {
    UsageRequest {
        key,
        org,
        limits,
        credits,
        cost,
        now_ms,
    }
}

fn err(check: &'static str, e: CounterError) -> Failure {
    fail(check, format!("the engine failed: {e} ({e:?})"))
}

fn allowed(check: &'static str, d: &Decision, what: &str) -> Result<crate::Usage, Failure> {
    match d {
        Decision::Allowed { usage, .. } => Ok(*usage),
        other => Err(fail(
            check,
            format!("{what}: expected Allowed, got {other:?}"),
        )),
    }
}

/// A limit of 3 per second: three requests in a window pass with remaining 2, 1, 0 and the
/// window's end as reset; the fourth is refused with `retry_after` to the window's end; a
/// reading a moment earlier (in the window before) does not restart the full window's count;
/// the next window admits again. A request refused by two limits names the one whose window
/// ends last and waits for it.
pub async fn window_edges<C: UsageCounters>(engine: &C) -> Check {
    const C: &str = "window_edges";
    let org = random_org();
    let k = key();
    let limits = [RateLimit::new("burst", 3, StdDuration::from_secs(1))];
    let now = T0 + 200;
    for left in [2, 1, 0] {
        let d = consume(engine, request(k, &org, &limits, None, 1, now))
            .await
            .map_err(|e| err(C, e))?;
        let u = allowed(C, &d, "a request within the limit")?;
        let l = u.limits().first().copied().unwrap_or_default();
        if l.remaining != left || l.reset_ms != T0 + 1000 {
            return Err(fail(
                C,
                format!("expected remaining {left} reset {}, got {l:?}", T0 + 1000),
            ));
        }
    }
    match consume(engine, request(k, &org, &limits, None, 1, now + 99))
        .await
        .map_err(|e| err(C, e))?
    {
        Decision::RateLimited {
            limit: 0,
            retry_after,
            ..
        } if retry_after == StdDuration::from_millis(701) => {}
        other => {
            return Err(fail(
                C,
                format!("the 4th request: expected RateLimited after 701 ms, got {other:?}"),
            ));
        }
    }
    // A reading a moment earlier (another node's clock, a step back), in the window before:
    // admitted in that window's own count or refused in the one already counting, it must
    // not restart the count of the window that is full.
    consume(engine, request(k, &org, &limits, None, 1, T0 - 100))
        .await
        .map_err(|e| err(C, e))?;
    match consume(engine, request(k, &org, &limits, None, 1, now + 150))
        .await
        .map_err(|e| err(C, e))?
    {
        Decision::RateLimited { limit: 0, .. } => {}
        other => {
            return Err(fail(
                C,
                format!(
                    "back in the full window after a reading a moment earlier: expected \
                     RateLimited, got {other:?} (the earlier reading restarted the count)"
                ),
            ));
        }
    }
    let d = consume(engine, request(k, &org, &limits, None, 1, T0 + 1000))
        .await
        .map_err(|e| err(C, e))?;
    let u = allowed(C, &d, "the next window")?;
    if u.limits().first().map(|l| l.remaining) != Some(2) {
        return Err(fail(
            C,
            format!("the next window: expected remaining 2, got {u:?}"),
        ));
    }
    // Two limits refusing at once: the refusal names the one whose window ends last (here
    // the second of the request) and waits for it, not for the first to end.
    let k = key();
    let both = [
        RateLimit::new("second", 1, StdDuration::from_secs(1)),
        RateLimit::new("minute", 1, StdDuration::from_secs(60)),
    ];
    allowed(
        C,
        &consume(engine, request(k, &org, &both, None, 1, T0))
            .await
            .map_err(|e| err(C, e))?,
        "the first request under two limits",
    )?;
    match consume(engine, request(k, &org, &both, None, 1, T0 + 10))
        .await
        .map_err(|e| err(C, e))?
    {
        Decision::RateLimited {
            limit: 1,
            retry_after,
            ..
        } if retry_after == StdDuration::from_millis(59_990) => Ok(()),
        other => Err(fail(
            C,
            format!(
                "refused by both limits: expected RateLimited by limit 1 after 59990 ms (the \
                 window ending last), got {other:?}"
            ),
        )),
    }
}

/// Two limits: a request refused by one spends nothing on the other, whichever of the two
/// refuses (the first in the request's order, or the second; the one of the longer window, or
/// of the shorter).
pub async fn all_or_nothing<C: UsageCounters>(engine: &C) -> Check {
    const C: &str = "all_or_nothing";
    let org = random_org();
    let k = key();
    let limits = [
        RateLimit::new("minute", 2, StdDuration::from_secs(60)),
        RateLimit::new("second", 1, StdDuration::from_secs(1)),
    ];
    let step = |now| consume(engine, request(k, &org, &limits, None, 1, now));
    allowed(
        C,
        &step(T0).await.map_err(|e| err(C, e))?,
        "the first request",
    )?;
    if !matches!(
        step(T0 + 10).await.map_err(|e| err(C, e))?,
        Decision::RateLimited { limit: 1, .. }
    ) {
        return Err(fail(
            C,
            "the second request in one second must be refused by `second`",
        ));
    }
    let u = allowed(
        C,
        &step(T0 + 1000).await.map_err(|e| err(C, e))?,
        "a second later",
    )?;
    let left: Vec<u64> = u.limits().iter().map(|l| l.remaining).collect();
    if left != [0, 0] {
        return Err(fail(
            C,
            format!("the refused request spent `minute`: remaining {left:?}, expected [0, 0]"),
        ));
    }
    // The refusing limit first in the request, and of the longer window: an engine that
    // spends limit by limit (shortest window first, or in reverse order) and stops at the
    // first refusal has spent the other one already.
    let (org, k) = (random_org(), key());
    let limits = [
        RateLimit::new("minute", 1, StdDuration::from_secs(60)),
        RateLimit::new("second", 3, StdDuration::from_secs(1)),
    ];
    let step = |now, cost| consume(engine, request(k, &org, &limits, None, cost, now));
    allowed(
        C,
        &step(T0, 1).await.map_err(|e| err(C, e))?,
        "the first request",
    )?;
    if !matches!(
        step(T0 + 10, 1).await.map_err(|e| err(C, e))?,
        Decision::RateLimited { limit: 0, .. }
    ) {
        return Err(fail(
            C,
            "the second request in one minute must be refused by `minute`",
        ));
    }
    let u = allowed(
        C,
        &step(T0 + 20, 0).await.map_err(|e| err(C, e))?,
        "a request of cost 0",
    )?;
    let left: Vec<u64> = u.limits().iter().map(|l| l.remaining).collect();
    if left != [0, 2] {
        return Err(fail(
            C,
            format!("the refused request spent `second`: remaining {left:?}, expected [0, 2]"),
        ));
    }
    Ok(())
}

/// A rate-limited request spends no credits; a request refused for credits spends no
/// rate-limit units.
pub async fn rate_limited_spends_no_credits<C: UsageCounters>(engine: &C) -> Check {
    const C: &str = "rate_limited_spends_no_credits";
    let org = random_org();
    let k = key();
    let limits = [RateLimit::new("minute", 5, StdDuration::from_secs(60))];
    let credits = Credits::new(3);
    let step = |cost| {
        consume(
            engine,
            request(k, &org, &limits, Some(&credits), cost, T0 + 5),
        )
    };
    let u = allowed(
        C,
        &step(1).await.map_err(|e| err(C, e))?,
        "the first request",
    )?;
    if u.credits != Some(2) {
        return Err(fail(C, format!("expected 2 credits left, got {u:?}")));
    }
    for _ in 0..3 {
        if !matches!(
            step(5).await.map_err(|e| err(C, e))?,
            Decision::RateLimited { .. }
        ) {
            return Err(fail(C, "cost 5 with 4 units left must be RateLimited"));
        }
    }
    // Within the limit but above the balance: refused for credits, no unit spent.
    if !matches!(
        step(4).await.map_err(|e| err(C, e))?,
        Decision::OutOfCredits { .. }
    ) {
        return Err(fail(C, "cost 4 with 2 credits must be OutOfCredits"));
    }
    let u = allowed(
        C,
        &step(1).await.map_err(|e| err(C, e))?,
        "the last request",
    )?;
    let left = u.limits().first().map(|l| l.remaining);
    if u.credits != Some(1) || left != Some(3) {
        return Err(fail(
            C,
            format!("refusals spent something: {u:?}, expected 1 credit and 3 units left"),
        ));
    }
    Ok(())
}

/// A cost of 0 spends nothing and is never refused by a rate limit: not at the limit, and
/// not when the limit was lowered below the window's count since (cost 1 is refused there).
pub async fn cost_zero_is_never_refused<C: UsageCounters>(engine: &C) -> Check {
    const C: &str = "cost_zero_is_never_refused";
    let org = random_org();
    let k = key();
    let two = [RateLimit::new("minute", 2, StdDuration::from_secs(60))];
    let one = [RateLimit::new("minute", 1, StdDuration::from_secs(60))];
    let step = |limits: &'static str, cost| {
        let l = if limits == "two" { &two } else { &one };
        consume(engine, request(k, &org, l, None, cost, T0 + 5))
    };
    for _ in 0..2 {
        allowed(
            C,
            &step("two", 1).await.map_err(|e| err(C, e))?,
            "cost 1 within the limit",
        )?;
    }
    allowed(
        C,
        &step("two", 0).await.map_err(|e| err(C, e))?,
        "cost 0 at the limit",
    )?;
    allowed(
        C,
        &step("one", 0).await.map_err(|e| err(C, e))?,
        "cost 0 above a lowered limit",
    )?;
    if !matches!(
        step("one", 1).await.map_err(|e| err(C, e))?,
        Decision::RateLimited { .. }
    ) {
        return Err(fail(C, "cost 1 above a lowered limit must be RateLimited"));
    }
    Ok(())
}

/// An organization's limit is one count for all its keys; another organization's is its own,
/// and so is the organization's limit of another name; a key's own limit (not `per_org`) of
/// the same name is counted for that key alone.
pub async fn org_limits_are_shared<C: UsageCounters>(engine: &C) -> Check {
    const C: &str = "org_limits_are_shared";
    let (org, other) = (random_org(), random_org());
    // Counted per (organization, name), a key's own limit would be spent by its neighbours.
    let own = [RateLimit::new("own", 1, StdDuration::from_secs(60))];
    for what in [
        "a key's own limit",
        "another key's own limit of the same name",
    ] {
        allowed(
            C,
            &consume(engine, request(key(), &org, &own, None, 1, T0))
                .await
                .map_err(|e| err(C, e))?,
            what,
        )?;
    }
    let limits = [RateLimit::new("org", 2, StdDuration::from_secs(60)).per_org()];
    let (a, b) = (key(), key());
    allowed(
        C,
        &consume(engine, request(a, &org, &limits, None, 1, T0))
            .await
            .map_err(|e| err(C, e))?,
        "key a",
    )?;
    allowed(
        C,
        &consume(engine, request(b, &org, &limits, None, 1, T0))
            .await
            .map_err(|e| err(C, e))?,
        "key b",
    )?;
    if !matches!(
        consume(engine, request(a, &org, &limits, None, 1, T0))
            .await
            .map_err(|e| err(C, e))?,
        Decision::RateLimited { .. }
    ) {
        return Err(fail(C, "the organization's third request must be refused"));
    }
    allowed(
        C,
        &consume(engine, request(key(), &other, &limits, None, 1, T0))
            .await
            .map_err(|e| err(C, e))?,
        "another organization",
    )?;
    // The organization's limit of another name is a count of its own.
    let named = [RateLimit::new("org.other", 2, StdDuration::from_secs(60)).per_org()];
    allowed(
        C,
        &consume(engine, request(a, &org, &named, None, 1, T0))
            .await
            .map_err(|e| err(C, e))?,
        "an organization limit of another name",
    )?;
    Ok(())
}

/// A limit of 40: of 160 concurrent requests of cost 1, exactly 40 are admitted and the
/// others refused, for a key's own limit and for an organization's limit spent by four keys
/// at once (a count read and then spent in a second step admits each request of a burst).
pub async fn rate_limits_are_exact_under_concurrency<C: UsageCounters>(engine: &C) -> Check {
    const C: &str = "rate_limits_are_exact_under_concurrency";
    let org = random_org();
    let own = [RateLimit::new("burst", 40, StdDuration::from_secs(60))];
    let shared = [RateLimit::new("org.burst", 40, StdDuration::from_secs(60)).per_org()];
    let k = key();
    let keys = [key(), key(), key(), key()];
    for (what, limits, keys) in [
        ("a key's own limit", &own, &[k; 4]),
        ("an organization's limit", &shared, &keys),
    ] {
        let results = futures_util::future::join_all((0..160).map(|i| {
            consume(
                engine,
                request(keys[i % 4], &org, limits, None, 1, T0 + 1_000),
            )
        }))
        .await;
        let mut admitted = 0;
        for r in results {
            match r.map_err(|e| err(C, e))? {
                Decision::Allowed { .. } => admitted += 1,
                Decision::RateLimited { .. } => {}
                other => return Err(fail(C, format!("{what}: unexpected {other:?}"))),
            }
        }
        if admitted != 40 {
            return Err(fail(
                C,
                format!("{what} of 40: {admitted} of 160 concurrent requests admitted"),
            ));
        }
    }
    Ok(())
}

/// For an engine shared by every node (not [`LocalCounters`](crate::LocalCounters), whose
/// nodes each count alone): `a` and `b` are two handles on the same shared counters (as two
/// nodes build them). Of 160 concurrent requests, half through each, exactly 40 are admitted
/// with 40 credits, and at most 40 by a rate limit of 40 (an engine that leases may admit
/// fewer). Counts kept per handle (a counter key that names the node or process) let each
/// node spend the whole budget; [`run`] has one handle and cannot see it.
///
/// Not part of [`run`].
///
/// # Errors
/// A [`Failure`] naming `counts_are_shared_between_handles`.
pub async fn counts_are_shared_between_handles<A: UsageCounters, B: UsageCounters>(
    a: &A,
    b: &B,
) -> Check {
    const C: &str = "counts_are_shared_between_handles";
    let org = random_org();
    let credits = Credits::new(40);
    let limits = [RateLimit::new("shared", 40, StdDuration::from_secs(60))];
    for (what, limits, credits) in [
        ("40 credits", &[][..], Some(&credits)),
        ("a rate limit of 40", &limits[..], None),
    ] {
        let k = key();
        let on = |i: usize| {
            let req = request(k, &org, limits, credits, 1, T0 + 2_000);
            async move {
                if i.is_multiple_of(2) {
                    consume(a, req).await
                } else {
                    consume(b, req).await
                }
            }
        };
        let results = futures_util::future::join_all((0..160).map(on)).await;
        let mut admitted = 0;
        for r in results {
            match r.map_err(|e| err(C, e))? {
                Decision::Allowed { .. } => admitted += 1,
                Decision::RateLimited { .. } | Decision::OutOfCredits { .. } => {}
            }
        }
        let exact = credits.is_some();
        if admitted > 40 || (exact && admitted != 40) {
            return Err(fail(
                C,
                format!(
                    "{what}: {admitted} of 160 concurrent requests through two handles admitted"
                ),
            ));
        }
    }
    Ok(())
}
