//! [`LocalCounters`]: the in-process counter engine (the default).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration as StdDuration;

use foldhash::fast::FixedState;

use super::engine::{
    Consumed, CounterError, Decision, LimitUsage, Usage, UsageCounters, UsageRequest,
    refill_period, window_of,
};
use crate::store::BoxFuture;
use crate::{Credits, KeyId, LimitScope, MAX_RATE_LIMITS};

const SHARDS: usize = 64;

/// Counters in this process's memory: exact (every decision under the locks of the counters
/// it reads), sharded 64 ways by key id (organization-wide limits by organization), and
/// allocation-free once a key's counters exist (a key's first limited verification allocates
/// them).
///
/// What it does not do: share counts with other processes (each node counts alone — use the
/// Redis engine for limits across nodes) or keep credit balances across a restart (a
/// restarted process starts each key at its configured balance again; see the README's
/// "Usage limits" section for where balances persist).
pub struct LocalCounters {
    shards: Box<[Mutex<Shard>]>,
    hasher: FixedState,
}

#[derive(Default)]
struct Shard {
    keys: HashMap<u64, KeyEntry, FixedState>,
    orgs: HashMap<Box<str>, Windows, FixedState>,
}

/// One key's counters, inline in its shard's map (one lookup, no pointer to chase). Laid out
/// so that the count of windows and the first window share the map entry's first cache line
/// with the key.
#[derive(Default)]
#[repr(C)]
struct KeyEntry {
    windows: Windows,
    credits: CreditCell,
}

/// A key's (or organization's) window counters, inline: at most [`MAX_RATE_LIMITS`] per
/// key; an organization's beyond that share the last slot's fate (see `find`).
#[derive(Default)]
#[repr(C)]
struct Windows {
    len: u8,
    items: [Window; MAX_RATE_LIMITS],
}

#[derive(Clone, Copy, Default)]
struct Window {
    /// The limit's name, hashed (names of one key are unique; 64-bit hashes of at most a
    /// few dozen names per key or organization do not collide in practice).
    name: u64,
    window_ms: u64,
    idx: i64,
    used: u64,
}

/// A key's credit balance: its own (inline, under the shard lock), or shared with the keys
/// of a roll (under its own lock, always taken after the shard's).
#[derive(Default)]
enum CreditCell {
    #[default]
    None,
    Own(Balance),
    Shared(Arc<Mutex<Balance>>),
}

impl CreditCell {
    fn with<R>(&mut self, f: impl FnOnce(&mut Balance) -> R) -> R {
        match self {
            CreditCell::Own(b) => f(b),
            CreditCell::Shared(a) => f(&mut a.lock().unwrap_or_else(PoisonError::into_inner)),
            CreditCell::None => {
                *self = CreditCell::Own(Balance::default());
                self.with(f)
            }
        }
    }

    /// Makes the balance shareable and returns it.
    fn share(&mut self) -> Arc<Mutex<Balance>> {
        let own = match std::mem::take(self) {
            CreditCell::Shared(a) => a,
            CreditCell::Own(b) => Arc::new(Mutex::new(b)),
            CreditCell::None => Arc::new(Mutex::new(Balance::default())),
        };
        *self = CreditCell::Shared(own.clone());
        own
    }
}

#[derive(Clone, Copy, Default)]
struct Balance {
    initialized: bool,
    balance: u64,
    period: i64,
}

impl Balance {
    /// Brings the balance to `now_ms`: the configured start on first use, a refill (which
    /// sets) in a new period.
    fn current(&mut self, credits: &Credits, now_ms: i64) -> u64 {
        let period = refill_period(credits.refill_schedule(), now_ms);
        if !self.initialized {
            *self = Balance {
                initialized: true,
                balance: credits.initial(),
                period,
            };
        } else if let Some(r) = credits.refill_schedule()
            && period > self.period
        {
            self.balance = r.amount();
            self.period = period;
        }
        self.balance
    }
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LocalCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCounters").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The counter named `name` (hashed); `hint` is where it usually is (the limit's index in
/// the key's configuration), checked first. A new name takes the next free slot (the last
/// slot when all are taken: only an organization whose keys use more than
/// [`MAX_RATE_LIMITS`] distinct org-wide names in all gets there, and those names then share
/// a fresh count instead of keeping their own).
fn find(windows: &mut Windows, hint: usize, name: u64, window_ms: u64) -> &mut Window {
    let len = usize::from(windows.len);
    let pos = if hint < len && windows.items[hint].name == name {
        hint
    } else if let Some(p) = windows.items[..len].iter().position(|w| w.name == name) {
        p
    } else {
        let p = len.min(MAX_RATE_LIMITS - 1);
        windows.items[p] = Window {
            name,
            window_ms,
            idx: i64::MIN,
            used: 0,
        };
        windows.len = u8::try_from(p + 1).unwrap_or(u8::MAX);
        p
    };
    let w = &mut windows.items[pos];
    if w.window_ms != window_ms {
        // The limit's window was changed: a fresh count.
        w.window_ms = window_ms;
        w.idx = i64::MIN;
        w.used = 0;
    }
    w
}

impl LocalCounters {
    /// Empty counters.
    pub fn new() -> Self {
        LocalCounters {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: FixedState::with_seed(0x5eed_11a1_75c0_u64),
        }
    }

    fn key_shard(&self, key: KeyId) -> usize {
        (key.value() as usize) % SHARDS
    }

    fn org_shard(&self, org: &str) -> usize {
        (self.hasher.hash_one(org) as usize) % SHARDS
    }

    /// Decides one request (synchronously).
    pub fn decide(&self, req: &UsageRequest<'_>) -> Decision {
        let mut names = [0u64; MAX_RATE_LIMITS];
        for (n, l) in names.iter_mut().zip(req.limits) {
            *n = self.hasher.hash_one(l.name());
        }
        let ks = self.key_shard(req.key);
        let needs_org = req.limits.iter().any(|l| l.scope() == LimitScope::Org);
        let os = if needs_org {
            Some(self.org_shard(req.org.as_str()))
        } else {
            None
        };
        match os {
            None => {
                let mut g = lock(&self.shards[ks]);
                let Shard { keys, orgs } = &mut *g;
                decide(keys, orgs, &names, req)
            }
            Some(os) if os == ks => {
                let mut g = lock(&self.shards[ks]);
                let Shard { keys, orgs } = &mut *g;
                decide(keys, orgs, &names, req)
            }
            Some(os) => {
                // Two shards: always locked in index order.
                let (mut kg, mut og) = if ks < os {
                    let k = lock(&self.shards[ks]);
                    (k, lock(&self.shards[os]))
                } else {
                    let o = lock(&self.shards[os]);
                    (lock(&self.shards[ks]), o)
                };
                decide(&mut kg.keys, &mut og.orgs, &names, req)
            }
        }
    }

    fn cell(&self, key: KeyId) -> Arc<Mutex<Balance>> {
        let mut g = lock(&self.shards[self.key_shard(key)]);
        g.keys.entry(key.value()).or_default().credits.share()
    }

    /// Runs `f` on a key's balance.
    fn balance<R>(&self, key: KeyId, f: impl FnOnce(&mut Balance) -> R) -> R {
        let mut g = lock(&self.shards[self.key_shard(key)]);
        g.keys.entry(key.value()).or_default().credits.with(f)
    }
}

fn decide(
    keys: &mut HashMap<u64, KeyEntry, FixedState>,
    orgs: &mut HashMap<Box<str>, Windows, FixedState>,
    names: &[u64],
    req: &UsageRequest<'_>,
) -> Decision {
    let now = req.now_ms;
    let cost = req.cost;
    let mut used = [0u64; MAX_RATE_LIMITS];
    // Each limit's window (index, end), computed once.
    let mut windows_at = [(0i64, 0i64); MAX_RATE_LIMITS];
    let mut usage = Usage::new();
    let mut refused: Option<(usize, i64)> = None;
    let limits = &req.limits[..req.limits.len().min(MAX_RATE_LIMITS)];
    let entry = if req.limits.iter().any(|l| l.scope() == LimitScope::Key) || req.credits.is_some()
    {
        Some(keys.entry(req.key.value()).or_default())
    } else {
        None
    };
    let mut entry = entry;
    let mut org_windows = if limits.iter().any(|l| l.scope() == LimitScope::Org) {
        Some(match orgs.get_mut(req.org.as_str()) {
            Some(v) => v,
            None => orgs.entry(req.org.as_str().into()).or_default(),
        })
    } else {
        None
    };
    // Pass 1: roll windows and check every limit; nothing is spent.
    for (i, l) in limits.iter().enumerate() {
        let windows = match l.scope() {
            LimitScope::Key => match entry.as_deref_mut() {
                Some(e) => &mut e.windows,
                None => continue,
            },
            LimitScope::Org => match org_windows.as_deref_mut() {
                Some(v) => v,
                None => continue,
            },
        };
        let w = find(windows, i, names[i], l.window_ms());
        let (idx, reset) = window_of(l, now);
        windows_at[i] = (idx, reset);
        if w.idx != idx {
            w.idx = idx;
            w.used = 0;
        }
        used[i] = w.used;
        if w.used.saturating_add(cost) > l.limit() && refused.is_none_or(|(_, r)| reset > r) {
            refused = Some((i, reset));
        }
    }
    let report = |usage: &mut Usage, used: &[u64]| {
        for (i, l) in limits.iter().enumerate() {
            usage.push(LimitUsage {
                remaining: l.limit().saturating_sub(used[i]),
                reset_ms: windows_at[i].1,
            });
        }
    };
    if let Some((i, reset)) = refused {
        report(&mut usage, &used);
        if let (Some(c), Some(e)) = (req.credits, entry.as_deref_mut()) {
            usage.credits = Some(e.credits.with(|b| b.current(c, now)));
        }
        return Decision::RateLimited {
            limit: i,
            retry_after: StdDuration::from_millis(u64::try_from(reset - now).unwrap_or(0)),
            usage,
        };
    }
    // Credits: checked and spent under the shard lock (and a shared balance's own lock).
    if let (Some(c), Some(e)) = (req.credits, entry.as_deref_mut()) {
        let spent = e.credits.with(|b| {
            let balance = b.current(c, now);
            if balance < cost {
                Err(balance)
            } else {
                b.balance = balance - cost;
                Ok(b.balance)
            }
        });
        match spent {
            Ok(left) => usage.credits = Some(left),
            Err(balance) => {
                report(&mut usage, &used);
                usage.credits = Some(balance);
                return Decision::OutOfCredits { usage };
            }
        }
    }
    // Pass 2: spend on every limit.
    for (i, l) in limits.iter().enumerate() {
        let windows = match l.scope() {
            LimitScope::Key => match entry.as_deref_mut() {
                Some(e) => &mut e.windows,
                None => continue,
            },
            LimitScope::Org => match org_windows.as_deref_mut() {
                Some(v) => v,
                None => continue,
            },
        };
        let w = find(windows, i, names[i], l.window_ms());
        w.used = w.used.saturating_add(cost);
        used[i] = w.used;
    }
    report(&mut usage, &used);
    Decision::Allowed {
        usage,
        degraded: false,
    }
}

impl UsageCounters for LocalCounters {
    fn consume<'a>(&'a self, req: UsageRequest<'a>) -> Consumed<'a> {
        Consumed::Ready(Ok(self.decide(&req)))
    }

    fn set_credits<'a>(
        &'a self,
        key: KeyId,
        credits: &'a Credits,
        balance: u64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), CounterError>> {
        self.balance(key, |b| {
            *b = Balance {
                initialized: true,
                balance,
                period: refill_period(credits.refill_schedule(), now_ms),
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn credits<'a>(
        &'a self,
        key: KeyId,
        credits: Option<&'a Credits>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<u64>, CounterError>> {
        let out = credits.map(|c| self.balance(key, |b| b.current(c, now_ms)));
        Box::pin(std::future::ready(Ok(out)))
    }

    fn link_credits<'a>(
        &'a self,
        from: KeyId,
        to: KeyId,
    ) -> BoxFuture<'a, Result<(), CounterError>> {
        let cell = self.cell(from);
        let mut g = lock(&self.shards[self.key_shard(to)]);
        g.keys.entry(to.value()).or_default().credits = CreditCell::Shared(cell);
        Box::pin(std::future::ready(Ok(())))
    }

    fn forget<'a>(&'a self, key: KeyId) -> BoxFuture<'a, Result<(), CounterError>> {
        lock(&self.shards[self.key_shard(key)])
            .keys
            .remove(&key.value());
        Box::pin(std::future::ready(Ok(())))
    }
}
