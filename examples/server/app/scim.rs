//! `GET /scim/v2/Users` and `GET /scim/v2/Users/{id}`: a minimal SCIM 2.0 directory of the
//! key's organization, for a key with the `scim` scope. Every error under `/scim/` is a SCIM
//! error (RFC 7644 §3.12).

use std::collections::HashMap;

use api_keys::Verified;
use axum::body::to_bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;

/// A user of the demo directory.
#[derive(Clone, Debug)]
pub(crate) struct DirectoryUser {
    id: &'static str,
    display_name: &'static str,
}

impl DirectoryUser {
    pub(crate) fn new(id: &'static str, display_name: &'static str) -> Self {
        DirectoryUser { id, display_name }
    }

    /// The SCIM `User` resource; `meta.location` is this user's own URL.
    fn to_json(&self) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": self.id,
            "userName": self.id,
            "displayName": self.display_name,
            "active": true,
            "meta": {"resourceType": "User", "location": format!("/scim/v2/Users/{}", self.id)},
        })
    }
}

fn scim_json(status: StatusCode, body: &Value) -> Response {
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

/// `GET /scim/v2/Users/{id}`: one user of the key's organization, or a SCIM 404.
pub(crate) async fn scim_user(
    State(state): State<AppState>,
    key: Verified,
    Path(id): Path<String>,
) -> Response {
    let user = state
        .directory
        .get(key.org())
        .and_then(|users| users.iter().find(|u| u.id == id));
    match user {
        Some(u) => scim_json(StatusCode::OK, &u.to_json()),
        None => scim_error(
            StatusCode::NOT_FOUND,
            None,
            "no user with this id in the key's organization",
        ),
    }
}

/// Any other path under `/scim/`: a SCIM 404 (the directory has users only).
pub(crate) async fn scim_not_found() -> Response {
    scim_error(
        StatusCode::NOT_FOUND,
        None,
        "this directory serves /scim/v2/Users only",
    )
}

/// Rebuilds every error answer under `/scim/` (the API key layer's 401/403, a 405, a
/// rejected query) as a SCIM error, keeping its status and headers (`WWW-Authenticate`,
/// `Allow`).
pub(crate) async fn scim_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_scim = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/scim+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_scim {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let class = to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let detail = match class.as_str() {
        "unauthorized" => "send an API key with the scim scope as a Bearer token",
        "invalid_request" => "the Authorization header is malformed",
        "invalid_token" => "the API key is not valid",
        "insufficient_scope" => "the API key does not have the scim scope",
        "rate_limited" => "the API key's rate limit is reached; retry after Retry-After seconds",
        "usage_exceeded" => "the API key's usage credits are used up",
        "unavailable" | "limits_unavailable" => {
            "the service cannot check API keys now; retry after Retry-After seconds"
        }
        _ if status == StatusCode::METHOD_NOT_ALLOWED => "this resource does not take this method",
        _ if status.is_server_error() => "internal error; see the server log",
        _ => "the request is malformed",
    };
    let mut fresh = scim_error(status, None, detail);
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
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
    scim_json(status, &body)
}

/// Parses the one filter this directory supports: `userName eq "<value>"` (attribute and
/// operator case-insensitive, as RFC 7644 §3.4.2.2 says; the value is matched ignoring case).
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
/// with `filter=userName eq "..."`, `startIndex` (1-based; below 1 is 1) and `count` (at most
/// 100; negative is 0), as RFC 7644 reads them.
pub(crate) async fn scim_users(
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
    let number = |name: &str, default: i64| match params.get(name) {
        None => Some(default),
        Some(v) => v.parse::<i64>().ok(),
    };
    let (Some(start), Some(count)) = (number("startIndex", 1), number("count", i64::MAX)) else {
        return scim_error(
            StatusCode::BAD_REQUEST,
            Some("invalidValue"),
            "startIndex and count must be integers",
        );
    };
    // RFC 7644 (3.4.2.4): a startIndex below 1 is 1 and a negative count is 0; a count above
    // the server's maximum is the maximum.
    let start = usize::try_from(start.max(1)).unwrap_or(usize::MAX);
    let count = usize::try_from(count.max(0)).map_or(SCIM_MAX_COUNT, |c| c.min(SCIM_MAX_COUNT));
    let matching: Vec<&DirectoryUser> = users
        .iter()
        // `userName` is not case-exact (RFC 7643 §4.1.1), so `eq` ignores case (RFC 7644
        // §3.4.2.2): `Bob` is bob.
        .filter(|u| {
            wanted
                .as_deref()
                .is_none_or(|w| w.to_lowercase() == u.id.to_lowercase())
        })
        .collect();
    let resources: Vec<Value> = matching
        .iter()
        .skip(start - 1)
        .take(count)
        .map(|u| u.to_json())
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
