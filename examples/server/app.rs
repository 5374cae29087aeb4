//! The example server's application: state, the demo session stand-in, the JSON management
//! API, `/metrics` (Prometheus) and `/scim/v2/Users` (SCIM 2.0), both guarded by API keys.
//!
//! `main.rs` serves [`router`]; the integration tests include this file and serve the same
//! router on an ephemeral port. The README's HTTP section describes the JSON API.

// Relative to this file's directory, so that the module resolves both from `main.rs`
// (`mod app;`) and from a test that includes this file with `#[path = ".../app.rs"]`.
#[path = "app/page.rs"]
pub mod page;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use aes::Aes128;
use api_keys::axum::ApiKeyLayer;
use api_keys::time::{Duration, OffsetDateTime};
use api_keys::{
    Actor, AnyStore, AuditAction, AuditEvent, AuditSink, BoxError, Error, Expiry, FailureClass,
    GenerateRequest, KeyId, KeyManager, KeyStore, Keyring, OrgId, Policy, Scope, TracingAudit,
    UserId, Verified,
};
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cmac::{Cmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

/// The manager type of the server: any store chosen at start-up.
pub type Manager = KeyManager<AnyStore>;

/// Name of the demo session header.
pub const SESSION_HEADER: &str = "x-demo-session";

/// Everything the handlers share. Cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    /// The key manager (system API keys).
    pub manager: Manager,
    sessions: Arc<SessionSigner>,
    metrics: Arc<Metrics>,
    directory: Arc<HashMap<OrgId, Vec<DirectoryUser>>>,
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
    pub fn with_policy(
        store: AnyStore,
        keyring: Keyring,
        policy: Policy,
    ) -> Result<AppState, Error> {
        let metrics = Arc::new(Metrics::default());
        let manager = KeyManager::builder(store, keyring)
            .policy(policy)
            .audit(MetricsAudit {
                metrics: metrics.clone(),
            })
            .build()?;
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
            metrics,
            directory: Arc::new(directory),
        })
    }

    /// A signed `X-Demo-Session` value for `user` with `role` (`manager` or `member`) in `org`.
    /// Org and user must match `[A-Za-z0-9_-]{1,64}`; anything else is `None`.
    pub fn session(&self, org: &str, user: &str, role: &str) -> Option<String> {
        if !valid_name(org) || !valid_name(user) || !matches!(role, "manager" | "member") {
            return None;
        }
        let payload = format!("{org}.{user}.{role}");
        let sig = hex::encode(self.sessions.sign(&payload));
        Some(format!("{payload}.{sig}"))
    }

    /// The demo sessions the server prints at start and serves at `GET /demo/sessions`.
    pub fn demo_sessions(&self) -> Vec<DemoSession> {
        [
            ("alice — manager of acme", "acme", "alice", "manager"),
            ("bob — member of acme", "acme", "bob", "member"),
        ]
        .into_iter()
        .filter_map(|(label, org, user, role)| {
            Some(DemoSession {
                label: label.to_string(),
                session: self.session(org, user, role)?,
            })
        })
        .collect()
    }

    /// Reads and checks an `X-Demo-Session` value.
    fn actor(&self, value: &str) -> Option<Actor> {
        if value.len() > 256 {
            return None;
        }
        let mut parts = value.split('.');
        let (org, user, role, sig) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !valid_name(org) || !valid_name(user) {
            return None;
        }
        let mut presented = [0u8; 16];
        if sig.len() != 32 || sig.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        hex::decode_to_slice(sig, &mut presented).ok()?;
        let expected = self.sessions.sign(&format!("{org}.{user}.{role}"));
        if !bool::from(expected.ct_eq(&presented)) {
            return None;
        }
        let org = OrgId::try_new(org).ok()?;
        let user = UserId::try_new(user).ok()?;
        match role {
            "manager" => Some(Actor::manager(org, user)),
            "member" => Some(Actor::member(org, user)),
            _ => None,
        }
    }
}

/// One entry of `GET /demo/sessions`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoSession {
    /// Who this session is, for a picker.
    pub label: String,
    /// The `X-Demo-Session` header value.
    pub session: String,
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Signs demo sessions with AES-CMAC under a random per-process key.
struct SessionSigner {
    mac: Cmac<Aes128>,
}

impl SessionSigner {
    fn generate() -> Result<Self, Error> {
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        getrandom::getrandom(&mut *key).map_err(|_| Error::Random)?;
        let mac = <Cmac<Aes128> as cmac::digest::KeyInit>::new_from_slice(&*key)
            .map_err(|_| Error::Random)?;
        Ok(SessionSigner { mac })
    }

    fn sign(&self, payload: &str) -> [u8; 16] {
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The demo stand-in for the host's own session: the caller as an [`Actor`], from a valid
/// `X-Demo-Session` header. A real host builds the `Actor` from its own login session.
pub struct Session(pub Actor);

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| state.actor(v))
            .map(Session)
            .ok_or_else(|| {
                no_store(
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "unauthenticated"})),
                )
            })
    }
}

/// The router: demo sessions, the management API, `/metrics`, `/scim/v2/Users` and the
/// admin page's routes.
pub fn router(state: AppState) -> Router {
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), count_success))
        .route_layer(ApiKeyLayer::new(state.manager.clone(), Scope::Prometheus));
    let scim = Router::new()
        .route("/scim/v2/Users", get(scim_users))
        .route_layer(middleware::from_fn_with_state(state.clone(), count_success))
        .route_layer(ApiKeyLayer::new(state.manager.clone(), Scope::Scim));
    Router::new()
        .route("/demo/sessions", get(demo_sessions))
        .route("/api/whoami", get(whoami))
        .route("/api/policy", get(policy))
        .route("/api/keys", get(list_keys).post(create_key))
        .route("/api/keys/{id}", get(get_key).delete(delete_key))
        .route("/api/keys/{id}/revoke", post(revoke_key))
        .route("/api/keys/{id}/roll", post(roll_key))
        .route("/api/keys/{id}/reveal", post(reveal_key))
        .merge(metrics)
        .merge(scim)
        .merge(page::routes())
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Errors and responses
// ---------------------------------------------------------------------------------------------

/// A JSON error `{"error":"<class>","message":"<text>"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    class: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, class: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            class,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::PermissionDenied => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", e.to_string())
            }
            Error::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            Error::Policy(message) => ApiError::new(StatusCode::BAD_REQUEST, "policy", message),
            Error::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            Error::Revoked => ApiError::new(
                StatusCode::CONFLICT,
                "revoked",
                "the key is revoked; generate a new one",
            ),
            Error::Expired => ApiError::new(
                StatusCode::CONFLICT,
                "expired",
                "the key has expired; generate a new one",
            ),
            other => {
                tracing::error!(target: "server", error = %other, "management request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        no_store(
            self.status,
            Json(json!({"error": self.class, "message": self.message})),
        )
    }
}

/// A response with `Cache-Control: no-store` (every management response: some carry tokens,
/// and none should linger in a cache).
fn no_store(status: StatusCode, body: impl IntoResponse) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Parses a key id from the path. A malformed id names no key: 404 for a manager, and 403 for
/// anyone else (as the manager answers for any id).
fn key_id(actor: &Actor, text: &str) -> Result<KeyId, ApiError> {
    KeyId::parse(text).map_err(|_| {
        ApiError::from(if actor.is_manager() {
            Error::NotFound
        } else {
            Error::PermissionDenied
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Demo session routes
// ---------------------------------------------------------------------------------------------

async fn demo_sessions(State(state): State<AppState>) -> Response {
    no_store(StatusCode::OK, Json(state.demo_sessions()))
}

async fn whoami(Session(actor): Session) -> Response {
    no_store(
        StatusCode::OK,
        Json(json!({
            "org": actor.org(),
            "user": actor.user(),
            "role": if actor.is_manager() { "manager" } else { "member" },
        })),
    )
}

// ---------------------------------------------------------------------------------------------
// Management API
// ---------------------------------------------------------------------------------------------

async fn policy(State(state): State<AppState>, Session(_): Session) -> Response {
    let p = state.manager.policy();
    no_store(
        StatusCode::OK,
        Json(json!({
            "periods": p.periods(),
            "default_days": p.default_period(),
            "max_days": p.max_period(),
            "allow_never": p.never_allowed(),
            "allow_reveal": p.reveal_allowed(),
        })),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    expiry: Option<Value>,
}

/// `{"days":N}`, `{"at":<unix seconds>}`, `"never"`, or absent/null (the policy's default).
fn parse_expiry(state: &AppState, v: Option<Value>) -> Result<Option<Expiry>, ApiError> {
    let v = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    if v.as_str() == Some("never") {
        return Ok(Some(Expiry::Never));
    }
    let shape = || {
        ApiError::bad_request(
            r#"expiry must be {"days":N}, {"at":<unix seconds>}, "never", or absent"#,
        )
    };
    let Value::Object(obj) = v else {
        return Err(shape());
    };
    if obj.len() != 1 {
        return Err(shape());
    }
    if let Some(days) = obj.get("days") {
        let days = days.as_u64().ok_or_else(shape)?;
        return match u16::try_from(days) {
            Ok(d) => Ok(Some(Expiry::Days(d))),
            Err(_) => {
                let periods: Vec<String> = state
                    .manager
                    .policy()
                    .periods()
                    .iter()
                    .map(u16::to_string)
                    .collect();
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "policy",
                    format!(
                        "an expiry of {days} days is not allowed; allowed: {} days",
                        periods.join(", ")
                    ),
                ))
            }
        };
    }
    if let Some(at) = obj.get("at") {
        let at = at.as_i64().ok_or_else(shape)?;
        let at = OffsetDateTime::from_unix_timestamp(at)
            .map_err(|_| ApiError::bad_request("expiry.at is out of range"))?;
        return Ok(Some(Expiry::At(at)));
    }
    Err(shape())
}

async fn create_key(
    State(state): State<AppState>,
    Session(actor): Session,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: CreateBody = parse_json(&body)?;
    let scopes = body
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut req = GenerateRequest::new(body.name).scopes(scopes);
    if let Some(expiry) = parse_expiry(&state, body.expiry)? {
        req = req.expiry(expiry);
    }
    let (key, info) = state.manager.generate(&actor, req).await?;
    Ok(no_store(
        StatusCode::CREATED,
        Json(json!({"key": key.expose_secret(), "info": info})),
    ))
}

async fn list_keys(
    State(state): State<AppState>,
    Session(actor): Session,
) -> Result<Response, ApiError> {
    let keys = state.manager.list(&actor).await?;
    Ok(no_store(StatusCode::OK, Json(keys)))
}

async fn get_key(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = key_id(&actor, &id)?;
    let info = state.manager.get(&actor, &id).await?;
    Ok(no_store(StatusCode::OK, Json(info)))
}

async fn revoke_key(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = key_id(&actor, &id)?;
    let info = state.manager.revoke(&actor, &id).await?;
    Ok(no_store(StatusCode::OK, Json(info)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollBody {
    overlap_seconds: Option<i64>,
}

/// Overlap used by `roll` when the body names none: one day.
const DEFAULT_OVERLAP_SECS: i64 = 86_400;

async fn roll_key(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = key_id(&actor, &id)?;
    let overlap = if body.iter().all(u8::is_ascii_whitespace) {
        DEFAULT_OVERLAP_SECS
    } else {
        parse_json::<RollBody>(&body)?
            .overlap_seconds
            .unwrap_or(DEFAULT_OVERLAP_SECS)
    };
    // The old key never outlives the policy's maximum, so a longer overlap means nothing.
    let max = i64::from(state.manager.policy().max_period()) * 86_400;
    if !(0..=max).contains(&overlap) {
        return Err(ApiError::bad_request(format!(
            "overlap_seconds must be between 0 and {max}"
        )));
    }
    let (key, info) = state
        .manager
        .roll(&actor, &id, Duration::seconds(overlap))
        .await?;
    Ok(no_store(
        StatusCode::CREATED,
        Json(json!({"key": key.expose_secret(), "info": info})),
    ))
}

async fn reveal_key(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = key_id(&actor, &id)?;
    let key = state.manager.reveal(&actor, &id).await?;
    Ok(no_store(
        StatusCode::OK,
        Json(json!({"key": key.expose_secret()})),
    ))
}

async fn delete_key(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = key_id(&actor, &id)?;
    state.manager.delete(&actor, &id).await?;
    Ok(no_store(StatusCode::NO_CONTENT, ()))
}

// ---------------------------------------------------------------------------------------------
// Verification counters
// ---------------------------------------------------------------------------------------------

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
struct Metrics {
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
struct MetricsAudit {
    metrics: Arc<Metrics>,
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

/// Counts a successful verification (runs behind [`ApiKeyLayer`], so only verified requests
/// reach it).
async fn count_success(State(state): State<AppState>, req: Request, next: Next) -> Response {
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

async fn metrics(State(state): State<AppState>, key: Verified) -> Result<Response, ApiError> {
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

// ---------------------------------------------------------------------------------------------
// GET /scim/v2/Users
// ---------------------------------------------------------------------------------------------

/// A user of the demo directory.
#[derive(Clone, Debug)]
struct DirectoryUser {
    id: &'static str,
    display_name: &'static str,
}

impl DirectoryUser {
    fn new(id: &'static str, display_name: &'static str) -> Self {
        DirectoryUser { id, display_name }
    }
}

/// Most resources in one SCIM page.
const SCIM_MAX_COUNT: usize = 100;

/// A SCIM error response (RFC 7644 §3.12).
fn scim_error(status: StatusCode, scim_type: Option<&str>, detail: &str) -> Response {
    let mut body = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": status.as_u16().to_string(),
        "detail": detail,
    });
    if let Some(t) = scim_type {
        body["scimType"] = json!(t);
    }
    (
        status,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/scim+json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// Parses the one filter this directory supports: `userName eq "<value>"` (attribute and
/// operator case-insensitive, as RFC 7644 §3.4.2.2 says).
fn username_filter(filter: &str) -> Option<String> {
    let mut parts = filter.trim().splitn(3, ' ');
    let (attr, op, value) = (parts.next()?, parts.next()?, parts.next()?.trim());
    if !attr.eq_ignore_ascii_case("userName") || !op.eq_ignore_ascii_case("eq") {
        return None;
    }
    let value = value.strip_prefix('"')?.strip_suffix('"')?;
    if value.contains(['"', '\\']) {
        return None;
    }
    Some(value.to_string())
}

/// A minimal SCIM 2.0 `ListResponse` (RFC 7644 §3.4.2) of the key's organization's users,
/// with `filter=userName eq "..."`, `startIndex` (1-based) and `count` (at most 100).
async fn scim_users(
    State(state): State<AppState>,
    key: Verified,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let users = state
        .directory
        .get(key.org())
        .map_or(&[][..], Vec::as_slice);
    let wanted = match params.get("filter") {
        None => None,
        Some(f) => match username_filter(f) {
            Some(name) => Some(name),
            None => {
                return scim_error(
                    StatusCode::BAD_REQUEST,
                    Some("invalidFilter"),
                    "only filter=userName eq \"<value>\" is supported",
                );
            }
        },
    };
    let number = |name: &str, default: usize| match params.get(name) {
        None => Some(default),
        Some(v) => v.parse::<usize>().ok(),
    };
    let (Some(start), Some(count)) = (number("startIndex", 1), number("count", SCIM_MAX_COUNT))
    else {
        return scim_error(
            StatusCode::BAD_REQUEST,
            Some("invalidValue"),
            "startIndex and count must be non-negative integers",
        );
    };
    // RFC 7644: a startIndex below 1 is 1; a count above the server's maximum is the maximum.
    let (start, count) = (start.max(1), count.min(SCIM_MAX_COUNT));
    let matching: Vec<&DirectoryUser> = users
        .iter()
        .filter(|u| wanted.as_deref().is_none_or(|w| w == u.id))
        .collect();
    let resources: Vec<Value> = matching
        .iter()
        .skip(start - 1)
        .take(count)
        .map(|u| {
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "id": u.id,
                "userName": u.id,
                "displayName": u.display_name,
                "active": true,
                "meta": {"resourceType": "User", "location": format!("/scim/v2/Users/{}", u.id)},
            })
        })
        .collect();
    let body = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": matching.len(),
        "startIndex": start,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    });
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/scim+json"),
        )],
        body.to_string(),
    )
        .into_response()
}
