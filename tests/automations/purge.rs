//! Purging revoked and expired keys after retention, and the usage counters they leave.

use super::*;

// ---------------------------------------------------------------- retention

#[tokio::test]
async fn revoked_and_expired_keys_are_purged_after_retention_never_before() {
    let n = node(Policy::default().purge_after(days(30)).warn_before(&[]));
    let (revoked, _) = n.manager.generate(&alice(), req("revoked")).await.unwrap();
    let (expiring, _) = n
        .manager
        .generate(&alice(), req("expiring").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    let (active, _) = n.manager.generate(&alice(), req("active")).await.unwrap();
    n.clock.set(start() + days(1));
    n.manager.revoke(&alice(), revoked.id()).await.unwrap();

    // Revoked on day 1, expired on day 7: purged on days 31 and 37.
    n.clock.set(start() + days(31) - Duration::seconds(1));
    assert_eq!(n.manager.sweep().await.unwrap().purged, 0);
    n.clock.set(start() + days(31));
    assert_eq!(n.manager.sweep().await.unwrap().purged, 1);
    assert!(matches!(
        n.manager.get(&alice(), revoked.id()).await,
        Err(Error::NotFound)
    ));
    n.clock.set(start() + days(36));
    assert_eq!(n.manager.sweep().await.unwrap().purged, 0);
    assert!(n.manager.get(&alice(), expiring.id()).await.is_ok());
    n.clock.set(start() + days(37));
    assert_eq!(n.manager.sweep().await.unwrap().purged, 1);
    let left: Vec<KeyId> = n
        .manager
        .list(&alice())
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(left, vec![*active.id()]);
    let purged: Vec<_> = n
        .notes
        .all()
        .into_iter()
        .filter(|x| x.event == AutomationEvent::Purged)
        .map(|x| x.key.id)
        .collect();
    assert_eq!(purged, vec![*revoked.id(), *expiring.id()]);
    assert_eq!(audited(&n.audit, &AuditAction::Purged).len(), 2);
}

#[tokio::test]
async fn without_retention_nothing_is_purged() {
    let n = node(Policy::default());
    let (k, _) = n.manager.generate(&alice(), req("r")).await.unwrap();
    n.manager.revoke(&alice(), k.id()).await.unwrap();
    n.clock.set(start() + days(3650));
    assert_eq!(n.manager.sweep().await.unwrap().purged, 0);
    assert!(n.manager.get(&alice(), k.id()).await.is_ok());
}

/// Usage counters that note whose counters were forgotten, deciding through `LocalCounters`.
#[derive(Clone, Default)]
struct Forgetful {
    inner: Arc<api_keys::LocalCounters>,
    forgotten: Arc<Mutex<Vec<KeyId>>>,
}

impl api_keys::UsageCounters for Forgetful {
    fn consume<'a>(&'a self, req: api_keys::UsageRequest<'a>) -> api_keys::Consumed<'a> {
        self.inner.consume(req)
    }
    fn set_credits<'a>(
        &'a self,
        key: KeyId,
        credits: &'a api_keys::Credits,
        balance: u64,
        now_ms: i64,
    ) -> api_keys::BoxFuture<'a, Result<(), api_keys::CounterError>> {
        self.inner.set_credits(key, credits, balance, now_ms)
    }
    fn credits<'a>(
        &'a self,
        key: KeyId,
        credits: Option<&'a api_keys::Credits>,
        now_ms: i64,
    ) -> api_keys::BoxFuture<'a, Result<Option<u64>, api_keys::CounterError>> {
        self.inner.credits(key, credits, now_ms)
    }
    fn link_credits<'a>(
        &'a self,
        from: KeyId,
        to: KeyId,
    ) -> api_keys::BoxFuture<'a, Result<(), api_keys::CounterError>> {
        self.inner.link_credits(from, to)
    }
    fn forget<'a>(
        &'a self,
        key: KeyId,
    ) -> api_keys::BoxFuture<'a, Result<(), api_keys::CounterError>> {
        self.forgotten.lock().unwrap().push(key);
        self.inner.forget(key)
    }
}

#[tokio::test]
async fn a_purged_key_leaves_no_usage_counters_behind() {
    let clock = ManualClock::new(start());
    let counters = Forgetful::default();
    let manager = KeyManager::builder(MemoryStore::new(), keyring())
        .clock(clock.clone())
        .policy(Policy::default().purge_after(days(30)).warn_before(&[]))
        .counters(counters.clone())
        .build()
        .unwrap();
    let (key, _) = manager
        .generate(&alice(), req("limited").credits(api_keys::Credits::new(10)))
        .await
        .unwrap();
    manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    manager.revoke(&alice(), key.id()).await.unwrap();
    clock.set(start() + days(31));
    assert_eq!(manager.sweep().await.unwrap().purged, 1);
    assert_eq!(*counters.forgotten.lock().unwrap(), vec![*key.id()]);
}

#[tokio::test]
async fn a_purge_whose_reply_was_lost_is_announced_once() {
    let store = common::CountingStore::default();
    let clock = ManualClock::new(start());
    let n = node_with(
        store.clone(),
        Policy::default().purge_after(days(30)).warn_before(&[]),
        &clock,
    );
    let (key, _) = n.manager.generate(&alice(), req("old")).await.unwrap();
    n.manager.revoke(&alice(), key.id()).await.unwrap();
    clock.set(start() + days(30));
    // The purge's delete commits, but its reply is lost on the way back.
    store
        .lose_delete_reply
        .store(true, std::sync::atomic::Ordering::SeqCst);
    n.manager.sweep().await.unwrap();
    n.manager.sweep().await.unwrap();
    assert!(matches!(
        n.manager.get(&alice(), key.id()).await,
        Err(Error::NotFound)
    ));
    assert_eq!(n.notes.names(), vec!["purged"]);
    assert_eq!(
        audited(&n.audit, &AuditAction::Purged),
        vec![Some(*key.id())]
    );
}
