//! The layer's usage-limit responses: 429 with `Retry-After` and the IETF HTTPAPI
//! `RateLimit-Policy` / `RateLimit` fields, and those fields on admitted responses.
//!
//! Field syntax (draft-ietf-httpapi-ratelimit-headers, structured-field lists): one item per
//! limit, named by the limit's name, `RateLimit-Policy: "burst";q=10;w=1` (quota and window
//! in seconds) and `RateLimit: "burst";r=3;t=1` (remaining and seconds until the window
//! resets; both rounded up). Structured-field integers have at most 15 digits, so a quota
//! or remainder above that (limits go up to `MAX_UNITS` = 2^53) is written as
//! 999 999 999 999 999: a larger number would make a conforming parser drop the whole field.

use std::fmt::Write as _;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::{Error, Verified};

/// `RateLimit-Policy`.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `d` in whole seconds, rounded up, as a structured-field integer. Saturating: a host's
/// [`UsageCounters`](crate::UsageCounters) may answer any `retry_after`, up to `Duration::MAX`.
fn ceil_secs(d: Duration) -> u64 {
    sf_int(d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)))
}

/// The largest structured-field integer (RFC 9651: at most 15 digits).
const SF_INT_MAX: u64 = 999_999_999_999_999;

/// `n` as a structured-field integer may be written (clamped to [`SF_INT_MAX`]).
fn sf_int(n: u64) -> u64 {
    n.min(SF_INT_MAX)
}

/// The two fields for a verified key with rate limits (`None` for a key without: nothing is
/// formatted or allocated for it).
pub(super) fn fields(v: &Verified) -> Option<(HeaderValue, HeaderValue)> {
    let mut limits = v.limits().peekable();
    limits.peek()?;
    let (mut policy, mut state) = (String::new(), String::new());
    for l in limits {
        let sep = if policy.is_empty() { "" } else { ", " };
        let _ = write!(
            policy,
            "{sep}\"{}\";q={};w={}",
            l.name,
            sf_int(l.limit),
            ceil_secs(l.window).max(1)
        );
        let _ = write!(
            state,
            "{sep}\"{}\";r={};t={}",
            l.name,
            sf_int(l.remaining),
            ceil_secs(l.reset_after)
        );
    }
    // Limit names match `[a-z][a-z0-9._-]*`: always valid inside a quoted string.
    Some((
        HeaderValue::from_str(&policy).ok()?,
        HeaderValue::from_str(&state).ok()?,
    ))
}

/// Adds the fields to an admitted response.
pub(super) fn insert(headers: &mut HeaderMap, fields: (HeaderValue, HeaderValue)) {
    headers.insert(RATELIMIT_POLICY.clone(), fields.0);
    headers.insert(RATELIMIT.clone(), fields.1);
}

/// The response for a usage-limit refusal, or `None` for any other error.
pub(super) fn refusal<B: From<String>>(e: &Error) -> Option<Response<B>> {
    let (status, code, retry_after) = match e {
        Error::RateLimited { retry_after, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            Some(ceil_secs(*retry_after).max(1)),
        ),
        Error::UsageExceeded => (StatusCode::TOO_MANY_REQUESTS, "usage_exceeded", None),
        Error::LimitsUnavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "limits_unavailable",
            Some(1),
        ),
        _ => return None,
    };
    let mut resp = Response::new(B::from(format!("{{\"error\":\"{code}\"}}")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if let Some(s) = retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(s));
    }
    if let Error::RateLimited {
        limit,
        quota,
        window,
        retry_after,
    } = e
    {
        let policy = format!(
            "\"{limit}\";q={};w={}",
            sf_int(*quota),
            ceil_secs(*window).max(1)
        );
        let state = format!("\"{limit}\";r=0;t={}", ceil_secs(*retry_after).max(1));
        if let (Ok(p), Ok(s)) = (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&state),
        ) {
            insert(h, (p, s));
        }
    }
    Some(resp)
}
