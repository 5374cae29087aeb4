//! The counters behind usage limits: the [`UsageCounters`] trait and what it answers.

use std::fmt;
use std::time::Duration as StdDuration;

use crate::store::BoxFuture;
use crate::{Credits, KeyId, MAX_RATE_LIMITS, OrgId, RateLimit, Refill};

/// One verification's request to spend: the key's limits (from its authenticated record), the
/// cost, and the time.
#[derive(Clone, Copy, Debug)]
pub struct UsageRequest<'a> {
    /// The verified key.
    pub key: KeyId,
    /// Its organization (the counter of a [`LimitScope::Org`](crate::LimitScope::Org) limit is the organization's).
    pub org: &'a OrgId,
    /// The key's rate limits (at most [`MAX_RATE_LIMITS`], names unique).
    pub limits: &'a [RateLimit],
    /// The key's credit configuration, if it has a budget.
    pub credits: Option<&'a Credits>,
    /// Units to spend (`verify` spends 1).
    pub cost: u64,
    /// The manager clock's time, in Unix milliseconds.
    pub now_ms: i64,
}

/// One rate limit's state after a decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitUsage {
    /// Units left in the current window.
    pub remaining: u64,
    /// When the current window ends (Unix milliseconds).
    pub reset_ms: i64,
}

/// The state of a key's limits after a decision: one [`LimitUsage`] per rate limit of the
/// request, in the request's order, and the credits left. Fixed size: no allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    limits: [LimitUsage; MAX_RATE_LIMITS],
    len: u8,
    /// Credits left after the decision (`None` for a key without credits).
    pub credits: Option<u64>,
}

impl Usage {
    /// An empty state (no limits, no credits).
    pub fn new() -> Self {
        Usage::default()
    }

    /// Appends the state of the next limit; ignored past [`MAX_RATE_LIMITS`].
    pub fn push(&mut self, l: LimitUsage) {
        if let Some(slot) = self.limits.get_mut(self.len as usize) {
            *slot = l;
            self.len += 1;
        }
    }

    /// The limits' states, in the request's order.
    pub fn limits(&self) -> &[LimitUsage] {
        &self.limits[..self.len as usize]
    }
}

/// What an engine decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admitted: every limit had room and the credits sufficed; all of them were spent.
    Allowed {
        /// The state after spending.
        usage: Usage,
        /// Some limits could not be checked (their engine is unreachable) and were skipped
        /// because they fail open; the manager raises an audit event.
        degraded: bool,
    },
    /// Refused by a rate limit; nothing was spent.
    RateLimited {
        /// Index (in the request's limits) of the refusing limit whose window ends last.
        limit: usize,
        /// How long until every refusing limit has room for this cost.
        retry_after: StdDuration,
        /// The state (nothing spent).
        usage: Usage,
    },
    /// Refused: not enough credits; nothing was spent.
    OutOfCredits {
        /// The state (nothing spent).
        usage: Usage,
    },
}

/// A decision in the crate's compact form: the in-process engine makes one directly (the
/// manager builds a verification's report from it without a [`Usage`]);
/// [`Verdict::into_decision`] and [`Verdict::from_decision`] convert from and to the trait's
/// [`Decision`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verdict {
    pub(crate) refused: Refused,
    pub(crate) left: Left,
}

/// What a decision left of a key's limits, compact (a verification's `Spent` keeps it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Left {
    /// Number of rate limits.
    pub(crate) len: u8,
    /// Per rate limit, units left in its window after the decision.
    pub(crate) remaining: [u64; MAX_RATE_LIMITS],
    /// Bit `i`: rate limit `i` counted in the window after the one containing the decision's
    /// time (a reading a moment before the window already counting).
    pub(crate) ahead: u8,
    /// Credits left (`None` for a key without credits).
    pub(crate) credits: Option<u64>,
}

/// Why a decision refused, if it did (nothing was spent then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    No,
    /// By rate limit `limit` (of the refusing ones, the one whose window ends last), until
    /// `retry_after`.
    Rate {
        limit: usize,
        retry_after: StdDuration,
    },
    Credits,
}

impl Verdict {
    /// The trait's form of this verdict; `ends` are the ends of the windows each rate limit
    /// counted in (Unix ms).
    pub(crate) fn into_decision(self, ends: &[i64; MAX_RATE_LIMITS]) -> Decision {
        let mut usage = Usage::new();
        let len = usize::from(self.left.len);
        for (&remaining, &reset_ms) in self.left.remaining[..len].iter().zip(&ends[..len]) {
            usage.push(LimitUsage {
                remaining,
                reset_ms,
            });
        }
        usage.credits = self.left.credits;
        match self.refused {
            Refused::No => Decision::Allowed {
                usage,
                degraded: false,
            },
            Refused::Rate { limit, retry_after } => Decision::RateLimited {
                limit,
                retry_after,
                usage,
            },
            Refused::Credits => Decision::OutOfCredits { usage },
        }
    }

    /// The compact form of an engine's decision on `limits` at `now_ms`, and whether it was
    /// made degraded (some limits skipped, failing open). A limit the engine counted in the
    /// window after `now_ms`'s (its reported reset is later: a reading a moment before a
    /// window already counting) is marked `ahead`, so that [`Verified::limits`] reports that
    /// window's reset as the engine did.
    ///
    /// [`Verified::limits`]: crate::Verified::limits
    pub(crate) fn from_decision(d: Decision, limits: &[RateLimit], now_ms: i64) -> (Verdict, bool) {
        let (refused, usage, degraded) = match d {
            Decision::Allowed { usage, degraded } => (Refused::No, usage, degraded),
            Decision::RateLimited {
                limit,
                retry_after,
                usage,
            } => (Refused::Rate { limit, retry_after }, usage, false),
            Decision::OutOfCredits { usage } => (Refused::Credits, usage, false),
        };
        let mut left = Left {
            len: usage.len,
            remaining: [0; MAX_RATE_LIMITS],
            ahead: 0,
            credits: usage.credits,
        };
        for (i, (r, u)) in left.remaining.iter_mut().zip(usage.limits()).enumerate() {
            *r = u.remaining;
            if limits
                .get(i)
                .is_some_and(|l| u.reset_ms > window_of(l, now_ms).1)
            {
                left.ahead |= 1 << i;
            }
        }
        (Verdict { refused, left }, degraded)
    }
}

/// What [`UsageCounters::consume`] returns: a decision made at once (no allocation), or a
/// future for an engine that must wait (a network round trip).
pub enum Consumed<'a> {
    /// Decided without waiting.
    Ready(Result<Decision, CounterError>),
    /// Decided when the future completes.
    Pending(BoxFuture<'a, Result<Decision, CounterError>>),
}

impl fmt::Debug for Consumed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consumed::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Consumed::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// A counter engine failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CounterError {
    /// The engine cannot decide now (unreachable, timed out, circuit open) and at least one
    /// limit of the request fails closed.
    #[error("usage counters unavailable")]
    Unavailable(#[source] Option<crate::BoxError>),
}

/// Where the counters of usage limits live. This crate ships [`LocalCounters`](crate::LocalCounters) (in process,
/// the default) and, with the `redis` feature, a Redis engine shared by every node; a host may
/// implement it over its own shared state. The `testkit` feature's `counters` suite checks
/// the duties written here.
///
/// Duties of an implementation:
/// - **All or nothing.** `consume` decides every limit and the credits of one request
///   together and atomically with respect to other `consume` calls on the same counters:
///   either everything is spent, or nothing is.
/// - **Fixed windows.** A limit of `limit` per `window_ms` counts the cost spent in the window
///   `[k·window_ms, (k+1)·window_ms)` (Unix milliseconds) that contains `now_ms`; a request is
///   admitted only if every limit's count plus the cost stays `≤ limit`. A refused request's
///   `retry_after` is the time from `now_ms` to the end of the latest window among the
///   refusing limits. A reading a moment earlier than one already counted (threads or nodes
///   whose clocks differ slightly, a wall clock stepped back) must not restart a count: it
///   counts in the window already counting (and reports that window's end), or in its own
///   window's count as it stands.
/// - **Counter identity.** A [`LimitScope::Key`](crate::LimitScope::Key) limit is counted per (key, name); a
///   [`LimitScope::Org`](crate::LimitScope::Org) limit per (organization, name), shared by every key of the
///   organization. A limit whose window changes (a `set_limits`) may start a fresh count.
/// - **Order.** Rate limits first: a rate-limited request spends no credits, and a request
///   refused for credits spends no rate-limit units.
/// - **Credits.** A key's balance starts at [`Credits::initial`] on first use. A refill
///   *sets* the balance to its amount at the first use in a new period (daily: each UTC day;
///   monthly on day `d`: from `d` 00:00 UTC to the next month's `d`), never adds. The balance
///   never goes below zero, and never admits more than it holds: with `n` credits, exactly
///   `n` concurrent requests of cost 1 are admitted, on every node sharing the counters.
/// - `set_credits` sets a balance; a balance started, set or refilled on a day is not refilled
///   again before the next period that begins after that day, whatever the schedule of the
///   request that finds it (days, not per-schedule period numbers, are compared); `link_credits(from,
///   to)` makes `to` spend from the same balance as `from` from then on (a roll), never
///   giving `to` a fresh one.
/// - An engine that can be unreachable fails closed for credits unless configured otherwise,
///   and reports a fail-open decision as `degraded`.
pub trait UsageCounters: Send + Sync + 'static {
    /// Decides and spends one request.
    fn consume<'a>(&'a self, req: UsageRequest<'a>) -> Consumed<'a>;

    /// Sets a key's credit balance to `balance` in the period containing `now_ms`.
    fn set_credits<'a>(
        &'a self,
        key: KeyId,
        credits: &'a Credits,
        balance: u64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), CounterError>>;

    /// A key's balance at `now_ms` (refilled if a period passed), without spending; `None`
    /// for a key without credits.
    fn credits<'a>(
        &'a self,
        key: KeyId,
        credits: Option<&'a Credits>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<u64>, CounterError>>;

    /// Makes `to` share `from`'s credit balance (as it is now) from now on.
    fn link_credits<'a>(
        &'a self,
        from: KeyId,
        to: KeyId,
    ) -> BoxFuture<'a, Result<(), CounterError>>;

    /// Forgets a deleted key's own counters (best effort; shared balances stay while another
    /// key uses them).
    fn forget<'a>(&'a self, key: KeyId) -> BoxFuture<'a, Result<(), CounterError>>;
}

const DAY_MS: i64 = 86_400_000;

/// The Unix day (days since 1970-01-01) of `now_ms`.
pub(crate) fn unix_day(now_ms: i64) -> i64 {
    now_ms.div_euclid(DAY_MS)
}

/// The Unix day on which the refill period containing `now_ms` began: today for a daily
/// refill, the refill day of this month or of the month before for a monthly one (today
/// without a refill).
///
/// A balance remembers the Unix day it was last started, set or refilled, and a refill is due
/// when the current period began after that day. Both schedules count in days, so a balance
/// shared by keys of different schedules (a roll whose replacement got other credits), or one
/// whose schedule a manager changed while another node still decides by the old one, compares
/// days with days: a balance set today is never refilled today by either schedule.
pub(crate) fn refill_period(refill: Option<Refill>, now_ms: i64) -> i64 {
    let today = unix_day(now_ms);
    let Some(Refill::Monthly { day, .. }) = refill else {
        return today;
    };
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000)) else {
        return today;
    };
    // Days 1 to 28 exist in every month (`Credits::check`); a day past a month's end (a
    // `Refill` built without that check) is that month's last day, never "every day".
    let on = |year: i32, month: time::Month| {
        let d = day.clamp(1, month.length(year));
        time::Date::from_calendar_date(year, month, d).ok()
    };
    let this_month = on(t.year(), t.month());
    let start = match this_month {
        Some(d) if t.date() >= d => Some(d),
        _ if t.month() == time::Month::January => on(t.year() - 1, time::Month::December),
        _ => on(t.year(), t.month().previous()),
    };
    start.map_or(today, |d| {
        i64::from(d.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY
    })
}

/// The first Unix millisecond at which a balance last started, set or refilled on Unix day
/// `day` is due for refill `r`: `refill_period(Some(r), now_ms) > day` exactly when `now_ms` is
/// at least this (a refill period only moves forward with the clock). `None` where the
/// calendar cannot say (dates outside the `time` crate's range): work the period out each time.
///
/// A verification compares one number instead of redoing the calendar (a monthly schedule's
/// `refill_period` is ~190 instructions; a verification without limits, ~1 000).
pub(crate) fn next_refill_ms(r: Refill, day: i64) -> Option<i64> {
    let first = match r {
        Refill::Daily { .. } => day.checked_add(1)?,
        Refill::Monthly {
            day: refill_day, ..
        } => {
            let after =
                i32::try_from(day.checked_add(1)?.checked_add(UNIX_EPOCH_JULIAN_DAY)?).ok()?;
            let from = time::Date::from_julian_day(after).ok()?;
            // The refill date of `from`'s month when it is not before `from`, else the next
            // month's (as `refill_period` places them: day 1 at least, a month's last day at most).
            let on = |year: i32, month: time::Month| {
                let d = refill_day.clamp(1, month.length(year));
                time::Date::from_calendar_date(year, month, d).ok()
            };
            let this = on(from.year(), from.month())?;
            let date = if this >= from {
                this
            } else if from.month() == time::Month::December {
                on(from.year().checked_add(1)?, time::Month::January)?
            } else {
                on(from.year(), from.month().next())?
            };
            i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY
        }
    };
    first.checked_mul(DAY_MS)
}

/// The period number builds before the day-based periods kept in Redis (`p`): days since 1970
/// for a daily refill, months since year 0 for a monthly one (from its refill day), 0 without
/// a refill. Still written next to the day, so that nodes of such a build sharing the Redis
/// during a rolling upgrade neither fail on a balance without it nor refill it twice, and
/// read once from a balance such a build wrote.
#[cfg(feature = "redis")]
pub(crate) fn legacy_period(refill: Option<Refill>, now_ms: i64) -> i64 {
    match refill {
        None => 0,
        Some(Refill::Daily { .. }) => unix_day(now_ms),
        Some(Refill::Monthly { day, .. }) => {
            let Ok(t) = time::OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000)) else {
                return 0;
            };
            let months = i64::from(t.year()) * 12 + i64::from(u8::from(t.month())) - 1;
            if t.day() >= day { months } else { months - 1 }
        }
    }
}

/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// The end of the window containing `now_ms`, and its index.
#[inline]
pub(crate) fn window_of(limit: &RateLimit, now_ms: i64) -> (i64, i64) {
    // A limit the trait was handed without `check` may say up to `u64::MAX` ms.
    let w = i64::try_from(limit.window_ms()).unwrap_or(i64::MAX).max(1);
    let idx = now_ms.div_euclid(w);
    (idx, idx.saturating_add(1).saturating_mul(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unchecked limits reach the trait's engines too: the longest window at the clock's
    /// extremes gives a window, never a panic (a window of `u64::MAX` ms cast to `i64` was -1,
    /// and `i64::MIN / -1` overflows).
    #[test]
    fn the_longest_unchecked_window_never_panics() {
        let l = RateLimit::new("forever", 1, StdDuration::MAX);
        assert_eq!(l.window_ms(), u64::MAX);
        for now in [i64::MIN, -1, 0, i64::MAX] {
            let (idx, end) = window_of(&l, now);
            assert!(end >= now || end == i64::MAX, "{now}: {idx} {end}");
        }
        let c = crate::LocalCounters::new();
        let org = crate::OrgId::try_new("acme").unwrap();
        let limits = [l];
        for now_ms in [i64::MIN, i64::MAX] {
            let d = c.decide(&UsageRequest {
                key: crate::KeyId(9),
                org: &org,
                limits: &limits,
                credits: None,
                cost: 1,
                now_ms,
            });
            assert!(matches!(d, Decision::Allowed { .. }), "{d:?}");
        }
    }

    #[test]
    fn monthly_periods_start_on_the_day() {
        let t = |m: u8, d: u8, secs: i64| {
            let date =
                time::Date::from_calendar_date(2026, time::Month::try_from(m).unwrap(), d).unwrap();
            (date.midnight().assume_utc().unix_timestamp() + secs) * 1000
        };
        let day = |m: u8, d: u8| t(m, d, 0) / 86_400_000;
        let r = Some(Refill::monthly(15, 10));
        assert_eq!(refill_period(r, t(3, 14, 86_399)), day(2, 15));
        assert_eq!(refill_period(r, t(3, 15, 0)), day(3, 15));
        assert_eq!(refill_period(r, t(4, 14, 43_200)), day(3, 15));
        assert_eq!(refill_period(r, t(4, 15, 0)), day(4, 15));
        // Across a year, and a day that is not the month's first.
        assert_eq!(refill_period(r, t(1, 3, 0)), day(1, 3) - 19);
        let daily = Some(Refill::daily(1));
        assert_eq!(refill_period(daily, t(3, 15, 3_600)), day(3, 15));
        assert_eq!(refill_period(None, t(3, 15, 3_600)), day(3, 15));
        // A day past a month's end is that month's last day (never "every day").
        let late = Some(Refill::monthly(31, 10));
        assert_eq!(refill_period(late, t(4, 29, 0)), day(3, 31));
        assert_eq!(refill_period(late, t(4, 30, 0)), day(4, 30));
        assert_eq!(refill_period(late, t(5, 1, 0)), day(4, 30));
        // Daily and monthly periods are in one unit: comparable with each other.
        assert!(refill_period(daily, t(3, 20, 0)) > refill_period(r, t(3, 20, 0)));
    }
}
