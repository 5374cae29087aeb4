//! The JSON management API: policy, create, list, get, revoke, roll, reveal, delete.

use api_keys::time::{Duration, OffsetDateTime};
use api_keys::{Expiry, GenerateRequest, Scope};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use utoipa::ToSchema;

use super::AppState;
use super::errors::{ApiError, Body, key_id, manager_only, no_store, parse_json};
use super::limits::{CreditsIn, RateLimitIn};
#[allow(unused_imports)] // named by the `utoipa::path` annotations
use super::openapi::{
    CreatedKey, CreditsDoc, ExpiryDoc, KeyInfoDoc, PolicyDoc, Problem, RateLimitDoc, RevealedKey,
    ScopeDoc,
};
use super::sessions::Session;

#[utoipa::path(get, path = "/api/policy", tag = "keys", security(("demo_session" = [])),
    responses((status = 200, description = "The key policy.", body = PolicyDoc)))]
pub(crate) async fn policy(State(state): State<AppState>, Session(_): Session) -> Response {
    let p = state.manager.policy();
    no_store(
        StatusCode::OK,
        Json(json!({
            "periods": p.periods(),
            "default_days": p.default_period(),
            "max_days": p.max_period(),
            "allow_never": p.never_allowed(),
            "allow_reveal": p.reveal_allowed(),
            "warn_before_seconds": p
                .warnings()
                .iter()
                .map(|d| d.whole_seconds())
                .collect::<Vec<_>>(),
            "revoke_unused_after_seconds": p.unused_revocation().map(|d| d.whole_seconds()),
        })),
    )
}

/// `POST /api/keys` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    /// A name people can read (which integration uses the key): 1 to 128 characters, at
    /// least one visible, no control or bidirectional-override characters.
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    /// Scopes to grant.
    #[schema(value_type = Vec<ScopeDoc>, min_items = 1)]
    scopes: Vec<String>,
    /// The expiry; absent or `null` for the policy's default.
    #[schema(value_type = Option<ExpiryDoc>)]
    #[serde(default)]
    expiry: Option<Value>,
    /// Rate limits (at most 8; see `PUT /api/keys/{id}/limits`); absent for none.
    #[schema(value_type = Option<Vec<RateLimitDoc>>, max_items = 8)]
    #[serde(default)]
    rate_limits: Option<Vec<RateLimitIn>>,
    /// A credit budget; absent for none.
    #[schema(value_type = Option<CreditsDoc>)]
    #[serde(default)]
    credits: Option<CreditsIn>,
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

#[utoipa::path(post, path = "/api/keys", tag = "keys", security(("demo_session" = [])),
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The key, shown once, and its metadata.", body = CreatedKey),
        (status = 400, description = "A field is wrong (`bad_request`), or the policy refuses it (`policy`: a name, an expiry, too many keys).", content_type = "application/problem+json", body = Problem),
        (status = 403, description = "The session is not a manager's (`permission_denied`).", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn create_key(
    State(state): State<AppState>,
    Session(actor): Session,
    Body(body): Body,
) -> Result<Response, ApiError> {
    manager_only(&actor)?;
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
    for limit in body.rate_limits.into_iter().flatten() {
        req = req.rate_limit(limit.into());
    }
    if let Some(credits) = body.credits {
        req = req.credits(credits.into());
    }
    let (key, info) = state.manager.generate(&actor, req).await?;
    state.key_counts.forget(actor.org());
    Ok(no_store(
        StatusCode::CREATED,
        Json(json!({"key": key.expose_secret(), "info": info})),
    ))
}

#[utoipa::path(get, path = "/api/keys", tag = "keys", security(("demo_session" = [])),
    responses(
        (status = 200, description = "The organization's keys.", body = Vec<KeyInfoDoc>),
        (status = 403, description = "The session is not a manager's (`permission_denied`).", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    Session(actor): Session,
) -> Result<Response, ApiError> {
    let keys = state.manager.list(&actor).await?;
    Ok(no_store(StatusCode::OK, Json(keys)))
}

#[utoipa::path(get, path = "/api/keys/{id}", tag = "keys", security(("demo_session" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key's metadata.", body = KeyInfoDoc),
        (status = 403, description = "The session is not a manager's (`permission_denied`).", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such key in the organization (`not_found`).", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn get_key(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = key_id(&actor, &id)?;
    let info = state.manager.get(&actor, &id).await?;
    Ok(no_store(StatusCode::OK, Json(info)))
}

#[utoipa::path(post, path = "/api/keys/{id}/revoke", tag = "keys", security(("demo_session" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key, revoked: it stops working at once.", body = KeyInfoDoc),
        (status = 403, description = "The session is not a manager's (`permission_denied`).", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such key in the organization (`not_found`).", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "Changed concurrently (`conflict`), or already revoked (`revoked`).", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = key_id(&actor, &id)?;
    let info = state.manager.revoke(&actor, &id).await?;
    state.key_counts.forget(actor.org());
    Ok(no_store(StatusCode::OK, Json(info)))
}

/// `POST /api/keys/{id}/roll` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollBody {
    /// How long the old key keeps working (0 to the policy's maximum life); default one day.
    #[schema(minimum = 0)]
    overlap_seconds: Option<i64>,
}

/// Overlap used by `roll` when the body names none: one day.
const DEFAULT_OVERLAP_SECS: i64 = 86_400;

#[utoipa::path(post, path = "/api/keys/{id}/roll", tag = "keys", security(("demo_session" = [])),
    params(("id" = String, Path, description = "The key's id")),
    request_body(content = Option<RollBody>, content_type = "application/json", description = "Optional; the overlap defaults to one day."),
    responses(
        (status = 201, description = "The replacement, shown once; the old key keeps working for the overlap.", body = CreatedKey),
        (status = 400, description = "A field is wrong (`bad_request`), or the policy refuses the roll (`policy`).", content_type = "application/problem+json", body = Problem),
        (status = 403, description = "The session is not a manager's (`permission_denied`).", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such key in the organization (`not_found`).", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "The key is revoked (`revoked`), expired (`expired`), or changed concurrently (`conflict`).", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn roll_key(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    manager_only(&actor)?;
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
    state.key_counts.forget(actor.org());
    Ok(no_store(
        StatusCode::CREATED,
        Json(json!({"key": key.expose_secret(), "info": info})),
    ))
}

#[utoipa::path(post, path = "/api/keys/{id}/reveal", tag = "keys", security(("demo_session" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key again (audited).", body = RevealedKey),
        (status = 400, description = "The policy does not allow reveal (`policy`).", content_type = "application/problem+json", body = Problem),
        (status = 403, description = "The session is not a manager's (`permission_denied`).", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such key in the organization (`not_found`).", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "The key is revoked (`revoked`) or expired (`expired`).", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn reveal_key(
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

#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys", security(("demo_session" = [])),
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked and removed."),
        (status = 403, description = "The session is not a manager's (`permission_denied`).", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such key in the organization (`not_found`).", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn delete_key(
    State(state): State<AppState>,
    Session(actor): Session,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = key_id(&actor, &id)?;
    state.manager.delete(&actor, &id).await?;
    state.key_counts.forget(actor.org());
    Ok(no_store(StatusCode::NO_CONTENT, ()))
}
