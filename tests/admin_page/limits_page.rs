//! Usage limits and credits shown and set on the page.

use super::*;

/// Usage limits on the page: the generate form's optional rate limit and credits reach the
/// key, its row shows them with the credits left (which go down as the key is used), and a
/// manager changes them from the row's Limits dialog; a bad number is refused on the page.
#[tokio::test]
async fn limits_are_shown_and_set_on_the_page() {
    let Some(h) = Harness::start("limits").await else {
        return;
    };
    h.open_page().await;
    h.css("#open-generate").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    h.css("#key-name")
        .await
        .send_keys("Metered scraper")
        .await
        .unwrap();
    h.css("#key-rate").await.send_keys("100").await.unwrap();
    h.css("#key-rate-window")
        .await
        .select_by_value("60000")
        .await
        .unwrap();
    h.css("#key-credits").await.send_keys("3").await.unwrap();
    h.css("#key-credits-refill")
        .await
        .select_by_value("daily")
        .await
        .unwrap();
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js("!document.getElementById('new-key-panel').hidden")
        .await;
    let token = h.value("#new-key-token").await;
    let listed = h
        .call(Method::GET, "/api/keys", Some(&h.manager.clone()), None)
        .await;
    let key = &listed.json[0];
    let id = key["id"].as_str().unwrap().to_owned();
    assert_eq!(key["rate_limits"][0]["limit"], json!(100));
    assert_eq!(key["rate_limits"][0]["window_ms"], json!(60_000));
    assert_eq!(
        key["credits"],
        json!({"initial": 3, "refill": {"every": "daily", "amount": 3}})
    );
    let cell = format!("tr[data-key-id=\"{id}\"] .col-limits");
    let cell_js = serde_json::to_string(&cell).unwrap();
    let cell_has = |needle: &str| {
        format!(
            "(document.querySelector({cell_js}) || {{textContent: ''}}).textContent.includes({needle:?})"
        )
    };
    h.wait_js(&cell_has("3 of 3 credits left")).await;
    assert!(
        h.text(&cell).await.contains("100 / minute"),
        "{}",
        h.text(&cell).await
    );

    // One use spends one credit; the page shows it after a reload.
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);
    h.open_page().await;
    h.wait_js(&cell_has("2 of 3 credits left")).await;

    // The Limits dialog: prefilled, and saving changes both.
    h.open_limits(&id).await;
    assert_eq!(h.value("#limits-rate").await, "100");
    assert_eq!(h.value("#limits-credits").await, "3");
    h.css("#limits-rate").await.clear().await.unwrap();
    h.css("#limits-rate").await.send_keys("5").await.unwrap();
    h.css("#limits-rate-window")
        .await
        .select_by_value("1000")
        .await
        .unwrap();
    h.css("#limits-credits").await.clear().await.unwrap();
    h.css("#limits-credits")
        .await
        .send_keys("10")
        .await
        .unwrap();
    h.save_limits().await;
    h.wait_js(&cell_has("10 of 10 credits left")).await;
    assert!(
        h.text(&cell).await.contains("5 / second"),
        "{}",
        h.text(&cell).await
    );
    let got = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(got.json["rate_limits"][0]["limit"], json!(5));
    assert_eq!(got.json["rate_limits"][0]["window_ms"], json!(1000));
    assert_eq!(got.json["credits"]["initial"], json!(10));

    // A bad number is refused on the page; nothing changes.
    h.open_limits(&id).await;
    h.css("#limits-rate").await.clear().await.unwrap();
    h.css("#limits-rate").await.send_keys("0").await.unwrap();
    h.css("#limits-save").await.click().await.unwrap();
    h.wait_js("!document.getElementById('limits-error').hidden")
        .await;
    assert!(
        h.text("#limits-error")
            .await
            .starts_with("A rate limit is a whole number")
    );
    h.css("#limits-cancel").await.click().await.unwrap();
    let again = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(again.json["rate_limits"], got.json["rate_limits"]);
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// The Limits dialog offers one per-key rate limit; a key whose limit was set through the API
/// as an organization-wide one (README's `"scope":"org"` example) keeps it as it is when a
/// manager changes only its credits there: the rate fields were left as shown.
#[tokio::test]
async fn saving_only_credits_keeps_an_org_wide_rate_limit() {
    let Some(h) = Harness::start("limits-org").await else {
        return;
    };
    let (id, _) = h.create_key("Shared scraper").await;
    let daily =
        json!([{"name": "daily", "limit": 10_000, "window_ms": 86_400_000, "scope": "org"}]);
    let r = h
        .call(
            Method::PUT,
            &format!("/api/keys/{id}/limits"),
            Some(&h.manager.clone()),
            Some(json!({ "rate_limits": daily })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    h.open_page().await;
    h.open_limits(&id).await;
    assert_eq!(h.value("#limits-rate").await, "10000");
    h.css("#limits-credits")
        .await
        .send_keys("50")
        .await
        .unwrap();
    h.save_limits().await;
    let got = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(got.json["credits"]["initial"], json!(50));
    assert_eq!(
        got.json["rate_limits"], daily,
        "the rate limit was left as shown"
    );
    h.finish().await;
}

/// Changing only a key's rate limit in the Limits dialog leaves its credits alone: a budget set
/// through the API with a refill the dialog cannot show (the 15th of the month) keeps it, and
/// the balance is not set back to the full budget.
#[tokio::test]
async fn saving_only_a_rate_limit_keeps_the_credits() {
    let Some(h) = Harness::start("limits-credits").await else {
        return;
    };
    let (id, token) = h.create_key("Metered").await;
    let credits = json!({"initial": 100, "refill": {"every": "monthly", "day": 15, "amount": 100}});
    let r = h
        .call(
            Method::PUT,
            &format!("/api/keys/{id}/credits"),
            Some(&h.manager.clone()),
            Some(json!({ "credits": credits })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);
    h.open_page().await;
    h.open_limits(&id).await;
    assert_eq!(h.value("#limits-credits").await, "100");
    h.css("#limits-rate").await.send_keys("5").await.unwrap();
    h.save_limits().await;
    let manager = h.manager.clone();
    let got = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&manager),
            None,
        )
        .await;
    assert_eq!(got.json["rate_limits"][0]["limit"], json!(5));
    assert_eq!(
        got.json["credits"], credits,
        "the credits were left as shown"
    );
    let left = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}/credits"),
            Some(&manager),
            None,
        )
        .await;
    assert_eq!(
        left.json["remaining"],
        json!(99),
        "the balance is not reset"
    );
    h.finish().await;
}

/// A number field the browser cannot read (a typo such as `10e`: Chromium then reports its
/// value as empty) is refused on the page, not taken for an empty field: the generate form makes
/// no key without the rate limit asked for, and the Limits dialog does not remove a key's limit.
#[tokio::test]
async fn an_unreadable_number_is_refused_not_taken_as_no_limit() {
    let Some(h) = Harness::start("limits-typo").await else {
        return;
    };
    let (id, _) = h.create_key("Limited").await;
    let limit = json!([{"name": "per-minute", "limit": 100, "window_ms": 60_000, "scope": "key"}]);
    let manager = h.manager.clone();
    let r = h
        .call(
            Method::PUT,
            &format!("/api/keys/{id}/limits"),
            Some(&manager),
            Some(json!({ "rate_limits": limit })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    h.open_page().await;

    // The generate form: "10e" in the rate limit.
    h.css("#open-generate").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    h.css("#key-name").await.send_keys("Typo").await.unwrap();
    h.css("#key-rate").await.send_keys("10e").await.unwrap();
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('generate-error').hidden || \
         !document.getElementById('new-key-panel').hidden",
    )
    .await;
    let listed = h.call(Method::GET, "/api/keys", Some(&manager), None).await;
    assert_eq!(
        listed.json.as_array().unwrap().len(),
        1,
        "a key was made without its rate limit: {}",
        listed.json
    );
    assert!(
        h.text("#generate-error")
            .await
            .starts_with("A rate limit is a whole number"),
        "{}",
        h.text("#generate-error").await
    );
    h.css("#generate-cancel").await.click().await.unwrap();

    // The Limits dialog: "100" edited into "100e".
    h.open_limits(&id).await;
    h.css("#limits-rate").await.send_keys("e").await.unwrap();
    h.css("#limits-save").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('limits-error').hidden || \
         !document.getElementById('limits-dialog').open",
    )
    .await;
    let got = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&manager),
            None,
        )
        .await;
    assert_eq!(
        got.json["rate_limits"], limit,
        "the key's rate limit was removed"
    );
    assert!(
        h.text("#limits-error")
            .await
            .starts_with("A rate limit is a whole number")
    );
    h.finish().await;
}

/// A budget refilled on a day of the month the dialog cannot show (the 15th, set through the
/// API) keeps that day when a manager changes only the amount in the Limits dialog: the refill
/// kind was left as shown, so its day is not moved to the 1st without a word.
#[tokio::test]
async fn changing_the_credits_keeps_a_monthly_refill_day() {
    let Some(h) = Harness::start("limits-refill-day").await else {
        return;
    };
    let (id, _) = h.create_key("Metered").await;
    let manager = h.manager.clone();
    let credits = json!({"initial": 100, "refill": {"every": "monthly", "day": 15, "amount": 100}});
    let r = h
        .call(
            Method::PUT,
            &format!("/api/keys/{id}/credits"),
            Some(&manager),
            Some(json!({ "credits": credits })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    h.open_page().await;
    h.open_limits(&id).await;
    assert_eq!(
        h.text("#limits-credits-refill option[value=\"monthly\"]")
            .await,
        "refilled on day 15 of each month"
    );
    h.css("#limits-credits").await.clear().await.unwrap();
    h.css("#limits-credits")
        .await
        .send_keys("200")
        .await
        .unwrap();
    h.save_limits().await;
    let got = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&manager),
            None,
        )
        .await;
    assert_eq!(
        got.json["credits"],
        json!({"initial": 200, "refill": {"every": "monthly", "day": 15, "amount": 200}}),
        "the refill day moved"
    );
    h.finish().await;
}
