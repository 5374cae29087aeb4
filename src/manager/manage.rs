//! Generate, list, get, revoke, delete.

use super::*;

impl<S: KeyStore + 'static> KeyManager<S> {
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
    pub(super) async fn create(
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

    pub(super) async fn authentic_infos(&self, actor: &Actor) -> Result<Vec<KeyInfo>, Error> {
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
}
