//! Errors and responses of the management API: the JSON error shape and its helpers.

use api_keys::{Actor, Error, KeyId};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answer: an RFC 9457 problem (`application/problem+json`) carrying its class in
/// the extension member `error`, e.g. `{"type":"urn:api-keys:problem:not_found",
/// "title":"Not Found","status":404,"detail":"...","error":"not_found"}`.
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
            Error::LimitsUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "limits_unavailable",
                "the usage counters are unreachable; try again",
            ),
            Error::Store(e) => {
                tracing::warn!(target: "server", error = %e, "the key store is unreachable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the key store cannot be reached now; try again in a moment",
                )
            }
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

/// The media type of an error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for ApiError {
    /// An RFC 9457 problem: `type` (a URN naming the class), `title` (the status's reason),
    /// `status`, `detail` (what is wrong, for a person), and the extension member `error`
    /// (the class, for a program to switch on).
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("urn:api-keys:problem:{}", self.class),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.message,
            "error": self.class,
        });
        let mut resp = no_store(self.status, body.to_string());
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
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

/// A request body read in full, whose failures are JSON errors: 413 over the size limit, 408
/// when it does not arrive within the body timeout (or is cut off).
pub(crate) struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                let (class, message) = class_of(StatusCode::PAYLOAD_TOO_LARGE);
                Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, class, message))
            }
            Err(_) => {
                let (class, message) = class_of(StatusCode::REQUEST_TIMEOUT);
                Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, class, message))
            }
        }
    }
}

/// Parses a JSON object body into `T`. The messages name the field that is wrong (`field
/// "name": invalid type: integer `5`, expected a string`), never a Rust type. A member named
/// twice in one object, at any depth, is refused: which of the two counts would be a guess
/// that a proxy or a log reading the other one does not share.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let Unique(value) = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = without_rust_types(e.into_inner().to_string());
        ApiError::bad_request(if path == "." {
            format!("the request body: {inner}")
        } else {
            format!("field \"{path}\": {inner}")
        })
    })
}

/// A JSON value whose objects name each member once (serde_json's own `Value` keeps the last).
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                return Err(serde::de::Error::custom(format_args!(
                    "the member `{name}` is named twice"
                )));
            }
            let Unique(v) = map.next_value()?;
            members.insert(name, v);
        }
        Ok(Value::Object(members))
    }
}

/// `serde`'s message with the integer type it expected (`expected u64`) said in words.
fn without_rust_types(message: String) -> String {
    const WORDS: [(&str, &str); 4] = [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u64", "a whole number from 0 to 18446744073709551615"),
        ("i64", "a whole number"),
    ];
    for (rust, words) in WORDS {
        if let Some(head) = message.strip_suffix(&format!("expected {rust}")) {
            return format!("{head}expected {words}");
        }
    }
    message
}

/// What a status means, for error responses that axum or hyper made without a JSON body
/// (a body over the limit, a method the route does not have, an unknown path, ...).
fn class_of(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::NOT_FOUND => ("not_found", "there is nothing at this path"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this path does not take this method; the Allow header lists the ones it takes",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is larger than this server accepts",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "request_timeout",
            "the request body did not arrive in time (or was cut off)",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers_too_large",
            "the request headers are larger than this server accepts",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send the body as application/json",
        ),
        s if s.is_server_error() => ("internal", "internal error; see the server log"),
        _ => ("bad_request", "the request is malformed"),
    }
}

/// Gives every error response the problem shape: one that axum (a rejection, the 405 of a
/// route, the 404 fallback) or a layer made as plain text is rebuilt as
/// a problem (see [`ApiError`]), keeping its status and headers (e.g. `Allow`).
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/") && v.contains("json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, _) = resp.into_parts();
    let (class, message) = class_of(status);
    let mut fresh = ApiError::new(status, class, message).into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
}

/// A manager-only call by anyone else is 403 before its body is read: a member's answer
/// never depends on what it sent.
pub(crate) fn manager_only(actor: &Actor) -> Result<(), ApiError> {
    if actor.is_manager() {
        Ok(())
    } else {
        Err(ApiError::from(Error::PermissionDenied))
    }
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
