//! The manager's cache of records whose tag it already checked.
//!
//! Invariant (DESIGN.md, "Caching"): an entry is served only if
//! (a) the store read that filled it began after this manager's last invalidation of that id
//!     (every shard has a generation, bumped by every invalidation; a fill carries the
//!     generation read *before* its store read began and is dropped if it moved),
//! (b) less than its TTL has passed since that read began, on the monotonic clock, and
//! (c) the change feed stayed connected since then (a feed drop, reconnect or keyring change
//!     flushes everything and bumps every generation; while the feed is down, or when the
//!     store has none, new entries get the short fallback TTL).
//!
//! Entries hold a keyed fingerprint of the secret (a CBC-MAC under a per-process random key,
//! fixed 32-byte input), never the secret, so a hit costs one fingerprint and a constant-time
//! compare. The fingerprint of the presented secret depends only on the token, so it is
//! computed while the lookup's memory access is in flight. Entries sit inline in the map
//! (fingerprint, deadline and the shared `Facts`), so a hit costs the map's own access plus
//! the one cache line of `Facts` that the returned [`Verified`](crate::Verified) needs.
//!
//! A full shard evicts an arbitrary entry; expired entries are swept from it at most once per
//! fallback TTL, so a fill never scans a full shard on every call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{Block, fill_random};
use crate::key::Facts;
use crate::store::{Change, ChangeListener};
use crate::{Error, KeyId};

const SHARDS: usize = 64;

const FEED_NONE: u8 = 0;
const FEED_LIVE: u8 = 1;
const FEED_DOWN: u8 = 2;

/// A keyed fingerprint of a secret, as two words (compared with `subtle`, word by word).
pub(crate) type Fingerprint = [u64; 2];

struct Entry {
    fingerprint: Fingerprint,
    valid_until: Instant,
    facts: Arc<Facts>,
}

struct Shard {
    generation: u64,
    /// When expired entries were last swept out of this shard.
    swept: Instant,
    map: HashMap<KeyId, Entry, foldhash::fast::FixedState>,
}

/// A ticket taken before a store read: the shard generation and the time the read began.
pub(crate) struct FillTicket {
    generation: u64,
    started: Instant,
    ttl: Duration,
}

pub(crate) struct Cache {
    shards: Box<[RwLock<Shard>]>,
    fingerprint_key: Aes128,
    feed: AtomicU8,
    ttl: Duration,
    fallback_ttl: Duration,
    per_shard: usize,
}

impl Cache {
    pub(crate) fn new(
        ttl: Duration,
        fallback_ttl: Duration,
        capacity: usize,
    ) -> Result<Self, Error> {
        let mut key = Zeroizing::new([0u8; 16]);
        fill_random(&mut *key)?;
        let mut seed = [0u8; 8];
        fill_random(&mut seed)?;
        let seed = u64::from_le_bytes(seed);
        let now = Instant::now();
        let shards = (0..SHARDS)
            .map(|_| {
                RwLock::new(Shard {
                    generation: 0,
                    swept: now,
                    map: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(seed)),
                })
            })
            .collect();
        Ok(Cache {
            shards,
            fingerprint_key: Aes128::new(GenericArray::from_slice(&*key)),
            feed: AtomicU8::new(FEED_NONE),
            ttl,
            fallback_ttl,
            per_shard: capacity.div_ceil(SHARDS),
        })
    }

    fn enabled(&self) -> bool {
        self.per_shard > 0 && !self.fallback_ttl.is_zero()
    }

    /// Ids are uniformly random: the low bits pick the shard.
    fn shard(&self, id: &KeyId) -> &RwLock<Shard> {
        &self.shards[(id.value() as usize) % SHARDS]
    }

    /// Keyed fingerprint of a 32-byte secret: `E(k, E(k, s[..16]) ^ s[16..])`, a CBC-MAC over
    /// a fixed-length message (a PRF for that length).
    pub(crate) fn fingerprint(&self, secret: &[u8; 32]) -> Fingerprint {
        let mut b = Block::clone_from_slice(&secret[..16]);
        self.fingerprint_key.encrypt_block(&mut b);
        for (x, y) in b.iter_mut().zip(&secret[16..]) {
            *x ^= *y;
        }
        self.fingerprint_key.encrypt_block(&mut b);
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        let hi = u64::from_le_bytes(w);
        w.copy_from_slice(&b[8..]);
        let lo = u64::from_le_bytes(w);
        b.as_mut_slice().zeroize();
        w.zeroize();
        [hi, lo]
    }

    /// A cached entry for `id`, if one may still be served at `now` (a monotonic reading
    /// the caller took; the caller reuses it for the expiry check).
    #[inline]
    pub(crate) fn get(&self, id: &KeyId, now: Instant) -> Option<(Arc<Facts>, Fingerprint)> {
        let shard = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let found = match shard.map.get(id) {
            Some(e) if now < e.valid_until => Some((e.facts.clone(), e.fingerprint)),
            _ => None,
        };
        crate::metrics::cache_lookup(found.is_some());
        found
    }

    /// Takes a ticket before reading `id` from the store.
    pub(crate) fn ticket(&self, id: &KeyId) -> FillTicket {
        let started = Instant::now();
        // The generation first, under the shard lock, then the feed state: a flush orders
        // `feed.store` before its shard write, so a ticket that saw the post-flush generation
        // also sees the post-flush feed state (and a pre-flush generation is fenced off).
        let generation = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation;
        let ttl = if self.feed.load(Ordering::Acquire) == FEED_LIVE {
            self.ttl
        } else {
            self.fallback_ttl
        };
        FillTicket {
            generation,
            started,
            ttl,
        }
    }

    /// Installs what a store read returned, unless an invalidation happened since the ticket.
    pub(crate) fn fill(&self, ticket: FillTicket, facts: Arc<Facts>, fingerprint: Fingerprint) {
        if !self.enabled() {
            return;
        }
        let id = facts.id;
        let mut shard = self
            .shard(&id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.generation != ticket.generation {
            return;
        }
        // A TTL too large for the clock means "do not cache", never a panic.
        let Some(valid_until) = ticket.started.checked_add(ticket.ttl) else {
            return;
        };
        if shard.map.len() >= self.per_shard && !shard.map.contains_key(&id) {
            let now = Instant::now();
            // Sweep expired entries at most once per fallback TTL, then evict one arbitrary
            // entry (ids are random) if still full: bounded work per fill.
            if now.saturating_duration_since(shard.swept) >= self.fallback_ttl {
                shard.map.retain(|_, e| e.valid_until > now);
                shard.swept = now;
            }
            if shard.map.len() >= self.per_shard
                && let Some(victim) = shard.map.keys().next().copied()
            {
                shard.map.remove(&victim);
                crate::metrics::cache_evicted(1);
            }
        }
        shard.map.insert(
            id,
            Entry {
                fingerprint,
                valid_until,
                facts,
            },
        );
    }

    /// [`Cache::fill`], but only if the shard has room: never evicts another entry.
    pub(crate) fn fill_if_room(
        &self,
        ticket: FillTicket,
        facts: Arc<Facts>,
        fingerprint: Fingerprint,
    ) {
        let full = self
            .shard(&facts.id)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
            >= self.per_shard;
        if !full {
            self.fill(ticket, facts, fingerprint);
        }
    }

    /// Forgets `id` and fences off every fill that began before now.
    pub(crate) fn invalidate(&self, id: &KeyId) {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        shard.generation = shard.generation.wrapping_add(1);
        shard.map.remove(id);
    }

    /// Fences `id` now and again when the returned guard drops: wrap a store write in it, so
    /// the cache is fenced after the write even if the caller's future is dropped mid-write.
    /// After a successful write, [`Fence::install`] puts the written record in the cache
    /// instead.
    pub(crate) fn fence(&self, id: KeyId) -> Fence<'_> {
        self.invalidate(&id);
        // Taken after the invalidation: any change seen (feed event, flush) while the write is
        // in flight moves the generation, and the install is dropped.
        let ticket = self.ticket(&id);
        Fence {
            cache: self,
            id,
            ticket: Some(ticket),
        }
    }

    /// Forgets everything and fences off every fill in flight.
    pub(crate) fn flush(&self) {
        for s in self.shards.iter() {
            let mut shard = s.write().unwrap_or_else(PoisonError::into_inner);
            shard.generation = shard.generation.wrapping_add(1);
            shard.map.clear();
        }
    }

    /// Number of entries (for tests and metrics).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}

/// See [`Cache::fence`].
pub(crate) struct Fence<'a> {
    cache: &'a Cache,
    id: KeyId,
    ticket: Option<FillTicket>,
}

impl Fence<'_> {
    /// The write went through: install the record it wrote (the manager's own change is seen
    /// by its next verify at once, and a revoked key answers a wrong secret from the cache
    /// exactly as an active one does). Dropped, like any fill, if the id was invalidated
    /// since the fence was taken; then the entry is simply absent.
    pub(crate) fn install(mut self, facts: Arc<Facts>, fingerprint: Fingerprint) {
        if let Some(ticket) = self.ticket.take() {
            self.cache.fill(ticket, facts, fingerprint);
        }
    }
}

impl Drop for Fence<'_> {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            self.cache.invalidate(&self.id);
        }
    }
}

impl ChangeListener for Cache {
    fn changed(&self, change: Change) {
        self.invalidate(&change.id);
    }

    fn connected(&self) {
        // Entries filled while the feed was down may have missed changes; fills in flight
        // (whichever TTL they chose) are fenced off by the flush.
        let before = self.feed.swap(FEED_LIVE, Ordering::AcqRel);
        crate::metrics::feed(true, before == FEED_DOWN);
        self.flush();
    }

    fn disconnected(&self) {
        self.feed.store(FEED_DOWN, Ordering::Release);
        crate::metrics::feed(false, false);
        self.flush();
    }
}
