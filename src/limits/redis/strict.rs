//! Strict mode of [`RedisCounters`]: one server-side script per verification.

use std::time::Duration as StdDuration;

use super::{RedisCounters, unavailable};
use crate::limits::engine::{
    CounterError, Decision, LimitUsage, Usage, UsageRequest, legacy_period, refill_period,
    unix_day, window_of,
};

/// Checks every limit, then the credits (refilled first), then spends all or nothing. A
/// refusal only reads (a key hammered past its limit makes no writes to replicate or append);
/// an admitted request increments each counter, and sets its expiry only when it starts it.
/// KEYS: the limits' counters, then the key's credit link. ARGV: now, cost, n, per limit
/// (limit, reset, window), then has_credits, initial, refill amount (-1: none), the refill
/// period's first day, own account, today (Unix days), the earlier builds' period number (see
/// `current_balance_lua` in `mod.rs`).
/// Returns {status (0 ok, 1 rate limited, 2 out of credits), refusing index, balance (-1:
/// none), used...}.
pub(super) const CONSUME: &str = concat!(
    super::current_balance_lua!(),
    r#"
local cost = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local used, fresh = {}, {}
local refused, refused_reset = -1, -1
for i = 1, n do
  local limit = tonumber(ARGV[1 + 3 * i])
  local reset = tonumber(ARGV[2 + 3 * i])
  local v = redis.call('GET', KEYS[i])
  local u = tonumber(v or '0')
  fresh[i] = not v
  used[i] = u
  -- Not `u + cost > limit`: that sum can pass 2^53, where a double rounds it (2^53 - 1 + 2
  -- is 2^53); the difference of two numbers up to 2^53 is exact.
  if cost > 0 and u > limit - cost and reset > refused_reset then
    refused, refused_reset = i - 1, reset
  end
end
local off = 3 + 3 * n
local balance, account = -1, nil
if ARGV[off + 1] == '1' then
  account = redis.call('GET', KEYS[n + 1]) or ARGV[off + 5]
  balance = current(account, ARGV[off + 2], ARGV[off + 3], ARGV[off + 4], ARGV[off + 6],
    ARGV[off + 7])
end
if refused >= 0 then
  return {1, refused, balance, unpack(used)}
end
if account and balance < cost then
  return {2, 0, balance, unpack(used)}
end
for i = 1, n do
  used[i] = redis.call('INCRBY', KEYS[i], cost)
  if fresh[i] then
    -- A counter this request started. Its expiry is relative to Redis's clock: it
    -- outlives its window by a second whatever the skew between the nodes' clocks and
    -- Redis's.
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[3 + 3 * i]) + 1000)
  end
end
if account then
  balance = balance - cost
  redis.call('HSET', account, 'b', balance)
end
return {0, 0, balance, unpack(used)}
"#
);

/// The cost as the script receives it: Lua's numbers are doubles, exact only up to 2^53
/// (`MAX_UNITS`, the largest limit or balance), so a larger cost is sent as 2^54 — exact,
/// and above every count plus limit — instead of being rounded down to one that fits.
/// Local-first sends a lease's need the same way.
pub(super) fn script_cost(cost: u64) -> u64 {
    if cost > crate::MAX_UNITS {
        1 << 54
    } else {
        cost
    }
}

impl RedisCounters {
    /// The decision while Redis cannot answer: admitted (degraded) if every limit of the
    /// request fails open and its credits do too; an error otherwise.
    pub(super) fn degraded(
        &self,
        req: &UsageRequest<'_>,
        e: CounterError,
    ) -> Result<Decision, CounterError> {
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

    pub(super) async fn consume_strict(
        &self,
        req: UsageRequest<'_>,
    ) -> Result<Decision, CounterError> {
        let mut inv = self.inner.consume.prepare_invoke();
        for l in req.limits {
            inv.key(self.counter_key(l, &req));
        }
        inv.key(self.link_key(req.key));
        inv.arg(req.now_ms)
            .arg(script_cost(req.cost))
            .arg(req.limits.len());
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
                    .arg(self.account(req.key))
                    .arg(unix_day(req.now_ms))
                    .arg(legacy_period(refill, req.now_ms));
            }
            None => {
                inv.arg(0).arg(0).arg(-1).arg(0).arg("").arg(0).arg(0);
            }
        }
        let mut conn = match self.connection() {
            Ok(c) => c,
            Err(e) => return self.degraded(&req, e),
        };
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
                        u64::try_from(reset.saturating_sub(req.now_ms)).unwrap_or(0),
                    ),
                    usage,
                })
            }
            2 => Ok(Decision::OutOfCredits { usage }),
            _ => Err(unavailable(None)),
        }
    }
}
