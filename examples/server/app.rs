//! The example server's application: state, the demo session stand-in, the JSON management
//! API, `/metrics` (Prometheus) and `/scim/v2/Users` (SCIM 2.0), both guarded by API keys.
//!
//! `main.rs` serves [`router`]; the integration tests include this file and serve the same
//! router on an ephemeral port. The README's HTTP section describes the JSON API.

// Relative to this file's directory, so that the modules resolve both from `main.rs`
// (`mod app;`) and from a test that includes this file with `#[path = ".../app.rs"]`.
#[path = "app/errors.rs"]
pub mod errors;
#[path = "app/integrations.rs"]
pub mod integrations;
#[path = "app/limits.rs"]
pub mod limits;
#[path = "app/manage.rs"]
pub mod manage;
#[path = "app/metrics.rs"]
pub mod metrics;
#[path = "app/openapi.rs"]
pub mod openapi;
#[path = "app/page.rs"]
pub mod page;
#[path = "app/scim.rs"]
pub mod scim;
#[path = "app/serve.rs"]
pub mod serve;
#[path = "app/sessions.rs"]
pub mod sessions;
// The server's webhook delivery and periodic sweep (also included alone by tests/webhooks.rs).
#[path = "webhooks.rs"]
pub mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use api_keys::axum::ApiKeyLayer;
use api_keys::axum::secret_scanning::PublicKeys;
use api_keys::time::{Duration, OffsetDateTime};
use api_keys::{AnyStore, Error, KeyManager, KeyManagerBuilder, Keyring, OrgId, Policy, Scope};
use axum::Router;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::{MethodRouter, any, get, post, put};

// The tests reach these through `app::`.
#[allow(unused_imports)]
pub use errors::ApiError;
#[allow(unused_imports)]
pub use integrations::{Integrations, SECRET_SCANNING_PATH};
use integrations::{ServerAudit, SharedClock};
use metrics::{KeyCounts, Metrics, MetricsAudit};
use scim::DirectoryUser;
#[allow(unused_imports)]
pub use serve::{Limits, guard, serve};
use sessions::SessionSigner;
#[allow(unused_imports)]
pub use sessions::{DemoSession, SESSION_HEADER, SESSION_TTL, Session};

/// The manager type of the server: any store chosen at start-up.
pub type Manager = KeyManager<AnyStore>;

/// A login nonce and when it stops being usable.
type PendingLogin = ([u8; 16], OffsetDateTime);

/// Everything the handlers share. Cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    /// The key manager (system API keys).
    pub manager: Manager,
    sessions: Arc<SessionSigner>,
    session_ttl: Duration,
    /// Pending one-time login nonces and when each stops being usable.
    logins: Arc<Mutex<Vec<PendingLogin>>>,
    metrics: Arc<Metrics>,
    key_counts: Arc<KeyCounts>,
    directory: Arc<HashMap<OrgId, Vec<DirectoryUser>>>,
    /// GitHub's secret-scanning keys, when the partner endpoint is mounted.
    github_keys: Option<PublicKeys>,
}

impl AppState {
    /// Builds the state over `store`: a manager with the default policy whose audit events go
    /// to `tracing` and to the server's verification counters, a fresh random session-signing
    /// key, and the demo directory (acme: alice, bob).
    ///
    /// # Errors
    /// Whatever [`api_keys::KeyManagerBuilder::build`] or the OS generator reports.
    // `main.rs` goes through `with_policy`; the integration tests use this.
    #[allow(dead_code)]
    pub fn new(store: AnyStore, keyring: Keyring) -> Result<AppState, Error> {
        AppState::with_policy(store, keyring, Policy::default())
    }

    /// [`AppState::new`] with another policy (e.g. one that allows reveal).
    ///
    /// # Errors
    /// As [`AppState::new`], and [`Error::Policy`] for an invalid policy.
    // `main.rs` goes through `with_integrations`; the integration tests use this.
    #[allow(dead_code)]
    pub fn with_policy(
        store: AnyStore,
        keyring: Keyring,
        policy: Policy,
    ) -> Result<AppState, Error> {
        AppState::with_integrations(
            store,
            keyring,
            Integrations {
                policy,
                ..Integrations::default()
            },
        )
    }

    /// The state with everything the host plugs in: the policy; webhooks, which then receive
    /// every management action (through the audit sink, beside `tracing` and the counters) and
    /// every automation event (as the manager's notifier); GitHub's keys, which mount the
    /// secret-scanning partner endpoint; and the manager's clock.
    ///
    /// # Errors
    /// As [`AppState::with_policy`].
    pub fn with_integrations(
        store: AnyStore,
        keyring: Keyring,
        integrations: Integrations,
    ) -> Result<AppState, Error> {
        AppState::with_integrations_and(store, keyring, integrations, |b| b)
    }

    /// [`AppState::with_integrations`], with `configure` applied to the manager's builder
    /// last (e.g. shared usage counters, see `backends.rs`).
    ///
    /// # Errors
    /// As [`AppState::with_policy`].
    pub fn with_integrations_and(
        store: AnyStore,
        keyring: Keyring,
        integrations: Integrations,
        configure: impl FnOnce(KeyManagerBuilder<AnyStore>) -> KeyManagerBuilder<AnyStore>,
    ) -> Result<AppState, Error> {
        let Integrations {
            policy,
            webhooks,
            github_keys,
            clock,
        } = integrations;
        let metrics = Arc::new(Metrics::default());
        let mut builder = KeyManager::builder(store, keyring)
            .policy(policy)
            .audit(ServerAudit {
                metrics: MetricsAudit {
                    metrics: metrics.clone(),
                },
                webhooks: webhooks.clone(),
            });
        if let Some(hooks) = webhooks {
            builder = builder.notifier(hooks);
        }
        if let Some(clock) = clock {
            builder = builder.clock(SharedClock(clock));
        }
        let manager = configure(builder).build()?;
        let mut directory = HashMap::new();
        directory.insert(
            OrgId::new("acme"),
            vec![
                DirectoryUser::new("alice", "Alice Example"),
                DirectoryUser::new("bob", "Bob Example"),
            ],
        );
        Ok(AppState {
            manager,
            sessions: Arc::new(SessionSigner::generate()?),
            session_ttl: SESSION_TTL,
            logins: Arc::default(),
            metrics,
            key_counts: Arc::default(),
            directory: Arc::new(directory),
            github_keys,
        })
    }

    /// The same state with sessions valid for `ttl` (default [`SESSION_TTL`]).
    #[must_use]
    #[allow(dead_code)] // the tests use it
    pub fn with_session_ttl(mut self, ttl: Duration) -> AppState {
        self.session_ttl = ttl;
        self
    }
}

/// The router: the demo login, the management API, `/metrics`, `/scim/v2/Users`, the admin
/// page's routes, `/healthz`, and GitHub's secret-scanning partner endpoint when configured. Every error answer is JSON (SCIM's are SCIM errors). Serve it
/// through [`guard`] (Host check, limits) and [`serve`] (timeouts, connection limit).
pub fn router(state: AppState) -> Router {
    // The key check wraps each route's methods, not the route's 405 for a method it lacks: a
    // wrong method is answered before any key is read (and spends none of its usage).
    // (`any` has no 405: its one handler is the fallback, which `layer` wraps.)
    let guarded = |route: MethodRouter<AppState>, scope: Scope| {
        let count = middleware::from_fn_with_state(state.clone(), metrics::count_success);
        let check = ApiKeyLayer::new(state.manager.clone(), scope);
        route.route_layer(count).route_layer(check)
    };
    let guarded_any = |route: MethodRouter<AppState>, scope: Scope| {
        let count = middleware::from_fn_with_state(state.clone(), metrics::count_success);
        let check = ApiKeyLayer::new(state.manager.clone(), scope);
        route
            .layer::<_, std::convert::Infallible>(count)
            .layer::<_, std::convert::Infallible>(check)
    };
    let metrics = Router::new().route(
        "/metrics",
        guarded(get(metrics::metrics), Scope::Prometheus),
    );
    let scim = Router::new()
        .route(
            "/scim/v2/Users",
            guarded(get(scim::scim_users), Scope::Scim),
        )
        .route(
            "/scim/v2/Users/{id}",
            guarded(get(scim::scim_user), Scope::Scim),
        )
        // Any other path under `/scim/` (`/Groups`, `/ServiceProviderConfig`, ...): a SCIM 404,
        // behind the same key check.
        .route(
            "/scim/{*rest}",
            guarded_any(any(scim::scim_not_found), Scope::Scim),
        )
        .route_layer(middleware::from_fn(scim::scim_errors));
    Router::new()
        .route("/healthz", get(healthz))
        .route(openapi::OPENAPI_PATH, get(openapi::openapi))
        .route("/demo/login", post(sessions::login))
        .route("/api/whoami", get(sessions::whoami))
        .route("/api/policy", get(manage::policy))
        .route("/api/keys", get(manage::list_keys).post(manage::create_key))
        .route(
            "/api/keys/{id}",
            get(manage::get_key).delete(manage::delete_key),
        )
        .route("/api/keys/{id}/revoke", post(manage::revoke_key))
        .route("/api/keys/{id}/roll", post(manage::roll_key))
        .route("/api/keys/{id}/reveal", post(manage::reveal_key))
        .route("/api/keys/{id}/limits", put(limits::set_limits))
        .route(
            "/api/keys/{id}/credits",
            get(limits::get_credits).put(limits::set_credits),
        )
        .merge(metrics)
        .merge(scim)
        .merge(page::routes())
        .merge(integrations::secret_scanning_routes(&state))
        .fallback(not_found)
        .layer(middleware::from_fn(errors::json_errors))
        .with_state(state)
}

/// `GET /healthz`: the process serves requests (it does not touch the store).
#[utoipa::path(get, path = "/healthz", tag = "session",
    responses((status = 200, description = "The server is up.", body = openapi::Health)))]
async fn healthz() -> Response {
    errors::no_store(
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "ok"})),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "there is nothing at this path",
    )
}
