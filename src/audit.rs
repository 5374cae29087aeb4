//! Audit events: every management action, every reveal, every failed verification.

use std::fmt;

use time::OffsetDateTime;

use crate::error::BoxError;
use crate::{KeyId, OrgId, UserId};

/// Why a verification failed, as an audit event records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureClass {
    /// Not a token of this manager (no store access happened).
    Malformed,
    /// Unknown id or wrong secret.
    InvalidKey,
    /// Genuine but expired.
    Expired,
    /// Genuine but revoked.
    Revoked,
    /// Genuine but not granted the scope.
    ScopeNotAllowed,
    /// The stored record failed its integrity check.
    Integrity,
    /// The store failed.
    Store,
}

impl FailureClass {
    /// A short stable name (`malformed`, `invalid_key`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureClass::Malformed => "malformed",
            FailureClass::InvalidKey => "invalid_key",
            FailureClass::Expired => "expired",
            FailureClass::Revoked => "revoked",
            FailureClass::ScopeNotAllowed => "scope_not_allowed",
            FailureClass::Integrity => "integrity",
            FailureClass::Store => "store",
        }
    }
}

/// What an audit event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditAction {
    /// A key was generated.
    Generated,
    /// An organization's keys were listed.
    Listed,
    /// One key's metadata was read.
    Viewed,
    /// A key's secret was revealed to a manager.
    Revealed,
    /// A key was rolled; `replacement` is the new key's id.
    Rolled {
        /// The id of the new key.
        replacement: KeyId,
    },
    /// A key was revoked.
    Revoked,
    /// A key was revoked and deleted.
    Deleted,
    /// A record was re-sealed under the current master-key version.
    Rewrapped {
        /// The version it was sealed under before.
        from_version: u32,
        /// The version it is sealed under now.
        to_version: u32,
    },
    /// A stored record failed its integrity check during a management operation or rewrap.
    IntegrityFailure,
    /// A verification failed.
    VerificationFailed(FailureClass),
}

impl AuditAction {
    /// A short stable name (`generated`, `revoked`, `verification_failed`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            AuditAction::Generated => "generated",
            AuditAction::Listed => "listed",
            AuditAction::Viewed => "viewed",
            AuditAction::Revealed => "revealed",
            AuditAction::Rolled { .. } => "rolled",
            AuditAction::Revoked => "revoked",
            AuditAction::Deleted => "deleted",
            AuditAction::Rewrapped { .. } => "rewrapped",
            AuditAction::IntegrityFailure => "integrity_failure",
            AuditAction::VerificationFailed(_) => "verification_failed",
        }
    }
}

/// One audit event. Carries ids only, never secret material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened.
    pub action: AuditAction,
    /// The manager who acted (`None` for verifications and host-level jobs).
    pub actor: Option<UserId>,
    /// The organization concerned, when known.
    pub org: Option<OrgId>,
    /// The key concerned, when known (a key id is public).
    pub key_id: Option<KeyId>,
    /// When it happened.
    pub at: OffsetDateTime,
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.action.name())?;
        if let AuditAction::VerificationFailed(c) = &self.action {
            write!(f, " ({})", c.as_str())?;
        }
        if let Some(k) = &self.key_id {
            write!(f, " key={k}")?;
        }
        if let Some(o) = &self.org {
            write!(f, " org={o}")?;
        }
        if let Some(a) = &self.actor {
            write!(f, " actor={a}")?;
        }
        Ok(())
    }
}

/// Receives audit events. Return an error when the event could not be recorded: a reveal then
/// fails closed (the secret is not returned).
pub trait AuditSink: Send + Sync + 'static {
    /// Records one event.
    ///
    /// # Errors
    /// Whatever kept the event from being recorded.
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError>;
}

/// The default sink: one `tracing` event per audit event (target `api_keys::audit`), at `WARN`
/// for failures and `INFO` otherwise.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingAudit;

impl AuditSink for TracingAudit {
    fn record(&self, e: &AuditEvent) -> Result<(), BoxError> {
        // Formatted only if a subscriber records the event: no allocation on the hot path.
        let key_id = e.key_id.map(tracing::field::display);
        let org = e.org.as_ref().map(OrgId::as_str);
        let actor = e.actor.as_ref().map(UserId::as_str);
        match &e.action {
            AuditAction::VerificationFailed(class) => tracing::warn!(
                target: "api_keys::audit",
                action = e.action.name(),
                outcome = class.as_str(),
                key_id,
                org,
                "API key verification failed"
            ),
            AuditAction::IntegrityFailure => tracing::error!(
                target: "api_keys::audit",
                action = e.action.name(),
                key_id,
                org,
                actor,
                "stored API key record failed its integrity check"
            ),
            other => tracing::info!(
                target: "api_keys::audit",
                action = other.name(),
                key_id,
                org,
                actor,
                "API key management action"
            ),
        }
        Ok(())
    }
}

impl<T: AuditSink> AuditSink for std::sync::Arc<T> {
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError> {
        (**self).record(event)
    }
}
