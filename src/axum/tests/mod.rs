//! Unit tests of the layer and the extractor: answers, challenges, headers.

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
use http::header::AUTHORIZATION;

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
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone {
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

/// A request to the guarded service with `Authorization: Bearer <token>`.
fn bearer_request(token: &str) -> Request<Body> {
    Request::builder()
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
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
    // A `Scope::Custom` built by hand, bypassing `Scope::custom`'s rule, cannot break the
    // challenge's syntax (a `"` would end the quoted string and start a parameter of its own).
    for odd in ["x\", error=\"other", "a\\b", ""] {
        let svc =
            ApiKeyLayer::new(f.manager.clone(), Scope::Custom(Arc::from(odd))).layer(service_fn(
                |_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) },
            ));
        let a = send(svc, &[format!("Bearer {token}").as_bytes()]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(
            a.challenge.as_deref(),
            Some("Bearer realm=\"api\", error=\"insufficient_scope\""),
            "{odd:?}"
        );
    }
}

/// A `sap` manager shares the store with the fixture's `sak` manager. A `sap_` token naming
/// an existing `sak` key (the checksum is public) is an invalid token, as an unknown id is:
/// not a 500 that would tell the id exists under another class.
#[tokio::test]
async fn another_class_key_id_is_an_invalid_token_like_an_unknown_id() {
    let f = fixture();
    let pool_failures = Failures::default();
    let pool = KeyManager::builder(f.store.clone(), (*f.manager.keyring()).clone())
        .prefix("sap")
        .clock(f.clock.clone())
        .audit(pool_failures.clone())
        .build()
        .unwrap();
    let (_, info) = f.key(Scope::Prometheus).await;
    let moved = crate::token::format_token("sap", info.id, &[7u8; 32]).to_string();
    let (_, gone) = f.key(Scope::Prometheus).await;
    f.manager.delete(&f.admin, &gone.id).await.unwrap();
    let unknown = crate::token::format_token("sap", gone.id, &[7u8; 32]).to_string();
    let svc =
        ApiKeyLayer::new(pool, Scope::Prometheus).layer(service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from("inner")))
        }));
    for token in [&moved, &unknown, &moved] {
        let a = send(svc.clone(), &[format!("Bearer {token}").as_bytes()]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.challenge.as_deref(), Some(INVALID_TOKEN));
        assert_eq!(a.body, r#"{"error":"invalid_token"}"#);
    }
    assert_eq!(pool_failures.take(), vec![FailureClass::InvalidKey; 3]);
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
    let mut svc =
        ApiKeyLayer::new(f.manager.clone(), Scope::Prometheus).layer(NeedsReady { ready: false });
    for _ in 0..3 {
        let req = bearer_request(&token);
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

/// A key the cache does not hold is looked up in the cache once per request, and each
/// request is one verification (the layer's cold path reads the store without asking the
/// cache again).
#[cfg(feature = "metrics")]
#[test]
fn a_cold_request_through_the_layer_counts_one_lookup_and_one_verification() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let f = fixture();
                let (token, _) = f.key(Scope::Prometheus).await;
                assert_eq!(f.manager.cached_records(), 0);
                let calls = Arc::new(AtomicUsize::new(0));
                let mut svc = f.service(&calls);
                for _ in 0..2 {
                    let req = bearer_request(&token);
                    let resp = svc.ready().await.unwrap().call(req).await.unwrap();
                    assert_eq!(resp.status(), StatusCode::OK);
                }
                assert_eq!(calls.load(Ordering::SeqCst), 2);
            })
    });
    let mut counters = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            counters.push((key.key().name().to_string(), n));
        }
    }
    counters.sort();
    let count = |name: &str| -> u64 {
        counters
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .sum()
    };
    assert_eq!(count(crate::metrics::CACHE_MISSES_TOTAL), 1, "{counters:?}");
    assert_eq!(count(crate::metrics::CACHE_HITS_TOTAL), 1, "{counters:?}");
    assert_eq!(
        count(crate::metrics::VERIFICATIONS_TOTAL),
        2,
        "{counters:?}"
    );
}

/// Polls a future to completion on this thread (no runtime: the manager then writes last
/// uses inline, from the verification that finds a flush due).
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Without a runtime, the verification that finds a last-use flush due writes it. If the
/// layer's response future carrying that flush is dropped unpolled, the next use flushes
/// instead: last-use recording never stalls.
#[test]
fn a_dropped_response_future_never_stalls_last_use_recording() {
    let f = fixture();
    let (a, a_info) = block_on(f.key(Scope::Prometheus));
    let (b, b_info) = block_on(f.key(Scope::Prometheus));
    for t in [&a, &b] {
        block_on(f.manager.verify(t, &Scope::Prometheus)).unwrap();
    }
    f.clock.advance(Duration::minutes(2));
    let now = crate::Clock::now(&f.clock);
    let last_used = |id| {
        block_on(f.store.get(id))
            .unwrap()
            .unwrap()
            .last_used_at
            .unwrap()
    };
    assert!(last_used(&a_info.id) < now);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = f.service(&calls);
    block_on(svc.ready()).unwrap();
    let req = bearer_request(&a);
    drop(svc.call(req));
    block_on(f.manager.verify(&b, &Scope::Prometheus)).unwrap();
    assert_eq!(last_used(&a_info.id), now);
    assert_eq!(last_used(&b_info.id), now);
}

/// Limits through the layer: engines that wait, and what an engine may answer.
mod limits;
