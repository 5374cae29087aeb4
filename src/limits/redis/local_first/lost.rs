//! Lease calls whose answer never came (a timeout, a connection lost): Redis may have run
//! them, or may run them later (a frozen Redis runs what was sent once it thaws), counting
//! units as leased that no node holds — under-admission for the rest of the window, a
//! `⌈left / 8⌉` per call. Each lease call carries a token under which Redis records its
//! grants; the node hands back the grants of its lost calls with its next lease call, and a
//! lost call that Redis runs only after that grants nothing.

use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, Ordering};

use super::super::lease::LEASE_DIVISOR;
use super::super::{CounterError, RedisCounters};
use super::Ask;

/// Hands back lost calls' grants, or cancels the calls. KEYS: counter, its grant record (per
/// lost ask). ARGV: token, expiry (ms) per lost ask.
pub(in super::super) const RECLAIM: &str = r#"
for i = 1, #KEYS / 2 do
  local counter, grants = KEYS[2 * i - 1], KEYS[2 * i]
  local token, ttl = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  -- A key edited by hand into another type or text (a number `DECRBY` refuses, "7.5"
  -- included) is skipped, not an error: one bad key must not fail every lease call of this
  -- node (`pcall`; an error reply is a table).
  local g = redis.pcall('HGET', grants, token)
  if type(g) ~= 'table' and g ~= 'x' then
    if g then
      local v = redis.pcall('GET', counter)
      local used = type(v) == 'string' and tonumber(v) or 0
      local back = math.min(used, tonumber(g) or 0)
      if back > 0 then redis.pcall('DECRBY', counter, back) end
    end
    redis.call('HSET', grants, token, 'x')
    -- A record the lease call made expires with its counter; one made here (the call has
    -- not run) lives a window from now at most.
    if redis.call('PTTL', grants) < 0 then redis.call('PEXPIRE', grants, ttl) end
  end
end
return 1
"#;

/// One ask of a lease call that got no answer.
pub(in super::super) struct Lost {
    counter: String,
    token: String,
    ttl_ms: u64,
    /// When it was lost (engine ms): past its expiry, the counter is gone and so is the grant.
    at: u64,
}

impl RedisCounters {
    /// A counter's record of the grants made to lease calls (`…:lg:…` beside `…:rl:…`).
    fn grants_key(&self, counter: &str) -> String {
        let p = &self.inner.prefix;
        let rest = counter
            .strip_prefix(p.as_str())
            .and_then(|c| c.strip_prefix(":rl"))
            .unwrap_or(counter);
        format!("{p}:lg{rest}")
    }

    /// One lease call for `asks`, after handing back the grants of earlier calls that got no
    /// answer (if that fails, this call is not made).
    pub(super) async fn lease_call(&self, asks: &[Ask]) -> Result<Vec<i64>, CounterError> {
        self.reclaim().await?;
        let n = self.inner.lease_calls.fetch_add(1, Ordering::Relaxed);
        let token = format!("{:016x}{n:x}", self.inner.node);
        let mut inv = self.inner.lease.prepare_invoke();
        for a in asks {
            inv.key(&a.key);
        }
        for a in asks {
            inv.key(self.grants_key(&a.key));
        }
        inv.arg(&token);
        for a in asks {
            inv.arg(a.limit)
                .arg(a.ttl_ms)
                .arg(super::super::strict::script_cost(a.need))
                .arg(LEASE_DIVISOR)
                .arg(a.back);
        }
        let mut conn = self.connection()?;
        // Whether the call went out (the breaker let it): only then may Redis run it.
        let sent = AtomicBool::new(false);
        let reply = self
            .call(async {
                sent.store(true, Ordering::Relaxed);
                inv.invoke_async(&mut conn).await
            })
            .await;
        if reply.is_err() && sent.load(Ordering::Relaxed) {
            let at = self.now_ms();
            let mut lost = self
                .inner
                .lost
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            lost.extend(asks.iter().map(|a| Lost {
                counter: a.key.clone(),
                token: token.clone(),
                ttl_ms: a.ttl_ms,
                at,
            }));
        }
        reply
    }

    /// Hands back the grants of lease calls that got no answer (kept for another try if this
    /// call fails too); before each lease call, and by the background task.
    pub(in super::super) async fn reclaim(&self) -> Result<(), CounterError> {
        let now = self.now_ms();
        let lost: Vec<Lost> = {
            let mut lost = self
                .inner
                .lost
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            lost.retain(|l| now.saturating_sub(l.at) < l.ttl_ms);
            std::mem::take(&mut *lost)
        };
        if lost.is_empty() {
            return Ok(());
        }
        let mut inv = self.inner.reclaim.prepare_invoke();
        for l in &lost {
            inv.key(&l.counter).key(self.grants_key(&l.counter));
            inv.arg(&l.token).arg(l.ttl_ms);
        }
        let done = match self.connection() {
            Ok(mut conn) => self.call(inv.invoke_async::<i64>(&mut conn)).await,
            Err(e) => Err(e),
        };
        if done.is_err() {
            self.inner
                .lost
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(lost);
        }
        done.map(|_| ())
    }
}
