//! The Prometheus scrape endpoint and the crate metrics on the operator listener.

use super::*;

#[tokio::test]
async fn a_prometheus_key_scrapes_until_it_is_revoked() {
    let srv = start().await;
    let (token, info) = srv
        .create(json!({"name": "prometheus", "scopes": ["prometheus"], "expiry": {"days": 30}}))
        .await;
    assert_eq!(info["status"], "active");
    assert_eq!(info["scopes"], json!(["prometheus"]));
    let id = info["id"].as_str().unwrap().to_string();

    let r = srv.scrape(&token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.header(CONTENT_TYPE)
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
    );
    let m = parse_exposition(&r.text());
    assert_eq!(m[r#"api_keys_keys{org="acme",status="active"}"#], 1.0);
    assert_eq!(m[r#"api_keys_keys{org="acme",status="revoked"}"#], 0.0);
    assert_eq!(
        m[r#"api_keys_verifications_total{org="acme",outcome="success"}"#],
        1.0
    );

    // The Prometheus key has no SCIM scope.
    let r = srv.get("/scim/v2/Users").bearer(&token).send().await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="scim""#)
    );
    // Under /scim/ the answer is a SCIM error.
    assert_eq!(
        r.json()["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
    );

    let r = srv
        .post(&format!("/api/keys/{id}/revoke"))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "revoked");

    // The very next scrape fails.
    let r = srv.scrape(&token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="api", error="invalid_token""#)
    );
    assert_eq!(r.json(), json!({"error": "invalid_token"}));

    // A second key sees what happened.
    let (second, _) = srv
        .create(json!({"name": "prometheus 2", "scopes": ["prometheus"]}))
        .await;
    let m = parse_exposition(&srv.scrape(&second).await.text());
    let org = |outcome: &str| {
        m[&format!(r#"api_keys_verifications_total{{org="acme",outcome="{outcome}"}}"#)]
    };
    assert_eq!(org("success"), 2.0);
    assert_eq!(org("revoked"), 1.0);
    assert_eq!(org("scope_not_allowed"), 1.0);
    assert_eq!(m[r#"api_keys_keys{org="acme",status="active"}"#], 1.0);
    assert_eq!(m[r#"api_keys_keys{org="acme",status="revoked"}"#], 1.0);
}

#[tokio::test]
async fn scrapes_count_keys_without_reading_the_store_each_time() {
    let store = CountingStore::default();
    let srv = start_with(AnyStore::new(store.clone()), app::Limits::default()).await;
    let (token, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let active = r#"api_keys_keys{org="acme",status="active"}"#;
    let revoked = r#"api_keys_keys{org="acme",status="revoked"}"#;
    let m = parse_exposition(&srv.scrape(&token).await.text());
    assert_eq!(m[active], 1.0);
    let lists = store.lists();
    for _ in 0..5 {
        let m = parse_exposition(&srv.scrape(&token).await.text());
        assert_eq!(m[active], 1.0);
    }
    assert_eq!(store.lists(), lists, "scrapes were answered from the cache");
    // A change through the management API shows in the next scrape.
    let (_, other) = srv
        .create(json!({"name": "q", "scopes": ["prometheus"]}))
        .await;
    let m = parse_exposition(&srv.scrape(&token).await.text());
    assert_eq!((m[active], m[revoked]), (2.0, 0.0));
    let r = srv
        .post(&format!(
            "/api/keys/{}/revoke",
            other["id"].as_str().unwrap()
        ))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let m = parse_exposition(&srv.scrape(&token).await.text());
    assert_eq!((m[active], m[revoked]), (1.0, 1.0));
    let _ = info;
}

/// The crate's own metrics (feature `metrics`), exported by `metrics-exporter-prometheus` on
/// the example server's operator listener: a verification shows up under its outcome.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn the_crate_metrics_are_served_on_the_operator_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = ops.local_addr().unwrap();
    let handle = app::metrics::install_crate_recorder().unwrap();
    tokio::spawn(app::metrics::serve_crate_metrics(ops, handle));
    let m = api_keys::KeyManager::builder(MemoryStore::new(), common::keyring())
        .build()
        .unwrap();
    let scope = api_keys::Scope::Prometheus;
    let (key, _) = m
        .generate(
            &common::alice(),
            api_keys::GenerateRequest::new("k").scope(scope.clone()),
        )
        .await
        .unwrap();
    m.verify(key.expose_secret(), &scope).await.unwrap();
    let _ = m.verify("sak_garbage", &scope).await;
    let mut conn = TcpStream::connect(at).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for line in [
        "# TYPE api_keys_verifications_total counter",
        "api_keys_verifications_total{outcome=\"ok\"}",
        "api_keys_verifications_total{outcome=\"malformed\"}",
        "api_keys_verification_duration_seconds",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    assert!(!text.contains(key.expose_secret()));
}

// ---------------------------------------------------------------------------------------------
// Key counts of a scrape that races a write
// ---------------------------------------------------------------------------------------------

type ListHook =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// A memory store whose next `list` runs a step after it has read the records and before it
/// answers (as a slow network store would let other requests in).
#[derive(Clone, Default)]
struct ListHookStore {
    inner: MemoryStore,
    after_list: std::sync::Arc<std::sync::Mutex<Option<ListHook>>>,
}

impl api_keys::KeyStore for ListHookStore {
    async fn insert(&self, r: api_keys::KeyRecord) -> Result<(), api_keys::StoreError> {
        self.inner.insert(r).await
    }
    async fn get(
        &self,
        id: &api_keys::KeyId,
    ) -> Result<Option<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.get(id).await
    }
    async fn list(
        &self,
        org: &api_keys::OrgId,
    ) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        let read = self.inner.list(org).await;
        let step = self.after_list.lock().unwrap().take();
        if let Some(step) = step {
            step().await;
        }
        read
    }
    async fn update(
        &self,
        r: api_keys::KeyRecord,
        expected: u64,
    ) -> Result<(), api_keys::StoreError> {
        self.inner.update(r, expected).await
    }
    async fn delete(&self, id: &api_keys::KeyId) -> Result<bool, api_keys::StoreError> {
        self.inner.delete(id).await
    }
    async fn scan(
        &self,
        after: Option<&api_keys::KeyId>,
        limit: usize,
    ) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.scan(after, limit).await
    }
    async fn touch(
        &self,
        id: &api_keys::KeyId,
        at: api_keys::time::OffsetDateTime,
    ) -> Result<(), api_keys::StoreError> {
        self.inner.touch(id, at).await
    }
}

/// README: the key counts of `/metrics` show changes made through this server's management
/// API at once. A key generated while a scrape is reading the key states is missing from the
/// counts for the next 30 s: the scrape caches what it read after the generation dropped the
/// cache.
#[tokio::test]
async fn a_key_generated_during_a_scrape_shows_in_the_next_scrape() {
    let store = ListHookStore::default();
    let srv = start_with(AnyStore::new(store.clone()), app::Limits::default()).await;
    let (token, _) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let active = r#"api_keys_keys{org="acme",status="active"}"#;
    // While the next scrape reads the key states, alice generates a second key.
    let (addr, alice) = (srv.addr, srv.alice());
    *store.after_list.lock().unwrap() = Some(Box::new(move || {
        Box::pin(async move {
            let r = Call {
                addr,
                method: Method::POST,
                path: "/api/keys".into(),
                headers: Vec::new(),
                body: Bytes::new(),
            }
            .session(&alice)
            .json(&json!({"name": "q", "scopes": ["prometheus"]}))
            .send()
            .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        })
    }));
    let first = parse_exposition(&srv.scrape(&token).await.text());
    assert_eq!(first[active], 1.0, "the scrape that raced the generation");
    // The generation has completed: the next scrape must count both keys.
    let r = srv.get("/api/keys").session(&srv.alice()).send().await;
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    let next = parse_exposition(&srv.scrape(&token).await.text());
    assert_eq!(
        next[active], 2.0,
        "a key generated through the API is missing"
    );
}

/// A method a guarded route does not take is a 405 with `Allow`, decided before the key: it
/// spends none of the key's credits or rate limit (and carries no `RateLimit` fields), and a
/// request without a key gets the 405 too, not a 401 that sends the client hunting for a key.
#[tokio::test]
async fn a_wrong_method_on_a_guarded_route_is_405_and_spends_nothing() {
    let srv = start().await;
    let (token, info) = srv
        .create(
            json!({"name": "p", "scopes": ["prometheus", "scim"], "credits": {"initial": 5},
            "rate_limits": [{"name": "burst", "limit": 100, "window_ms": 60000}]}),
        )
        .await;
    let id = info["id"].as_str().unwrap();
    for path in ["/metrics", "/scim/v2/Users", "/scim/v2/Users/bob"] {
        for with_key in [true, false] {
            let call = srv.call(Method::DELETE, path);
            let call = if with_key { call.bearer(&token) } else { call };
            let r = call.send().await;
            assert_eq!(
                r.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{path}: {}",
                r.text()
            );
            assert!(r.header(axum::http::header::ALLOW).is_some(), "{path}");
            assert!(r.headers.get("ratelimit").is_none(), "{path}");
            assert!(r.headers.get("ratelimit-policy").is_none(), "{path}");
        }
    }
    let r = srv
        .get(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.json()["remaining"], 5, "{}", r.text());
}
