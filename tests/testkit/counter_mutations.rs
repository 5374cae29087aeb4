//! Plausible broken counter engines, each the in-process `LocalCounters` with one written
//! duty broken, that the counters suite must catch (and the same wrapper with nothing
//! broken, that it must pass).

use std::collections::HashMap;
use std::sync::Mutex;

use api_keys::testkit::{self, Failure};
use api_keys::{
    BoxFuture, Consumed, CounterError, Credits, Decision, KeyId, LimitScope, LocalCounters,
    RateLimit, Refill, Usage, UsageCounters, UsageRequest,
};

/// The one duty a [`MutantCounters`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    None,
    /// A request of several rate limits (and no credits) is decided limit by limit, the
    /// shortest window first, each spent as soon as it admits (an `INCR` per limit that stops
    /// at the first over its limit): a limit refusing later leaves the earlier ones spent.
    SpendsLimitByLimit,
    /// A key's own limits are counted per (organization, name), as if every limit were
    /// `per_org` (a counter key built from the organization and the name only): one busy key
    /// uses up the limits of every other key of its organization.
    CountsKeyLimitsPerOrg,
    /// One counter per (key, name) holding a window and its count, and a reading in another
    /// window than the stored one starts a fresh count, even an earlier window (a node whose
    /// clock is a moment behind): the full window's count is lost when the clock is back.
    RestartsOnAnEarlierReading,
    /// A request refused by several limits is reported as refused by the first of them in the
    /// request's order, with its `retry_after` (a loop that stops at the first refusal):
    /// the client retries when that window ends and is refused again by the others.
    ReportsTheFirstRefusal,
    /// `credits` reads the stored balance as the last use left it (a plain `GET`, where the
    /// refill lives in the spending script): a balance due for its refill reads as spent.
    CreditsReadsWithoutRefill,
    /// An organization's limits are counted per organization only (a counter key without
    /// the limit's name): every `per_org` limit of the organization spends one count.
    CountsOrgLimitsWithoutName,
    /// A monthly refill happens on the first of each calendar month, whatever its day.
    RefillsMonthlyOnTheFirst,
    /// `forget` of a key deletes the balance it shares (one `DEL` of the balance the key
    /// points to): the key that shares it starts afresh at its initial balance.
    ForgetDeletesASharedBalance,
    /// A request of rate limits (and no credits) reads the window's count, then spends in a
    /// second round trip (a `GET` then an `INCR`, not one script): concurrent requests all
    /// read the same count, and a burst is admitted far past the limit.
    ChecksThenSpends,
}

/// `credits` with a monthly refill moved to the first of the month.
fn on_the_first(credits: &Credits) -> Credits {
    match credits.refill_schedule() {
        Some(Refill::Monthly { amount, .. }) => {
            Credits::new(credits.initial()).refill(Refill::monthly(1, amount))
        }
        _ => *credits,
    }
}

/// `LocalCounters` with one [`Mutation`].
struct MutantCounters {
    inner: LocalCounters,
    mutation: Mutation,
    /// The latest reading of each key ([`Mutation::RestartsOnAnEarlierReading`],
    /// [`Mutation::CreditsReadsWithoutRefill`]).
    latest: Mutex<HashMap<KeyId, i64>>,
    /// Every `link_credits` ([`Mutation::ForgetDeletesASharedBalance`]).
    links: Mutex<Vec<(KeyId, KeyId)>>,
}

impl MutantCounters {
    fn new(mutation: Mutation) -> Self {
        MutantCounters {
            inner: LocalCounters::new(),
            mutation,
            latest: Mutex::default(),
            links: Mutex::default(),
        }
    }

    async fn consume_inner(&self, req: UsageRequest<'_>) -> Result<Decision, CounterError> {
        match self.inner.consume(req) {
            Consumed::Ready(r) => r,
            Consumed::Pending(f) => f.await,
        }
    }

    /// [`Mutation::SpendsLimitByLimit`].
    async fn limit_by_limit(&self, req: UsageRequest<'_>) -> Result<Decision, CounterError> {
        let mut order: Vec<usize> = (0..req.limits.len()).collect();
        order.sort_by_key(|&i| req.limits[i].window_ms());
        let mut each = vec![Default::default(); req.limits.len()];
        for i in order {
            let one = UsageRequest {
                limits: std::slice::from_ref(&req.limits[i]),
                ..req
            };
            match self.consume_inner(one).await? {
                Decision::Allowed { usage, .. } => each[i] = usage.limits()[0],
                Decision::RateLimited { retry_after, .. } => {
                    let mut usage = Usage::new();
                    each.iter().for_each(|l| usage.push(*l));
                    return Ok(Decision::RateLimited {
                        limit: i,
                        retry_after,
                        usage,
                    });
                }
                other => return Ok(other),
            }
        }
        let mut usage = Usage::new();
        each.iter().for_each(|l| usage.push(*l));
        Ok(Decision::Allowed {
            usage,
            degraded: false,
        })
    }
}

impl MutantCounters {
    /// [`Mutation::ChecksThenSpends`].
    async fn check_then_spend(&self, req: UsageRequest<'_>) -> Result<Decision, CounterError> {
        let peek = self.consume_inner(UsageRequest { cost: 0, ..req }).await?;
        let Decision::Allowed { usage, .. } = peek else {
            return Ok(peek);
        };
        let fits = usage.limits().iter().all(|l| l.remaining >= req.cost);
        // The second round trip.
        tokio::task::yield_now().await;
        let spent = self.consume_inner(req).await?;
        Ok(match spent {
            Decision::RateLimited { usage, .. } if fits => Decision::Allowed {
                usage,
                degraded: false,
            },
            other => other,
        })
    }
}

impl UsageCounters for MutantCounters {
    fn consume<'a>(&'a self, req: UsageRequest<'a>) -> Consumed<'a> {
        if self.mutation == Mutation::CountsKeyLimitsPerOrg {
            return Consumed::Pending(Box::pin(async move {
                let limits: Vec<RateLimit> = req
                    .limits
                    .iter()
                    .map(|l| RateLimit::new(l.name(), l.limit(), l.window()).per_org())
                    .collect();
                self.consume_inner(UsageRequest {
                    limits: &limits,
                    ..req
                })
                .await
            }));
        }
        if self.mutation == Mutation::RestartsOnAnEarlierReading {
            return Consumed::Pending(Box::pin(async move {
                let latest = *self
                    .latest
                    .lock()
                    .unwrap()
                    .entry(req.key)
                    .and_modify(|t| *t = (*t).max(req.now_ms))
                    .or_insert(req.now_ms);
                let window = |l: &RateLimit, t: i64| t.div_euclid(l.window_ms() as i64);
                if req
                    .limits
                    .iter()
                    .any(|l| window(l, req.now_ms) < window(l, latest))
                {
                    // The stored window is not this reading's: start afresh.
                    self.inner.forget(req.key).await?;
                }
                self.consume_inner(req).await
            }));
        }
        if self.mutation == Mutation::CountsOrgLimitsWithoutName {
            return Consumed::Pending(Box::pin(async move {
                let limits: Vec<RateLimit> = req
                    .limits
                    .iter()
                    .map(|l| match l.scope() {
                        LimitScope::Org => {
                            RateLimit::new("organization", l.limit(), l.window()).per_org()
                        }
                        _ => l.clone(),
                    })
                    .collect();
                self.consume_inner(UsageRequest {
                    limits: &limits,
                    ..req
                })
                .await
            }));
        }
        if self.mutation == Mutation::RefillsMonthlyOnTheFirst
            && let Some(c) = req.credits
        {
            return Consumed::Pending(Box::pin(async move {
                let c = on_the_first(c);
                self.consume_inner(UsageRequest {
                    credits: Some(&c),
                    ..req
                })
                .await
            }));
        }
        if self.mutation == Mutation::ReportsTheFirstRefusal {
            return Consumed::Pending(Box::pin(async move {
                match self.consume_inner(req).await? {
                    Decision::RateLimited { usage, .. } => {
                        let (limit, l) = usage
                            .limits()
                            .iter()
                            .enumerate()
                            .find(|(_, l)| l.remaining < req.cost)
                            .expect("a refusing limit");
                        let wait = u64::try_from(l.reset_ms - req.now_ms).unwrap_or(0);
                        Ok(Decision::RateLimited {
                            limit,
                            retry_after: std::time::Duration::from_millis(wait),
                            usage,
                        })
                    }
                    other => Ok(other),
                }
            }));
        }
        if self.mutation == Mutation::CreditsReadsWithoutRefill {
            self.latest
                .lock()
                .unwrap()
                .entry(req.key)
                .and_modify(|t| *t = (*t).max(req.now_ms))
                .or_insert(req.now_ms);
        }
        if self.mutation == Mutation::ChecksThenSpends
            && req.credits.is_none()
            && !req.limits.is_empty()
            && req.cost > 0
        {
            return Consumed::Pending(Box::pin(self.check_then_spend(req)));
        }
        if self.mutation == Mutation::SpendsLimitByLimit
            && req.credits.is_none()
            && req.limits.len() > 1
        {
            return Consumed::Pending(Box::pin(self.limit_by_limit(req)));
        }
        self.inner.consume(req)
    }

    fn set_credits<'a>(
        &'a self,
        key: KeyId,
        credits: &'a Credits,
        balance: u64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), CounterError>> {
        if self.mutation == Mutation::RefillsMonthlyOnTheFirst {
            return Box::pin(async move {
                let c = on_the_first(credits);
                self.inner.set_credits(key, &c, balance, now_ms).await
            });
        }
        self.inner.set_credits(key, credits, balance, now_ms)
    }

    fn credits<'a>(
        &'a self,
        key: KeyId,
        credits: Option<&'a Credits>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<u64>, CounterError>> {
        if self.mutation == Mutation::RefillsMonthlyOnTheFirst
            && let Some(c) = credits
        {
            return Box::pin(async move {
                let c = on_the_first(c);
                self.inner.credits(key, Some(&c), now_ms).await
            });
        }
        if self.mutation == Mutation::CreditsReadsWithoutRefill {
            let last = self.latest.lock().unwrap().get(&key).copied();
            return self.inner.credits(key, credits, last.unwrap_or(now_ms));
        }
        self.inner.credits(key, credits, now_ms)
    }

    fn link_credits<'a>(
        &'a self,
        from: KeyId,
        to: KeyId,
    ) -> BoxFuture<'a, Result<(), CounterError>> {
        self.links.lock().unwrap().push((from, to));
        self.inner.link_credits(from, to)
    }

    fn forget<'a>(&'a self, key: KeyId) -> BoxFuture<'a, Result<(), CounterError>> {
        if self.mutation == Mutation::ForgetDeletesASharedBalance {
            return Box::pin(async move {
                let sharing: Vec<KeyId> = self
                    .links
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(f, t)| *f == key || *t == key)
                    .flat_map(|(f, t)| [*f, *t])
                    .collect();
                for k in sharing {
                    self.inner.forget(k).await?;
                }
                self.inner.forget(key).await
            });
        }
        self.inner.forget(key)
    }
}

async fn failure_of(mutation: Mutation) -> Failure {
    match testkit::counters::run(&MutantCounters::new(mutation)).await {
        Err(f) => f,
        Ok(()) => panic!("the counters suite passed an engine with {mutation:?}"),
    }
}

#[tokio::test]
async fn the_unmutated_counters_wrapper_conforms() {
    testkit::counters::run(&MutantCounters::new(Mutation::None))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_engine_spending_limit_by_limit_is_caught() {
    // It also names the wrong limit of a request refused by two (`window_edges` reports
    // that first); the spending is `all_or_nothing`'s to catch.
    failure_of(Mutation::SpendsLimitByLimit).await;
    let engine = MutantCounters::new(Mutation::SpendsLimitByLimit);
    let f = testkit::counters::all_or_nothing(&engine)
        .await
        .unwrap_err();
    assert_eq!(f.check, "all_or_nothing", "reported as: {f}");
}

#[tokio::test]
async fn an_engine_counting_key_limits_per_organization_is_caught() {
    let f = failure_of(Mutation::CountsKeyLimitsPerOrg).await;
    assert_eq!(f.check, "org_limits_are_shared", "reported as: {f}");
}

#[tokio::test]
async fn an_engine_restarting_a_count_on_an_earlier_reading_is_caught() {
    let f = failure_of(Mutation::RestartsOnAnEarlierReading).await;
    assert_eq!(f.check, "window_edges", "reported as: {f}");
}

#[tokio::test]
async fn an_engine_reporting_the_first_refusing_limit_is_caught() {
    let f = failure_of(Mutation::ReportsTheFirstRefusal).await;
    assert_eq!(f.check, "window_edges", "reported as: {f}");
}

#[tokio::test]
async fn an_engine_reading_credits_without_their_refill_is_caught() {
    let f = failure_of(Mutation::CreditsReadsWithoutRefill).await;
    assert_eq!(f.check, "refill_sets_the_balance", "reported as: {f}");
}

#[tokio::test]
async fn an_engine_counting_organization_limits_without_their_name_is_caught() {
    let f = failure_of(Mutation::CountsOrgLimitsWithoutName).await;
    assert_eq!(f.check, "org_limits_are_shared", "reported as: {f}");
}

#[tokio::test]
async fn an_engine_refilling_monthly_credits_on_the_first_is_caught() {
    let f = failure_of(Mutation::RefillsMonthlyOnTheFirst).await;
    assert_eq!(f.check, "refill_sets_the_balance", "reported as: {f}");
}

#[tokio::test]
async fn an_engine_whose_forget_deletes_a_shared_balance_is_caught() {
    let f = failure_of(Mutation::ForgetDeletesASharedBalance).await;
    assert_eq!(f.check, "set_and_link_credits", "reported as: {f}");
}

#[tokio::test]
async fn an_engine_that_checks_then_spends_is_caught() {
    let f = failure_of(Mutation::ChecksThenSpends).await;
    assert_eq!(
        f.check, "rate_limits_are_exact_under_concurrency",
        "reported as: {f}"
    );
}

/// Two in-process engines stand for a shared engine whose counter keys name the node: each
/// passes `run`, and the check given both handles sees that they do not share.
#[tokio::test]
async fn counts_kept_per_handle_are_caught_with_a_second_handle() {
    let (a, b) = (LocalCounters::new(), LocalCounters::new());
    testkit::counters::run(&a).await.unwrap();
    let f = testkit::counters::counts_are_shared_between_handles(&a, &b)
        .await
        .expect_err("two unshared engines passed");
    assert_eq!(
        f.check, "counts_are_shared_between_handles",
        "reported as: {f}"
    );
    // One engine through two references shares its counts.
    testkit::counters::counts_are_shared_between_handles(&a, &a)
        .await
        .unwrap();
}
