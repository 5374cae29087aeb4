//! The Limits dialog round-trips what it does not let a manager change: a limit's scope and
//! name, a refill's amount, the limits it cannot show.

use super::*;

impl Harness {
    /// `PUT /api/keys/{id}/{what}` as the manager, which must succeed.
    async fn put_ok(&self, id: &str, what: &str, body: Value) {
        let r = self
            .call(
                Method::PUT,
                &format!("/api/keys/{id}/{what}"),
                Some(&self.manager.clone()),
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    }

    /// The key as `GET /api/keys/{id}` gives it to the manager.
    async fn key_json(&self, id: &str) -> Value {
        self.call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&self.manager.clone()),
            None,
        )
        .await
        .json
    }
}

/// An organization-wide limit whose window a manager changes in the Limits dialog stays
/// organization-wide, under its name (the counter it shares with the organization's other
/// keys); the dialog shows the scope.
#[tokio::test]
async fn changing_the_window_keeps_an_org_wide_limit() {
    let Some(h) = Harness::start("limits-scope").await else {
        return;
    };
    let (id, _) = h.create_key("Shared scraper").await;
    let daily = json!({"name": "daily", "limit": 10_000, "window_ms": 86_400_000, "scope": "org"});
    h.put_ok(&id, "limits", json!({ "rate_limits": [daily] }))
        .await;
    h.open_page().await;
    h.open_limits(&id).await;
    h.css("#limits-rate-window")
        .await
        .select_by_value("3600000")
        .await
        .unwrap();
    h.save_limits().await;
    assert_eq!(
        h.key_json(&id).await["rate_limits"],
        json!([{"name": "daily", "limit": 10_000, "window_ms": 3_600_000, "scope": "org"}]),
        "the organization-wide limit became a per-key one"
    );
    h.open_limits(&id).await;
    assert_eq!(
        h.js("return (document.getElementById('limits-rate-scope') || {}).value;")
            .await,
        json!("org"),
        "the dialog does not show the scope"
    );
    h.finish().await;
}
