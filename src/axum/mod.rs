//! Guarding HTTP routes with API keys: a tower [`Layer`](tower_layer::Layer) and an axum
//! extractor for [`Verified`].
//!
//! [`ApiKeyLayer::new(manager, scope)`](ApiKeyLayer::new) wraps a service so that every request
//! must carry `Authorization: Bearer <key>` for a key granted `scope`. The layer verifies the
//! key with [`KeyManager::verify`], removes the `Authorization` header (so nothing downstream
//! can log the key) and inserts the [`Verified`] result into the request extensions, where a
//! handler takes it as an extractor argument. The token is read where the HTTP stack put it
//! and dropped with the header after verification: the layer makes no copy of it (the
//! server's read buffer is the HTTP stack's, which no copy could clear either).
//!
//! ```
//! use api_keys::{KeyManager, Keyring, MasterKey, MemoryStore, OrgId, Scope, Verified};
//! use api_keys::axum::ApiKeyLayer;
//! use axum::{Router, extract::Path, http::StatusCode, routing::get};
//!
//! async fn metrics(key: Verified) -> String {
//!     format!("# scraped with key {}\n", key.key_id())
//! }
//!
//! // A tenant-specific route: the key must belong to the organization in the path.
//! async fn users(Path(org): Path<String>, key: Verified) -> Result<&'static str, StatusCode> {
//!     let org = OrgId::try_new(org).map_err(|_| StatusCode::NOT_FOUND)?;
//!     key.require_org(&org).map_err(|_| StatusCode::NOT_FOUND)?;
//!     Ok("[]")
//! }
//!
//! # fn main() -> Result<(), api_keys::Error> {
//! let manager = KeyManager::builder(MemoryStore::new(), Keyring::new(1, MasterKey::generate()))
//!     .build()?;
//! // The layer on each route's methods (`get(..).route_layer(..)`): a method the route does
//! // not take is answered 405 before any key is read.
//! let app: Router = Router::new()
//!     .route(
//!         "/metrics",
//!         get(metrics).route_layer(ApiKeyLayer::new(manager.clone(), Scope::Prometheus)),
//!     )
//!     .route(
//!         "/orgs/{org}/users",
//!         get(users).route_layer(ApiKeyLayer::new(manager, Scope::Scim)),
//!     );
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # Responses (RFC 6750)
//!
//! | request | status | `WWW-Authenticate` |
//! |---|---|---|
//! | no `Authorization` header, a blank one, or another scheme than `Bearer` | 401 | `Bearer realm="api"` |
//! | an unusable header: longer than [`MAX_AUTHORIZATION_LEN`], not visible ASCII, an empty or non-`b64token` token, several `Authorization` headers | 400 | `Bearer realm="api", error="invalid_request"` |
//! | a malformed, unknown, wrong, expired or revoked key | 401 | `Bearer realm="api", error="invalid_token"` |
//! | a genuine key without the required scope | 403 | `Bearer realm="api", error="insufficient_scope", scope="<scope>"` |
//! | the key store cannot be reached (a database restart, a network fault) | 503 `{"error":"unavailable"}` | none; `Retry-After: 1` |
//! | a stored record failing its integrity check | 500 | none |
//! | a genuine, allowed key refused by a rate limit | 429 `{"error":"rate_limited"}` | none; `Retry-After`, `RateLimit-Policy`, `RateLimit` |
//! | a genuine, allowed key out of usage credits | 429 `{"error":"usage_exceeded"}` | none |
//! | the usage counters cannot decide and a limit fails closed | 503 `{"error":"limits_unavailable"}` | none; `Retry-After: 1` |
//!
//! An admitted request of a key with rate limits gets `RateLimit-Policy` and `RateLimit` on
//! its response too (see [`RATELIMIT_POLICY`]); a key without limits gets neither.
//!
//! Bodies are JSON naming the class only, e.g. `{"error":"invalid_token"}`: they never say
//! whether a key was expired or revoked (only a client holding the genuine secret could learn
//! that, and it learns it from the manager's audit trail, not from the response).
//! The header is never logged: the manager's audit sink records failed verifications by key id
//! and class, a 500 adds one `tracing` error event (target `api_keys::http`) with the class,
//! and a 503 one warning.
//! The header is capped at [`MAX_AUTHORIZATION_LEN`] bytes before any parsing; a longer one is
//! refused without calling the manager.

mod rate_headers;
pub use rate_headers::{RATELIMIT, RATELIMIT_POLICY};

use std::fmt;
use std::ops::Range;
use std::task::{Context, Poll};

use ::axum::extract::{FromRequestParts, OptionalFromRequestParts};
use ::axum::response::{IntoResponse, Response as AxumResponse};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};

use zeroize::Zeroizing;

use crate::manager::Step;
use crate::token::SECRET_LEN;
use crate::{Error, KeyManager, KeyStore, Scope, Verified};
mod bearer;
mod future;
pub mod secret_scanning;

use bearer::take_authorization;

/// Longest `Authorization` header value the layer reads, in bytes. A token is at most
/// [`MAX_TOKEN_LEN`](crate::MAX_TOKEN_LEN) characters; anything far longer is refused as
/// `invalid_request` before it is parsed.
pub const MAX_AUTHORIZATION_LEN: usize = 512;

/// The realm named in every `WWW-Authenticate` challenge.
const REALM: &str = "api";

/// A tower layer requiring a valid API key with a given scope; see the [module docs](self).
///
/// Cloning is cheap: the [`KeyManager`] is shared behind its `Arc`.
pub struct ApiKeyLayer<S> {
    manager: KeyManager<S>,
    scope: Scope,
}

impl<S: KeyStore + 'static> ApiKeyLayer<S> {
    /// A layer accepting keys of `manager` that are granted `scope`.
    pub fn new(manager: KeyManager<S>, scope: Scope) -> Self {
        ApiKeyLayer { manager, scope }
    }
}

impl<S> Clone for ApiKeyLayer<S> {
    fn clone(&self) -> Self {
        ApiKeyLayer {
            manager: self.manager.clone(),
            scope: self.scope.clone(),
        }
    }
}

impl<S> fmt::Debug for ApiKeyLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl<S, T> tower_layer::Layer<T> for ApiKeyLayer<S> {
    type Service = ApiKeyService<S, T>;

    fn layer(&self, inner: T) -> Self::Service {
        ApiKeyService {
            manager: self.manager.clone(),
            scope: self.scope.clone(),
            inner,
        }
    }
}

/// The service made by [`ApiKeyLayer`]: verifies the bearer key, then calls `inner` with
/// [`Verified`] in the request extensions, or answers an RFC 6750 error without calling it.
pub struct ApiKeyService<S, T> {
    manager: KeyManager<S>,
    scope: Scope,
    inner: T,
}

impl<S, T: Clone> Clone for ApiKeyService<S, T> {
    fn clone(&self) -> Self {
        ApiKeyService {
            manager: self.manager.clone(),
            scope: self.scope.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S, T: fmt::Debug> fmt::Debug for ApiKeyService<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyService")
            .field("scope", &self.scope)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

pub use future::ResponseFuture;

impl<S, T, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for ApiKeyService<S, T>
where
    S: KeyStore + 'static,
    T: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    T::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = T::Error;
    type Future = ResponseFuture<T::Future, ResBody, T::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Taken out of the request in one look-up (nothing downstream sees or logs it; a
        // refused request is not passed on either way); the token is read in place (no copy
        // of the secret is made).
        let (header, token) = match take_authorization(req.headers_mut()) {
            Ok(taken) => taken,
            Err(rejection) => {
                return ResponseFuture::refused(rejection.response(Some(&self.scope)));
            }
        };
        // Most verifications (a cached key, limits kept in process) decide without waiting:
        // then the service that was driven to readiness is called right here, and the
        // response future holds only its future. The presented secret is parsed into a
        // zeroizing buffer of this call that no future captures.
        let started = crate::metrics::start();
        let step = {
            let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
            self.manager
                .verify_now(token_text(&header, &token), &self.scope, 1, &mut secret)
        };
        let later = match step {
            Step::Done(result) => {
                crate::metrics::verification(started, &result);
                drop(header);
                return match result {
                    Ok(verified) => accepted(&mut self.inner, req, verified),
                    Err(e) => ResponseFuture::refused(refusal(&e, &self.scope)),
                };
            }
            Step::Wait(wait) => Later::Wait(wait),
            Step::Cold { id, presented } => Later::Cold(id, presented),
        };
        // `self.inner` is the clone that was driven to readiness: take it for this request and
        // leave a fresh clone in its place (tower's guidance for services that clone inner).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let manager = self.manager.clone();
        let scope = self.scope.clone();
        ResponseFuture::waiting(Box::pin(async move {
            let result = match later {
                Later::Wait(wait) => manager.wait(wait).await,
                // The secret is read again from the header (by a future that keeps it in a
                // zeroizing buffer of its own); the cache is not asked twice.
                Later::Cold(id, presented) => {
                    let token = token_text(&header, &token);
                    manager
                        .verify_cold_token(token, id, presented, &scope, 1)
                        .await
                }
            };
            crate::metrics::verification(started, &result);
            drop(header);
            match result {
                Ok(verified) => accepted(&mut inner, req, verified).await,
                Err(e) => Ok(refusal(&e, &scope)),
            }
        }))
    }
}

/// What a request's verification still waits for once `call` returned.
enum Later {
    Wait(crate::manager::Wait),
    Cold(crate::KeyId, crate::cache::Fingerprint),
}

/// The token inside the `Authorization` value (its bytes checked by `bearer_in`; the parser
/// reads bytes, so it is not validated as UTF-8 again).
fn token_text<'h>(header: &'h HeaderValue, token: &Range<usize>) -> &'h [u8] {
    header.as_bytes().get(token.clone()).unwrap_or_default()
}

/// Calls `inner` (ready) with the verified key in the request's extensions, and adds the
/// usage-limit fields (only for a key with rate limits) to its response.
fn accepted<T, ReqBody, ResBody>(
    inner: &mut T,
    mut req: Request<ReqBody>,
    verified: Verified,
) -> ResponseFuture<T::Future, ResBody, T::Error>
where
    T: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let fields = rate_headers::fields(&verified);
    req.extensions_mut().insert(verified);
    ResponseFuture::accepted(inner.call(req), fields)
}

/// The response to a refused verification.
fn refusal<B: From<String>>(e: &Error, scope: &Scope) -> Response<B> {
    rate_headers::refusal(e).unwrap_or_else(|| Rejection::from_error(e).response(Some(scope)))
}

/// Why a request was refused, as far as the client may know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rejection {
    /// No credentials (or not ours): 401 with a bare challenge.
    Missing,
    /// Credentials present but unusable: 400 `invalid_request`.
    InvalidRequest,
    /// 401 `invalid_token`.
    InvalidToken,
    /// 403 `insufficient_scope`.
    InsufficientScope,
    /// 503 with `Retry-After`: the key store cannot be reached now (a database restart, a
    /// network fault); the same request may succeed in a moment.
    Unavailable,
    /// 500: the server's fault.
    Internal,
}

impl Rejection {
    fn from_error(e: &Error) -> Rejection {
        match e {
            Error::Malformed | Error::InvalidKey | Error::Expired | Error::Revoked => {
                Rejection::InvalidToken
            }
            Error::ScopeNotAllowed => Rejection::InsufficientScope,
            Error::Store(_) => {
                // One per request during an outage: bounded like failed verifications.
                if crate::audit::unavailable_logged() {
                    tracing::warn!(
                        target: "api_keys::http",
                        class = "store",
                        "API key verification could not reach the key store"
                    );
                }
                Rejection::Unavailable
            }
            other => {
                let class = match other {
                    Error::Integrity => "integrity",
                    _ => "other",
                };
                tracing::error!(
                    target: "api_keys::http",
                    class,
                    "API key verification failed on the server's side"
                );
                Rejection::Internal
            }
        }
    }

    fn response<B: From<String>>(self, scope: Option<&Scope>) -> Response<B> {
        let (status, code) = match self {
            Rejection::Missing => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Rejection::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            Rejection::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Rejection::InsufficientScope => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Rejection::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Rejection::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let challenge = match self {
            Rejection::Missing => Some(format!("Bearer realm=\"{REALM}\"")),
            Rejection::InvalidRequest | Rejection::InvalidToken => {
                Some(format!("Bearer realm=\"{REALM}\", error=\"{code}\""))
            }
            // Scope names match `[a-z][a-z0-9._:-]*`, safe inside a quoted string; a
            // `Scope::Custom` built by hand need not, and is then left out of the challenge
            // rather than breaking its syntax.
            Rejection::InsufficientScope => Some(
                match scope.filter(|s| crate::ids::is_scope_name(s.as_str())) {
                    Some(scope) => format!(
                        "Bearer realm=\"{REALM}\", error=\"{code}\", scope=\"{}\"",
                        scope.as_str()
                    ),
                    None => format!("Bearer realm=\"{REALM}\", error=\"{code}\""),
                },
            ),
            Rejection::Unavailable | Rejection::Internal => None,
        };
        let mut resp = Response::new(B::from(format!("{{\"error\":\"{code}\"}}")));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(WWW_AUTHENTICATE, c);
        }
        if self == Rejection::Unavailable {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// The rejection of the [`Verified`] extractor when no [`ApiKeyLayer`] verified the request
/// (a route that was not layered): 401 with `WWW-Authenticate: Bearer realm="api"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingVerified;

impl fmt::Display for MissingVerified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request carries no verified API key")
    }
}

impl std::error::Error for MissingVerified {}

impl IntoResponse for MissingVerified {
    fn into_response(self) -> AxumResponse {
        Rejection::Missing.response(None)
    }
}

/// Takes the [`Verified`] key that an [`ApiKeyLayer`] put into the request extensions.
/// Without one (the route is not behind the layer) the request is refused with 401.
impl<St: Send + Sync> FromRequestParts<St> for Verified {
    type Rejection = MissingVerified;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Verified>()
            .cloned()
            .ok_or(MissingVerified)
    }
}

/// `Option<Verified>`: `None` when no [`ApiKeyLayer`] verified the request.
impl<St: Send + Sync> OptionalFromRequestParts<St> for Verified {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &St,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Verified>().cloned())
    }
}

#[cfg(test)]
mod tests;
