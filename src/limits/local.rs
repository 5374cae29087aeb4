//! [`LocalCounters`]: the in-process counter engine (the default).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration as StdDuration;

use foldhash::fast::FixedState;

use super::engine::{
    Consumed, CounterError, Decision, Refused, UsageCounters, UsageRequest, Verdict, refill_period,
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

/// Where one key's counters are and what its limits say, made when the manager builds the
/// key's cached facts ([`LocalCounters::handle`]): each limit compacted (hashed name, limit,
/// window, scope), in the key's order, and the key's cell and its organization's (when a
/// limit is org-wide), found on the first decision that needs them — a record read only to
/// be refused (a wrong secret, a revoked key) creates no counters. A decision then reads no
/// string and follows no pointer but the cells'. Laid out so that the cells and the first
/// limit share the first cache line. Lock order: the key's cell, then the organization's,
/// then a shared credit balance.
#[repr(C, align(64))]
pub(crate) struct LocalHandle {
    key: OnceLock<KeyCell>,
    org: OnceLock<OrgCell>,
    /// Which cells a decision needs: [`NEEDS_KEY`], [`NEEDS_ORG`].
    needs: u8,
    len: u8,
    has_credits: bool,
    limits: [Lim; MAX_RATE_LIMITS],
    credits: Option<Credits>,
}

impl LocalHandle {
    /// A handle to nothing (the facts of a manager over another engine, which never uses it).
    pub(crate) fn unresolved() -> Self {
        LocalHandle {
            key: OnceLock::new(),
            org: OnceLock::new(),
            needs: 0,
            len: 0,
            has_credits: false,
            limits: [Lim::default(); MAX_RATE_LIMITS],
            credits: None,
        }
    }
}

// The cells and the first limit in the handle's first cache line.
const _: () = assert!(std::mem::offset_of!(LocalHandle, limits) + std::mem::size_of::<Lim>() <= 64);

/// How many org-wide names beyond the inline [`MAX_RATE_LIMITS`] an organization's counters
/// keep at most (its keys may name that many different org-wide limits at once); past that,
/// the count whose window ends first gives way to a new name.
const MORE_ORG_WINDOWS: usize = 56;

/// [`LocalHandle::needs`]: the key's own cell (a key-scope limit or credits).
const NEEDS_KEY: u8 = 1;
/// [`LocalHandle::needs`]: the organization's cell (an org-wide limit).
const NEEDS_ORG: u8 = 2;

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

/// A key's (or organization's) window counters: the first [`MAX_RATE_LIMITS`] inline (all a
/// key ever needs), an organization's further ones in `more` (its keys may name more org-wide
/// limits between them than one key can have).
#[derive(Default)]
#[repr(C)]
struct Windows {
    len: u8,
    items: [Window; MAX_RATE_LIMITS],
    more: Vec<Window>,
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

    /// Moves the count to the window of `window_ms` containing `now` (a later window, or a
    /// window of another length, starts at zero) and returns that window's end. A reading
    /// in the window just before the current one (a thread whose clock read a moment earlier
    /// than another's, a wall clock stepped back a little) counts in the current window:
    /// going back would zero a count the next reading then zeroes again, admitting more than
    /// the limit. A reading further back (a step of the wall clock by more than a window)
    /// starts over in its own window, so that such a step cannot keep a key refused until
    /// the clock catches up again.
    #[inline]
    fn roll(&mut self, window_ms: i64, now: i64) -> i64 {
        let w = window_ms.max(1);
        if now >= self.end
            || now < self.start.saturating_sub(w)
            || self.end.wrapping_sub(self.start) != w
        {
            let start = now.div_euclid(w).saturating_mul(w);
            self.start = start;
            self.end = start.saturating_add(w);
            self.used = 0;
        }
        self.end
    }

    /// Whether this window's count still matters at `now` (a reading in or before it).
    fn live(&self, now: i64) -> bool {
        now < self.end
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

/// The counter of limit `l` among `windows`; `hint` is where it usually is (the limit's
/// index in the key's configuration), checked first. A name not counted yet takes a slot no
/// current limit of this decision uses, so a decision never moves another limit's count:
/// - a free inline slot;
/// - for a key's own limits, a slot whose name the key's configuration no longer has (a key
///   has at most [`MAX_RATE_LIMITS`] limits, so there always is one once all are taken);
/// - for an organization's (whose other keys may count in any slot), a slot whose window is
///   over (its count would start at zero anyway), else a new slot — at most
///   [`MORE_ORG_WINDOWS`] beyond the inline ones, then the slot of another name whose window
///   ends first.
#[inline(always)]
fn find<'w>(
    windows: &'w mut Windows,
    hint: usize,
    l: &Lim,
    limits: &[Lim],
    now: i64,
) -> &'w mut Window {
    if hint < usize::from(windows.len) && windows.items[hint].name == l.name {
        return &mut windows.items[hint];
    }
    find_elsewhere(windows, l, limits, now)
}

/// [`find`] when the counter is not at its hint (the first decision of a configuration).
#[cold]
#[inline(never)]
fn find_elsewhere<'w>(
    windows: &'w mut Windows,
    l: &Lim,
    limits: &[Lim],
    now: i64,
) -> &'w mut Window {
    let len = usize::from(windows.len);
    let name = l.name;
    if let Some(p) = windows.items[..len].iter().position(|w| w.name == name) {
        return &mut windows.items[p];
    }
    if let Some(p) = windows.more.iter().position(|w| w.name == name) {
        return &mut windows.more[p];
    }
    let current = |w: &Window| {
        limits
            .iter()
            .any(|c| c.org() == l.org() && c.name == w.name)
    };
    let slot = if len < MAX_RATE_LIMITS {
        windows.len = u8::try_from(len + 1).unwrap_or(u8::MAX);
        &mut windows.items[len]
    } else if !l.org() {
        // At most MAX_RATE_LIMITS - 1 other current names: one slot is free of them.
        let p = windows
            .items
            .iter()
            .position(|w| !current(w))
            .unwrap_or(MAX_RATE_LIMITS - 1);
        &mut windows.items[p]
    } else if let Some(p) = windows
        .items
        .iter()
        .position(|w| !w.live(now) && !current(w))
    {
        &mut windows.items[p]
    } else if let Some(p) = windows
        .more
        .iter()
        .position(|w| !w.live(now) && !current(w))
    {
        &mut windows.more[p]
    } else if windows.more.len() < MORE_ORG_WINDOWS {
        windows.more.push(Window::fresh(name));
        let last = windows.more.len() - 1;
        &mut windows.more[last]
    } else {
        // Bounded: the count of another name (not one of this decision's) whose window ends
        // first gives way.
        let inline = windows
            .items
            .iter()
            .enumerate()
            .map(|(i, w)| (false, i, w.end, current(w)));
        let more = windows
            .more
            .iter()
            .enumerate()
            .map(|(i, w)| (true, i, w.end, current(w)));
        match inline
            .chain(more)
            .filter(|&(.., cur)| !cur)
            .min_by_key(|&(_, _, end, _)| end)
        {
            Some((true, i, ..)) => &mut windows.more[i],
            Some((false, i, ..)) => &mut windows.items[i],
            None => &mut windows.items[MAX_RATE_LIMITS - 1],
        }
    };
    *slot = Window::fresh(name);
    slot
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

    /// Compacts a key's limits for [`decide_with`](Self::decide_with). A handle stays valid
    /// for the configuration it was made for: a record with other limits needs a new one.
    pub(crate) fn handle(
        &self,
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
            key: OnceLock::new(),
            org: OnceLock::new(),
            needs: if needs_key { NEEDS_KEY } else { 0 } | if needs_org { NEEDS_ORG } else { 0 },
            len: u8::try_from(len).unwrap_or(u8::MAX),
            has_credits: credits.is_some(),
            limits,
            credits: credits.copied(),
        }
    }

    /// Decides one request (synchronously).
    pub fn decide(&self, req: &UsageRequest<'_>) -> Decision {
        let h = self.handle(req.limits, req.credits);
        let mut ends = [0; MAX_RATE_LIMITS];
        self.decide_with(
            &h,
            req.key,
            req.org.as_str(),
            req.cost,
            req.now_ms,
            Some(&mut ends),
        )
        .into_decision(&ends)
    }

    /// Decides one request of key `id` (of organization `org`) on the limits `h` compacted:
    /// the key's lock, then the organization's, held together so the decision is all or
    /// nothing. With `ends`, also writes there the end of the window each rate limit counted
    /// in.
    #[inline]
    pub(crate) fn decide_with(
        &self,
        h: &LocalHandle,
        id: KeyId,
        org: &str,
        cost: u64,
        now: i64,
        ends: Option<&mut [i64; MAX_RATE_LIMITS]>,
    ) -> Verdict {
        let key_cell = (h.needs & NEEDS_KEY != 0).then(|| h.key.get_or_init(|| self.key_cell(id)));
        let org_cell = (h.needs & NEEDS_ORG != 0).then(|| h.org.get_or_init(|| self.org_cell(org)));
        let mut key = key_cell.map(|c| lock(c));
        let mut org = org_cell.map(|c| lock(c));
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
            ends,
        )
    }

    /// Runs `f` on a key's balance.
    fn balance<R>(&self, key: KeyId, f: impl FnOnce(&mut Balance) -> R) -> R {
        lock(&self.key_cell(key)).credits.with(f)
    }
}

/// The counter of limit `i` (`l`): among the key's windows, or its organization's.
#[inline(always)]
fn counter<'a>(
    entry: &'a mut Option<&mut KeyEntry>,
    org: &'a mut Option<&mut Windows>,
    limits: &[Lim],
    i: usize,
    now: i64,
) -> Option<&'a mut Window> {
    let l = &limits[i];
    let windows = if l.org() {
        org.as_deref_mut()
    } else {
        entry.as_deref_mut().map(|e| &mut e.windows)
    };
    windows.map(|w| find(w, i, l, limits, now))
}

/// Decides under the locks of the counters it reads, in one pass: each limit is checked and
/// spent in turn, and a refusal (a later limit, or the credits) puts back what earlier limits
/// spent before any lock is released — so the decision is all or nothing, and a key's usual
/// decision (admitted) touches each counter once.
fn decide(
    mut entry: Option<&mut KeyEntry>,
    mut org_windows: Option<&mut Windows>,
    limits: &[Lim],
    credits: Option<&Credits>,
    cost: u64,
    now: i64,
    mut ends: Option<&mut [i64; MAX_RATE_LIMITS]>,
) -> Verdict {
    let mut v = Verdict {
        refused: Refused::No,
        len: u8::try_from(limits.len()).unwrap_or(u8::MAX),
        remaining: [0; MAX_RATE_LIMITS],
        ahead: 0,
        credits: None,
    };
    // The refusing limit whose window ends last, and the first refusing limit's index
    // (limits before it were spent).
    let mut refused: Option<(usize, i64)> = None;
    let mut spent_upto = limits.len();
    for (i, l) in limits.iter().enumerate() {
        let Some(w) = counter(&mut entry, &mut org_windows, limits, i, now) else {
            continue;
        };
        let end = w.roll(l.window_ms(), now);
        if now < w.start {
            // Counted in the window after `now`'s (see `Window::roll`).
            v.ahead |= 1 << i;
        }
        if let Some(e) = ends.as_deref_mut() {
            e[i] = end;
        }
        match w.used.checked_add(cost).filter(|&after| after <= l.limit) {
            Some(after) if refused.is_none() => {
                w.used = after;
                v.remaining[i] = l.limit - after;
            }
            Some(_) => v.remaining[i] = l.limit - w.used,
            None => {
                v.remaining[i] = l.limit.saturating_sub(w.used);
                if refused.is_none() {
                    spent_upto = i;
                }
                if refused.is_none_or(|(_, r)| end > r) {
                    refused = Some((i, end));
                }
            }
        }
    }
    if let Some((i, end)) = refused {
        put_back(
            &mut entry,
            &mut org_windows,
            limits,
            spent_upto,
            cost,
            &mut v,
            now,
        );
        v.refused = Refused::Rate {
            limit: i,
            retry_after: StdDuration::from_millis(
                u64::try_from(end.saturating_sub(now)).unwrap_or(0),
            ),
        };
        if let (Some(c), Some(e)) = (credits, entry.as_deref_mut()) {
            v.credits = Some(e.credits.with(|b| b.current(c, now)));
        }
        return v;
    }
    // Credits: checked and spent under the key's lock (and a shared balance's own lock).
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
            Ok(left) => v.credits = Some(left),
            Err(balance) => {
                v.credits = Some(balance);
                let n = limits.len();
                put_back(&mut entry, &mut org_windows, limits, n, cost, &mut v, now);
                v.refused = Refused::Credits;
            }
        }
    }
    v
}

/// Takes back the `cost` that limits `..upto` spent in this decision (each was found, rolled
/// and spent by it without overflow, under the same locks: a refused decision spends
/// nothing).
#[cold]
fn put_back(
    entry: &mut Option<&mut KeyEntry>,
    org_windows: &mut Option<&mut Windows>,
    limits: &[Lim],
    upto: usize,
    cost: u64,
    v: &mut Verdict,
    now: i64,
) {
    for (i, l) in limits.iter().enumerate().take(upto) {
        if let Some(w) = counter(entry, org_windows, limits, i, now) {
            w.used = w.used.saturating_sub(cost);
            v.remaining[i] = l.limit.saturating_sub(w.used);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OrgId;

    fn cells(c: &LocalCounters) -> (usize, usize) {
        c.shards.iter().fold((0, 0), |(k, o), s| {
            let s = lock(s);
            (k + s.keys.len(), o + s.orgs.len())
        })
    }

    fn org_request<'a>(org: &'a OrgId, limit: &'a [RateLimit], now_ms: i64) -> UsageRequest<'a> {
        UsageRequest {
            key: KeyId(1),
            org,
            limits: limit,
            credits: None,
            cost: 1,
            now_ms,
        }
    }

    #[test]
    fn an_organizations_counters_stay_bounded_and_reuse_windows_that_are_over() {
        let c = LocalCounters::new();
        let org = OrgId::try_new("acme").unwrap();
        let minute = |i: usize| {
            [RateLimit::new(format!("org-{i}"), 1, StdDuration::from_secs(60)).per_org()]
        };
        let more = |c: &LocalCounters| lock(&c.org_cell("acme")).more.len();
        // One name per key, many keys: each name keeps its own count...
        let names = MAX_RATE_LIMITS + MORE_ORG_WINDOWS;
        for i in 0..names {
            assert!(matches!(
                c.decide(&org_request(&org, &minute(i), 0)),
                Decision::Allowed { .. }
            ));
            assert!(matches!(
                c.decide(&org_request(&org, &minute(i), 0)),
                Decision::RateLimited { .. }
            ));
        }
        assert_eq!(more(&c), MORE_ORG_WINDOWS);
        // ...up to the bound: a further name takes the slot whose window ends first.
        assert!(matches!(
            c.decide(&org_request(&org, &minute(names), 0)),
            Decision::Allowed { .. }
        ));
        assert_eq!(more(&c), MORE_ORG_WINDOWS);
        // Once the windows are over, new names reuse their slots instead of growing.
        for i in names + 1..names + 10 {
            assert!(matches!(
                c.decide(&org_request(&org, &minute(i), 60_000)),
                Decision::Allowed { .. }
            ));
        }
        assert_eq!(more(&c), MORE_ORG_WINDOWS);
    }

    #[test]
    fn a_reading_far_before_the_counting_window_starts_over_and_never_overflows() {
        let c = LocalCounters::new();
        let org = OrgId::try_new("acme").unwrap();
        let limit = [RateLimit::new("second", 1, StdDuration::from_secs(1))];
        let req = |now_ms| UsageRequest {
            key: KeyId(2),
            ..org_request(&org, &limit, now_ms)
        };
        assert!(matches!(
            c.decide(&req(1_000_000)),
            Decision::Allowed { .. }
        ));
        // Just before the window: counted in it (refused), retry at its end.
        match c.decide(&req(999_500)) {
            Decision::RateLimited { retry_after, .. } => {
                assert_eq!(retry_after, StdDuration::from_millis(1_500));
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
        // Far before (a clock stepped back, or any value a caller passes): its own window.
        assert!(matches!(
            c.decide(&req(i64::MIN + 5)),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            c.decide(&req(i64::MIN + 5)),
            Decision::RateLimited { .. }
        ));
        assert!(matches!(c.decide(&req(i64::MAX)), Decision::Allowed { .. }));
    }

    #[test]
    fn a_handle_creates_counters_only_when_a_decision_needs_them() {
        let c = LocalCounters::new();
        let limits = [
            RateLimit::new("own", 5, StdDuration::from_secs(1)),
            RateLimit::new("shared", 5, StdDuration::from_secs(1)).per_org(),
        ];
        let h = c.handle(&limits, None);
        // Facts built for a record that is then refused (wrong secret, revoked) stop here.
        assert_eq!(cells(&c), (0, 0));
        let id = KeyId(7);
        let org = OrgId::try_new("acme").unwrap();
        assert_eq!(
            c.decide_with(&h, id, org.as_str(), 1, 0, None).refused,
            Refused::No
        );
        assert_eq!(cells(&c), (1, 1));
        // The map and the handle count in the same cells.
        let req = UsageRequest {
            key: id,
            org: &org,
            limits: &limits,
            credits: None,
            cost: 4,
            now_ms: 0,
        };
        assert!(matches!(c.decide(&req), Decision::Allowed { .. }));
        assert!(matches!(
            c.decide_with(&h, id, org.as_str(), 1, 0, None).refused,
            Refused::Rate { limit: 0, .. }
        ));
    }
}
