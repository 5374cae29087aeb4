//! Verification counters (fed by the manager's audit events) and `GET /metrics` (Prometheus
//! text exposition of one organization's counts, for a key with the `prometheus` scope).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use api_keys::{
    AuditAction, AuditEvent, AuditSink, BoxError, Error, FailureClass, KeyStore, OrgId,
    TracingAudit, Verified,
};
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::errors::ApiError;

/// Verification outcomes, in exposition order.
const OUTCOMES: [&str; 9] = [
    "success",
    "malformed",
    "invalid_key",
    "expired",
    "revoked",
    "scope_not_allowed",
    "integrity",
    "store",
    "other",
];

type Counts = [u64; OUTCOMES.len()];

fn outcome_index(class: FailureClass) -> usize {
    let name = match class {
        FailureClass::Malformed => "malformed",
        FailureClass::InvalidKey => "invalid_key",
        FailureClass::Expired => "expired",
        FailureClass::Revoked => "revoked",
        FailureClass::ScopeNotAllowed => "scope_not_allowed",
        FailureClass::Integrity => "integrity",
        FailureClass::Store => "store",
        _ => "other",
    };
    OUTCOMES
        .iter()
        .position(|o| *o == name)
        .unwrap_or(OUTCOMES.len() - 1)
}

/// Verification counts: per organization for outcomes attributable to one of its keys, and
/// "unattributed" for failures that name no known key (malformed tokens, unknown ids).
#[derive(Default)]
pub(crate) struct Metrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Default)]
struct MetricsInner {
    by_org: HashMap<OrgId, Counts>,
    unattributed: Counts,
}

impl Metrics {
    fn count(&self, org: Option<&OrgId>, outcome: usize) {
        let mut m = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = match org {
            Some(org) => m.by_org.entry(org.clone()).or_default(),
            None => &mut m.unattributed,
        };
        counts[outcome] += 1;
    }

    fn snapshot(&self, org: &OrgId) -> (Counts, Counts) {
        let m = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (
            m.by_org.get(org).copied().unwrap_or_default(),
            m.unattributed,
        )
    }
}

/// Counts failed verifications (by the class the manager reports) and forwards every event to
/// [`TracingAudit`].
pub(crate) struct MetricsAudit {
    pub(crate) metrics: Arc<Metrics>,
}

impl AuditSink for MetricsAudit {
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError> {
        if let AuditAction::VerificationFailed(class) = &event.action {
            self.metrics
                .count(event.org.as_ref(), outcome_index(*class));
        }
        TracingAudit.record(event)
    }
}

/// Counts a successful verification (runs behind [`api_keys::axum::ApiKeyLayer`], so only verified requests
/// reach it).
pub(crate) async fn count_success(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(v) = req.extensions().get::<Verified>() {
        state.metrics.count(Some(v.org()), 0);
    }
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// GET /metrics
// ---------------------------------------------------------------------------------------------

/// Escapes a Prometheus label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) async fn metrics(
    State(state): State<AppState>,
    key: Verified,
) -> Result<Response, ApiError> {
    let org = key.org().clone();
    let now = state.manager.now();
    let records = state
        .manager
        .store()
        .list(&org)
        .await
        .map_err(Error::from)?;
    let (mut active, mut expired, mut revoked) = (0u64, 0u64, 0u64);
    for r in records.iter().filter(|r| r.org() == &org) {
        if r.revoked_at().is_some() {
            revoked += 1;
        } else if r.expires_at().is_some_and(|e| now >= e) {
            expired += 1;
        } else {
            active += 1;
        }
    }
    let (counts, unattributed) = state.metrics.snapshot(&org);
    let org_label = label(org.as_str());
    let mut out = String::new();
    out.push_str(
        "# HELP api_keys_verifications_total API key verifications of this organization's keys, by outcome.\n\
         # TYPE api_keys_verifications_total counter\n",
    );
    for (outcome, n) in OUTCOMES.iter().zip(counts) {
        let _ = writeln!(
            out,
            "api_keys_verifications_total{{org=\"{org_label}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    out.push_str(
        "# HELP api_keys_unattributed_verification_failures_total Failed verifications naming no known key (malformed tokens, unknown key ids), by outcome.\n\
         # TYPE api_keys_unattributed_verification_failures_total counter\n",
    );
    for (outcome, n) in OUTCOMES.iter().zip(unattributed).skip(1) {
        let _ = writeln!(
            out,
            "api_keys_unattributed_verification_failures_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    out.push_str(
        "# HELP api_keys_keys This organization's API keys, by status.\n\
         # TYPE api_keys_keys gauge\n",
    );
    for (status, n) in [
        ("active", active),
        ("expired", expired),
        ("revoked", revoked),
    ] {
        let _ = writeln!(
            out,
            "api_keys_keys{{org=\"{org_label}\",status=\"{status}\"}} {n}"
        );
    }
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response())
}
