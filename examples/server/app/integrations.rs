//! What the server plugs into its key manager besides the store and the master keys: webhook
//! delivery of every management action and every automation event, GitHub's secret-scanning
//! partner endpoint, and the manager's clock (tests use a `ManualClock`).

use std::sync::Arc;
use std::time::Instant;

use api_keys::axum::secret_scanning::{PublicKeys, endpoint};
use api_keys::time::OffsetDateTime;
use api_keys::{AuditEvent, AuditSink, BoxError, Clock, Policy};
use axum::Router;

use super::AppState;
use super::metrics::MetricsAudit;
use super::webhooks::Webhooks;

/// Where GitHub posts the leaked tokens it finds (the URL a host registers with GitHub, on
/// its public name). Exempt from the `Host` check (see [`super::serve::guard`]): GitHub calls
/// it through the host's public name, and every request must carry GitHub's signature anyway.
pub const SECRET_SCANNING_PATH: &str = "/github/secret-scanning";

/// What the host plugs in. `Default` is the plain server: the default policy, no webhooks,
/// no partner endpoint, the system clock.
#[derive(Clone, Default)]
pub struct Integrations {
    /// The key policy (expiry periods, reveal, warnings, unused keys, retention).
    pub policy: Policy,
    /// Every management action's audit event and every automation event (sweep, leak,
    /// offboarding) delivered as a signed webhook.
    pub webhooks: Option<Webhooks>,
    /// GitHub's secret-scanning public keys: mounts the partner endpoint at
    /// [`SECRET_SCANNING_PATH`].
    pub github_keys: Option<PublicKeys>,
    /// The manager's clock; the system clock when `None`.
    pub clock: Option<Arc<dyn Clock>>,
}

/// The server's audit sink: the existing handling (verification counters, then `tracing`)
/// and, when configured, the webhooks. Every sink sees every event, whatever another one
/// answered; the first error is reported.
pub(crate) struct ServerAudit {
    pub(crate) metrics: MetricsAudit,
    pub(crate) webhooks: Option<Webhooks>,
}

impl AuditSink for ServerAudit {
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError> {
        let logged = self.metrics.record(event);
        let sent = match &self.webhooks {
            Some(hooks) => hooks.record(event),
            None => Ok(()),
        };
        logged.and(sent)
    }
}

/// A clock chosen at run time.
pub(crate) struct SharedClock(pub(crate) Arc<dyn Clock>);

impl Clock for SharedClock {
    fn now(&self) -> OffsetDateTime {
        self.0.now()
    }

    fn now_unix(&self) -> i64 {
        self.0.now_unix()
    }

    fn now_unix_at(&self, monotonic: Instant) -> i64 {
        self.0.now_unix_at(monotonic)
    }
}

/// The partner endpoint's route, when GitHub's keys are configured (else an empty router).
pub(crate) fn secret_scanning_routes(state: &AppState) -> Router<AppState> {
    match &state.github_keys {
        Some(keys) => Router::new().route(
            SECRET_SCANNING_PATH,
            endpoint(state.manager.clone(), keys.clone()),
        ),
        None => Router::new(),
    }
}
