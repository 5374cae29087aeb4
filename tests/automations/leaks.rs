//! Leaked-token reports: genuine tokens revoke their keys, everything else gets the same answer, batches are bounded.

use super::*;

// ---------------------------------------------------------------- revoke_leaked

#[tokio::test]
async fn a_genuine_leaked_token_revokes_its_key_with_the_source() {
    let n = node(Policy::default());
    let (key, _) = n.manager.generate(&alice(), req("ci")).await.unwrap();
    let source = "https://github.com/acme/app/blob/main/.env";
    let verdict = n
        .manager
        .revoke_leaked(key.expose_secret(), source)
        .await
        .unwrap();
    assert_eq!(verdict, LeakVerdict::TruePositive);
    let info = n.manager.get(&alice(), key.id()).await.unwrap();
    assert_eq!(info.status, KeyStatus::Revoked);
    assert_eq!(
        info.revocation,
        Some(RevocationReason::Leaked {
            source: source.into()
        })
    );
    assert!(matches!(
        n.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));
    assert_eq!(
        audited(&n.audit, &AuditAction::Leaked { revoked: true }),
        vec![Some(*key.id())]
    );
    let notes = n.notes.all();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        notes[0].event,
        AutomationEvent::Leaked {
            source: source.into()
        }
    );
    assert_eq!(notes[0].key.id, *key.id());

    // Reported again (idempotent): still a true positive, the first source stays, no second
    // notification, one more audit event saying it was already revoked.
    let again = n
        .manager
        .revoke_leaked(key.expose_secret(), "https://elsewhere.example/paste")
        .await
        .unwrap();
    assert_eq!(again, LeakVerdict::TruePositive);
    let info = n.manager.get(&alice(), key.id()).await.unwrap();
    assert_eq!(
        info.revocation,
        Some(RevocationReason::Leaked {
            source: source.into()
        })
    );
    assert_eq!(n.notes.all().len(), 1);
    assert_eq!(
        audited(&n.audit, &AuditAction::Leaked { revoked: false }),
        vec![Some(*key.id())]
    );
}

#[tokio::test]
async fn revoked_and_expired_keys_are_true_positives_too() {
    let n = node(Policy::default());
    let (revoked, _) = n.manager.generate(&alice(), req("r")).await.unwrap();
    n.manager.revoke(&alice(), revoked.id()).await.unwrap();
    let (expired, _) = n
        .manager
        .generate(&alice(), req("e").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    n.clock.advance(days(8));

    let v = n
        .manager
        .revoke_leaked(revoked.expose_secret(), "https://x.example/1")
        .await
        .unwrap();
    assert_eq!(v, LeakVerdict::TruePositive);
    // Already revoked: its first reason stays.
    let info = n.manager.get(&alice(), revoked.id()).await.unwrap();
    assert_eq!(info.revocation, Some(RevocationReason::Manual));

    let v = n
        .manager
        .revoke_leaked(expired.expose_secret(), "https://x.example/2")
        .await
        .unwrap();
    assert_eq!(v, LeakVerdict::TruePositive);
    let info = n.manager.get(&alice(), expired.id()).await.unwrap();
    assert_eq!(info.status, KeyStatus::Revoked);
    assert_eq!(
        info.revocation,
        Some(RevocationReason::Leaked {
            source: "https://x.example/2".into()
        })
    );
}

#[tokio::test]
async fn every_non_genuine_token_gets_the_same_answer_and_revokes_nothing() {
    let store = MemoryStore::new();
    let clock = ManualClock::new(start());
    let n = node_with(store.clone(), Policy::default(), &clock);
    let other = node_prefixed(store, Policy::default(), &clock, "sap");
    let (key, _) = n.manager.generate(&alice(), req("ci")).await.unwrap();
    let (foreign, _) = other
        .manager
        .generate(&alice(), req("other"))
        .await
        .unwrap();
    let token = key.expose_secret();
    let unknown = with_id(token, "0000000000A");
    let candidates = [
        wrong_secret(token),
        unknown,
        "sak_not-a-token".to_string(),
        String::new(),
        format!("{token}x"),
        token.to_uppercase(),
        foreign.expose_secret().to_string(),
    ];
    for t in &candidates {
        let v = n.manager.revoke_leaked(t, "https://x.example").await;
        assert!(matches!(v, Ok(LeakVerdict::FalsePositive)), "{v:?}");
    }
    let pairs: Vec<(&str, &str)> = candidates.iter().map(|t| (t.as_str(), "u")).collect();
    let batch = n.manager.revoke_leaked_batch(&pairs).await.unwrap();
    assert_eq!(batch, vec![LeakVerdict::FalsePositive; candidates.len()]);
    // Nothing was revoked, nothing announced.
    assert!(n.manager.verify(token, &Scope::Prometheus).await.is_ok());
    assert!(
        other
            .manager
            .verify(foreign.expose_secret(), &Scope::Prometheus)
            .await
            .is_ok()
    );
    assert!(n.notes.all().is_empty());
    assert!(audited(&n.audit, &AuditAction::Leaked { revoked: true }).is_empty());
}

#[tokio::test]
async fn leak_batches_are_bounded_and_sources_checked() {
    let n = node(Policy::default());
    let (a, _) = n.manager.generate(&alice(), req("a")).await.unwrap();
    let (b, _) = n.manager.generate(&alice(), req("b")).await.unwrap();
    let too_many = vec![(a.expose_secret(), "u"); api_keys::MAX_LEAK_BATCH + 1];
    assert!(matches!(
        n.manager.revoke_leaked_batch(&too_many).await,
        Err(Error::Policy(_))
    ));
    let long = "u".repeat(api_keys::MAX_LEAK_SOURCE_BYTES + 1);
    assert!(matches!(
        n.manager.revoke_leaked(a.expose_secret(), &long).await,
        Err(Error::Policy(_))
    ));
    // A source is shown to managers: one that would display as another URL is refused.
    for reordering in ["https://x/\u{202e}gpj.exe", "https://x/\u{2067}a"] {
        assert!(matches!(
            n.manager.revoke_leaked(a.expose_secret(), reordering).await,
            Err(Error::Policy(_))
        ));
    }
    // One bad source refuses the whole batch before anything is revoked.
    let bad = n
        .manager
        .revoke_leaked_batch(&[(a.expose_secret(), "ok"), (b.expose_secret(), &long)])
        .await;
    assert!(matches!(bad, Err(Error::Policy(_))));
    assert!(
        n.manager
            .verify(a.expose_secret(), &Scope::Prometheus)
            .await
            .is_ok()
    );
    // The error never echoes the token.
    let err = bad.unwrap_err();
    let msg = format!("{err:?} {err}");
    assert!(!msg.contains(a.expose_secret()));

    let max = vec![(a.expose_secret(), "u"); api_keys::MAX_LEAK_BATCH];
    let verdicts = n.manager.revoke_leaked_batch(&max).await.unwrap();
    assert_eq!(verdicts.len(), api_keys::MAX_LEAK_BATCH);
    assert!(verdicts.iter().all(|v| *v == LeakVerdict::TruePositive));
    let wrong = wrong_secret(b.expose_secret());
    let mixed = n
        .manager
        .revoke_leaked_batch(&[(b.expose_secret(), "u1"), (&wrong, "u2")])
        .await
        .unwrap();
    assert_eq!(
        mixed,
        vec![LeakVerdict::TruePositive, LeakVerdict::FalsePositive]
    );
    // One notification per key this call revoked.
    assert_eq!(n.notes.names(), vec!["leaked", "leaked"]);
}

// ------------------------------------------------ records this node cannot judge

/// A token whose record is sealed under a master-key version this node's keyring lacks (a
/// node not yet given the new key mid-rotation) cannot be judged here: it is not a false
/// positive — the key still verifies on the nodes that have the key — so the answer says
/// `Unverified`, nothing is revoked, the failure is audited, and a batch goes on past it.
#[tokio::test]
async fn a_token_sealed_under_a_missing_master_key_is_unverified_not_a_false_positive() {
    let store = MemoryStore::new();
    let clock = ManualClock::new(start());
    let n = node_with(store.clone(), Policy::default(), &clock);
    let rotated = KeyManager::builder(
        store.clone(),
        api_keys::Keyring::new(2, api_keys::MasterKey::from_bytes([0x5a; 16]))
            .with_previous(1, api_keys::MasterKey::from_bytes(common::MASTER)),
    )
    .clock(clock.clone())
    .build()
    .unwrap();
    let (sealed_v2, _) = rotated.generate(&alice(), req("v2")).await.unwrap();
    let (before, _) = n.manager.generate(&alice(), req("before")).await.unwrap();
    let (after, _) = n.manager.generate(&alice(), req("after")).await.unwrap();
    let stored = store.get(sealed_v2.id()).await.unwrap().unwrap();

    let v = n
        .manager
        .revoke_leaked(sealed_v2.expose_secret(), "https://x.example/1")
        .await
        .unwrap();
    assert_eq!(v, LeakVerdict::Unverified);
    let batch = n
        .manager
        .revoke_leaked_batch(&[
            (before.expose_secret(), "u1"),
            (sealed_v2.expose_secret(), "u2"),
            (after.expose_secret(), "u3"),
        ])
        .await
        .unwrap();
    assert_eq!(
        batch,
        vec![
            LeakVerdict::TruePositive,
            LeakVerdict::Unverified,
            LeakVerdict::TruePositive
        ]
    );
    // Nothing was done to it: it still works where the keyring has its key.
    assert_eq!(store.get(sealed_v2.id()).await.unwrap().unwrap(), stored);
    rotated
        .verify(sealed_v2.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(
        audited(&n.audit, &AuditAction::IntegrityFailure),
        vec![Some(*sealed_v2.id()); 2]
    );
    assert_eq!(n.notes.names(), vec!["leaked", "leaked"]);
}

/// A tampered record (a deciding field moved without the master key, or a row that cannot be
/// decoded) is not judged either: `Unverified`, nothing revoked or re-sealed, the batch goes
/// on past it.
#[tokio::test]
async fn a_token_whose_record_was_tampered_with_is_unverified_not_a_false_positive() {
    let store = MemoryStore::new();
    let n = node_with(store.clone(), Policy::default(), &ManualClock::new(start()));
    let (moved, _) = n.manager.generate(&alice(), req("moved")).await.unwrap();
    let (gone, _) = n.manager.generate(&alice(), req("gone")).await.unwrap();
    let (fine, _) = n.manager.generate(&alice(), req("fine")).await.unwrap();
    let mut tampered = store.get(moved.id()).await.unwrap().unwrap();
    tampered.expires_at = Some(start() + days(3650));
    store.overwrite_unchecked(tampered.clone());
    let undecodable = api_keys::KeyRecord::undecodable(*gone.id(), OrgId::new("acme"));
    store.overwrite_unchecked(undecodable.clone());

    for token in [moved.expose_secret(), gone.expose_secret()] {
        let v = n.manager.revoke_leaked(token, "https://x.example").await;
        assert!(matches!(v, Ok(LeakVerdict::Unverified)), "{v:?}");
    }
    let batch = n
        .manager
        .revoke_leaked_batch(&[
            (moved.expose_secret(), "u1"),
            (gone.expose_secret(), "u2"),
            (fine.expose_secret(), "u3"),
        ])
        .await
        .unwrap();
    assert_eq!(
        batch,
        vec![
            LeakVerdict::Unverified,
            LeakVerdict::Unverified,
            LeakVerdict::TruePositive
        ]
    );
    assert_eq!(store.get(moved.id()).await.unwrap().unwrap(), tampered);
    assert_eq!(store.get(gone.id()).await.unwrap().unwrap(), undecodable);
    assert_eq!(
        audited(&n.audit, &AuditAction::IntegrityFailure).len(),
        4,
        "each unjudged report is audited"
    );
    assert_eq!(n.notes.names(), vec!["leaked"]);
}
