//! The SCIM endpoint: listing an organization's users, SCIM errors and rate limits.

use super::*;

#[tokio::test]
async fn a_scim_key_lists_its_organizations_users() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "okta", "scopes": ["scim"], "expiry": {"days": 90}}))
        .await;
    let r = srv.get("/scim/v2/Users").bearer(&token).send().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header(CONTENT_TYPE), Some("application/scim+json"));
    let v = r.json();
    assert_eq!(
        v["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:ListResponse"])
    );
    assert_eq!(v["totalResults"], 2);
    assert_eq!(v["startIndex"], 1);
    assert_eq!(v["itemsPerPage"], 2);
    let names: Vec<&str> = v["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(
        v["Resources"][0]["schemas"],
        json!(["urn:ietf:params:scim:schemas:core:2.0:User"])
    );
    // The filter SCIM clients send to look a user up, and paging.
    let r = srv
        .get("/scim/v2/Users?filter=userName%20eq%20%22bob%22")
        .bearer(&token)
        .send()
        .await;
    let v = r.json();
    assert_eq!(
        (v["totalResults"].as_u64(), v["itemsPerPage"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["Resources"][0]["userName"], "bob");
    let v = srv
        .get("/scim/v2/Users?filter=USERNAME+EQ+%22nobody%22")
        .bearer(&token)
        .send()
        .await
        .json();
    assert_eq!(v["totalResults"], 0);
    let v = srv
        .get("/scim/v2/Users?startIndex=2&count=5")
        .bearer(&token)
        .send()
        .await
        .json();
    assert_eq!(v["totalResults"], 2);
    assert_eq!(v["startIndex"], 2);
    assert_eq!(v["itemsPerPage"], 1);
    assert_eq!(v["Resources"][0]["userName"], "bob");
    let v = srv
        .get("/scim/v2/Users?count=0")
        .bearer(&token)
        .send()
        .await
        .json();
    assert_eq!(
        (v["totalResults"].as_u64(), v["itemsPerPage"].as_u64()),
        (Some(2), Some(0))
    );
    // RFC 7644 (3.4.2.4): a negative count is 0, a startIndex below 1 is 1.
    let v = srv
        .get("/scim/v2/Users?count=-1&startIndex=-5")
        .bearer(&token)
        .send()
        .await
        .json();
    assert_eq!(
        (
            v["totalResults"].as_u64(),
            v["startIndex"].as_u64(),
            v["itemsPerPage"].as_u64()
        ),
        (Some(2), Some(1), Some(0))
    );
    for bad in [
        "filter=name%20co%20%22a%22",
        "filter=userName%20eq%20bob",
        "count=two",
        "startIndex=1.5",
    ] {
        let r = srv
            .get(&format!("/scim/v2/Users?{bad}"))
            .bearer(&token)
            .send()
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.header(CONTENT_TYPE), Some("application/scim+json"));
        let v = r.json();
        assert_eq!(
            v["schemas"],
            json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
        );
        assert_eq!(v["status"], "400");
    }

    // And no Prometheus scope.
    let r = srv.scrape(&token).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.challenge().unwrap().ends_with(r#"scope="prometheus""#));

    // A SCIM key of another organization sees that organization's (empty) directory.
    let carol = srv.state.session("globex", "carol", "manager").unwrap();
    let r = srv
        .post("/api/keys")
        .session(&carol)
        .json(&json!({"name": "scim", "scopes": ["scim"]}))
        .send()
        .await;
    let other = r.json()["key"].as_str().unwrap().to_string();
    let v = srv.get("/scim/v2/Users").bearer(&other).send().await.json();
    assert_eq!(v["totalResults"], 0);
    assert_eq!(v["Resources"], json!([]));
}

#[tokio::test]
async fn scim_errors_use_the_scim_error_schema_and_locations_resolve() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "okta", "scopes": ["scim"]}))
        .await;
    let (prom, _) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let scim_error = |r: &Reply, status: StatusCode| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.header(CONTENT_TYPE), Some("application/scim+json"));
        let v = r.json();
        assert_eq!(
            v["schemas"],
            json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
        );
        assert_eq!(v["status"], status.as_u16().to_string());
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
    };
    let r = srv.get("/scim/v2/Users").send().await;
    scim_error(&r, StatusCode::UNAUTHORIZED);
    assert!(r.challenge().is_some(), "the Bearer challenge stays");
    let r = srv.get("/scim/v2/Users").bearer("sak_nope").send().await;
    scim_error(&r, StatusCode::UNAUTHORIZED);
    let r = srv.get("/scim/v2/Users").bearer(&prom).send().await;
    scim_error(&r, StatusCode::FORBIDDEN);
    let r = srv.post("/scim/v2/Users").bearer(&token).send().await;
    scim_error(&r, StatusCode::METHOD_NOT_ALLOWED);
    let r = srv
        .get("/scim/v2/Users/mallory")
        .bearer(&token)
        .send()
        .await;
    scim_error(&r, StatusCode::NOT_FOUND);

    // Every user's meta.location answers with that user.
    let list = srv.get("/scim/v2/Users").bearer(&token).send().await.json();
    for user in list["Resources"].as_array().unwrap() {
        let location = user["meta"]["location"].as_str().unwrap();
        let r = srv.get(location).bearer(&token).send().await;
        assert_eq!(r.status, StatusCode::OK, "{location}");
        assert_eq!(r.header(CONTENT_TYPE), Some("application/scim+json"));
        assert_eq!(&r.json(), user);
    }
}

/// Under `/scim/` a rate-limited request is a SCIM error whose detail says what happened.
#[tokio::test]
async fn a_rate_limited_scim_request_is_not_called_malformed() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "s", "scopes": ["scim"],
            "rate_limits": [{"name": "burst", "limit": 1, "window_ms": 60000}]}))
        .await;
    let r = srv.get("/scim/v2/Users").bearer(&token).send().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = srv.get("/scim/v2/Users").bearer(&token).send().await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert!(r.header(axum::http::header::RETRY_AFTER).is_some());
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert_ne!(detail, "the request is malformed", "{}", r.text());
}

/// A SCIM client asks for resources this directory does not have (`/Groups`,
/// `/ServiceProviderConfig`, a trailing slash): the answer is a SCIM error too, not the
/// management API's problem document, and still needs a key.
#[tokio::test]
async fn unknown_scim_paths_are_scim_errors() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "okta", "scopes": ["scim"]}))
        .await;
    for path in [
        "/scim/v2/Groups",
        "/scim/v2/ServiceProviderConfig",
        "/scim/v2/Users/",
        "/scim/v2/Users/bob/x",
    ] {
        for (token, status) in [
            (Some(&token), StatusCode::NOT_FOUND),
            (None, StatusCode::UNAUTHORIZED),
        ] {
            let call = srv.get(path);
            let r = match token {
                Some(t) => call.bearer(t),
                None => call,
            }
            .send()
            .await;
            assert_eq!(r.status, status, "{path}: {}", r.text());
            assert_eq!(
                r.header(CONTENT_TYPE),
                Some("application/scim+json"),
                "{path}"
            );
            assert_eq!(
                r.json()["schemas"],
                json!(["urn:ietf:params:scim:api:messages:2.0:Error"]),
                "{path}"
            );
        }
    }
}

/// `userName` is case-insensitive in SCIM (RFC 7643 §4.1.1: `caseExact` false), and `eq`
/// compares by the attribute's case rule (RFC 7644 §3.4.2.2): an identity provider that looks
/// up `Bob` finds bob, instead of concluding he is not in the directory.
#[tokio::test]
async fn a_username_filter_ignores_case() {
    let srv = start().await;
    let (token, _) = srv
        .create(json!({"name": "okta", "scopes": ["scim"], "expiry": {"days": 90}}))
        .await;
    let v = srv
        .get("/scim/v2/Users?filter=userName%20eq%20%22Bob%22")
        .bearer(&token)
        .send()
        .await
        .json();
    assert_eq!(v["totalResults"], 1, "{v}");
    assert_eq!(v["Resources"][0]["userName"], "bob");
}
