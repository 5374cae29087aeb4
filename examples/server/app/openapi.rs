//! The OpenAPI 3.1 description of the management API, generated with `utoipa` from the
//! handlers' annotations and the request and response types, served at [`OPENAPI_PATH`].
//!
//! The request bodies are the handlers' own types (`CreateBody`, `RollBody`, `LoginBody`);
//! the answers are described by the types below, which mirror the JSON the handlers write
//! (`KeyInfo` of the library, the problem details of [`super::errors::ApiError`]). CI runs
//! schemathesis against the running server with this description, so a drift between the two
//! fails there.

#![allow(dead_code)] // the types below only describe JSON

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::errors::{PROBLEM_JSON, no_store};

/// Where the description is served.
pub const OPENAPI_PATH: &str = "/api/openapi.json";

/// An error answer (RFC 9457 problem details) with the class in `error`.
#[derive(ToSchema)]
pub struct Problem {
    /// `urn:api-keys:problem:<error>`.
    #[schema(rename = "type", example = "urn:api-keys:problem:not_found")]
    r#type: String,
    /// The HTTP status's reason phrase.
    #[schema(example = "Not Found")]
    title: String,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What is wrong, for a person (names the field of a bad request body).
    detail: String,
    /// The class, for a program to switch on: `bad_request`, `policy`, `unauthenticated`,
    /// `permission_denied`, `not_found`, `conflict`, `revoked`, `expired`,
    /// `method_not_allowed`, `request_timeout`, `payload_too_large`, `headers_too_large`,
    /// `wrong_host`, `unsupported_media_type`, `internal`.
    #[schema(example = "not_found")]
    error: String,
}

/// A key's status at the time of the answer.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum KeyStatusDoc {
    Active,
    Expired,
    Revoked,
}

/// A key's metadata (never its secret). Times are Unix seconds.
#[derive(ToSchema)]
#[schema(as = KeyInfo)]
pub struct KeyInfoDoc {
    /// Public id (the part of the token after the prefix, before the secret).
    id: String,
    /// Owning organization.
    org: String,
    /// Display name.
    name: String,
    /// Granted scopes (`scim`, `prometheus`, ...).
    scopes: Vec<String>,
    /// Creation time.
    created_at: i64,
    /// Creating manager.
    created_by: String,
    /// Expiry; `null` = never.
    expires_at: Option<i64>,
    /// Revocation time; `null` unless revoked.
    revoked_at: Option<i64>,
    /// Why the key stopped working, or `null` (a working key, or one that simply expired).
    #[schema(required = true)]
    revocation: Option<RevocationDoc>,
    /// The key this one replaced (by a roll).
    replaces: Option<String>,
    /// The key that replaced this one (by a roll).
    replaced_by: Option<String>,
    /// The host's owner / external id.
    owner: Option<String>,
    /// Named rate limits.
    rate_limits: Vec<RateLimitDoc>,
    /// The credit configuration, if any (what is left: `GET /api/keys/{id}/credits`).
    credits: Option<CreditsDoc>,
    /// Status at the time of the answer.
    status: KeyStatusDoc,
    /// Last recorded use (`null` = never used).
    #[schema(required = true)]
    last_used_at: Option<i64>,
    /// Masked hint, e.g. `sak_…x7Qa`.
    hint: String,
    /// What the sweep already announced about the key.
    notices: NoticesDoc,
}

/// Why a key was revoked, or why it stopped working.
#[derive(ToSchema)]
#[schema(as = Revocation)]
pub struct RevocationDoc {
    /// `manual` (a manager), `leaked` (reported by someone holding the token, e.g. GitHub's
    /// secret scanning), `unused` (idle past the policy's limit), `departed_user` (its
    /// creator was offboarded), `rolled` (replaced by a roll, overlap over).
    kind: RevocationKindDoc,
    /// For `leaked`: where the token was found (e.g. a URL), as reported.
    source: Option<String>,
}

/// The reason's kind.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum RevocationKindDoc {
    Manual,
    Leaked,
    Unused,
    DepartedUser,
    Rolled,
}

/// The warnings the sweep already sent for a key (each exactly once).
#[derive(ToSchema)]
#[schema(as = Notices)]
pub struct NoticesDoc {
    /// Lead times (seconds before expiry) whose expiry warning was sent.
    expiry_warned: Vec<i64>,
    /// Whether the `expired` event was sent.
    expired: bool,
    /// Whether the warning before an unused-key revocation was sent.
    unused_warned: bool,
    /// When that warning was sent (absent when never).
    unused_warned_at: Option<i64>,
}

/// Whom a rate limit counts.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum LimitScopeDoc {
    /// This key alone.
    Key,
    /// Every key of the organization with a limit of the same name, together.
    Org,
}

/// A named rate limit: at most `limit` units per `window_ms` (fixed windows).
#[derive(ToSchema)]
pub struct RateLimitDoc {
    /// `[a-z][a-z0-9._-]{0,31}`, unique per key.
    #[schema(pattern = "^[a-z][a-z0-9._-]{0,31}$")]
    name: String,
    /// Units per window (each verification costs 1 unless the host says otherwise).
    #[schema(minimum = 1)]
    limit: u64,
    /// The window in milliseconds (1 ms to 366 days).
    #[schema(minimum = 1, maximum = 31_622_400_000_u64)]
    window_ms: u64,
    /// `key` (the default) or `org`.
    #[schema(nullable = false)]
    scope: Option<LimitScopeDoc>,
}

/// How often a refill comes.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum RefillEveryDoc {
    /// Every day at 00:00 UTC.
    Daily,
    /// Every month on `day` at 00:00 UTC.
    Monthly,
}

/// A refill *sets* the balance to `amount` (it does not add).
#[derive(ToSchema)]
pub struct RefillDoc {
    every: RefillEveryDoc,
    /// The balance after a refill.
    amount: u64,
    /// For `monthly`: the day of the month, 1 to 28.
    #[schema(minimum = 1, maximum = 28, nullable = false)]
    day: Option<u8>,
}

/// Usage credits: a balance each verification spends from.
#[derive(ToSchema)]
pub struct CreditsDoc {
    /// The starting balance.
    initial: u64,
    /// The refill schedule, or `null` for none.
    refill: Option<RefillDoc>,
}

/// A key's credit budget and what is left of it now.
#[derive(ToSchema)]
pub struct KeyCreditsDoc {
    /// The budget, or `null` for a key without credits.
    credits: Option<CreditsDoc>,
    /// Credits left now (after any refill due), or `null` for a key without credits.
    remaining: Option<u64>,
}

/// A new key: the token, shown once, and its metadata.
#[derive(ToSchema)]
pub struct CreatedKey {
    /// The token (`sak_...`). Shown once; store it in the integration's secret store.
    key: String,
    info: KeyInfoDoc,
}

/// A revealed key.
#[derive(ToSchema)]
pub struct RevealedKey {
    /// The token.
    key: String,
}

/// What the key policy allows (the page builds its form from it).
#[derive(ToSchema)]
pub struct PolicyDoc {
    /// Expiry periods in days that may be chosen.
    periods: Vec<u16>,
    /// The period chosen when a request names none.
    default_days: u16,
    /// The longest allowed life in days.
    max_days: u16,
    /// Whether keys that never expire may be made.
    allow_never: bool,
    /// Whether managers may reveal an existing key.
    allow_reveal: bool,
    /// The expiry warnings' lead times in seconds, longest first (the first is the warning
    /// window the page's banner uses); empty when expiry warnings are off.
    warn_before_seconds: Vec<i64>,
    /// After how many seconds without use (since creation, if never used) the sweep revokes a
    /// key; `null` when unused keys are kept.
    #[schema(required = true)]
    revoke_unused_after_seconds: Option<i64>,
}

/// The caller's role.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum RoleDoc {
    Manager,
    Member,
}

/// Who the session is.
#[derive(ToSchema)]
pub struct WhoAmI {
    org: String,
    user: String,
    role: RoleDoc,
}

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: String,
}

/// An expiry: `{"days":N}` (one of the policy's periods), `{"at":<unix seconds>}`, or
/// `"never"` (when the policy allows it).
#[derive(ToSchema, serde::Deserialize)]
#[serde(untagged)]
pub enum ExpiryDoc {
    Days {
        #[schema(minimum = 1)]
        days: u16,
    },
    At {
        at: i64,
    },
    Never(NeverDoc),
}

/// A scope to grant.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ScopeDoc {
    /// `GET /scim/v2/Users`.
    Scim,
    /// `GET /metrics`.
    Prometheus,
}

/// The literal `"never"`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NeverDoc {
    Never,
}

/// The description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "api-keys example server: management API",
        description = "Manage an organization's system API keys. Calls carry a demo session in the X-Demo-Session header (the server prints sessions and a one-time login link at start). Every error is an RFC 9457 problem (application/problem+json) whose `error` member names its class.",
        version = "1"
    ),
    paths(
        super::healthz,
        super::sessions::login,
        super::sessions::whoami,
        super::manage::policy,
        super::manage::list_keys,
        super::manage::create_key,
        super::manage::get_key,
        super::manage::delete_key,
        super::manage::revoke_key,
        super::manage::roll_key,
        super::manage::reveal_key,
        super::limits::set_limits,
        super::limits::set_credits,
        super::limits::get_credits,
    ),
    components(schemas(Problem, KeyInfoDoc, RevocationDoc, NoticesDoc, CreatedKey, RevealedKey, PolicyDoc, WhoAmI, Health, ExpiryDoc, NeverDoc, RateLimitDoc, CreditsDoc, KeyCreditsDoc)),
    modifiers(&CommonAnswers),
    tags((name = "keys", description = "An organization's API keys (managers only, except reading the policy)"),
         (name = "session", description = "The demo stand-in for the host's login"))
)]
pub struct ApiDoc;

/// Adds the session security scheme, the links from a created key, and the answers every operation can give: 400 (a
/// malformed request), 408/413 (a body too slow or too large), 421 (a Host that is not this
/// server), 431 (headers too large), 500; and 401 and 503 where a session is needed (a
/// session's routes read the key store).
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "demo_session",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Demo-Session"))),
            );
        }
        // Links from a created key to the operations on it, for stateful testing:
        // create → get / roll / reveal / revoke / delete.
        if let Some(RefOr::T(created)) = openapi
            .paths
            .paths
            .get_mut("/api/keys")
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.responses.responses.get_mut("201"))
        {
            for (name, operation) in [
                ("GetKey", "get_key"),
                ("RollKey", "roll_key"),
                ("RevealKey", "reveal_key"),
                ("RevokeKey", "revoke_key"),
                ("DeleteKey", "delete_key"),
            ] {
                let link = LinkBuilder::new()
                    .operation_id(operation)
                    .parameter("id", "$response.body#/info/id")
                    .build();
                created.links.insert(name.to_string(), RefOr::T(link));
            }
        }
        for item in openapi.paths.paths.values_mut() {
            let ops: [&mut Option<Operation>; 4] = [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
            ];
            for op in ops.into_iter().flatten() {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let mut add = |status: StatusCode, what: &str| {
                    op.responses
                        .responses
                        .entry(status.as_u16().to_string())
                        .or_insert_with(|| RefOr::T(problem(what)));
                };
                add(StatusCode::BAD_REQUEST, "The request is malformed.");
                if secured {
                    add(
                        StatusCode::UNAUTHORIZED,
                        "No session, a forged one, an expired one, or one of an earlier run of the server.",
                    );
                }
                add(
                    StatusCode::REQUEST_TIMEOUT,
                    "The body did not arrive in time.",
                );
                add(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The body is over the size limit.",
                );
                add(
                    StatusCode::MISDIRECTED_REQUEST,
                    "The Host header does not name this server (DNS rebinding).",
                );
                add(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "The headers are over the size limit.",
                );
                add(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "A record failed its integrity check, or another server fault; see the server log.",
                );
                if secured {
                    add(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The key store cannot be reached now (`unavailable`, with `Retry-After`); try again.",
                    );
                }
            }
        }
    }
}

/// A problem answer described by `what`.
fn problem(what: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(what)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// `GET /api/openapi.json`.
pub(crate) async fn openapi() -> Response {
    match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => no_store(StatusCode::OK, axum::Json(doc)),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
