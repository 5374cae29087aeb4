//! Roll, reveal, rewrap and expiry queries.

use std::collections::BTreeMap;

use super::*;
use crate::{Credits, RateLimit};

/// Counts returned by [`KeyManager::rewrap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Records re-sealed under the current version.
    pub rewrapped: usize,
    /// Authentic records already sealed under the current version.
    pub already_current: usize,
    /// Records that failed their integrity check (reported, never re-sealed) or could not be
    /// written after retries.
    pub failed: usize,
    /// Authentic records sealed under a `next` version (by nodes already upgraded), left as
    /// they are.
    pub newer: usize,
    /// Records of another key class (another manager sharing the store), left to it.
    pub other_class: usize,
}

/// What a roll's replacement copies from the key it replaces: the roll builds the
/// replacement from these and shortens the old key only while they are still the same.
#[derive(PartialEq)]
struct Inherited<'a> {
    org: &'a OrgId,
    name: &'a str,
    scopes: &'a [Scope],
    owner: &'a Option<String>,
    meta: &'a BTreeMap<String, String>,
    rate_limits: &'a [RateLimit],
    credits: &'a Option<Credits>,
}

impl<'a> Inherited<'a> {
    fn of(r: &'a KeyRecord) -> Self {
        Inherited {
            org: &r.org,
            name: &r.name,
            scopes: &r.scopes,
            owner: &r.owner,
            meta: &r.meta,
            rate_limits: &r.rate_limits,
            credits: &r.credits,
        }
    }
}

/// Whether a roll may shorten `r` (the old key `id` as the shortening reads it), having
/// copied `inherited` from it into the replacement.
fn may_shorten(r: &KeyRecord, id: &KeyId, inherited: &Inherited<'_>) -> Result<(), Error> {
    if r.revoked_at.is_some() {
        return Err(Error::Revoked);
    }
    if let Some(other) = r.replaced_by {
        return Err(Error::Policy(format!(
            "key {id} was rolled meanwhile; its replacement is key {other}"
        )));
    }
    // A manager changed what the replacement copied (e.g. tightened its limits): the
    // replacement would silently carry the old configuration on. The revision is no test: a
    // sweep's notice mark or a rewrap bumps it too.
    if Inherited::of(r) != *inherited {
        return Err(Error::Conflict);
    }
    Ok(())
}

impl<S: KeyStore + 'static> KeyManager<S> {
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
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        self.open(&self.keyring(), &rec, Some(actor), &mut secret)?;
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

    /// Replaces a key without breaking its integrations: the replacement (same name, scopes,
    /// limits, credit configuration, owner and metadata; the policy's default expiry) is
    /// created first, then the old key's expiry becomes `min(its expiry, now + overlap)` —
    /// never later — and it records its replacement. A zero (or negative) overlap stops the
    /// old key now.
    ///
    /// A key is rolled once: rolling a key that already has a replacement is
    /// [`Error::Policy`] naming it (roll the replacement instead). Rolls count against
    /// `max_active_keys` like `generate`, except that the rolled key's own slot passes to its
    /// replacement: a roll at the limit works, and at most `max_active_keys + 1` keys work
    /// at once, only until that overlap ends.
    ///
    /// The replacement is built from the key as the roll first read it; if a manager changes
    /// what it copies (name, scopes, limits, credit configuration, owner, metadata) before the
    /// old key is shortened, the roll fails with [`Error::Conflict`] and deletes the
    /// replacement, and the old key keeps its new configuration and its expiry: roll again.
    /// Changes that copy nothing (a sweep's notices, last use, a rewrap) do not fail a roll.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`]; [`Error::NotFound`]; [`Error::Revoked`] / [`Error::Expired`]
    /// for a key that no longer works; [`Error::Policy`] (already rolled, the limit, or NUL in
    /// the actor's user id, recorded as the replacement's creator);
    /// [`Error::Integrity`]; [`Error::Conflict`] (repeated lost races, or the key changed while
    /// it was being rolled); [`Error::Store`].
    ///
    /// If writing the shortened old key fails, the old record is read again: when the write
    /// did commit (a lost reply), the roll succeeded; when the read shows it did not, the
    /// replacement is deleted again and that failure is returned. When that read fails
    /// too, the outcome is **unknown**: the replacement is kept (the old key may already stop
    /// at the cutoff and name it) and the read's error is returned ([`Error::Store`], or
    /// [`Error::Integrity`] for a record that fails its check). After an [`Error::Store`],
    /// read the key again (`get`): if `replaced_by` names a replacement, the roll took effect
    /// — [`reveal`](Self::reveal) the replacement (when allowed) or roll it to get a token
    /// before the cutoff; otherwise delete any key whose `replaces` names it, and roll again.
    ///
    /// A roll cancelled midway (its future dropped after the replacement was stored, e.g. by
    /// a client that went away) leaves that replacement working without anyone holding its
    /// token, as an unknown outcome may: the next roll of the key that takes effect deletes
    /// every working key whose `replaces` names the key and that the key does not name.
    pub async fn roll(
        &self,
        actor: &Actor,
        id: &KeyId,
        overlap: Duration,
    ) -> Result<(ApiKey, KeyInfo), Error> {
        Self::require_manager(actor)?;
        check_written_id("a user id", actor.user().as_str())?;
        let now = whole_seconds(self.inner.clock.now());
        let old = self.load(Some(actor), id).await?;
        if !self.authentic(&self.keyring(), &old, Some(actor)) {
            return Err(Error::Integrity);
        }
        match KeyStatus::of(&old, now) {
            KeyStatus::Revoked => return Err(Error::Revoked),
            KeyStatus::Expired => return Err(Error::Expired),
            KeyStatus::Active => {}
        }
        if let Some(next) = old.replaced_by {
            return Err(Error::Policy(format!(
                "key {id} was already rolled; its replacement is key {next} — roll that one instead"
            )));
        }
        let org_keys = self.inner.store.list(actor.org()).await?;
        let keyring = self.keyring();
        let mut working = 0usize;
        // Replacements of this key from rolls that never took effect (the key names none):
        // a roll cancelled between creating its replacement and shortening the key (its
        // future dropped, e.g. by a client that went away), or one whose outcome was unknown.
        // Nobody was given their tokens, yet they work: once this roll took effect, they go.
        let mut strays = Vec::new();
        for r in self.working_of(&org_keys, actor.org(), &keyring, now) {
            working += 1;
            if r.replaces == Some(*id) && r.replaced_by.is_none() {
                strays.push(r.id);
            }
        }
        let limit = self.inner.policy.active_key_limit();
        // The rolled key is among `working`; its slot passes to the replacement.
        if working.saturating_sub(1) >= limit {
            return Err(Error::Policy(format!(
                "this organization already has {working} active keys (some inside a roll's overlap); \
                 at most {limit} are allowed — wait for the overlap to end, or revoke or delete one first"
            )));
        }
        let inherited = Inherited::of(&old);
        let draft = Draft {
            class: self.inner.prefix.clone(),
            id: KeyId(0),
            org: inherited.org.clone(),
            name: inherited.name.to_owned(),
            scopes: inherited.scopes.to_vec(),
            created_at: now,
            created_by: actor.user().clone(),
            expires_at: self.inner.policy.resolve(None, now)?,
            replaces: Some(*id),
            owner: inherited.owner.clone(),
            meta: inherited.meta.clone(),
            rate_limits: inherited.rate_limits.to_vec(),
            credits: *inherited.credits,
        };
        let (key, new_rec) = self.create(draft).await?;
        let new_id = new_rec.id;
        // The replacement spends from the rolled key's balance: rolling never refills.
        if old.credits.is_some()
            && let Err(e) = self.share_credits(*id, new_id).await
        {
            self.discard_replacement(new_id).await;
            return Err(e);
        }
        // Saturating: an absurd overlap (it may come from a request) can never panic.
        let cutoff = whole_seconds(now.saturating_add(overlap.max(Duration::ZERO)));
        // Set when the old key, as the shortening read it, may not be shortened: then
        // nothing was written.
        let mut refused = false;
        let shortened = self
            .modify(Some(actor), id, |r| {
                if let Err(e) = may_shorten(r, id, &inherited) {
                    refused = true;
                    return Err(e);
                }
                r.replaced_by = Some(new_id);
                if r.expires_at.is_none_or(|e| e > cutoff) {
                    r.expires_at = Some(cutoff);
                }
                Ok(true)
            })
            .await;
        if let Err(e) = shortened {
            // A failed write may have committed with its reply lost: then the old key
            // already stops at the cutoff, and deleting the replacement would break its
            // integrations. So the replacement goes only when nothing was written, or a read
            // shows that the old key does not name it.
            let committed = if refused {
                Ok(false)
            } else {
                self.shortened_to(actor, id, new_id).await
            };
            match committed {
                Ok(false) => {
                    self.discard_replacement(new_id).await;
                    return Err(e);
                }
                Ok(true) => self.inner.cache.invalidate(id),
                Err(unknown) => {
                    self.inner.cache.invalidate(id);
                    tracing::error!(
                        target: "api_keys",
                        key_id = %id, replacement = %new_id, error = %e, check = %unknown,
                        "roll outcome unknown: shortening the old key failed and it could not \
                         be read back; the replacement is kept"
                    );
                    return Err(unknown);
                }
            }
        }
        // The key names this roll's replacement: any other replacement of it is a stray (or
        // that of a concurrent roll, which now fails and would delete it itself).
        // Audited as deletions by the manager who rolled: they were working keys.
        for stray in strays {
            if self.discard_replacement(stray).await {
                self.audit_best_effort(
                    AuditAction::Deleted,
                    Some(actor),
                    Some(actor.org()),
                    Some(stray),
                );
            }
        }
        self.audit_best_effort(
            AuditAction::Rolled {
                replacement: new_id,
            },
            Some(actor),
            Some(actor.org()),
            Some(*id),
        );
        Ok((key, self.info(&new_rec, now)))
    }

    /// Deletes the replacement of a roll that did not take effect, with its usage counters
    /// (its link to the old key's balance), as `delete` does. Best effort: a failure is
    /// logged, and the roll reports its own error.
    /// Whether this call deleted it.
    async fn discard_replacement(&self, new_id: KeyId) -> bool {
        let removed = {
            let _fence = self.inner.cache.fence(new_id);
            self.inner.store.delete(&new_id).await
        };
        match removed {
            Ok(deleted) => {
                self.forget_counters(new_id).await;
                deleted
            }
            Err(cleanup) => {
                crate::metrics::store_error(&cleanup);
                tracing::error!(target: "api_keys", key_id = %new_id, error = %cleanup, "could not delete the replacement of a failed roll");
                false
            }
        }
    }

    /// Whether the stored old key `id` names `new_id` as its replacement (a roll's shortening
    /// committed). `Ok(false)` only when a read shows it does not, or that the key is gone.
    ///
    /// # Errors
    /// The read's error, or [`Error::Integrity`] for a record that fails its check: either
    /// way, whether the shortening committed is unknown.
    async fn shortened_to(&self, actor: &Actor, id: &KeyId, new_id: KeyId) -> Result<bool, Error> {
        match self.inner.store.get(id).await? {
            None => Ok(false),
            Some(r) if r.id == *id && self.authentic(&self.keyring(), &r, Some(actor)) => {
                Ok(r.replaced_by == Some(new_id))
            }
            Some(_) => Err(Error::Integrity),
        }
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
        // The organization's keys, like `list`.
        self.audit_best_effort(AuditAction::Listed, Some(actor), Some(actor.org()), None);
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
                // Another class's records (a shared store) are not this manager's.
                if !r.is_undecodable() && r.class != self.inner.prefix {
                    continue;
                }
                if !self.authentic(&keyring, r, None) {
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
    /// Before it re-seals anything, it checks its current master key against the store: when
    /// records of this manager are already sealed under the current version (keys made or
    /// changed by nodes running it) and none of them passes its integrity check, the current
    /// key is not the one those nodes have — re-sealing under it would leave every other
    /// record under a key the service lacks — and nothing is done.
    ///
    /// # Errors
    /// [`Error::Store`] when a page cannot be read; [`Error::Integrity`], before anything is
    /// re-sealed, when records sealed under the current version exist and none of them opens
    /// with the current key (a wrong key; or, if the key is right, every such record is
    /// tampered: remove them first).
    pub async fn rewrap(&self) -> Result<RewrapReport, Error> {
        self.confirm_current_key().await?;
        let mut report = RewrapReport::default();
        let mut after: Option<KeyId> = None;
        loop {
            let page = self.inner.store.scan(after.as_ref(), SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for rec in &page {
                if rec.is_undecodable() {
                    // Reported, counted, and the rotation moves on.
                    self.audit_best_effort(
                        AuditAction::IntegrityFailure,
                        None,
                        Some(&rec.org),
                        Some(rec.id),
                    );
                    report.failed += 1;
                    continue;
                }
                if rec.class != self.inner.prefix {
                    // Another manager's key (a shared store): its own manager rewraps it.
                    report.other_class += 1;
                    continue;
                }
                let keyring = self.keyring();
                let current = keyring.current_version();
                let stays =
                    rec.sealed.key_version == current || keyring.is_next(rec.sealed.key_version);
                // A record left under its version is checked here (one moved is opened by
                // `modify`): a tampered row is a failure whatever version it names, never
                // "already current" or "newer".
                if stays && !self.authentic(&keyring, rec, None) {
                    report.failed += 1;
                    continue;
                }
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
}

impl<S: KeyStore + 'static> KeyManager<S> {
    /// `rewrap`'s check of its current master key: `Ok` when a record of this manager sealed
    /// under the current version passes its integrity check, or when there is none (nothing
    /// to compare with); [`Error::Integrity`] when there are some and none passes.
    async fn confirm_current_key(&self) -> Result<(), Error> {
        let keyring = self.keyring();
        let current = keyring.current_version();
        let mut after: Option<KeyId> = None;
        // The ids of the failing ones (the first few, for the log: an operator whose key is
        // right removes those rows).
        let mut failing: Vec<KeyId> = Vec::new();
        loop {
            let page = self.inner.store.scan(after.as_ref(), SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for rec in page.iter().filter(|r| {
                !r.is_undecodable()
                    && r.class == self.inner.prefix
                    && r.sealed.key_version == current
            }) {
                if rec.authenticate(&keyring, &self.inner.prefix).is_ok() {
                    return Ok(());
                }
                failing.push(rec.id);
            }
            if page.len() < SCAN_PAGE {
                break;
            }
        }
        if failing.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = failing.iter().take(16).map(ToString::to_string).collect();
        tracing::error!(
            target: "api_keys",
            version = current,
            records = failing.len(),
            key_ids = %shown.join(","),
            "rewrap refused: no record sealed under the current master-key version opens with the current key"
        );
        Err(Error::Integrity)
    }
}

fn expiring(info: &KeyInfo, now: OffsetDateTime, window: Duration) -> bool {
    info.status == KeyStatus::Active
        && info
            .expires_at
            .is_some_and(|e| e <= now.saturating_add(window))
}
