//! Guarding HTTP routes with API keys: a tower [`Layer`](tower_layer::Layer) and an axum
//! extractor for [`Verified`].
//!
//! [`ApiKeyLayer::new(manager, scope)`](ApiKeyLayer::new) wraps a service so that every request
//! must carry `Authorization: Bearer <key>` for a key granted `scope`. The layer verifies the
//! key with [`KeyManager::verify`], removes the `Authorization` header (so nothing downstream
//! can log the key) and inserts the [`Verified`] result into the request extensions, where a
//! handler takes it as an extractor argument.
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
//! let app: Router = Router::new()
//!     .route("/metrics", get(metrics))
//!     .route_layer(ApiKeyLayer::new(manager.clone(), Scope::Prometheus))
//!     .merge(
//!         Router::new()
//!             .route("/orgs/{org}/users", get(users))
//!             .route_layer(ApiKeyLayer::new(manager, Scope::Scim)),
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
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::axum::extract::{FromRequestParts, OptionalFromRequestParts};
use ::axum::response::{IntoResponse, Response as AxumResponse};
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use zeroize::Zeroizing;

use crate::{Error, KeyManager, KeyStore, Scope, Verified};
pub mod secret_scanning;

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

/// The boxed future of [`ApiKeyService`].
pub type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send + 'static>>;

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
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // `self.inner` is the clone that was driven to readiness: take it for this request and
        // leave a fresh clone in its place (tower's guidance for services that clone inner).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let token = match bearer_token(req.headers()) {
            Ok(t) => t,
            Err(rejection) => {
                let resp = rejection.response(Some(&self.scope));
                return Box::pin(async move { Ok(resp) });
            }
        };
        req.headers_mut().remove(AUTHORIZATION);
        let manager = self.manager.clone();
        let scope = self.scope.clone();
        Box::pin(async move {
            match manager.verify(&token, &scope).await {
                Ok(verified) => {
                    drop(token);
                    // Usage-limit fields (only for a key with rate limits).
                    let fields = rate_headers::fields(&verified);
                    req.extensions_mut().insert(verified);
                    let mut resp = inner.call(req).await?;
                    if let Some(f) = fields {
                        rate_headers::insert(resp.headers_mut(), f);
                    }
                    Ok(resp)
                }
                Err(e) => Ok(rate_headers::refusal(&e)
                    .unwrap_or_else(|| Rejection::from_error(&e).response(Some(&scope)))),
            }
        })
    }
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
                tracing::warn!(
                    target: "api_keys::http",
                    class = "store",
                    "API key verification could not reach the key store"
                );
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
            // Scope names match `[a-z][a-z0-9._:-]*`: safe inside a quoted string.
            Rejection::InsufficientScope => Some(match scope {
                Some(scope) => format!(
                    "Bearer realm=\"{REALM}\", error=\"{code}\", scope=\"{}\"",
                    scope.as_str()
                ),
                None => format!("Bearer realm=\"{REALM}\", error=\"{code}\""),
            }),
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

/// Reads the bearer token of a request, checking size and shape before anything else.
fn bearer_token(headers: &HeaderMap) -> Result<Zeroizing<String>, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Rejection::Missing);
    };
    if values.next().is_some() {
        return Err(Rejection::InvalidRequest);
    }
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(Rejection::InvalidRequest);
    }
    let bytes = value.as_bytes();
    // Visible ASCII, space and tab only (RFC 9110 field values as credentials use them).
    if !bytes
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        return Err(Rejection::InvalidRequest);
    }
    let text = trim_ows(bytes);
    if text.is_empty() {
        return Err(Rejection::Missing);
    }
    let scheme_end = text
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(text.len());
    let (scheme, rest) = text.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Rejection::Missing);
    }
    let token = trim_ows(rest);
    if token.is_empty() || !is_b64token(token) {
        return Err(Rejection::InvalidRequest);
    }
    // `token` is ASCII (checked above), so this conversion cannot fail.
    let token = std::str::from_utf8(token).map_err(|_| Rejection::InvalidRequest)?;
    Ok(Zeroizing::new(token.to_owned()))
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// RFC 6750 `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &[u8]) -> bool {
    let body_end = t.iter().position(|&b| b == b'=').unwrap_or(t.len());
    body_end > 0
        && t[..body_end].iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
        && t[body_end..].iter().all(|&b| b == b'=')
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
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use ::axum::Router;
    use ::axum::body::Body;
    use ::axum::routing::get;
    use http_body_util::BodyExt;
    use time::{Duration, OffsetDateTime};
    use tower::{Layer, Service, ServiceExt, service_fn};

    use super::*;
    use crate::{
        Actor, AuditAction, AuditEvent, AuditSink, BoxError, Expiry, FailureClass, GenerateRequest,
        KeyManager, Keyring, ManualClock, MasterKey, MemoryStore, OrgId, UserId,
    };

    /// Records the failure classes the manager reports (shows whether `verify` ran).
    #[derive(Clone, Default)]
    struct Failures(Arc<Mutex<Vec<FailureClass>>>);

    impl Failures {
        fn take(&self) -> Vec<FailureClass> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl AuditSink for Failures {
        fn record(&self, e: &AuditEvent) -> Result<(), BoxError> {
            if let AuditAction::VerificationFailed(c) = e.action {
                self.0.lock().unwrap().push(c);
            }
            Ok(())
        }
    }

    struct Fixture {
        manager: KeyManager<MemoryStore>,
        store: MemoryStore,
        clock: ManualClock,
        failures: Failures,
        admin: Actor,
    }

    fn fixture() -> Fixture {
        let store = MemoryStore::new();
        let clock = ManualClock::new(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap());
        let failures = Failures::default();
        let manager = KeyManager::builder(store.clone(), Keyring::new(1, MasterKey::generate()))
            .clock(clock.clone())
            .audit(failures.clone())
            .build()
            .unwrap();
        Fixture {
            manager,
            store,
            clock,
            failures,
            admin: Actor::manager(OrgId::new("acme"), UserId::new("alice")),
        }
    }

    impl Fixture {
        async fn key(&self, scope: Scope) -> (String, crate::KeyInfo) {
            let (key, info) = self
                .manager
                .generate(
                    &self.admin,
                    GenerateRequest::new("k")
                        .scope(scope)
                        .expiry(Expiry::Days(7)),
                )
                .await
                .unwrap();
            (key.expose_secret().to_string(), info)
        }

        /// The layer over a service that answers the verified key id and counts its calls.
        fn service(
            &self,
            calls: &Arc<AtomicUsize>,
        ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone
        {
            let calls = calls.clone();
            ApiKeyLayer::new(self.manager.clone(), Scope::Prometheus).layer(service_fn(
                move |req: Request<Body>| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let verified = req.extensions().get::<Verified>().cloned();
                        let auth_seen = req.headers().contains_key(AUTHORIZATION);
                        let body = format!(
                            "{}|{}",
                            verified.map(|v| v.key_id().to_string()).unwrap_or_default(),
                            auth_seen
                        );
                        Ok::<_, Infallible>(Response::new(Body::from(body)))
                    }
                },
            ))
        }
    }

    struct Answer {
        status: StatusCode,
        challenge: Option<String>,
        body: String,
    }

    async fn send(
        svc: impl Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
        auth: &[&[u8]],
    ) -> Answer {
        let mut req = Request::builder().uri("/metrics");
        for a in auth {
            req = req.header(AUTHORIZATION, HeaderValue::from_bytes(a).unwrap());
        }
        let resp = svc.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            challenge,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    const BARE: &str = "Bearer realm=\"api\"";
    const INVALID_REQUEST: &str = "Bearer realm=\"api\", error=\"invalid_request\"";
    const INVALID_TOKEN: &str = "Bearer realm=\"api\", error=\"invalid_token\"";

    #[tokio::test]
    async fn a_valid_key_reaches_the_inner_service_with_verified_and_without_the_header() {
        let f = fixture();
        let (token, info) = f.key(Scope::Prometheus).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let a = send(f.service(&calls), &[format!("Bearer {token}").as_bytes()]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, format!("{}|false", info.id));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The scheme is case-insensitive and surrounding blanks are allowed.
        let a = send(
            f.service(&calls),
            &[format!("bEARER   {token} ").as_bytes()],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(f.failures.take().is_empty());
    }

    #[tokio::test]
    async fn missing_blank_or_foreign_credentials_get_a_bare_challenge() {
        let f = fixture();
        let calls = Arc::new(AtomicUsize::new(0));
        for auth in [
            &[][..],
            &[&b""[..]],
            &[b"   "],
            &[b"Basic YWxhZGRpbjpvcGVu"],
        ] {
            let a = send(f.service(&calls), auth).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(a.challenge.as_deref(), Some(BARE), "{auth:?}");
            assert_eq!(a.body, r#"{"error":"unauthorized"}"#);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(f.failures.take().is_empty(), "verify must not run");
    }

    #[tokio::test]
    async fn unusable_headers_are_invalid_requests_without_verification() {
        let f = fixture();
        let (token, _) = f.key(Scope::Prometheus).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let long = format!("Bearer {}", "A".repeat(MAX_AUTHORIZATION_LEN));
        let huge = format!("Bearer {}", "A".repeat(64 * 1024));
        let valid = format!("Bearer {token}");
        // Exactly at the cap is read (and then fails verification as any junk token would).
        let at_cap = format!("Bearer {}", "A".repeat(MAX_AUTHORIZATION_LEN - 7));
        let cases: Vec<Vec<&[u8]>> = vec![
            vec![b"Bearer"],
            vec![b"Bearer    "],
            vec![b"Bearer a b"],
            vec![b"Bearer a,b"],
            vec![b"Bearer =abc"],
            vec![b"Bearer abc=d"],
            vec![b"Bearer \xffabc"],
            vec![long.as_bytes()],
            vec![huge.as_bytes()],
            vec![valid.as_bytes(), valid.as_bytes()],
            vec![valid.as_bytes(), b"Basic x"],
        ];
        for auth in &cases {
            let a = send(f.service(&calls), auth).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{auth:?}");
            assert_eq!(a.challenge.as_deref(), Some(INVALID_REQUEST));
            assert_eq!(a.body, r#"{"error":"invalid_request"}"#);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(f.failures.take().is_empty(), "verify must not run");
        let a = send(f.service(&calls), &[at_cap.as_bytes()]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(f.failures.take(), vec![FailureClass::Malformed]);
    }

    #[tokio::test]
    async fn bad_expired_and_revoked_keys_look_the_same() {
        let f = fixture();
        let calls = Arc::new(AtomicUsize::new(0));
        let (revoked, revoked_info) = f.key(Scope::Prometheus).await;
        f.manager.revoke(&f.admin, &revoked_info.id).await.unwrap();
        let (expiring, _) = f.key(Scope::Prometheus).await;
        // A well-formed token naming a real key but carrying another secret.
        let (_, real) = f.key(Scope::Prometheus).await;
        let wrong = crate::token::format_token("sak", real.id, &[7u8; 32]).to_string();
        f.clock.advance(Duration::days(3));
        let mut answers = Vec::new();
        for token in [&revoked, &wrong, &"sak_nonsense".to_string()] {
            answers.push(send(f.service(&calls), &[format!("Bearer {token}").as_bytes()]).await);
        }
        f.clock.advance(Duration::days(5));
        answers.push(
            send(
                f.service(&calls),
                &[format!("Bearer {expiring}").as_bytes()],
            )
            .await,
        );
        for a in &answers {
            assert_eq!(a.status, StatusCode::UNAUTHORIZED);
            assert_eq!(a.challenge.as_deref(), Some(INVALID_TOKEN));
            assert_eq!(a.body, r#"{"error":"invalid_token"}"#);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(
            f.failures.take(),
            vec![
                FailureClass::Revoked,
                FailureClass::InvalidKey,
                FailureClass::Malformed,
                FailureClass::Expired
            ]
        );
    }

    #[tokio::test]
    async fn a_key_without_the_scope_is_insufficient_scope() {
        let f = fixture();
        let (token, _) = f.key(Scope::Scim).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let a = send(f.service(&calls), &[format!("Bearer {token}").as_bytes()]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(
            a.challenge.as_deref(),
            Some("Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"prometheus\"")
        );
        assert_eq!(a.body, r#"{"error":"insufficient_scope"}"#);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // Custom scopes are named the same way.
        let custom = Scope::custom("billing.read").unwrap();
        let svc = ApiKeyLayer::new(f.manager.clone(), custom).layer(service_fn(
            |_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) },
        ));
        let a = send(svc, &[format!("Bearer {token}").as_bytes()]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert!(a.challenge.unwrap().ends_with("scope=\"billing.read\""));
    }

    #[tokio::test]
    async fn a_tampered_record_is_a_generic_500_without_a_challenge() {
        let f = fixture();
        let (token, info) = f.key(Scope::Prometheus).await;
        let mut rec = crate::KeyStore::get(&f.store, &info.id)
            .await
            .unwrap()
            .unwrap();
        rec.sealed.tag[0] ^= 1;
        f.store.overwrite_unchecked(rec);
        let calls = Arc::new(AtomicUsize::new(0));
        let a = send(f.service(&calls), &[format!("Bearer {token}").as_bytes()]).await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(a.challenge, None);
        assert_eq!(a.body, r#"{"error":"internal"}"#);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(f.failures.take(), vec![FailureClass::Integrity]);
    }

    /// An inner service that must be driven to readiness before each call, the way tower
    /// requires; a clone starts unready.
    struct NeedsReady {
        ready: bool,
    }

    impl Clone for NeedsReady {
        fn clone(&self) -> Self {
            NeedsReady { ready: false }
        }
    }

    impl Service<Request<Body>> for NeedsReady {
        type Response = Response<Body>;
        type Error = &'static str;
        type Future = std::future::Ready<Result<Response<Body>, &'static str>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.ready = true;
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: Request<Body>) -> Self::Future {
            let was_ready = std::mem::replace(&mut self.ready, false);
            std::future::ready(if was_ready {
                Ok(Response::new(Body::empty()))
            } else {
                Err("called without poll_ready")
            })
        }
    }

    #[tokio::test]
    async fn the_inner_service_that_was_made_ready_is_the_one_called() {
        let f = fixture();
        let (token, _) = f.key(Scope::Prometheus).await;
        let mut svc = ApiKeyLayer::new(f.manager.clone(), Scope::Prometheus)
            .layer(NeedsReady { ready: false });
        for _ in 0..3 {
            let req = Request::builder()
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let resp = svc.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn the_extractor_reads_what_the_layer_verified() {
        let f = fixture();
        let (token, info) = f.key(Scope::Prometheus).await;
        let app: Router = Router::new()
            .route(
                "/guarded",
                get(|v: Verified| async move { v.key_id().to_string() }),
            )
            .route_layer(ApiKeyLayer::new(f.manager.clone(), Scope::Prometheus))
            .route(
                "/open",
                get(|v: Verified| async move { v.key_id().to_string() }),
            )
            .route(
                "/optional",
                get(|v: Option<Verified>| async move { format!("{}", v.is_some()) }),
            );
        let call = |path: &'static str, auth: Option<String>| {
            let app = app.clone();
            async move {
                let mut req = Request::builder().uri(path);
                if let Some(a) = auth {
                    req = req.header(AUTHORIZATION, a);
                }
                let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
                let status = resp.status();
                let challenge = resp.headers().get(WWW_AUTHENTICATE).cloned();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, challenge, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        let (s, _, body) = call("/guarded", Some(format!("Bearer {token}"))).await;
        assert_eq!((s, body), (StatusCode::OK, info.id.to_string()));
        let (s, _, _) = call("/guarded", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        // Outside the layer a header proves nothing: the extractor refuses.
        let (s, c, _) = call("/open", Some(format!("Bearer {token}"))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(c.unwrap(), BARE);
        let (s, _, body) = call("/optional", Some(format!("Bearer {token}"))).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "false"));
    }

    #[test]
    fn layer_and_service_debug_show_no_secret_material() {
        let f = fixture();
        let layer = ApiKeyLayer::new(f.manager.clone(), Scope::Scim);
        assert_eq!(format!("{layer:?}"), "ApiKeyLayer { scope: Scim, .. }");
        let svc = layer.clone().layer(NeedsReadyDebug);
        assert_eq!(
            format!("{svc:?}"),
            "ApiKeyService { scope: Scim, inner: NeedsReadyDebug, .. }"
        );
    }

    #[derive(Clone, Debug)]
    struct NeedsReadyDebug;

    fn header_map(value: &[u8]) -> Option<HeaderMap> {
        let v = HeaderValue::from_bytes(value).ok()?;
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v);
        Some(h)
    }

    proptest::proptest! {
        /// Any header value: no panic, the cap holds, and whatever is accepted is a bearer
        /// b64token no longer than the header.
        #[test]
        fn bearer_parsing_is_total_and_strict(
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700),
            prefix in proptest::sample::select(vec!["", "Bearer ", "bearer\t", "BEARER  "]),
        ) {
            let mut bytes = prefix.as_bytes().to_vec();
            bytes.extend_from_slice(&value);
            if let Some(h) = header_map(&bytes) {
                match bearer_token(&h) {
                    Ok(t) => {
                        proptest::prop_assert!(bytes.len() <= MAX_AUTHORIZATION_LEN);
                        proptest::prop_assert!(is_b64token(t.as_bytes()));
                        proptest::prop_assert!(t.len() < bytes.len());
                    }
                    Err(r) => {
                        if bytes.len() > MAX_AUTHORIZATION_LEN {
                            proptest::prop_assert_eq!(r, Rejection::InvalidRequest);
                        }
                    }
                }
            }
        }

        /// Every token of the b64token grammar gets through unchanged.
        #[test]
        fn b64tokens_pass_unchanged(t in "[A-Za-z0-9._~+/-]{1,200}={0,3}") {
            let h = header_map(format!("Bearer {t}").as_bytes()).unwrap();
            let got = bearer_token(&h).unwrap();
            proptest::prop_assert_eq!(got.as_str(), t.as_str());
        }
    }
}
