//! [`RedisCounters`]: usage counters shared by every node through one Redis (feature
//! `redis`).
//!
//! *Strict* mode (`strict.rs`): every verification of a key with limits is one `EVALSHA` of
//! one server-side Lua script that checks and spends all of the key's limits and its credits
//! atomically (Redis runs a script alone), so no node ever admits more than a limit or a
//! balance allows.
//!
//! *Local-first* mode (`lease.rs`, its background work in `sync.rs`;
//! [`RedisCountersBuilder::local_first`]): each node leases batches of a window's budget with
//! one script and admits from them locally; it never over-admits either, and most
//! verifications make no network call.
//!
//! Each call has a timeout, and a circuit breaker stops calling a Redis that keeps failing
//! (a dead Redis then costs nothing per request instead of its timeout) and lets one probe
//! through after `open_for`. While Redis cannot answer, each limit fails open or closed as
//! configured ([`RedisCountersBuilder::fail_open`]); credits fail closed unless
//! [`RedisCountersBuilder::credits_fail_open`].
//!
//! Keys (under the prefix, default `api-keys`): `…:rl:k:<name>:<window_ms>:<window>:<key id>`
//! and `…:rl:o:<name>:<window_ms>:<window>:<org>` (strings, expiring on Redis's clock a
//! window and a second after the request that started them in strict mode — at most a window
//! and a second after their window ends — and a window and a second after their window ends
//! in local-first mode), `…:cr:<key id>` (a hash: balance `b`, the Unix day `d` it
//! was last started, set or refilled, and the earlier builds' period number `p`; no expiry) and
//! `…:cra:<key id>` (a roll's link to the balance it shares); local-first adds `…:lg:…` beside
//! each counter of a window (a hash of its lease calls' grants, expiring with the counter).
//! The scripts name keys they derive, so this engine needs a single Redis (or a primary with
//! replicas), not Redis Cluster.
//!
//! Credits persist as long as Redis does: run it with `appendonly yes` (and `appendfsync
//! everysec`, or `always` to lose no spend on a crash) — see the README.

mod call;
use call::Breaker;
mod deadline;
mod lease;
mod lease_id;
mod local_first;
mod strict;
mod sync;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration as StdDuration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use super::engine::{
    Consumed, CounterError, UsageCounters, UsageRequest, legacy_period, refill_period, unix_day,
    window_of,
};
use crate::store::BoxFuture;
use crate::{Credits, KeyId, LimitScope, RateLimit};

/// A Lua function both credit scripts start with: the balance of `account` now, started or
/// refilled if due. A balance keeps the Unix day it was last started, set or refilled (`d`); a
/// refill is due when the current period began (`start`) after that day. It also keeps the
/// period number of earlier builds (`p`, see `legacy_period`) and the `p` this build last
/// wrote (`dp`): a balance such a build wrote (no `d`) is decided by `p` once, as it would
/// have been; one whose `p` such a build changed since (a rolling upgrade) counts as set today.
macro_rules! current_balance_lua {
    () => {
        r#"
local function current(account, initial, amount, start, today, legacy)
  local st = redis.call('HMGET', account, 'b', 'd', 'p', 'dp')
  if not st[1] then
    redis.call('HSET', account, 'b', initial, 'd', today, 'p', legacy, 'dp', legacy)
    return tonumber(initial)
  end
  local due
  if not st[2] then
    due = st[3] and tonumber(legacy) > tonumber(st[3])
  elseif st[3] ~= st[4] then
    due = false
  else
    due = tonumber(start) > tonumber(st[2])
  end
  if tonumber(amount) >= 0 and due then
    redis.call('HSET', account, 'b', amount, 'd', today, 'p', legacy, 'dp', legacy)
    return tonumber(amount)
  end
  if not st[2] or st[3] ~= st[4] then
    local p = st[3] or legacy
    redis.call('HSET', account, 'd', today, 'p', p, 'dp', p)
  end
  return tonumber(st[1])
end
"#
    };
}
pub(super) use current_balance_lua;

/// KEYS: link. ARGV: own account, mode (get | set), initial, refill amount, the current
/// refill period's first day, balance, today (Unix days), the earlier builds' period number.
const CREDITS: &str = concat!(
    current_balance_lua!(),
    r#"
local account = redis.call('GET', KEYS[1]) or ARGV[1]
if ARGV[2] == 'set' then
  redis.call('HSET', account, 'b', ARGV[6], 'd', ARGV[7], 'p', ARGV[8], 'dp', ARGV[8])
  return tonumber(ARGV[6])
end
return current(account, ARGV[3], ARGV[4], ARGV[5], ARGV[7], ARGV[8])
"#
);

/// KEYS: from's link, to's link. ARGV: from's own account.
const LINK: &str = r#"
local account = redis.call('GET', KEYS[1]) or ARGV[1]
redis.call('SET', KEYS[2], account)
return 1
"#;

/// Builds a [`RedisCounters`]; see [`RedisCounters::builder`].
#[derive(Clone)]
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
    /// *Local-first* mode: each node *leases* a share of a window's budget from Redis (one
    /// atomic script: `max(cost, ⌈left / 8⌉)` of what is left, shrinking as the window
    /// fills, at least 1) and admits from its lease with no network on the verification. The
    /// next lease is fetched in the background when a lease falls to half its size; only a
    /// verification that finds no lease for one of its limits waits for Redis (bounded by
    /// the timeout and the breaker). Credits stay strict (one round trip each; never
    /// over-spent).
    ///
    /// Never over-admits: Redis grants at most `limit` units of a window in all and a node
    /// admits only granted units (nodes' clocks agreeing on the window). The cost is bounded
    /// *under*-admission: units leased but unspent when a window ends, at most two leases
    /// (`2 · ⌈limit / 8⌉`) per node, near zero under sustained load.
    ///
    /// `sync_every` (at least 1 ms) paces the background work: every `sync_every` a node
    /// hands back leases it has not spent from for that long (and for half the window, at most
    /// 1 s) and forgets ended windows; a
    /// node that Redis told "nothing left" refuses locally and asks again at most once per
    /// `sync_every`, in the background. While Redis is down a node spends the lease it holds;
    /// past it, a limit that fails open is enforced on this node's own count (at most
    /// `nodes × limit` in all; `degraded`), any other refuses. The background task starts
    /// with the first verification (on its Tokio runtime, else on the one the engine was built
    /// in). See `src/limits/redis/lease.rs`
    /// for the design.
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
    ///
    /// A call that times out may still have run on Redis: in strict mode its script may have
    /// spent the request's units and credits although the verification answered
    /// [`crate::Error::LimitsUnavailable`] (or, failing open, admitted it uncounted). A
    /// client that retries such a request can be charged twice; keep the timeout well above
    /// the round trip (the breaker bounds what a dead Redis costs anyway).
    pub fn timeout(mut self, timeout: StdDuration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The circuit breaker: after `failures` consecutive failed calls, no call is made for
    /// `open_for`; then one probe goes through, and its success closes the breaker (default
    /// 3 failures, 1 s). A call Redis answers with an error about its own keys (a counter
    /// edited by hand into text or another type) fails alone: it is not a failure of Redis.
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
    /// at start is handled like one that goes down later. Built outside any Tokio runtime, it
    /// makes its connection on its first call in one.
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
        // The runtime the connection runs on (it needs one: `new_lazy_with_config` spawns).
        // Built outside any, the engine makes its connection on first use in one.
        let runtime = call::OwnRuntime::current();
        let conn = OnceLock::new();
        if runtime.is_some() {
            let made = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .map_err(|e| unavailable(Some(e)))?;
            let _ = conn.set(made);
        }
        Ok(RedisCounters {
            inner: Arc::new(Inner {
                client,
                config,
                conn,
                consume: Script::new(strict::CONSUME),
                lease: Script::new(lease::LEASE),
                give_back: Script::new(sync::RETURN),
                reclaim: Script::new(local_first::RECLAIM),
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
                local: Mutex::new(lease::Leases::default()),
                leased: tokio::sync::Notify::new(),
                sync_started: AtomicBool::new(false),
                clock_ms: AtomicI64::new(0),
                stats: Decided::default(),
                node: node_id(),
                lease_calls: AtomicU64::new(0),
                lost: Mutex::new(Vec::new()),
                runtime,
            }),
        })
    }
}

struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Made at `build` in a runtime, else on first use in one ([`RedisCounters::connection`]).
    conn: OnceLock<ConnectionManager>,
    consume: Script,
    lease: Script,
    give_back: Script,
    reclaim: Script,
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
    /// Local-first: this node's leases, by counter (Redis key).
    local: Mutex<lease::Leases>,
    /// Local-first: woken when a lease call ends.
    leased: tokio::sync::Notify,
    sync_started: AtomicBool,
    /// Local-first: the latest manager time a verification brought (Unix ms).
    clock_ms: AtomicI64,
    stats: Decided,
    /// Local-first: this engine's part of its lease calls' tokens (random), and their count.
    node: u64,
    lease_calls: AtomicU64,
    /// Local-first: lease calls that got no answer, to hand back ([`local_first::Lost`]).
    lost: Mutex<Vec<local_first::Lost>>,
    /// The runtime the engine was built in: local-first's calls and timers run there when a
    /// verification is polled outside any Tokio runtime (a host's own executor).
    runtime: Option<call::OwnRuntime>,
}

/// Local-first: how verifications were decided.
#[derive(Default)]
struct Decided {
    local: AtomicU64,
    waited: AtomicU64,
}

/// Usage counters in one Redis shared by every node (feature `redis`), strict or local-first.
/// See the module documentation above for the guarantees, keys and failure handling.
#[derive(Clone)]
pub struct RedisCounters {
    inner: Arc<Inner>,
}

/// A Redis URL can carry a password (`redis://:secret@host/`): `Debug` never shows it.
impl std::fmt::Debug for RedisCountersBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCountersBuilder")
            .field("url", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("failures_to_open", &self.failures_to_open)
            .field("open_for", &self.open_for)
            .field("fail_open", &self.fail_open)
            .field("credits_fail_open", &self.credits_fail_open)
            .field("local_first", &self.local_first)
            .finish()
    }
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
    /// Local-first: verifications decided from this node's leases, with no network.
    pub decided_locally: u64,
    /// Local-first: verifications that waited for Redis (no lease for one of their limits).
    pub waited_for_redis: u64,
}

/// A random number for this engine's lease tokens (unique, not secret).
fn node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
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
            decided_locally: self.inner.stats.local.load(Ordering::Relaxed),
            waited_for_redis: self.inner.stats.waited.load(Ordering::Relaxed),
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
            .arg(set.unwrap_or(0))
            .arg(unix_day(now_ms))
            .arg(legacy_period(refill, now_ms));
        let mut conn = self.connection()?;
        let v: i64 = self.call(inv.invoke_async(&mut conn)).await?;
        Ok(u64::try_from(v).unwrap_or(0))
    }
}

impl UsageCounters for RedisCounters {
    fn consume<'a>(&'a self, req: UsageRequest<'a>) -> Consumed<'a> {
        if self.inner.local_first.is_some() && req.credits.is_none() {
            return self.consume_leased(req);
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
            let mut conn = self.connection()?;
            let _: i64 = self.call(inv.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn forget<'a>(&'a self, key: KeyId) -> BoxFuture<'a, Result<(), CounterError>> {
        Box::pin(async move {
            // The key's link only: its balance may be shared with its replacement.
            let mut conn = self.connection()?;
            let cmd = redis::cmd("DEL").arg(self.link_key(key)).clone();
            let _: i64 = self.call(cmd.query_async(&mut conn)).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
