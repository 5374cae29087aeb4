//! Issue 3: roll, reveal, expiry tracking, last use, master-key rotation, audit.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use api_keys::time::{Duration, OffsetDateTime};
use api_keys::{
    AuditAction, AuditEvent, AuditSink, BoxError, Error, Expiry, FailureClass, GenerateRequest,
    KeyId, KeyManager, KeyRecord, KeyStatus, KeyStore, Keyring, MasterKey, MemoryStore, OrgId,
    Policy, RateLimit, Scope, StoreError,
};
use common::*;

fn prom(name: &str) -> GenerateRequest {
    GenerateRequest::new(name).scope(Scope::Prometheus)
}

async fn works<S: KeyStore + 'static>(m: &KeyManager<S>, token: &str) -> Result<(), Error> {
    m.verify(token, &Scope::Prometheus).await.map(|_| ())
}

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
async fn expiring_within_returns_exactly_the_right_keys_soonest_first() {
    let s = setup_with(MemoryStore::new(), Policy::default().allow_never(true));
    let m = &s.manager;
    let a = alice();
    let (_, in_30) = m
        .generate(&a, prom("30d").expiry(Expiry::Days(30)))
        .await
        .unwrap();
    let (_, in_7) = m
        .generate(&a, prom("7d").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    let (_, in_10) = m
        .generate(
            &a,
            prom("10d").expiry(Expiry::At(start() + Duration::days(10))),
        )
        .await
        .unwrap();
    let (_, in_14) = m
        .generate(
            &a,
            prom("14d").expiry(Expiry::At(start() + Duration::days(14))),
        )
        .await
        .unwrap();
    m.generate(&a, prom("never").expiry(Expiry::Never))
        .await
        .unwrap();
    let (_, revoked) = m
        .generate(&a, prom("revoked").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    m.revoke(&a, &revoked.id).await.unwrap();
    let (_, gone) = m
        .generate(
            &a,
            prom("already expired").expiry(Expiry::At(start() + Duration::hours(1))),
        )
        .await
        .unwrap();
    m.generate(
        &mallory_other_org(),
        prom("other org").expiry(Expiry::Days(7)),
    )
    .await
    .unwrap();
    s.clock.advance(Duration::hours(2));

    let got: Vec<KeyId> = m
        .expiring_within(&a, Duration::days(14))
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(got, vec![in_7.id, in_10.id, in_14.id]);
    assert!(!got.contains(&in_30.id) && !got.contains(&gone.id));
    assert_eq!(
        m.get(&a, &gone.id).await.unwrap().status,
        KeyStatus::Expired
    );

    // The host-level sweep sees every organization.
    let all = m.expiring_all(Duration::days(14)).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].expires_at <= w[1].expires_at));
    assert!(all.iter().any(|i| i.org == OrgId::new("globex")));
}

#[tokio::test]
async fn last_use_is_recorded_and_throttled_to_once_a_minute() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    assert_eq!(info.last_used_at, None);
    works(&s.manager, key.expose_secret()).await.unwrap();
    // Uses are buffered off the verify path and written in batches (inside tokio with a
    // runtime feature; otherwise the verify writes the batch it started).
    s.manager.flush_last_use().await.unwrap();
    assert_eq!(s.manager.pending_last_uses(), 0);
    assert_eq!(store.touches.load(Ordering::SeqCst), 1);
    assert_eq!(
        s.manager
            .get(&alice(), &info.id)
            .await
            .unwrap()
            .last_used_at,
        Some(start())
    );
    for _ in 0..10 {
        s.clock.advance(Duration::seconds(5));
        works(&s.manager, key.expose_secret()).await.unwrap();
    }
    s.manager.flush_last_use().await.unwrap();
    assert_eq!(
        store.touches.load(Ordering::SeqCst),
        1,
        "50 s later: still one write"
    );
    s.clock.advance(Duration::seconds(10));
    works(&s.manager, key.expose_secret()).await.unwrap();
    s.manager.flush_last_use().await.unwrap();
    assert_eq!(store.touches.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.manager
            .get(&alice(), &info.id)
            .await
            .unwrap()
            .last_used_at,
        Some(start() + Duration::seconds(60))
    );
    // Failed verifications are not uses.
    s.clock.advance(Duration::minutes(5));
    assert!(
        s.manager
            .verify(key.expose_secret(), &Scope::Scim)
            .await
            .is_err()
    );
    s.manager.flush_last_use().await.unwrap();
    assert_eq!(store.touches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failing_touch_never_fails_verify() {
    let store = CountingStore::default();
    store.fail_touch.store(true, Ordering::SeqCst);
    let s = setup_with(store.clone(), Policy::default());
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    works(&s.manager, key.expose_secret()).await.unwrap();
    // Buffered, or written by the verify itself (which failed, logged); either way this
    // flush fails too, and the use stays buffered for the next one.
    assert!(s.manager.flush_last_use().await.is_err());
    assert!(store.touches.load(Ordering::SeqCst) >= 1);
    assert_eq!(s.manager.pending_last_uses(), 1);
    let last_used = |s: &Setup<CountingStore>| {
        let id = info.id;
        let m = s.manager.clone();
        async move { m.get(&alice(), &id).await.unwrap().last_used_at }
    };
    assert_eq!(last_used(&s).await, None);
    store.fail_touch.store(false, Ordering::SeqCst);
    s.manager.flush_last_use().await.unwrap();
    assert_eq!(s.manager.pending_last_uses(), 0);
    assert_eq!(last_used(&s).await, Some(start()));
}

const V2: [u8; 16] = *b"fedcba9876543210";

fn v2_keyring() -> Keyring {
    Keyring::new(2, MasterKey::from_bytes(V2)).with_previous(1, MasterKey::from_bytes(MASTER))
}

/// A node of a rotation's step 2: still sealing under 1, already opening 2.
fn lagging_keyring() -> Keyring {
    Keyring::new(1, MasterKey::from_bytes(MASTER)).with_next(2, MasterKey::from_bytes(V2))
}

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

#[tokio::test]
async fn absurd_durations_from_requests_never_panic() {
    let s = setup();
    let (old, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let (new, _) = s
        .manager
        .roll(&alice(), &info.id, Duration::MAX)
        .await
        .unwrap();
    // The old key keeps its own expiry: an overlap never extends it.
    assert_eq!(
        s.manager.get(&alice(), &info.id).await.unwrap().expires_at,
        Some(start() + Duration::days(90))
    );
    works(&s.manager, old.expose_secret()).await.unwrap();
    works(&s.manager, new.expose_secret()).await.unwrap();
    let (_, other) = s.manager.generate(&alice(), prom("k2")).await.unwrap();
    s.manager
        .roll(&alice(), &other.id, Duration::MIN)
        .await
        .unwrap();
    // k, its replacement and the replacement of k2 (k2 itself stopped at once).
    assert_eq!(
        s.manager
            .expiring_within(&alice(), Duration::MAX)
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(
        s.manager
            .expiring_within(&alice(), Duration::MIN)
            .await
            .unwrap()
            .is_empty()
    );
    let far = api_keys::time::OffsetDateTime::new_utc(
        api_keys::time::Date::MAX,
        api_keys::time::Time::MIDNIGHT,
    );
    assert!(matches!(
        s.manager
            .generate(&alice(), prom("x").expiry(Expiry::At(far)))
            .await,
        Err(Error::Policy(_))
    ));
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

#[tokio::test]
async fn buffered_last_uses_are_written_without_being_asked() {
    let store = CountingStore::default();
    let m = KeyManager::builder(store.clone(), keyring())
        .last_use_flush_interval(std::time::Duration::from_millis(20))
        .build()
        .unwrap();
    let (key, info) = m.generate(&alice(), prom("k")).await.unwrap();
    works(&m, key.expose_secret()).await.unwrap();
    // Bounded wait: the background flush (or, without a runtime feature, the verify itself)
    // writes it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.touches.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the use was never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        m.get(&alice(), &info.id)
            .await
            .unwrap()
            .last_used_at
            .is_some()
    );
    assert_eq!(m.pending_last_uses(), 0);
}

/// A store whose first `touch_many` waits until the test releases it.
#[derive(Clone, Default)]
struct GatedTouch {
    inner: MemoryStore,
    #[allow(clippy::type_complexity)]
    gate: Arc<
        std::sync::Mutex<
            Option<(
                tokio::sync::oneshot::Sender<()>,
                tokio::sync::oneshot::Receiver<()>,
            )>,
        >,
    >,
}

impl KeyStore for GatedTouch {
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
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        self.inner.touch(id, at).await
    }
    async fn touch_many(&self, uses: &[(KeyId, OffsetDateTime)]) -> Result<(), StoreError> {
        let gate = self.gate.lock().unwrap().take();
        if let Some((entered, release)) = gate {
            let _ = entered.send(());
            let _ = release.await;
        }
        for (id, at) in uses {
            self.inner.touch(id, *at).await?;
        }
        Ok(())
    }
}

/// A use recorded while a flush is writing sees a flush scheduled and starts none: the
/// running flush (inline without a runtime, the background task with one) writes it after.
#[tokio::test]
async fn a_use_recorded_during_a_flush_is_written_by_it_afterwards() {
    let store = GatedTouch::default();
    let m = KeyManager::builder(store.clone(), keyring())
        .last_use_flush_interval(std::time::Duration::from_millis(20))
        .build()
        .unwrap();
    let (a, _) = m.generate(&alice(), prom("a")).await.unwrap();
    let (b, b_info) = m.generate(&alice(), prom("b")).await.unwrap();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel();
    *store.gate.lock().unwrap() = Some((entered_tx, release_rx));
    let first = tokio::spawn({
        let m = m.clone();
        let token = a.expose_secret().to_owned();
        async move { works(&m, &token).await }
    });
    // a's use is being written (by its verification, or by the background flush).
    entered_rx.await.unwrap();
    works(&m, b.expose_secret()).await.unwrap();
    release_tx.send(()).unwrap();
    first.await.unwrap().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store
        .inner
        .get(&b_info.id)
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "b's use stayed in the buffer: {} pending",
            m.pending_last_uses()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(m.pending_last_uses(), 0);
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

/// A default period that `generate` would always refuse (0 days) is refused when the manager
/// is built, like any default outside the allowed periods.
#[test]
fn a_default_period_of_zero_days_is_refused_at_build() {
    let built = KeyManager::builder(MemoryStore::new(), keyring())
        .policy(Policy::default().allowed_days(&[0, 30]).default_days(0))
        .build();
    assert!(matches!(built, Err(Error::Policy(_))));
    assert_eq!(Policy::default().allowed_days(&[0, 30]).periods(), vec![30]);
}

/// At the end of the calendar an expiry that does not fit is refused, never shortened to
/// whatever is left (a key that dies seconds after it was handed out).
#[tokio::test]
async fn an_expiry_past_the_end_of_the_calendar_is_refused_not_shortened() {
    let s = setup();
    let now = OffsetDateTime::new_utc(
        api_keys::time::Date::MAX,
        api_keys::time::Time::from_hms(23, 59, 0).unwrap(),
    );
    s.clock.set(now);
    assert!(matches!(
        s.manager.generate(&alice(), prom("k")).await,
        Err(Error::Policy(_))
    ));
}

/// A clock may show a time whose UTC instant lies just outside the calendar (the last
/// moment of 9999 at UTC-1, the first of -9999 at UTC+1). Records hold whole UTC seconds, so
/// such a time is held as the calendar's nearest end: truncating it kept the clock's value
/// as it was (not whole seconds, not UTC), and `generate` handed out a key whose record
/// failed its own integrity check from then on (or failed with `Integrity` itself), and
/// could not be revoked either.
#[tokio::test]
async fn a_clock_just_outside_the_calendar_makes_keys_that_work() {
    use api_keys::time::{PrimitiveDateTime, UtcOffset};
    let ends = [
        (
            PrimitiveDateTime::MAX.assume_offset(UtcOffset::from_hms(-1, 0, 0).unwrap()),
            Expiry::Never,
        ),
        (
            PrimitiveDateTime::MIN.assume_offset(UtcOffset::from_hms(1, 0, 0).unwrap()),
            Expiry::Days(7),
        ),
    ];
    for (now, expiry) in ends {
        let s = setup_with(MemoryStore::new(), Policy::default().allow_never(true));
        s.clock.set(now);
        let (key, info) = s
            .manager
            .generate(&alice(), prom("k").expiry(expiry))
            .await
            .unwrap_or_else(|e| panic!("{now}: {e:?}"));
        assert_eq!(info.created_at.offset(), UtcOffset::UTC, "{now}");
        assert_eq!(info.created_at.nanosecond(), 0, "{now}");
        works(&s.manager, key.expose_secret())
            .await
            .unwrap_or_else(|e| panic!("{now}: {e:?}"));
        s.manager.revoke(&alice(), &info.id).await.unwrap();
        assert!(matches!(
            works(&s.manager, key.expose_secret()).await,
            Err(Error::Revoked)
        ));
    }
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

/// Without a runtime feature the verification itself writes the buffered uses (with one, a
/// background task does, and the verification never waits for the write).
#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
#[tokio::test]
async fn a_verification_cancelled_while_it_writes_last_uses_loses_none_of_them() {
    use futures_util::FutureExt;
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    // The verification writes the buffered uses itself (no runtime feature) and its request
    // is cancelled (client gone, a timeout) while that write is in flight.
    store.yields.store(true, Ordering::SeqCst);
    let cancelled = works(&s.manager, key.expose_secret()).now_or_never();
    assert!(cancelled.is_none(), "the last-use write was in flight");
    store.yields.store(false, Ordering::SeqCst);
    // The use is still buffered, and the next flush writes it.
    assert_eq!(s.manager.pending_last_uses(), 1);
    s.manager.flush_last_use().await.unwrap();
    assert_eq!(
        s.manager
            .get(&alice(), &info.id)
            .await
            .unwrap()
            .last_used_at,
        Some(start())
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
