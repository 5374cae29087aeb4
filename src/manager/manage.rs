//! Generate, list, get, revoke, delete.

use super::*;

impl<S: KeyStore + 'static> KeyManager<S> {
    /// Generates a key. The secret is returned once, as an [`ApiKey`].
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] for a non-manager; [`Error::Policy`] for a name, scope list,
    /// expiry or usage limits outside the policy (a request that names no rate limits or no
    /// credits gets the policy's defaults, see [`Policy`]), for NUL (U+0000) in the actor's
    /// organization or user id or in a metadata value (written into the record),
    /// or when the organization already has `max_active_keys` active keys; [`Error::Store`] /
    /// [`Error::Random`] on failures.
    pub async fn generate(
        &self,
        actor: &Actor,
        req: GenerateRequest,
    ) -> Result<(ApiKey, KeyInfo), Error> {
        Self::require_manager(actor)?;
        check_written_id("an organization id", actor.org().as_str())?;
        check_written_id("a user id", actor.user().as_str())?;
        check_name(&req.name)?;
        let scopes = check_scopes(&req.scopes)?;
        let (rate_limits, credits) = self
            .inner
            .policy
            .resolve_limits(req.rate_limits, req.credits)?;
        check_meta(&req.meta)?;
        if let Some(owner) = &req.owner {
            check_owner(owner)?;
        }
        let now = whole_seconds(self.inner.clock.now());
        let expires_at = self.inner.policy.resolve(req.expiry, now)?;
        let active = self.working_keys(actor, now).await?;
        let limit = self.inner.policy.active_key_limit();
        if active >= limit {
            return Err(Error::Policy(format!(
                "this organization already has {active} active keys; at most {limit} are allowed — revoke or delete one first"
            )));
        }
        let draft = Draft {
            class: self.inner.prefix.clone(),
            id: KeyId(0),
            org: actor.org().clone(),
            name: req.name,
            scopes,
            created_at: now,
            created_by: actor.user().clone(),
            expires_at,
            replaces: None,
            owner: req.owner,
            meta: req.meta,
            rate_limits,
            credits,
        };
        let (key, rec) = self.create(draft).await?;
        self.audit_best_effort(
            AuditAction::Generated,
            Some(actor),
            Some(actor.org()),
            Some(rec.id),
        );
        Ok((key, self.info(&rec, now)))
    }

    /// How many of the organization's keys of this class work at `now` (authentic, neither
    /// revoked nor expired; keys inside a roll's overlap count too).
    pub(super) async fn working_keys(
        &self,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<usize, Error> {
        let recs = self.inner.store.list(actor.org()).await?;
        let keyring = self.keyring();
        Ok(self.working_of(&recs, actor.org(), &keyring, now).count())
    }

    /// The records of `recs` that are `org`'s working keys of this class at `now`.
    pub(super) fn working_of<'r>(
        &'r self,
        recs: &'r [KeyRecord],
        org: &'r OrgId,
        keyring: &'r Keyring,
        now: OffsetDateTime,
    ) -> impl Iterator<Item = &'r KeyRecord> + 'r {
        recs.iter().filter(move |r| {
            r.org == *org
                && r.class == self.inner.prefix
                && KeyStatus::of(r, now) == KeyStatus::Active
                && r.authenticate(keyring, &self.inner.prefix).is_ok()
        })
    }

    /// Seals and inserts a fresh key from `draft` (its id is replaced by a random one; a new
    /// one on the unlikely duplicate), and installs it in the cache.
    pub(super) async fn create(&self, mut draft: Draft) -> Result<(ApiKey, KeyRecord), Error> {
        let keyring = self.keyring();
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut id = [0u8; 8];
            fill_random(&mut id)?;
            draft.id = KeyId(u64::from_le_bytes(id));
            fill_random(&mut *secret)?;
            let rec = KeyRecord::seal_new(&keyring, draft.clone(), &secret)?;
            let fence = self.inner.cache.fence(rec.id);
            let inserted = match self.inner.store.insert(rec.clone()).await {
                // The insert may have committed with its reply lost (or a driver's retry of it
                // met its own row as a duplicate): then the key exists, counts against the
                // limit and works, and a retry would only add another. A read that finds this
                // very record (its tag covers the fresh IV and ciphertext) makes it this
                // call's, to hand out and audit.
                Err(e) => match self.inner.store.get(&rec.id).await {
                    Ok(Some(r)) if r.id == rec.id && r.sealed.same_seal(&rec.sealed) => Ok(()),
                    _ => Err(e),
                },
                ok => ok,
            };
            match inserted {
                Ok(()) => {
                    // In the cache from the start: a wrong secret costs the same for a new,
                    // a used, a revoked or an expired key.
                    fence.install(
                        Arc::new(Facts::from_record(&rec, self.inner.local.as_deref())),
                        self.inner.cache.fingerprint_of(&secret),
                    );
                    let token = format_token(&self.inner.prefix, rec.id, &secret);
                    return Ok((ApiKey::new(rec.id, token), rec));
                }
                Err(StoreError::Duplicate) if attempts < 3 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The actor's organization's keys of this manager's class, newest first. Records that fail
    /// their integrity check (tampered, undecodable, sealed under an unknown master key) are
    /// left out and reported (audit event `integrity_failure`, naming the id); they can still
    /// be deleted. Records of another key class (another manager sharing the store) are left
    /// out silently: they are not this manager's.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] for a non-manager; [`Error::Store`].
    pub async fn list(&self, actor: &Actor) -> Result<Vec<KeyInfo>, Error> {
        Self::require_manager(actor)?;
        let infos = self.authentic_infos(actor).await?;
        self.audit_best_effort(AuditAction::Listed, Some(actor), Some(actor.org()), None);
        Ok(infos)
    }

    pub(super) async fn authentic_infos(&self, actor: &Actor) -> Result<Vec<KeyInfo>, Error> {
        let now = self.inner.clock.now();
        let keyring = self.keyring();
        let started = std::time::Instant::now();
        let mut recs = self.inner.store.list(actor.org()).await?;
        self.inner.cache.store_answered(started);
        recs.retain(|r| {
            (r.is_undecodable() || r.class == self.inner.prefix)
                && (r.org == *actor.org() && self.authentic(&keyring, r, Some(actor)))
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
        if !self.authentic(&self.keyring(), &rec, Some(actor)) {
            return Err(Error::Integrity);
        }
        self.audit_best_effort(
            AuditAction::Viewed,
            Some(actor),
            Some(actor.org()),
            Some(*id),
        );
        Ok(self.info(&rec, self.inner.clock.now()))
    }

    /// Revokes a key: it stops working at once (on this node: every verify that starts after
    /// this returns fails) and stays listed as revoked. Revoking a revoked key is a no-op.
    /// A revocation whose write committed but whose reply was lost is read back and reported
    /// (and audited) as done, so a retry's no-op does not leave it unaudited — unless another
    /// change to the key lands between the write and the read-back (the call then answers
    /// [`Error::Store`]), or the call's future is dropped after the write committed: the
    /// revocation holds either way, only its audit event is missing. An active key whose
    /// revocation details alone were forged in the database still verifies, so it is revoked
    /// too: the revocation replaces the forged details (the forgery is audited).
    ///
    /// # Errors
    /// [`Error::PermissionDenied`]; [`Error::NotFound`]; [`Error::Integrity`] for a record
    /// that fails its check (one that `verify` refuses as well, or a revoked key's forged
    /// details); [`Error::Conflict`] after repeated lost races; [`Error::Store`]. A revocation is never
    /// refused for its revoker's id: a NUL (U+0000) in it, which PostgreSQL cannot store, is
    /// recorded as U+FFFD.
    pub async fn revoke(&self, actor: &Actor, id: &KeyId) -> Result<KeyInfo, Error> {
        Self::require_manager(actor)?;
        let now = whole_seconds(self.inner.clock.now());
        let (rec, changed) = self
            .revoke_for(Some(actor), id, RevocationReason::Manual, now)
            .await?;
        if changed {
            self.audit_best_effort(
                AuditAction::Revoked,
                Some(actor),
                Some(actor.org()),
                Some(*id),
            );
        }
        Ok(self.info(&rec, now))
    }

    /// Revokes `id` at `now` for `reason` (a no-op for a revoked key: the first reason stays).
    /// `actor` scopes the read to its organization and is recorded as `revoked_by`; `None`
    /// is a host-level job (sweep, leak report). Returns the record and whether it changed.
    pub(crate) async fn revoke_for(
        &self,
        actor: Option<&Actor>,
        id: &KeyId,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<(KeyRecord, bool), Error> {
        let revoker = actor.and_then(|a| recordable_revoker(a.user()));
        let result = self
            .modify_revoking(actor, id, |r| {
                if r.revoked_at.is_some() {
                    return Ok(false);
                }
                r.revoked_at = Some(now);
                r.revoked_by = revoker.clone();
                r.revocation = Some(reason.clone());
                Ok(true)
            })
            .await;
        if matches!(result, Ok((_, false)) | Err(Error::NotFound)) {
            // Revoked or deleted elsewhere (another node, whose change feed may lag or be
            // absent): what this node's cache holds of the key may predate that; the next
            // verification reads the store.
            self.inner.cache.invalidate(id);
        }
        result
    }

    /// Offboarding: revokes every active key of the actor's organization that `user` created
    /// (reason [`RevocationReason::DepartedUser`]; keys inside a roll's overlap too), audits
    /// each ([`AuditAction::RevokedDepartedUser`]) and tells the notifier; returns how many it
    /// revoked. Keys of other organizations, other creators, or already revoked or expired
    /// are left as they are. Calling it again is safe (it then revokes nothing more).
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] for a non-manager; [`Error::Store`]; [`Error::Conflict`]
    /// (after every other key was tried: call again).
    pub async fn revoke_created_by(
        &self,
        actor: &Actor,
        user: &crate::UserId,
    ) -> Result<usize, Error> {
        Self::require_manager(actor)?;
        let now = whole_seconds(self.inner.clock.now());
        let keyring = self.keyring();
        let recs = self.inner.store.list(actor.org()).await?;
        let mut revoked = 0;
        let mut failure = None;
        for r in recs.iter().filter(|r| {
            !r.is_undecodable()
                && r.org == *actor.org()
                && r.class == self.inner.prefix
                && r.created_by == *user
                && KeyStatus::of(r, now) == KeyStatus::Active
        }) {
            // The main tag only: a key whose revocation details alone were forged still
            // verifies, so it is revoked too (the revocation replaces the details, and
            // `revoke_for` reports the forgery).
            if !r.main_tag_authentic(&keyring, &self.inner.prefix) {
                self.integrity_failure(Some(actor), r);
                continue;
            }
            match self
                .revoke_for(Some(actor), &r.id, RevocationReason::DepartedUser, now)
                .await
            {
                Ok((rec, true)) => {
                    revoked += 1;
                    self.announce(
                        crate::sweep::AutomationEvent::RevokedDepartedUser,
                        Some(actor),
                        &rec,
                        now,
                    );
                }
                Ok((_, false)) | Err(Error::NotFound) => {}
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(revoked),
        }
    }

    /// Revokes and deletes a key: it stops working at once and disappears. A record that fails
    /// its integrity check can still be deleted. A deletion whose reply was lost is read back:
    /// when the key is gone, it is reported (and audited) as done.
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
        let removed = match removed {
            Ok(removed) => removed,
            // The delete may have committed with its reply lost. A retry would then find
            // nothing (NotFound) and the deletion would never be audited: a read showing the
            // key (found just before) gone makes it this call's.
            Err(e) => match self.inner.store.get(id).await {
                Ok(None) => true,
                _ => return Err(e.into()),
            },
        };
        if !removed {
            return Err(Error::NotFound);
        }
        self.forget_counters(*id).await;
        self.audit_best_effort(
            AuditAction::Deleted,
            Some(actor),
            Some(actor.org()),
            Some(*id),
        );
        Ok(())
    }
}

/// The revoker's id as every store can hold it. A revocation is never refused for its
/// revoker's id: a NUL (U+0000), which PostgreSQL cannot store, becomes U+FFFD (and the id is
/// left out if that would pass an id's length limit). The audit event keeps the actor as it is.
fn recordable_revoker(user: &crate::UserId) -> Option<crate::UserId> {
    if !user.as_str().contains('\0') {
        return Some(user.clone());
    }
    crate::UserId::try_new(user.as_str().replace('\0', "\u{FFFD}")).ok()
}
