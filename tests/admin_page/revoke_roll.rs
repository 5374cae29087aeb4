//! Revoking, deleting and rolling keys through the page's dialogs, and the lineage they leave.

use super::*;

/// "Revoke and Delete" through the dialog: the warning is shown, Escape closes it and focus
/// returns, confirming removes the row, and the token is refused on the very next request.
#[tokio::test]
async fn revoke_and_delete_through_the_dialog() {
    let Some(h) = Harness::start("revoke_and_delete").await else {
        return;
    };
    let (id, token) = h.create_key("CI deploy").await;
    let (keep_id, keep_token) = h.create_key("Grafana agent").await;
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);
    h.open_page().await;

    let row = format!("tr[data-key-id=\"{id}\"]");
    let button = format!("{row} button.action-delete");
    h.css(&button).await.click().await.unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    let warning = h.text("#confirm-warning").await;
    assert!(
        warning.contains("All integrations using this key will stop working immediately"),
        "{warning}"
    );
    assert!(
        warning.contains("create the replacement key first"),
        "{warning}"
    );
    assert_eq!(
        h.text("#confirm-title").await,
        "Revoke and delete “CI deploy”?"
    );
    assert_eq!(h.text("#confirm-ok").await, "Revoke and Delete");
    assert!(h.css("#roll-instead").await.is_displayed().await.unwrap());
    assert_eq!(
        h.js("return Array.from(document.querySelectorAll('#roll-overlap option')).map(o => o.textContent);")
            .await,
        json!(["1 hour", "1 day", "7 days"])
    );
    // Focus starts on the safe choice.
    assert_eq!(
        h.js("return document.activeElement.id;").await,
        json!("confirm-cancel")
    );
    h.screenshot("dialog.png").await;

    // Escape closes the dialog and focus returns to the button that opened it.
    h.browser
        .active_element()
        .await
        .unwrap()
        .send_keys(&Key::Escape)
        .await
        .unwrap();
    h.wait_js("!document.getElementById('confirm-dialog').open")
        .await;
    let sel = serde_json::to_string(&button).unwrap();
    h.wait_js(&format!(
        "document.activeElement === document.querySelector({sel})"
    ))
    .await;
    assert_eq!(
        h.metrics_status(&token).await,
        StatusCode::OK,
        "cancel changed nothing"
    );

    // Again, and confirm.
    h.css(&button).await.click().await.unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js(&format!(
        "!document.getElementById('confirm-dialog').open && \
         document.querySelector('{}') === null",
        row.replace('\'', "\\'")
    ))
    .await;
    // The very next request with the token is refused.
    assert_eq!(h.metrics_status(&token).await, StatusCode::UNAUTHORIZED);
    let r = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The other key is untouched.
    assert_eq!(h.count(&format!("tr[data-key-id=\"{keep_id}\"]")).await, 1);
    assert_eq!(h.metrics_status(&keep_token).await, StatusCode::OK);
    let status = h.text("#status").await;
    assert!(
        status.contains("deleted") || status.is_empty(),
        "{status:?}"
    );
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// "Revoke": the row stays, marked Revoked, and the token is refused.
#[tokio::test]
async fn revoke_keeps_the_row_as_revoked() {
    let Some(h) = Harness::start("revoke").await else {
        return;
    };
    let (id, token) = h.create_key("Nightly export").await;
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK);
    h.open_page().await;
    assert_eq!(h.row_status(&id).await, "Active");

    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-revoke"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    assert_eq!(h.text("#confirm-ok").await, "Revoke");
    assert!(
        h.text("#confirm-warning")
            .await
            .contains("stop working immediately")
    );
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js(&format!(
        "(document.querySelector('tr[data-key-id=\"{id}\"] .badge') || {{}}).textContent === 'Revoked'"
    ))
    .await;
    assert_eq!(h.metrics_status(&token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(h.count("#key-rows tr").await, 1, "the row stays");
    // A revoked row offers no Revoke any more, only Delete.
    assert_eq!(
        h.count(&format!("tr[data-key-id=\"{id}\"] button.action-revoke"))
            .await,
        0
    );
    assert_eq!(
        h.text(&format!("tr[data-key-id=\"{id}\"] button.action-delete"))
            .await,
        "Delete"
    );
    let r = h
        .call(
            Method::GET,
            &format!("/api/keys/{id}"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(r.json["status"], "revoked");
    assert_eq!(
        h.text(&format!("tr[data-key-id=\"{id}\"] .reason")).await,
        "Revoked by a manager"
    );
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// "Roll instead" from the dialog: a replacement is shown once and works; the old key keeps
/// working through the chosen overlap and is listed as expiring.
#[tokio::test]
async fn roll_instead_keeps_the_old_key_for_the_overlap() {
    let Some(h) = Harness::start("roll_instead").await else {
        return;
    };
    let (id, token) = h.create_key("SCIM connector").await;
    h.open_page().await;
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-delete"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    h.css("#roll-overlap")
        .await
        .select_by_value("3600")
        .await
        .unwrap();
    let before = now_unix();
    h.css("#roll-instead").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('confirm-dialog').open && \
         !document.getElementById('new-key-panel').hidden && \
         document.querySelectorAll('#key-rows tr').length === 2",
    )
    .await;
    let after = now_unix();
    let new_token = h.value("#new-key-token").await;
    assert_ne!(new_token, token);
    assert_eq!(h.metrics_status(&new_token).await, StatusCode::OK);
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK, "overlap");
    let old_expiry: u64 = h
        .css(&format!("tr[data-key-id=\"{id}\"] .col-expires time"))
        .await
        .attr("data-unix")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!((before + 3600..=after + 3600).contains(&old_expiry));
    // Under a day the status counts hours.
    assert_eq!(h.row_status(&id).await, "Expires in 1 hour");
    assert_lineage(&h, &id).await;
    h.finish().await;
}

/// After a roll the two rows (same name) say which replaced which, by the other's hint, and
/// the replaced key offers no second roll.
async fn assert_lineage(h: &Harness, old: &str) {
    let keys = h
        .call(Method::GET, "/api/keys", Some(&h.manager.clone()), None)
        .await
        .json;
    let keys = keys.as_array().unwrap();
    let old_key = keys.iter().find(|k| k["id"] == old).unwrap();
    let new_id = old_key["replaced_by"]
        .as_str()
        .expect("replaced_by")
        .to_owned();
    let new_key = keys.iter().find(|k| k["id"] == new_id.as_str()).unwrap();
    assert_eq!(new_key["replaces"], old);
    let hint = |k: &Value| k["hint"].as_str().unwrap().to_owned();
    assert_eq!(
        h.text(&format!("tr[data-key-id=\"{old}\"] .lineage")).await,
        format!("Replaced by {}", hint(new_key))
    );
    assert_eq!(
        h.text(&format!("tr[data-key-id=\"{new_id}\"] .lineage"))
            .await,
        format!("Replaces {}", hint(old_key))
    );
    assert_eq!(
        h.count(&format!("tr[data-key-id=\"{old}\"] button.action-roll"))
            .await,
        0
    );
    assert_eq!(
        h.count(&format!("tr[data-key-id=\"{new_id}\"] button.action-roll"))
            .await,
        1
    );
}

/// Roll is an action of its own on each active row: its dialog chooses the overlap and rolls,
/// without going through delete.
#[tokio::test]
async fn roll_is_an_action_of_each_active_row() {
    let Some(h) = Harness::start("roll_action").await else {
        return;
    };
    let (id, token) = h.create_key("Grafana").await;
    let (revoked, _) = h.create_key("Old exporter").await;
    let r = h
        .call(
            Method::POST,
            &format!("/api/keys/{revoked}/revoke"),
            Some(&h.manager.clone()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    h.open_page().await;
    assert_eq!(
        h.count(&format!("tr[data-key-id=\"{revoked}\"] button.action-roll"))
            .await,
        0,
        "a revoked key cannot be rolled"
    );
    h.css(&format!("tr[data-key-id=\"{id}\"] button.action-roll"))
        .await
        .click()
        .await
        .unwrap();
    h.wait_js("document.getElementById('confirm-dialog').open")
        .await;
    assert_eq!(h.text("#confirm-title").await, "Roll “Grafana”?");
    assert_eq!(h.text("#confirm-ok").await, "Roll");
    assert!(h.css("#roll-overlap").await.is_displayed().await.unwrap());
    assert!(!h.css("#roll-instead").await.is_displayed().await.unwrap());
    h.css("#roll-overlap")
        .await
        .select_by_value("604800")
        .await
        .unwrap();
    h.css("#confirm-ok").await.click().await.unwrap();
    h.wait_js(
        "!document.getElementById('confirm-dialog').open && \
         !document.getElementById('new-key-panel').hidden && \
         document.querySelectorAll('#key-rows tr').length === 3",
    )
    .await;
    let new_token = h.value("#new-key-token").await;
    assert_eq!(h.metrics_status(&new_token).await, StatusCode::OK);
    assert_eq!(h.metrics_status(&token).await, StatusCode::OK, "overlap");
    assert_eq!(h.row_status(&id).await, "Expires in 7 days");
    assert_lineage(&h, &id).await;
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// Revoking the old half of a roll (its replacement is made: the usual next step) offers no
/// "Roll instead": a key is rolled once, so that action could only fail.
#[tokio::test]
async fn revoking_a_rolled_key_offers_no_second_roll() {
    let Some(h) = Harness::start("revoke-rolled").await else {
        return;
    };
    let (id, _) = h.create_key("Rolled").await;
    let r = h
        .call(
            Method::POST,
            &format!("/api/keys/{id}/roll"),
            Some(&h.manager.clone()),
            Some(json!({"overlap_seconds": 3600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json);
    h.open_page().await;
    for action in ["action-revoke", "action-delete"] {
        h.css(&format!("tr[data-key-id=\"{id}\"] button.{action}"))
            .await
            .click()
            .await
            .unwrap();
        h.wait_js("document.getElementById('confirm-dialog').open")
            .await;
        assert_eq!(
            h.js("return document.getElementById('roll-section').hidden;")
                .await,
            Value::Bool(true),
            "{action}"
        );
        h.css("#confirm-cancel").await.click().await.unwrap();
        h.wait_js("!document.getElementById('confirm-dialog').open")
            .await;
    }
    h.finish().await;
}
