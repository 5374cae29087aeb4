//! The key management routes: delete, roll, reveal, expiry forms, policy and key JSON.

use super::*;

#[tokio::test]
async fn delete_stops_a_key_at_once_and_removes_it() {
    let srv = start().await;
    let (token, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    assert_eq!(srv.scrape(&token).await.status, StatusCode::OK);
    let r = srv
        .delete(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert!(r.body.is_empty());
    let r = srv.scrape(&token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="api", error="invalid_token""#)
    );
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
    let list = srv.get("/api/keys").session(&srv.alice()).send().await;
    assert_eq!(list.json(), json!([]));
    let again = srv
        .delete(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    again.assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn requests_outside_the_policy_are_refused_with_what_is_allowed() {
    let srv = start().await;
    let alice = srv.alice();
    let create = |body: Value| srv.post("/api/keys").session(&alice).json(&body).send();

    let r = create(json!({"name": "p", "scopes": ["prometheus"], "expiry": {"days": 5}})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    let msg = r.json()["detail"].as_str().unwrap().to_string();
    assert!(msg.contains("7, 30, 60, 90, 180, 365"), "{msg}");

    let r = create(json!({"name": "p", "scopes": ["prometheus"], "expiry": {"days": 70000}})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    assert!(r.json()["detail"].as_str().unwrap().contains("7, 30, 60"));

    let r = create(json!({"name": "p", "scopes": ["prometheus"], "expiry": "never"})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");

    let far = srv.state.manager.now().unix_timestamp() + 400 * 86_400;
    let r = create(json!({"name": "p", "scopes": ["prometheus"], "expiry": {"at": far}})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");

    let r = create(json!({"name": "p", "scopes": []})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    let r = create(json!({"name": "p", "scopes": ["Not A Scope"]})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    let r = create(json!({"name": "", "scopes": ["prometheus"]})).await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");

    // Not JSON, the wrong shape, unknown fields.
    for body in [
        "{not json",
        "[]",
        r#"{"name":"p"}"#,
        r#"{"name":"p","scopes":["prometheus"],"expires":30}"#,
        r#"{"name":"p","scopes":["prometheus"],"expiry":{"days":30,"at":1}}"#,
        r#"{"name":"p","scopes":["prometheus"],"expiry":"soon"}"#,
    ] {
        let r = srv
            .post("/api/keys")
            .session(&alice)
            .raw_body(body)
            .send()
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }

    // Reveal is off by default.
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let r = srv
        .post(&format!(
            "/api/keys/{}/reveal",
            info["id"].as_str().unwrap()
        ))
        .session(&alice)
        .send()
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    // Nothing else was created.
    let list = srv.get("/api/keys").session(&alice).send().await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn expiry_forms_and_policy_document() {
    let srv = start().await;
    let r = srv.get("/api/policy").session(&srv.alice()).send().await;
    assert_eq!(
        r.json(),
        json!({"periods":[7,30,60,90,180,365],"default_days":90,"max_days":365,"allow_never":false,"allow_reveal":false,
               "warn_before_seconds":[30 * 86_400, 7 * 86_400, 86_400],"revoke_unused_after_seconds":null})
    );
    let now = srv.state.manager.now().unix_timestamp();
    let (_, default) = srv
        .create(json!({"name": "a", "scopes": ["prometheus"]}))
        .await;
    let created = default["created_at"].as_i64().unwrap();
    assert!(created >= now - 1);
    assert_eq!(
        default["expires_at"].as_i64().unwrap(),
        created + 90 * 86_400
    );
    let at = now + 10 * 86_400;
    let (_, explicit) = srv
        .create(json!({"name": "b", "scopes": ["prometheus", "scim"], "expiry": {"at": at}}))
        .await;
    assert_eq!(explicit["expires_at"].as_i64().unwrap(), at);
    for field in [
        "id",
        "org",
        "name",
        "scopes",
        "created_at",
        "created_by",
        "expires_at",
        "revoked_at",
        "status",
        "last_used_at",
        "hint",
        "revocation",
        "notices",
    ] {
        assert!(explicit.get(field).is_some(), "KeyInfo lacks {field}");
    }
    assert_eq!(explicit["revocation"], Value::Null);
    assert_eq!(
        explicit["notices"],
        json!({"expiry_warned": [], "expired": false, "unused_warned": false})
    );
    assert_eq!(explicit["created_by"], "alice");
    assert_eq!(explicit["revoked_at"], Value::Null);
}

#[tokio::test]
async fn roll_replaces_a_key_with_an_overlap() {
    let srv = start().await;
    let alice = srv.alice();
    let (old, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let r = srv
        .post(&format!("/api/keys/{id}/roll"))
        .session(&alice)
        .json(&json!({"overlap_seconds": 3600}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.header(CACHE_CONTROL), Some("no-store"));
    let v = r.json();
    let new = v["key"].as_str().unwrap();
    assert_ne!(v["info"]["id"], info["id"]);
    assert_eq!(v["info"]["name"], "p");
    // Both work during the overlap; the old one now ends within the hour.
    assert_eq!(srv.scrape(&old).await.status, StatusCode::OK);
    assert_eq!(srv.scrape(new).await.status, StatusCode::OK);
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&alice)
        .send()
        .await;
    let now = srv.state.manager.now().unix_timestamp();
    assert!(r.json()["expires_at"].as_i64().unwrap() <= now + 3600);

    for body in [
        json!({"overlap_seconds": -1}),
        json!({"overlap_seconds": i64::MAX}),
    ] {
        let r = srv
            .post(&format!("/api/keys/{id}/roll"))
            .session(&alice)
            .json(&body)
            .send()
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    // A revoked key cannot be rolled.
    srv.post(&format!("/api/keys/{id}/revoke"))
        .session(&alice)
        .send()
        .await;
    let r = srv
        .post(&format!("/api/keys/{id}/roll"))
        .session(&alice)
        .send()
        .await;
    r.assert_error(StatusCode::CONFLICT, "revoked");
}

#[tokio::test]
async fn token_responses_are_not_cached_and_no_route_hands_out_sessions() {
    let srv = start().await;
    let r = srv
        .post("/api/keys")
        .session(&srv.alice())
        .json(&json!({"name": "p", "scopes": ["prometheus"]}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header(CACHE_CONTROL), Some("no-store"));
    assert_eq!(r.header(CONTENT_TYPE), Some("application/json"));

    // No route hands sessions out: a page of another origin has nothing to read.
    let r = srv.get("/demo/sessions").send().await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn reveal_when_the_policy_allows_it() {
    let state = app::AppState::with_policy(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        api_keys::Policy::default().allow_reveal(true),
    )
    .unwrap();
    capture_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let srv = Server { addr, state };

    let r = srv.get("/api/policy").session(&srv.alice()).send().await;
    assert_eq!(r.json()["allow_reveal"], true);
    let (token, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let path = format!("/api/keys/{}/reveal", info["id"].as_str().unwrap());
    let r = srv.post(&path).session(&srv.alice()).send().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header(CACHE_CONTROL), Some("no-store"));
    assert_eq!(r.json(), json!({"key": token}));
    // Members still may not; revoked keys are not revealed.
    let r = srv.post(&path).session(&srv.bob()).send().await;
    r.assert_error(StatusCode::FORBIDDEN, "permission_denied");
    srv.post(&format!(
        "/api/keys/{}/revoke",
        info["id"].as_str().unwrap()
    ))
    .session(&srv.alice())
    .send()
    .await;
    let r = srv.post(&path).session(&srv.alice()).send().await;
    r.assert_error(StatusCode::CONFLICT, "revoked");
}

/// What the admin page shows comes from the key JSON: why a key stopped working (and, for a
/// leak, where it was found), its last use, and the warnings the sweep sent; the policy
/// document names the warning lead times. Driven with a manual clock, no sleeping.
#[tokio::test]
async fn key_json_carries_reasons_last_use_and_warnings() {
    use api_keys::time::{Duration, OffsetDateTime};
    use api_keys::{Actor, LeakVerdict, ManualClock, OrgId, Policy, UserId};

    capture_logs();
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let clock = ManualClock::new(t0);
    let policy = Policy::default()
        .warn_before(&[Duration::days(2), Duration::days(14)])
        .revoke_unused_after(Duration::days(30));
    let state = app::AppState::with_integrations(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        app::Integrations {
            policy,
            clock: Some(std::sync::Arc::new(clock.clone())),
            ..app::Integrations::default()
        },
    )
    .expect("state");
    let srv = serve_state(state, app::Limits::default()).await;
    let policy = srv
        .get("/api/policy")
        .session(&srv.alice())
        .send()
        .await
        .json();
    assert_eq!(
        policy["warn_before_seconds"],
        json!([14 * 86_400, 2 * 86_400])
    );
    assert_eq!(policy["revoke_unused_after_seconds"], json!(30 * 86_400));

    let thirty = json!({"days": 30});
    let (_, manual) = srv
        .create(json!({"name": "manual", "scopes": ["prometheus"]}))
        .await;
    let (leaked_token, leaked) = srv
        .create(json!({"name": "leaked", "scopes": ["prometheus"]}))
        .await;
    let (used_token, used) = srv
        .create(json!({"name": "used", "scopes": ["prometheus"], "expiry": thirty}))
        .await;
    let (_, idle) = srv
        .create(json!({"name": "idle", "scopes": ["prometheus"], "expiry": {"days": 365}}))
        .await;
    let (_, rolled) = srv
        .create(json!({"name": "rolled", "scopes": ["prometheus"]}))
        .await;
    let carol = srv.state.session("acme", "carol", "manager").unwrap();
    let r = srv
        .post("/api/keys")
        .session(&carol)
        .json(&json!({"name": "carol's", "scopes": ["prometheus"]}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let departed = r.json()["info"].clone();
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();

    let r = srv
        .post(&format!("/api/keys/{}/revoke", id(&manual)))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let source = "https://github.com/acme/app/blob/main/.env";
    let m = &srv.state.manager;
    assert_eq!(
        m.revoke_leaked(&leaked_token, source).await.unwrap(),
        LeakVerdict::TruePositive
    );
    let alice = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    assert_eq!(
        m.revoke_created_by(&alice, &UserId::new("carol"))
            .await
            .unwrap(),
        1
    );
    let r = srv
        .post(&format!("/api/keys/{}/roll", id(&rolled)))
        .session(&srv.alice())
        .json(&json!({"overlap_seconds": 0}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(srv.scrape(&used_token).await.status, StatusCode::OK);
    m.flush_last_use().await.unwrap();

    // Day 20: "used" expires in 10 days (its 14-day warning); day 25: "idle" is warned before
    // its revocation as unused; day 33: "used" expired, "idle" is revoked as unused.
    for day in [20, 25, 33] {
        clock.set(t0 + Duration::days(day));
        m.sweep().await.unwrap();
    }
    let get = |v: &Value| {
        let path = format!("/api/keys/{}", id(v));
        let session = srv.alice();
        let call = srv.get(&path).session(&session);
        async move {
            let r = call.send().await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            r.json()
        }
    };
    let k = get(&manual).await;
    assert_eq!(
        (&k["status"], &k["revocation"]),
        (&json!("revoked"), &json!({"kind": "manual"}))
    );
    let k = get(&leaked).await;
    assert_eq!(k["revocation"], json!({"kind": "leaked", "source": source}));
    let k = get(&departed).await;
    assert_eq!(k["revocation"], json!({"kind": "departed_user"}));
    let k = get(&rolled).await;
    assert_eq!(
        (&k["status"], &k["revocation"]),
        (&json!("expired"), &json!({"kind": "rolled"}))
    );
    let k = get(&idle).await;
    assert_eq!(k["revocation"], json!({"kind": "unused"}));
    assert_eq!(k["last_used_at"], Value::Null);
    assert_eq!(k["notices"]["unused_warned"], true);
    assert_eq!(
        k["notices"]["unused_warned_at"],
        json!((t0 + Duration::days(25)).unix_timestamp())
    );
    let k = get(&used).await;
    assert_eq!(k["status"], "expired");
    assert_eq!(
        k["revocation"],
        Value::Null,
        "an expired key was not revoked"
    );
    assert_eq!(k["last_used_at"], json!(t0.unix_timestamp()));
    assert_eq!(k["notices"]["expiry_warned"], json!([14 * 86_400]));
    assert_eq!(k["notices"]["expired"], true);
    // The list carries the same.
    let list = srv
        .get("/api/keys")
        .session(&srv.alice())
        .send()
        .await
        .json();
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == leaked["id"])
        .unwrap();
    assert_eq!(listed["revocation"]["source"], source);
}
