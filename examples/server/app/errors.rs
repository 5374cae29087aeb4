//! Errors and responses of the management API: the JSON error shape and its helpers.

use api_keys::{Actor, Error, KeyId};
use axum::Json;
use axum::body::Bytes;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A JSON error `{"error":"<class>","message":"<text>"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    class: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, class: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            class,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
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
pub(crate) fn no_store(status: StatusCode, body: impl IntoResponse) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Parses a key id from the path. A malformed id names no key: 404 for a manager, and 403 for
/// anyone else (as the manager answers for any id).
pub(crate) fn key_id(actor: &Actor, text: &str) -> Result<KeyId, ApiError> {
    KeyId::parse(text).map_err(|_| {
        ApiError::from(if actor.is_manager() {
            Error::NotFound
        } else {
            Error::PermissionDenied
        })
    })
}
