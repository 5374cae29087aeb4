//! Fencing a store write: the cache forgets the id before the write and again if the write
//! does not finish, and installs the written record when it does.

use std::sync::Arc;

use super::{Cache, FillTicket, Fingerprint};
use crate::KeyId;
use crate::key::Facts;

impl Cache {
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
}

/// See [`Cache::fence`].
pub(crate) struct Fence<'a> {
    cache: &'a Cache,
    id: KeyId,
    ticket: Option<FillTicket<'a>>,
}

impl Fence<'_> {
    /// The write went through: install the record it wrote (the manager's own change is seen
    /// by its next verify at once, and a revoked key answers a wrong secret from the cache
    /// exactly as an active one does). Dropped, like any fill, if the id was invalidated
    /// since the fence was taken — which a store whose change feed reports a write to its
    /// writer too (`MemoryStore`, PostgreSQL) always does; then the entry is simply absent
    /// and the next verification reads the record.
    ///
    /// The install also fences off every fill whose ticket was taken before it: a
    /// verification that read the store while the write was in flight (the old record: still
    /// active, say, for a revoke) must not replace the written record afterwards.
    pub(crate) fn install(mut self, facts: Arc<Facts>, fingerprint: Fingerprint) {
        if let Some(ticket) = self.ticket.take() {
            self.cache.put(ticket, facts, fingerprint, true, true);
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
