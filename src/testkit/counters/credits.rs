//! Credits: an exact balance under concurrency, refills that set it once per period, a
//! balance set or shared by `set_credits` and `link_credits`, and reads of it.

use futures_util::future::join_all;

use super::{Check, DAY, T0, allowed, consume, err, key, request};
use crate::testkit::{fail, random_org};
use crate::{Credits, Decision, Refill, UsageCounters};

/// With `n` credits, exactly `n` of many concurrent requests are admitted.
pub async fn credits_are_exact_under_concurrency<C: UsageCounters>(engine: &C) -> Check {
    const C: &str = "credits_are_exact_under_concurrency";
    let org = random_org();
    let k = key();
    let credits = Credits::new(40);
    let results =
        join_all((0..160).map(|_| consume(engine, request(k, &org, &[], Some(&credits), 1, T0))))
            .await;
    let mut admitted = 0;
    for r in results {
        match r.map_err(|e| err(C, e))? {
            Decision::Allowed { .. } => admitted += 1,
            Decision::OutOfCredits { .. } => {}
            other => return Err(fail(C, format!("unexpected {other:?}"))),
        }
    }
    if admitted != 40 {
        return Err(fail(
            C,
            format!("{admitted} of 160 admitted with 40 credits"),
        ));
    }
    Ok(())
}

/// A daily refill sets the balance at the first use of a new day (never adds), and not
/// before; a monthly one on day `d` at the first use from the `d`th on, not by calendar month; `credits` reads the balance as a use at that time would find it (the initial one
/// before the first use, refilled once a new day began), without spending, and `None` for a
/// key without credits.
pub async fn refill_sets_the_balance<C: UsageCounters>(engine: &C) -> Check {
    const C: &str = "refill_sets_the_balance";
    let org = random_org();
    let k = key();
    let credits = Credits::new(1).refill(Refill::daily(3));
    let step = |now| consume(engine, request(k, &org, &[], Some(&credits), 1, now));
    let read = |c, now| engine.credits(k, c, now);
    let got = read(Some(&credits), T0).await.map_err(|e| err(C, e))?;
    if got != Some(1) {
        return Err(fail(
            C,
            format!("credits before the first use: {got:?}, expected the initial 1"),
        ));
    }
    let got = read(None, T0).await.map_err(|e| err(C, e))?;
    if got.is_some() {
        return Err(fail(
            C,
            format!("credits of a key without credits: {got:?}, expected None"),
        ));
    }
    allowed(
        C,
        &step(T0 + 1).await.map_err(|e| err(C, e))?,
        "the first use",
    )?;
    if !matches!(
        step(T0 + DAY - 1).await.map_err(|e| err(C, e))?,
        Decision::OutOfCredits { .. }
    ) {
        return Err(fail(C, "no refill may happen before the day ends"));
    }
    // Read twice: a read refills a due balance and spends nothing.
    for _ in 0..2 {
        let got = read(Some(&credits), T0 + DAY)
            .await
            .map_err(|e| err(C, e))?;
        if got != Some(3) {
            return Err(fail(
                C,
                format!("credits on the next day: {got:?}, expected 3 (refilled, unspent)"),
            ));
        }
    }
    let u = allowed(
        C,
        &step(T0 + DAY).await.map_err(|e| err(C, e))?,
        "the next day",
    )?;
    if u.credits != Some(2) {
        return Err(fail(C, format!("after the refill: {u:?}, expected 2 left")));
    }
    let u = allowed(
        C,
        &step(T0 + 2 * DAY).await.map_err(|e| err(C, e))?,
        "a day later",
    )?;
    if u.credits != Some(2) {
        return Err(fail(
            C,
            format!("a refill must set, not add: {u:?}, expected 2 left"),
        ));
    }
    // A monthly refill on the 15th: its period runs from the 15th to the next month's 15th,
    // not by calendar month.
    let k = key();
    let credits = Credits::new(1).refill(Refill::monthly(15, 5));
    let steps: [(i64, Option<u64>, &str); 4] = [
        (T0 + 9 * DAY, Some(0), "January 10th, the first use"),
        (T0 + 14 * DAY - 1, None, "the last moment of January 14th"),
        (T0 + 14 * DAY, Some(4), "January 15th (refilled to 5)"),
        (
            T0 + 31 * DAY,
            Some(3),
            "February 1st (no refill before the 15th)",
        ),
    ];
    for (now, left, what) in steps {
        let d = consume(engine, request(k, &org, &[], Some(&credits), 1, now))
            .await
            .map_err(|e| err(C, e))?;
        let got = match d {
            Decision::Allowed { usage, .. } => usage.credits,
            Decision::OutOfCredits { .. } => None,
            other => return Err(fail(C, format!("{what}: unexpected {other:?}"))),
        };
        if got != left {
            return Err(fail(
                C,
                format!(
                    "a monthly refill on the 15th, {what}: {got:?} credits left (None: \
                     refused), expected {left:?}"
                ),
            ));
        }
    }
    Ok(())
}

/// `set_credits` sets a balance; `link_credits` makes a second key spend from it, and
/// `forget` of the first (deleted after a roll) leaves that balance to the second.
pub async fn set_and_link_credits<C: UsageCounters>(engine: &C) -> Check {
    const C: &str = "set_and_link_credits";
    let org = random_org();
    let (a, b) = (key(), key());
    let credits = Credits::new(100);
    engine
        .set_credits(a, &credits, 2, T0)
        .await
        .map_err(|e| err(C, e))?;
    let got = engine
        .credits(a, Some(&credits), T0)
        .await
        .map_err(|e| err(C, e))?;
    if got != Some(2) {
        return Err(fail(C, format!("set_credits(2) then credits: {got:?}")));
    }
    allowed(
        C,
        &consume(engine, request(a, &org, &[], Some(&credits), 1, T0))
            .await
            .map_err(|e| err(C, e))?,
        "key a",
    )?;
    engine.link_credits(a, b).await.map_err(|e| err(C, e))?;
    let u = allowed(
        C,
        &consume(engine, request(b, &org, &[], Some(&credits), 1, T0))
            .await
            .map_err(|e| err(C, e))?,
        "the linked key",
    )?;
    if u.credits != Some(0) {
        return Err(fail(
            C,
            format!("the linked key got a fresh balance: {u:?}"),
        ));
    }
    for (name, k) in [("a", a), ("b", b)] {
        if !matches!(
            consume(engine, request(k, &org, &[], Some(&credits), 1, T0))
                .await
                .map_err(|e| err(C, e))?,
            Decision::OutOfCredits { .. }
        ) {
            return Err(fail(C, format!("key {name} must be out of credits")));
        }
    }
    // The rolled key is deleted: its counters go, the balance it shares with `b` stays.
    engine.forget(a).await.map_err(|e| err(C, e))?;
    if !matches!(
        consume(engine, request(b, &org, &[], Some(&credits), 1, T0))
            .await
            .map_err(|e| err(C, e))?,
        Decision::OutOfCredits { .. }
    ) {
        return Err(fail(
            C,
            "forgetting key a gave key b, which shares its balance, a fresh one",
        ));
    }
    Ok(())
}

/// A balance set, started or refilled on a day is not refilled again before a period that
/// begins after that day, whatever the schedule of the request that finds it (a roll's keys
/// with different credits; a node still deciding by a schedule a manager just changed):
/// daily and monthly periods are compared as days, never as period numbers of their own.
pub async fn schedules_compare_by_day<C: UsageCounters>(engine: &C) -> Check {
    const C: &str = "schedules_compare_by_day";
    let org = random_org();
    let k = key();
    let daily = Credits::new(100).refill(Refill::daily(3));
    let monthly = Credits::new(100).refill(Refill::monthly(1, 1000));
    // 2026-01-11, 01:00 UTC: not a monthly refill day.
    let t = T0 + 10 * DAY + 3_600_000;
    engine
        .set_credits(k, &daily, 5, t)
        .await
        .map_err(|e| err(C, e))?;
    let steps: [(&Credits, i64, u64, &str); 5] = [
        (
            &monthly,
            t + 60_000,
            4,
            "a monthly schedule, the day the balance was set",
        ),
        (&daily, t + 120_000, 3, "the daily schedule, the same day"),
        (
            &daily,
            t + DAY,
            2,
            "the daily schedule, the next day (refilled to 3)",
        ),
        (
            &monthly,
            t + 2 * DAY,
            1,
            "a monthly schedule whose period began before that",
        ),
        (
            &monthly,
            T0 + 31 * DAY,
            999,
            "a monthly schedule, its next period",
        ),
    ];
    for (credits, now, left, what) in steps {
        let u = allowed(
            C,
            &consume(engine, request(k, &org, &[], Some(credits), 1, now))
                .await
                .map_err(|e| err(C, e))?,
            what,
        )?;
        if u.credits != Some(left) {
            return Err(fail(
                C,
                format!("{what}: {:?} credits left, expected {left}", u.credits),
            ));
        }
    }
    Ok(())
}
