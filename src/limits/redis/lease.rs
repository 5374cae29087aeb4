//! Local-first mode of [`RedisCounters`]: each node *leases* part of a window's budget from
//! Redis and admits from its lease without a network round trip.
//!
//! - A lease is granted by one atomic script ([`LEASE`]): of what is left of the window's
//!   budget (`limit − everything leased so far`), a node gets `max(need, ⌈left / 8⌉)`, at most
//!   `left`. Batches shrink as the window fills (13, 11, 10, … of 100), down to 1.
//! - A verification spends from the node's lease under a short lock (all of a key's limits
//!   together, all or nothing). When a spend leaves a lease at or below half its last batch,
//!   the next lease is fetched in the background, so a busy node rarely waits.
//! - Only a verification that finds no lease for one of its limits waits for Redis (one
//!   round trip for all of them; concurrent ones wait for the same call), bounded by the
//!   per-call timeout and the breaker.
//! - In the last quarter of a window (at most its last second), a verification (admitted or
//!   refused) also leases from the next window, so that a busy node starts each window with a
//!   lease.
//! - When Redis has nothing left for this node, the node refuses locally until the window
//!   ends, asking again in the background at most once per `sync_every`.
//! - Each verification brings its key's limit: a lease follows a changed limit at once (a
//!   lowered one hands back all this node holds and asks Redis, which alone knows the
//!   current count; a raised one asks Redis again).
//! - The background task (every `sync_every`) forgets ended windows and hands back leases
//!   that went unused for `sync_every` and for half the window (at most 1 s), so that a node
//!   that went quiet does not sit on budget others could use.
//!
//! **Bounds.** Redis never grants more than `limit` units of a window in all, and a node
//! admits only units it was granted, so nodes never over-admit together (clocks agreeing on
//! the window). Units leased but not spent when the window ends are admitted by nobody:
//! under-admission, at most what each node holds then — its lease and one prefetched lease,
//! each at most `⌈limit / 8⌉` (≤ `2 · nodes · ⌈limit / 8⌉` per window; a lease taken ahead
//! from the next window is the first of these), near zero under sustained load since a busy
//! node spends its lease within moments.
//!
//! While Redis cannot answer: a node keeps spending the lease it holds; past it, a limit that
//! fails open is enforced on this node's own count alone (each node admits up to `limit`, so
//! at most `nodes × limit` in all while Redis is down) and reported `degraded`; a limit that
//! fails closed refuses with [`CounterError::Unavailable`]. Units admitted alone are not
//! reported to Redis when it comes back: in a window in which Redis recovers, up to `limit`
//! more may be admitted through leases (`(nodes + 1) × limit` at most in that window).

use std::pin::pin;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration as StdDuration;

use super::lease_id::{Ids, LeaseId, LeaseRef};
use super::{RedisCounters, unavailable};
use crate::RateLimit;
use crate::limits::engine::{
    Consumed, CounterError, Decision, LimitUsage, Usage, UsageRequest, window_of,
};

/// A lease takes `1 / LEASE_DIVISOR` of what is left of a window (at least what is needed).
pub(super) const LEASE_DIVISOR: u64 = 8;

/// How many times a waiting verification re-decides before it gives up on Redis.
const MAX_ROUNDS: usize = 8;

/// Grants leases. KEYS: counters. ARGV per counter: limit, expiry (ms), need, divisor, units
/// handed back first (a lowered limit's). Returns {granted, leased so far (everyone's)} per
/// counter.
pub(super) const LEASE: &str = r#"
local out = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[5 * i - 4])
  local ttl = tonumber(ARGV[5 * i - 3])
  local need = tonumber(ARGV[5 * i - 2])
  local div = tonumber(ARGV[5 * i - 1])
  local back = tonumber(ARGV[5 * i])
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if back > 0 and used > 0 then
    used = redis.call('DECRBY', KEYS[i], math.min(used, back))
  end
  local left = limit - used
  local grant = 0
  if left > 0 and left >= need then
    grant = math.max(need, math.ceil(left / div))
    if grant > left then grant = left end
    used = redis.call('INCRBY', KEYS[i], grant)
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
  out[2 * i - 1] = grant
  out[2 * i] = used
end
return out
"#;

/// This node's leases, by counter.
pub(super) type Leases = hashbrown::HashMap<LeaseId, Lease, foldhash::fast::RandomState>;

/// One counter of one window as this node sees it.
pub(super) struct Lease {
    /// The counter's key in Redis.
    pub(super) redis_key: String,
    /// The window's end (Unix ms, the manager's clock): the entry is forgotten after it.
    pub(super) reset_ms: i64,
    pub(super) window_ms: u64,
    pub(super) limit: u64,
    /// Units leased to this node and not spent yet.
    pub(super) held: u64,
    /// The size of the last lease granted.
    pub(super) last_batch: u64,
    /// Everyone's leased units at the last answer from Redis.
    pub(super) global: u64,
    /// A lease call for this counter is in flight.
    pub(super) fetching: bool,
    /// Redis had less than was asked left (engine ms of the answer, and what it had left).
    pub(super) short: Option<(u64, u64)>,
    /// Spent while Redis could not answer (fail open), on this node's own count.
    pub(super) solo: u64,
    /// Last spend or grant (engine ms): an idle lease is handed back.
    pub(super) last_use: u64,
    /// Units dropped from the lease under a lowered limit, to hand back to Redis (with this
    /// counter's next lease call, or by the background task).
    pub(super) returning: u64,
}

impl Lease {
    pub(super) fn new(limit: &RateLimit, reset_ms: i64, redis_key: String) -> Self {
        Lease {
            redis_key,
            reset_ms,
            window_ms: limit.window_ms(),
            limit: limit.limit(),
            held: 0,
            last_batch: 0,
            global: 0,
            fetching: false,
            short: None,
            solo: 0,
            last_use: 0,
            returning: 0,
        }
    }

    /// Follows a changed limit (a manager's `set_limits`, or another key of the organization
    /// naming the same org-wide limit with another value: each request is decided by its own
    /// key's limit, as in strict mode). Under a lower limit this node keeps nothing of its
    /// lease: what others leased is known only as of this node's last answer from Redis (other
    /// nodes may have spent far past the new limit since), so no unit of it is known to fit.
    /// It goes back to Redis with the counter's next lease call (before that call's grant: in
    /// order), which decides on the current count. Either way Redis is asked again instead of
    /// a remembered "nothing left".
    fn follow(&mut self, limit: u64) {
        if self.limit == limit {
            return;
        }
        let lowered = limit < self.limit;
        self.limit = limit;
        self.short = None;
        if lowered {
            let dropped = std::mem::take(&mut self.held);
            self.global = self.global.saturating_sub(dropped);
            self.returning = self.returning.saturating_add(dropped);
        }
    }

    /// Keeps of the lease only what `limit` leaves beyond everything leased elsewhere or
    /// already spent; the rest goes back to Redis with the counter's next lease call.
    fn trim(&mut self) {
        let elsewhere = self.global.saturating_sub(self.held);
        let keep = self.held.min(self.limit.saturating_sub(elsewhere));
        let dropped = self.held - keep;
        self.held = keep;
        self.global = self.global.saturating_sub(dropped);
        self.returning = self.returning.saturating_add(dropped);
    }

    /// Records Redis's answer to a lease asked under `asked` (the limit when the call went
    /// out): `grant` units for this node, `used` leased by everyone. A limit lowered while the
    /// call was in flight trims the grant as [`Lease::follow`] trims a lease.
    fn record(&mut self, asked: u64, grant: u64, used: u64, now: u64) {
        self.global = used;
        if grant > 0 {
            self.held = self.held.saturating_add(grant);
            self.last_batch = grant;
            self.short = None;
            self.last_use = now;
        } else {
            self.short = Some((now, self.limit.min(asked).saturating_sub(used)));
        }
        if asked > self.limit {
            self.trim();
        }
    }

    /// What this node believes is left: the unleased budget plus its own lease.
    fn remaining(&self) -> u64 {
        self.limit
            .saturating_sub(self.global.saturating_add(self.solo))
            .saturating_add(self.held)
            .min(self.limit)
    }
}

/// A lease to ask Redis for.
struct Ask {
    id: LeaseId,
    key: String,
    limit: u64,
    ttl_ms: u64,
    need: u64,
    /// Units handed back before the grant (lost, never counted twice, if the call fails).
    back: u64,
}

/// What this node can decide without Redis.
enum Step {
    Done(Decision),
    /// Leases to fetch (indices into the request's limits, marked as being fetched by this
    /// caller, who owes the marks through `marks`), and whether another caller is fetching
    /// one already.
    Lease {
        fetch: Vec<usize>,
        marks: Marks,
        wait: bool,
    },
}

/// Leases a caller marked as being fetched ([`Lease::fetching`]) and owes an answer for.
/// Dropped before [`Marks::settle`] (a verification's future dropped while it waited, or
/// before it first ran; a background fetch dropped with its runtime), it clears the marks
/// and wakes the waiters: otherwise every later verification of those counters would wait
/// for a call nobody makes, and then give up on a healthy Redis until the window ends.
pub(super) struct Marks {
    engine: Option<RedisCounters>,
    ids: Vec<LeaseId>,
}

impl Marks {
    fn new(engine: &RedisCounters, ids: Vec<LeaseId>) -> Self {
        Marks {
            engine: (!ids.is_empty()).then(|| engine.clone()),
            ids,
        }
    }

    /// The caller answered for its marks (the reply was recorded under the lock).
    fn settle(mut self) {
        self.engine = None;
    }
}

impl Drop for Marks {
    fn drop(&mut self) {
        let Some(engine) = self.engine.take() else {
            return;
        };
        {
            let mut map = engine
                .inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for id in &self.ids {
                if let Some(e) = map.get_mut(id) {
                    e.fetching = false;
                }
            }
        }
        engine.inner.leased.notify_waiters();
    }
}

impl RedisCounters {
    pub(super) fn consume_leased<'a>(&'a self, req: UsageRequest<'a>) -> Consumed<'a> {
        self.start_sync();
        // The latest reading, not the highest: the background task forgets windows by this
        // clock, and after a step back the windows of the new time must stay (a lease it
        // forgot would keep its units counted in Redis, refusing below the limit). Mostly a
        // read: it changes once a millisecond.
        if req.now_ms != self.inner.clock_ms.load(Ordering::Relaxed) {
            self.inner.clock_ms.store(req.now_ms, Ordering::Relaxed);
        }
        let ids = Ids::of(&req);
        match self.decide(&req, ids.as_slice()) {
            Step::Done(d) => {
                self.inner.stats.local.fetch_add(1, Ordering::Relaxed);
                Consumed::Ready(Ok(d))
            }
            step => {
                self.inner.stats.waited.fetch_add(1, Ordering::Relaxed);
                Consumed::Pending(Box::pin(self.consume_waiting(req, ids, step)))
            }
        }
    }

    /// Decides from this node's leases, spending them if every limit has room; starts
    /// background leases where one runs low.
    fn decide(&self, req: &UsageRequest<'_>, keys: &[LeaseRef<'_>]) -> Step {
        let mut asks = Vec::new();
        let step = {
            let mut map = self
                .inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.decide_locked(&mut map, req, keys, &mut asks)
        };
        self.spawn_lease(asks);
        step
    }

    fn decide_locked(
        &self,
        map: &mut Leases,
        req: &UsageRequest<'_>,
        keys: &[LeaseRef<'_>],
        asks: &mut Vec<Ask>,
    ) -> Step {
        let now = self.now_ms();
        let recheck = u64::try_from(self.inner.local_first.unwrap_or_default().as_millis())
            .unwrap_or(u64::MAX);
        let mut refused: Option<(usize, i64)> = None;
        let mut missing = Vec::new();
        let mut wait = false;
        for (i, (l, k)) in req.limits.iter().zip(keys).enumerate() {
            let reset = window_of(l, req.now_ms).1;
            if !map.contains_key(k) {
                map.insert(k.to_id(), Lease::new(l, reset, self.counter_key(l, req)));
            }
            let Some(e) = map.get_mut(k) else { continue };
            e.follow(l.limit());
            if e.held >= req.cost {
                continue;
            }
            let need = req.cost - e.held;
            if let Some((at, left)) = e.short
                && need > left
            {
                // Redis had too little left: refuse here, and ask again (in the background)
                // once the answer is `sync_every` old.
                if now.saturating_sub(at) >= recheck && !e.fetching {
                    e.fetching = true;
                    asks.push(ask(k.to_id(), e, 1, req.now_ms));
                }
                if refused.is_none_or(|(_, r)| reset > r) {
                    refused = Some((i, reset));
                }
            } else if e.fetching {
                wait = true;
            } else {
                missing.push(i);
            }
        }
        if let Some((i, reset)) = refused {
            // A refused node is busy too: it starts the next window with a lease.
            for l in req.limits {
                self.lease_ahead(map, l, req, asks);
            }
            return Step::Done(refusal(req, keys, map, i, reset));
        }
        if !missing.is_empty() || wait {
            let mut marked = Vec::with_capacity(missing.len());
            for &i in &missing {
                if let Some(e) = map.get_mut(&keys[i]) {
                    e.fetching = true;
                    marked.push(keys[i].to_id());
                }
            }
            return Step::Lease {
                fetch: missing,
                marks: Marks::new(self, marked),
                wait,
            };
        }
        let mut usage = Usage::new();
        for (l, k) in req.limits.iter().zip(keys) {
            let Some(e) = map.get_mut(k) else { continue };
            e.held -= req.cost;
            e.last_use = now;
            usage.push(LimitUsage {
                remaining: e.remaining(),
                reset_ms: window_of(l, req.now_ms).1,
            });
            // Prefetch: the next lease is on its way before this one runs out.
            if e.held <= e.last_batch / 2 && e.short.is_none() && !e.fetching {
                e.fetching = true;
                asks.push(ask(k.to_id(), e, 1, req.now_ms));
            }
            self.lease_ahead(map, l, req, asks);
        }
        Step::Done(Decision::Allowed {
            usage,
            degraded: false,
        })
    }

    /// Near a window's end (its last quarter, at most its last second), leases from the next
    /// window too, so that a busy node's first verifications there need not wait.
    fn lease_ahead(
        &self,
        map: &mut Leases,
        l: &RateLimit,
        req: &UsageRequest<'_>,
        asks: &mut Vec<Ask>,
    ) {
        let reset = window_of(l, req.now_ms).1;
        let ahead = i64::try_from((l.window_ms() / 4).min(1000)).unwrap_or(1000);
        if reset.saturating_sub(req.now_ms) > ahead {
            return;
        }
        let next = UsageRequest {
            now_ms: reset,
            ..*req
        };
        let id = LeaseRef::of(l, req, reset);
        if !map.contains_key(&id) {
            let mut n = Lease::new(l, window_of(l, reset).1, self.counter_key(l, &next));
            n.fetching = true;
            asks.push(ask(id.to_id(), &mut n, 1, req.now_ms));
            map.insert(id.to_id(), n);
        }
    }

    /// Waits for the leases a decision needs (fetching them, or waiting for the call in
    /// flight), then decides; falls back to the failure policy when Redis cannot answer.
    async fn consume_waiting(
        &self,
        req: UsageRequest<'_>,
        ids: Ids<'_>,
        mut step: Step,
    ) -> Result<Decision, CounterError> {
        let keys = ids.as_slice();
        'rounds: for _ in 0..MAX_ROUNDS {
            let mut notified = pin!(self.inner.leased.notified());
            match step {
                Step::Done(d) => return Ok(d),
                Step::Lease { fetch, marks, wait } => {
                    if !fetch.is_empty() {
                        let asks = {
                            let mut map = self
                                .inner
                                .local
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner);
                            fetch
                                .iter()
                                .filter_map(|&i| {
                                    let e = map.get_mut(&keys[i])?;
                                    let need = req.cost.saturating_sub(e.held).max(1);
                                    Some(ask(keys[i].to_id(), e, need, req.now_ms))
                                })
                                .collect()
                        };
                        // `lease` owes the marks from here (its asks are these leases).
                        marks.settle();
                        // The fetching caller decides under the same lock that records its
                        // grant, so the units it waited for cannot be taken by another.
                        match self.lease(asks, Some((&req, keys))).await {
                            Ok(Some(next)) => {
                                step = next;
                                continue;
                            }
                            Ok(None) => {}
                            Err(e) => return self.degraded_local(&req, keys, e),
                        }
                    } else if wait {
                        // Woken whenever any lease call of this node ends: a wake-up that
                        // leaves this request still waiting (another counter's call) is not a
                        // round, or other counters' traffic would use the rounds up and make
                        // it give up on a healthy Redis. The call it waits for is bounded by
                        // the timeout, and so is this wait.
                        let waiting_since = std::time::Instant::now();
                        loop {
                            // Registered before deciding again, so the call in flight cannot
                            // finish unseen between the two.
                            notified.as_mut().enable();
                            match self.decide(&req, keys) {
                                Step::Lease {
                                    fetch, wait: true, ..
                                } if fetch.is_empty() => {
                                    let left =
                                        self.inner.timeout.saturating_sub(waiting_since.elapsed());
                                    if tokio::time::timeout(left, notified.as_mut()).await.is_err()
                                    {
                                        break;
                                    }
                                    notified.set(self.inner.leased.notified());
                                }
                                other => {
                                    step = other;
                                    continue 'rounds;
                                }
                            }
                        }
                    }
                }
            }
            step = self.decide(&req, keys);
        }
        match step {
            Step::Done(d) => Ok(d),
            Step::Lease { marks, .. } => {
                // Not fetched after all: the marks are cleared first.
                drop(marks);
                self.degraded_local(&req, keys, unavailable(None))
            }
        }
    }

    /// Fetches the asked leases in one round trip and records what Redis granted; then, for
    /// a caller that waits (`then`), decides its request under the same lock.
    async fn lease(
        &self,
        asks: Vec<Ask>,
        then: Option<(&UsageRequest<'_>, &[LeaseRef<'_>])>,
    ) -> Result<Option<Step>, CounterError> {
        if asks.is_empty() {
            return Ok(None);
        }
        // Owed until the reply is recorded, even if this future is dropped on the way.
        let marks = Marks::new(self, asks.iter().map(|a| a.id.clone()).collect());
        let mut inv = self.inner.lease.prepare_invoke();
        for a in &asks {
            inv.key(&a.key);
        }
        for a in &asks {
            inv.arg(a.limit)
                .arg(a.ttl_ms)
                .arg(a.need)
                .arg(LEASE_DIVISOR)
                .arg(a.back);
        }
        let mut conn = self.inner.conn.clone();
        let reply: Result<Vec<i64>, CounterError> = self.call(inv.invoke_async(&mut conn)).await;
        let now = self.now_ms();
        let mut more = Vec::new();
        let step = {
            let mut map = self
                .inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (i, a) in asks.iter().enumerate() {
                // A window that ended meanwhile was forgotten: its late grant lapses with it.
                let Some(e) = map.get_mut(&a.id) else {
                    continue;
                };
                e.fetching = false;
                let Ok(r) = &reply else { continue };
                let grant = u64::try_from(r.get(2 * i).copied().unwrap_or(0)).unwrap_or(0);
                let used = u64::try_from(r.get(2 * i + 1).copied().unwrap_or(0)).unwrap_or(0);
                e.record(a.limit, grant, used, now);
            }
            match (&reply, then) {
                (Ok(_), Some((req, keys))) => {
                    Some(self.decide_locked(&mut map, req, keys, &mut more))
                }
                _ => None,
            }
        };
        marks.settle();
        self.inner.leased.notify_waiters();
        self.spawn_lease(more);
        reply.map(|_| step)
    }

    /// Fetches leases in the background (inside a Tokio runtime; without one, the next
    /// verification that needs them waits instead).
    fn spawn_lease(&self, asks: Vec<Ask>) {
        if asks.is_empty() {
            return;
        }
        // Owed by the task (dropped with it, even before it first ran), or at once.
        let marks = Marks::new(self, asks.iter().map(|a| a.id.clone()).collect());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let engine = self.clone();
            handle.spawn(async move {
                // `lease` takes the marks over (no await between).
                marks.settle();
                let _ = engine.lease(asks, None).await;
            });
        }
    }

    /// The decision when Redis cannot grant a lease: spend what the node holds; past it,
    /// limits that fail open are counted by this node alone, and any other limit refuses.
    fn degraded_local(
        &self,
        req: &UsageRequest<'_>,
        keys: &[LeaseRef<'_>],
        err: CounterError,
    ) -> Result<Decision, CounterError> {
        let mut map = self
            .inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut refused: Option<(usize, i64)> = None;
        for (i, (l, k)) in req.limits.iter().zip(keys).enumerate() {
            let reset = window_of(l, req.now_ms).1;
            if !map.contains_key(k) {
                map.insert(k.to_id(), Lease::new(l, reset, self.counter_key(l, req)));
            }
            let Some(e) = map.get_mut(k) else { continue };
            e.follow(l.limit());
            if e.held >= req.cost {
                continue;
            }
            if !self.inner.fail_open.contains(l.name()) {
                return Err(err);
            }
            if e.solo.saturating_add(req.cost) > l.limit() && refused.is_none_or(|(_, r)| reset > r)
            {
                refused = Some((i, reset));
            }
        }
        if let Some((i, reset)) = refused {
            return Ok(refusal(req, keys, &map, i, reset));
        }
        let mut usage = Usage::new();
        let mut degraded = false;
        for (l, k) in req.limits.iter().zip(keys) {
            let Some(e) = map.get_mut(k) else { continue };
            if e.held >= req.cost {
                e.held -= req.cost;
            } else {
                e.solo = e.solo.saturating_add(req.cost);
                degraded = true;
            }
            usage.push(LimitUsage {
                remaining: e.remaining(),
                reset_ms: window_of(l, req.now_ms).1,
            });
        }
        Ok(Decision::Allowed { usage, degraded })
    }
}

fn ask(id: LeaseId, e: &mut Lease, need: u64, now_ms: i64) -> Ask {
    let to_end = u64::try_from(e.reset_ms.saturating_sub(now_ms)).unwrap_or(0);
    Ask {
        id,
        key: e.redis_key.clone(),
        back: std::mem::take(&mut e.returning),
        limit: e.limit,
        // Relative to Redis's clock: the counter outlives its window by a window and a
        // second, whatever the skew between the nodes' clocks and Redis's.
        ttl_ms: e.window_ms.saturating_add(to_end).saturating_add(1000),
        need,
    }
}

/// A local refusal: nothing spent, every limit's state as this node sees it.
fn refusal(
    req: &UsageRequest<'_>,
    keys: &[LeaseRef<'_>],
    map: &Leases,
    i: usize,
    reset: i64,
) -> Decision {
    let mut usage = Usage::new();
    for (l, k) in req.limits.iter().zip(keys) {
        usage.push(LimitUsage {
            remaining: map.get(k).map_or(l.limit(), Lease::remaining),
            reset_ms: window_of(l, req.now_ms).1,
        });
    }
    Decision::RateLimited {
        limit: i,
        retry_after: StdDuration::from_millis(u64::try_from(reset - req.now_ms).unwrap_or(0)),
        usage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(limit: u64) -> Lease {
        Lease::new(
            &RateLimit::new("burst", limit, StdDuration::from_secs(60)),
            60_000,
            "k".into(),
        )
    }

    #[test]
    fn a_grant_asked_under_a_higher_limit_is_trimmed_to_the_current_one() {
        // Asked under 1000 (125 units), lowered to 10 while the call was in flight: of the
        // 125 leased (Redis's count), this node may admit 10 at most.
        let mut e = lease(1000);
        e.follow(10);
        e.record(1000, 125, 125, 1);
        assert_eq!((e.held, e.returning, e.global), (10, 115, 10));
        // Others had leased 6 before: 4 are left for this node.
        let mut e = lease(1000);
        e.follow(10);
        e.record(1000, 125, 131, 1);
        assert_eq!((e.held, e.returning), (4, 121));
        // Asked under the current limit: kept whole.
        let mut e = lease(10);
        e.record(10, 2, 2, 1);
        assert_eq!((e.held, e.returning), (2, 0));
    }

    #[test]
    fn a_lowered_limit_hands_its_lease_back_and_a_raised_one_asks_again() {
        let mut e = lease(100);
        e.record(100, 13, 13, 1);
        e.held = 12; // one spent
        // Others may have leased since this node's last answer: all of it goes back, and the
        // next lease call decides on Redis's count.
        e.follow(3);
        assert_eq!((e.held, e.returning, e.global), (0, 12, 1));
        e.short = Some((1, 0));
        e.follow(6);
        assert_eq!((e.held, e.short), (0, None));
    }
}
