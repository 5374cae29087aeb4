//! [`LocalCounters`]: the in-process counter engine (the default).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use foldhash::fast::FixedState;

use super::engine::{Consumed, CounterError, Decision, UsageCounters, UsageRequest, Verdict};
use crate::store::BoxFuture;

mod decide;
use crate::{Credits, KeyId, LimitScope, MAX_RATE_LIMITS, RateLimit};
use decide::{Balance, CreditCell, KeyEntry, Lim, Windows, decide, decide_any};

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
    /// The common case: one limit of the key's own and no credits.
    one: bool,
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
            one: false,
            limits: [Lim::default(); MAX_RATE_LIMITS],
            credits: None,
        }
    }
}

// The cells and the first limit in the handle's first cache line.
const _: () = assert!(std::mem::offset_of!(LocalHandle, limits) + std::mem::size_of::<Lim>() <= 64);

/// [`LocalHandle::needs`]: the key's own cell (a key-scope limit or credits).
const NEEDS_KEY: u8 = 1;
/// [`LocalHandle::needs`]: the organization's cell (an org-wide limit).
const NEEDS_ORG: u8 = 2;

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
        let mut nth = [0; 2];
        for (lim, l) in limits.iter_mut().zip(rate_limits) {
            let org = l.scope() == LimitScope::Org;
            // A count is a name *and* a window length (as Redis's keys are): two keys of an
            // organization naming one org-wide limit with different windows keep two counts
            // instead of resetting each other's.
            let name = self.hasher.hash_one((l.name(), l.window_ms()));
            *lim = Lim::new(name, l.limit(), l.window_ms(), org, nth[usize::from(org)]);
            nth[usize::from(org)] += 1;
        }
        let len = rate_limits.len().min(MAX_RATE_LIMITS);
        let needs_key = limits[..len].iter().any(|l| !l.org()) || credits.is_some();
        let needs_org = limits[..len].iter().any(|l| l.org());
        let one = len == 1 && !limits[0].org() && credits.is_none();
        LocalHandle {
            key: OnceLock::new(),
            org: OnceLock::new(),
            one,
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
        if h.one && ends.is_none() {
            // The common case (one limit of the key's own, no credits), with the constants
            // that let `decide` shrink to its few instructions for it.
            let mut key = lock(h.key.get_or_init(|| self.key_cell(id)));
            return decide::<true>(Some(&mut key), None, &h.limits[..1], None, cost, now, None);
        }
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
        decide_any(
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

impl UsageCounters for LocalCounters {
    fn consume<'a>(&'a self, req: UsageRequest<'a>) -> Consumed<'a> {
        Consumed::Ready(Ok(self.decide(&req)))
    }

    fn set_credits<'a>(
        &'a self,
        key: KeyId,
        _credits: &'a Credits,
        balance: u64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), CounterError>> {
        self.balance(key, |b| *b = Balance::at(balance, now_ms));
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
mod tests;
