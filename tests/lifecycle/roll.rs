//! Rolling keys: the overlap, the policy, the active-key limit, and rolls whose replies or writes are lost.

use super::*;

#[tokio::test]
async fn roll_keeps_both_keys_during_the_overlap_and_only_the_new_one_after() {
    let s = setup();
    let (old, old_info) = s
        .manager
        .generate(
            &alice(),
            prom("scraper").scope(Scope::Scim).expiry(Expiry::Days(30)),
        )
        .await
        .unwrap();
    s.clock.advance(Duration::days(1));
    let (new, new_info) = s
        .manager
        .roll(&alice(), &old_info.id, Duration::hours(1))
        .await
        .unwrap();
    assert_ne!(new_info.id, old_info.id);
    assert_eq!(new_info.name, "scraper");
    assert_eq!(new_info.scopes, old_info.scopes);
    let now = start() + Duration::days(1);
    assert_eq!(
        new_info.expires_at,
        Some(now + Duration::days(90)),
        "fresh expiry from the policy default"
    );
    let old_now = s.manager.get(&alice(), &old_info.id).await.unwrap();
    assert_eq!(old_now.expires_at, Some(now + Duration::hours(1)));

    works(&s.manager, old.expose_secret()).await.unwrap();
    works(&s.manager, new.expose_secret()).await.unwrap();
    s.clock.advance(Duration::minutes(59));
    works(&s.manager, old.expose_secret()).await.unwrap();
    s.clock.advance(Duration::minutes(1));
    assert!(matches!(
        works(&s.manager, old.expose_secret()).await,
        Err(Error::Expired)
    ));
    works(&s.manager, new.expose_secret()).await.unwrap();
    let actions: Vec<_> = s.audit.events().into_iter().map(|e| e.action).collect();
    assert!(actions.contains(&AuditAction::Rolled {
        replacement: new_info.id
    }));
}

#[tokio::test]
async fn roll_never_extends_the_old_key() {
    let s = setup();
    let soon = start() + Duration::minutes(10);
    let (old, info) = s
        .manager
        .generate(&alice(), prom("k").expiry(Expiry::At(soon)))
        .await
        .unwrap();
    let (new, _) = s
        .manager
        .roll(&alice(), &info.id, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        s.manager.get(&alice(), &info.id).await.unwrap().expires_at,
        Some(soon)
    );
    s.clock.advance(Duration::minutes(10));
    assert!(matches!(
        works(&s.manager, old.expose_secret()).await,
        Err(Error::Expired)
    ));
    works(&s.manager, new.expose_secret()).await.unwrap();
}

#[tokio::test]
async fn roll_with_zero_overlap_stops_the_old_key_now() {
    let s = setup();
    let (old, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    works(&s.manager, old.expose_secret()).await.unwrap(); // cached
    let (new, _) = s
        .manager
        .roll(&alice(), &info.id, Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(
        works(&s.manager, old.expose_secret()).await,
        Err(Error::Expired)
    ));
    works(&s.manager, new.expose_secret()).await.unwrap();
    // A revoked key cannot be rolled, and rolling an expired one is refused too.
    s.manager.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        s.manager.roll(&alice(), &info.id, Duration::hours(1)).await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn the_new_key_never_exceeds_the_policy() {
    let policy = Policy::default()
        .allowed_days(&[7, 30])
        .default_days(30)
        .max_days(30);
    let s = setup_with(MemoryStore::new(), policy);
    let (_, info) = s
        .manager
        .generate(&alice(), prom("k").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    let (_, new_info) = s
        .manager
        .roll(&alice(), &info.id, Duration::days(365))
        .await
        .unwrap();
    assert_eq!(new_info.expires_at, Some(start() + Duration::days(30)));
    assert_eq!(
        s.manager.get(&alice(), &info.id).await.unwrap().expires_at,
        Some(start() + Duration::days(7)),
        "a long overlap does not extend the old key"
    );
}

#[tokio::test]
async fn roll_truncates_the_cutoff_to_whole_seconds() {
    let s = setup();
    let (_, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    s.manager
        .roll(&alice(), &info.id, Duration::milliseconds(1500))
        .await
        .unwrap();
    let rec = s.manager.store().get(&info.id).await.unwrap().unwrap();
    assert_eq!(rec.expires_at, Some(start() + Duration::seconds(1)));
}

#[tokio::test]
async fn a_key_is_rolled_once_and_rolls_cannot_bypass_max_active_keys() {
    let s = setup_with(MemoryStore::new(), Policy::default().max_active_keys(3));
    let (_, first) = s.manager.generate(&alice(), prom("a")).await.unwrap();
    // Rolling the same still-active key again is refused, naming its replacement.
    let (_, second) = s
        .manager
        .roll(&alice(), &first.id, Duration::hours(1))
        .await
        .unwrap();
    for _ in 0..5 {
        match s
            .manager
            .roll(&alice(), &first.id, Duration::hours(1))
            .await
        {
            Err(Error::Policy(m)) => assert!(m.contains(&second.id.to_string()), "{m}"),
            other => panic!("expected Error::Policy, got {other:?}"),
        }
    }
    // Rolling along the chain inside the overlaps: the limit holds (3 + the one roll slot).
    let mut last = second.id;
    let mut rolls = 1;
    while let Ok((_, next)) = s.manager.roll(&alice(), &last, Duration::hours(1)).await {
        last = next.id;
        rolls += 1;
        assert!(rolls < 10, "rolls never stopped");
    }
    let working = s
        .manager
        .list(&alice())
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.status == KeyStatus::Active)
        .count();
    assert!(working <= 3 + 1, "{working} keys work at once");
    // Once the overlaps are over, only the last key works and rolling works again.
    s.clock.advance(Duration::hours(2));
    s.manager
        .roll(&alice(), &last, Duration::hours(1))
        .await
        .unwrap();
}

/// The rolled key's slot passes to its replacement: an organization at its
/// `max_active_keys` can still roll a key (the documented way to replace a leaked or expiring
/// key must not need a free slot), and the old key keeps working through the overlap.
#[tokio::test]
async fn a_roll_at_the_active_key_limit_works() {
    let s = setup_with(MemoryStore::new(), Policy::default().max_active_keys(2));
    let (old, info) = s.manager.generate(&alice(), prom("a")).await.unwrap();
    s.manager.generate(&alice(), prom("b")).await.unwrap();
    // At the limit: a new key is refused...
    assert!(matches!(
        s.manager.generate(&alice(), prom("c")).await,
        Err(Error::Policy(_))
    ));
    // ...but a roll is not.
    let (new, _) = s
        .manager
        .roll(&alice(), &info.id, Duration::hours(1))
        .await
        .unwrap();
    works(&s.manager, old.expose_secret()).await.unwrap();
    works(&s.manager, new.expose_secret()).await.unwrap();
}

#[tokio::test]
async fn a_roll_whose_reply_is_lost_keeps_the_replacement() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (old, info) = s.manager.generate(&alice(), prom("a")).await.unwrap();
    // The update that shortens the old key commits, but its reply is lost.
    store
        .lose_update_reply
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (new, new_info) = s
        .manager
        .roll(&alice(), &info.id, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(new_info.replaces, Some(info.id));
    let old_now = s.manager.get(&alice(), &info.id).await.unwrap();
    assert_eq!(old_now.replaced_by, Some(new_info.id));
    assert_eq!(old_now.expires_at, Some(start() + Duration::hours(1)));
    works(&s.manager, new.expose_secret()).await.unwrap();
    works(&s.manager, old.expose_secret()).await.unwrap();
    s.clock.advance(Duration::hours(1));
    works(&s.manager, new.expose_secret()).await.unwrap();
    assert!(works(&s.manager, old.expose_secret()).await.is_err());
}

#[tokio::test]
async fn a_roll_whose_update_really_failed_removes_the_replacement() {
    // A store whose update fails before committing: the old key keeps its expiry and the
    // replacement is deleted again.
    #[derive(Clone, Default)]
    struct FailingUpdate(MemoryStore);
    impl KeyStore for FailingUpdate {
        async fn insert(&self, r: KeyRecord) -> Result<(), StoreError> {
            self.0.insert(r).await
        }
        async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
            self.0.get(id).await
        }
        async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
            self.0.list(org).await
        }
        async fn update(&self, _: KeyRecord, _: u64) -> Result<(), StoreError> {
            Err(StoreError::backend(std::io::Error::other("disk full")))
        }
        async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
            self.0.delete(id).await
        }
        async fn scan(&self, a: Option<&KeyId>, l: usize) -> Result<Vec<KeyRecord>, StoreError> {
            self.0.scan(a, l).await
        }
        async fn touch(
            &self,
            id: &KeyId,
            at: api_keys::time::OffsetDateTime,
        ) -> Result<(), StoreError> {
            self.0.touch(id, at).await
        }
    }
    let s = setup_with(FailingUpdate::default(), Policy::default());
    let (_, info) = s.manager.generate(&alice(), prom("a")).await.unwrap();
    assert!(matches!(
        s.manager.roll(&alice(), &info.id, Duration::hours(1)).await,
        Err(Error::Store(_))
    ));
    let keys = s.manager.list(&alice()).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].expires_at, info.expires_at);
    assert_eq!(keys[0].replaced_by, None);
}

/// A key limited to 100 a minute over a `CountingStore`, and a tighter configuration for it.
async fn limited_key() -> (
    CountingStore,
    Setup<CountingStore>,
    api_keys::ApiKey,
    api_keys::KeyInfo,
    Vec<RateLimit>,
) {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let minute = std::time::Duration::from_secs(60);
    let (key, info) = s
        .manager
        .generate(
            &alice(),
            prom("a").rate_limit(RateLimit::new("burst", 100, minute)),
        )
        .await
        .unwrap();
    (
        store,
        s,
        key,
        info,
        vec![RateLimit::new("burst", 1, minute)],
    )
}

#[tokio::test]
async fn a_roll_fails_when_the_old_key_changes_before_it_is_shortened() {
    let (store, s, old, info, tighter) = limited_key().await;
    // Another manager tightens the key's limits after the roll created the replacement from
    // the key as it was, and before the roll shortens it.
    let (m, id, limits) = (s.manager.clone(), info.id, tighter.clone());
    store.after_next_insert(move || async move {
        m.set_limits(&alice(), &id, limits).await.unwrap();
    });
    assert!(matches!(
        s.manager.roll(&alice(), &info.id, Duration::hours(1)).await,
        Err(Error::Conflict)
    ));
    // No replacement with the looser limits is left; the key keeps its new limits and its
    // expiry, and still works.
    let keys = s.manager.list(&alice()).await.unwrap();
    assert_eq!(keys.len(), 1, "the replacement was deleted: {keys:?}");
    assert_eq!(keys[0].id, info.id);
    assert_eq!(keys[0].rate_limits, tighter);
    assert_eq!(keys[0].expires_at, info.expires_at);
    assert_eq!(keys[0].replaced_by, None);
    works(&s.manager, old.expose_secret()).await.unwrap();
    // Rolling again carries the new limits over.
    let (_, new_info) = s
        .manager
        .roll(&alice(), &info.id, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(new_info.rate_limits, tighter);
}

#[tokio::test]
async fn a_roll_refused_by_a_change_deletes_its_replacement_even_if_the_store_then_fails() {
    let (store, s, _, info, tighter) = limited_key().await;
    // The limits change after the replacement was created; once the roll has read the
    // changed key (and refused to shorten it), the store becomes unreachable for reads.
    let (m, id, limits, hooks) = (s.manager.clone(), info.id, tighter.clone(), store.clone());
    store.after_next_insert(move || async move {
        m.set_limits(&alice(), &id, limits).await.unwrap();
        let fail_get = hooks.fail_get.clone();
        hooks.after_next_get(move || async move {
            fail_get.store(true, Ordering::SeqCst);
        });
    });
    assert!(matches!(
        s.manager.roll(&alice(), &info.id, Duration::hours(1)).await,
        Err(Error::Conflict)
    ));
    store.fail_get.store(false, Ordering::SeqCst);
    // Nothing was written to the old key, so the replacement with the looser limits is gone.
    let keys = s.manager.list(&alice()).await.unwrap();
    assert_eq!(keys.len(), 1, "the replacement was deleted: {keys:?}");
    assert_eq!(keys[0].rate_limits, tighter);
    assert_eq!(keys[0].replaced_by, None);
}

#[tokio::test]
async fn a_roll_survives_a_sweep_marking_the_old_key_meanwhile() {
    // A sweep's notice mark changes the record (and its revision) but nothing the
    // replacement copied: the roll goes through.
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (old, info) = s
        .manager
        .generate(&alice(), prom("a").expiry(Expiry::Days(30)))
        .await
        .unwrap();
    // Six days left: the seven-day warning is due.
    s.clock.advance(Duration::days(24));
    let m = s.manager.clone();
    store.after_next_insert(move || async move {
        let report = m.sweep().await.unwrap();
        assert!(report.expiry_warnings > 0, "{report:?}");
    });
    let (new, new_info) = s
        .manager
        .roll(&alice(), &info.id, Duration::hours(1))
        .await
        .unwrap();
    let old_now = s.manager.get(&alice(), &info.id).await.unwrap();
    assert!(!old_now.notices.expiry_warned.is_empty());
    assert_eq!(old_now.replaced_by, Some(new_info.id));
    assert_eq!(
        old_now.expires_at,
        Some(start() + Duration::days(24) + Duration::hours(1))
    );
    works(&s.manager, old.expose_secret()).await.unwrap();
    works(&s.manager, new.expose_secret()).await.unwrap();
}

#[tokio::test]
async fn a_roll_whose_outcome_cannot_be_checked_keeps_the_replacement() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default().allow_reveal(true));
    let (old, info) = s.manager.generate(&alice(), prom("a")).await.unwrap();
    // The update that shortens the old key commits, its reply is lost, and the read that
    // would tell whether it committed fails too.
    store.lose_update_reply.store(true, Ordering::SeqCst);
    let fail_get = store.fail_get.clone();
    store.after_next_update(move || async move {
        fail_get.store(true, Ordering::SeqCst);
    });
    assert!(matches!(
        s.manager.roll(&alice(), &info.id, Duration::hours(1)).await,
        Err(Error::Store(_))
    ));
    store.fail_get.store(false, Ordering::SeqCst);
    // The old key stops at the cutoff, so the replacement it names must still be there.
    let old_now = s.manager.get(&alice(), &info.id).await.unwrap();
    assert_eq!(old_now.expires_at, Some(start() + Duration::hours(1)));
    let new_id = old_now.replaced_by.expect("the shortening committed");
    let new_info = s.manager.get(&alice(), &new_id).await.unwrap();
    assert_eq!(new_info.replaces, Some(info.id));
    let new = s.manager.reveal(&alice(), &new_id).await.unwrap();
    works(&s.manager, new.expose_secret()).await.unwrap();
    works(&s.manager, old.expose_secret()).await.unwrap();
    s.clock.advance(Duration::hours(1));
    works(&s.manager, new.expose_secret()).await.unwrap();
    assert!(works(&s.manager, old.expose_secret()).await.is_err());
}

/// A roll whose future is dropped after it stored the replacement and before it shortened the
/// old key (a client that went away, a timeout around the call) leaves a working replacement
/// nobody was given; rolling the key again must not leave it working beside the new one.
#[tokio::test]
async fn rolling_again_removes_the_replacement_of_a_cancelled_roll() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (_, info) = s.manager.generate(&alice(), prom("a")).await.unwrap();
    let (stored, cancel) = tokio::sync::oneshot::channel::<()>();
    let stored = std::sync::Mutex::new(Some(stored));
    store.after_next_insert(move || async move {
        stored.lock().unwrap().take().unwrap().send(()).unwrap();
        // The insert committed; its reply never comes before the caller gives up.
        std::future::pending::<()>().await;
    });
    let actor = alice();
    tokio::select! {
        r = s.manager.roll(&actor, &info.id, Duration::hours(1)) => panic!("not cancelled: {r:?}"),
        _ = cancel => {}
    }
    let stray = s
        .manager
        .list(&alice())
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .find(|i| *i != info.id);
    assert!(stray.is_some(), "the cancelled roll stored its replacement");
    let (_, new) = s
        .manager
        .roll(&alice(), &info.id, Duration::hours(1))
        .await
        .unwrap();
    let mut ids: Vec<KeyId> = s
        .manager
        .list(&alice())
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.status == KeyStatus::Active)
        .map(|k| k.id)
        .collect();
    ids.sort();
    let mut expected = vec![info.id, new.id];
    expected.sort();
    assert_eq!(
        ids, expected,
        "only the key and its replacement work; the cancelled roll's replacement is gone"
    );
    // A working key was deleted: that is audited, as the manager's who rolled.
    let deleted: Vec<_> = s
        .audit
        .events()
        .into_iter()
        .filter(|e| e.action == AuditAction::Deleted)
        .map(|e| (e.key_id, e.actor))
        .collect();
    assert_eq!(deleted, vec![(stray, Some(alice().user().clone()))]);
}
