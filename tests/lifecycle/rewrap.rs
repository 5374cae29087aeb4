//! Rewrapping records under a new master key version, on lagging and upgraded nodes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_moves_every_record_while_keys_keep_verifying() {
    let store = MemoryStore::new();
    let roomy = Policy::default().max_active_keys(10_000);
    let old = setup_with(store.clone(), roomy.clone());
    let mut keys = Vec::new();
    for i in 0..600 {
        let actor = if i % 2 == 0 {
            alice()
        } else {
            mallory_other_org()
        };
        keys.push(
            old.manager
                .generate(&actor, prom(&format!("k{i}")))
                .await
                .unwrap()
                .0,
        );
    }
    let (_, revoked) = old
        .manager
        .generate(&alice(), prom("revoked"))
        .await
        .unwrap();
    old.manager.revoke(&alice(), &revoked.id).await.unwrap();

    let new = setup_with(store.clone(), roomy);
    new.manager.set_keyring(v2_keyring()).unwrap();
    // Before: the new node opens version-1 records through `previous`.
    for k in &keys {
        works(&new.manager, k.expose_secret()).await.unwrap();
    }
    // During: verify from another task while rewrap runs.
    let verifier = {
        let m = new.manager.clone();
        let tokens: Vec<String> = keys.iter().map(|k| k.expose_secret().to_string()).collect();
        tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..3 {
                for t in &tokens {
                    m.verify(t, &Scope::Prometheus)
                        .await
                        .expect("verify during rewrap");
                    n += 1;
                    tokio::task::yield_now().await;
                }
            }
            n
        })
    };
    let report = new.manager.rewrap().await.unwrap();
    assert_eq!(verifier.await.unwrap(), 1800);
    assert_eq!(report.rewrapped, 601);
    assert_eq!(report.failed, 0);
    let all = store.scan(None, 10_000).await.unwrap();
    assert!(all.iter().all(|r| r.key_version() == 2));
    // A second run has nothing to do.
    let again = new.manager.rewrap().await.unwrap();
    assert_eq!(
        (again.rewrapped, again.already_current, again.failed),
        (0, 601, 0)
    );
    // After: a node with only the new key verifies everything; the revoked key stays revoked.
    let only_v2 = KeyManager::builder(store.clone(), Keyring::new(2, MasterKey::from_bytes(V2)))
        .clock(new.clock.clone())
        .build()
        .unwrap();
    for k in &keys {
        works(&only_v2, k.expose_secret()).await.unwrap();
    }
    let rec = store.get(&revoked.id).await.unwrap().unwrap();
    assert!(rec.revoked_at.is_some());
    // A node that only has the old key can no longer open anything.
    let only_v1 = setup_with(store, Policy::default());
    assert!(matches!(
        works(&only_v1.manager, keys[0].expose_secret()).await,
        Err(Error::Integrity)
    ));
}

/// The revoke to run inside the first `update`.
type RevokeJob = Option<(KeyManager<MemoryStore>, KeyId)>;

/// A store whose first `update` lets a revoke (by another, not yet upgraded node) win the race.
#[derive(Clone)]
struct RacingStore {
    inner: MemoryStore,
    armed: Arc<AtomicBool>,
    revoker: Arc<std::sync::Mutex<RevokeJob>>,
}

impl KeyStore for RacingStore {
    async fn insert(&self, r: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(r).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(org).await
    }
    async fn update(&self, r: KeyRecord, expected: u64) -> Result<(), StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            let job = self.revoker.lock().unwrap().take();
            if let Some((m, id)) = job {
                m.revoke(&alice(), &id).await.expect("racing revoke");
            }
        }
        self.inner.update(r, expected).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }
    async fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.scan(after, limit).await
    }
    async fn touch(
        &self,
        id: &KeyId,
        at: api_keys::time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.inner.touch(id, at).await
    }
}

#[tokio::test]
async fn a_revoke_racing_rewrap_wins_and_is_rewrapped_after() {
    let store = MemoryStore::new();
    let old = setup_with(store.clone(), Policy::default());
    let (key, info) = old.manager.generate(&alice(), prom("k")).await.unwrap();
    let racing = RacingStore {
        inner: store.clone(),
        armed: Arc::new(AtomicBool::new(true)),
        revoker: Arc::new(std::sync::Mutex::new(Some((old.manager.clone(), info.id)))),
    };
    let new = KeyManager::builder(racing, v2_keyring()).build().unwrap();
    let report = new.rewrap().await.unwrap();
    assert_eq!(report.rewrapped, 1, "{report:?}");
    let rec = store.get(&info.id).await.unwrap().unwrap();
    assert_eq!(rec.key_version(), 2);
    assert!(
        rec.revoked_at.is_some(),
        "the revoke that won the race survived the rewrap"
    );
    assert!(matches!(
        new.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn a_record_sealed_under_a_version_missing_from_the_keyring_is_integrity() {
    let store = MemoryStore::new();
    let old = setup_with(store.clone(), Policy::default());
    let (key, info) = old.manager.generate(&alice(), prom("k")).await.unwrap();
    let without_v1 = KeyManager::builder(store.clone(), Keyring::new(2, MasterKey::generate()))
        .build()
        .unwrap();
    assert!(matches!(
        works(&without_v1, key.expose_secret()).await,
        Err(Error::Integrity)
    ));
    let report = without_v1.rewrap().await.unwrap();
    assert_eq!((report.rewrapped, report.failed), (0, 1));
    assert_eq!(
        store.get(&info.id).await.unwrap().unwrap().key_version(),
        1,
        "never re-sealed"
    );
}

#[tokio::test]
async fn a_node_with_the_next_key_opens_records_sealed_by_upgraded_nodes() {
    let store = MemoryStore::new();
    let upgraded = KeyManager::builder(store.clone(), v2_keyring())
        .build()
        .unwrap();
    let (key, _) = upgraded.generate(&alice(), prom("k")).await.unwrap();
    let lagging = KeyManager::builder(store.clone(), lagging_keyring())
        .build()
        .unwrap();
    works(&lagging, key.expose_secret()).await.unwrap();
    let not_ready = setup_with(store, Policy::default());
    assert!(matches!(
        works(&not_ready.manager, key.expose_secret()).await,
        Err(Error::Integrity)
    ));
}

/// During a rotation, a node not yet upgraded (the new key as *next*) that changes a record an
/// upgraded node sealed keeps it under the new version: once the old version is retired, the
/// record still opens.
#[tokio::test]
async fn a_lagging_node_never_moves_a_record_back_to_the_retiring_key() {
    let store = MemoryStore::new();
    let upgraded = KeyManager::builder(store.clone(), v2_keyring())
        .build()
        .unwrap();
    let (key, info) = upgraded.generate(&alice(), prom("k")).await.unwrap();
    let lagging = KeyManager::builder(store.clone(), lagging_keyring())
        .build()
        .unwrap();
    lagging.revoke(&alice(), &info.id).await.unwrap();
    let retired = KeyManager::builder(store, Keyring::new(2, MasterKey::from_bytes(V2)))
        .build()
        .unwrap();
    let r = works(&retired, key.expose_secret()).await;
    assert!(matches!(r, Err(Error::Revoked)), "{r:?}");
}

#[tokio::test]
async fn rewrap_on_a_lagging_node_never_moves_newer_records_down() {
    let store = MemoryStore::new();
    let upgraded = setup_with(store.clone(), Policy::default());
    upgraded.manager.set_keyring(v2_keyring()).unwrap();
    let (key, info) = upgraded
        .manager
        .generate(&alice(), prom("k"))
        .await
        .unwrap();
    let lagging = KeyManager::builder(store.clone(), lagging_keyring())
        .clock(upgraded.clock.clone())
        .build()
        .unwrap();
    let report = lagging.rewrap().await.unwrap();
    assert_eq!((report.rewrapped, report.newer, report.failed), (0, 1, 0));
    assert_eq!(store.get(&info.id).await.unwrap().unwrap().key_version(), 2);
    works(&lagging, key.expose_secret()).await.unwrap();
}

/// `rewrap` counts every record that fails its integrity check in `failed` and reports it,
/// whatever version it names: a tampered row sealed under the current version (or under a
/// `next` one) is no more "already current" (or "newer") than one under an old version.
#[tokio::test]
async fn rewrap_reports_tampered_records_of_the_current_and_next_versions() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default());
    let (_, genuine) = s.manager.generate(&alice(), prom("genuine")).await.unwrap();
    let (_, victim) = s.manager.generate(&alice(), prom("victim")).await.unwrap();
    let mut rec = store.get(&victim.id).await.unwrap().unwrap();
    rec.scopes.push(Scope::Scim);
    store.overwrite_unchecked(rec);
    let report = s.manager.rewrap().await.unwrap();
    assert_eq!(
        (report.already_current, report.failed),
        (1, 1),
        "{report:?}"
    );
    assert!(
        s.audit
            .events()
            .iter()
            .any(|e| { e.action == AuditAction::IntegrityFailure && e.key_id == Some(victim.id) })
    );
    assert!(
        !s.audit
            .events()
            .iter()
            .any(|e| { e.action == AuditAction::IntegrityFailure && e.key_id == Some(genuine.id) })
    );

    // A row sealed under a `next` version by an upgraded node, tampered, on a lagging node.
    let store = MemoryStore::new();
    let upgraded = setup_with(store.clone(), Policy::default());
    upgraded.manager.set_keyring(v2_keyring()).unwrap();
    let (_, newer) = upgraded
        .manager
        .generate(&alice(), prom("k"))
        .await
        .unwrap();
    let mut rec = store.get(&newer.id).await.unwrap().unwrap();
    rec.scopes.push(Scope::Scim);
    store.overwrite_unchecked(rec);
    let lagging = KeyManager::builder(store.clone(), lagging_keyring())
        .clock(upgraded.clock.clone())
        .build()
        .unwrap();
    let report = lagging.rewrap().await.unwrap();
    assert_eq!((report.newer, report.failed), (0, 1), "{report:?}");
}

#[tokio::test]
async fn a_rewrap_whose_reply_was_lost_is_still_audited() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (_, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    s.manager.set_keyring(v2_keyring()).unwrap();
    // The re-seal commits, but its reply is lost on the way back; the host runs rewrap again.
    store.lose_update_reply.store(true, Ordering::SeqCst);
    s.manager.rewrap().await.unwrap();
    s.manager.rewrap().await.unwrap();
    let rewrapped = s
        .audit
        .count(info.id, |a| matches!(a, AuditAction::Rewrapped { .. }));
    assert_eq!(rewrapped, 1, "the record was re-sealed: it is audited once");
}

#[tokio::test]
async fn a_rewrap_whose_write_failed_does_not_claim_another_nodes_reseal() {
    let store = CountingStore::default();
    let a = setup_with(store.clone(), Policy::default());
    let b = setup_with(store.clone(), Policy::default());
    let (_, info) = a.manager.generate(&alice(), prom("k")).await.unwrap();
    a.manager.set_keyring(v2_keyring()).unwrap();
    b.manager.set_keyring(v2_keyring()).unwrap();
    // Right after A read the record, node B re-seals it; A's own update then never reaches
    // the store (it writes nothing).
    let (node_b, st) = (b.manager.clone(), store.clone());
    store.after_next_get(move || async move {
        node_b.rewrap().await.unwrap();
        st.fail_update.store(true, Ordering::SeqCst);
    });
    let report = a.manager.rewrap().await.unwrap();
    let rewrapped = |r: &Recorder| r.count(info.id, |a| matches!(a, AuditAction::Rewrapped { .. }));
    assert_eq!(rewrapped(&b.audit), 1, "B re-sealed the record");
    assert_eq!(
        rewrapped(&a.audit),
        0,
        "A's write did nothing: B's re-seal is not A's"
    );
    assert_eq!(report.failed, 1);
}

#[tokio::test]
async fn a_revocation_whose_write_failed_does_not_claim_another_nodes_revocation() {
    let store = CountingStore::default();
    let a = setup_with(store.clone(), Policy::default());
    let b = setup_with(store.clone(), Policy::default());
    let (_, info) = a.manager.generate(&alice(), prom("k")).await.unwrap();
    // The same manager's revocation reaches two nodes in the same second (a retried
    // request): B revokes right after A read the record, and A's update never reaches the
    // store.
    let (node_b, st, id) = (b.manager.clone(), store.clone(), info.id);
    store.after_next_get(move || async move {
        node_b.revoke(&alice(), &id).await.unwrap();
        st.fail_update.store(true, Ordering::SeqCst);
    });
    let first = a.manager.revoke(&alice(), &info.id).await;
    let revoked = |r: &Recorder| r.count(info.id, |a| *a == AuditAction::Revoked);
    assert_eq!(revoked(&b.audit), 1, "B revoked the key");
    assert_eq!(
        revoked(&a.audit),
        0,
        "A's write did nothing: B's revocation is not A's ({first:?})"
    );
}

/// A rotation's `rewrap` run with a wrong current master key (a typo in the operator's
/// configuration) re-sealed every older record under that key, which the service does not
/// have: every such key stopped verifying, everywhere. When records sealed under the current
/// version exist (keys the upgraded nodes made), the key must open one of them, or nothing
/// is re-sealed.
#[tokio::test]
async fn a_rewrap_with_a_wrong_current_key_reseals_nothing() {
    let store = MemoryStore::new();
    let old = setup_with(store.clone(), Policy::default());
    let (under_1, _) = old
        .manager
        .generate(&alice(), prom("under-1"))
        .await
        .unwrap();
    let upgraded = setup_with(store.clone(), Policy::default());
    upgraded.manager.set_keyring(v2_keyring()).unwrap();
    let (under_2, _) = upgraded
        .manager
        .generate(&alice(), prom("under-2"))
        .await
        .unwrap();
    let typo = setup_with(store.clone(), Policy::default());
    typo.manager
        .set_keyring(
            Keyring::new(2, MasterKey::from_bytes([0x5a; 16]))
                .with_previous(1, MasterKey::from_bytes(MASTER)),
        )
        .unwrap();
    let refused = typo.manager.rewrap().await;
    assert!(matches!(refused, Err(Error::Integrity)), "{refused:?}");
    // Nothing moved: both keys still verify on the upgraded node, and its own rewrap (the
    // right key) goes ahead.
    works(&upgraded.manager, under_1.expose_secret())
        .await
        .unwrap();
    works(&upgraded.manager, under_2.expose_secret())
        .await
        .unwrap();
    let report = upgraded.manager.rewrap().await.unwrap();
    assert_eq!((report.rewrapped, report.already_current), (1, 1));
}
