//! The manager's cache of records whose tag it already checked.
//!
//! Invariant (DESIGN.md, "Caching"): an entry is served only if
//! (a) the store read that filled it began after this manager's last invalidation of that id
//!     (every shard has a generation, bumped by every invalidation; a fill carries the
//!     generation read *before* its store read began and is dropped if it moved; a record
//!     this manager wrote is installed by moving the generation too, so a read that began
//!     while the write was in flight cannot replace it),
//! (b) less than its TTL has passed since that read began, on the monotonic clock, and
//! (c) beyond the short fallback TTL after that read began, the change feed is *proven* live:
//!     an entry filled while the feed was connected (feed epoch `e`) is served past its
//!     fallback deadline only while epoch `e` is still the feed's current connection and its
//!     trust deadline has not passed. A feed that cannot hang silently (in process) is trusted
//!     until it reports a drop, and then until the drop + the fallback TTL; a feed that
//!     proves itself ([`ChangeListener::proven`], a round trip through the server) is trusted
//!     until its last proof was *sent* + the fallback TTL. So a feed drop or a hung feed never
//!     serves an entry later than the drop (or last proof) + the fallback TTL, and warm keys
//!     keep verifying until then instead of being flushed at once. A reconnect starts a new
//!     epoch: entries of the old one keep only their fallback deadline (epochs are numbered
//!     modulo 65 535; when they start over, the cache is flushed). A keyring change
//!     flushes everything and bumps every generation. While the feed is down, or when the
//!     store has none, new entries get the short fallback TTL only.
//!
//! Optionally (off by default) an entry may also be served while the *store* is unreachable,
//! up to a maximum staleness after its read began ([`Cache::get_stale`]); an invalidated
//! entry is gone and a revoked one still says revoked, so this never un-revokes a key. Only
//! an entry read since the feed last connected qualifies: the contract flushes the cache on a
//! reconnect, and an older entry may predate a change whose notification was lost while the
//! feed was down — the store was reachable then, so that change was not made "during the
//! outage" and must not go unnoticed (a revoked entry still answers "revoked"). For the same
//! reason, while the feed is down, a store read that answered makes every entry read before
//! it ineligible: the store was reachable then too.
//!
//! Entries hold a keyed fingerprint of the secret (a CBC-MAC under a per-process random key
//! over the secret's fixed 44-character text), never the secret, so a hit costs one
//! fingerprint and a constant-time compare, and a hit never decodes the presented secret.
//! Entries sit inline in the table, one cache line each (id, fingerprint, deadlines in ns
//! since the cache's creation, feed epoch and the shared `Facts`), so a hit costs the
//! table's control bytes, that one line, and the line of `Facts` that the returned
//! [`Verified`](crate::Verified) needs.
//!
//! A full shard evicts an arbitrary entry; expired entries are swept from it at most once per
//! fallback TTL, so a fill never scans a full shard on every call.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{Block, fill_random};
use crate::key::Facts;
use crate::token::{SECRET_CHARS, SECRET_LEN, secret_text_into};
use crate::{Error, KeyId};
use hashbrown::HashTable;
use std::hash::BuildHasher;

mod feed;
mod fence;
mod reads;

pub(crate) use reads::FillTicket;

const SHARDS: usize = 64;

const FEED_NONE: u8 = 0;
const FEED_LIVE: u8 = 1;
const FEED_DOWN: u8 = 2;

/// A keyed fingerprint of a secret, as two words (compared with `subtle`, word by word).
pub(crate) type Fingerprint = [u64; 2];

/// The epoch of an entry filled while the feed was not live: never trusted past its fallback
/// deadline.
const NO_EPOCH: u16 = u16::MAX;
/// A trust deadline meaning "until the feed reports a drop".
const FOREVER_MS: u64 = (1 << 48) - 1;

#[repr(C, align(64))]
struct Entry {
    id: KeyId,
    fingerprint: Fingerprint,
    /// When the store read that filled it began (ns since the cache's `base`).
    started: u64,
    /// Served until then whatever the feed does (read start + fallback TTL).
    fresh_until: u64,
    /// Never served after this (read start + the TTL chosen by the ticket).
    valid_until: u64,
    facts: Arc<Facts>,
    /// The feed epoch the ticket saw live, or [`NO_EPOCH`].
    epoch: u16,
}

// One cache line an entry (the table's allocation is aligned to it).
const _: () = assert!(std::mem::size_of::<Entry>() == 64);

/// A shard's lock and table header on lines of their own: a verification's read lock writes
/// the lock's reader count, which must not invalidate the line of a neighbouring shard that
/// other threads are reading (two 72-byte shards shared a line). 128 bytes: x86's adjacent-line
/// prefetcher pairs lines.
#[repr(align(128))]
struct Padded(RwLock<Shard>);

const _: () = assert!(std::mem::size_of::<Padded>() == 128);

struct Shard {
    generation: u64,
    /// When expired entries were last swept out of this shard.
    swept: Instant,
    /// Entries by id, hashed with the cache's seeded hasher.
    map: HashTable<Entry>,
}

/// The feed's trust, changed under [`Cache::trust_lock`], read lock-free from `trust`.
struct TrustState {
    epoch: u16,
    /// `proven` was ever called: the feed proves itself, trust is bounded by proofs.
    proof_mode: bool,
    /// The last proof's send time, in ms since `base`, received before `connected`.
    pending_proof: Option<u64>,
}

pub(crate) struct Cache {
    shards: Box<[Padded]>,
    /// Each shard's store reads in flight, by id ([`reads`]).
    reads: Box<[reads::Reads]>,
    hasher: foldhash::fast::FixedState,
    fingerprint_key: Aes128,
    feed: AtomicU8,
    /// `(epoch << 48) | trust deadline in ms since base` of the live feed.
    trust: AtomicU64,
    trust_lock: Mutex<TrustState>,
    base: Instant,
    ttl: Duration,
    fallback_ttl: Duration,
    /// Maximum staleness while the store is unreachable (zero: off).
    max_stale: Duration,
    /// When the feed last connected, or (while it is down, or when the store has none) when
    /// the latest store read that answered began (ns since `base`): an entry whose read began
    /// before it may have missed a change made while the store was reachable, and is never
    /// served stale.
    stale_floor: AtomicU64,
    per_shard: usize,
}

fn pack(epoch: u16, deadline_ms: u64) -> u64 {
    (u64::from(epoch) << 48) | deadline_ms.min(FOREVER_MS)
}

impl Cache {
    pub(crate) fn new(
        ttl: Duration,
        fallback_ttl: Duration,
        max_stale: Duration,
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
                Padded(RwLock::new(Shard {
                    generation: 0,
                    swept: now,
                    map: HashTable::new(),
                }))
            })
            .collect();
        Ok(Cache {
            shards,
            reads: (0..SHARDS).map(|_| reads::Reads::default()).collect(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
            fingerprint_key: Aes128::new(GenericArray::from_slice(&*key)),
            feed: AtomicU8::new(FEED_NONE),
            trust: AtomicU64::new(pack(0, 0)),
            trust_lock: Mutex::new(TrustState {
                epoch: 0,
                proof_mode: false,
                pending_proof: None,
            }),
            base: now,
            ttl,
            fallback_ttl,
            max_stale,
            stale_floor: AtomicU64::new(0),
            per_shard: capacity.div_ceil(SHARDS),
        })
    }

    fn enabled(&self) -> bool {
        self.per_shard > 0 && !self.fallback_ttl.is_zero()
    }

    /// Ids are uniformly random: the low bits pick the shard.
    fn shard(&self, id: &KeyId) -> &RwLock<Shard> {
        &self.shards[(id.value() as usize) % SHARDS].0
    }

    /// An id's hash in its shard's table.
    #[inline]
    fn hash(&self, id: &KeyId) -> u64 {
        self.hasher.hash_one(id.value())
    }

    /// Whole ns since `base` (saturating; a `u64` of ns lasts 584 years).
    #[inline]
    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether two fingerprints are equal, in constant time (one `subtle` decision on
    /// their accumulated difference, see [`crate::crypto::ct_eq_bytes`]).
    #[inline]
    pub(crate) fn same_fingerprint(a: &Fingerprint, b: &Fingerprint) -> subtle::Choice {
        !crate::crypto::differs((a[0] ^ b[0]) | (a[1] ^ b[1]))
    }

    /// Keyed fingerprint of a secret, taken over the 44 characters a token spells it with:
    /// `E(k, E(k, E(k, t[..16]) ^ t[16..32]) ^ (t[32..] ‖ 0000))`, a CBC-MAC over a message of
    /// one fixed length (a PRF for that length). Canonical texts and secrets correspond one to
    /// one ([`UntrustedToken::secret_text`](crate::UntrustedToken)), so a warm verification
    /// compares fingerprints without decoding the presented secret.
    pub(crate) fn fingerprint(&self, text: &[u8; SECRET_CHARS]) -> Fingerprint {
        let mut b = Block::clone_from_slice(&text[..16]);
        self.fingerprint_key.encrypt_block(&mut b);
        for (x, y) in b.iter_mut().zip(&text[16..32]) {
            *x ^= *y;
        }
        self.fingerprint_key.encrypt_block(&mut b);
        for (x, y) in b.iter_mut().zip(&text[32..]) {
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

    /// [`Cache::fingerprint`] of a secret's bytes (a new or rewritten key's, or the stored one
    /// a cold verification decrypted): spelled as a token spells it first.
    pub(crate) fn fingerprint_of(&self, secret: &[u8; SECRET_LEN]) -> Fingerprint {
        let mut text = Zeroizing::new([0u8; SECRET_CHARS]);
        secret_text_into(secret, &mut text);
        self.fingerprint(&text)
    }

    /// A cached entry for `id`, if one may still be served at `now` (a monotonic reading
    /// the caller took; the caller reuses it for the expiry check).
    #[inline]
    pub(crate) fn get(&self, id: &KeyId, now: Instant) -> Option<(Arc<Facts>, Fingerprint)> {
        let hash = self.hash(id);
        let now = self.ns(now);
        let shard = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let found = match shard.map.find(hash, |e| e.id == *id) {
            Some(e)
                if now < e.fresh_until || (now < e.valid_until && self.trusted(e.epoch, now)) =>
            {
                Some((e.facts.clone(), e.fingerprint))
            }
            _ => None,
        };
        crate::metrics::cache_lookup(found.is_some());
        found
    }

    /// Whether the feed of `epoch` is trusted at `now` (ns since `base`).
    #[inline]
    fn trusted(&self, epoch: u16, now: u64) -> bool {
        let t = self.trust.load(Ordering::Acquire);
        epoch != NO_EPOCH && (t >> 48) as u16 == epoch && now / 1_000_000 < (t & FOREVER_MS)
    }

    /// Whole ms since `base` (rounded down).
    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(FOREVER_MS)
    }

    /// A cached entry for `id` that the store can no longer confirm, served because the store
    /// is unreachable: only if a maximum staleness is configured and the entry's read began
    /// less than that long ago. Invalidated entries are gone; a revoked one stays revoked.
    pub(crate) fn get_stale(&self, id: &KeyId, now: Instant) -> Option<(Arc<Facts>, Fingerprint)> {
        if self.max_stale.is_zero() {
            return None;
        }
        let hash = self.hash(id);
        let now = self.ns(now);
        let shard = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let e = shard.map.find(hash, |e| e.id == *id)?;
        // Read before the feed's last (re)connection: a change since may have gone unheard,
        // so only a revoked entry (a refusal) may still answer.
        if e.started < self.stale_floor.load(Ordering::Acquire) && !e.facts.revoked {
            return None;
        }
        let until = e.started.checked_add(self.ns_len(self.max_stale)?)?;
        (now < until).then(|| (e.facts.clone(), e.fingerprint))
    }

    /// A duration in whole ns, if it fits.
    fn ns_len(&self, d: Duration) -> Option<u64> {
        u64::try_from(d.as_nanos()).ok()
    }

    /// Until when an entry is kept (swept after), in ns since `base`.
    fn keep_until(&self, e: &Entry) -> u64 {
        // A maximum staleness too large for the clock serves nothing stale (`get_stale`), so
        // it keeps nothing longer either.
        let stale = self
            .ns_len(self.max_stale)
            .and_then(|d| e.started.checked_add(d))
            .unwrap_or(e.valid_until);
        e.valid_until.max(stale)
    }

    /// Takes a ticket before reading `id` from the store.
    pub(crate) fn ticket(&self, id: &KeyId) -> FillTicket<'_> {
        self.begin_read(id);
        let started = Instant::now();
        // The generation first, under the shard lock, then the feed state: a flush orders
        // `feed.store` before its shard write, so a ticket that saw the post-flush generation
        // also sees the post-flush feed state (and a pre-flush generation is fenced off).
        let generation = self
            .shard(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation;
        // The epoch is read after the feed state: `connected` publishes the new epoch before
        // it stores LIVE, so a ticket that sees LIVE sees that epoch (or a later one, which
        // only makes the entry trusted less).
        let (ttl, epoch) = if self.feed.load(Ordering::Acquire) == FEED_LIVE {
            let t = self.trust.load(Ordering::Acquire);
            (self.ttl, (t >> 48) as u16)
        } else {
            (self.fallback_ttl, NO_EPOCH)
        };
        FillTicket {
            generation,
            started,
            ttl,
            epoch,
            cache: self,
            id: *id,
        }
    }

    /// Installs what a store read returned, unless an invalidation happened since the ticket.
    pub(crate) fn fill(&self, ticket: FillTicket<'_>, facts: Arc<Facts>, fingerprint: Fingerprint) {
        self.store_answered(ticket.started);
        self.put(ticket, facts, fingerprint, false, true);
    }

    /// [`Cache::fill`]; with `supersede`, the fill also fences off every ticket taken before
    /// it (the record a manager just wrote must not be replaced by a store read that began
    /// before the write committed). Without `evict`, a full shard takes no new entry.
    fn put(
        &self,
        ticket: FillTicket<'_>,
        facts: Arc<Facts>,
        fingerprint: Fingerprint,
        supersede: bool,
        evict: bool,
    ) {
        if !self.enabled() {
            return;
        }
        let id = facts.id;
        let mut shard = self
            .shard(&id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let current = shard.generation == ticket.generation;
        if supersede {
            shard.generation = shard.generation.wrapping_add(1);
        }
        if !current {
            if supersede {
                // Changed again since the write began: what a fill after that change put
                // here may predate this write.
                self.forget_in(&mut shard, &id);
            } else {
                // Fenced off, but still newer than an entry read before it: that entry must
                // not outlive a read that may have found the key changed (revoked, say) —
                // it could otherwise be served stale later (a revoked one stays as such).
                self.forget_older_in(&mut shard, &id, self.ns(ticket.started));
            }
            return;
        }
        let started = self.ns(ticket.started);
        // A newer read of the id found it gone, or its entry was evicted: not undone.
        if self.fenced(&id, started, facts.revision) {
            if supersede {
                self.forget_in(&mut shard, &id);
            }
            return;
        }
        // A TTL too large for the clock means "do not cache", never a panic; a write's
        // record then still removes what a fill during the write put here.
        let (Some(valid_until), Some(fresh_until)) = (
            self.ns_len(ticket.ttl).and_then(|d| started.checked_add(d)),
            self.ns_len(self.fallback_ttl)
                .and_then(|d| started.checked_add(d)),
        ) else {
            if supersede {
                self.forget_in(&mut shard, &id);
            }
            return;
        };
        let hash = self.hash(&id);
        let revision = facts.revision;
        let entry = Entry {
            id,
            fingerprint,
            started,
            fresh_until,
            valid_until,
            facts,
            epoch: ticket.epoch,
        };
        let rehash = |e: &Entry| self.hash(&e.id);
        if let Some(e) = shard.map.find_mut(hash, |e| e.id == id) {
            // A read that began before the one that filled the entry (two cold reads racing
            // a change this node has not heard of yet) never replaces it: the newer one may
            // have seen the key revoked. A manager's own write replaces what a read during
            // the write found (the record before it), but not a later revision: another
            // node's change after the write, which a read since has seen (revoked, say).
            let newer = if supersede {
                e.facts.revision <= revision
            } else {
                e.started <= started
            };
            if newer {
                *e = entry;
            }
            return;
        }
        if !evict && shard.map.len() >= self.per_shard {
            // Not kept (a wrong guess into a full shard), but still what this read saw: an
            // older read of the id still in flight must not install an earlier record over
            // it (this one may have found the key revoked). Only an earlier record: one that
            // read this same record is not held back (else a flood of wrong guesses of a
            // key's id would keep every legitimate read of the key out of the cache).
            self.fence_older_revisions(&id, started, revision);
            return;
        }
        if shard.map.len() >= self.per_shard {
            let now = Instant::now();
            // Sweep expired entries at most once per fallback TTL, then evict one arbitrary
            // entry (ids are random) if still full: bounded work per fill.
            if now.saturating_duration_since(shard.swept) >= self.fallback_ttl {
                let now_ns = self.ns(now);
                shard.map.retain(|e| self.keep_until(e) > now_ns);
                shard.swept = now;
            }
            if shard.map.len() >= self.per_shard
                && let Some(victim) = shard.map.iter().next().map(|e| e.id)
                && let Ok(found) = shard.map.find_entry(self.hash(&victim), |e| e.id == victim)
            {
                let at = found.get().started;
                found.remove();
                crate::metrics::cache_evicted(1);
                // An older read of the victim still in flight must not put back what a newer
                // read replaced (revoked, say): the table no longer holds the newer entry.
                self.fence_reads(&victim, at);
            }
        }
        shard.map.insert_unique(hash, entry, rehash);
    }

    /// A store read (begun at `ticket`) found no record for `id` that this node can use (the
    /// key is gone, or its record fails its integrity check), so an entry read before that
    /// is forgotten like an invalidated one (a revoked one still answers "revoked" to stale
    /// serving only), and a fill still in flight from an older read of `id` is fenced off —
    /// otherwise it could be served stale later, although this node saw the key deleted or
    /// tampered. The fence is `id`'s alone, set in the shard's table of reads in flight
    /// ([`reads`]), and the shard's write lock is taken (and its generation moved) only when
    /// an older entry exists: a flood of unknown ids neither fences off other keys' fills nor
    /// holds up the verifications reading their shard.
    pub(crate) fn gone(&self, ticket: FillTicket<'_>, id: &KeyId) {
        self.store_answered(ticket.started);
        let started = self.ns(ticket.started);
        // Before the probe: an older read that fills after it is fenced off; one that filled
        // before it (it leaves the reads in flight only after its fill) is found below.
        self.fence_reads(id, started);
        let lock = self.shard(id);
        let read = lock.read().unwrap_or_else(PoisonError::into_inner);
        if !self.older_in(&read, id, started) {
            return;
        }
        drop(read);
        let mut shard = lock.write().unwrap_or_else(PoisonError::into_inner);
        if self.forget_older_in(&mut shard, id, started) {
            shard.generation = shard.generation.wrapping_add(1);
        }
    }

    /// Whether `shard` holds an entry for `id` read before `started` (ns since `base`).
    fn older_in(&self, shard: &Shard, id: &KeyId, started: u64) -> bool {
        shard
            .map
            .find(self.hash(id), |e| e.id == *id)
            .is_some_and(|e| e.started < started)
    }

    /// [`Cache::forget_in`] for an entry read before `started` only; whether there was one.
    fn forget_older_in(&self, shard: &mut Shard, id: &KeyId, started: u64) -> bool {
        let older = self.older_in(shard, id, started);
        if older {
            self.forget_in(shard, id);
        }
        older
    }

    /// [`Cache::fill`], but only if the shard has room: never evicts another entry.
    pub(crate) fn fill_if_room(
        &self,
        ticket: FillTicket<'_>,
        facts: Arc<Facts>,
        fingerprint: Fingerprint,
    ) {
        self.store_answered(ticket.started);
        self.put(ticket, facts, fingerprint, false, false);
    }

    /// Forgets `id` and fences off every fill that began before now. An entry that says
    /// revoked is kept for [`Cache::get_stale`] only (when stale serving is on): this node
    /// still knows the key was revoked, while normal lookups read the store again.
    pub(crate) fn invalidate(&self, id: &KeyId) {
        let mut shard = self
            .shard(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        shard.generation = shard.generation.wrapping_add(1);
        self.forget_in(&mut shard, id);
    }

    /// Removes `id`'s entry from `shard` (a revoked one stays for stale serving only).
    fn forget_in(&self, shard: &mut Shard, id: &KeyId) {
        let hash = self.hash(id);
        let keep_revoked = !self.max_stale.is_zero();
        if let Ok(found) = shard.map.find_entry(hash, |e| e.id == *id) {
            if keep_revoked && found.get().facts.revoked {
                let e = found.into_mut();
                e.fresh_until = e.started;
                e.valid_until = e.started;
                e.epoch = NO_EPOCH;
            } else {
                found.remove();
            }
        }
    }

    /// Forgets everything and fences off every fill in flight.
    pub(crate) fn flush(&self) {
        for s in self.shards.iter() {
            let mut shard = s.0.write().unwrap_or_else(PoisonError::into_inner);
            shard.generation = shard.generation.wrapping_add(1);
            shard.map.clear();
        }
    }

    /// A duration in whole ms (rounded down, so trust never outlasts it).
    fn ms_len(&self, d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(FOREVER_MS)
    }

    /// Number of entries (for tests and metrics).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}
