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

pub use builder::KeyManagerBuilder;

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

mod builder;
mod lifecycle;
mod limits;
mod manage;
mod uses;
mod verify;

#[cfg(feature = "axum")]
pub(crate) use verify::{Step, Wait};

pub use lifecycle::RewrapReport;
