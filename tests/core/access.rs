//! Who may act on a key, and revocations and deletions that take effect on the very next verify.

use super::*;

#[tokio::test]
async fn a_member_is_denied_everything_existing_or_not() {
    let s = setup();
    let (_, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let bob = bob_member();
    let m = &s.manager;
    let unknown = KeyId::parse("00000000000").unwrap();
    for id in [info.id, unknown] {
        assert!(matches!(
            m.get(&bob, &id).await,
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            m.revoke(&bob, &id).await,
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            m.delete(&bob, &id).await,
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            m.reveal(&bob, &id).await,
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            m.roll(&bob, &id, Duration::hours(1)).await,
            Err(Error::PermissionDenied)
        ));
    }
    assert!(matches!(
        m.generate(&bob, prom("x")).await,
        Err(Error::PermissionDenied)
    ));
    assert!(matches!(m.list(&bob).await, Err(Error::PermissionDenied)));
    assert!(matches!(
        m.expiring_within(&bob, Duration::days(1)).await,
        Err(Error::PermissionDenied)
    ));
    // Nothing changed.
    assert_eq!(
        m.get(&alice(), &info.id).await.unwrap().status,
        KeyStatus::Active
    );
}

#[tokio::test]
async fn another_orgs_manager_gets_not_found_and_sees_nothing() {
    let s = setup();
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let mallory = mallory_other_org();
    let m = &s.manager;
    assert!(matches!(
        m.get(&mallory, &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        m.revoke(&mallory, &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        m.delete(&mallory, &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        m.roll(&mallory, &info.id, Duration::ZERO).await,
        Err(Error::NotFound)
    ));
    assert!(m.list(&mallory).await.unwrap().is_empty());
    assert!(
        m.expiring_within(&mallory, Duration::days(365))
            .await
            .unwrap()
            .is_empty()
    );
    // The key still works and is untouched.
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(m.list(&alice()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn revoke_takes_effect_on_the_very_next_verify_even_when_cached() {
    let s = setup();
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    for _ in 0..3 {
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    assert_eq!(
        s.manager.cached_records(),
        1,
        "the key is served from the cache"
    );
    let revoked = s.manager.revoke(&alice(), &info.id).await.unwrap();
    assert_eq!(revoked.status, KeyStatus::Revoked);
    assert!(revoked.revoked_at.is_some());
    assert!(matches!(
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));
    // Still listed, as revoked; revoking again changes nothing.
    let again = s.manager.revoke(&alice(), &info.id).await.unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);
    let listed = s.manager.list(&alice()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, KeyStatus::Revoked);
}

#[tokio::test]
async fn delete_takes_effect_on_the_very_next_verify_and_the_key_disappears() {
    let s = setup();
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    s.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    s.manager.delete(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::InvalidKey)
    ));
    assert!(s.manager.list(&alice()).await.unwrap().is_empty());
    assert!(matches!(
        s.manager.get(&alice(), &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        s.manager.delete(&alice(), &info.id).await,
        Err(Error::NotFound)
    ));
}

#[tokio::test]
async fn a_second_manager_over_a_shared_memory_store_sees_revocation_at_once() {
    let store = MemoryStore::new();
    let a = setup_with(store.clone(), Policy::default());
    let b = setup_with(store, Policy::default());
    let (key, info) = a.manager.generate(&alice(), prom("k")).await.unwrap();
    b.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(b.manager.cached_records(), 1);
    a.manager.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        b.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn any_store_and_arc_store_work_with_the_manager() {
    let s = setup_with(AnyStore::new(MemoryStore::new()), Policy::default());
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    s.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    s.manager.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        s.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));

    let shared = std::sync::Arc::new(MemoryStore::new());
    let s = setup_with(shared.clone(), Policy::default());
    let (key, _) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    assert_eq!(shared.len(), 1);
    s.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
}
