//! The hot path: `verify`.

use super::*;

/// Where the part of a verification that needs no waiting left it.
pub(crate) enum Step {
    /// Decided (every verification of a cached key with the in-process engine).
    Done(Result<Verified, Error>),
    /// Not cached: the store must be read; the presented secret is in the caller's buffer.
    Cold {
        id: KeyId,
        presented: crate::cache::Fingerprint,
    },
    /// Verified so far; the rest must wait.
    Wait(Wait),
}

/// What a verification of a genuine key still waits for.
pub(crate) enum Wait {
    /// Its limits, kept by a counter engine that may need the network.
    Spend {
        facts: Arc<Facts>,
        cost: u64,
        now_ms: i64,
        now: i64,
    },
    /// The last-use buffer, which asked to be written before the answer.
    Flush(Verified, super::uses::FlushDue),
}

/// The decision once the secret matched.
enum Decided {
    Now(Result<Verified, Error>),
    Wait(Wait),
}

impl<S: KeyStore + 'static> KeyManager<S> {
    /// Verifies a presented token for `scope`, spending 1 unit of the key's usage limits
    /// (see [`KeyManager::verify_with`]).
    ///
    /// # Errors
    /// As [`KeyManager::verify_with`].
    pub async fn verify(&self, token: &str, scope: &Scope) -> Result<Verified, Error> {
        self.verify_with(token, scope, 1).await
    }

    /// Verifies a presented token for `scope` and spends `cost` units of the key's usage
    /// limits (its rate limits and credits; a key without limits spends nothing).
    ///
    /// A `cost` of 0 spends nothing and is never refused by a limit (a free call, not a way
    /// to ask whether there is room). A `cost` above a rate limit's `limit` can never pass
    /// it: it is refused as [`Error::RateLimited`] in every window, and its `retry_after`
    /// only says when that window ends — charge such requests in smaller units.
    ///
    /// Order: parse and checksum (no I/O) → cache or `store.get(id)` → tag check → decrypt →
    /// constant-time compare of the secret → state checks (revoked, expired at
    /// `clock.now()`, scope) → usage limits (all of the key's limits together, all or
    /// nothing; a rate-limited request spends no credits). Only after the secret matched can
    /// the result be [`Error::Revoked`], [`Error::Expired`] or [`Error::ScopeNotAllowed`], and
    /// only a key that passed all of them spends anything or can be refused by its limits.
    ///
    /// # Errors
    /// [`Error::Malformed`] (never touches the store), [`Error::InvalidKey`] (unknown id,
    /// wrong secret, or the id of another manager's key class in a shared store), the state
    /// errors above, [`Error::RateLimited`] /
    /// [`Error::UsageExceeded`] (nothing spent), [`Error::LimitsUnavailable`] when the counter
    /// engine cannot decide and a limit fails closed, [`Error::Integrity`] for a tampered
    /// record or wrong master key, [`Error::Store`].
    pub async fn verify_with(
        &self,
        token: &str,
        scope: &Scope,
        cost: u64,
    ) -> Result<Verified, Error> {
        let started = crate::metrics::start();
        let result = self.verify_inner(token, scope, cost).await;
        crate::metrics::verification(started, &result);
        result
    }

    async fn verify_inner(&self, token: &str, scope: &Scope, cost: u64) -> Result<Verified, Error> {
        // The presented secret lives in this future's own zeroizing buffer (no copy is left
        // behind by moves); only the public id comes back by value.
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        match self.verify_now(token.as_bytes(), scope, cost, &mut secret) {
            Step::Done(result) => result,
            // What waits is boxed (it waits for I/O, next to which an allocation is nothing)
            // so that the hot path's future stays small to create and move.
            Step::Wait(wait) => Box::pin(self.wait(wait)).await,
            Step::Cold { id, presented } => {
                Box::pin(self.finish_cold(id, &secret, presented, scope, cost)).await
            }
        }
    }

    /// Finishes a verification whose [`KeyManager::verify_now`] answered [`Step::Cold`],
    /// from the same token: parsed again into this future's own zeroizing buffer (the first
    /// one is gone), without a second cache lookup.
    #[cfg(feature = "axum")]
    pub(crate) async fn verify_cold_token(
        &self,
        token: &[u8],
        id: KeyId,
        presented: crate::cache::Fingerprint,
        scope: &Scope,
        cost: u64,
    ) -> Result<Verified, Error> {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        // The token `verify_now` parsed: it parses to the same id again.
        match UntrustedToken::parse_into(&self.inner.prefix, token, &mut secret) {
            Ok(again) if again == id => {
                Box::pin(self.finish_cold(id, &secret, presented, scope, cost)).await
            }
            Ok(_) => Err(Error::InvalidKey),
            Err(e) => Err(e),
        }
    }

    /// The store read of a key the cache does not hold, then the decision. After a store
    /// read, expiry is decided at the time it returned.
    async fn finish_cold(
        &self,
        id: KeyId,
        secret: &Zeroizing<[u8; SECRET_LEN]>,
        presented: crate::cache::Fingerprint,
        scope: &Scope,
        cost: u64,
    ) -> Result<Verified, Error> {
        let facts = self.verify_cold(id, secret, presented).await?;
        match self.decide(facts, Instant::now(), scope, cost) {
            Decided::Now(result) => result,
            Decided::Wait(wait) => self.wait(wait).await,
        }
    }

    /// The part of a verification that needs no waiting: parse, cache lookup, and for a
    /// cached key all of the decision unless its counter engine or the last-use buffer must
    /// wait. The presented secret is parsed into `secret` (the caller's zeroizing buffer,
    /// which the cold path reads next).
    #[inline]
    pub(crate) fn verify_now(
        &self,
        token: &[u8],
        scope: &Scope,
        cost: u64,
        secret: &mut Zeroizing<[u8; SECRET_LEN]>,
    ) -> Step {
        let checked = UntrustedToken::check_id(&self.inner.prefix, token)
            .and_then(|id| Ok((id, UntrustedToken::secret_text(token)?)));
        let (id, text) = match checked {
            Ok(both) => both,
            Err(e) => {
                self.verify_failed(FailureClass::Malformed, None, None, Instant::now());
                return Step::Done(Err(e));
            }
        };
        let cache = &self.inner.cache;
        // The presented secret is fingerprinted as the token spells it: a cached key's
        // verification never decodes it. One monotonic reading serves the cache's TTL and
        // (through the clock) the expiry check.
        let presented = cache.fingerprint(text);
        let mono = Instant::now();
        let Some((facts, fingerprint)) = cache.get(&id, mono) else {
            // The store must be read: the secret's bytes, for the record's.
            if let Err(e) = UntrustedToken::secret_into(token, secret) {
                self.verify_failed(FailureClass::Malformed, None, None, mono);
                return Step::Done(Err(e));
            }
            return Step::Cold { id, presented };
        };
        if !bool::from(Cache::same_fingerprint(&presented, &fingerprint)) {
            // A matching fingerprint is of the key's own text, which is canonical (a PRF
            // collision aside), so the words are checked only here: a text that is not
            // canonical is a malformed token, not a wrong secret.
            if !UntrustedToken::canonical(text) {
                self.verify_failed(FailureClass::Malformed, None, None, mono);
                return Step::Done(Err(Error::Malformed));
            }
            self.verify_failed(FailureClass::InvalidKey, Some(&facts.org), Some(id), mono);
            return Step::Done(Err(Error::InvalidKey));
        }
        match self.decide(facts, mono, scope, cost) {
            Decided::Now(result) => Step::Done(result),
            Decided::Wait(wait) => Step::Wait(wait),
        }
    }

    /// Everything after the secret matched: state checks (revoked, expired at the clock's
    /// time for the monotonic reading `mono`, scope), then usage limits, then the last use.
    #[inline(always)]
    fn decide(&self, facts: Arc<Facts>, mono: Instant, scope: &Scope, cost: u64) -> Decided {
        // One reading of the clock: in milliseconds for a key with usage limits (their
        // windows), whole seconds otherwise.
        let now_ms = facts
            .limits
            .is_some()
            .then(|| self.inner.clock.now_unix_ms_at(mono));
        let now = match now_ms {
            Some(ms) => ms.div_euclid(1000),
            None => self.inner.clock.now_unix_at(mono),
        };
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
            self.verify_failed(class, Some(&facts.org), Some(facts.id), mono);
            return Decided::Now(Err(err));
        }
        // Usage limits last: a key refused for any other reason consumes nothing. One branch
        // for a key without limits; the in-process engine decides here, another engine may
        // have to wait.
        let spent = match (&facts.limits, now_ms, &self.inner.local) {
            (Some(limits), Some(now_ms), Some(local)) => {
                match self.spend_local(local, &facts, limits, cost, now_ms) {
                    Ok(spent) => Some(spent),
                    Err(e) => return Decided::Now(Err(e)),
                }
            }
            (Some(_), Some(now_ms), None) => {
                return Decided::Wait(Wait::Spend {
                    facts,
                    cost,
                    now_ms,
                    now,
                });
            }
            _ => None,
        };
        let flush = self.record_use(&facts, now);
        let verified = Verified::new(facts, spent);
        match flush {
            Some(due) => Decided::Wait(Wait::Flush(verified, due)),
            None => Decided::Now(Ok(verified)),
        }
    }

    /// Finishes a verification that had to wait.
    pub(crate) async fn wait(&self, wait: Wait) -> Result<Verified, Error> {
        match wait {
            Wait::Spend {
                facts,
                cost,
                now_ms,
                now,
            } => {
                let spent = match &facts.limits {
                    Some(limits) => Some(self.spend(&facts, limits, cost, now_ms).await?),
                    None => None,
                };
                if let Some(due) = self.record_use(&facts, now) {
                    self.flush_inline(due).await;
                }
                Ok(Verified::new(facts, spent))
            }
            Wait::Flush(verified, due) => {
                self.flush_inline(due).await;
                Ok(verified)
            }
        }
    }

    async fn verify_cold(
        &self,
        id: KeyId,
        presented: &Zeroizing<[u8; SECRET_LEN]>,
        presented_fp: crate::cache::Fingerprint,
    ) -> Result<Arc<Facts>, Error> {
        let cache = &self.inner.cache;
        let ticket = cache.ticket(&id);
        let rec = match self.inner.store.get(&id).await {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                // Deleted (another node's change, unheard): what this node cached of it must
                // not answer later, not even as a stale entry during an outage.
                cache.gone(ticket, &id);
                self.verify_failed(FailureClass::InvalidKey, None, Some(id), Instant::now());
                return Err(Error::InvalidKey);
            }
            Err(e) => {
                let e = Error::from(e);
                let class = if matches!(e, Error::Integrity) {
                    // A row the store cannot decode (damaged or tampered): as for a record
                    // that fails its tag below, what this node cached of the key before must
                    // not answer later as a stale entry.
                    cache.gone(ticket, &id);
                    FailureClass::Integrity
                } else {
                    if let Some(facts) = self.serve_stale(id, presented_fp) {
                        return Ok(facts);
                    }
                    FailureClass::Store
                };
                self.verify_failed(class, None, Some(id), Instant::now());
                return Err(e);
            }
        };
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        if let Err(e) = rec.open_to_verify(&self.keyring(), &self.inner.prefix, id, &mut secret) {
            // A record this node cannot trust (tampered, or sealed under a key it lacks): what
            // it cached of the key before must not answer later as a stale entry either.
            cache.gone(ticket, &id);
            let (class, org) = match e {
                // An authentic record of another manager's class (a shared store): the same
                // answer and audit as an unknown id, not decrypted, not cached.
                Error::InvalidKey => (FailureClass::InvalidKey, None),
                _ => (FailureClass::Integrity, Some(&rec.org)),
            };
            self.verify_failed(class, org, Some(id), Instant::now());
            return Err(e);
        }
        let matched: bool = crate::crypto::ct_eq_bytes(&secret, presented).into();
        let facts = Arc::new(Facts::from_owned(rec, self.inner.local.as_deref()));
        // A matching secret spells the presented text: its fingerprint is the presented one.
        let fingerprint = if matched {
            presented_fp
        } else {
            cache.fingerprint_of(&secret)
        };
        if !matched {
            // Cached too, so that the next wrong guess is answered from the cache whatever
            // the key's state (a revoked key must not answer slower than an active one), but
            // only into free room: wrong guesses never evict another key's entry.
            self.verify_failed(
                FailureClass::InvalidKey,
                Some(&facts.org),
                Some(id),
                Instant::now(),
            );
            cache.fill_if_room(ticket, facts, fingerprint);
            return Err(Error::InvalidKey);
        }
        cache.fill(ticket, facts.clone(), fingerprint);
        Ok(facts)
    }

    /// The store is unreachable: a cached entry within the configured maximum staleness
    /// answers, if the presented secret matches it (audited). A revoked entry is returned as
    /// it is, so the caller refuses it.
    fn serve_stale(&self, id: KeyId, presented: crate::cache::Fingerprint) -> Option<Arc<Facts>> {
        let now = Instant::now();
        let (facts, fingerprint) = self.inner.cache.get_stale(&id, now)?;
        if !bool::from(Cache::same_fingerprint(&presented, &fingerprint)) {
            return None;
        }
        if !facts.revoked {
            self.audit_best_effort(AuditAction::ServedStale, None, Some(&facts.org), Some(id));
        }
        Some(facts)
    }

    /// Audits a failed verification. Its time is the clock's whole second at the monotonic
    /// reading `at` (the one the hot path already took, or a fresh one), which spares the
    /// failure path a second reading of the wall clock.
    pub(super) fn verify_failed(
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
        if let Err(e) = self.inner.audit.record(&event)
            && crate::audit::sink_failure_logged(secs)
        {
            tracing::error!(
                target: "api_keys::audit",
                action = event.action.name(),
                outcome = class.as_str(),
                key_id = key_id.map(tracing::field::display),
                error = %e,
                "audit sink failed; this event was not recorded"
            );
        }
    }

    /// Number of records in the verified-record cache.
    pub fn cached_records(&self) -> usize {
        self.inner.cache.len()
    }
}
