//! Crate metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`).
//!
//! A library records; the host installs the exporter it likes (Prometheus, StatsD, ...). With
//! the feature off, every function here is an empty `#[inline(always)]` function and the
//! verification timer is a zero-sized value: the hot path does not change.
//!
//! Names and units follow Prometheus' naming guide (`_total` counters, base unit seconds).
//! Labels only take values from small fixed sets — never a key id, an organization or a token.
//! Counters are per process: several managers in one process add up.
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `api_keys_verifications_total` | counter | `outcome`: `ok`, `malformed`, `invalid_key`, `expired`, `revoked`, `scope_not_allowed`, `integrity`, `store`, and one per further error variant (e.g. `rate_limited`, `usage_exceeded`) |
//! | `api_keys_verification_duration_seconds` | histogram | — |
//! | `api_keys_cache_hits_total` / `api_keys_cache_misses_total` | counter | — |
//! | `api_keys_cache_evictions_total` | counter | — |
//! | `api_keys_feed_connected` | gauge | — (1 live, 0 down) |
//! | `api_keys_feed_reconnects_total` | counter | — |
//! | `api_keys_store_errors_total` | counter | `kind`: `backend`, `corrupt`, `other` |
//! | `api_keys_audit_lines_dropped_total` | counter | — |

#[cfg(feature = "metrics")]
use std::borrow::Cow;

use crate::{Error, StoreError, Verified};

/// `api_keys_verifications_total{outcome}`.
#[cfg(feature = "metrics")]
pub const VERIFICATIONS_TOTAL: &str = "api_keys_verifications_total";
/// Verification latency, seconds.
#[cfg(feature = "metrics")]
pub const VERIFICATION_DURATION_SECONDS: &str = "api_keys_verification_duration_seconds";
/// Verifications answered from the cache.
#[cfg(feature = "metrics")]
pub const CACHE_HITS_TOTAL: &str = "api_keys_cache_hits_total";
/// Verifications that had to read the store.
#[cfg(feature = "metrics")]
pub const CACHE_MISSES_TOTAL: &str = "api_keys_cache_misses_total";
/// Entries evicted from a full cache.
#[cfg(feature = "metrics")]
pub const CACHE_EVICTIONS_TOTAL: &str = "api_keys_cache_evictions_total";
/// 1 while the store's change feed is live, 0 while it is down.
#[cfg(feature = "metrics")]
pub const FEED_CONNECTED: &str = "api_keys_feed_connected";
/// Times the change feed came back after being down.
#[cfg(feature = "metrics")]
pub const FEED_RECONNECTS_TOTAL: &str = "api_keys_feed_reconnects_total";
/// Store failures that surfaced (`kind` label).
#[cfg(feature = "metrics")]
pub const STORE_ERRORS_TOTAL: &str = "api_keys_store_errors_total";
/// Failed-verification log lines left out by the log bound of [`crate::TracingAudit`].
#[cfg(feature = "metrics")]
pub const AUDIT_LINES_DROPPED_TOTAL: &str = "api_keys_audit_lines_dropped_total";

/// When a verification started: an [`Instant`](std::time::Instant) with the feature, nothing
/// without it.
#[cfg(feature = "metrics")]
pub(crate) type Start = std::time::Instant;
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Copy)]
pub(crate) struct Start;

/// Starts timing a verification.
#[inline(always)]
pub(crate) fn start() -> Start {
    #[cfg(feature = "metrics")]
    {
        std::time::Instant::now()
    }
    #[cfg(not(feature = "metrics"))]
    {
        Start
    }
}

/// Counts a finished verification by its outcome and records its latency.
#[inline(always)]
pub(crate) fn verification(started: Start, result: &Result<Verified, Error>) {
    #[cfg(feature = "metrics")]
    {
        let outcome = match result {
            Ok(_) => Cow::Borrowed("ok"),
            Err(e) => outcome(e),
        };
        ::metrics::counter!(VERIFICATIONS_TOTAL, "outcome" => outcome).increment(1);
        ::metrics::histogram!(VERIFICATION_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (started, result);
}

/// The `outcome` label of a failed verification: the one mapping from errors to labels.
/// Variants named here get a fixed label; any other variant (e.g. the usage limits'
/// `RateLimited`, `UsageExceeded`) is labelled by its variant name in snake case
/// (`rate_limited`, `usage_exceeded`), so a new refusal is counted under its own label
/// without touching this function. Variant names are a small fixed set, never data.
#[cfg(feature = "metrics")]
pub(crate) fn outcome(e: &Error) -> Cow<'static, str> {
    Cow::Borrowed(match e {
        Error::Malformed => "malformed",
        Error::InvalidKey => "invalid_key",
        Error::Expired => "expired",
        Error::Revoked => "revoked",
        Error::ScopeNotAllowed => "scope_not_allowed",
        Error::Integrity => "integrity",
        Error::Store(_) => "store",
        other => return Cow::Owned(variant_label(other)),
    })
}

/// `SomeVariant { .. }` → `some_variant`, from the derived `Debug` output's leading
/// identifier; formatting stops right after it, so the fields are never formatted.
#[cfg(feature = "metrics")]
fn variant_label(e: &Error) -> String {
    use std::fmt::Write;
    struct Ident(String);
    impl Write for Ident {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for c in s.chars() {
                if !c.is_ascii_alphanumeric() {
                    return Err(std::fmt::Error);
                }
                if c.is_ascii_uppercase() {
                    if !self.0.is_empty() {
                        self.0.push('_');
                    }
                    self.0.push(c.to_ascii_lowercase());
                } else {
                    self.0.push(c);
                }
                if self.0.len() > 48 {
                    return Err(std::fmt::Error);
                }
            }
            Ok(())
        }
    }
    let mut w = Ident(String::new());
    let _ = write!(w, "{e:?}");
    if w.0.is_empty() {
        "error".to_string()
    } else {
        w.0
    }
}

/// A cache lookup of the hot path: answered from the cache or not.
#[inline(always)]
pub(crate) fn cache_lookup(hit: bool) {
    #[cfg(feature = "metrics")]
    {
        if hit {
            ::metrics::counter!(CACHE_HITS_TOTAL).increment(1);
        } else {
            ::metrics::counter!(CACHE_MISSES_TOTAL).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = hit;
}

/// Entries evicted from a full cache shard.
#[inline(always)]
pub(crate) fn cache_evicted(n: usize) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(CACHE_EVICTIONS_TOTAL).increment(n as u64);
    #[cfg(not(feature = "metrics"))]
    let _ = n;
}

/// The change feed went live (`reconnect`: after having been down) or down.
#[inline(always)]
pub(crate) fn feed(live: bool, reconnect: bool) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::gauge!(FEED_CONNECTED).set(if live { 1.0 } else { 0.0 });
        if reconnect {
            ::metrics::counter!(FEED_RECONNECTS_TOTAL).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (live, reconnect);
}

/// A store failure surfaced (as an error, or logged by a best-effort write).
#[inline(always)]
pub(crate) fn store_error(e: &StoreError) {
    #[cfg(feature = "metrics")]
    {
        let kind = match e {
            StoreError::Backend(_) => "backend",
            StoreError::Corrupt(_) => "corrupt",
            _ => "other",
        };
        ::metrics::counter!(STORE_ERRORS_TOTAL, "kind" => kind).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = e;
}

/// A failed-verification log line was left out by the log bound.
#[inline(always)]
pub(crate) fn audit_line_dropped() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(AUDIT_LINES_DROPPED_TOTAL).increment(1);
}

/// Registers every metric's unit and help text with the installed recorder. The manager's
/// builder calls it, so a recorder installed before the first [`crate::KeyManager`] is built
/// gets them without the host doing anything; call it again after installing a recorder
/// later. Harmless to call many times.
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        VERIFICATIONS_TOTAL,
        Unit::Count,
        "API key verifications by outcome (ok, or why it failed)"
    );
    describe_histogram!(
        VERIFICATION_DURATION_SECONDS,
        Unit::Seconds,
        "Time to verify an API key, whatever the outcome"
    );
    describe_counter!(
        CACHE_HITS_TOTAL,
        Unit::Count,
        "Verifications answered from the verified-record cache"
    );
    describe_counter!(
        CACHE_MISSES_TOTAL,
        Unit::Count,
        "Verifications that read the key store"
    );
    describe_counter!(
        CACHE_EVICTIONS_TOTAL,
        Unit::Count,
        "Cache entries evicted because the cache was full"
    );
    describe_gauge!(
        FEED_CONNECTED,
        Unit::Count,
        "1 while the store's change feed is live, 0 while it is down"
    );
    describe_counter!(
        FEED_RECONNECTS_TOTAL,
        Unit::Count,
        "Times the store's change feed came back after being down"
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        Unit::Count,
        "Key store failures by kind"
    );
    describe_counter!(
        AUDIT_LINES_DROPPED_TOTAL,
        Unit::Count,
        "Failed-verification log lines left out by the per-window log bound"
    );
}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn describe() {}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn verification_outcomes_have_fixed_labels() {
        assert_eq!(outcome(&Error::Malformed), "malformed");
        assert_eq!(outcome(&Error::InvalidKey), "invalid_key");
        assert_eq!(outcome(&Error::ScopeNotAllowed), "scope_not_allowed");
        assert_eq!(
            outcome(&Error::Store(StoreError::backend(std::io::Error::other(
                "down"
            )))),
            "store"
        );
    }

    /// Variants without a fixed label (such as the usage limits' refusals) are labelled by
    /// their name, and their fields never reach the label.
    #[test]
    fn other_variants_are_labelled_by_name_only() {
        assert_eq!(outcome(&Error::PermissionDenied), "permission_denied");
        assert_eq!(outcome(&Error::Conflict), "conflict");
        assert_eq!(outcome(&Error::Policy("secret detail".into())), "policy");
        assert_eq!(
            outcome(&Error::Audit(Box::new(std::io::Error::other("x")))),
            "audit"
        );
    }
}

#[cfg(all(test, not(feature = "metrics")))]
mod off {
    /// Off, the verification timer is nothing at all: the hot path's future does not grow.
    #[test]
    fn the_timer_is_zero_sized_when_off() {
        assert_eq!(std::mem::size_of::<super::Start>(), 0);
    }
}
