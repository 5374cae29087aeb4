//! Usage limits and credits shown and set through the management API.

use super::*;

/// Usage limits through the management API: a key generated with a rate limit and credits
/// carries them, its credits go down as it is used and it is refused at zero, and a manager
/// changes both later (a member cannot).
#[tokio::test]
async fn limits_and_credits_are_shown_and_set_through_the_api() {
    let srv = start().await;
    let (token, info) = srv
        .create(json!({
            "name": "metered",
            "scopes": ["prometheus"],
            "rate_limits": [{"name": "per-minute", "limit": 100, "window_ms": 60000}],
            "credits": {"initial": 2, "refill": {"every": "daily", "amount": 2}},
        }))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    assert_eq!(
        info["rate_limits"],
        json!([{"name": "per-minute", "limit": 100, "window_ms": 60000, "scope": "key"}])
    );
    assert_eq!(
        info["credits"],
        json!({"initial": 2, "refill": {"every": "daily", "amount": 2}})
    );
    let r = credits(&srv, &id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["remaining"], json!(2));

    // Two scrapes spend both credits; the third is refused as over its usage, and reading
    // the balance spends nothing.
    assert_eq!(srv.scrape(&token).await.status, StatusCode::OK);
    assert_eq!(credits(&srv, &id).await.json()["remaining"], json!(1));
    assert_eq!(srv.scrape(&token).await.status, StatusCode::OK);
    let refused = srv.scrape(&token).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["error"], "usage_exceeded");
    assert_eq!(credits(&srv, &id).await.json()["remaining"], json!(0));

    // A manager sets a new budget: the balance is the new amount now, and the key works.
    let r = srv
        .put(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .json(&json!({"credits": {"initial": 5}}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"credits": {"initial": 5, "refill": null}, "remaining": 5})
    );
    assert_eq!(srv.scrape(&token).await.status, StatusCode::OK);
    assert_eq!(credits(&srv, &id).await.json()["remaining"], json!(4));

    // New rate limits replace the old ones; the key's JSON shows them.
    let r = srv
        .put(&format!("/api/keys/{id}/limits"))
        .session(&srv.alice())
        .json(&json!({"rate_limits": [
            {"name": "burst", "limit": 1, "window_ms": 86_400_000u64},
        ]}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["rate_limits"][0]["name"], "burst");
    let got = srv
        .get(&format!("/api/keys/{id}"))
        .session(&srv.alice())
        .send()
        .await
        .json();
    assert_eq!(got["rate_limits"].as_array().unwrap().len(), 1);
    assert_eq!(got["rate_limits"][0]["limit"], json!(1));

    // Removing the budget: the key has no credits any more.
    let r = srv
        .put(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .json(&json!({"credits": null}))
        .send()
        .await;
    assert_eq!(r.json(), json!({"credits": null, "remaining": null}));

    // Refusals: a member, a limit the crate refuses, a body of the wrong shape, an unknown key.
    srv.put(&format!("/api/keys/{id}/limits"))
        .session(&srv.bob())
        .json(&json!({"rate_limits": []}))
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, "permission_denied");
    srv.get(&format!("/api/keys/{id}/credits"))
        .session(&srv.bob())
        .send()
        .await
        .assert_error(StatusCode::FORBIDDEN, "permission_denied");
    srv.put(&format!("/api/keys/{id}/limits"))
        .session(&srv.alice())
        .json(&json!({"rate_limits": [{"name": "Bad Name", "limit": 1, "window_ms": 1000}]}))
        .send()
        .await
        .assert_error(StatusCode::BAD_REQUEST, "policy");
    srv.put(&format!("/api/keys/{id}/limits"))
        .session(&srv.alice())
        .json(&json!({"rate_limits": [{"name": "zero", "limit": 0, "window_ms": 1000}]}))
        .send()
        .await
        .assert_error(StatusCode::BAD_REQUEST, "policy");
    srv.put(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .json(&json!({"credits": {"initial": -1}}))
        .send()
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let unknown = srv
        .create(json!({"name": "gone", "scopes": ["prometheus"]}))
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    srv.delete(&format!("/api/keys/{unknown}"))
        .session(&srv.alice())
        .send()
        .await;
    srv.put(&format!("/api/keys/{unknown}/limits"))
        .session(&srv.alice())
        .json(&json!({"rate_limits": []}))
        .send()
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // A limit the crate refuses at generation is refused there too, and nothing is made.
    let r = srv
        .post("/api/keys")
        .session(&srv.alice())
        .json(&json!({"name": "x", "scopes": ["prometheus"],
            "rate_limits": [{"name": "a", "limit": 1, "window_ms": 0}]}))
        .send()
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "policy");
    let listed = srv
        .get("/api/keys")
        .session(&srv.alice())
        .send()
        .await
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

/// `GET /api/keys/{id}/credits` as alice.
async fn credits(srv: &Server, id: &str) -> Reply {
    srv.get(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .send()
        .await
}

/// An unknown field inside a rate limit or a credit budget is refused like one at the top of
/// the body: a typo such as `"scoep": "org"` must not quietly make a per-key limit, nor a
/// misspelt `"refil"` a budget that is never refilled.
#[tokio::test]
async fn unknown_fields_in_limits_and_credits_are_refused() {
    let srv = start().await;
    let alice = srv.alice();
    let (_, info) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    let id = info["id"].as_str().unwrap();
    let limit = json!([{"name": "daily", "limit": 10, "window_ms": 86_400_000, "scoep": "org"}]);
    let credits = json!({"initial": 5, "refil": {"every": "daily", "amount": 5}});
    let calls = [
        (
            srv.post("/api/keys")
                .session(&alice)
                .json(&json!({"name": "m", "scopes": ["prometheus"], "rate_limits": limit})),
            "`scoep`",
        ),
        (
            srv.post("/api/keys")
                .session(&alice)
                .json(&json!({"name": "m", "scopes": ["prometheus"], "credits": credits})),
            "`refil`",
        ),
        (
            srv.put(&format!("/api/keys/{id}/limits"))
                .session(&alice)
                .json(&json!({ "rate_limits": limit })),
            "`scoep`",
        ),
        (
            srv.put(&format!("/api/keys/{id}/credits"))
                .session(&alice)
                .json(&json!({ "credits": credits })),
            "`refil`",
        ),
    ];
    for (call, field) in calls {
        let path = call.path.clone();
        let r = call.send().await;
        r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
        let message = r.json()["detail"].as_str().unwrap().to_string();
        assert!(message.contains(field), "{path}: {message}");
    }
    // Nothing was made or changed.
    let r = srv.get("/api/keys").session(&alice).send().await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let r = srv
        .get(&format!("/api/keys/{id}"))
        .session(&alice)
        .send()
        .await;
    assert_eq!(r.json()["rate_limits"], json!([]));
    assert_eq!(r.json()["credits"], Value::Null);
    // The same shapes spelt right are taken as they are.
    let limit = json!([{"name": "daily", "limit": 10, "window_ms": 86_400_000, "scope": "org"}]);
    let credits = json!({"initial": 5, "refill": {"every": "monthly", "day": 3, "amount": 5}});
    let (_, made) = srv
        .create(json!({"name": "m", "scopes": ["prometheus"], "rate_limits": limit, "credits": credits}))
        .await;
    assert_eq!(made["rate_limits"], limit);
    assert_eq!(made["credits"], credits);
}

/// `PUT /api/keys/{id}/credits` removes a budget only when told so with `"credits": null`: an
/// empty object (a form that sent nothing, a script that built the body wrong) must not quietly
/// lift the key's usage cap, as `"rate_limits"` is required on `PUT .../limits`.
#[tokio::test]
async fn an_empty_credits_body_does_not_remove_the_budget() {
    let srv = start().await;
    let (_, info) = srv
        .create(json!({"name": "m", "scopes": ["prometheus"], "credits": {"initial": 5}}))
        .await;
    let id = info["id"].as_str().unwrap();
    let r = srv
        .put(&format!("/api/keys/{id}/credits"))
        .session(&srv.alice())
        .json(&json!({}))
        .send()
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(r.text().contains("`credits`"), "{}", r.text());
    let r = credits(&srv, id).await;
    assert_eq!(
        r.json(),
        json!({"credits": {"initial": 5, "refill": null}, "remaining": 5})
    );
    // The description says the same: the member is required (and may be null).
    let doc = srv.get("/api/openapi.json").send().await.json();
    assert_eq!(
        doc["components"]["schemas"]["CreditsBody"]["required"],
        json!(["credits"])
    );
}
