//! Usage limits: spending on verify, and the managers' `set_limits` / `set_credits`.

use super::*;
use crate::key::{KeyLimits, Spent};
use crate::limits::{Refused, Verdict};
use crate::{Credits, RateLimit};

/// The clock's time in Unix milliseconds, rounded down (before 1970 too) as
/// [`crate::Clock::now_unix_ms`], which verifications read: rounding toward zero put the last
/// moment of a day before 1970 in the next day's millisecond.
fn unix_ms(t: OffsetDateTime) -> i64 {
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

impl<S: KeyStore + 'static> KeyManager<S> {
    /// Spends `cost` on every limit of a verified key, all or nothing, through the counter
    /// engine at `now_ms` (the verification's reading of the manager's clock); refusals are
    /// audited (bounded like every failed verification).
    pub(super) async fn spend(
        &self,
        facts: &Facts,
        limits: &KeyLimits,
        cost: u64,
        now_ms: i64,
    ) -> Result<Spent, Error> {
        if let Some(local) = &self.inner.local {
            return self.spend_local(local, facts, limits, cost, now_ms);
        }
        let req = UsageRequest {
            key: facts.id,
            org: &facts.org,
            limits: &limits.rate_limits,
            credits: limits.credits.as_ref(),
            cost,
            now_ms,
        };
        let decided = match self.inner.counters.consume(req) {
            Consumed::Ready(r) => r,
            Consumed::Pending(f) => f.await,
        };
        match decided {
            Ok(d) => {
                let (verdict, degraded) = Verdict::from_decision(d, &limits.rate_limits, now_ms);
                self.settle(facts, limits, &verdict, degraded, cost, now_ms)
            }
            Err(e) => {
                self.verify_failed(
                    FailureClass::LimitsUnavailable,
                    Some(&facts.org),
                    Some(facts.id),
                    Instant::now(),
                );
                Err(Error::LimitsUnavailable(e))
            }
        }
    }

    /// [`KeyManager::spend`] with the in-process engine, which never waits: through the
    /// handle these cached facts keep (which has everything it needs in its first cache line
    /// for a key's first limit).
    #[inline]
    pub(super) fn spend_local(
        &self,
        local: &crate::LocalCounters,
        facts: &Facts,
        limits: &KeyLimits,
        cost: u64,
        now_ms: i64,
    ) -> Result<Spent, Error> {
        let verdict = local.decide_with(
            &limits.local,
            facts.id,
            facts.org.as_str(),
            cost,
            now_ms,
            None,
        );
        if verdict.refused == Refused::No && verdict.left.credits.is_none() {
            // Admitted, nothing to audit (no credits to run out): straight into the report,
            // without `settle`'s copy of the verdict.
            return Ok(Spent {
                left: verdict.left,
                at_ms: now_ms,
            });
        }
        self.settle(facts, limits, &verdict, false, cost, now_ms)
    }

    /// What an engine decided, as the verification's answer (audited).
    #[inline]
    fn settle(
        &self,
        facts: &Facts,
        limits: &KeyLimits,
        verdict: &Verdict,
        degraded: bool,
        cost: u64,
        now_ms: i64,
    ) -> Result<Spent, Error> {
        let refused =
            |class| self.verify_failed(class, Some(&facts.org), Some(facts.id), Instant::now());
        match verdict.refused {
            Refused::No => {
                if degraded {
                    self.audit_best_effort(
                        AuditAction::LimitsFailedOpen,
                        None,
                        Some(&facts.org),
                        Some(facts.id),
                    );
                }
                if cost > 0 && verdict.left.credits == Some(0) {
                    // This verification spent the last credits: raised once per exhaustion.
                    self.audit_best_effort(
                        AuditAction::CreditsExhausted,
                        None,
                        Some(&facts.org),
                        Some(facts.id),
                    );
                }
                Ok(Spent {
                    left: verdict.left,
                    at_ms: now_ms,
                })
            }
            Refused::Rate { limit, retry_after } => {
                refused(FailureClass::RateLimited);
                let l = limits.rate_limits.get(limit);
                Err(Error::RateLimited {
                    limit: l.map(|l| l.name().to_owned()).unwrap_or_default(),
                    quota: l.map_or(0, RateLimit::limit),
                    window: l.map_or(StdDuration::ZERO, RateLimit::window),
                    retry_after,
                })
            }
            Refused::Credits => {
                refused(FailureClass::UsageExceeded);
                Err(Error::UsageExceeded)
            }
        }
    }

    /// Replaces a key's rate limits (at most [`crate::MAX_RATE_LIMITS`], names unique; an
    /// empty list removes them). The change is sealed under the record's tag with
    /// compare-and-swap and audited (`limits_changed`; the limits the key already has change
    /// nothing and are neither written nor audited); counts of limits that keep their name,
    /// window and scope carry on (a key's own limit made organization-wide counts on in the
    /// organization's shared count, and the reverse starts the key's own count afresh).
    ///
    /// # Errors
    /// [`Error::PermissionDenied`]; [`Error::Policy`] for invalid limits or limits outside the
    /// policy's maxima ([`Policy::max_rate_limits`], [`Policy::max_rate`]: with a maximum rate
    /// an empty list is refused); [`Error::NotFound`];
    /// [`Error::Integrity`]; [`Error::Conflict`]; [`Error::Store`].
    pub async fn set_limits(
        &self,
        actor: &Actor,
        id: &KeyId,
        limits: Vec<RateLimit>,
    ) -> Result<KeyInfo, Error> {
        Self::require_manager(actor)?;
        check_limits(&limits, None)?;
        self.inner.policy.check_rate_limits(&limits)?;
        let (rec, changed) = self
            .modify(Some(actor), id, |r| {
                if r.rate_limits == limits {
                    return Ok(false);
                }
                r.rate_limits = limits.clone();
                Ok(true)
            })
            .await?;
        if changed {
            self.audit_best_effort(
                AuditAction::LimitsChanged,
                Some(actor),
                Some(actor.org()),
                Some(*id),
            );
        }
        Ok(self.info(&rec, self.inner.clock.now()))
    }

    /// Sets a key's credit configuration and balance: `Some(credits)` makes the balance
    /// `credits.initial()` now (with its refill schedule from then on); `None` removes the
    /// budget. Sealed with compare-and-swap and audited (`credits_changed`).
    ///
    /// # Errors
    /// [`Error::PermissionDenied`]; [`Error::Policy`] for invalid credits or credits above
    /// [`Policy::max_credits`] (with that maximum, `None` is refused); [`Error::NotFound`];
    /// [`Error::Integrity`]; [`Error::Conflict`]; [`Error::Store`];
    /// [`Error::LimitsUnavailable`] when the balance could not be written to the counters
    /// (the configuration is written; retry to set the balance).
    pub async fn set_credits(
        &self,
        actor: &Actor,
        id: &KeyId,
        credits: Option<Credits>,
    ) -> Result<KeyInfo, Error> {
        Self::require_manager(actor)?;
        if let Some(c) = &credits {
            c.check()?;
        }
        self.inner.policy.check_credits(credits.as_ref())?;
        let (rec, _) = self
            .modify(Some(actor), id, |r| {
                r.credits = credits;
                Ok(true)
            })
            .await?;
        self.audit_best_effort(
            AuditAction::CreditsChanged,
            Some(actor),
            Some(actor.org()),
            Some(*id),
        );
        let now = self.inner.clock.now();
        // The configuration and the balance are two writes: a concurrent `set_credits` may
        // write its configuration after ours and its balance before ours, leaving our balance
        // under its configuration (e.g. 1 000 credits for a key whose record says 10). After
        // each balance write the record is read again; while it names another configuration,
        // that one's balance is written, so the last balance written always matches the last
        // configuration stored.
        let mut written = credits;
        for _ in 0..CAS_RETRIES {
            let Some(c) = &written else { break };
            self.inner
                .counters
                .set_credits(*id, c, c.initial(), unix_ms(now))
                .await
                .map_err(Error::LimitsUnavailable)?;
            let stored = match self.load(Some(actor), id).await {
                Ok(r) if self.authentic(&self.keyring(), &r, Some(actor)) => r.credits,
                // Deleted, unreadable or failing its check: nothing to match.
                _ => break,
            };
            if stored == written {
                break;
            }
            written = stored;
        }
        Ok(self.info(&rec, now))
    }

    /// A key's remaining credits now (`None` for a key without credits), for a management
    /// page. Spends nothing.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`]; [`Error::NotFound`]; [`Error::Integrity`];
    /// [`Error::Store`]; [`Error::LimitsUnavailable`].
    pub async fn credits_remaining(&self, actor: &Actor, id: &KeyId) -> Result<Option<u64>, Error> {
        Self::require_manager(actor)?;
        let rec = self.load(Some(actor), id).await?;
        if !self.authentic(&self.keyring(), &rec, Some(actor)) {
            return Err(Error::Integrity);
        }
        let left = self
            .inner
            .counters
            .credits(*id, rec.credits.as_ref(), unix_ms(self.inner.clock.now()))
            .await
            .map_err(Error::LimitsUnavailable)?;
        // A read of one key, like `get`.
        self.audit_best_effort(
            AuditAction::Viewed,
            Some(actor),
            Some(actor.org()),
            Some(*id),
        );
        Ok(left)
    }

    /// Makes a roll's replacement spend from the rolled key's balance.
    pub(super) async fn share_credits(&self, from: KeyId, to: KeyId) -> Result<(), Error> {
        self.inner
            .counters
            .link_credits(from, to)
            .await
            .map_err(Error::LimitsUnavailable)
    }

    /// Forgets a deleted key's counters (best effort).
    pub(crate) async fn forget_counters(&self, id: KeyId) {
        if let Err(e) = self.inner.counters.forget(id).await {
            tracing::warn!(target: "api_keys", key_id = %id, error = %e, "could not forget a deleted key's usage counters");
        }
    }
}
