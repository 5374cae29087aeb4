//! Error answers: JSON error bodies, the OpenAPI description, generic 500s and 503s, logs.

use super::*;

#[tokio::test]
async fn logs_never_contain_a_key_and_server_faults_are_generic_500s() {
    let store = MemoryStore::new();
    let srv = start_on(store.clone()).await;
    let (token, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    assert_eq!(srv.scrape(&token).await.status, StatusCode::OK);
    assert_eq!(
        srv.get("/scim/v2/Users").bearer(&token).send().await.status,
        StatusCode::FORBIDDEN
    );
    // A near miss: the real token with its last character changed.
    let mut near = token.clone();
    let last = near.pop().unwrap();
    near.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(srv.scrape(&near).await.status, StatusCode::UNAUTHORIZED);

    // A tampered row: the server's fault, a generic 500 without a challenge.
    let key_id = api_keys::KeyId::parse(&id).unwrap();
    let mut rec = api_keys::KeyStore::get(&store, &key_id)
        .await
        .unwrap()
        .unwrap();
    rec.sealed.tag[0] ^= 1;
    store.overwrite_unchecked(rec);
    let other = start_on(store.clone()).await; // a fresh manager: nothing cached
    let r = other.scrape(&token).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.challenge(), None);
    assert_eq!(r.json(), json!({"error": "internal"}));

    // The management API refuses to re-seal the tampered row, with a generic message.
    let r = srv
        .post(&format!("/api/keys/{id}/revoke"))
        .session(&srv.alice())
        .send()
        .await;
    r.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(!r.text().contains("integrity"), "{}", r.text());

    let logs = logs();
    // The events are there...
    assert!(logs.contains("verification_failed"), "{logs}");
    assert!(logs.contains("scope_not_allowed"), "{logs}");
    assert!(logs.contains("api_keys::http"), "{logs}");
    assert!(logs.contains(&id), "key ids are public and logged");
    // ...and no key, nor its secret part, nor the header.
    let secret_part = &token[token.len() - 40..];
    assert!(!logs.contains(secret_part), "a key leaked into the logs");
    assert!(!logs.contains(&near[near.len() - 40..]));
    assert!(!logs.contains("Bearer"), "{logs}");
    // No test's token either (they all run under this subscriber): after any `sak_`, fewer
    // characters than a token's id and secret.
    for (i, _) in logs.match_indices("sak_") {
        let run = logs[i + 4..]
            .bytes()
            .take_while(u8::is_ascii_alphanumeric)
            .count();
        assert!(
            run < 20,
            "something token-like was logged: {}",
            &logs[i..i + 24]
        );
    }
}

#[tokio::test]
async fn every_error_answer_is_json_and_names_the_field() {
    let srv = start().await;
    // 405, with the methods the path takes.
    let r = srv
        .call(Method::PUT, "/api/keys")
        .session(&srv.alice())
        .send()
        .await;
    r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let allow = r.header(axum::http::header::ALLOW).unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    // 413.
    let big = json!({"name": "x".repeat(100 * 1024), "scopes": ["prometheus"]});
    let r = srv
        .post("/api/keys")
        .session(&srv.alice())
        .json(&big)
        .send()
        .await;
    r.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // 404 for a path nobody serves.
    let r = srv.get("/nothing/here").send().await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
    // Field errors name the field, never a Rust type.
    for (body, field) in [
        (r#"{"name": 5, "scopes": []}"#, "\"name\""),
        (r#"{"name": "a", "scopes": [1]}"#, "\"scopes[0]\""),
        (r#"{"scopes": ["scim"]}"#, "`name`"),
        (r#"{"name": "a", "scopes": [], "colour": 1}"#, "`colour`"),
        (r#""just a string""#, "JSON object"),
        (r#"[1, 2]"#, "JSON object"),
    ] {
        let r = srv
            .post("/api/keys")
            .session(&srv.alice())
            .header(CONTENT_TYPE, b"application/json")
            .raw_body(body)
            .send()
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
        let message = r.json()["detail"].as_str().unwrap().to_string();
        assert!(message.contains(field), "{body}: {message}");
        assert!(!message.contains("Body"), "{body}: {message}");
    }
    let r = srv
        .post("/api/keys/x/roll")
        .session(&srv.alice())
        .raw_body(r#"{"overlap_seconds": "soon"}"#)
        .send()
        .await;
    // The id is checked before the body here; a real id shows the body check.
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let r = srv
        .post(&format!("/api/keys/{id}/roll"))
        .session(&srv.alice())
        .raw_body(r#"{"overlap_seconds": "soon"}"#)
        .send()
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let message = r.json()["detail"].as_str().unwrap().to_string();
    assert!(message.contains("\"overlap_seconds\""), "{message}");
    assert!(!message.contains("RollBody"), "{message}");
}

/// A body naming a member twice (`{"name":"a","name":"b"}`) is ambiguous: a proxy, a log or
/// a reviewer that reads the first value sees another request than the server, which took the
/// last one. Refused, at any depth (`expiry`, a refill), before anything is done.
#[tokio::test]
async fn a_body_with_a_duplicate_member_is_refused() {
    let srv = start().await;
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"], "credits": {"initial": 10}}))
        .await;
    let id = info["id"].as_str().unwrap();
    let calls = [
        (
            Method::POST,
            "/api/keys".to_string(),
            r#"{"name":"harmless","scopes":["prometheus"],"name":"other"}"#,
            "`name`",
        ),
        (
            Method::POST,
            "/api/keys".to_string(),
            r#"{"name":"a","scopes":["prometheus"],"expiry":{"days":7,"days":365}}"#,
            "`days`",
        ),
        (
            Method::PUT,
            format!("/api/keys/{id}/credits"),
            r#"{"credits":{"initial":1},"credits":null}"#,
            "`credits`",
        ),
        (
            Method::POST,
            format!("/api/keys/{id}/roll"),
            r#"{"overlap_seconds":0,"overlap_seconds":86400}"#,
            "`overlap_seconds`",
        ),
    ];
    for (method, path, body, member) in calls {
        let r = srv
            .call(method, &path)
            .session(&srv.alice())
            .header(CONTENT_TYPE, b"application/json")
            .raw_body(body)
            .send()
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
        let message = r.json()["detail"].as_str().unwrap().to_string();
        assert!(message.contains(member), "{body}: {message}");
    }
    // Nothing was made, rolled or changed.
    let r = srv.get("/api/keys").session(&srv.alice()).send().await;
    assert_eq!(r.json().as_array().unwrap().len(), 1, "{}", r.text());
    let r = srv
        .get(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.json()["remaining"], 10, "{}", r.text());
}

#[tokio::test]
async fn the_openapi_description_covers_every_management_route_and_error() {
    let srv = start().await;
    let r = srv.get("/api/openapi.json").send().await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header(CONTENT_TYPE), Some("application/json"));
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/keys", "get"),
        ("/api/keys", "post"),
        ("/api/keys/{id}", "get"),
        ("/api/keys/{id}", "delete"),
        ("/api/keys/{id}/revoke", "post"),
        ("/api/keys/{id}/roll", "post"),
        ("/api/keys/{id}/reveal", "post"),
        ("/api/policy", "get"),
        ("/api/whoami", "get"),
        ("/demo/login", "post"),
        ("/healthz", "get"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} is described");
        let responses = op["responses"].as_object().unwrap();
        // Every error answer is a problem.
        for (status, answer) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    answer["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
        }
        for status in ["400", "408", "413", "421", "431", "500"] {
            assert!(responses.contains_key(status), "{method} {path} {status}");
        }
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(
            responses.contains_key("401"),
            secured || path == "/demo/login",
            "{method} {path}"
        );
    }
    // What the admin page reads is described: the policy's warning lead times, and a key's
    // revocation reason (every kind), last use and notices.
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["PolicyDoc"]["properties"]["warn_before_seconds"].is_object());
    for field in ["revocation", "last_used_at", "notices"] {
        assert!(
            schemas["KeyInfo"]["properties"][field].is_object(),
            "KeyInfo.{field}"
        );
    }
    let kinds = schemas["RevocationKindDoc"]["enum"].clone();
    assert_eq!(
        kinds,
        json!(["manual", "leaked", "unused", "departed_user", "rolled"]),
        "{}",
        schemas
    );
    // Stateful links from a created key.
    let links = &paths["/api/keys"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["RevokeKey"]["operationId"], "revoke_key");
    assert_eq!(
        links["DeleteKey"]["parameters"]["id"],
        "$response.body#/info/id"
    );
    // The statuses the routes answer with are the ones described: a member's create is a 403
    // problem, listed for that route.
    let r = srv
        .post("/api/keys")
        .session(&srv.bob())
        .json(&json!({"name": "p", "scopes": ["prometheus"]}))
        .send()
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "permission_denied");
    assert!(paths["/api/keys"]["post"]["responses"]["403"].is_object());
}

/// The key store unreachable (a database restarting): a verification that needs it and a
/// management call both answer 503 with `Retry-After`, so a client or a load balancer retries;
/// a key the cache already holds keeps working; once the store is back, so is everything.
#[tokio::test]
async fn an_unreachable_store_is_a_503_to_retry() {
    capture_logs();
    let store = CountingStore::default();
    let keyring = Keyring::new(1, MasterKey::from_bytes([7; 16]));
    let node = |keyring: Keyring| {
        let state = app::AppState::new(AnyStore::new(store.clone()), keyring).expect("state");
        serve_state(state, app::Limits::default())
    };
    let srv = node(keyring.clone()).await;
    let (warm, _) = srv
        .create(json!({"name": "warm", "scopes": ["prometheus"]}))
        .await;
    let (cold, info) = srv
        .create(json!({"name": "cold", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    // A second node over the same store: its cache holds only what it has verified.
    let srv = node(keyring).await;
    assert_eq!(srv.scrape(&warm).await.status, StatusCode::OK);

    store
        .fail_get
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = srv.scrape(&cold).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header(axum::http::header::RETRY_AFTER), Some("1"));
    assert_eq!(r.json(), json!({"error": "unavailable"}));
    assert_eq!(r.header(WWW_AUTHENTICATE), None);
    assert!(!r.text().contains(&cold));
    // The warm key is answered from the cache.
    assert_eq!(srv.scrape(&warm).await.status, StatusCode::OK);
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(r.header(axum::http::header::RETRY_AFTER), Some("1"));

    store
        .fail_get
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(srv.scrape(&cold).await.status, StatusCode::OK);
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

/// The limit and credit shapes (nested objects, a tagged refill, unsigned numbers) name the
/// wrong field without a Rust type either: a script sees `expected struct RateLimitIn` or
/// `expected u8` as noise it cannot act on.
#[tokio::test]
async fn nested_limit_and_credit_errors_name_no_rust_type() {
    let srv = start().await;
    let alice = srv.alice();
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let create = |extra: Value| {
        let mut body = json!({"name": "a", "scopes": ["scim"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        srv.post("/api/keys").session(&alice).json(&body)
    };
    let calls = [
        (create(json!({"rate_limits": [5]})), "rate_limits[0]"),
        (create(json!({"credits": 5})), "credits"),
        (
            create(json!({"credits": {"initial": 1, "refill": 5}})),
            "credits.refill",
        ),
        (
            create(
                json!({"credits": {"initial": 1, "refill": {"every": "monthly", "day": 300, "amount": 1}}}),
            ),
            "credits.refill",
        ),
        (
            create(json!({"credits": {"initial": -1}})),
            "credits.initial",
        ),
        (
            srv.put(&format!("/api/keys/{id}/limits"))
                .session(&alice)
                .json(&json!({"rate_limits": [{"name": "b", "limit": "x", "window_ms": 1}]})),
            "rate_limits[0].limit",
        ),
        (
            srv.put(&format!("/api/keys/{id}/credits"))
                .session(&alice)
                .json(&json!({"credits": 5})),
            "credits",
        ),
        (
            srv.post(&format!("/api/keys/{id}/roll"))
                .session(&alice)
                .json(&json!({"overlap_seconds": 1.5})),
            "overlap_seconds",
        ),
    ];
    for (call, field) in calls {
        let r = call.send().await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
        let message = r.json()["detail"].as_str().unwrap().to_string();
        assert!(message.contains(&format!("\"{field}\"")), "{message}");
        for rust in ["struct", "enum", "In`", "In ", "u8", "u64", "i64"] {
            assert!(
                !message.contains(rust) && !message.ends_with("In"),
                "{field}: {message}"
            );
        }
    }
}

/// During a store outage every request needing the store is a 503: the layer's warning for
/// it is bounded like failed verifications (a budget per window, then a summary), not one
/// line per request.
#[tokio::test]
async fn an_outage_logs_a_bounded_number_of_503_warnings() {
    capture_logs();
    let store = CountingStore::default();
    let keyring = Keyring::new(1, MasterKey::from_bytes([7; 16]));
    let node = |keyring: Keyring| {
        let state = app::AppState::new(AnyStore::new(store.clone()), keyring).expect("state");
        serve_state(state, app::Limits::default())
    };
    let (token, _) = node(keyring.clone())
        .await
        .create(json!({"name": "cold", "scopes": ["prometheus"]}))
        .await;
    // Another node, whose cache does not hold the key.
    let srv = node(keyring).await;
    let warnings = || {
        logs()
            .lines()
            .filter(|l| l.contains("could not reach the key store"))
            .count()
    };
    let before = warnings();
    store
        .fail_get
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..60 {
        let r = srv.scrape(&token).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    }
    let logged = warnings() - before;
    // One window's budget, or two if the requests straddled a window's end.
    let most = 2 * api_keys::LOG_FULL_PER_WINDOW as usize;
    assert!(logged <= most, "{logged} warnings for 60 answers of 503");
}
