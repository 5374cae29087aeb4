//! Revocation reasons, idle keys and the expiry banner.

use super::*;

/// Every reason a key stopped working is shown on its row (manual, leaked with where it was
/// found, unused, departed user, rolled), a working key says how long it has been unused and
/// when the sweep will revoke it, and a banner lists the keys expiring within the policy's
/// first warning window. The keys are made in the past with a manual clock, which is then set
/// to now (the page reads the browser's clock).
#[tokio::test]
async fn revocation_reasons_idle_keys_and_the_expiry_banner() {
    use api_keys::time::{Duration as TimeDuration, OffsetDateTime};
    use api_keys::{Actor, Expiry, GenerateRequest, ManualClock, OrgId, Scope, UserId};

    let now = OffsetDateTime::from_unix_timestamp(now_unix() as i64).unwrap();
    let clock = ManualClock::new(now - TimeDuration::days(100));
    let policy = Policy::default().revoke_unused_after(TimeDuration::days(30));
    let state = app::AppState::with_integrations(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        app::Integrations {
            policy,
            clock: Some(std::sync::Arc::new(clock.clone())),
            ..app::Integrations::default()
        },
    )
    .expect("app state");
    let m = &state.manager;
    let alice = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    let carol = Actor::manager(OrgId::new("acme"), UserId::new("carol"));
    let make = |actor: &Actor, name: &str, days: u16| {
        let req = GenerateRequest::new(name)
            .scope(Scope::Prometheus)
            .expiry(Expiry::Days(days));
        let (m, actor) = (m.clone(), actor.clone());
        async move {
            let (key, info) = m.generate(&actor, req).await.unwrap();
            (info.id.to_string(), key.expose_secret().to_string())
        }
    };
    // 100 days ago: a key nobody will use; the sweep 60 days later warns, the next revokes.
    let (stale, _) = make(&alice, "Stale exporter", 365).await;
    m.sweep().await.unwrap();
    clock.set(now - TimeDuration::days(40));
    m.sweep().await.unwrap();
    // 40 days ago: the rest.
    let (idle, _) = make(&alice, "Idle integration", 365).await;
    let (expiring, _) = make(&alice, "Expiring soon", 60).await;
    let (leaked, leaked_token) = make(&alice, "Leaked key", 365).await;
    let (manual, _) = make(&alice, "Manual revoke", 365).await;
    let (departed, _) = make(&carol, "Carol's key", 365).await;
    let (rolled, _) = make(&alice, "Rolled key", 365).await;
    // Now.
    clock.set(now);
    let source = "https://github.com/acme/app/blob/main/.env";
    assert_eq!(
        m.revoke_leaked(&leaked_token, source).await.unwrap(),
        api_keys::LeakVerdict::TruePositive
    );
    m.revoke(&alice, &api_keys::KeyId::parse(&manual).unwrap())
        .await
        .unwrap();
    assert_eq!(
        m.revoke_created_by(&alice, &UserId::new("carol"))
            .await
            .unwrap(),
        1
    );
    let report = m.sweep().await.unwrap();
    assert_eq!(report.revoked_unused, 1, "{report:?}");
    m.roll(
        &alice,
        &api_keys::KeyId::parse(&rolled).unwrap(),
        TimeDuration::ZERO,
    )
    .await
    .unwrap();

    let Some(h) = Harness::start_with("revocation_reasons", state).await else {
        return;
    };
    h.open_page().await;
    let reason = |id: &str| format!("tr[data-key-id=\"{id}\"] .reason");
    assert_eq!(h.text(&reason(&manual)).await, "Revoked by a manager");
    assert_eq!(
        h.text(&reason(&leaked)).await,
        format!("Leaked: found at {source}")
    );
    assert_eq!(
        h.text(&reason(&departed)).await,
        "Revoked: its creator left the organization"
    );
    assert_eq!(
        h.text(&reason(&stale)).await,
        "Revoked: unused for too long"
    );
    assert_eq!(h.text(&reason(&rolled)).await, "Replaced by a roll");
    assert_eq!(h.row_status(&rolled).await, "Expired");
    // Working keys carry no reason, and say how long they have been unused.
    assert_eq!(h.count(&reason(&idle)).await, 0);
    assert_eq!(
        h.text(&format!("tr[data-key-id=\"{idle}\"] .idle")).await,
        "unused for 40 days"
    );
    let notice = h
        .text(&format!("tr[data-key-id=\"{idle}\"] .unused-notice"))
        .await;
    assert_eq!(
        notice,
        format!(
            "Will be revoked as unused (warned {})",
            utc_date(now.unix_timestamp() as u64)
        )
    );
    assert_eq!(
        h.count(&format!("tr[data-key-id=\"{manual}\"] .idle"))
            .await,
        0,
        "a revoked key is not called unused"
    );
    // The banner: the policy's first window is 30 days; only "Expiring soon" (20 days left)
    // is in it.
    h.wait_js("!document.getElementById('expiry-banner').hidden")
        .await;
    assert_eq!(
        h.text("#expiry-banner-title").await,
        "1 key expires within 30 days. Roll it before the integrations using it stop working:"
    );
    assert_eq!(h.count("#expiry-banner-keys li").await, 1);
    let item = h
        .text(&format!(
            "#expiry-banner-keys li[data-key-id=\"{expiring}\"]"
        ))
        .await;
    assert!(
        item.starts_with("“Expiring soon” (") && item.contains(") expires in 20 days, on "),
        "{item}"
    );
    h.screenshot("revocation-reasons.png").await;
    assert_eq!(h.csp_violations().await, 0);
    h.finish().await;
}

/// Without keys inside the warning window there is no banner.
#[tokio::test]
async fn no_expiry_banner_without_keys_about_to_expire() {
    let Some(h) = Harness::start("no_expiry_banner").await else {
        return;
    };
    h.create_key("Ninety days").await;
    h.open_page().await;
    assert_eq!(h.count("#key-rows tr").await, 1);
    assert_eq!(
        h.js("return document.getElementById('expiry-banner').hidden;")
            .await,
        Value::Bool(true)
    );
    h.finish().await;
}
