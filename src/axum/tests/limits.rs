//! The layer and usage limits: engines that wait, and the 429 fields of what an engine answers.

use super::*;

/// An in-process engine that answers every decision later (after a yield), as a network
/// engine does: the layer's path for verifications that must wait.
struct Later(crate::LocalCounters);

impl crate::UsageCounters for Later {
    fn consume<'a>(&'a self, req: crate::UsageRequest<'a>) -> crate::Consumed<'a> {
        match self.0.consume(req) {
            crate::Consumed::Ready(decided) => crate::Consumed::Pending(Box::pin(async move {
                tokio::task::yield_now().await;
                decided
            })),
            pending => pending,
        }
    }

    fn set_credits<'a>(
        &'a self,
        key: crate::KeyId,
        credits: &'a crate::Credits,
        balance: u64,
        now_ms: i64,
    ) -> crate::BoxFuture<'a, Result<(), crate::CounterError>> {
        self.0.set_credits(key, credits, balance, now_ms)
    }

    fn credits<'a>(
        &'a self,
        key: crate::KeyId,
        credits: Option<&'a crate::Credits>,
        now_ms: i64,
    ) -> crate::BoxFuture<'a, Result<Option<u64>, crate::CounterError>> {
        self.0.credits(key, credits, now_ms)
    }

    fn link_credits<'a>(
        &'a self,
        from: crate::KeyId,
        to: crate::KeyId,
    ) -> crate::BoxFuture<'a, Result<(), crate::CounterError>> {
        self.0.link_credits(from, to)
    }

    fn forget<'a>(
        &'a self,
        key: crate::KeyId,
    ) -> crate::BoxFuture<'a, Result<(), crate::CounterError>> {
        self.0.forget(key)
    }
}

/// A cached key whose limits are kept by an engine that must be waited for: the layer waits
/// for the decision (the limit is enforced, its fields are set, a refusal is a 429 and never
/// reaches the inner service), on the first (cold) request and on the cached ones after it.
#[tokio::test]
async fn limits_kept_by_an_engine_that_waits_are_enforced_by_the_layer() {
    let clock = ManualClock::new(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap());
    let manager = KeyManager::builder(MemoryStore::new(), Keyring::new(1, MasterKey::generate()))
        .clock(clock.clone())
        .counters(Later(crate::LocalCounters::new()))
        .build()
        .unwrap();
    let admin = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    let (key, _) = manager
        .generate(
            &admin,
            GenerateRequest::new("k")
                .scope(Scope::Prometheus)
                .rate_limit(crate::RateLimit::new(
                    "burst",
                    3,
                    std::time::Duration::from_secs(60),
                )),
        )
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut svc = ApiKeyLayer::new(manager.clone(), Scope::Prometheus).layer(service_fn(
        move |_req: Request<Body>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) }
        },
    ));
    let mut answers = Vec::new();
    for _ in 0..4 {
        let req = bearer_request(key.expose_secret());
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        let remaining = resp
            .headers()
            .get(&RATELIMIT)
            .map(|v| v.to_str().unwrap().to_string());
        answers.push((resp.status(), remaining));
    }
    let statuses: Vec<_> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert!(
        answers[0].1.as_deref().unwrap().contains("r=2"),
        "{answers:?}"
    );
    assert!(
        answers[2].1.as_deref().unwrap().contains("r=0"),
        "{answers:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(manager.cached_records(), 1);
}

/// A host's engine that refuses every request with the longest `retry_after` a `Duration`
/// holds (nothing in the trait bounds it).
struct RefusesForever;

impl crate::UsageCounters for RefusesForever {
    fn consume<'a>(&'a self, _req: crate::UsageRequest<'a>) -> crate::Consumed<'a> {
        crate::Consumed::Ready(Ok(crate::Decision::RateLimited {
            limit: 0,
            retry_after: std::time::Duration::MAX,
            usage: crate::Usage::new(),
        }))
    }

    fn set_credits<'a>(
        &'a self,
        _key: crate::KeyId,
        _credits: &'a crate::Credits,
        _balance: u64,
        _now_ms: i64,
    ) -> crate::BoxFuture<'a, Result<(), crate::CounterError>> {
        Box::pin(async { Ok(()) })
    }

    fn credits<'a>(
        &'a self,
        _key: crate::KeyId,
        _credits: Option<&'a crate::Credits>,
        _now_ms: i64,
    ) -> crate::BoxFuture<'a, Result<Option<u64>, crate::CounterError>> {
        Box::pin(async { Ok(None) })
    }

    fn link_credits<'a>(
        &'a self,
        _from: crate::KeyId,
        _to: crate::KeyId,
    ) -> crate::BoxFuture<'a, Result<(), crate::CounterError>> {
        Box::pin(async { Ok(()) })
    }

    fn forget<'a>(
        &'a self,
        _key: crate::KeyId,
    ) -> crate::BoxFuture<'a, Result<(), crate::CounterError>> {
        Box::pin(async { Ok(()) })
    }
}

/// An engine's `retry_after` of `Duration::MAX` is a 429 whose `Retry-After` and `RateLimit`
/// are clamped to the largest structured-field integer: rounding it up to whole seconds
/// overflowed `u64` (a panic in a debug build, `Retry-After: 1` after wrapping in release).
#[tokio::test]
async fn the_longest_retry_after_an_engine_gives_is_clamped_not_overflowed() {
    let manager = KeyManager::builder(MemoryStore::new(), Keyring::new(1, MasterKey::generate()))
        .counters(RefusesForever)
        .build()
        .unwrap();
    let admin = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    let (key, _) = manager
        .generate(
            &admin,
            GenerateRequest::new("k")
                .scope(Scope::Prometheus)
                .rate_limit(crate::RateLimit::new(
                    "burst",
                    3,
                    std::time::Duration::from_secs(60),
                )),
        )
        .await
        .unwrap();
    let svc = ApiKeyLayer::new(manager, Scope::Prometheus).layer(service_fn(
        |_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) },
    ));
    let resp = svc
        .oneshot(bearer_request(key.expose_secret()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        resp.headers().get(http::header::RETRY_AFTER).unwrap(),
        "999999999999999"
    );
    assert_eq!(
        resp.headers().get(&RATELIMIT).unwrap(),
        "\"burst\";r=0;t=999999999999999"
    );
}

/// The form the docs give (`get(handler).route_layer(layer)`): a method the route does not
/// take is a 405 before any key is read — it spends nothing and carries no `RateLimit` field,
/// and a client without a key gets the 405 too, not a 401.
#[tokio::test]
async fn the_documented_route_form_answers_a_wrong_method_without_verifying() {
    let manager = KeyManager::builder(MemoryStore::new(), Keyring::new(1, MasterKey::generate()))
        .build()
        .unwrap();
    let admin = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    let (key, info) = manager
        .generate(
            &admin,
            GenerateRequest::new("k")
                .scope(Scope::Prometheus)
                .credits(crate::Credits::new(5))
                .rate_limit(crate::RateLimit::new(
                    "burst",
                    10,
                    std::time::Duration::from_secs(60),
                )),
        )
        .await
        .unwrap();
    let app: Router = Router::new().route(
        "/metrics",
        get(|| async { "ok" }).route_layer(ApiKeyLayer::new(manager.clone(), Scope::Prometheus)),
    );
    for token in [Some(key.expose_secret()), None] {
        let mut req = Request::builder().method("DELETE").uri("/metrics");
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(resp.headers().get(&RATELIMIT).is_none());
    }
    assert_eq!(
        manager.credits_remaining(&admin, &info.id).await.unwrap(),
        Some(5)
    );
    let mut get_req = bearer_request(key.expose_secret());
    *get_req.uri_mut() = "/metrics".parse().unwrap();
    let resp = app.clone().oneshot(get_req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        manager.credits_remaining(&admin, &info.id).await.unwrap(),
        Some(4)
    );
}
