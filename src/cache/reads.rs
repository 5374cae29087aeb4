//! Store reads in flight, by id: a read that found an id gone (deleted, or a record this node
//! cannot trust), or an eviction of an id's entry, fences off the fills of older reads of
//! that id still in flight — and of no other id.
//!
//! Each shard has a table of the ids with a read in flight (a ticket taken and not yet used
//! or dropped), each with a count and a fence (the start of the newest read whose outcome an
//! older fill must not undo; for a read that kept nothing of a record it found, only a fill
//! of an earlier revision is undoing it). The table has a lock of its own, never the shard's: a cache hit
//! never touches it, and a cold read holds it for one probe, never across a store read or
//! together with a wait for the shard's lock. An id leaves the table with its last read, so
//! it holds at most one row per read in flight, and its memory is given back when it empties.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use hashbrown::HashTable;

use super::Cache;
use crate::KeyId;

/// One shard's reads in flight. Padded: the locks of two shards never share a line.
#[derive(Default)]
#[repr(align(128))]
pub(super) struct Reads(Mutex<HashTable<Reading>>);

struct Reading {
    id: KeyId,
    /// Tickets of this id not yet used or dropped.
    count: usize,
    /// A fill of this id from a read begun before this (ns since the cache's base) is dropped.
    fence: u64,
    /// A fill of this id from a read begun before `.0` (ns since base) that read a revision
    /// before `.1` is dropped: a newer read saw a later record it did not keep (a wrong guess
    /// into a full shard). An older read of the same record installs nothing older, so wrong
    /// guesses of a key's id never keep the key's own reads out of the cache.
    newer: (u64, u64),
}

/// A ticket taken before a store read: the shard generation and the time the read began.
/// Counted among its id's reads in flight until it is used or dropped.
pub(crate) struct FillTicket<'a> {
    pub(super) generation: u64,
    pub(super) started: Instant,
    pub(super) ttl: std::time::Duration,
    pub(super) epoch: u16,
    pub(super) cache: &'a Cache,
    pub(super) id: KeyId,
}

impl Drop for FillTicket<'_> {
    fn drop(&mut self) {
        self.cache.end_read(&self.id);
    }
}

impl Cache {
    fn reads(&self, id: &KeyId) -> std::sync::MutexGuard<'_, HashTable<Reading>> {
        self.reads[(id.value() as usize) % super::SHARDS]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a read of `id` in flight; called before the read's start is taken, so a read
    /// that [`Cache::fence_reads`] does not see began after the fence's own read.
    pub(super) fn begin_read(&self, id: &KeyId) {
        let hash = self.hash(id);
        let mut reads = self.reads(id);
        match reads.find_mut(hash, |r| r.id == *id) {
            Some(r) => r.count += 1,
            None => {
                let row = Reading {
                    id: *id,
                    count: 1,
                    fence: 0,
                    newer: (0, 0),
                };
                reads.insert_unique(hash, row, |r| self.hash(&r.id));
            }
        }
    }

    /// A read of `id` is done: called after its fill (if any) is in the table, so that a
    /// [`Cache::gone`] that no longer finds the read in flight finds its entry instead.
    fn end_read(&self, id: &KeyId) {
        let hash = self.hash(id);
        let mut reads = self.reads(id);
        if let Ok(mut r) = reads.find_entry(hash, |r| r.id == *id) {
            r.get_mut().count -= 1;
            if r.get().count == 0 {
                r.remove();
            }
        }
        if reads.is_empty() && reads.capacity() > 16 {
            // A burst of reads (a flood of unknown ids, say) does not keep its memory.
            *reads = HashTable::new();
        }
    }

    /// Drops every fill of `id` from a read in flight that began before `at` (ns since base).
    /// Only `id`'s reads: a flood of unknown ids fences off no other key's fill.
    pub(super) fn fence_reads(&self, id: &KeyId, at: u64) {
        if let Some(r) = self.reads(id).find_mut(self.hash(id), |r| r.id == *id) {
            r.fence = r.fence.max(at);
        }
    }

    /// Drops every fill of `id` from a read in flight that began before `at` and read a
    /// revision before `revision` (what a read begun at `at`, not kept, found). Combined by
    /// taking the later of each: that fences off at least what each fence alone does.
    pub(super) fn fence_older_revisions(&self, id: &KeyId, at: u64, revision: u64) {
        if let Some(r) = self.reads(id).find_mut(self.hash(id), |r| r.id == *id) {
            r.newer = (r.newer.0.max(at), r.newer.1.max(revision));
        }
    }

    /// Whether a fill of `id` at `revision` from a read begun at `started` is fenced off by a
    /// newer read.
    pub(super) fn fenced(&self, id: &KeyId, started: u64, revision: u64) -> bool {
        self.reads(id)
            .find(self.hash(id), |r| r.id == *id)
            .is_some_and(|r| started < r.fence || (started < r.newer.0 && revision < r.newer.1))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Cache, SHARDS};
    use crate::KeyId;

    /// A flood of reads of unknown ids, each found gone while a read of another key of the
    /// same shard is in flight, fences off nothing of that key and leaves no row behind; a
    /// newer read of the key itself found gone fences off the older one.
    #[test]
    fn fences_are_per_id_and_leave_nothing_behind() {
        let s = Duration::from_secs(60);
        let cache = Cache::new(s, s, s, 1024).unwrap();
        let key = KeyId(7);
        let older = cache.ticket(&key);
        let started = cache.ns(older.started);
        for n in 1..=1000u64 {
            let unknown = KeyId(7 + n * SHARDS as u64);
            cache.gone(cache.ticket(&unknown), &unknown);
        }
        assert!(
            !cache.fenced(&key, started, 0),
            "unknown ids fenced another key"
        );
        let newer = cache.ticket(&key);
        cache.gone(newer, &key);
        assert!(
            cache.fenced(&key, started, u64::MAX),
            "an older read was not fenced off"
        );
        drop(older);
        assert!(cache.reads.iter().all(|r| r.0.lock().unwrap().is_empty()));
    }
}
