//! Revoke by possession: whoever holds a key's whole token can report it leaked
//! ([`KeyManager::revoke_leaked`]) — holding it proves it is out.

use serde::Serialize;
use zeroize::Zeroizing;

use crate::audit::AuditAction;
use crate::record::whole_seconds;
use crate::sweep::AutomationEvent;
use crate::token::{SECRET_LEN, UntrustedToken};
use crate::{Error, KeyManager, KeyStore, RevocationReason, StoreError};

/// Longest leak source (e.g. the URL where a token was found), in bytes.
pub const MAX_LEAK_SOURCE_BYTES: usize = 512;
/// Most tokens in one [`KeyManager::revoke_leaked_batch`] call (as GitHub's credential
/// revocation API).
pub const MAX_LEAK_BATCH: usize = 1000;

/// The answer to a leak report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakVerdict {
    /// The token is genuine (its secret matches a key of this manager, whatever the key's
    /// state): the key is revoked.
    TruePositive,
    /// Anything else — a wrong secret, an unknown id, a malformed token, another prefix — but
    /// a record this node cannot check ([`LeakVerdict::Unverified`]). The answer is the same
    /// for all of them and says nothing more.
    FalsePositive,
    /// This node could not judge the token: the stored record of its id failed its integrity
    /// check here — tampered with, or sealed under a master key this node's keyring lacks
    /// (e.g. a previous key missing mid-rotation) — so whether the secret matches is unknown,
    /// and the key may still verify on correctly configured nodes. Nothing was revoked; the
    /// [`AuditAction::IntegrityFailure`] event names the key. Not a false positive: report it
    /// again from a node with the right keyring (or after repairing the record).
    Unverified,
}

/// A source is shown to managers (audit events, notifications, the admin page): no control
/// characters, and no bidirectional controls, which would make `https://x/\u{202e}txt.exe`
/// display as another URL (the rule key names follow).
fn check_source(source: &str) -> Result<(), Error> {
    if source.len() > MAX_LEAK_SOURCE_BYTES
        || source
            .chars()
            .any(|c| c.is_control() || crate::policy::is_bidi_control(c))
    {
        return Err(Error::Policy(format!(
            "a leak source must be at most {MAX_LEAK_SOURCE_BYTES} bytes with no control \
             characters and no bidirectional controls (U+202A–U+202E, U+2066–U+2069)"
        )));
    }
    Ok(())
}

impl<S: KeyStore + 'static> KeyManager<S> {
    /// Revokes the key of a leaked `token`, reported as found at `source` (e.g. a URL). No
    /// actor: holding the whole token proves it is out.
    ///
    /// When the token is genuine — its secret matches, compared in constant time, also for a
    /// key already revoked or expired — the key is revoked with reason
    /// [`RevocationReason::Leaked`] and `source` (idempotent: a key already revoked keeps its
    /// first reason), the audit sink gets [`AuditAction::Leaked`] and the notifier
    /// [`AutomationEvent::Leaked`] (when this report revoked it), and the answer is
    /// [`LeakVerdict::TruePositive`]. When the stored record of the token's id fails its
    /// integrity check on this node — tampered with, or sealed under a master-key version this
    /// keyring lacks (a node not yet given a new key mid-rotation) — the token cannot be judged:
    /// nothing is revoked, the audit sink gets [`AuditAction::IntegrityFailure`] naming the
    /// key, and the answer is [`LeakVerdict::Unverified`] (never a false positive: the key may
    /// still verify on correctly configured nodes). For every other token the answer is
    /// [`LeakVerdict::FalsePositive`], nothing else. The token is never logged or echoed.
    ///
    /// # Errors
    /// [`Error::Policy`] for a source longer than [`MAX_LEAK_SOURCE_BYTES`] or with control
    /// characters or bidirectional controls; [`Error::Store`]; [`Error::Conflict`] after repeated lost races.
    pub async fn revoke_leaked(&self, token: &str, source: &str) -> Result<LeakVerdict, Error> {
        check_source(source)?;
        self.leaked_one(token, source).await
    }

    /// [`KeyManager::revoke_leaked`] for up to [`MAX_LEAK_BATCH`] `(token, source)` pairs; the
    /// verdicts in the same order. A token this node cannot judge
    /// ([`LeakVerdict::Unverified`]) is one verdict among the others: the batch goes on past it.
    ///
    /// # Errors
    /// [`Error::Policy`] for more than [`MAX_LEAK_BATCH`] reports or an invalid source (checked
    /// before anything is revoked); [`Error::Store`] / [`Error::Conflict`] at the first report
    /// that fails (the ones before it are done; calling again with the whole batch is safe).
    pub async fn revoke_leaked_batch(
        &self,
        reports: &[(&str, &str)],
    ) -> Result<Vec<LeakVerdict>, Error> {
        if reports.len() > MAX_LEAK_BATCH {
            return Err(Error::Policy(format!(
                "at most {MAX_LEAK_BATCH} leaked tokens per call ({} given)",
                reports.len()
            )));
        }
        for (_, source) in reports {
            check_source(source)?;
        }
        let mut out = Vec::with_capacity(reports.len());
        for (token, source) in reports {
            out.push(self.leaked_one(token, source).await?);
        }
        Ok(out)
    }

    async fn leaked_one(&self, token: &str, source: &str) -> Result<LeakVerdict, Error> {
        let mut presented = Zeroizing::new([0u8; SECRET_LEN]);
        let Ok(id) =
            UntrustedToken::parse_into(&self.inner.prefix, token.as_bytes(), &mut presented)
        else {
            return Ok(LeakVerdict::FalsePositive);
        };
        let rec = match self.inner.store.get(&id).await {
            Ok(Some(rec)) => rec,
            Ok(None) => return Ok(LeakVerdict::FalsePositive),
            Err(StoreError::Corrupt(_)) => {
                self.audit_best_effort(AuditAction::IntegrityFailure, None, None, Some(id));
                return Ok(LeakVerdict::Unverified);
            }
            Err(e) => return Err(e.into()),
        };
        // Another manager's key in a shared store is not ours to judge.
        if !rec.is_undecodable() && rec.class != self.inner.prefix {
            return Ok(LeakVerdict::FalsePositive);
        }
        let mut stored = Zeroizing::new([0u8; SECRET_LEN]);
        // The main tag decides, as in `verify`: a key whose revocation details alone were
        // forged still verifies, so its leaked token is genuine and gets it revoked
        // (`revoke_for` replaces the details and reports the forgery).
        let opened = if rec.id == id {
            rec.open_replacing_details(&self.keyring(), &self.inner.prefix, id, &mut stored)
        } else {
            Err(Error::Integrity)
        };
        let Ok(details_authentic) = opened else {
            self.audit_best_effort(
                AuditAction::IntegrityFailure,
                None,
                Some(&rec.org),
                Some(id),
            );
            // Not judged: the secret may match, and the key may verify where the keyring
            // holds its master key. Calling it a false positive would close the report.
            return Ok(LeakVerdict::Unverified);
        };
        if !bool::from(crate::crypto::ct_eq_bytes(&stored, &presented)) {
            return Ok(LeakVerdict::FalsePositive);
        }
        if !details_authentic && rec.revoked_at.is_some() {
            // Revoked (its main tag says so: `verify` refuses it) under forged details,
            // which a no-op revocation would keep: genuine, and nothing to revoke.
            self.integrity_failure(None, &rec);
            return Ok(LeakVerdict::TruePositive);
        }
        let now = whole_seconds(self.inner.clock.now());
        let reason = RevocationReason::Leaked {
            source: source.to_string(),
        };
        match self.revoke_for(None, &id, reason, now).await {
            Ok((rec, true)) => {
                let event = AutomationEvent::Leaked {
                    source: source.to_string(),
                };
                self.announce(event, None, &rec, now);
            }
            Ok((rec, false)) => self.audit_best_effort(
                AuditAction::Leaked { revoked: false },
                None,
                Some(&rec.org),
                Some(id),
            ),
            // Deleted meanwhile: it works nowhere any more.
            Err(Error::NotFound) => {}
            // Its record failed its integrity check when re-read to revoke it (changed
            // meanwhile; reported there): not revoked, so not judged either.
            Err(Error::Integrity) => return Ok(LeakVerdict::Unverified),
            Err(e) => return Err(e),
        }
        Ok(LeakVerdict::TruePositive)
    }
}
