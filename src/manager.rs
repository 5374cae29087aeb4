//! [`KeyManager`]: generation, verification and the management operations.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration as StdDuration, Instant};

use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

use crate::audit::{AuditAction, AuditEvent, AuditSink, FailureClass, TracingAudit};
use crate::cache::Cache;
use crate::crypto::fill_random;
use crate::key::Facts;
use crate::policy::{check_name, check_scopes};
use crate::record::{Draft, whole_seconds};
use crate::store::ChangeListener;
use crate::token::{DEFAULT_PREFIX, SECRET_LEN, UntrustedToken, format_token, valid_prefix};
use crate::{
    Actor, ApiKey, Clock, Error, GenerateRequest, KeyId, KeyInfo, KeyRecord, KeyStatus, KeyStore,
    Keyring, OrgId, Policy, Scope, StoreError, SystemClock, Verified,
};

/// How many times a management operation re-reads and retries after losing a CAS race.
const CAS_RETRIES: usize = 5;
/// Last use is written at most this often per key and process.
const TOUCH_INTERVAL_SECS: i64 = 60;
/// Page size of `rewrap` and `expiring_all`.
const SCAN_PAGE: usize = 256;

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
    cache_capacity: usize,
}

impl<S: KeyStore + 'static> KeyManagerBuilder<S> {
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

    /// Most records kept in the cache (default 100 000). Zero disables the cache.
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
            self.cache_capacity,
        )?);
        let listener: Arc<dyn ChangeListener> = cache.clone();
        self.store.changes(Arc::downgrade(&listener));
        Ok(KeyManager {
            inner: Arc::new(Inner {
                store: self.store,
                keyring: RwLock::new(Arc::new(self.keyring)),
                prefix: self.prefix,
                clock: self.clock,
                policy: self.policy,
                audit: self.audit,
                cache,
            }),
        })
    }
}

struct Inner<S> {
    store: S,
    keyring: RwLock<Arc<Keyring>>,
    prefix: String,
    clock: Arc<dyn Clock>,
    policy: Policy,
    audit: Arc<dyn AuditSink>,
    cache: Arc<Cache>,
}

/// Counts returned by [`KeyManager::rewrap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Records re-sealed under the current version.
    pub rewrapped: usize,
    /// Records already sealed under the current version.
    pub already_current: usize,
    /// Records that failed their integrity check (reported, never re-sealed) or could not be
    /// written after retries.
    pub failed: usize,
    /// Records sealed under a `next` version (by nodes already upgraded), left as they are.
    pub newer: usize,
}

/// Generates, verifies and manages an organization's API keys over a [`KeyStore`].
///
/// Cloning is cheap and clones share everything (store, cache, keyring).
pub struct KeyManager<S> {
    inner: Arc<Inner<S>>,
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
            cache_capacity: 100_000,
        }
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

    fn keyring(&self) -> Arc<Keyring> {
        self.inner
            .keyring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn audit(
        &self,
        action: AuditAction,
        actor: Option<&Actor>,
        org: Option<&OrgId>,
        key_id: Option<KeyId>,
    ) -> Result<(), Error> {
        let event = AuditEvent {
            action,
            actor: actor.map(|a| a.user().clone()),
            org: org.cloned(),
            key_id,
            at: self.inner.clock.now(),
        };
        self.inner.audit.record(&event).map_err(Error::Audit)
    }

    /// Audits an event whose recording failure must not fail the operation (it is logged).
    fn audit_best_effort(
        &self,
        action: AuditAction,
        actor: Option<&Actor>,
        org: Option<&OrgId>,
        key_id: Option<KeyId>,
    ) {
        if let Err(e) = self.audit(action, actor, org, key_id) {
            tracing::error!(target: "api_keys::audit", error = %e, "audit sink failed");
        }
    }

    fn require_manager(actor: &Actor) -> Result<(), Error> {
        if actor.is_manager() {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// Reads a record of the actor's organization (`NotFound` for another org's).
    async fn fetch(&self, actor: Option<&Actor>, id: &KeyId) -> Result<KeyRecord, Error> {
        match self.inner.store.get(id).await? {
            Some(rec) if actor.is_none_or(|a| rec.org == *a.org()) => Ok(rec),
            _ => Err(Error::NotFound),
        }
    }

    /// Reads a record to act on: of the actor's organization (`NotFound` otherwise; `None` for
    /// host-level jobs) and stored under the id it names (`Integrity` otherwise — a row copied
    /// under another id must never make an operation act on, or reveal, a different key).
    async fn load(&self, actor: Option<&Actor>, id: &KeyId) -> Result<KeyRecord, Error> {
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

    /// Opens a record, auditing an integrity failure.
    fn open(
        &self,
        keyring: &Keyring,
        rec: &KeyRecord,
        actor: Option<&Actor>,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, Error> {
        rec.open(keyring, rec.id).inspect_err(|_| {
            self.audit_best_effort(
                AuditAction::IntegrityFailure,
                actor,
                Some(&rec.org),
                Some(rec.id),
            );
        })
    }

    fn info(&self, rec: &KeyRecord, now: OffsetDateTime) -> KeyInfo {
        KeyInfo::from_record(rec, now, &self.inner.prefix)
    }

    /// Generates a key. The secret is returned once, as an [`ApiKey`].
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] for a non-manager; [`Error::Policy`] for a name, scope list
    /// or expiry outside the policy, or when the organization already has
    /// `max_active_keys` active keys; [`Error::Store`] / [`Error::Random`] on failures.
    pub async fn generate(
        &self,
        actor: &Actor,
        req: GenerateRequest,
    ) -> Result<(ApiKey, KeyInfo), Error> {
        Self::require_manager(actor)?;
        check_name(&req.name)?;
        let scopes = check_scopes(&req.scopes)?;
        let now = whole_seconds(self.inner.clock.now());
        let expires_at = self.inner.policy.resolve(req.expiry, now)?;
        let active = self
            .inner
            .store
            .list(actor.org())
            .await?
            .iter()
            .filter(|r| KeyStatus::of(r, now) == KeyStatus::Active)
            .count();
        let limit = self.inner.policy.active_key_limit();
        if active >= limit {
            return Err(Error::Policy(format!(
                "this organization already has {active} active keys; at most {limit} are allowed — revoke or delete one first"
            )));
        }
        let (key, rec) = self
            .create(actor, req.name, scopes, now, expires_at)
            .await?;
        self.audit_best_effort(
            AuditAction::Generated,
            Some(actor),
            Some(actor.org()),
            Some(rec.id),
        );
        Ok((key, self.info(&rec, now)))
    }

    /// Seals and inserts a fresh key (new random id on the unlikely duplicate).
    async fn create(
        &self,
        actor: &Actor,
        name: String,
        scopes: Vec<Scope>,
        now: OffsetDateTime,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<(ApiKey, KeyRecord), Error> {
        let keyring = self.keyring();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut id = [0u8; 8];
            fill_random(&mut id)?;
            let id = KeyId(u64::from_le_bytes(id));
            let mut secret = zeroize::Zeroizing::new([0u8; SECRET_LEN]);
            fill_random(&mut *secret)?;
            let draft = Draft {
                id,
                org: actor.org().clone(),
                name: name.clone(),
                scopes: scopes.clone(),
                created_at: now,
                created_by: actor.user().clone(),
                expires_at,
            };
            let rec = KeyRecord::seal_new(&keyring, draft, &secret)?;
            match self.inner.store.insert(rec.clone()).await {
                Ok(()) => {
                    let token = format_token(&self.inner.prefix, id, &secret);
                    return Ok((ApiKey::new(id, token), rec));
                }
                Err(StoreError::Duplicate) if attempts < 3 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The actor's organization's keys, newest first. Records that fail their integrity check
    /// are left out and reported (audit event `integrity_failure`); they can still be deleted.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] for a non-manager; [`Error::Store`].
    pub async fn list(&self, actor: &Actor) -> Result<Vec<KeyInfo>, Error> {
        Self::require_manager(actor)?;
        let infos = self.authentic_infos(actor).await?;
        self.audit_best_effort(AuditAction::Listed, Some(actor), Some(actor.org()), None);
        Ok(infos)
    }

    async fn authentic_infos(&self, actor: &Actor) -> Result<Vec<KeyInfo>, Error> {
        let now = self.inner.clock.now();
        let keyring = self.keyring();
        let mut recs = self.inner.store.list(actor.org()).await?;
        recs.retain(|r| {
            r.org == *actor.org() && r.authenticate(&keyring).is_ok() || {
                self.audit_best_effort(
                    AuditAction::IntegrityFailure,
                    Some(actor),
                    Some(&r.org),
                    Some(r.id),
                );
                false
            }
        });
        let mut infos: Vec<KeyInfo> = recs.iter().map(|r| self.info(r, now)).collect();
        infos.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(infos)
    }

    /// One key's metadata.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] for a non-manager; [`Error::NotFound`] for an unknown key or
    /// another organization's; [`Error::Integrity`] for a tampered record.
    pub async fn get(&self, actor: &Actor, id: &KeyId) -> Result<KeyInfo, Error> {
        Self::require_manager(actor)?;
        let rec = self.load(Some(actor), id).await?;
        rec.authenticate(&self.keyring()).inspect_err(|_| {
            self.audit_best_effort(
                AuditAction::IntegrityFailure,
                Some(actor),
                Some(&rec.org),
                Some(rec.id),
            );
        })?;
        self.audit_best_effort(
            AuditAction::Viewed,
            Some(actor),
            Some(actor.org()),
            Some(*id),
        );
        Ok(self.info(&rec, self.inner.clock.now()))
    }

    /// The original token of an active key, when [`Policy::allow_reveal`] is on. Every reveal
    /// is audited first; if the audit sink fails, nothing is revealed.
    ///
    /// # Errors
    /// [`Error::Policy`] when reveal is off; [`Error::PermissionDenied`]; [`Error::NotFound`];
    /// [`Error::Revoked`] / [`Error::Expired`] for a key that no longer works;
    /// [`Error::Integrity`]; [`Error::Audit`] when the event could not be recorded.
    pub async fn reveal(&self, actor: &Actor, id: &KeyId) -> Result<ApiKey, Error> {
        Self::require_manager(actor)?;
        if !self.inner.policy.reveal_allowed() {
            return Err(Error::Policy(
                "revealing existing keys is turned off by the policy (allow_reveal)".into(),
            ));
        }
        let rec = self.load(Some(actor), id).await?;
        let secret = self.open(&self.keyring(), &rec, Some(actor))?;
        match KeyStatus::of(&rec, self.inner.clock.now()) {
            KeyStatus::Revoked => return Err(Error::Revoked),
            KeyStatus::Expired => return Err(Error::Expired),
            KeyStatus::Active => {}
        }
        self.audit(
            AuditAction::Revealed,
            Some(actor),
            Some(actor.org()),
            Some(*id),
        )?;
        Ok(ApiKey::new(
            *id,
            format_token(&self.inner.prefix, *id, &secret),
        ))
    }

    /// Re-reads, opens, changes and re-seals a record with compare-and-swap, retrying when a
    /// concurrent change won. `change` returns `false` to leave the record as it is.
    async fn modify(
        &self,
        actor: Option<&Actor>,
        id: &KeyId,
        mut change: impl FnMut(&mut KeyRecord) -> Result<bool, Error>,
    ) -> Result<(KeyRecord, bool), Error> {
        for _ in 0..CAS_RETRIES {
            let rec = self.load(actor, id).await?;
            let keyring = self.keyring();
            let secret = self.open(&keyring, &rec, actor)?;
            let mut next = rec.clone();
            if !change(&mut next)? {
                return Ok((rec, false));
            }
            // Revisions live in an `i64` column; one at the limit is corrupt, never wrapped.
            next.revision = rec
                .revision
                .checked_add(1)
                .filter(|r| *r <= i64::MAX as u64)
                .ok_or(Error::Integrity)?;
            next.reseal(&keyring, &secret)?;
            let result = {
                // Fenced before the write and after it, even if this future is dropped midway.
                let _fence = self.inner.cache.fence(*id);
                self.inner.store.update(next.clone(), rec.revision).await
            };
            match result {
                Ok(()) => return Ok((next, true)),
                Err(StoreError::Conflict) => continue,
                Err(StoreError::NotFound) => return Err(Error::NotFound),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict)
    }

    /// Revokes a key: it stops working at once (on this node: every verify that starts after
    /// this returns fails) and stays listed as revoked. Revoking a revoked key is a no-op.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`]; [`Error::NotFound`]; [`Error::Integrity`];
    /// [`Error::Conflict`] after repeated lost races; [`Error::Store`].
    pub async fn revoke(&self, actor: &Actor, id: &KeyId) -> Result<KeyInfo, Error> {
        Self::require_manager(actor)?;
        let now = whole_seconds(self.inner.clock.now());
        let (rec, _) = self
            .modify(Some(actor), id, |r| {
                if r.revoked_at.is_some() {
                    return Ok(false);
                }
                r.revoked_at = Some(now);
                r.revoked_by = Some(actor.user().clone());
                Ok(true)
            })
            .await?;
        self.audit_best_effort(
            AuditAction::Revoked,
            Some(actor),
            Some(actor.org()),
            Some(*id),
        );
        Ok(self.info(&rec, now))
    }

    /// Revokes and deletes a key: it stops working at once and disappears. A record that fails
    /// its integrity check can still be deleted.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`]; [`Error::NotFound`]; [`Error::Store`].
    pub async fn delete(&self, actor: &Actor, id: &KeyId) -> Result<(), Error> {
        Self::require_manager(actor)?;
        self.fetch(Some(actor), id).await?;
        let removed = {
            let _fence = self.inner.cache.fence(*id);
            self.inner.store.delete(id).await
        };
        if !removed? {
            return Err(Error::NotFound);
        }
        self.audit_best_effort(
            AuditAction::Deleted,
            Some(actor),
            Some(actor.org()),
            Some(*id),
        );
        Ok(())
    }

    /// Replaces a key without breaking its integrations: the replacement (same name and
    /// scopes, the policy's default expiry) is created first, then the old key's expiry becomes
    /// `min(its expiry, now + overlap)` — never later. A zero (or negative) overlap stops the
    /// old key now. Rolling does not count against `max_active_keys`.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`]; [`Error::NotFound`]; [`Error::Revoked`] / [`Error::Expired`]
    /// for a key that no longer works; [`Error::Integrity`]; [`Error::Conflict`];
    /// [`Error::Store`]. If shortening the old key fails, the replacement is deleted again.
    pub async fn roll(
        &self,
        actor: &Actor,
        id: &KeyId,
        overlap: Duration,
    ) -> Result<(ApiKey, KeyInfo), Error> {
        Self::require_manager(actor)?;
        let now = whole_seconds(self.inner.clock.now());
        let old = self.load(Some(actor), id).await?;
        self.open(&self.keyring(), &old, Some(actor))?;
        match KeyStatus::of(&old, now) {
            KeyStatus::Revoked => return Err(Error::Revoked),
            KeyStatus::Expired => return Err(Error::Expired),
            KeyStatus::Active => {}
        }
        let expires_at = self.inner.policy.resolve(None, now)?;
        let (key, new_rec) = self
            .create(actor, old.name.clone(), old.scopes.clone(), now, expires_at)
            .await?;
        // Saturating: an absurd overlap (it may come from a request) can never panic.
        let cutoff = whole_seconds(now.saturating_add(overlap.max(Duration::ZERO)));
        let shortened = self
            .modify(Some(actor), id, |r| {
                if r.revoked_at.is_some() {
                    return Err(Error::Revoked);
                }
                match r.expires_at {
                    Some(e) if e <= cutoff => Ok(false),
                    _ => {
                        r.expires_at = Some(cutoff);
                        Ok(true)
                    }
                }
            })
            .await;
        if let Err(e) = shortened {
            if let Err(cleanup) = self.inner.store.delete(&new_rec.id).await {
                tracing::error!(target: "api_keys", key_id = %new_rec.id, error = %cleanup, "could not delete the replacement of a failed roll");
            }
            return Err(e);
        }
        self.audit_best_effort(
            AuditAction::Rolled {
                replacement: new_rec.id,
            },
            Some(actor),
            Some(actor.org()),
            Some(*id),
        );
        Ok((key, self.info(&new_rec, now)))
    }

    /// The organization's active keys that expire within `window` from now, soonest first.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`]; [`Error::Store`].
    pub async fn expiring_within(
        &self,
        actor: &Actor,
        window: Duration,
    ) -> Result<Vec<KeyInfo>, Error> {
        Self::require_manager(actor)?;
        let now = self.inner.clock.now();
        let mut infos: Vec<KeyInfo> = self
            .authentic_infos(actor)
            .await?
            .into_iter()
            .filter(|i| expiring(i, now, window))
            .collect();
        infos.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then(a.id.cmp(&b.id)));
        Ok(infos)
    }

    /// Every organization's active keys expiring within `window`, soonest first: for a
    /// host's daily job (no actor: the host calls it). Records failing their integrity check
    /// are left out and reported.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub async fn expiring_all(&self, window: Duration) -> Result<Vec<KeyInfo>, Error> {
        let now = self.inner.clock.now();
        let keyring = self.keyring();
        let mut out = Vec::new();
        let mut after: Option<KeyId> = None;
        loop {
            let page = self.inner.store.scan(after.as_ref(), SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for r in &page {
                if r.authenticate(&keyring).is_err() {
                    self.audit_best_effort(
                        AuditAction::IntegrityFailure,
                        None,
                        Some(&r.org),
                        Some(r.id),
                    );
                    continue;
                }
                let info = self.info(r, now);
                if expiring(&info, now, window) {
                    out.push(info);
                }
            }
            if page.len() < SCAN_PAGE {
                break;
            }
        }
        out.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Re-seals every record under the keyring's current version, page by page, with
    /// compare-and-swap (a concurrent change wins; the record is re-read and retried).
    /// Keys keep verifying throughout. Records failing their integrity check are counted in
    /// `failed`, reported, and never re-sealed.
    ///
    /// # Errors
    /// [`Error::Store`] when a page cannot be read.
    pub async fn rewrap(&self) -> Result<RewrapReport, Error> {
        let mut report = RewrapReport::default();
        let mut after: Option<KeyId> = None;
        loop {
            let page = self.inner.store.scan(after.as_ref(), SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for rec in &page {
                let keyring = self.keyring();
                let current = keyring.current_version();
                if rec.sealed.key_version == current {
                    report.already_current += 1;
                    continue;
                }
                if keyring.is_next(rec.sealed.key_version) {
                    // Sealed by an already upgraded node: never move it down.
                    report.newer += 1;
                    continue;
                }
                let from = rec.sealed.key_version;
                let result = self
                    .modify(None, &rec.id, |r| {
                        Ok(r.sealed.key_version != current
                            && !keyring.is_next(r.sealed.key_version))
                    })
                    .await;
                match result {
                    Ok((_, false)) => report.already_current += 1,
                    Ok((r, true)) => {
                        report.rewrapped += 1;
                        self.audit_best_effort(
                            AuditAction::Rewrapped {
                                from_version: from,
                                to_version: r.sealed.key_version,
                            },
                            None,
                            Some(&r.org),
                            Some(r.id),
                        );
                    }
                    // Deleted meanwhile: nothing to do.
                    Err(Error::NotFound) => {}
                    Err(e) => {
                        report.failed += 1;
                        tracing::error!(target: "api_keys", key_id = %rec.id, error = %e, "rewrap failed for a record");
                    }
                }
            }
            if page.len() < SCAN_PAGE {
                break;
            }
        }
        Ok(report)
    }

    /// Verifies a presented token for `scope`.
    ///
    /// Order: parse and checksum (no I/O) → cache or `store.get(id)` → tag check → decrypt →
    /// constant-time compare of the secret → state checks (revoked, expired at
    /// `clock.now()`, scope). Only after the secret matched can the result be
    /// [`Error::Revoked`], [`Error::Expired`] or [`Error::ScopeNotAllowed`].
    ///
    /// # Errors
    /// [`Error::Malformed`] (never touches the store), [`Error::InvalidKey`] (unknown id or
    /// wrong secret), the state errors above, [`Error::Integrity`] for a tampered record or
    /// wrong master key, [`Error::Store`].
    pub async fn verify(&self, token: &str, scope: &Scope) -> Result<Verified, Error> {
        let parsed = match UntrustedToken::parse(&self.inner.prefix, token) {
            Ok(p) => p,
            Err(e) => {
                self.verify_failed(FailureClass::Malformed, None, None, Instant::now());
                return Err(e);
            }
        };
        let id = parsed.id();
        let cache = &self.inner.cache;
        // The presented secret's fingerprint does not depend on the lookup: computed while
        // the lookup's memory access is in flight. One monotonic reading serves the cache's
        // TTL and (through the clock) the expiry check.
        let presented = cache.fingerprint(parsed.secret());
        let mono = Instant::now();
        let (facts, mono) = match cache.get(&id, mono) {
            Some((facts, fingerprint)) => {
                if !bool::from(presented[..].ct_eq(&fingerprint[..])) {
                    self.verify_failed(FailureClass::InvalidKey, Some(&facts.org), Some(id), mono);
                    return Err(Error::InvalidKey);
                }
                (facts, mono)
            }
            // After a store read, expiry is decided at the time it returned. The cold path's
            // state is boxed (it allocates anyway) so that the hot path's future stays small
            // to move.
            None => (Box::pin(self.verify_cold(&parsed)).await?, Instant::now()),
        };
        let now = self.inner.clock.now_unix_at(mono);
        let class = if facts.revoked {
            Some((FailureClass::Revoked, Error::Revoked))
        } else if now >= facts.expires_unix {
            Some((FailureClass::Expired, Error::Expired))
        } else if !facts.allows(scope) {
            Some((FailureClass::ScopeNotAllowed, Error::ScopeNotAllowed))
        } else {
            None
        };
        if let Some((class, err)) = class {
            self.verify_failed(class, Some(&facts.org), Some(id), mono);
            return Err(err);
        }
        self.touch(&facts, now).await;
        Ok(Verified::new(facts))
    }

    async fn verify_cold(&self, parsed: &UntrustedToken) -> Result<Arc<Facts>, Error> {
        let id = parsed.id();
        let cache = &self.inner.cache;
        let ticket = cache.ticket(&id);
        let rec = match self.inner.store.get(&id).await {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                self.verify_failed(FailureClass::InvalidKey, None, Some(id), Instant::now());
                return Err(Error::InvalidKey);
            }
            Err(e) => {
                let e = Error::from(e);
                let class = if matches!(e, Error::Integrity) {
                    FailureClass::Integrity
                } else {
                    FailureClass::Store
                };
                self.verify_failed(class, None, Some(id), Instant::now());
                return Err(e);
            }
        };
        let secret = match rec.open(&self.keyring(), id) {
            Ok(s) => s,
            Err(e) => {
                self.verify_failed(
                    FailureClass::Integrity,
                    Some(&rec.org),
                    Some(id),
                    Instant::now(),
                );
                return Err(e);
            }
        };
        let matched: bool = secret.ct_eq(parsed.secret()).into();
        if !matched {
            // Not cached: wrong guesses must not be able to churn the cache.
            self.verify_failed(
                FailureClass::InvalidKey,
                Some(&rec.org),
                Some(id),
                Instant::now(),
            );
            return Err(Error::InvalidKey);
        }
        let facts = Arc::new(Facts::from_record(&rec));
        cache.fill(ticket, facts.clone(), cache.fingerprint(&secret));
        Ok(facts)
    }

    /// Audits a failed verification. Its time is the clock's whole second at the monotonic
    /// reading `at` (the one the hot path already took, or a fresh one), which spares the
    /// failure path a second reading of the wall clock.
    fn verify_failed(
        &self,
        class: FailureClass,
        org: Option<&OrgId>,
        key_id: Option<KeyId>,
        at: Instant,
    ) {
        let secs = self.inner.clock.now_unix_at(at);
        let event = AuditEvent {
            action: AuditAction::VerificationFailed(class),
            actor: None,
            org: org.cloned(),
            key_id,
            at: OffsetDateTime::from_unix_timestamp(secs)
                .unwrap_or_else(|_| self.inner.clock.now()),
        };
        if let Err(e) = self.inner.audit.record(&event) {
            tracing::error!(target: "api_keys::audit", error = %e, "audit sink failed");
        }
    }

    /// Records last use at most once a minute per key and process; a failing `touch` is
    /// logged and never fails the verification.
    async fn touch(&self, facts: &Facts, now: i64) {
        let last = facts.last_touch.load(Ordering::Relaxed);
        if now.saturating_sub(last) < TOUCH_INTERVAL_SECS
            || facts
                .last_touch
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Ok(at) = OffsetDateTime::from_unix_timestamp(now) else {
            return;
        };
        if let Err(e) = self.inner.store.touch(&facts.id, at).await {
            tracing::warn!(target: "api_keys", key_id = %facts.id, error = %e, "could not record last use");
        }
    }

    /// Number of records in the verified-record cache.
    pub fn cached_records(&self) -> usize {
        self.inner.cache.len()
    }
}

fn expiring(info: &KeyInfo, now: OffsetDateTime, window: Duration) -> bool {
    info.status == KeyStatus::Active
        && info
            .expires_at
            .is_some_and(|e| e <= now.saturating_add(window))
}
