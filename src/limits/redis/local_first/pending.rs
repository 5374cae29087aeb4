//! A lease call's answer on its way from the task that makes the call, and what becomes of
//! one whose caller went away.

use std::sync::{Arc, PoisonError};

use super::super::lease::{LEASE_DIVISOR, Leases};
use super::super::{RedisCounters, unavailable};
use super::{Ask, Marks};
use crate::limits::engine::CounterError;

/// A lease call's answer, with the marks of its asks (owed by whoever records it).
pub(super) type Reply = (Result<Vec<i64>, CounterError>, Marks);

/// The answer of a lease call running in its own task. Dropped before it was read (its
/// caller gone), it records an answer that already came; one still to come is recorded by
/// the task, which finds nobody to hand it to.
pub(super) struct PendingReply {
    pub(super) rx: Option<tokio::sync::oneshot::Receiver<Reply>>,
    pub(super) engine: RedisCounters,
    pub(super) asks: Arc<Vec<Ask>>,
}

impl PendingReply {
    /// The answer, and its marks (none when the task was dropped: its marks went with it).
    pub(super) async fn recv(&mut self) -> (Result<Vec<i64>, CounterError>, Option<Marks>) {
        let Some(rx) = self.rx.as_mut() else {
            return (Err(unavailable(None)), None);
        };
        let reply = rx.await;
        self.rx = None;
        match reply {
            Ok((reply, marks)) => (reply, Some(marks)),
            Err(_) => (Err(unavailable(None)), None),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok((reply, marks)) = rx.try_recv() {
                self.engine.record_orphan(&self.asks, &reply, marks);
            }
        }
    }
}

impl RedisCounters {
    /// Records the answer to a lease call whose caller went away, settles its marks, and
    /// wakes waiters.
    pub(super) fn record_orphan(
        &self,
        asks: &[Ask],
        reply: &Result<Vec<i64>, CounterError>,
        marks: Marks,
    ) {
        let now = self.now_ms();
        {
            let mut map = self
                .inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            record_grants(&mut map, asks, reply, now);
            // A grant sized for its caller's cost (more than a lease) has nobody to spend it
            // at once: the node keeps a lease of it, as a fetch ahead would have got, and the
            // rest goes back with the counter's next lease call (or the background task).
            if let Ok(r) = reply {
                for (i, a) in asks.iter().enumerate() {
                    let Some(e) = map.get_mut(&a.id) else {
                        continue;
                    };
                    let (grant, used) = answer_of(r, i);
                    let left = a.limit.saturating_sub(used.saturating_sub(grant));
                    let excess = grant
                        .saturating_sub(left.div_ceil(LEASE_DIVISOR))
                        .min(e.held);
                    e.held -= excess;
                    e.global = e.global.saturating_sub(excess);
                    e.returning = e.returning.saturating_add(excess);
                    e.last_batch = e.last_batch.saturating_sub(excess);
                }
            }
        }
        marks.settle();
        self.inner.leased.notify_waiters();
    }
}

/// Records a lease call's answer for `asks` (a grant and the window's count per ask) in
/// `map`. A window that ended meanwhile was forgotten: its late grant lapses with it. The
/// asks' fetches are over (their `fetching` marks are cleared, also on an error).
pub(super) fn record_grants(
    map: &mut Leases,
    asks: &[Ask],
    reply: &Result<Vec<i64>, CounterError>,
    now: u64,
) {
    for (i, a) in asks.iter().enumerate() {
        let Some(e) = map.get_mut(&a.id) else {
            continue;
        };
        e.fetching = false;
        let Ok(r) = reply else { continue };
        let (grant, used) = answer_of(r, i);
        e.record(a.limit, grant, used, now);
    }
}

/// Ask `i`'s part of a lease call's answer: the units granted to this node and the window's
/// count (0 for a missing or negative number).
fn answer_of(reply: &[i64], i: usize) -> (u64, u64) {
    let at = |j: usize| u64::try_from(reply.get(j).copied().unwrap_or(0)).unwrap_or(0);
    (at(2 * i), at(2 * i + 1))
}
