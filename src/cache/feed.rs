//! The change feed's side of the cache: invalidations, and the feed's trust (its epochs,
//! connection state and proofs) that decides how long an entry is served.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Cache, FEED_DOWN, FEED_LIVE, FEED_NONE, FOREVER_MS, NO_EPOCH, pack};
use crate::store::{Change, ChangeListener};

impl Cache {
    /// A store read that began at `started` answered. While the feed is down, or when the
    /// store has none (SQLite), a change made before that read may have gone unheard although
    /// the store was reachable: an entry read before it must not be served stale later, as
    /// after a reconnect.
    pub(crate) fn store_answered(&self, started: Instant) {
        // Only stale serving reads the floor: with it off (the default), a cold read writes
        // nothing shared.
        if !self.max_stale.is_zero() && self.feed.load(Ordering::Acquire) != FEED_LIVE {
            self.stale_floor
                .fetch_max(self.ns(started), Ordering::AcqRel);
        }
    }
}

impl ChangeListener for Cache {
    fn changed(&self, change: Change) {
        self.invalidate(&change.id);
    }

    fn reset(&self) {
        self.flush();
    }

    fn connected(&self) {
        // A new epoch: entries of earlier ones (or filled while the feed was down, which may
        // have missed changes) keep only their fallback deadline. No flush is needed, but
        // none of them may be served stale any more (the contract's flush on a reconnect).
        self.stale_floor
            .fetch_max(self.ns(Instant::now()), Ordering::AcqRel);
        let mut st = self
            .trust_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.epoch = st.epoch.wrapping_add(1) % NO_EPOCH;
        if st.epoch == 0 {
            // The epochs start over (every 65 535 connections): an entry of the cycle before
            // must not be trusted again when its number comes back round.
            self.flush();
        }
        let deadline = if st.proof_mode {
            st.pending_proof.take().map_or(0, |sent| {
                sent.saturating_add(self.ms_len(self.fallback_ttl))
            })
        } else {
            FOREVER_MS
        };
        self.trust
            .store(pack(st.epoch, deadline), Ordering::Release);
        let before = self.feed.swap(FEED_LIVE, Ordering::AcqRel);
        crate::metrics::feed(true, before == FEED_DOWN);
    }

    fn disconnected(&self) {
        // Entries filled while the feed was live stay servable until the drop (or, for a
        // proving feed, its last proof) + the fallback TTL: they are as fresh as that.
        let st = self
            .trust_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.feed.store(FEED_DOWN, Ordering::Release);
        crate::metrics::feed(false, false);
        let t = self.trust.load(Ordering::Acquire);
        let cap = self
            .ms(Instant::now())
            .saturating_add(self.ms_len(self.fallback_ttl));
        self.trust
            .store(pack(st.epoch, (t & FOREVER_MS).min(cap)), Ordering::Release);
    }

    fn proven(&self, sent: Instant) {
        let mut st = self
            .trust_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.proof_mode = true;
        let sent = self.ms(sent);
        if self.feed.load(Ordering::Acquire) == FEED_LIVE {
            let t = self.trust.load(Ordering::Acquire);
            let deadline = sent.saturating_add(self.ms_len(self.fallback_ttl));
            let current = t & FOREVER_MS;
            // The first proof of a feed that was trusted "forever" bounds it from now on.
            let next = if current == FOREVER_MS {
                deadline
            } else {
                current.max(deadline)
            };
            self.trust.store(pack(st.epoch, next), Ordering::Release);
        } else {
            st.pending_proof = Some(sent);
        }
    }
}

impl Cache {
    /// The store has a change feed (its `changes` returned `true`): until the feed reports
    /// itself live it is down, and the gauge says so — a feed that never comes up must not
    /// leave `api_keys_feed_connected` unset, where no alert on it can fire. Under the trust
    /// lock, so a feed that went live meanwhile is not reported down.
    pub(crate) fn feed_subscribed(&self) {
        let _st = self
            .trust_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.feed.load(Ordering::Acquire) == FEED_NONE {
            crate::metrics::feed(false, false);
        }
    }
}
