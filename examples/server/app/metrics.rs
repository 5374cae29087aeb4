//! Verification counters (fed by the manager's audit events) and `GET /metrics` (Prometheus
//! text exposition of one organization's counts, for a key with the `prometheus` scope), both
//! built on the `metrics` facade and `metrics-exporter-prometheus`: one recorder per
//! organization, so that a scrape renders that organization's series and nothing else. The
//! crate's own metrics (feature `metrics`: every organization together) are served separately,
//! on an operator listener ([`serve_crate_metrics`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use ::metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use api_keys::time::OffsetDateTime;
use api_keys::{
    AuditAction, AuditEvent, AuditSink, BoxError, Error, FailureClass, KeyStore, OrgId,
    TracingAudit, Verified,
};
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

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

/// One organization's series: its own recorder (rendered alone) and its registered handles.
struct OrgSeries {
    recorder: PrometheusRecorder,
    outcomes: Vec<Counter>,
    /// `api_keys_keys{status}`: active, expired, revoked.
    keys: [Gauge; 3],
}

const VERIFICATIONS: &str = "api_keys_verifications_total";
const KEYS: &str = "api_keys_keys";

impl OrgSeries {
    fn new(org: &OrgId) -> OrgSeries {
        let recorder = PrometheusBuilder::new().build_recorder();
        recorder.describe_counter(
            VERIFICATIONS.into(),
            None,
            "API key verifications of this organization's keys, by outcome.".into(),
        );
        recorder.describe_gauge(
            KEYS.into(),
            None,
            "This organization's API keys, by status.".into(),
        );
        let meta = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let key = |name: &'static str, label: &'static str, value: &'static str| {
            Key::from_parts(
                name,
                vec![
                    Label::new("org", org.as_str().to_string()),
                    Label::new(label, value),
                ],
            )
        };
        let outcomes = OUTCOMES
            .iter()
            .map(|o| {
                let c = recorder.register_counter(&key(VERIFICATIONS, "outcome", o), &meta);
                // Registered at zero, so every outcome is in the exposition from the start.
                c.increment(0);
                c
            })
            .collect();
        let keys = ["active", "expired", "revoked"]
            .map(|status| recorder.register_gauge(&key(KEYS, "status", status), &meta));
        OrgSeries {
            recorder,
            outcomes,
            keys,
        }
    }
}

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

/// Verification counts per organization, for outcomes attributable to one of its keys.
/// Failures that name no known key (malformed tokens, unknown ids) belong to no organization
/// and are not shown in any organization's `/metrics`: they would tell one organization's key
/// holder whether a guessed key id exists elsewhere. They are in the audit log.
#[derive(Default)]
pub(crate) struct Metrics {
    by_org: Mutex<HashMap<OrgId, Arc<OrgSeries>>>,
}

impl Metrics {
    fn series(&self, org: &OrgId) -> Arc<OrgSeries> {
        let mut m = self.by_org.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry(org.clone())
            .or_insert_with(|| Arc::new(OrgSeries::new(org)))
            .clone()
    }

    fn count(&self, org: &OrgId, outcome: usize) {
        self.series(org).outcomes[outcome].increment(1);
    }
}

/// How long a cached list of an organization's key states serves scrapes before `/metrics`
/// reads the store again. Changes made through this server's management API are seen at once
/// (they drop the entry); changes made elsewhere (another node, a CLI) within this time.
pub const KEY_STATES_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Per organization, the states of its keys (revoked?, expiry), so that a scrape counts
/// active/expired/revoked keys at the current time without reading every record.
#[derive(Default)]
pub(crate) struct KeyCounts {
    by_org: Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    states: HashMap<OrgId, CachedStates>,
    /// Bumped by every `forget`: a read that began before a change is not cached after it.
    generation: u64,
}

/// When the states were read, and the states.
type CachedStates = (Instant, Arc<[KeyState]>);

#[derive(Clone, Copy)]
struct KeyState {
    revoked: bool,
    expires_at: Option<OffsetDateTime>,
}

impl KeyCounts {
    /// Drops `org`'s cached states (after a key of it was created, revoked, rolled, deleted).
    pub(crate) fn forget(&self, org: &OrgId) {
        let mut m = self.by_org.lock().unwrap_or_else(PoisonError::into_inner);
        m.states.remove(org);
        m.generation = m.generation.wrapping_add(1);
    }

    /// `org`'s (active, expired, revoked) counts at `now`, from the cache when it is fresh.
    async fn counts(&self, state: &AppState, org: &OrgId) -> Result<[u64; 3], Error> {
        let (cached, generation) = {
            let m = self.by_org.lock().unwrap_or_else(PoisonError::into_inner);
            let cached = m
                .states
                .get(org)
                .filter(|(at, _)| at.elapsed() < KEY_STATES_TTL)
                .map(|(_, states)| states.clone());
            (cached, m.generation)
        };
        let states = match cached {
            Some(states) => states,
            None => {
                let read_at = Instant::now();
                let records = state.manager.store().list(org).await?;
                let states: Arc<[KeyState]> = records
                    .iter()
                    .filter(|r| r.org() == org)
                    .map(|r| KeyState {
                        revoked: r.revoked_at().is_some(),
                        expires_at: r.expires_at(),
                    })
                    .collect();
                let mut m = self.by_org.lock().unwrap_or_else(PoisonError::into_inner);
                // A change during the read: answer what was read, but do not keep it.
                if m.generation == generation {
                    m.states.insert(org.clone(), (read_at, states.clone()));
                }
                states
            }
        };
        let now = state.manager.now();
        let mut counts = [0u64; 3];
        for k in states.iter() {
            let i = if k.revoked {
                2
            } else if k.expires_at.is_some_and(|e| now >= e) {
                1
            } else {
                0
            };
            counts[i] += 1;
        }
        Ok(counts)
    }
}

/// Counts failed verifications (by the class the manager reports) and forwards every event to
/// [`TracingAudit`].
pub(crate) struct MetricsAudit {
    pub(crate) metrics: Arc<Metrics>,
}

impl AuditSink for MetricsAudit {
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError> {
        if let (AuditAction::VerificationFailed(class), Some(org)) = (&event.action, &event.org) {
            self.metrics.count(org, outcome_index(*class));
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
        state.metrics.count(v.org(), 0);
    }
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// GET /metrics
// ---------------------------------------------------------------------------------------------

pub(crate) async fn metrics(
    State(state): State<AppState>,
    key: Verified,
) -> Result<Response, ApiError> {
    let org = key.org().clone();
    let [active, expired, revoked] = state.key_counts.counts(&state, &org).await?;
    let series = state.metrics.series(&org);
    for (gauge, n) in series.keys.iter().zip([active, expired, revoked]) {
        gauge.set(n as f64);
    }
    let out = series.recorder.handle().render();
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response())
}

/// Installs the process-wide Prometheus recorder for the crate's own metrics (feature
/// `metrics`: verification outcomes and latency, cache, feed, store errors, dropped audit
/// lines — every organization together). Call once, before serving them.
///
/// # Errors
/// Another recorder is already installed.
#[cfg(feature = "metrics")]
pub fn install_crate_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    api_keys::metrics::describe();
    Ok(handle)
}

/// Serves what [`install_crate_recorder`] records as `GET /metrics` on `listener`: an
/// operator's endpoint, kept off the public address, since it is not scoped to an
/// organization.
///
/// # Errors
/// The listener fails.
#[cfg(feature = "metrics")]
pub async fn serve_crate_metrics(
    listener: tokio::net::TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(), String> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    )],
                    handle.render(),
                )
            }
        }),
    );
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}
