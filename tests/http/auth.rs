//! Authorization headers, sessions, login links and the member role over HTTP.

use super::*;

#[tokio::test]
async fn missing_malformed_and_oversized_authorization_headers() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;

    let r = srv.get("/metrics").send().await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.challenge(), Some(r#"Bearer realm="api""#));

    let r = srv
        .get("/metrics")
        .header(AUTHORIZATION, b"Basic YWxpY2U6c2VjcmV0")
        .send()
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.challenge(), Some(r#"Bearer realm="api""#));

    for bad in [&b"Bearer"[..], b"Bearer two words", b"Bearer \xe9t\xe9"] {
        let r = srv.get("/metrics").header(AUTHORIZATION, bad).send().await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(
            r.challenge(),
            Some(r#"Bearer realm="api", error="invalid_request""#)
        );
        assert_eq!(r.json(), json!({"error": "invalid_request"}));
    }

    let r = srv.scrape("sak_thisIsNotAKey").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="api", error="invalid_token""#)
    );

    // Two Authorization headers, even if both are good.
    let r = srv
        .get("/metrics")
        .bearer(&token)
        .bearer(&token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // 8 KiB of header: refused before parsing, and it reaches no verification.
    let huge = format!("Bearer sak_{}", "A".repeat(8 * 1024));
    let r = srv
        .get("/metrics")
        .header(AUTHORIZATION, huge.as_bytes())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.challenge(),
        Some(r#"Bearer realm="api", error="invalid_request""#)
    );
    assert!(r.body.len() < 64, "the answer echoes nothing");
    // 64 KiB of headers: over the server's header limit, a JSON 431.
    let r = srv
        .get("/metrics")
        .header(
            AUTHORIZATION,
            format!("Bearer {}", "A".repeat(64 * 1024)).as_bytes(),
        )
        .send()
        .await;
    r.assert_error(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    );

    // The server is fine. Failures that name no key of this organization (the
    // `sak_thisIsNotAKey` token) are not in its metrics: they would tell its key holder
    // whether a guessed key id exists in another organization.
    let r = srv.scrape(&token).await;
    assert_eq!(r.status, StatusCode::OK);
    let m = parse_exposition(&r.text());
    assert!(
        m.keys().all(|k| k.contains(r#"org="acme""#)),
        "every series is this organization's: {m:?}"
    );
    let failures: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("api_keys_verifications_total") && !k.contains("success"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(failures, 0.0);
}

#[tokio::test]
async fn a_member_cannot_use_the_management_api() {
    let srv = start().await;
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let bob = srv.bob();
    let calls = [
        srv.get("/api/keys").session(&bob),
        srv.post("/api/keys")
            .session(&bob)
            .json(&json!({"name": "x", "scopes": ["prometheus"]})),
        srv.get(&format!("/api/keys/{id}")).session(&bob),
        srv.post(&format!("/api/keys/{id}/revoke")).session(&bob),
        srv.post(&format!("/api/keys/{id}/roll")).session(&bob),
        srv.post(&format!("/api/keys/{id}/reveal")).session(&bob),
        srv.delete(&format!("/api/keys/{id}")).session(&bob),
        // Ids that do not exist or are not even ids: still 403, nothing is leaked.
        srv.get("/api/keys/00000000000").session(&bob),
        srv.get("/api/keys/not-an-id").session(&bob),
    ];
    for call in calls {
        let path = call.path.clone();
        let r = call.send().await;
        r.assert_error(StatusCode::FORBIDDEN, "permission_denied");
        assert!(!r.json()["detail"].as_str().unwrap().is_empty(), "{path}");
    }
    // The key is untouched.
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await;
    assert_eq!(r.json()["status"], "active");
    // Bob may still see who he is and the policy.
    let r = srv.get("/api/whoami").session(&bob).send().await;
    assert_eq!(
        r.json(),
        json!({"org": "acme", "user": "bob", "role": "member"})
    );
}

#[tokio::test]
async fn sessions_must_be_present_and_genuine() {
    let srv = start().await;
    let alice = srv.alice();
    let forged_role = alice.replacen(".manager.", ".member.", 1);
    let mut flipped = alice.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    let upper = alice.to_uppercase();
    let unsigned = "acme.alice.manager.99999999999".to_string();
    // A later expiry under the old signature.
    let mut extended: Vec<&str> = alice.split('.').collect();
    let later = (extended[3].parse::<i64>().unwrap() + 86_400).to_string();
    extended[3] = &later;
    let extended = extended.join(".");
    for session in [
        None,
        Some(forged_role),
        Some(flipped),
        Some(upper),
        Some(unsigned),
        Some(extended),
    ] {
        let mut call = srv.get("/api/keys");
        if let Some(s) = &session {
            call = call.session(s);
        }
        let r = call.send().await;
        r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    // Sessions of another server (another signing key) are refused too.
    let other = start().await;
    let r = srv.get("/api/whoami").session(&other.alice()).send().await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_and_foreign_keys_are_not_found() {
    let srv = start().await;
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let alice = srv.alice();
    for path in ["/api/keys/00000000001", "/api/keys/zzzz"] {
        let r = srv.get(path).session(&alice).send().await;
        r.assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    let r = srv
        .post("/api/keys/00000000001/revoke")
        .session(&alice)
        .send()
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "not_found");
    // A manager of another organization cannot tell the key exists.
    let carol = srv.state.session("globex", "carol", "manager").unwrap();
    for call in [
        srv.get(&format!("/api/keys/{id}")).session(&carol),
        srv.post(&format!("/api/keys/{id}/revoke")).session(&carol),
        srv.delete(&format!("/api/keys/{id}")).session(&carol),
    ] {
        call.send()
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    let r = srv.get("/api/keys").session(&carol).send().await;
    assert_eq!(r.json(), json!([]));
}

#[tokio::test]
async fn sessions_expire() {
    let srv = start().await;
    let now = srv.state.manager.now();
    let past = srv
        .state
        .session_until(
            "acme",
            "alice",
            "manager",
            now - api_keys::time::Duration::seconds(1),
        )
        .unwrap();
    let r = srv.get("/api/whoami").session(&past).send().await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(r.json()["detail"].as_str().unwrap().contains("expired"));

    let soon = srv
        .state
        .session_until(
            "acme",
            "alice",
            "manager",
            now + api_keys::time::Duration::minutes(5),
        )
        .unwrap();
    let r = srv.get("/api/whoami").session(&soon).send().await;
    assert_eq!(r.status, StatusCode::OK);

    // A session carries its end, within the state's lifetime.
    let alice = srv.alice();
    let end: i64 = alice.split('.').nth(3).unwrap().parse().unwrap();
    let ttl = end - now.unix_timestamp();
    assert!(
        (app::SESSION_TTL.whole_seconds() - 5..=app::SESSION_TTL.whole_seconds() + 5)
            .contains(&ttl),
        "{ttl}"
    );
    let short = srv
        .state
        .clone()
        .with_session_ttl(api_keys::time::Duration::ZERO)
        .session("acme", "alice", "manager")
        .unwrap();
    let r = srv.get("/api/whoami").session(&short).send().await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
}

/// A session lifetime past the end of the calendar (the state's setting is the host's) makes
/// sessions that last until the calendar's end: adding it to the clock's time panicked
/// ("overflow adding duration to date") when a session was made.
#[tokio::test]
async fn a_session_lifetime_past_the_calendar_saturates() {
    let srv = start().await;
    let forever = srv
        .state
        .clone()
        .with_session_ttl(api_keys::time::Duration::MAX)
        .session("acme", "alice", "manager")
        .expect("a valid name gets a session");
    let end: i64 = forever.split('.').nth(3).unwrap().parse().unwrap();
    assert_eq!(
        end,
        api_keys::time::PrimitiveDateTime::MAX
            .assume_utc()
            .unix_timestamp()
    );
    let r = srv.get("/api/whoami").session(&forever).send().await;
    assert_eq!(
        r.json(),
        json!({"org": "acme", "user": "alice", "role": "manager"})
    );

    // The clock is the host's too: half an hour before the calendar's end, a login link (valid
    // for an hour) and a 12-hour session end with the calendar.
    let late =
        api_keys::time::PrimitiveDateTime::MAX.assume_utc() - api_keys::time::Duration::minutes(30);
    let state = app::AppState::with_integrations(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        app::Integrations {
            clock: Some(std::sync::Arc::new(api_keys::ManualClock::new(late))),
            ..app::Integrations::default()
        },
    )
    .expect("state");
    assert!(state.login_nonce().is_ok());
    assert!(state.session("acme", "alice", "manager").is_some());
}

#[tokio::test]
async fn a_login_link_works_once() {
    let srv = start().await;
    let nonce = srv.state.login_nonce().unwrap();
    let r = srv
        .post("/demo/login")
        .json(&json!({ "nonce": nonce }))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header(CACHE_CONTROL), Some("no-store"));
    let v = r.json();
    let labels: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["alice — manager of acme", "bob — member of acme"]);
    let alice = v[0]["session"].as_str().unwrap();
    let r = srv.get("/api/whoami").session(alice).send().await;
    assert_eq!(
        r.json(),
        json!({"org": "acme", "user": "alice", "role": "manager"})
    );

    // Used up; a made-up nonce never worked.
    for n in [nonce.clone(), "0".repeat(32), "not hex".to_string()] {
        let r = srv
            .post("/demo/login")
            .json(&json!({ "nonce": n }))
            .send()
            .await;
        r.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    }
}

/// README "The admin page": "every management call of a member gets `403 permission_denied`".
#[tokio::test]
async fn a_member_gets_403_whatever_the_body() {
    let srv = start().await;
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let bob = srv.bob();
    let calls = [
        srv.post("/api/keys").session(&bob).json(&json!({})),
        srv.post("/api/keys")
            .session(&bob)
            .json(&json!({"name": "x", "scopes": ["Not A Scope!"]})),
        srv.post(&format!("/api/keys/{id}/roll"))
            .session(&bob)
            .json(&json!({"overlap_seconds": -1})),
        srv.put(&format!("/api/keys/{id}/limits"))
            .session(&bob)
            .json(&json!({})),
        srv.put(&format!("/api/keys/{id}/credits"))
            .session(&bob)
            .json(&json!({"credits": 5})),
    ];
    let mut wrong = Vec::new();
    for call in calls {
        let path = call.path.clone();
        let r = call.send().await;
        if r.status != StatusCode::FORBIDDEN {
            wrong.push(format!("{path}: {} {}", r.status, r.json()["error"]));
        }
    }
    assert!(
        wrong.is_empty(),
        "a member's calls not refused with 403: {wrong:#?}"
    );
}

/// The Authorization header shapes of the README's table, through the real server.
#[tokio::test]
async fn authorization_header_shapes_through_the_server() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    for ok in [
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("Bearer\t{token}"),
        format!("Bearer   {token}  "),
    ] {
        let r = srv
            .get("/metrics")
            .header(AUTHORIZATION, ok.as_bytes())
            .send()
            .await;
        assert_eq!(r.status, StatusCode::OK, "{ok:?}");
    }
    for (v, status) in [
        (&b""[..], StatusCode::UNAUTHORIZED),
        (b"   ", StatusCode::UNAUTHORIZED),
        (b"Token abc", StatusCode::UNAUTHORIZED),
        (b"Bearer   ", StatusCode::BAD_REQUEST),
        (b"Bearer a\xffb", StatusCode::BAD_REQUEST),
        (b"Basic \xff", StatusCode::BAD_REQUEST),
    ] {
        let r = srv.get("/metrics").header(AUTHORIZATION, v).send().await;
        assert_eq!(r.status, status, "{v:?}");
    }
    // A token in the query string is not a credential.
    let r = srv
        .get(&format!("/metrics?access_token={token}"))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
