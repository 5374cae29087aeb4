//! Revoking a departed user's keys and keys left unused, with a warning first.

use super::*;

// ---------------------------------------------------------------- revoke_created_by

#[tokio::test]
async fn a_departed_users_active_keys_are_revoked_and_nothing_else() {
    let n = node(Policy::default());
    let (a1, _) = n.manager.generate(&alice(), req("a1")).await.unwrap();
    let (a2, _) = n.manager.generate(&alice(), req("a2")).await.unwrap();
    let (a3, _) = n.manager.generate(&alice(), req("a3")).await.unwrap();
    n.manager.revoke(&alice(), a3.id()).await.unwrap();
    let (c1, _) = n.manager.generate(&carol(), req("c1")).await.unwrap();
    // Another organization's key created by a user of the same name.
    let globex_alice = Actor::manager(OrgId::new("globex"), UserId::new("alice"));
    let (g1, _) = n.manager.generate(&globex_alice, req("g1")).await.unwrap();

    assert!(matches!(
        n.manager
            .revoke_created_by(&bob_member(), &UserId::new("alice"))
            .await,
        Err(Error::PermissionDenied)
    ));
    let count = n
        .manager
        .revoke_created_by(&carol(), &UserId::new("alice"))
        .await
        .unwrap();
    assert_eq!(count, 2);
    for id in [a1.id(), a2.id()] {
        let info = n.manager.get(&carol(), id).await.unwrap();
        assert_eq!(info.status, KeyStatus::Revoked);
        assert_eq!(info.revocation, Some(RevocationReason::DepartedUser));
    }
    // The manually revoked key keeps its reason; carol's and globex's keys still work.
    let info = n.manager.get(&carol(), a3.id()).await.unwrap();
    assert_eq!(info.revocation, Some(RevocationReason::Manual));
    for t in [&c1, &g1] {
        assert!(
            n.manager
                .verify(t.expose_secret(), &Scope::Prometheus)
                .await
                .is_ok()
        );
    }
    let mut revoked = audited(&n.audit, &AuditAction::RevokedDepartedUser);
    revoked.sort();
    let mut expected = vec![Some(*a1.id()), Some(*a2.id())];
    expected.sort();
    assert_eq!(revoked, expected);
    assert_eq!(
        n.notes.names(),
        vec!["revoked_departed_user", "revoked_departed_user"]
    );
    // Again: nothing more to do.
    assert_eq!(
        n.manager
            .revoke_created_by(&carol(), &UserId::new("alice"))
            .await
            .unwrap(),
        0
    );
}

// ---------------------------------------------------------------- unused keys

fn unused_policy() -> Policy {
    Policy::default()
        .allow_never(true)
        .revoke_unused_after(days(60))
        .warn_before(&[])
}

/// A rolled key keeps working through its overlap, which a manager may make long (the
/// overlap comes from the request). Nobody uses it any more once its integrations moved to
/// the replacement: `revoke_unused_after` must warn and revoke it like any idle key. The
/// sweep skipped a rolled key's old half altogether, so it stayed working, unused and never
/// warned, for the whole overlap.
#[tokio::test]
async fn a_rolled_keys_old_half_left_unused_through_a_long_overlap_is_revoked() {
    let n = node(unused_policy());
    let (key, _) = n
        .manager
        .generate(&alice(), req("old").expiry(Expiry::Never))
        .await
        .unwrap();
    let id = *key.id();
    n.clock.set(start() + days(1));
    let (next, _) = n.manager.roll(&alice(), &id, days(3650)).await.unwrap();
    // Only the replacement is used from now on.
    for day in [2, 30, 53, 60, 67] {
        n.clock.set(start() + days(day));
        n.manager
            .verify(next.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        n.manager.sweep().await.unwrap();
    }
    let info = n.manager.get(&alice(), &id).await.unwrap();
    assert_eq!(info.status, KeyStatus::Revoked, "{info:?}");
    assert_eq!(info.revocation, Some(RevocationReason::Unused));
    let about_old: Vec<&str> = n
        .notes
        .all()
        .iter()
        .filter(|x| x.key.id == id)
        .map(|x| x.event.name())
        .collect();
    assert_eq!(about_old, vec!["unused_warning", "revoked_unused"]);
    assert!(matches!(
        n.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));
    // The replacement, in use, is untouched.
    let info = n.manager.get(&alice(), next.id()).await.unwrap();
    assert_eq!(info.status, KeyStatus::Active);
}

/// A use whose last-use write failed stays buffered: the next flush writes it, and a sweep
/// that cannot write it either still counts it, so a key used after its warning is not
/// revoked as unused because of a store hiccup.
#[tokio::test]
async fn a_use_whose_write_failed_still_keeps_the_key_from_being_revoked_as_unused() {
    let store = common::CountingStore::default();
    let clock = ManualClock::new(start());
    let n = node_with(store.clone(), unused_policy(), &clock);
    let (key, _) = n
        .manager
        .generate(&alice(), req("daily-job").expiry(Expiry::Never))
        .await
        .unwrap();
    let id = *key.id();
    n.clock.set(start() + days(53));
    assert_eq!(n.manager.sweep().await.unwrap().unused_warnings, 1);
    // Day 59: the job runs while the store refuses last-use writes, and they keep failing
    // through the day-60 sweep.
    n.clock.set(start() + days(59));
    store
        .fail_touch
        .store(true, std::sync::atomic::Ordering::SeqCst);
    n.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    n.clock.set(start() + days(60));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0), "{r:?}");
    assert_eq!(n.manager.pending_last_uses(), 1);
    // The store recovers: the next sweep writes the use, and the key stays active.
    store
        .fail_touch
        .store(false, std::sync::atomic::Ordering::SeqCst);
    n.clock.set(start() + days(61));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0), "{r:?}");
    let info = n.manager.get(&alice(), &id).await.unwrap();
    assert_eq!(info.status, KeyStatus::Active);
    assert_eq!(info.last_used_at, Some(start() + days(59)));
    assert_eq!(n.manager.pending_last_uses(), 0);
    assert_eq!(n.notes.names(), vec!["unused_warning"]);
}

/// A sweep's claim that committed but whose reply was lost is still announced, once: the
/// sweep reads the record back and finds its own claim (before, the mark was set and no
/// sweep ever sent the warning, the revocation's event or its audit line).
#[tokio::test]
async fn a_claim_whose_reply_was_lost_is_announced_once() {
    let store = common::CountingStore::default();
    let clock = ManualClock::new(start());
    let n = node_with(store.clone(), unused_policy(), &clock);
    let (key, _) = n
        .manager
        .generate(&alice(), req("idle").expiry(Expiry::Never))
        .await
        .unwrap();
    let lose_next_reply = || {
        store
            .lose_update_reply
            .store(true, std::sync::atomic::Ordering::SeqCst)
    };
    n.clock.set(start() + days(53));
    lose_next_reply();
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.failed), (1, 0), "{r:?}");
    n.clock.set(start() + days(54));
    assert_eq!(n.manager.sweep().await.unwrap().unused_warnings, 0);
    n.clock.set(start() + days(60));
    lose_next_reply();
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.revoked_unused, r.failed), (1, 0), "{r:?}");
    n.clock.set(start() + days(61));
    assert_eq!(n.manager.sweep().await.unwrap().revoked_unused, 0);
    let info = n.manager.get(&alice(), key.id()).await.unwrap();
    assert_eq!(info.revocation, Some(RevocationReason::Unused));
    assert_eq!(n.notes.names(), vec!["unused_warning", "revoked_unused"]);
    let audited = n
        .audit
        .events()
        .iter()
        .filter(|e| e.action == AuditAction::RevokedUnused)
        .count();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn an_unused_key_is_warned_then_revoked_on_a_later_sweep() {
    let n = node(unused_policy());
    let (key, _) = n
        .manager
        .generate(&alice(), req("idle").expiry(Expiry::Never))
        .await
        .unwrap();
    let id = *key.id();
    // Used on day 10: the idle period starts there.
    n.clock.set(start() + days(10));
    n.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    // Notice is 7 days: the warning is due at 53 idle days.
    n.clock.set(start() + days(10 + 52));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0));
    n.clock.set(start() + days(10 + 53));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (1, 0));
    let notes = n.notes.take();
    assert_eq!(
        notes[0].event,
        AutomationEvent::UnusedWarning {
            revoke_at: start() + days(70)
        }
    );
    assert_eq!(
        n.manager
            .get(&alice(), &id)
            .await
            .unwrap()
            .notices
            .unused_warned_at,
        Some(start() + days(63))
    );
    // Repeated sweeps before the deadline: nothing more.
    n.clock.set(start() + days(69));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0));
    n.clock.set(start() + days(70));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!(r.revoked_unused, 1);
    let info = n.manager.get(&alice(), &id).await.unwrap();
    assert_eq!(info.status, KeyStatus::Revoked);
    assert_eq!(info.revocation, Some(RevocationReason::Unused));
    assert_eq!(n.notes.names(), vec!["revoked_unused"]);
    assert_eq!(
        audited(&n.audit, &AuditAction::RevokedUnused),
        vec![Some(id)]
    );
    assert!(matches!(
        n.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn turned_on_for_old_keys_the_warning_still_comes_a_full_notice_before() {
    let n = node(unused_policy());
    let (key, _) = n
        .manager
        .generate(&alice(), req("old").expiry(Expiry::Never))
        .await
        .unwrap();
    // Never used, 200 days old at the first sweep: warned, not revoked.
    n.clock.set(start() + days(200));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (1, 0));
    n.clock.set(start() + days(206));
    assert_eq!(n.manager.sweep().await.unwrap().revoked_unused, 0);
    n.clock.set(start() + days(207));
    assert_eq!(n.manager.sweep().await.unwrap().revoked_unused, 1);
    assert_eq!(
        n.manager.get(&alice(), key.id()).await.unwrap().revocation,
        Some(RevocationReason::Unused)
    );
}

#[tokio::test]
async fn a_key_used_inside_the_window_is_never_revoked() {
    let n = node(unused_policy());
    let (key, _) = n
        .manager
        .generate(&alice(), req("busy").expiry(Expiry::Never))
        .await
        .unwrap();
    // Used every 40 days for a year: never warned.
    for d in (40..400).step_by(40) {
        n.clock.set(start() + days(d));
        n.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        n.manager.sweep().await.unwrap();
    }
    assert!(n.notes.all().is_empty());
    // Warned after an idle spell, then used before the deadline: the warning is void.
    n.clock.set(start() + days(360 + 53));
    assert_eq!(n.manager.sweep().await.unwrap().unused_warnings, 1);
    n.clock.set(start() + days(360 + 55));
    n.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    n.clock.set(start() + days(360 + 61));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0));
    assert_eq!(
        n.manager.get(&alice(), key.id()).await.unwrap().status,
        KeyStatus::Active
    );
    // The next idle period gets its own warning before any revocation.
    n.clock.set(start() + days(415 + 53));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (1, 0));
}

#[tokio::test]
async fn without_the_policy_unused_keys_stay() {
    let n = node(Policy::default().allow_never(true).warn_before(&[]));
    let (key, _) = n
        .manager
        .generate(&alice(), req("idle").expiry(Expiry::Never))
        .await
        .unwrap();
    n.clock.set(start() + days(3650));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!(
        r,
        api_keys::SweepReport {
            scanned: 1,
            ..Default::default()
        }
    );
    assert!(
        n.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await
            .is_ok()
    );
}

/// Node A's clock runs a few seconds ahead of node B's. A warns an idle key; right after,
/// the key is used through B, whose clock records the use a few seconds "before" the warning.
/// That use still ends the idle period: 60 idle days later the key gets a new warning, not a
/// revocation without one (before, the old warning counted and the key was revoked at once).
#[tokio::test]
async fn a_use_right_after_the_warning_on_a_node_whose_clock_is_behind_still_cancels_it() {
    let store = MemoryStore::new();
    let ahead = ManualClock::new(start());
    let behind = ManualClock::new(start());
    let a = node_with(store.clone(), unused_policy(), &ahead);
    let b = node_with(store.clone(), unused_policy(), &behind);
    let (key, _) = a
        .manager
        .generate(&alice(), req("job").expiry(Expiry::Never))
        .await
        .unwrap();
    let skew = Duration::seconds(5);
    ahead.set(start() + days(53) + skew);
    behind.set(start() + days(53));
    assert_eq!(a.manager.sweep().await.unwrap().unused_warnings, 1);
    b.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    b.manager.flush_last_use().await.unwrap();
    let info = a.manager.get(&alice(), key.id()).await.unwrap();
    assert_eq!(info.last_used_at, Some(start() + days(53)));
    // Idle for the whole period after that use: warned again first, never revoked at once.
    ahead.set(start() + days(53 + 60) + skew);
    let r = a.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (1, 0), "{r:?}");
    assert_eq!(
        a.manager.get(&alice(), key.id()).await.unwrap().status,
        KeyStatus::Active
    );
}

/// Over a `MemoryStore`: once armed, each `touch` says it started and then waits for the gate
/// (a last-use write still under way).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Clone)]
struct SlowTouch {
    inner: MemoryStore,
    armed: Arc<std::sync::atomic::AtomicBool>,
    entered: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Semaphore>,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl KeyStore for SlowTouch {
    async fn insert(&self, r: api_keys::KeyRecord) -> Result<(), api_keys::StoreError> {
        self.inner.insert(r).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.list(org).await
    }
    async fn update(&self, r: api_keys::KeyRecord, rev: u64) -> Result<(), api_keys::StoreError> {
        self.inner.update(r, rev).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, api_keys::StoreError> {
        self.inner.delete(id).await
    }
    async fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.scan(after, limit).await
    }
    async fn touch(
        &self,
        id: &KeyId,
        at: api_keys::time::OffsetDateTime,
    ) -> Result<(), api_keys::StoreError> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            let _p = self.gate.acquire().await.unwrap();
        }
        self.inner.touch(id, at).await
    }
}

/// A use on this node whose background last-use write is still under way when the sweep
/// starts is this node's use all the same: the sweep's own flush finds the buffer empty (the
/// background flush took it), the store does not have it yet, and the key must not be revoked
/// as unused (before, it was: the use was in neither place the sweep looked).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_use_whose_background_write_is_under_way_keeps_the_key_from_being_revoked() {
    let store = SlowTouch {
        inner: MemoryStore::new(),
        armed: Arc::default(),
        entered: Arc::default(),
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    let clock = ManualClock::new(start());
    let notes = Notes::default();
    let manager = KeyManager::builder(store.clone(), keyring())
        .clock(clock.clone())
        .policy(
            Policy::default()
                .allow_never(true)
                .revoke_unused_after(days(60))
                .warn_before(&[]),
        )
        .notifier(notes.clone())
        .last_use_flush_interval(std::time::Duration::from_millis(1))
        .build()
        .unwrap();
    let (key, _) = manager
        .generate(&alice(), req("daily").expiry(Expiry::Never))
        .await
        .unwrap();
    clock.set(start() + days(53));
    assert_eq!(manager.sweep().await.unwrap().unused_warnings, 1);
    clock.set(start() + days(60));
    store.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let entered = store.entered.notified();
    manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    entered.await;
    // The background flush has taken the use and is writing it.
    let r = manager.sweep().await.unwrap();
    store.gate.add_permits(100);
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0), "{r:?}");
    let info = manager.get(&alice(), key.id()).await.unwrap();
    assert_eq!(info.status, KeyStatus::Active);
    assert_eq!(notes.names(), vec!["unused_warning"]);
}
