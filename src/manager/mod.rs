//! [`KeyManager`]: generation, verification and the management operations.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration as StdDuration, Instant};

use time::{Duration, OffsetDateTime};

use crate::audit::{AuditAction, AuditEvent, AuditSink, FailureClass, TracingAudit};
use crate::cache::Cache;
use crate::crypto::fill_random;
use crate::key::Facts;
use crate::limits::{Consumed, LocalCounters, UsageCounters, UsageRequest, check_limits};
use crate::policy::{check_meta, check_name, check_owner, check_scopes, check_written_id};
use crate::record::{Draft, whole_seconds};
use crate::store::ChangeListener;
use crate::token::{DEFAULT_PREFIX, SECRET_LEN, UntrustedToken, format_token, valid_prefix};
use crate::{
    Actor, ApiKey, Clock, Error, GenerateRequest, KeyId, KeyInfo, KeyRecord, KeyStatus, KeyStore,
    Keyring, Notifier, OrgId, Policy, RevocationReason, Scope, StoreError, SystemClock, Verified,
};
use zeroize::Zeroizing;

/// How many times a management operation re-reads and retries after losing a CAS race.
pub(crate) const CAS_RETRIES: usize = 5;
/// Last use is written at most this often per key and process.
const TOUCH_INTERVAL_SECS: i64 = 60;
/// Page size of `rewrap` and `expiring_all`.
pub(crate) const SCAN_PAGE: usize = 256;

/// Builds a [`KeyManager`]; see [`KeyManager::builder`].
pub struct KeyManagerBuilder<S> {
    store: S,
    keyring: Keyring,
    prefix: String,
    clock: Arc<dyn Clock>,
    policy: Policy,
    audit: Arc<dyn AuditSink>,
    cache_ttl: StdDuration,
    fallback_ttl: StdDuration,
    max_stale: StdDuration,
    cache_capacity: usize,
    notifier: Option<Arc<dyn Notifier>>,
    last_use_interval: StdDuration,
    last_use_capacity: usize,
    counters: Arc<dyn UsageCounters>,
    /// `counters` when it is the in-process engine (the warm path's shortcut).
    local: Option<Arc<LocalCounters>>,
}

impl<S: KeyStore + 'static> KeyManagerBuilder<S> {
    /// Where the counters of usage limits live (default: a fresh [`LocalCounters`], counting
    /// in this process only). Give every manager of a deployment the same shared engine
    /// (e.g. the `redis` feature's) to enforce limits across nodes.
    ///
    /// With [`LocalCounters`] given here (or the default), each cached record keeps a handle
    /// to its key's counters, so a warm verification of a limited key goes straight to them.
    pub fn counters<C: UsageCounters>(mut self, counters: C) -> Self {
        let mut slot = Some(counters);
        let local = (&mut slot as &mut dyn std::any::Any)
            .downcast_mut::<Option<LocalCounters>>()
            .and_then(Option::take);
        match (local, slot) {
            (Some(local), _) => {
                let local = Arc::new(local);
                self.local = Some(local.clone());
                self.counters = local;
            }
            (None, Some(other)) => {
                self.local = None;
                self.counters = Arc::new(other);
            }
            // `take` emptied the slot only when it was a `LocalCounters`.
            (None, None) => {}
        }
        self
    }

    /// As [`KeyManagerBuilder::counters`], for an engine already shared (e.g. by several
    /// managers of one process).
    pub fn shared_counters(mut self, counters: Arc<dyn UsageCounters>) -> Self {
        self.local = None;
        self.counters = counters;
        self
    }

    /// Where the automations' events go besides the audit sink (expiry warnings, expiries,
    /// unused-key warnings and revocations, purges, leaks, departed users): e-mail, chat,
    /// webhooks. None by default.
    pub fn notifier(mut self, notifier: impl Notifier) -> Self {
        self.notifier = Some(Arc::new(notifier));
        self
    }

    /// The token prefix, `[a-z][a-z0-9]{1,15}` (default `sak`). A manager rejects tokens of
    /// any other prefix as [`Error::Malformed`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The clock deciding creation and expiry (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The policy (default [`Policy::default`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The audit sink (default [`TracingAudit`]).
    pub fn audit(mut self, sink: impl AuditSink) -> Self {
        self.audit = Arc::new(sink);
        self
    }

    /// How long a verified record may be served from the cache while the store's change feed
    /// is connected (default 30 s).
    pub fn cache_ttl(mut self, ttl: StdDuration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long a verified record may be served from the cache when the store has no change
    /// feed or it is disconnected (default 1 s). This bounds how long a revocation made by
    /// *another* process can go unnoticed. Zero disables the cache.
    pub fn cache_fallback_ttl(mut self, ttl: StdDuration) -> Self {
        self.fallback_ttl = ttl;
        self
    }

    /// Off by default. While the store is *unreachable* (a verify's store read fails with
    /// [`Error::Store`]), keep accepting a key this node verified from the store less than
    /// `max` ago (and since the store's change feed last connected, if it has one: an older
    /// entry may predate a change whose notification was lost; and, while the feed is down or
    /// for a store without one, since the latest store read — a verification's, a `get` or
    /// `list` — that answered), instead of failing. Each such use is audited as
    /// [`AuditAction::ServedStale`](crate::AuditAction::ServedStale). It never applies to a
    /// key this node knows was revoked or deleted (its cache entry says revoked, or is gone),
    /// nor to a tampered record; but a revocation made on *another* node during the outage
    /// goes unnoticed for up to `max`. Zero (the default) turns it off. It is meant for a
    /// store with a change feed (PostgreSQL): over one without, little qualifies.
    pub fn serve_stale_while_store_unreachable(mut self, max: StdDuration) -> Self {
        self.max_stale = max;
        self
    }

    /// How often buffered last uses are written to the store, in one batch (default 10 s).
    /// A verify never waits on that write; a crash loses at most the uses of one interval
    /// (each key's use is recorded at most once a minute anyway).
    pub fn last_use_flush_interval(mut self, interval: StdDuration) -> Self {
        self.last_use_interval = interval;
        self
    }

    /// Most keys whose last use waits in the buffer (default 10 000); uses beyond it, while
    /// the store is slow, are dropped and logged.
    pub fn last_use_buffer(mut self, capacity: usize) -> Self {
        self.last_use_capacity = capacity;
        self
    }

    /// Most records kept in the cache (default 100 000), rounded up to a multiple of its 64
    /// shards: each shard keeps at most `n / 64` records, rounded up, so `cache_capacity(1)`
    /// keeps up to 64. Zero disables the cache.
    pub fn cache_capacity(mut self, n: usize) -> Self {
        self.cache_capacity = n;
        self
    }

    /// Checks the configuration and builds the manager.
    ///
    /// # Errors
    /// [`Error::Policy`] for an invalid prefix, policy or keyring; [`Error::Random`] if the
    /// OS generator fails.
    pub fn build(self) -> Result<KeyManager<S>, Error> {
        if !valid_prefix(&self.prefix) {
            return Err(Error::Policy(
                "a token prefix must match [a-z][a-z0-9]{1,15}".into(),
            ));
        }
        self.policy.validate()?;
        self.keyring.validate()?;
        let cache = Arc::new(Cache::new(
            self.cache_ttl.max(self.fallback_ttl),
            self.fallback_ttl,
            self.max_stale,
            self.cache_capacity,
        )?);
        let listener: Arc<dyn ChangeListener> = cache.clone();
        if self.store.changes(Arc::downgrade(&listener)) {
            cache.feed_subscribed();
        }
        crate::metrics::describe();
        Ok(KeyManager {
            inner: Arc::new(Inner {
                store: self.store,
                keyring: RwLock::new(Arc::new(self.keyring)),
                prefix: self.prefix,
                clock: self.clock,
                policy: self.policy,
                audit: self.audit,
                cache,
                notifier: self.notifier,
                uses: uses::Uses::new(self.last_use_capacity, self.last_use_interval),
                counters: self.counters,
                local: self.local,
            }),
        })
    }
}

pub(crate) struct Inner<S> {
    pub(crate) store: S,
    keyring: RwLock<Arc<Keyring>>,
    pub(crate) prefix: String,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: Policy,
    audit: Arc<dyn AuditSink>,
    pub(crate) cache: Arc<Cache>,
    pub(crate) notifier: Option<Arc<dyn Notifier>>,
    uses: uses::Uses,
    counters: Arc<dyn UsageCounters>,
    /// `counters` when it is the in-process engine.
    local: Option<Arc<LocalCounters>>,
}

/// Generates, verifies and manages an organization's API keys over a [`KeyStore`].
///
/// Cloning is cheap and clones share everything (store, cache, keyring).
pub struct KeyManager<S> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S> Clone for KeyManager<S> {
    fn clone(&self) -> Self {
        KeyManager {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for KeyManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("prefix", &self.inner.prefix)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore + 'static> KeyManager<S> {
    /// Starts building a manager over `store` with `keyring`.
    pub fn builder(store: S, keyring: Keyring) -> KeyManagerBuilder<S> {
        KeyManagerBuilder {
            store,
            keyring,
            prefix: DEFAULT_PREFIX.to_string(),
            clock: Arc::new(SystemClock),
            policy: Policy::default(),
            audit: Arc::new(TracingAudit),
            cache_ttl: StdDuration::from_secs(30),
            fallback_ttl: StdDuration::from_secs(1),
            max_stale: StdDuration::ZERO,
            cache_capacity: 100_000,
            notifier: None,
            last_use_interval: StdDuration::from_secs(10),
            last_use_capacity: 10_000,
            counters: Arc::new(LocalCounters::new()),
            local: None,
        }
        .counters(LocalCounters::new())
    }

    /// The token prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The clock's current time.
    pub fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    /// Replaces the keyring (e.g. a new current master-key version) and flushes the cache.
    ///
    /// # Errors
    /// [`Error::Policy`] if the keyring names a version twice.
    pub fn set_keyring(&self, keyring: Keyring) -> Result<(), Error> {
        keyring.validate()?;
        *self
            .inner
            .keyring
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(keyring);
        self.inner.cache.flush();
        Ok(())
    }

    pub(crate) fn keyring(&self) -> Arc<Keyring> {
        self.inner
            .keyring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn audit(
        &self,
        action: AuditAction,
        actor: Option<&Actor>,
        org: Option<&OrgId>,
        key_id: Option<KeyId>,
    ) -> Result<(), Error> {
        let event = self.audit_event(action, actor, org, key_id);
        self.inner.audit.record(&event).map_err(Error::Audit)
    }

    fn audit_event(
        &self,
        action: AuditAction,
        actor: Option<&Actor>,
        org: Option<&OrgId>,
        key_id: Option<KeyId>,
    ) -> AuditEvent {
        AuditEvent {
            action,
            actor: actor.map(|a| a.user().clone()),
            org: org.cloned(),
            key_id,
            at: self.inner.clock.now(),
        }
    }

    /// Audits an event whose recording failure must not fail the operation: the failure is
    /// logged with the event it lost (action, key, organization, actor — ids only) and the
    /// sink's error.
    pub(crate) fn audit_best_effort(
        &self,
        action: AuditAction,
        actor: Option<&Actor>,
        org: Option<&OrgId>,
        key_id: Option<KeyId>,
    ) {
        let event = self.audit_event(action, actor, org, key_id);
        // Events that can come once per request are logged with the log bound.
        let per_request = matches!(
            event.action,
            AuditAction::ServedStale | AuditAction::LimitsFailedOpen
        );
        if let Err(e) = self.inner.audit.record(&event)
            && (!per_request || crate::audit::sink_failure_logged(event.at.unix_timestamp()))
        {
            tracing::error!(
                target: "api_keys::audit",
                action = event.action.name(),
                key_id = event.key_id.map(tracing::field::display),
                org = event.org.as_ref().map(OrgId::as_str),
                actor = event.actor.as_ref().map(crate::UserId::as_str),
                error = %e,
                "audit sink failed; this event was not recorded"
            );
        }
    }

    pub(crate) fn require_manager(actor: &Actor) -> Result<(), Error> {
        if actor.is_manager() {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// Reads a record of the actor's organization (`NotFound` for another org's).
    pub(crate) async fn fetch(
        &self,
        actor: Option<&Actor>,
        id: &KeyId,
    ) -> Result<KeyRecord, Error> {
        let started = Instant::now();
        let answer = self.inner.store.get(id).await?;
        // The store answered: while the feed is down, no entry read before this may be served
        // stale later (a change since may have gone unheard; this node could have read it).
        self.inner.cache.store_answered(started);
        match answer {
            // Another class's record (a manager of another prefix sharing the store) is not
            // this manager's: as absent as another organization's.
            Some(rec)
                if actor.is_none_or(|a| rec.org == *a.org())
                    && (rec.is_undecodable() || rec.class == self.inner.prefix) =>
            {
                Ok(rec)
            }
            _ => Err(Error::NotFound),
        }
    }

    /// Reads a record to act on: of the actor's organization (`NotFound` otherwise; `None` for
    /// host-level jobs) and stored under the id it names (`Integrity` otherwise — a row copied
    /// under another id must never make an operation act on, or reveal, a different key).
    pub(crate) async fn load(&self, actor: Option<&Actor>, id: &KeyId) -> Result<KeyRecord, Error> {
        let rec = self.fetch(actor, id).await?;
        if rec.id != *id {
            self.audit_best_effort(
                AuditAction::IntegrityFailure,
                actor,
                Some(&rec.org),
                Some(*id),
            );
            return Err(Error::Integrity);
        }
        Ok(rec)
    }

    /// Audits an integrity failure of `rec`.
    pub(crate) fn integrity_failure(&self, actor: Option<&Actor>, rec: &KeyRecord) {
        self.audit_best_effort(
            AuditAction::IntegrityFailure,
            actor,
            Some(&rec.org),
            Some(rec.id),
        );
    }

    /// Opens a record of this manager's class into `secret`, auditing an integrity failure.
    pub(crate) fn open(
        &self,
        keyring: &Keyring,
        rec: &KeyRecord,
        actor: Option<&Actor>,
        secret: &mut Zeroizing<[u8; SECRET_LEN]>,
    ) -> Result<(), Error> {
        rec.open_into(keyring, &self.inner.prefix, rec.id, secret)
            .inspect_err(|_| {
                self.audit_best_effort(
                    AuditAction::IntegrityFailure,
                    actor,
                    Some(&rec.org),
                    Some(rec.id),
                );
            })
    }

    /// Checks a record's tag and class without decrypting, auditing a failure.
    pub(crate) fn authentic(
        &self,
        keyring: &Keyring,
        rec: &KeyRecord,
        actor: Option<&Actor>,
    ) -> bool {
        rec.authenticate(keyring, &self.inner.prefix).is_ok() || {
            self.audit_best_effort(
                AuditAction::IntegrityFailure,
                actor,
                Some(&rec.org),
                Some(rec.id),
            );
            false
        }
    }

    pub(crate) fn info(&self, rec: &KeyRecord, now: OffsetDateTime) -> KeyInfo {
        KeyInfo::from_record(rec, now, &self.inner.prefix)
    }

    /// Re-reads, opens, changes and re-seals a record with compare-and-swap, retrying when a
    /// concurrent change won. `change` returns `false` to leave the record as it is.
    ///
    /// An `update` the store did not answer may have committed (its reply lost): a retry would
    /// then find the change made and report nothing, so nobody would audit or announce it.
    /// Every write is sealed with a fresh IV under the tag, so its seal identifies it: a read
    /// that finds the record at this write's revision with this write's seal makes the change
    /// this call's. Another writer's identical change has another seal; a later one, another
    /// revision.
    pub(crate) async fn modify(
        &self,
        actor: Option<&Actor>,
        id: &KeyId,
        change: impl FnMut(&mut KeyRecord) -> Result<bool, Error>,
    ) -> Result<(KeyRecord, bool), Error> {
        self.modify_checked(actor, id, false, change).await
    }

    /// [`KeyManager::modify`] for a revocation, whose change writes its own revoker and
    /// reason over the revocation details of an active key. A record whose main tag passes
    /// but whose details tag does not (details forged in the database) is reported, yet an
    /// active one is still revoked: `verify` reads no details and accepts it, so refusing
    /// would leave a working key that nobody can revoke. Nothing forged survives: the change
    /// replaces every details field. A revoked one with forged details is `Integrity` (the
    /// change would keep them).
    pub(crate) async fn modify_revoking(
        &self,
        actor: Option<&Actor>,
        id: &KeyId,
        change: impl FnMut(&mut KeyRecord) -> Result<bool, Error>,
    ) -> Result<(KeyRecord, bool), Error> {
        self.modify_checked(actor, id, true, change).await
    }

    async fn modify_checked(
        &self,
        actor: Option<&Actor>,
        id: &KeyId,
        replaces_details: bool,
        mut change: impl FnMut(&mut KeyRecord) -> Result<bool, Error>,
    ) -> Result<(KeyRecord, bool), Error> {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        for _ in 0..CAS_RETRIES {
            let rec = self.load(actor, id).await?;
            let keyring = self.keyring();
            let details_authentic = if replaces_details {
                let opened = rec
                    .open_replacing_details(&keyring, &self.inner.prefix, rec.id, &mut secret)
                    .inspect_err(|_| self.integrity_failure(actor, &rec))?;
                if !opened {
                    self.integrity_failure(actor, &rec);
                    if rec.revoked_at.is_some() {
                        return Err(Error::Integrity);
                    }
                }
                opened
            } else {
                self.open(&keyring, &rec, actor, &mut secret)?;
                true
            };
            let mut next = rec.clone();
            if !change(&mut next)? {
                // Forged details are never handed back as the record's.
                if !details_authentic {
                    return Err(Error::Integrity);
                }
                return Ok((rec, false));
            }
            // Revisions live in an `i64` column; one at the limit is corrupt, never wrapped.
            next.revision = rec
                .revision
                .checked_add(1)
                .filter(|r| *r <= i64::MAX as u64)
                .ok_or(Error::Integrity)?;
            next.reseal_change(&keyring, &secret)?;
            // Fenced before the write and after it, even if this future is dropped midway; on
            // success the written record is installed instead.
            let fence = self.inner.cache.fence(*id);
            let result = self.inner.store.update(next.clone(), rec.revision).await;
            match result {
                Ok(()) => {
                    let fingerprint = self.inner.cache.fingerprint_of(&secret);
                    fence.install(
                        Arc::new(Facts::from_record(&next, self.inner.local.as_deref())),
                        fingerprint,
                    );
                    return Ok((next, true));
                }
                Err(StoreError::Conflict) => continue,
                Err(StoreError::NotFound) => return Err(Error::NotFound),
                Err(e) => {
                    return match self.inner.store.get(id).await {
                        Ok(Some(r))
                            if r.revision == next.revision
                                && r.sealed.same_seal(&next.sealed)
                                && self.authentic(&keyring, &r, actor) =>
                        {
                            let fingerprint = self.inner.cache.fingerprint_of(&secret);
                            fence.install(
                                Arc::new(Facts::from_record(&r, self.inner.local.as_deref())),
                                fingerprint,
                            );
                            Ok((r, true))
                        }
                        _ => Err(e.into()),
                    };
                }
            }
        }
        Err(Error::Conflict)
    }
}

mod lifecycle;
mod limits;
mod manage;
mod uses;
mod verify;

#[cfg(feature = "axum")]
pub(crate) use verify::{Step, Wait};

pub use lifecycle::RewrapReport;
