//! A key's usage limits in the management API: its rate limits and credits, set after
//! generation, and the credits left now.
//!
//! The JSON shapes are the crate's own (`serde` of [`RateLimit`] and [`Credits`]):
//! a rate limit is `{"name":"burst","limit":10,"window_ms":1000,"scope":"key"}` (`scope`
//! `key` or `org`, default `key`); credits are `{"initial":1000,"refill":{"every":"daily",
//! "amount":1000}}` (`refill` optional; `{"every":"monthly","day":1,"amount":N}` refills on a
//! day of the month). The manager checks the values (names, windows, amounts) and answers
//! `policy` for a value it refuses. Like the bodies around them, these shapes take no unknown
//! field (`bad_request`): a typo such as `"scoep": "org"` must not quietly make a per-key limit.

use std::time::Duration;

use api_keys::{Actor, Credits, KeyId, LimitScope, RateLimit, Refill};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::AppState;
use super::errors::{ApiError, Body, key_id, manager_only, no_store, parse_json};
#[allow(unused_imports)] // named by the `utoipa::path` annotations
use super::openapi::{CreditsDoc, KeyCreditsDoc, KeyInfoDoc, Problem, RateLimitDoc};
use super::sessions::Session;

/// A [`RateLimit`] as a request gives it (the crate's shape), refusing unknown fields.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = r#"a rate limit {"name", "limit", "window_ms", "scope"}"#
)]
pub(crate) struct RateLimitIn {
    name: String,
    limit: u64,
    window_ms: u64,
    #[serde(default)]
    scope: LimitScope,
}

impl From<RateLimitIn> for RateLimit {
    fn from(l: RateLimitIn) -> RateLimit {
        let limit = RateLimit::new(l.name, l.limit, Duration::from_millis(l.window_ms));
        match l.scope {
            LimitScope::Org => limit.per_org(),
            LimitScope::Key => limit,
        }
    }
}

/// [`Credits`] as a request gives them (the crate's shape), refusing unknown fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = r#"credits {"initial", "refill"}"#)]
pub(crate) struct CreditsIn {
    initial: u64,
    #[serde(default)]
    refill: Option<RefillIn>,
}

/// A [`Refill`] as a request gives it, refusing unknown fields.
#[derive(Deserialize)]
#[serde(
    tag = "every",
    rename_all = "snake_case",
    deny_unknown_fields,
    expecting = r#"a refill {"every": "daily" | "monthly", "amount", "day"}"#
)]
enum RefillIn {
    Daily { amount: u64 },
    Monthly { day: u8, amount: u64 },
}

impl From<CreditsIn> for Credits {
    fn from(c: CreditsIn) -> Credits {
        let credits = Credits::new(c.initial);
        match c.refill {
            None => credits,
            Some(RefillIn::Daily { amount }) => credits.refill(Refill::daily(amount)),
            Some(RefillIn::Monthly { day, amount }) => credits.refill(Refill::monthly(day, amount)),
        }
    }
}

/// `PUT /api/keys/{id}/limits` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsBody {
    /// The key's rate limits from now on (all of them; `[]` removes every limit).
    #[schema(value_type = Vec<RateLimitDoc>, max_items = 8)]
    rate_limits: Vec<RateLimitIn>,
}

/// `PUT /api/keys/{id}/credits` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreditsBody {
    /// The credit budget from now on (the balance is set to `initial` now), or `null` to
    /// remove it. Required: an empty body must not remove a budget.
    #[schema(value_type = Option<CreditsDoc>, required = true)]
    #[serde(deserialize_with = "Option::deserialize")]
    credits: Option<CreditsIn>,
}

#[utoipa::path(put, path = "/api/keys/{id}/limits", tag = "keys", security(("demo_session" = [])),
    params(("id" = String, Path, description = "The key's id")),
    request_body(content = LimitsBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The key with its new rate limits (audited: `limits_changed`).", body = KeyInfoDoc),
        (status = 400, description = "A field is wrong (`bad_request`), or a limit is refused (`policy`).", content_type = "application/problem+json", body = Problem),
        (status = 403, description = "The session is not a manager's (`permission_denied`).", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such key in the organization (`not_found`).", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "Changed concurrently (`conflict`).", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn set_limits(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    manager_only(&actor)?;
    let id = key_id(&actor, &id)?;
    let body: LimitsBody = parse_json(&body)?;
    let info = state
        .manager
        .set_limits(
            &actor,
            &id,
            body.rate_limits.into_iter().map(Into::into).collect(),
        )
        .await?;
    Ok(no_store(StatusCode::OK, Json(info)))
}

#[utoipa::path(put, path = "/api/keys/{id}/credits", tag = "keys", security(("demo_session" = [])),
    params(("id" = String, Path, description = "The key's id")),
    request_body(content = CreditsBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The key's credits now (audited: `credits_changed`).", body = KeyCreditsDoc),
        (status = 400, description = "A field is wrong (`bad_request`), or the credits are refused (`policy`).", content_type = "application/problem+json", body = Problem),
        (status = 403, description = "The session is not a manager's (`permission_denied`).", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such key in the organization (`not_found`).", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "Changed concurrently (`conflict`).", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The usage counters could not be written (`limits_unavailable`); the configuration is saved, retry to set the balance.", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn set_credits(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    manager_only(&actor)?;
    let id = key_id(&actor, &id)?;
    let body: CreditsBody = parse_json(&body)?;
    let info = state
        .manager
        .set_credits(&actor, &id, body.credits.map(Into::into))
        .await?;
    credits_answer(&state, &actor, &id, info.credits).await
}

#[utoipa::path(get, path = "/api/keys/{id}/credits", tag = "keys", security(("demo_session" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key's credit budget and what is left of it now (spends nothing).", body = KeyCreditsDoc),
        (status = 403, description = "The session is not a manager's (`permission_denied`).", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such key in the organization (`not_found`).", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The usage counters could not be read (`limits_unavailable`).", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn get_credits(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = key_id(&actor, &id)?;
    let info = state.manager.get(&actor, &id).await?;
    credits_answer(&state, &actor, &id, info.credits).await
}

/// `{"credits": <budget or null>, "remaining": <credits left now or null>}`.
async fn credits_answer(
    state: &AppState,
    actor: &Actor,
    id: &KeyId,
    credits: Option<Credits>,
) -> Result<Response, ApiError> {
    let remaining = state.manager.credits_remaining(actor, id).await?;
    Ok(no_store(
        StatusCode::OK,
        Json(json!({"credits": credits, "remaining": remaining})),
    ))
}
