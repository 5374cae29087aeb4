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
//! - A lease call that gets no answer (a timeout) may still run on Redis, then or later (a
//!   frozen Redis runs it when it thaws): its grants are recorded under the call's token, and
//!   the node's next lease call first hands them back, or cancels the call if it has not run
//!   (`local_first/lost.rs`), so that they do not stay leased to nobody until the window ends.
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
//! fails open is enforced on this node's own count alone, counted on from the window's count
//! as Redis last reported it (each node admits up to `limit` in all, so at most `nodes × limit`
//! in a window in which Redis goes down or stays down) and reported `degraded`; a limit that
//! fails closed refuses with [`CounterError::Unavailable`]. Units admitted alone are not
//! reported to Redis when it comes back: in a window in which Redis recovers, up to `limit`
//! more may be admitted through leases (`(nodes + 1) × limit` at most in that window).

use super::lease_id::LeaseId;
use crate::RateLimit;

/// A lease takes `1 / LEASE_DIVISOR` of what is left of a window (at least what is needed).
pub(super) const LEASE_DIVISOR: u64 = 8;

/// Grants leases. KEYS: counters, then their grant records. ARGV: the call's token, then per
/// counter: limit, expiry (ms), need, divisor, units handed back first (a lowered limit's).
/// Each grant is recorded under the token, so that a node that never heard the answer (a
/// timeout) can hand it back (`local_first/lost.rs`); a token already handed back grants
/// nothing. Returns {granted, leased so far (everyone's)} per counter.
pub(super) const LEASE: &str = r#"
local out = {}
local n = #KEYS / 2
local token = ARGV[1]
for i = 1, n do
  local limit = tonumber(ARGV[5 * i - 3])
  local ttl = tonumber(ARGV[5 * i - 2])
  local need = tonumber(ARGV[5 * i - 1])
  local div = tonumber(ARGV[5 * i])
  local back = tonumber(ARGV[5 * i + 1])
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if back > 0 and used > 0 then
    used = redis.call('DECRBY', KEYS[i], math.min(used, back))
  end
  local left = limit - used
  local grant = 0
  if left > 0 and left >= need and redis.call('HEXISTS', KEYS[n + i], token) == 0 then
    grant = math.max(need, math.ceil(left / div))
    if grant > left then grant = left end
    used = redis.call('INCRBY', KEYS[i], grant)
    redis.call('PEXPIRE', KEYS[i], ttl)
    redis.call('HSET', KEYS[n + i], token, grant)
    redis.call('PEXPIRE', KEYS[n + i], ttl)
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
    pub(super) fn follow(&mut self, limit: u64) {
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
    pub(super) fn record(&mut self, asked: u64, grant: u64, used: u64, now: u64) {
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
    pub(super) fn remaining(&self) -> u64 {
        self.limit
            .saturating_sub(self.global.saturating_add(self.solo))
            .saturating_add(self.held)
            .min(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

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
