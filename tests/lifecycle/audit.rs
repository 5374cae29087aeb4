//! Revealing keys and the audit sink: every event recorded, no token carried, lost replies still audited.

use super::*;

#[tokio::test]
async fn reveal_is_refused_by_default() {
    let s = setup();
    let (_, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    match s.manager.reveal(&alice(), &info.id).await {
        Err(Error::Policy(m)) => assert!(m.contains("allow_reveal"), "{m}"),
        other => panic!("expected Policy, got {other:?}"),
    }
    assert!(
        !s.audit
            .events()
            .iter()
            .any(|e| e.action == AuditAction::Revealed)
    );
}

#[tokio::test]
async fn reveal_returns_exactly_the_original_token_and_is_audited() {
    let s = setup_with(MemoryStore::new(), Policy::default().allow_reveal(true));
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let again = s.manager.reveal(&alice(), &info.id).await.unwrap();
    assert_eq!(again.expose_secret(), key.expose_secret());
    let revealed: Vec<AuditEvent> = s
        .audit
        .events()
        .into_iter()
        .filter(|e| e.action == AuditAction::Revealed)
        .collect();
    assert_eq!(revealed.len(), 1);
    assert_eq!(revealed[0].key_id, Some(info.id));
    assert_eq!(
        revealed[0].actor.as_ref().map(|u| u.as_str()),
        Some("alice")
    );
    assert!(matches!(
        s.manager.reveal(&mallory_other_org(), &info.id).await,
        Err(Error::NotFound)
    ));
    s.manager.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        s.manager.reveal(&alice(), &info.id).await,
        Err(Error::Revoked)
    ));
    let (_, short) = s
        .manager
        .generate(&alice(), prom("short").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    s.clock.advance(Duration::days(7));
    assert!(matches!(
        s.manager.reveal(&alice(), &short.id).await,
        Err(Error::Expired)
    ));
}

/// A sink that refuses reveal events (e.g. the audit database is down).
#[derive(Clone, Default)]
struct RefuseReveals;

impl AuditSink for RefuseReveals {
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError> {
        if event.action == AuditAction::Revealed {
            return Err("audit log unavailable".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn reveal_fails_closed_when_the_audit_event_cannot_be_recorded() {
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .policy(Policy::default().allow_reveal(true))
        .audit(RefuseReveals)
        .build()
        .unwrap();
    let (_, info) = m.generate(&alice(), prom("k")).await.unwrap();
    assert!(matches!(
        m.reveal(&alice(), &info.id).await,
        Err(Error::Audit(_))
    ));
}

#[tokio::test]
async fn the_audit_sink_receives_every_event_and_no_event_carries_a_token() {
    let s = setup_with(MemoryStore::new(), Policy::default().allow_reveal(true));
    let m = &s.manager;
    let a = alice();
    let (key, info) = m.generate(&a, prom("k")).await.unwrap();
    m.list(&a).await.unwrap();
    m.get(&a, &info.id).await.unwrap();
    m.reveal(&a, &info.id).await.unwrap();
    let (key2, info2) = m.roll(&a, &info.id, Duration::hours(1)).await.unwrap();
    let _ = m.verify("garbage", &Scope::Prometheus).await;
    let _ = m.verify(key.expose_secret(), &Scope::Scim).await;
    m.revoke(&a, &info2.id).await.unwrap();
    let _ = m.verify(key2.expose_secret(), &Scope::Prometheus).await;
    m.delete(&a, &info.id).await.unwrap();
    let _ = m.verify(key.expose_secret(), &Scope::Prometheus).await;
    m.set_keyring(v2_keyring()).unwrap();
    m.rewrap().await.unwrap();

    let events = s.audit.events();
    let names: Vec<&str> = events.iter().map(|e| e.action.name()).collect();
    for expected in [
        "generated",
        "listed",
        "viewed",
        "revealed",
        "rolled",
        "revoked",
        "deleted",
        "rewrapped",
    ] {
        assert!(names.contains(&expected), "missing {expected} in {names:?}");
    }
    let failures: Vec<FailureClass> = events
        .iter()
        .filter_map(|e| match e.action {
            AuditAction::VerificationFailed(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(
        failures,
        vec![
            FailureClass::Malformed,
            FailureClass::ScopeNotAllowed,
            FailureClass::Revoked,
            FailureClass::InvalidKey
        ]
    );
    let revoke = events
        .iter()
        .find(|e| e.action == AuditAction::Revoked)
        .unwrap();
    assert_eq!(revoke.key_id, Some(info2.id));
    assert_eq!(revoke.org, Some(OrgId::new("acme")));
    assert_eq!(revoke.actor.as_ref().map(|u| u.as_str()), Some("alice"));
    for e in &events {
        let text = format!("{e} {e:?}");
        for t in [key.expose_secret(), key2.expose_secret()] {
            assert!(!text.contains(t) && !text.contains(&t[15..59]), "{text}");
        }
    }
}

/// A wrong secret for a key this node has cached is answered from the cache, without a
/// store read; it is still a failed verification, audited with the key's id like a cold one
/// (guessing against a warm key must not be invisible to the audit sink).
#[tokio::test]
async fn a_wrong_secret_for_a_cached_key_is_audited() {
    let s = setup();
    let m = &s.manager;
    let (key, info) = m.generate(&alice(), prom("k")).await.unwrap();
    works(m, key.expose_secret()).await.unwrap();
    assert_eq!(m.cached_records(), 1);
    let guess = wrong_secret(key.expose_secret());
    for _ in 0..2 {
        assert!(matches!(works(m, &guess).await, Err(Error::InvalidKey)));
    }
    let failed = s.audit.count(info.id, |a| {
        *a == AuditAction::VerificationFailed(FailureClass::InvalidKey)
    });
    assert_eq!(failed, 2, "{:?}", s.audit.events());
}

/// Every read of an organization's keys is audited: `expiring_within` like `list`, and
/// `credits_remaining` like `get`.
#[tokio::test]
async fn expiring_within_and_credits_remaining_are_audited_like_list_and_get() {
    let s = setup();
    let (_, info) = s
        .manager
        .generate(&alice(), prom("paid").credits(api_keys::Credits::new(10)))
        .await
        .unwrap();
    let before = s.audit.events().len();
    let found = s
        .manager
        .expiring_within(&alice(), Duration::days(365))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        s.manager
            .credits_remaining(&alice(), &info.id)
            .await
            .unwrap(),
        Some(10)
    );
    let actions: Vec<_> = s.audit.events()[before..]
        .iter()
        .map(|e| (e.action.clone(), e.key_id))
        .collect();
    assert_eq!(
        actions,
        vec![
            (AuditAction::Listed, None),
            (AuditAction::Viewed, Some(info.id))
        ]
    );
}

#[tokio::test]
async fn a_revocation_whose_reply_was_lost_is_still_audited() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    // The update that revokes commits, but its reply is lost on the way back.
    store.lose_update_reply.store(true, Ordering::SeqCst);
    let first = s.manager.revoke(&alice(), &info.id).await;
    // Whatever the first call answered, the key is revoked: the manager may retry.
    if first.is_err() {
        s.manager.revoke(&alice(), &info.id).await.unwrap();
    }
    assert_eq!(
        s.manager.get(&alice(), &info.id).await.unwrap().status,
        KeyStatus::Revoked
    );
    assert!(matches!(
        works(&s.manager, key.expose_secret()).await,
        Err(Error::Revoked)
    ));
    let revoked = s.audit.count(info.id, |a| *a == AuditAction::Revoked);
    assert_eq!(revoked, 1, "the revocation took effect: it is audited once");
}

#[tokio::test]
async fn a_deletion_whose_reply_was_lost_is_still_audited() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    // The delete commits, but its reply is lost on the way back.
    store.lose_delete_reply.store(true, Ordering::SeqCst);
    let first = s.manager.delete(&alice(), &info.id).await;
    // Whatever the first call answered, the manager may retry: the key is gone.
    if first.is_err() {
        let _ = s.manager.delete(&alice(), &info.id).await;
    }
    assert!(matches!(
        s.manager.get(&alice(), &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(works(&s.manager, key.expose_secret()).await.is_err());
    let deleted = s.audit.count(info.id, |a| *a == AuditAction::Deleted);
    assert_eq!(deleted, 1, "the deletion took effect: it is audited once");
}

#[tokio::test]
async fn a_generate_whose_insert_reply_was_lost_leaves_no_unaudited_key() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    // The insert commits, but its reply is lost on the way back.
    store.lose_insert_reply.store(true, Ordering::SeqCst);
    let first = s.manager.generate(&alice(), prom("k")).await;
    let generated: Vec<Option<KeyId>> = s
        .audit
        .events()
        .into_iter()
        .filter(|e| e.action == AuditAction::Generated)
        .map(|e| e.key_id)
        .collect();
    // Every key that exists was generated on the record, and its token was handed out.
    let listed = s.manager.list(&alice()).await.unwrap();
    for k in &listed {
        assert!(
            generated.contains(&Some(k.id)),
            "key {} exists but its generation was never audited (generate said {:?})",
            k.id,
            first.as_ref().map(|(_, i)| i.id)
        );
    }
    if let Ok((key, _)) = first {
        works(&s.manager, key.expose_secret()).await.unwrap();
    }
}
