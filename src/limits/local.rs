//! [`LocalCounters`]: the in-process counter engine (the default).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration as StdDuration;

use foldhash::fast::FixedState;

use super::engine::{
    Consumed, CounterError, Decision, LimitUsage, Usage, UsageCounters, UsageRequest, refill_period,
};
use crate::store::BoxFuture;
use crate::{Credits, KeyId, LimitScope, MAX_RATE_LIMITS, RateLimit};

const SHARDS: usize = 64;

/// Counters in this process's memory: exact (every decision under the locks of the counters
/// it reads), and allocation-free once a key's counters exist (a key's first limited
/// verification allocates them).
///
/// Each key's counters (and each organization's) sit behind a lock of their own; a map sharded
/// 64 ways finds them. A [`KeyManager`](crate::KeyManager) built with this engine keeps a
/// handle to a key's counters next to its cached record, so a warm verification goes straight
/// to them: no map lookup, no shard lock, no hashing of limit names.
///
/// What it does not do: share counts with other processes (each node counts alone — use the
/// Redis engine for limits across nodes) or keep credit balances across a restart (a
/// restarted process starts each key at its configured balance again; see the README's
/// "Usage limits" section for where balances persist).
pub struct LocalCounters {
    shards: Box<[Mutex<Shard>]>,
    hasher: FixedState,
}

/// A key's counters, shared by the map and the handles of cached records.
type KeyCell = Arc<Mutex<KeyEntry>>;
/// An organization's counters of its org-wide limits.
type OrgCell = Arc<Mutex<Windows>>;

#[derive(Default)]
struct Shard {
    keys: HashMap<u64, KeyCell, FixedState>,
    orgs: HashMap<Box<str>, OrgCell, FixedState>,
}

/// Where one key's counters are and what its limits say, resolved when the manager builds
/// the key's cached facts ([`LocalCounters::handle`]): the key's cell, its organization's
/// cell (when a limit is org-wide) and each limit compacted (hashed name, limit, window,
/// scope), in the key's order, so a decision reads no string and follows no pointer but the
/// cells'. Laid out so that the cells and the first limit come first. Lock order: the key's
/// cell, then the organization's, then a shared credit balance.
#[repr(C, align(64))]
pub(crate) struct LocalHandle {
    key: Option<KeyCell>,
    org: Option<OrgCell>,
    len: u8,
    has_credits: bool,
    limits: [Lim; MAX_RATE_LIMITS],
    credits: Option<Credits>,
}

impl LocalHandle {
    /// A handle to nothing (the facts of a manager over another engine, which never uses it).
    pub(crate) fn unresolved() -> Self {
        LocalHandle {
            key: None,
            org: None,
            len: 0,
            has_credits: false,
            limits: [Lim::default(); MAX_RATE_LIMITS],
            credits: None,
        }
    }
}

/// One rate limit, compacted for deciding (24 bytes: the first sits in the handle's first
/// cache line).
#[derive(Clone, Copy, Default)]
struct Lim {
    name: u64,
    limit: u64,
    /// The window in ms, and [`ORG`] for an org-wide limit.
    window: u64,
}

/// The bit of [`Lim::window`] that marks an org-wide limit (windows are at most a year).
const ORG: u64 = 1 << 63;

impl Lim {
    fn org(&self) -> bool {
        self.window & ORG != 0
    }

    fn window_ms(&self) -> i64 {
        (self.window & !ORG) as i64
    }
}

/// One key's counters (the windows' count and first windows first, next to the lock).
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

/// One limit's count in its current window `[start, end)` (Unix ms; a verification inside it
/// needs no division). A window of another length (a changed limit) starts a fresh count.
#[derive(Clone, Copy)]
struct Window {
    /// The limit's name, hashed (names of one key are unique; 64-bit hashes of at most a
    /// few dozen names per key or organization do not collide in practice).
    name: u64,
    used: u64,
    start: i64,
    end: i64,
}

impl Default for Window {
    fn default() -> Self {
        Window::fresh(0)
    }
}

impl Window {
    fn fresh(name: u64) -> Self {
        Window {
            name,
            used: 0,
            start: i64::MAX,
            end: i64::MIN,
        }
    }

    /// Moves the count to the window of `window_ms` containing `now` (a new window, or a
    /// window of another length, starts at zero) and returns that window's end.
    #[inline]
    fn roll(&mut self, window_ms: i64, now: i64) -> i64 {
        let w = window_ms.max(1);
        if now < self.start || now >= self.end || self.end.wrapping_sub(self.start) != w {
            let start = now.div_euclid(w).saturating_mul(w);
            self.start = start;
            self.end = start.saturating_add(w);
            self.used = 0;
        }
        self.end
    }
}

/// A key's credit balance: its own (inline, under the key's lock), or shared with the keys
/// of a roll (under its own lock, always taken after the key's).
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The counter named `name` (hashed); `hint` is where it usually is (the limit's index in
/// the key's configuration), checked first. A new name takes the next free slot (the last
/// slot when all are taken: only an organization whose keys use more than
/// [`MAX_RATE_LIMITS`] distinct org-wide names in all gets there, and those names then share
/// a fresh count instead of keeping their own).
#[inline]
fn find(windows: &mut Windows, hint: usize, name: u64) -> &mut Window {
    let len = usize::from(windows.len);
    let pos = if hint < len && windows.items[hint].name == name {
        hint
    } else if let Some(p) = windows.items[..len].iter().position(|w| w.name == name) {
        p
    } else {
        let p = len.min(MAX_RATE_LIMITS - 1);
        windows.items[p] = Window::fresh(name);
        windows.len = u8::try_from(p + 1).unwrap_or(u8::MAX);
        p
    };
    &mut windows.items[pos]
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

    /// A key's cell (created on first use).
    fn key_cell(&self, key: KeyId) -> KeyCell {
        lock(&self.shards[self.key_shard(key)])
            .keys
            .entry(key.value())
            .or_default()
            .clone()
    }

    /// An organization's cell (created on first use).
    fn org_cell(&self, org: &str) -> OrgCell {
        let mut g = lock(&self.shards[self.org_shard(org)]);
        match g.orgs.get(org) {
            Some(c) => c.clone(),
            None => g.orgs.entry(org.into()).or_default().clone(),
        }
    }

    /// Resolves where the counters of a key with these limits are (one map lookup per cell).
    /// A handle stays valid for the configuration it was made for: a record with other
    /// limits needs a new one.
    pub(crate) fn handle(
        &self,
        key: KeyId,
        org: &str,
        rate_limits: &[RateLimit],
        credits: Option<&Credits>,
    ) -> LocalHandle {
        let mut limits = [Lim::default(); MAX_RATE_LIMITS];
        for (lim, l) in limits.iter_mut().zip(rate_limits) {
            let scope = if l.scope() == LimitScope::Org { ORG } else { 0 };
            *lim = Lim {
                name: self.hasher.hash_one(l.name()),
                limit: l.limit(),
                window: l.window_ms().min(i64::MAX as u64) | scope,
            };
        }
        let len = rate_limits.len().min(MAX_RATE_LIMITS);
        let needs_key = limits[..len].iter().any(|l| !l.org()) || credits.is_some();
        let needs_org = limits[..len].iter().any(|l| l.org());
        LocalHandle {
            key: needs_key.then(|| self.key_cell(key)),
            org: needs_org.then(|| self.org_cell(org)),
            len: u8::try_from(len).unwrap_or(u8::MAX),
            has_credits: credits.is_some(),
            limits,
            credits: credits.copied(),
        }
    }

    /// Decides one request (synchronously).
    pub fn decide(&self, req: &UsageRequest<'_>) -> Decision {
        let h = self.handle(req.key, req.org.as_str(), req.limits, req.credits);
        self.decide_with(&h, req.cost, req.now_ms)
    }

    /// Decides one request on the counters and limits `h` resolved: the key's lock, then the organization's, held together so the
    /// decision is all or nothing.
    #[inline]
    pub(crate) fn decide_with(&self, h: &LocalHandle, cost: u64, now: i64) -> Decision {
        let mut key = h.key.as_deref().map(lock);
        let mut org = h.org.as_deref().map(lock);
        let limits = &h.limits[..usize::from(h.len)];
        let credits = if h.has_credits {
            h.credits.as_ref()
        } else {
            None
        };
        decide(
            key.as_deref_mut(),
            org.as_deref_mut(),
            limits,
            credits,
            cost,
            now,
        )
    }

    /// Runs `f` on a key's balance.
    fn balance<R>(&self, key: KeyId, f: impl FnOnce(&mut Balance) -> R) -> R {
        lock(&self.key_cell(key)).credits.with(f)
    }
}

/// The counter of limit `i` (`l`): among the key's windows, or its organization's.
#[inline]
fn counter<'a>(
    entry: &'a mut Option<&mut KeyEntry>,
    org: &'a mut Option<&mut Windows>,
    i: usize,
    l: &Lim,
) -> Option<&'a mut Window> {
    let windows = if l.org() {
        org.as_deref_mut()
    } else {
        entry.as_deref_mut().map(|e| &mut e.windows)
    };
    windows.map(|w| find(w, i, l.name))
}

fn decide(
    mut entry: Option<&mut KeyEntry>,
    mut org_windows: Option<&mut Windows>,
    limits: &[Lim],
    credits: Option<&Credits>,
    cost: u64,
    now: i64,
) -> Decision {
    let mut used = [0u64; MAX_RATE_LIMITS];
    // Each limit's window end, found once.
    let mut ends = [0i64; MAX_RATE_LIMITS];
    let mut refused: Option<(usize, i64)> = None;
    // Pass 1: roll windows and check every limit; nothing is spent.
    for (i, l) in limits.iter().enumerate() {
        let Some(w) = counter(&mut entry, &mut org_windows, i, l) else {
            continue;
        };
        let reset = w.roll(l.window_ms(), now);
        ends[i] = reset;
        used[i] = w.used;
        if w.used.saturating_add(cost) > l.limit && refused.is_none_or(|(_, r)| reset > r) {
            refused = Some((i, reset));
        }
    }
    let report = |used: &[u64; MAX_RATE_LIMITS], credits: Option<u64>| {
        let mut usage = Usage::new();
        for (i, l) in limits.iter().enumerate() {
            usage.push(LimitUsage {
                remaining: l.limit.saturating_sub(used[i]),
                reset_ms: ends[i],
            });
        }
        usage.credits = credits;
        usage
    };
    if let Some((i, reset)) = refused {
        let left = match (credits, entry.as_deref_mut()) {
            (Some(c), Some(e)) => Some(e.credits.with(|b| b.current(c, now))),
            _ => None,
        };
        return Decision::RateLimited {
            limit: i,
            retry_after: StdDuration::from_millis(u64::try_from(reset - now).unwrap_or(0)),
            usage: report(&used, left),
        };
    }
    // Credits: checked and spent under the key's lock (and a shared balance's own lock).
    let mut left = None;
    if let (Some(c), Some(e)) = (credits, entry.as_deref_mut()) {
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
            Ok(l) => left = Some(l),
            Err(balance) => {
                return Decision::OutOfCredits {
                    usage: report(&used, Some(balance)),
                };
            }
        }
    }
    // Pass 2: spend on every limit (each window was found and rolled in pass 1, under the
    // same locks).
    for (i, l) in limits.iter().enumerate() {
        let Some(w) = counter(&mut entry, &mut org_windows, i, l) else {
            continue;
        };
        w.used = w.used.saturating_add(cost);
        used[i] = w.used;
    }
    Decision::Allowed {
        usage: report(&used, left),
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
        let shared = lock(&self.key_cell(from)).credits.share();
        lock(&self.key_cell(to)).credits = CreditCell::Shared(shared);
        Box::pin(std::future::ready(Ok(())))
    }

    fn forget<'a>(&'a self, key: KeyId) -> BoxFuture<'a, Result<(), CounterError>> {
        lock(&self.shards[self.key_shard(key)])
            .keys
            .remove(&key.value());
        Box::pin(std::future::ready(Ok(())))
    }
}
