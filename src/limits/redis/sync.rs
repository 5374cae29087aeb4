//! Local-first's background work: forgetting ended windows and handing idle leases back.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use super::{CounterError, RedisCounters};

/// Hands unused leases back. KEYS: counters. ARGV: units per counter.
pub(super) const RETURN: &str = r#"
for i = 1, #KEYS do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  local back = math.min(used, tonumber(ARGV[i]))
  if back > 0 then redis.call('DECRBY', KEYS[i], back) end
end
return 1
"#;

/// Held by the background task: clears the engine's "started" mark when the task goes.
struct Restart(std::sync::Weak<super::Inner>);

impl Drop for Restart {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.sync_started.store(false, Ordering::Release);
        }
    }
}

impl RedisCounters {
    /// Starts the background task once, if a Tokio runtime is running (again if the runtime
    /// it ran on shut down).
    pub(super) fn start_sync(&self) {
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
        let Some(handle) = self.runtime() else {
            self.inner.sync_started.store(false, Ordering::Release);
            return;
        };
        // The task holds a weak reference: it ends when the engine is dropped.
        let weak = std::sync::Arc::downgrade(&self.inner);
        // Dropped with the task — also unpolled, when its runtime shuts down (a host's
        // warm-up runtime): the next verification starts it again in its own runtime.
        let restart = Restart(weak.clone());
        handle.spawn(async move {
            let _restart = restart;
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                RedisCounters { inner }.sync_once().await;
            }
        });
    }

    /// Local-first: runs the background task's work once now — forgets the counters of
    /// ended windows (on the managers' clock, as verifications bring it) and hands back to
    /// Redis the leases this node has not spent from for `sync_every` and half their window,
    /// at most a second (so that other nodes may use them), and the grants of lease calls that
    /// got no answer. Runs by itself every `sync_every`;
    /// public for tests and for a host that drives it.
    pub async fn sync_once(&self) {
        // The managers' clock as the latest verification read it (the counters' windows are
        // on it); the system clock before any.
        let seen = self.inner.clock_ms.load(Ordering::Relaxed);
        let wall_ms = if seen != 0 {
            seen
        } else {
            crate::Clock::now_unix_ms(&crate::SystemClock)
        };
        let idle_ms = u64::try_from(self.inner.local_first.unwrap_or_default().as_millis())
            .unwrap_or(u64::MAX);
        let now = self.now_ms();
        let back: Vec<(String, u64)> = {
            let mut map = self
                .inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A window that ended (plus a second of slack) is gone for good.
            map.retain(|_, e| e.reset_ms.saturating_add(1000) > wall_ms);
            let mut back: Vec<(String, u64)> = map
                .values_mut()
                .filter(|e| e.returning > 0)
                .map(|e| (e.redis_key.clone(), std::mem::take(&mut e.returning)))
                .collect();
            back.extend(
                map.iter_mut()
                    .filter(|(_, e)| {
                        // Idle: nothing spent for `sync_every` and for half the window (at most
                        // a second): a node with bursts of traffic keeps its lease between them.
                        let idle = idle_ms.max((e.window_ms / 2).min(1000));
                        // A lease taken ahead for a window not started yet is not idle.
                        let started = e
                            .reset_ms
                            .saturating_sub(i64::try_from(e.window_ms).unwrap_or(i64::MAX))
                            <= wall_ms;
                        started
                            && e.held > 0
                            && !e.fetching
                            && now.saturating_sub(e.last_use) >= idle
                    })
                    .map(|(_, e)| {
                        let held = std::mem::take(&mut e.held);
                        e.global = e.global.saturating_sub(held);
                        // Handed back: the next need leases afresh.
                        e.last_batch = 0;
                        (e.redis_key.clone(), held)
                    }),
            );
            back
        };
        self.give_back(back).await;
        // Lease calls that got no answer: their grants go back even if this node leases no
        // more (on failure they wait for the next try).
        let _ = self.reclaim().await;
    }

    /// Hands units back to their counters in one call.
    async fn give_back(&self, back: Vec<(String, u64)>) {
        if back.is_empty() {
            return;
        }
        let mut inv = self.inner.give_back.prepare_invoke();
        for (k, _) in &back {
            inv.key(k);
        }
        for (_, n) in &back {
            inv.arg(*n);
        }
        let Ok(mut conn) = self.connection() else {
            return;
        };
        // On failure the units stay counted as leased: under-admission in this window only.
        let _: Result<i64, CounterError> = self.call(inv.invoke_async(&mut conn)).await;
    }

    /// This node's leases of the limits' current windows (units held, not yet spent), for
    /// tests and health pages.
    pub fn leased(&self) -> u64 {
        let map = self
            .inner
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.values().map(|e| e.held).sum()
    }
}
