//! Last-use recording: throttled, buffered, flushed, never failing or losing a verification.

use super::*;

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
