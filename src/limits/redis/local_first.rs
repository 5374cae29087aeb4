//! The decisions of local-first mode (the design and its bounds: [`super::lease`]): spend
//! from the node's leases under a short lock, fetch leases ahead in the background, wait for
//! Redis only when a limit has no lease, and decide alone while Redis cannot answer.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration as StdDuration;

use super::lease::{Lease, Leases};
use super::lease_id::{Ids, LeaseId, LeaseRef};
use super::{RedisCounters, unavailable};
use crate::RateLimit;
use crate::limits::engine::{
    Consumed, CounterError, Decision, LimitUsage, Usage, UsageRequest, window_of,
};

/// How many times a waiting verification re-decides before it gives up on Redis.
const MAX_ROUNDS: usize = 8;

mod lost;
mod pending;
pub(super) use lost::{Lost, RECLAIM};
use pending::{PendingReply, record_grants};

/// A lease to ask Redis for.
#[derive(Clone)]
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

/// Marks owed by a lease call's task that has not run yet: they go with its caller (cleared
/// when it is dropped or done), so a task its runtime never runs marks nothing.
struct OwedMarks(Arc<std::sync::Mutex<Option<Marks>>>);

impl Drop for OwedMarks {
    fn drop(&mut self) {
        let marks = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(marks);
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
                                    // Inside a runtime, its timer; outside any, the deadline
                                    // thread's: the engine's own may run no timers (a
                                    // current-thread one nobody is blocked on, or one gone),
                                    // and a fetch queued there may never end to wake this.
                                    let woken = if tokio::runtime::Handle::try_current().is_ok() {
                                        tokio::time::timeout(left, notified.as_mut()).await.is_ok()
                                    } else {
                                        super::deadline::Within::new(notified.as_mut(), left)
                                            .await
                                            .is_some()
                                    };
                                    if !woken {
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
        let asks = Arc::new(asks);
        // Outside any runtime, the task goes to the engine's own, which may not run it of
        // itself: a current-thread runtime runs a spawned task only while someone blocks on
        // it (an idle one never does). The answer is then waited for up to the engine's
        // timeout, as the call itself would be (a failed lease: the limit fails as
        // configured); the task, if that runtime runs it later, records what Redis grants
        // all the same, as for any caller that went away.
        let spawn_on = self.runtime();
        let bounded = tokio::runtime::Handle::try_current().is_err()
            && spawn_on.as_ref().is_some_and(|h| {
                h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
            });
        let (reply, marks) = match spawn_on {
            // The call runs in a task of its own: a caller dropped while it is in flight (a
            // client gone) does not lose what Redis grants, which Redis counts as leased to
            // this node — the grant is recorded for the node's next verifications instead.
            // The task holds the marks until its answer is recorded: the counters stay marked
            // as being fetched, so later verifications wait for this call instead of each
            // starting one (a lease per dropped caller, past two leases per node).
            Some(handle) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let engine = self.clone();
                let task_asks = Arc::clone(&asks);
                // The task takes the marks over when it first runs. On a runtime that runs
                // tasks of itself they are the task's from the start (kept until its reply is
                // recorded, even if this caller is dropped before the task first runs: or a
                // later verification would lease again meanwhile); on an idle current-thread
                // one (`bounded`) they are the caller's until then — a task that may never
                // run must not keep the counters marked as being fetched.
                let task_owed = Arc::new(std::sync::Mutex::new(Some(marks)));
                let owed = bounded.then(|| OwedMarks(Arc::clone(&task_owed)));
                handle.spawn(async move {
                    let marks = task_owed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take()
                        .unwrap_or_else(|| Marks::new(&engine, Vec::new()));
                    let reply = engine.lease_call(&task_asks).await;
                    if let Err((reply, marks)) = tx.send((reply, marks)) {
                        engine.record_orphan(&task_asks, &reply, marks);
                    }
                });
                let mut pending = PendingReply {
                    rx: Some(rx),
                    engine: self.clone(),
                    asks: Arc::clone(&asks),
                };
                let reply = if bounded {
                    // Not answered in time: the fetch is over for this caller (its marks
                    // are cleared below, as for a task that was dropped).
                    super::deadline::Within::new(pending.recv(), self.inner.timeout)
                        .await
                        .unwrap_or((Err(unavailable(None)), None))
                } else {
                    pending.recv().await
                };
                drop(owed);
                reply
            }
            None => (self.lease_call(&asks).await, Some(marks)),
        };
        let now = self.now_ms();
        let mut more = Vec::new();
        let step = {
            let mut map = self
                .inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            record_grants(&mut map, &asks, &reply, now);
            match (&reply, then) {
                (Ok(_), Some((req, keys))) => {
                    Some(self.decide_locked(&mut map, req, keys, &mut more))
                }
                _ => None,
            }
        };
        if let Some(marks) = marks {
            marks.settle();
        }
        self.inner.leased.notify_waiters();
        self.spawn_lease(more);
        reply.map(|_| step)
    }

    /// Fetches leases in the background (on the current Tokio runtime, else the engine's own
    /// if it runs tasks of itself; without either, the next verification that needs them
    /// fetches them instead).
    fn spawn_lease(&self, asks: Vec<Ask>) {
        if asks.is_empty() {
            return;
        }
        // Owed by the task (dropped with it, even before it first ran), or at once.
        let marks = Marks::new(self, asks.iter().map(|a| a.id.clone()).collect());
        // Outside any runtime, not on a current-thread one: it runs a task only while
        // someone blocks on it, and an idle one never would, leaving the counters marked as
        // being fetched — every later verification would wait for that fetch, on a timer of
        // that same idle runtime, forever.
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(current) => Some(current),
            Err(_) => self
                .runtime()
                .filter(|h| h.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread),
        };
        if let Some(handle) = handle {
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
            // Alone, the node counts on from what Redis last told it was leased in this
            // window (everyone's, its own spent units included), not from zero: in the window
            // in which Redis goes down, what was admitted through it still counts.
            if e.global.saturating_add(e.solo).saturating_add(req.cost) > l.limit()
                && refused.is_none_or(|(_, r)| reset > r)
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
        retry_after: StdDuration::from_millis(
            u64::try_from(reset.saturating_sub(req.now_ms)).unwrap_or(0),
        ),
        usage,
    }
}
