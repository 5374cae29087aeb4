//! Last use, recorded off the hot path: a verify only puts the use into a bounded buffer;
//! one batched write ([`KeyStore::touch_many`]) per flush interval takes it to the store.
//!
//! - A verify never waits on that write. Inside a tokio runtime (features `sqlite` or
//!   `postgres`) the flush runs in a spawned task; without one, the verify that finds no
//!   flush scheduled writes the buffer itself (the in-process [`MemoryStore`](crate::MemoryStore)
//!   answers at once).
//! - At most one flush is in flight: while the store is slow or blocked, uses accumulate
//!   (one per key) up to the buffer's capacity; uses beyond it are dropped (counted and
//!   logged). A failed flush is logged and its uses go back into the buffer (the later use of
//!   a key wins), for the next flush: a use is not lost to one store hiccup, so a key used
//!   once a day is not judged unused by the sweep because of it. So do the uses of a write
//!   whose future is dropped midway (a verification cancelled while it flushed).
//! - A flush picks up what was buffered while it ran: without a runtime, the verification
//!   that flushed writes again while uses remain and its writes succeed.
//! - A crash loses at most what is buffered: the uses of the last flush interval.
//!   [`KeyManager::flush_last_use`] writes the buffer now (e.g. at shutdown).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use super::*;

pub(super) struct Uses {
    pending: Mutex<HashMap<KeyId, i64>>,
    /// The uses of batches taken for a write that has not finished (each key's latest, and
    /// how many batches hold it): no longer buffered, not yet in the store, and still this
    /// node's uses to the sweep. Always locked after `pending`, while holding it.
    in_flight: Mutex<HashMap<KeyId, (i64, u32)>>,
    capacity: usize,
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    interval: StdDuration,
    /// A flush is scheduled or running (shared with a due inline flush's [`FlushDue`]).
    scheduled: Arc<AtomicBool>,
    dropped: AtomicU64,
}

impl Uses {
    pub(super) fn new(capacity: usize, interval: StdDuration) -> Self {
        Uses {
            pending: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            capacity,
            interval,
            scheduled: Arc::new(AtomicBool::new(false)),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, i64>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, (i64, u32)>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the buffer for one write (see [`Batch`]); its uses count as in flight until the
    /// batch is dropped.
    fn take(&self) -> Batch<'_> {
        let mut pending = self.lock();
        let mut in_flight = self.lock_in_flight();
        let items = std::mem::take(&mut *pending)
            .into_iter()
            .filter_map(|(id, at)| {
                let time = OffsetDateTime::from_unix_timestamp(at).ok()?;
                let entry = in_flight.entry(id).or_insert((at, 0));
                entry.0 = entry.0.max(at);
                entry.1 += 1;
                Some((id, time))
            })
            .collect();
        drop((in_flight, pending));
        Batch {
            uses: self,
            items,
            written: false,
        }
    }

    /// Ends a batch: puts the uses of a failed write back (a later use buffered meanwhile
    /// wins; beyond the capacity they are dropped and counted), and they are no longer in
    /// flight — in one step, so that [`Uses::pending`] never misses them in between.
    fn finish(&self, batch: &[(KeyId, OffsetDateTime)], written: bool) {
        let mut pending = self.lock();
        let mut in_flight = self.lock_in_flight();
        for (id, _) in batch {
            if let Some(entry) = in_flight.get_mut(id) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    in_flight.remove(id);
                }
            }
        }
        if written {
            return;
        }
        for (id, at) in batch {
            let at = at.unix_timestamp();
            if let Some(t) = pending.get_mut(id) {
                *t = (*t).max(at);
            } else if pending.len() < self.capacity {
                pending.insert(*id, at);
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The use of `id` waiting in the buffer or in a write not finished yet (Unix seconds),
    /// if any.
    fn pending(&self, id: &KeyId) -> Option<i64> {
        let pending = self.lock();
        let buffered = pending.get(id).copied();
        let in_flight = self.lock_in_flight().get(id).map(|(at, _)| *at);
        buffered.max(in_flight)
    }
}

/// The uses one write takes out of the buffer (counted as in flight until it is dropped, so
/// that a sweep meanwhile still sees them as this node's uses). Until the write is marked
/// done, dropping the batch puts its uses back (a later use buffered meanwhile wins): when the write failed, and
/// when the future writing it was dropped midway — a verification whose request was cancelled
/// while it flushed inline, a background flush dropped with its runtime. Otherwise one
/// cancelled request would lose every use buffered in the interval.
struct Batch<'a> {
    uses: &'a Uses,
    items: Vec<(KeyId, OffsetDateTime)>,
    written: bool,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.uses.finish(&self.items, self.written);
    }
}

/// A flush that is due: inline (no runtime to flush in the background) or the background
/// task's. Until it ran, no other flush is scheduled; dropped before it ran — a
/// verification's future dropped unpolled or cancelled during the write, a task dropped with
/// its runtime — it clears the mark, so the next use schedules one again instead of every
/// later use waiting for this one.
pub(crate) struct FlushDue(Arc<AtomicBool>);

impl Drop for FlushDue {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl<S: KeyStore + 'static> KeyManager<S> {
    /// Records a use of `facts`' key at `now` (Unix seconds): at most once a minute per key
    /// and process, into the buffer. Returns a due flush when the caller must flush inline
    /// (no runtime to flush in the background).
    pub(super) fn record_use(&self, facts: &Facts, now: i64) -> Option<FlushDue> {
        let last = facts.last_touch.load(Ordering::Relaxed);
        if now.saturating_sub(last) < TOUCH_INTERVAL_SECS
            || facts
                .last_touch
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let uses = &self.inner.uses;
        {
            let mut pending = uses.lock();
            if pending.len() >= uses.capacity && !pending.contains_key(&facts.id) {
                drop(pending);
                uses.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            let at = pending.entry(facts.id).or_insert(now);
            *at = (*at).max(now);
        }
        if uses.scheduled.swap(true, Ordering::SeqCst) {
            return None;
        }
        self.schedule_flush()
            .then(|| FlushDue(uses.scheduled.clone()))
    }

    /// Starts the background flush; `true` if there is no runtime to run it in.
    fn schedule_flush(&self) -> bool {
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let this = self.clone();
            // The task owns the mark from here: dropped with its runtime (a warm-up runtime,
            // a worker pool restarted), even before it first ran, it clears the mark, so the
            // next use schedules a flush again instead of every later use waiting for it.
            let due = FlushDue(self.inner.uses.scheduled.clone());
            rt.spawn(async move { this.flush_loop(due).await });
            return false;
        }
        true
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    async fn flush_loop(self, mut due: FlushDue) {
        let uses = &self.inner.uses;
        loop {
            tokio::time::sleep(uses.interval).await;
            self.write_uses().await;
            drop(due);
            // A use recorded while this flush ran saw it scheduled: pick it up.
            if uses.lock().is_empty() || uses.scheduled.swap(true, Ordering::SeqCst) {
                return;
            }
            due = FlushDue(uses.scheduled.clone());
        }
    }

    /// The flush of a verify without a runtime (see [`Uses`]): it writes again while uses
    /// recorded during its write wait (they saw it scheduled, so none of them flushes), until
    /// the buffer is empty or a write fails (what failed waits for the next use's flush).
    pub(super) async fn flush_inline(&self, mut due: FlushDue) {
        let uses = &self.inner.uses;
        loop {
            let written = self.write_uses().await;
            drop(due);
            if !written || uses.lock().is_empty() || uses.scheduled.swap(true, Ordering::SeqCst) {
                return;
            }
            due = FlushDue(uses.scheduled.clone());
        }
    }

    /// Writes the buffer in one batch; `false` if the write failed (logged, and its uses put
    /// back for the next flush).
    async fn write_uses(&self) -> bool {
        let uses = &self.inner.uses;
        let dropped = uses.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(target: "api_keys", dropped, "last-use buffer full: uses were not recorded");
        }
        let mut batch = uses.take();
        if batch.items.is_empty() {
            return true;
        }
        if let Err(e) = self.inner.store.touch_many(&batch.items).await {
            crate::metrics::store_error(&e);
            tracing::warn!(target: "api_keys", error = %e, uses = batch.items.len(), "could not record last use; kept for the next flush");
            // Dropping the batch puts its uses back.
            return false;
        }
        batch.written = true;
        true
    }

    /// Writes the buffered last uses to the store now, in one batch (e.g. at shutdown; the
    /// background flush does it every flush interval).
    ///
    /// # Errors
    /// [`Error::Store`] if the write fails; those uses stay buffered for the next flush.
    pub async fn flush_last_use(&self) -> Result<(), Error> {
        let mut batch = self.inner.uses.take();
        if batch.items.is_empty() {
            return Ok(());
        }
        // A failed (or dropped) write puts the batch back when it is dropped.
        self.inner.store.touch_many(&batch.items).await?;
        batch.written = true;
        Ok(())
    }

    /// This node's use of `id` not yet in the store (Unix seconds), if any: waiting in the
    /// buffer, or in a write still under way (a background flush the sweep's own flush did
    /// not wait for).
    pub(crate) fn buffered_use(&self, id: &KeyId) -> Option<i64> {
        self.inner.uses.pending(id)
    }

    /// Number of uses waiting in the last-use buffer.
    pub fn pending_last_uses(&self) -> usize {
        self.inner.uses.lock().len()
    }
}
