//! Generating keys on the page: the defaults, a custom date, and revealing a key.

use super::*;

// ---- the scenarios -------------------------------------------------------------------------

/// Generate with the defaults: 90 days preselected, the expiry shown is 90 days from now, the
/// token is shown once, works on `/metrics`, and is never kept in storage or the URL.
#[tokio::test]
async fn generate_with_defaults_shows_the_key_once_and_it_works() {
    let Some(h) = Harness::start("generate_with_defaults").await else {
        return;
    };
    h.open_page().await;

    // The form opens from the keyboard, with focus on the name field.
    h.css("#open-generate")
        .await
        .send_keys(&Key::Enter)
        .await
        .unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    assert_eq!(
        h.js("return document.activeElement.id;").await,
        json!("key-name")
    );
    // The "Key expiration" list comes from the policy, with its default (90 days) preselected.
    assert_eq!(h.value("#key-expiry").await, "days:90");
    let options = h
        .js("return Array.from(document.querySelectorAll('#key-expiry option')).map(o => o.value);")
        .await;
    assert_eq!(
        options,
        json!([
            "days:7", "days:30", "days:60", "days:90", "days:180", "days:365", "custom"
        ])
    );
    assert!(
        h.text("#key-expiry-help")
            .await
            .contains("90 days from now")
    );
    // Escape closes the form and focus goes back to its button; Enter opens it again.
    h.css("#key-name")
        .await
        .send_keys(&Key::Escape)
        .await
        .unwrap();
    h.wait_js("document.getElementById('generate-panel').hidden")
        .await;
    assert_eq!(
        h.js("return document.activeElement.id;").await,
        json!("open-generate")
    );
    h.browser
        .active_element()
        .await
        .unwrap()
        .send_keys(&Key::Enter)
        .await
        .unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    assert_eq!(h.value("#key-expiry").await, "days:90");

    let name = "Prometheus scraper (prod)";
    h.css("#key-name").await.send_keys(name).await.unwrap();
    h.screenshot("generate-form.png").await;
    let before = now_unix();
    // Enter in the name field submits the form.
    h.css("#key-name")
        .await
        .send_keys(&Key::Enter)
        .await
        .unwrap();
    h.wait_js("!document.getElementById('new-key-panel').hidden")
        .await;
    let after = now_unix();

    let token = h.value("#new-key-token").await;
    assert!(token.starts_with("sak_"), "a token is shown");
    assert!(
        h.text("#new-key-warning")
            .await
            .contains("It will not be shown again"),
        "the warning is plain"
    );

    // The expiration shown is 90 days from now.
    let expires_el = h.css("#new-key-expires").await;
    let shown: u64 = expires_el
        .attr("data-unix")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (before + 90 * DAY..=after + 90 * DAY).contains(&shown),
        "expiry {shown} is 90 days after [{before}, {after}]"
    );
    assert_eq!(expires_el.text().await.unwrap(), utc_date(shown));

    // The list shows the new key, active, with the same expiry.
    h.wait_js("document.querySelectorAll('#key-rows tr').length === 1")
        .await;
    assert_eq!(h.text("#key-rows .key-name").await, name);
    assert_eq!(h.text("#key-rows .badge").await, "Active");
    // The list shows the time of day too.
    assert_eq!(
        h.text("#key-rows .col-expires time").await,
        utc_date_time(shown)
    );
    assert_eq!(h.text("#key-rows .col-last-used").await, "Never used");
    assert_eq!(
        h.count("#key-rows button.action-reveal").await,
        0,
        "reveal is off"
    );

    // The token shown once authenticates /metrics; a wrong one does not.
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);
    let mut wrong = token.clone();
    wrong.pop();
    wrong.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(h.metrics_status(&wrong).await, StatusCode::UNAUTHORIZED);

    // Never in a URL or web storage.
    let url = h.browser.current_url().await.unwrap();
    assert!(!url.as_str().contains(&token));
    // (The tab's sessionStorage holds the demo sessions from the login link, so that a
    // reload keeps them; never a key.)
    assert_eq!(h.js("return localStorage.length;").await, json!(0));
    let stored = h
        .js("return JSON.stringify(Object.entries(sessionStorage));")
        .await;
    assert!(!stored.as_str().unwrap().contains(&token));

    // Copy button: the Clipboard API puts the key on the clipboard (the page falls back to
    // selecting the key when a browser refuses; headless Chromium on loopback allows it).
    h.css("#copy-key").await.click().await.unwrap();
    h.wait_js("document.getElementById('copy-status').textContent !== ''")
        .await;
    assert_eq!(h.text("#copy-status").await, "Copied to the clipboard.");
    // Reading it back needs the clipboard-read permission (the page itself never reads).
    h.browser
        .issue_cmd(SetPermission("clipboard-read"))
        .await
        .unwrap();
    let clipboard = h
        .browser
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             navigator.clipboard.readText().then(t => done('ok:' + t), e => done('error ' + e));",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        clipboard.as_str() == Some(&format!("ok:{token}")),
        "the clipboard does not hold the key: {}",
        clipboard
            .as_str()
            .unwrap_or("")
            .split(':')
            .next()
            .unwrap_or("")
    );
    h.screenshot("new-key.png").await;

    // "Done" removes the token from the page.
    h.css("#new-key-done").await.click().await.unwrap();
    h.wait_js("document.getElementById('new-key-panel').hidden")
        .await;
    assert_eq!(h.value("#new-key-token").await, "");
    assert!(!h.source_contains(&token).await, "token left in the DOM");
    assert_eq!(
        h.js("return document.activeElement.id;").await,
        json!("open-generate"),
        "focus returns to the button"
    );

    // Last use shows up after the key was used (once the manager's buffered uses are written).
    h.state.manager.flush_last_use().await.unwrap();
    h.open_page().await;
    h.wait_js("document.querySelectorAll('#key-rows tr').length === 1")
        .await;
    assert_eq!(h.text("#key-rows .col-last-used time").await.len(), 10);
    assert_eq!(h.csp_violations().await, 0);

    // Make the list look like a real organization's for the screenshot.
    let r = h
        .call(
            Method::POST,
            "/api/keys",
            Some(&h.manager.clone()),
            Some(json!({"name": "SCIM provisioning (Okta)", "scopes": ["scim"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (old_id, _) = h.create_key("Legacy exporter").await;
    let r = h
        .call(
            Method::POST,
            &format!("/api/keys/{old_id}/revoke"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h
        .call(
            Method::POST,
            "/api/keys",
            Some(&h.manager.clone()),
            Some(json!({"name": "Staging scraper", "scopes": ["prometheus", "scim"], "expiry": {"days": 7}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    h.open_page().await;
    h.wait_js("document.querySelectorAll('#key-rows tr').length === 4")
        .await;
    let badges = h
        .js("return Array.from(document.querySelectorAll('#key-rows .badge')).map(b => b.textContent).sort();")
        .await;
    assert_eq!(
        badges,
        json!(["Active", "Active", "Expires in 7 days", "Revoked"])
    );
    assert!(h.fits_the_window().await, "horizontal overflow at 1280 px");
    h.screenshot("list.png").await;

    // Smaller windows: still readable, nothing wider than the window.
    for width in [1180, 1100, 1024, 1000, 900, 600, 400, 320] {
        h.browser.set_window_size(width, 900).await.unwrap();
        h.wait_js(&format!("window.innerWidth <= {width}")).await;
        assert!(
            h.fits_the_window().await,
            "horizontal overflow at {width} px: {}",
            h.js("const w = document.documentElement.clientWidth; return Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right > w + 0.5).map(e => e.tagName + '#' + e.id + '.' + e.className + ':' + Math.round(e.getBoundingClientRect().right)).slice(0, 12).join(' ');").await
        );
    }
    h.screenshot("list-narrow.png").await;
    h.finish().await;
}

/// "Key expiration" → "Custom date…": a date within the policy's maximum is accepted and the key
/// expires at 00:00 UTC that day; a date past the maximum is refused by the page.
#[tokio::test]
async fn generate_with_a_custom_date() {
    let Some(h) = Harness::start("custom_date").await else {
        return;
    };
    h.open_page().await;
    h.css("#open-generate").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-panel').hidden")
        .await;
    assert!(
        !h.css("#key-expiry-date")
            .await
            .is_displayed()
            .await
            .unwrap()
    );
    h.css("#key-expiry")
        .await
        .select_by_value("custom")
        .await
        .unwrap();
    assert!(
        h.css("#key-expiry-date")
            .await
            .is_displayed()
            .await
            .unwrap()
    );
    h.css("#key-name")
        .await
        .send_keys("Quarterly audit")
        .await
        .unwrap();

    let midnight = now_unix() / DAY * DAY;
    let set_date = |unix: u64| {
        format!(
            "const d = document.getElementById('key-expiry-date'); d.value = '{}'; \
             d.dispatchEvent(new Event('input', {{bubbles: true}}));",
            utc_date(unix)
        )
    };
    // Past the policy's 365 days: the page refuses before asking the server.
    h.js(&set_date(midnight + 400 * DAY)).await;
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js("!document.getElementById('generate-error').hidden")
        .await;
    assert!(
        h.text("#generate-error")
            .await
            .starts_with("Choose an expiration date")
    );
    let listed = h
        .call(Method::GET, "/api/keys", Some(&h.manager.clone()), None)
        .await;
    assert_eq!(listed.json, json!([]), "nothing was generated");

    let chosen = midnight + 45 * DAY;
    h.js(&set_date(chosen)).await;
    h.css("#generate-submit").await.click().await.unwrap();
    h.wait_js("!document.getElementById('new-key-panel').hidden")
        .await;
    let shown: u64 = h
        .css("#new-key-expires")
        .await
        .attr("data-unix")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(shown, chosen);
    let listed = h
        .call(Method::GET, "/api/keys", Some(&h.manager.clone()), None)
        .await;
    assert_eq!(listed.json[0]["expires_at"], json!(chosen));
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// With `allow_reveal` on, a manager can reveal a key again from its row; the page says the
/// reveal is audited. (Off by default: then no row has a Reveal action.)
#[tokio::test]
async fn reveal_when_the_policy_allows_it() {
    let state = app::AppState::with_policy(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        Policy::default().allow_reveal(true),
    )
    .expect("app state");
    let Some(h) = Harness::start_with("reveal", state).await else {
        return;
    };
    let (id, token) = h.create_key("Okta SCIM").await;
    h.open_page().await;
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-reveal"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("!document.getElementById('new-key-panel').hidden")
        .await;
    assert_eq!(h.text("#new-key-title").await, "API key revealed");
    assert_eq!(h.value("#new-key-token").await, token);
    assert!(h.text("#new-key-meta").await.contains("audit log"));
    assert!(
        h.text("#new-key-warning")
            .await
            .contains("every reveal is audited")
    );
    h.css("#new-key-done").await.click().await.unwrap();
    assert_eq!(h.value("#new-key-token").await, "");
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}
