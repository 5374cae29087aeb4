//! The crate's error types.

use std::error::Error as StdError;

/// A boxed error that a store keeps as the source of a [`StoreError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Every failure of the crate.
///
/// Messages never contain secret material: no token, no part of a token, no key bytes.
/// Verification failures that would help an attacker are collapsed: an unknown key id and a
/// wrong secret are both [`Error::InvalidKey`], and the state errors ([`Error::Expired`],
/// [`Error::Revoked`], [`Error::ScopeNotAllowed`]) are only reported after the secret matched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The presented token is not a token of this manager: wrong length, wrong character set,
    /// wrong prefix, bad checksum or non-canonical encoding. Never reaches the store.
    #[error("malformed API key")]
    Malformed,
    /// The token is well formed but no key of this manager's class with that id and secret
    /// exists.
    #[error("invalid API key")]
    InvalidKey,
    /// The key is genuine but its expiry has passed.
    #[error("API key expired")]
    Expired,
    /// The key is genuine but has been revoked.
    #[error("API key revoked")]
    Revoked,
    /// The key is genuine and active but not granted the required scope.
    #[error("API key not allowed for this scope")]
    ScopeNotAllowed,
    /// The actor is not a manager of the organization.
    #[error("permission denied: only an organization's managers may manage its keys")]
    PermissionDenied,
    /// No such key in the actor's organization.
    #[error("API key not found")]
    NotFound,
    /// A stored record failed its integrity check (tampered, wrong master key, unknown key
    /// version, undecodable). The record is never accepted and never re-sealed.
    #[error("stored API key record failed its integrity check")]
    Integrity,
    /// The request is outside the configured policy; the message says what is allowed.
    #[error("policy: {0}")]
    Policy(String),
    /// A concurrent change won a compare-and-swap race too many times, or changed what the
    /// operation had read and depends on (e.g. a key's limits while it was being rolled);
    /// retry the operation.
    #[error("conflicting concurrent change; retry")]
    Conflict,
    /// The store failed.
    #[error("key store error")]
    Store(#[source] StoreError),
    /// The audit sink refused an event that had to be recorded (e.g. a reveal).
    #[error("audit event could not be recorded")]
    Audit(#[source] BoxError),
    /// The key is genuine and allowed, but one of its rate limits has no room for this
    /// request's cost now. Nothing was spent. Reported only after every other check passed.
    #[error("rate limit `{limit}` exceeded; retry after {retry_after:?}")]
    RateLimited {
        /// The refusing limit's name (the one whose window ends last, when several refuse).
        limit: String,
        /// Its limit per window.
        quota: u64,
        /// Its window.
        window: std::time::Duration,
        /// How long until every refusing limit has room for this cost.
        retry_after: std::time::Duration,
    },
    /// The key is genuine and allowed, but its usage credits do not cover this request's
    /// cost. Nothing was spent. Reported only after every other check passed.
    #[error("usage credits exhausted")]
    UsageExceeded,
    /// The usage counters cannot decide now (their engine is unreachable) and a limit of the
    /// key fails closed.
    #[error("usage limits cannot be checked now")]
    LimitsUnavailable(#[source] crate::CounterError),
    /// The operating system's random number generator failed.
    #[error("operating system randomness unavailable")]
    Random,
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        crate::metrics::store_error(&e);
        match e {
            StoreError::Corrupt(_) => Error::Integrity,
            other => Error::Store(other),
        }
    }
}

/// Failures reported by a [`KeyStore`](crate::KeyStore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `insert` of an id that already exists.
    #[error("a key with this id already exists")]
    Duplicate,
    /// `update` found a different revision than expected.
    #[error("revision mismatch")]
    Conflict,
    /// `update` of a missing row.
    #[error("no such key")]
    NotFound,
    /// A stored row could not be decoded into a [`KeyRecord`](crate::KeyRecord).
    #[error("stored record could not be decoded")]
    Corrupt(#[source] BoxError),
    /// The backend failed (I/O, connection, database error).
    #[error("store backend failed")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(e: impl Into<BoxError>) -> Self {
        StoreError::Backend(e.into())
    }
}
