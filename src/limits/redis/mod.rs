//! [`RedisCounters`]: usage counters shared by every node through one Redis (feature
//! `redis`).
//!
//! *Strict* mode: every verification of a key with limits is one `EVALSHA` of one server-side
//! Lua script that checks and spends all of the key's limits and its credits atomically (Redis
//! runs a script alone), so no node ever admits more than a limit or a balance allows.
//!
//! Each call has a timeout, and a circuit breaker stops calling a Redis that keeps failing
//! (a dead Redis then costs nothing per request instead of its timeout) and lets one probe
//! through after `open_for`. While Redis cannot answer, each limit fails open or closed as
//! configured ([`RedisCountersBuilder::fail_open`]); credits fail closed unless
//! [`RedisCountersBuilder::credits_fail_open`].
//!
//! Keys (under the prefix, default `api-keys`): `…:rl:k:<name>:<window_ms>:<window>:<key id>`
//! and `…:rl:o:<name>:<window_ms>:<window>:<org>` (strings, expiring a window and a second
//! after their last use, on Redis's clock), `…:cr:<key id>` (a hash: balance `b`, refill period `p`; no expiry) and
//! `…:cra:<key id>` (a roll's link to the balance it shares). The scripts name keys they
//! derive, so this engine needs a single Redis (or a primary with replicas), not Redis Cluster.
//!
//! Credits persist as long as Redis does: run it with `appendonly yes` (and `appendfsync
//! everysec`, or `always` to lose no spend on a crash) — see the README.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration as StdDuration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use super::engine::{
    Consumed, CounterError, Decision, LimitUsage, Usage, UsageCounters, UsageRequest,
    refill_period, window_of,
};
use crate::store::BoxFuture;
use crate::{Credits, KeyId, LimitScope, RateLimit};

/// Checks every limit, then the credits (refilled first), then spends all or nothing.
/// KEYS: the limits' counters, then the key's credit link. ARGV: now, cost, n, per limit
/// (limit, reset, window), then has_credits, initial, refill amount (-1: none), period, own account.
/// Returns {status (0 ok, 1 rate limited, 2 out of credits), refusing index, balance (-1:
/// none), used...}.
const CONSUME: &str = r#"
local cost = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local used = {}
local refused, refused_reset = -1, -1
for i = 1, n do
  local limit = tonumber(ARGV[1 + 3 * i])
  local reset = tonumber(ARGV[2 + 3 * i])
  local u = tonumber(redis.call('GET', KEYS[i]) or '0')
  used[i] = u
  if u + cost > limit and reset > refused_reset then
    refused, refused_reset = i - 1, reset
  end
end
local off = 3 + 3 * n
local balance, account = -1, nil
if ARGV[off + 1] == '1' then
  account = redis.call('GET', KEYS[n + 1]) or ARGV[off + 5]
  local amount, period = tonumber(ARGV[off + 3]), tonumber(ARGV[off + 4])
  local st = redis.call('HMGET', account, 'b', 'p')
  if not st[1] then
    balance = tonumber(ARGV[off + 2])
    redis.call('HSET', account, 'b', balance, 'p', period)
  else
    balance = tonumber(st[1])
    if amount >= 0 and period > tonumber(st[2]) then
      balance = amount
      redis.call('HSET', account, 'b', balance, 'p', period)
    end
  end
end
if refused >= 0 then
  return {1, refused, balance, unpack(used)}
end
if account and balance < cost then
  return {2, 0, balance, unpack(used)}
end
for i = 1, n do
  used[i] = redis.call('INCRBY', KEYS[i], cost)
  -- Relative to Redis's clock: a counter outlives its window by a second whatever the
  -- skew between the nodes' clocks and Redis's.
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[3 + 3 * i]) + 1000)
end
if account then
  balance = balance - cost
  redis.call('HSET', account, 'b', balance)
end
return {0, 0, balance, unpack(used)}
"#;

/// KEYS: link. ARGV: own account, mode (get | set), initial, refill amount, period, balance.
const CREDITS: &str = r#"
local account = redis.call('GET', KEYS[1]) or ARGV[1]
if ARGV[2] == 'set' then
  redis.call('HSET', account, 'b', ARGV[6], 'p', ARGV[5])
  return tonumber(ARGV[6])
end
local st = redis.call('HMGET', account, 'b', 'p')
if not st[1] then
  redis.call('HSET', account, 'b', ARGV[3], 'p', ARGV[5])
  return tonumber(ARGV[3])
end
local amount, period = tonumber(ARGV[4]), tonumber(ARGV[5])
if amount >= 0 and period > tonumber(st[2]) then
  redis.call('HSET', account, 'b', amount, 'p', period)
  return amount
end
return tonumber(st[1])
"#;

/// KEYS: from's link, to's link. ARGV: from's own account.
const LINK: &str = r#"
local account = redis.call('GET', KEYS[1]) or ARGV[1]
redis.call('SET', KEYS[2], account)
return 1
"#;

/// Builds a [`RedisCounters`]; see [`RedisCounters::builder`].
#[derive(Clone, Debug)]
pub struct RedisCountersBuilder {
    url: String,
    prefix: String,
    timeout: StdDuration,
    failures_to_open: u32,
    open_for: StdDuration,
    fail_open: HashSet<String>,
    credits_fail_open: bool,
    local_first: Option<StdDuration>,
}

impl RedisCountersBuilder {
    /// *Local-first* mode: rate limits are decided from this node's view of the counters
    /// (no network on the verification), and a background task sends this node's spending
    /// to Redis and reads everyone's every `sync_every` (one pipelined round trip for all
    /// active counters). Credits stay strict (one round trip each; never over-spent).
    ///
    /// Over-admission is bounded: in one window, a node admits at most what the counter
    /// had left at its last sync, so across `n` nodes the overshoot is at most what the
    /// other `n - 1` nodes admit within one sync interval (≈ `(n-1) × per-node rate ×
    /// sync_every`), and never more than `(n-1) × limit`. While Redis is down each node
    /// keeps enforcing every limit on its own count (at most `n × limit` in all).
    /// The first sync task starts with the first verification (inside a Tokio runtime).
    pub fn local_first(mut self, sync_every: StdDuration) -> Self {
        self.local_first = Some(sync_every.max(StdDuration::from_millis(1)));
        self
    }

    /// The prefix of every Redis key (default `api-keys`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The timeout of one call, connecting included (default 50 ms).
    pub fn timeout(mut self, timeout: StdDuration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The circuit breaker: after `failures` consecutive failed calls, no call is made for
    /// `open_for`; then one probe goes through, and its success closes the breaker (default
    /// 3 failures, 1 s).
    pub fn breaker(mut self, failures: u32, open_for: StdDuration) -> Self {
        self.failures_to_open = failures.max(1);
        self.open_for = open_for;
        self
    }

    /// Rate limits of these names fail open while Redis cannot answer: the request is
    /// admitted without them and the manager raises a `limits_failed_open` audit event.
    /// Every other limit fails closed ([`crate::Error::LimitsUnavailable`]).
    pub fn fail_open<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.fail_open.extend(names.into_iter().map(Into::into));
        self
    }

    /// Whether credits fail open while Redis cannot answer (default `false`: a key with
    /// credits is refused then).
    pub fn credits_fail_open(mut self, open: bool) -> Self {
        self.credits_fail_open = open;
        self
    }

    /// Builds the engine. It connects lazily (and reconnects by itself): a Redis that is down
    /// at start is handled like one that goes down later.
    ///
    /// # Errors
    /// [`CounterError::Unavailable`] for an unparsable URL.
    pub fn build(self) -> Result<RedisCounters, CounterError> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| unavailable(Some(e)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(self.timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| unavailable(Some(e)))?;
        Ok(RedisCounters {
            inner: Arc::new(Inner {
                conn,
                consume: Script::new(CONSUME),
                credits: Script::new(CREDITS),
                link: Script::new(LINK),
                prefix: self.prefix,
                timeout: self.timeout,
                failures_to_open: self.failures_to_open,
                open_for: self.open_for,
                fail_open: self.fail_open,
                credits_fail_open: self.credits_fail_open,
                breaker: Breaker::default(),
                epoch: Instant::now(),
                local_first: self.local_first,
                local: Mutex::new(HashMap::new()),
                sync_started: AtomicBool::new(false),
            }),
        })
    }
}

#[derive(Default)]
struct Breaker {
    failures: AtomicU32,
    /// While open: until when (ms since `epoch`); 0 when closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    calls: AtomicU64,
    short_circuited: AtomicU64,
}

struct Inner {
    conn: ConnectionManager,
    consume: Script,
    credits: Script,
    link: Script,
    prefix: String,
    timeout: StdDuration,
    failures_to_open: u32,
    open_for: StdDuration,
    fail_open: HashSet<String>,
    credits_fail_open: bool,
    breaker: Breaker,
    epoch: Instant,
    local_first: Option<StdDuration>,
    /// Local-first: this node's view of each active counter, by Redis key.
    local: Mutex<HashMap<String, LocalCount>>,
    sync_started: AtomicBool,
}

/// Local-first: one counter as this node sees it.
struct LocalCount {
    /// The window's end (Unix ms, the node's clock): the entry is dropped after it.
    reset_ms: i64,
    window_ms: u64,
    /// Everyone's count at the last sync (this node's synced spending included).
    global: u64,
    /// This node's spending not yet sent.
    pending: u64,
}

/// Usage counters in one Redis shared by every node (feature `redis`), strict mode. See the
/// module documentation above for the guarantees, keys and failure handling.
#[derive(Clone)]
pub struct RedisCounters {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// Call counts of a [`RedisCounters`] (for health pages and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Calls sent to Redis.
    pub calls: u64,
    /// Calls not sent because the breaker was open.
    pub short_circuited: u64,
    /// Whether the breaker is open now.
    pub open: bool,
}

fn unavailable(e: Option<RedisError>) -> CounterError {
    CounterError::Unavailable(e.map(|e| Box::new(e) as crate::BoxError))
}

impl RedisCounters {
    /// Starts building an engine for the Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisCountersBuilder {
        RedisCountersBuilder {
            url: url.into(),
            prefix: "api-keys".into(),
            timeout: StdDuration::from_millis(50),
            failures_to_open: 3,
            open_for: StdDuration::from_secs(1),
            fail_open: HashSet::new(),
            credits_fail_open: false,
            local_first: None,
        }
    }

    /// Call counts and the breaker's state.
    pub fn stats(&self) -> RedisStats {
        let b = &self.inner.breaker;
        RedisStats {
            calls: b.calls.load(Ordering::Relaxed),
            short_circuited: b.short_circuited.load(Ordering::Relaxed),
            open: b.open_until.load(Ordering::Acquire) != 0,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether a call may go out now: the breaker is closed, or it is open, its time is up
    /// and this caller won the single probe.
    fn admit_call(&self) -> bool {
        let b = &self.inner.breaker;
        let until = b.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now_ms() >= until
            && b.probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return true;
        }
        b.short_circuited.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn record(&self, ok: bool) {
        let b = &self.inner.breaker;
        if ok {
            b.failures.store(0, Ordering::Release);
            b.open_until.store(0, Ordering::Release);
        } else {
            let n = b.failures.fetch_add(1, Ordering::AcqRel) + 1;
            let was_open = b.open_until.load(Ordering::Acquire) != 0;
            if was_open || n >= self.inner.failures_to_open {
                let ms = u64::try_from(self.inner.open_for.as_millis()).unwrap_or(u64::MAX);
                b.open_until
                    .store(self.now_ms().saturating_add(ms).max(1), Ordering::Release);
            }
        }
        b.probing.store(false, Ordering::Release);
    }

    /// Runs one call through the breaker and the timeout.
    async fn call<T, F>(&self, f: F) -> Result<T, CounterError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        if !self.admit_call() {
            return Err(unavailable(None));
        }
        self.inner.breaker.calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.inner.timeout, f).await {
            Ok(Ok(v)) => {
                self.record(true);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.record(false);
                Err(unavailable(Some(e)))
            }
            Err(_) => {
                self.record(false);
                Err(unavailable(None))
            }
        }
    }

    fn counter_key(&self, l: &RateLimit, req: &UsageRequest<'_>) -> String {
        let (idx, _) = window_of(l, req.now_ms);
        let p = &self.inner.prefix;
        match l.scope() {
            LimitScope::Key => format!(
                "{p}:rl:k:{}:{}:{idx}:{:016x}",
                l.name(),
                l.window_ms(),
                req.key.value()
            ),
            LimitScope::Org => format!(
                "{p}:rl:o:{}:{}:{idx}:{}",
                l.name(),
                l.window_ms(),
                req.org.as_str()
            ),
        }
    }

    fn account(&self, key: KeyId) -> String {
        format!("{}:cr:{:016x}", self.inner.prefix, key.value())
    }

    fn link_key(&self, key: KeyId) -> String {
        format!("{}:cra:{:016x}", self.inner.prefix, key.value())
    }

    /// The decision while Redis cannot answer: admitted (degraded) if every limit of the
    /// request fails open and its credits do too; an error otherwise.
    fn degraded(&self, req: &UsageRequest<'_>, e: CounterError) -> Result<Decision, CounterError> {
        let all_open = req
            .limits
            .iter()
            .all(|l| self.inner.fail_open.contains(l.name()))
            && (req.credits.is_none() || self.inner.credits_fail_open);
        if !all_open {
            return Err(e);
        }
        let mut usage = Usage::new();
        for l in req.limits {
            usage.push(LimitUsage {
                remaining: l.limit(),
                reset_ms: window_of(l, req.now_ms).1,
            });
        }
        Ok(Decision::Allowed {
            usage,
            degraded: true,
        })
    }

    async fn consume_strict(&self, req: UsageRequest<'_>) -> Result<Decision, CounterError> {
        let mut inv = self.inner.consume.prepare_invoke();
        for l in req.limits {
            inv.key(self.counter_key(l, &req));
        }
        inv.key(self.link_key(req.key));
        inv.arg(req.now_ms).arg(req.cost).arg(req.limits.len());
        for l in req.limits {
            inv.arg(l.limit())
                .arg(window_of(l, req.now_ms).1)
                .arg(l.window_ms());
        }
        match req.credits {
            Some(c) => {
                let refill = c.refill_schedule();
                inv.arg(1)
                    .arg(c.initial())
                    .arg(refill.map_or(-1, |r| i64::try_from(r.amount()).unwrap_or(i64::MAX)))
                    .arg(refill_period(refill, req.now_ms))
                    .arg(self.account(req.key));
            }
            None => {
                inv.arg(0).arg(0).arg(-1).arg(0).arg("");
            }
        }
        let mut conn = self.inner.conn.clone();
        let reply: Result<Vec<i64>, CounterError> = self.call(inv.invoke_async(&mut conn)).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => return self.degraded(&req, e),
        };
        let status = reply.first().copied().unwrap_or(-1);
        let refusing = reply.get(1).copied().unwrap_or(0);
        let balance = reply.get(2).copied().unwrap_or(-1);
        let mut usage = Usage::new();
        for (i, l) in req.limits.iter().enumerate() {
            let used = reply.get(3 + i).copied().unwrap_or(0);
            usage.push(LimitUsage {
                remaining: l.limit().saturating_sub(u64::try_from(used).unwrap_or(0)),
                reset_ms: window_of(l, req.now_ms).1,
            });
        }
        if req.credits.is_some() {
            usage.credits = Some(u64::try_from(balance).unwrap_or(0));
        }
        match status {
            0 => Ok(Decision::Allowed {
                usage,
                degraded: false,
            }),
            1 => {
                let i = usize::try_from(refusing).unwrap_or(0);
                let reset = req
                    .limits
                    .get(i)
                    .map_or(req.now_ms, |l| window_of(l, req.now_ms).1);
                Ok(Decision::RateLimited {
                    limit: i,
                    retry_after: StdDuration::from_millis(
                        u64::try_from(reset - req.now_ms).unwrap_or(0),
                    ),
                    usage,
                })
            }
            2 => Ok(Decision::OutOfCredits { usage }),
            _ => Err(unavailable(None)),
        }
    }

    /// Local-first: decides from this node's view, all or nothing.
    fn consume_local(&self, req: &UsageRequest<'_>) -> Decision {
        let keys: Vec<String> = req
            .limits
            .iter()
            .map(|l| self.counter_key(l, req))
            .collect();
        let mut local = self
            .inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut usage = Usage::new();
        let mut refused: Option<(usize, i64)> = None;
        for (i, (l, k)) in req.limits.iter().zip(&keys).enumerate() {
            let reset = window_of(l, req.now_ms).1;
            let seen = local.get(k).map_or(0, |c| c.global + c.pending);
            if seen.saturating_add(req.cost) > l.limit() && refused.is_none_or(|(_, r)| reset > r) {
                refused = Some((i, reset));
            }
        }
        if let Some((i, reset)) = refused {
            for (l, k) in req.limits.iter().zip(&keys) {
                let seen = local.get(k).map_or(0, |c| c.global + c.pending);
                usage.push(LimitUsage {
                    remaining: l.limit().saturating_sub(seen),
                    reset_ms: window_of(l, req.now_ms).1,
                });
            }
            return Decision::RateLimited {
                limit: i,
                retry_after: StdDuration::from_millis(
                    u64::try_from(reset - req.now_ms).unwrap_or(0),
                ),
                usage,
            };
        }
        for (l, k) in req.limits.iter().zip(keys) {
            let reset_ms = window_of(l, req.now_ms).1;
            let c = local.entry(k).or_insert(LocalCount {
                reset_ms,
                window_ms: l.window_ms(),
                global: 0,
                pending: 0,
            });
            c.pending = c.pending.saturating_add(req.cost);
            usage.push(LimitUsage {
                remaining: l.limit().saturating_sub(c.global + c.pending),
                reset_ms,
            });
        }
        Decision::Allowed {
            usage,
            degraded: false,
        }
    }

    /// Starts the background sync once (local-first), if a Tokio runtime is running.
    fn start_sync(&self) {
        let Some(every) = self.inner.local_first else {
            return;
        };
        if self.inner.sync_started.load(Ordering::Acquire)
            || self
                .inner
                .sync_started
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.inner.sync_started.store(false, Ordering::Release);
            return;
        };
        // The task holds a weak reference: it ends when the engine is dropped.
        let weak = Arc::downgrade(&self.inner);
        handle.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                RedisCounters { inner }.sync_once().await;
            }
        });
    }

    /// Local-first: sends this node's pending spending and reads everyone's counts, in one
    /// pipelined round trip. On failure the pending counts stay and are sent next time.
    pub async fn sync_once(&self) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let batch: Vec<(String, u64, u64)> = {
            let mut local = self
                .inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A window that ended (plus a second of slack) is gone for good.
            local.retain(|_, c| c.reset_ms.saturating_add(1000) > now_ms);
            local
                .iter()
                .map(|(k, c)| (k.clone(), c.pending, c.window_ms))
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (k, pending, window_ms) in &batch {
            pipe.cmd("INCRBY").arg(k).arg(*pending);
            pipe.cmd("PEXPIRE")
                .arg(k)
                .arg(window_ms.saturating_add(1000))
                .ignore();
        }
        let mut conn = self.inner.conn.clone();
        let totals: Result<Vec<u64>, CounterError> = self.call(pipe.query_async(&mut conn)).await;
        let Ok(totals) = totals else { return };
        let mut local = self
            .inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for ((k, sent, _), total) in batch.iter().zip(totals) {
            if let Some(c) = local.get_mut(k) {
                c.pending = c.pending.saturating_sub(*sent);
                c.global = total;
            }
        }
    }

    async fn credits_call(
        &self,
        key: KeyId,
        credits: &Credits,
        set: Option<u64>,
        now_ms: i64,
    ) -> Result<u64, CounterError> {
        let refill = credits.refill_schedule();
        let mut inv = self.inner.credits.prepare_invoke();
        inv.key(self.link_key(key))
            .arg(self.account(key))
            .arg(if set.is_some() { "set" } else { "get" })
            .arg(credits.initial())
            .arg(refill.map_or(-1, |r| i64::try_from(r.amount()).unwrap_or(i64::MAX)))
            .arg(refill_period(refill, now_ms))
            .arg(set.unwrap_or(0));
        let mut conn = self.inner.conn.clone();
        let v: i64 = self.call(inv.invoke_async(&mut conn)).await?;
        Ok(u64::try_from(v).unwrap_or(0))
    }
}

impl UsageCounters for RedisCounters {
    fn consume<'a>(&'a self, req: UsageRequest<'a>) -> Consumed<'a> {
        if self.inner.local_first.is_some() && req.credits.is_none() {
            self.start_sync();
            return Consumed::Ready(Ok(self.consume_local(&req)));
        }
        Consumed::Pending(Box::pin(self.consume_strict(req)))
    }

    fn set_credits<'a>(
        &'a self,
        key: KeyId,
        credits: &'a Credits,
        balance: u64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), CounterError>> {
        Box::pin(async move {
            self.credits_call(key, credits, Some(balance), now_ms)
                .await
                .map(|_| ())
        })
    }

    fn credits<'a>(
        &'a self,
        key: KeyId,
        credits: Option<&'a Credits>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<u64>, CounterError>> {
        Box::pin(async move {
            match credits {
                None => Ok(None),
                Some(c) => self.credits_call(key, c, None, now_ms).await.map(Some),
            }
        })
    }

    fn link_credits<'a>(
        &'a self,
        from: KeyId,
        to: KeyId,
    ) -> BoxFuture<'a, Result<(), CounterError>> {
        Box::pin(async move {
            let mut inv = self.inner.link.prepare_invoke();
            inv.key(self.link_key(from))
                .key(self.link_key(to))
                .arg(self.account(from));
            let mut conn = self.inner.conn.clone();
            let _: i64 = self.call(inv.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn forget<'a>(&'a self, key: KeyId) -> BoxFuture<'a, Result<(), CounterError>> {
        Box::pin(async move {
            // The key's link only: its balance may be shared with its replacement.
            let mut conn = self.inner.conn.clone();
            let cmd = redis::cmd("DEL").arg(self.link_key(key)).clone();
            let _: i64 = self.call(cmd.query_async(&mut conn)).await?;
            Ok(())
        })
    }
}
