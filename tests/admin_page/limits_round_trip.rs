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

/// Changing a budget's amount in the Limits dialog keeps a refill amount that differs from it
/// (1 000 refilled to 500 monthly, or daily): the dialog shows that amount, and the manager
/// changed only the budget.
#[tokio::test]
async fn changing_the_credits_keeps_a_refill_amount() {
    let Some(h) = Harness::start("limits-refill-amount").await else {
        return;
    };
    let (id, _) = h.create_key("Metered").await;
    for refill in [
        json!({"every": "monthly", "day": 1, "amount": 500}),
        json!({"every": "daily", "amount": 500}),
    ] {
        let every = refill["every"].as_str().unwrap().to_owned();
        h.put_ok(
            &id,
            "credits",
            json!({"credits": {"initial": 1000, "refill": refill}}),
        )
        .await;
        h.open_page().await;
        h.open_limits(&id).await;
        h.css("#limits-credits").await.clear().await.unwrap();
        h.css("#limits-credits")
            .await
            .send_keys("2000")
            .await
            .unwrap();
        h.save_limits().await;
        assert_eq!(
            h.key_json(&id).await["credits"],
            json!({"initial": 2000, "refill": refill}),
            "the {every} refill amount changed"
        );
        // The list is drawn again with the new budget before its Limits button is used.
        h.wait_js(&format!(
            "(document.querySelector('tr[data-key-id=\"{id}\"] .col-limits') || \
             {{textContent: ''}}).textContent.includes('of 2000 credits')"
        ))
        .await;
        h.open_limits(&id).await;
        let shown = h
            .text(&format!("#limits-credits-refill option[value=\"{every}\"]"))
            .await;
        assert!(shown.contains("500"), "the dialog shows: {shown}");
        h.css("#limits-cancel").await.click().await.unwrap();
    }
    h.finish().await;
}

/// Rate limits the dialog cannot show in full (several of them, or a window other than a
/// second, minute, hour or day) are kept as they are when a manager changes only the credits:
/// the rate fields were left as shown.
#[tokio::test]
async fn saving_only_credits_keeps_limits_the_dialog_cannot_show() {
    let Some(h) = Harness::start("limits-several").await else {
        return;
    };
    let (id, _) = h.create_key("Limited").await;
    for (limits, credits) in [
        (
            json!([
                {"name": "burst", "limit": 10, "window_ms": 1000, "scope": "key"},
                {"name": "daily", "limit": 10_000, "window_ms": 86_400_000, "scope": "org"},
            ]),
            "50",
        ),
        (
            json!([{"name": "half-minute", "limit": 100, "window_ms": 30_000, "scope": "key"}]),
            "60",
        ),
    ] {
        h.put_ok(&id, "limits", json!({ "rate_limits": limits }))
            .await;
        h.open_page().await;
        h.open_limits(&id).await;
        h.css("#limits-credits").await.clear().await.unwrap();
        h.css("#limits-credits")
            .await
            .send_keys(credits)
            .await
            .unwrap();
        h.save_limits().await;
        let got = h.key_json(&id).await;
        assert_eq!(
            got["credits"]["initial"],
            json!(credits.parse::<u64>().unwrap())
        );
        assert_eq!(
            got["rate_limits"], limits,
            "the rate limits were left as shown"
        );
    }
    h.finish().await;
}

/// The largest limit and budget the server takes (2^53, `MAX_UNITS`) are numbers the Limits
/// dialog takes too: a key carrying them (set through the API) keeps them when only its other
/// field changes, and a manager may type them; one more is refused before anything is sent.
#[tokio::test]
async fn the_dialog_takes_the_largest_values_the_server_takes() {
    let Some(h) = Harness::start("limits-max-units").await else {
        return;
    };
    let max = api_keys::MAX_UNITS;
    let (id, _) = h.create_key("Unmetered").await;
    let rate = json!({"name": "per-minute", "limit": max, "window_ms": 60_000, "scope": "key"});
    h.put_ok(&id, "limits", json!({ "rate_limits": [rate] }))
        .await;
    h.open_page().await;
    h.open_limits(&id).await;
    h.css("#limits-credits")
        .await
        .send_keys(&max.to_string())
        .await
        .unwrap();
    h.css("#limits-save").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('limits-dialog').open || \
         document.getElementById('limits-error').textContent !== ''",
    )
    .await;
    assert_eq!(
        h.text("#limits-error").await,
        "",
        "the dialog refused the server's own maximum"
    );
    h.wait_js("!document.getElementById('limits-dialog').open")
        .await;
    let key = h.key_json(&id).await;
    assert_eq!(key["rate_limits"], json!([rate]));
    assert_eq!(key["credits"], json!({"initial": max, "refill": null}));

    // One more than the maximum is refused in the dialog, not rounded to it.
    h.wait_js(&format!(
        "document.querySelector('tr[data-key-id=\"{id}\"] .action-limits') !== null"
    ))
    .await;
    h.open_limits(&id).await;
    h.css("#limits-rate").await.clear().await.unwrap();
    h.css("#limits-rate")
        .await
        .send_keys(&(max + 1).to_string())
        .await
        .unwrap();
    h.css("#limits-save").await.click().await.unwrap();
    h.wait_js("document.getElementById('limits-error').textContent !== ''")
        .await;
    assert!(h.text("#limits-error").await.contains(&max.to_string()));
    assert_eq!(h.key_json(&id).await["rate_limits"], json!([rate]));
    h.finish().await;
}

/// After the Limits dialog saves, the list is drawn again; the focus goes back to the saved
/// key's Limits button (as after Cancel), not to the page's body, where a keyboard or
/// screen-reader user would have to start over from the top.
#[tokio::test]
async fn saving_limits_returns_the_focus_to_the_keys_limits_button() {
    let Some(h) = Harness::start("limits-focus").await else {
        return;
    };
    let (id, _) = h.create_key("Focused").await;
    h.open_page().await;
    h.open_limits(&id).await;
    h.css("#limits-rate").await.send_keys("7").await.unwrap();
    h.save_limits().await;
    h.wait_js(&format!(
        "(document.querySelector('tr[data-key-id=\"{id}\"] .col-limits') || \
         {{textContent: ''}}).textContent.includes('7')"
    ))
    .await;
    let sel = serde_json::to_string(&format!("tr[data-key-id=\"{id}\"] .action-limits")).unwrap();
    assert_eq!(
        h.js(&format!(
            "return document.activeElement === document.querySelector({sel}) ? 'limits' : \
             document.activeElement.tagName + '#' + document.activeElement.id;"
        ))
        .await,
        json!("limits"),
        "the focus is lost after saving"
    );
    h.finish().await;
}
