//! `GET /scim/v2/Users`: a minimal SCIM 2.0 directory of the key's organization, for a key
//! with the `scim` scope.

use std::collections::HashMap;

use api_keys::Verified;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
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
