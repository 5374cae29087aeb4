//! Who may use the page: reloads after a 401 or a server restart, and a member who cannot manage keys.

use super::*;

/// After a server restart (a new session-signing key) the page's sessions are dead: the first
/// 401 takes the buttons off, empties the picker and says to sign in again; the restarted
/// server's login link signs in, and the keys are still there.
#[tokio::test]
async fn after_a_server_restart_the_page_reloads_sessions_and_the_list() {
    let store = MemoryStore::new();
    let key = [7u8; 16];
    let state_over = |store: &MemoryStore| {
        app::AppState::new(
            AnyStore::new(store.clone()),
            Keyring::new(1, MasterKey::from_bytes(key)),
        )
        .expect("app state")
    };
    let Some(mut h) = Harness::start_with("restart", state_over(&store)).await else {
        return;
    };
    let (id, _) = h.create_key("Grafana").await;
    h.open_page().await;
    assert!(h.count("#key-rows button.action-revoke").await > 0);

    h.restart(state_over(&store)).await;
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-revoke"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('confirm-dialog').open && \
         document.querySelectorAll('#session option').length === 0",
    )
    .await;
    assert_eq!(h.count("#key-rows button").await, 0, "no buttons left");
    assert!(h.text("#error").await.contains("login link"));

    h.open_page().await;
    assert_eq!(h.count("#session option").await, 2);
    h.wait_js(&format!(
        "document.querySelector('tr[data-key-id=\"{id}\"] button.action-revoke') !== null"
    ))
    .await;
    h.finish().await;
}

/// When the sessions stop working (they expired, or the server restarted with a new signing
/// key), the first 401 takes the buttons off the rows, drops the dead sessions from the picker
/// and says how to sign in again; a new login link works.
#[tokio::test]
async fn a_401_reloads_the_sessions_and_the_list() {
    const TTL: u64 = 6;
    let state = demo_state().with_session_ttl(api_keys::time::Duration::seconds(TTL as i64));
    let Some(h) = Harness::start_with("session_ends", state).await else {
        return;
    };
    let (id, _) = h.create_key("Grafana").await;
    h.open_page().await;
    // The page's sessions were issued while it opened (when it redeemed its login link), so
    // they end at most TTL after this reading, however long opening took on a loaded machine.
    let opened = now_unix();
    assert_eq!(h.count("#session option").await, 2);
    assert!(h.count("#key-rows button").await > 0);
    // Wait until the page's sessions have ended.
    let wait = (opened + TTL + 3).saturating_sub(now_unix());
    tokio::time::sleep(Duration::from_secs(wait)).await;
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-revoke"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('confirm-dialog').open && \
         document.querySelectorAll('#session option').length === 0",
    )
    .await;
    h.screenshot("session-ended.png").await;
    assert_eq!(h.count("#key-rows button").await, 0, "no buttons left");
    assert!(
        h.css("#session")
            .await
            .prop("disabled")
            .await
            .unwrap()
            .is_some()
    );
    assert!(h.text("#error").await.contains("login link"));
    // The key was not revoked.
    let r = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.state.session("acme", "alice", "manager").unwrap()),
            None,
        )
        .await;
    assert_eq!(r.json["status"], "active");
    // A new login link signs in again.
    h.open_page().await;
    assert_eq!(h.count("#session option").await, 2);
    assert!(h.count("#key-rows button.action-revoke").await > 0);
    h.finish().await;
}

/// A member sees the page read-only with a clear message; the server refuses forged calls.
#[tokio::test]
async fn a_member_cannot_manage_keys() {
    let Some(h) = Harness::start("member").await else {
        return;
    };
    let (id, token) = h.create_key("Prometheus").await;
    h.open_page().await;
    assert_eq!(
        h.count("#key-rows button").await,
        4,
        "the manager sees actions (roll, limits, revoke, revoke and delete)"
    );

    h.choose_session("member").await;
    h.wait_js("!document.getElementById('member-notice').hidden")
        .await;
    assert!(
        h.text("#member-notice")
            .await
            .contains("Only managers of this organization can manage API keys")
    );
    assert!(
        !h.css("#open-generate").await.is_displayed().await.unwrap(),
        "no Generate button"
    );
    let mut visible_buttons = 0;
    for b in h
        .browser
        .find_all(Locator::Css("main button"))
        .await
        .unwrap()
    {
        if b.is_displayed().await.unwrap() {
            visible_buttons += 1;
        }
    }
    assert_eq!(visible_buttons, 0, "a member sees no management controls");
    // The core lets only managers list keys, so the page says so instead of showing rows.
    assert_eq!(h.count("#key-rows tr").await, 0);
    assert_eq!(
        h.text("#list-empty").await,
        "The key list is shown to managers of this organization only."
    );
    h.screenshot("member.png").await;

    // The server enforces it: forged calls with the member's session get 403.
    let member = h.member.clone();
    let forged = [
        (Method::GET, "/api/keys".to_owned(), None),
        (Method::GET, format!("/api/keys/{id}"), None),
        (
            Method::POST,
            "/api/keys".to_owned(),
            Some(json!({"name": "mine", "scopes": ["prometheus"]})),
        ),
        (Method::POST, format!("/api/keys/{id}/revoke"), None),
        (
            Method::POST,
            format!("/api/keys/{id}/roll"),
            Some(json!({"overlap_seconds": 60})),
        ),
        (Method::POST, format!("/api/keys/{id}/reveal"), None),
        (Method::DELETE, format!("/api/keys/{id}"), None),
    ];
    for (method, path, body) in forged {
        let r = h.call(method.clone(), &path, Some(&member), body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(r.json["error"], "permission_denied");
    }
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);

    // Back to the manager: the controls return.
    h.choose_session("manager").await;
    h.wait_js(
        "!document.getElementById('manager-actions').hidden && \
         document.querySelectorAll('#key-rows button').length === 4",
    )
    .await;
    h.finish().await;
}
