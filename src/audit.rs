//! Audit events: every management action, every reveal, every failed verification.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

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
    /// Genuine and allowed, but refused by one of its rate limits.
    RateLimited,
    /// Genuine and allowed, but its usage credits are exhausted.
    UsageExceeded,
    /// The usage counters could not decide and a limit fails closed.
    LimitsUnavailable,
}

impl FailureClass {
    const ALL: [FailureClass; 10] = [
        FailureClass::Malformed,
        FailureClass::InvalidKey,
        FailureClass::Expired,
        FailureClass::Revoked,
        FailureClass::ScopeNotAllowed,
        FailureClass::Integrity,
        FailureClass::Store,
        FailureClass::RateLimited,
        FailureClass::UsageExceeded,
        FailureClass::LimitsUnavailable,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

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
            FailureClass::RateLimited => "rate_limited",
            FailureClass::UsageExceeded => "usage_exceeded",
            FailureClass::LimitsUnavailable => "limits_unavailable",
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
    /// Someone holding a key's whole token reported it leaked (`revoke_leaked`); `revoked`
    /// says whether this report revoked it (`false`: it was already revoked).
    Leaked {
        /// Whether this report revoked the key.
        revoked: bool,
    },
    /// A key was revoked because its creator left (`revoke_created_by`).
    RevokedDepartedUser,
    /// The sweep warned that a key expires within `lead`.
    ExpiryWarning {
        /// The warning's lead time.
        lead: time::Duration,
    },
    /// The sweep announced that a key expired.
    Expired,
    /// The sweep warned that an unused key will be revoked.
    UnusedWarning,
    /// The sweep revoked a key unused for longer than the policy allows.
    RevokedUnused,
    /// The sweep deleted a key that stopped working longer ago than the retention.
    Purged,
    /// A key was accepted from the cache although the store could not confirm it (the store
    /// was unreachable and `serve_stale_while_store_unreachable` is set).
    ServedStale,
    /// A key's rate limits were changed (`set_limits`).
    LimitsChanged,
    /// A key's credits were set (`set_credits`).
    CreditsChanged,
    /// A verification spent a key's last credits: its next use is refused until a refill or
    /// `set_credits` (raised once each time the balance reaches zero).
    CreditsExhausted,
    /// A verification was admitted without checking some of its limits: the counter engine
    /// was unreachable and those limits fail open. Logged with the same bound as failed
    /// verifications.
    LimitsFailedOpen,
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
            AuditAction::Leaked { .. } => "leaked",
            AuditAction::RevokedDepartedUser => "revoked_departed_user",
            AuditAction::ExpiryWarning { .. } => "expiry_warning",
            AuditAction::Expired => "expired",
            AuditAction::UnusedWarning => "unused_warning",
            AuditAction::RevokedUnused => "revoked_unused",
            AuditAction::Purged => "purged",
            AuditAction::ServedStale => "served_stale",
            AuditAction::LimitsChanged => "limits_changed",
            AuditAction::CreditsChanged => "credits_changed",
            AuditAction::CreditsExhausted => "credits_exhausted",
            AuditAction::LimitsFailedOpen => "limits_failed_open",
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
            write!(f, " org={}", Field(o.as_str()))?;
        }
        if let Some(a) = &self.actor {
            write!(f, " actor={}", Field(a.as_str()))?;
        }
        Ok(())
    }
}

/// A host-given id as the value of a `name=value` field: as it is when plain, else quoted
/// and escaped (`{:?}`) — organization and user ids may hold any character, and a newline,
/// a space or a `=` in one must not add a line or a field to the event's text.
struct Field<'a>(&'a str);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && !self.0.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '=' | '"' | '\\')
                    || crate::policy::is_bidi_control(c)
            });
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// Receives audit events. Return an error when the event could not be recorded: a reveal then
/// fails closed (the secret is not returned). Any other event's failure is logged (target
/// `api_keys::audit`, `ERROR`) with the event's ids and the error; for the events that can
/// come once per request (failed verifications, [`AuditAction::ServedStale`],
/// [`AuditAction::LimitsFailedOpen`]) with the per-window bound of [`TracingAudit`], so a
/// flood of requests while the sink is down does not flood the log.
pub trait AuditSink: Send + Sync + 'static {
    /// Records one event.
    ///
    /// # Errors
    /// Whatever kept the event from being recorded.
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError>;
}

/// The default sink: `tracing` events (target `api_keys::audit`), at `ERROR` for integrity
/// failures, `WARN` for failed verifications, answers served stale and limits that failed
/// open, and `INFO` otherwise.
///
/// Management actions, reveals and integrity failures are logged one line each, always.
/// Failed verifications are logged with a bound, so that a flood of bad tokens cannot flood
/// the logs: per failure class and key id (where there is one), the first
/// [`LOG_FULL_PER_WINDOW`] failures of each [`LOG_WINDOW_SECS`]-second window are logged in
/// full (the budgets sit in 1 024 slots chosen by a per-process keyed hash: a class and id
/// sharing a slot share its budget, and no sender can choose which do; a line without a key
/// id has a budget of its own per class); the rest are counted, and one summary line per
/// class (`suppressed = N`, the exact
/// count of the window) follows at the first failure of that class in a later window. The
/// bound is per process. Exact counts of every failure reach any other sink the host
/// installs (the sink is called for every event); [`TracingAudit::suppressed_total`] counts
/// the lines left out. Two other events that can come once per request are bounded the same
/// way: [`AuditAction::ServedStale`] (during a store outage, every request of a warm key;
/// with summary lines of its own) and [`AuditAction::LimitsFailedOpen`] (counted with the
/// `limits_unavailable` failures).
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingAudit;

/// Bounded lines (failed verifications, stale answers) logged in full per class, key id and
/// window (see [`TracingAudit`]).
pub const LOG_FULL_PER_WINDOW: u32 = 5;
/// The window of the log bound on failed verifications and stale answers, in seconds.
pub const LOG_WINDOW_SECS: i64 = 10;
const LOG_SLOTS: usize = 1024;

/// What a bounded line is about: a failed verification (by class), a key accepted from
/// the cache while the store is unreachable, a per-request event that the host's sink
/// refused, or a secret-scanning report refused before it was read (anyone can send one).
#[derive(Clone, Copy)]
enum Bounded {
    Failed(FailureClass),
    Stale,
    SinkFailed,
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    ScanRefused,
    /// The axum layer's 503 warning (the key store unreachable): one per request otherwise.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    HttpUnavailable,
    /// The secret-scanning endpoint's error for GitHub's public keys that cannot be read:
    /// one per report otherwise. A budget of its own, so that a flood of refused reports
    /// does not hide the outage (nor the outage the refusals).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    ScanKeysUnavailable,
}

impl Bounded {
    const COUNT: usize = FailureClass::ALL.len() + 5;

    fn index(self) -> usize {
        match self {
            Bounded::Failed(class) => class.index(),
            Bounded::Stale => FailureClass::ALL.len(),
            Bounded::SinkFailed => FailureClass::ALL.len() + 1,
            Bounded::ScanRefused => FailureClass::ALL.len() + 2,
            Bounded::HttpUnavailable => FailureClass::ALL.len() + 3,
            Bounded::ScanKeysUnavailable => FailureClass::ALL.len() + 4,
        }
    }

    fn action(self) -> &'static str {
        match self {
            Bounded::Failed(_) => "verification_failed",
            Bounded::Stale => AuditAction::ServedStale.name(),
            Bounded::SinkFailed => "audit_sink_failed",
            Bounded::ScanRefused => "secret_scanning_refused",
            Bounded::HttpUnavailable => "http_unavailable",
            Bounded::ScanKeysUnavailable => "secret_scanning_keys_unavailable",
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            Bounded::Failed(class) => class.as_str(),
            Bounded::Stale => AuditAction::ServedStale.name(),
            Bounded::SinkFailed => "audit_sink_failed",
            Bounded::ScanRefused => "secret_scanning_refused",
            Bounded::HttpUnavailable => "store",
            Bounded::ScanKeysUnavailable => "secret_scanning_keys_unavailable",
        }
    }

    fn summary(self) -> &'static str {
        match self {
            Bounded::Failed(_) => {
                "API key verification failures not logged one by one in an earlier window"
            }
            Bounded::Stale => {
                "API keys accepted from the cache while the key store was unreachable, not \
                 logged one by one in an earlier window"
            }
            Bounded::SinkFailed => {
                "per-request audit events the audit sink refused, not logged one by one in an \
                 earlier window"
            }
            Bounded::ScanRefused => {
                "secret-scanning reports refused (bad signature, size or headers), not logged \
                 one by one in an earlier window"
            }
            Bounded::HttpUnavailable => {
                "HTTP requests answered 503 because the key store was unreachable, not logged \
                 one by one in an earlier window"
            }
            Bounded::ScanKeysUnavailable => {
                "secret-scanning reports answered 500 because GitHub's public keys were \
                 unavailable, not logged one by one in an earlier window"
            }
        }
    }
}

/// One slot of the bound, shared by the (class, key id) pairs that hash to it: the window it
/// counts and how many lines it logged in that window.
struct Slot {
    window: AtomicI64,
    logged: AtomicU32,
}

/// Per class: the window being summarized and the lines suppressed in it.
struct Summary {
    window: AtomicI64,
    suppressed: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const SLOT: Slot = Slot {
    window: AtomicI64::new(i64::MIN),
    logged: AtomicU32::new(0),
};
#[allow(clippy::declare_interior_mutable_const)]
const SUMMARY: Summary = Summary {
    window: AtomicI64::new(i64::MIN),
    suppressed: AtomicU64::new(0),
};
static SLOTS: [Slot; LOG_SLOTS] = [SLOT; LOG_SLOTS];
static KEYLESS_SLOTS: [Slot; Bounded::COUNT] = [SLOT; Bounded::COUNT];
static SUMMARIES: [Summary; Bounded::COUNT] = [SUMMARY; Bounded::COUNT];
static SUPPRESSED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// The per-process key of [`slot_of`].
fn slot_key() -> &'static std::collections::hash_map::RandomState {
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEY.get_or_init(std::collections::hash_map::RandomState::new)
}

/// The log-bound slot of a line of `kind` about `key_id`, by a keyed hash: key ids are public
/// and a token's id is the sender's choice, so with an unkeyed mix anyone could pick ids
/// whose failures share a chosen key's slot and use up its lines (the failures of a revoked
/// key's stolen token then left no line naming it). Under a per-process random key, which ids
/// share a slot is no one's choice.
fn slot_of(key: &impl std::hash::BuildHasher, kind: usize, key_id: Option<KeyId>) -> usize {
    (key.hash_one((kind, key_id.map(|k| k.value()))) % LOG_SLOTS as u64) as usize
}

impl TracingAudit {
    /// Bounded lines (failed verifications, stale answers, per-request events an audit sink
    /// refused) this process left out of the log so far (counted in the summary
    /// lines).
    pub fn suppressed_total() -> u64 {
        SUPPRESSED_TOTAL.load(Ordering::Relaxed)
    }

    /// Whether this line is logged in full; emits the kind's summary of an earlier window
    /// first, when one is due.
    fn admit(kind: Bounded, key_id: Option<KeyId>, at: i64) -> bool {
        let window = at.div_euclid(LOG_WINDOW_SECS);
        let summary = &SUMMARIES[kind.index()];
        let seen = summary.window.load(Ordering::Acquire);
        if seen != window
            && summary
                .window
                .compare_exchange(seen, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let n = summary.suppressed.swap(0, Ordering::AcqRel);
            if n > 0 {
                // On the target of the kind's own lines (a `tracing` target is a constant).
                macro_rules! summarize {
                    ($target:literal) => {
                        tracing::warn!(
                            target: $target,
                            action = kind.action(),
                            outcome = kind.outcome(),
                            suppressed = n,
                            window_secs = LOG_WINDOW_SECS,
                            "{}",
                            kind.summary()
                        )
                    };
                }
                match kind {
                    Bounded::ScanRefused | Bounded::ScanKeysUnavailable => {
                        summarize!("api_keys::secret_scanning")
                    }
                    Bounded::HttpUnavailable => summarize!("api_keys::http"),
                    _ => summarize!("api_keys::audit"),
                }
            }
        }
        // A line without a key id has a slot of its own kind: a flood of failures under
        // many ids fills every hashed slot and must not take the whole budget of the lines
        // that name no key (refused secret-scanning reports, 503 warnings, sink failures).
        let slot = match key_id {
            Some(_) => &SLOTS[slot_of(slot_key(), kind.index(), key_id)],
            None => &KEYLESS_SLOTS[kind.index()],
        };
        let w = slot.window.load(Ordering::Acquire);
        if w != window
            && slot
                .window
                .compare_exchange(w, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.logged.store(0, Ordering::Release);
        }
        if slot.logged.fetch_add(1, Ordering::AcqRel) < LOG_FULL_PER_WINDOW {
            true
        } else {
            // Keep the counter from wrapping under a long flood.
            slot.logged.store(LOG_FULL_PER_WINDOW, Ordering::Relaxed);
            summary.suppressed.fetch_add(1, Ordering::AcqRel);
            SUPPRESSED_TOTAL.fetch_add(1, Ordering::Relaxed);
            crate::metrics::audit_line_dropped();
            false
        }
    }
}

impl AuditSink for TracingAudit {
    fn record(&self, e: &AuditEvent) -> Result<(), BoxError> {
        // Formatted only if a subscriber records the event: no allocation on the hot path.
        let key_id = e.key_id.map(tracing::field::display);
        let org = e.org.as_ref().map(OrgId::as_str);
        let actor = e.actor.as_ref().map(UserId::as_str);
        match &e.action {
            AuditAction::VerificationFailed(class) => {
                if Self::admit(Bounded::Failed(*class), e.key_id, e.at.unix_timestamp()) {
                    tracing::warn!(
                        target: "api_keys::audit",
                        action = e.action.name(),
                        outcome = class.as_str(),
                        key_id,
                        org,
                        "API key verification failed"
                    );
                }
            }
            AuditAction::ServedStale => {
                // Bounded too: during an outage every request of a warm key is one.
                if Self::admit(Bounded::Stale, e.key_id, e.at.unix_timestamp()) {
                    tracing::warn!(
                        target: "api_keys::audit",
                        action = e.action.name(),
                        key_id,
                        org,
                        "API key accepted from the cache while the key store is unreachable"
                    );
                }
            }
            AuditAction::LimitsFailedOpen => {
                // Bounded like failed verifications: a dead counter engine would otherwise
                // log one line per request.
                if Self::admit(
                    Bounded::Failed(FailureClass::LimitsUnavailable),
                    e.key_id,
                    e.at.unix_timestamp(),
                ) {
                    tracing::warn!(
                        target: "api_keys::audit",
                        action = e.action.name(),
                        key_id,
                        org,
                        "usage limits not checked (counters unreachable; the limits fail open)"
                    );
                }
            }
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

/// Whether the failure of the host's sink to record an event that can come once per request
/// (a failed verification, a stale answer, limits that failed open; at Unix second `at`) is
/// logged in full: bounded like failed verifications themselves (one budget for all keys), so
/// a flood of requests while the sink is down does not flood the log.
pub(crate) fn sink_failure_logged(at: i64) -> bool {
    TracingAudit::admit(Bounded::SinkFailed, None, at)
}

/// Whether a refused secret-scanning report (at Unix second `at`) is logged in full: anyone
/// can post one, so the lines are bounded like failed verifications (one budget), with a
/// `suppressed=N` summary.
#[cfg(feature = "axum")]
pub(crate) fn scan_refusal_logged(at: i64) -> bool {
    TracingAudit::admit(Bounded::ScanRefused, None, at)
}

/// Whether the secret-scanning endpoint's error for GitHub's public keys that cannot be read
/// (at Unix second `at`) is logged in full: anyone can post a report, so the lines are
/// bounded, with a budget of their own.
#[cfg(feature = "axum")]
pub(crate) fn scan_keys_unavailable_logged(at: i64) -> bool {
    TracingAudit::admit(Bounded::ScanKeysUnavailable, None, at)
}

/// Whether the axum layer's warning for a 503 (the key store unreachable) is logged in full:
/// during an outage every request gets one, so the lines share the bound.
#[cfg(feature = "axum")]
pub(crate) fn unavailable_logged() -> bool {
    use crate::Clock as _;
    TracingAudit::admit(
        Bounded::HttpUnavailable,
        None,
        crate::SystemClock.now_unix(),
    )
}

impl<T: AuditSink> AuditSink for std::sync::Arc<T> {
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError> {
        (**self).record(event)
    }
}

#[cfg(test)]
mod slot_tests;
