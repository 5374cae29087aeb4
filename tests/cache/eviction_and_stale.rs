//! Capacity, eviction, wrong secrets, enormous TTLs, and stale entries served only when asked.

use super::*;

#[tokio::test]
async fn a_zero_capacity_cache_caches_nothing_and_still_verifies() {
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .cache_capacity(0)
        .build()
        .unwrap();
    let (key, info) = m.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(m.cached_records(), 0);
    m.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn the_cache_stays_within_its_capacity() {
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .cache_capacity(64)
        .policy(Policy::default().max_active_keys(1000))
        .build()
        .unwrap();
    let mut keys = Vec::new();
    for _ in 0..300 {
        keys.push(m.generate(&alice(), prom()).await.unwrap().0);
    }
    for k in &keys {
        m.verify(k.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    assert!(m.cached_records() <= 64, "{}", m.cached_records());
    for k in &keys {
        m.verify(k.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn wrong_secrets_never_evict_another_key() {
    // 64 shards of one entry each: two keys of one shard compete for its only slot.
    let store = CountingStore::default();
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_capacity(64)
        .build()
        .unwrap();
    let other = KeyManager::builder(store.inner.clone(), keyring())
        .policy(Policy::default().max_active_keys(1000))
        .build()
        .unwrap();
    let mut by_shard: std::collections::HashMap<u64, String> = Default::default();
    let (a, b) = loop {
        let (key, info) = other.generate(&alice(), prom()).await.unwrap();
        let slot = shard_of(&info.id.to_string());
        if let Some(first) = by_shard.insert(slot, key.expose_secret().to_string()) {
            break (first, key.expose_secret().to_string());
        }
    };
    // `a` is cached (a valid use); a wrong secret for `b` (same shard) must not evict it.
    m.verify(&a, &Scope::Prometheus).await.unwrap();
    let gets = store.gets();
    assert!(matches!(
        m.verify(&wrong_secret(&b), &Scope::Prometheus).await,
        Err(Error::InvalidKey)
    ));
    assert_eq!(store.gets(), gets + 1, "the wrong secret read the store");
    m.verify(&a, &Scope::Prometheus).await.unwrap();
    assert_eq!(
        store.gets(),
        gets + 1,
        "the valid key was evicted by a wrong secret"
    );
}

/// The cache shard of a key: the id's value (base62, `0-9A-Za-z`) modulo the 64 shards.
fn shard_of(id: &str) -> u64 {
    let mut v: u64 = 0;
    for c in id.bytes() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            _ => c - b'a' + 36,
        };
        v = v.wrapping_mul(62).wrapping_add(d as u64);
    }
    v % 64
}

#[tokio::test]
async fn a_wrong_secret_is_answered_from_the_cache_for_every_state() {
    // Active or revoked: after the first probe, a wrong secret never reads the store again,
    // so the two states cost the same (issue: revoked keys answered slower).
    let store = CountingStore::default();
    let m = KeyManager::builder(store.clone(), keyring())
        .build()
        .unwrap();
    let (active, _) = m.generate(&alice(), prom()).await.unwrap();
    let (revoked, info) = m.generate(&alice(), prom()).await.unwrap();
    m.revoke(&alice(), &info.id).await.unwrap();
    let before = store.gets();
    for _ in 0..3 {
        for t in [&active, &revoked] {
            assert!(matches!(
                m.verify(&wrong_secret(t.expose_secret()), &Scope::Prometheus)
                    .await,
                Err(Error::InvalidKey)
            ));
        }
    }
    assert_eq!(store.gets(), before, "a wrong secret went to the store");
    // Cold (another node, nothing cached): the first probe of each reads once, then neither.
    let cold = KeyManager::builder(store.clone(), keyring())
        .build()
        .unwrap();
    for t in [&active, &revoked] {
        let before = store.gets();
        for _ in 0..3 {
            assert!(matches!(
                cold.verify(&wrong_secret(t.expose_secret()), &Scope::Prometheus)
                    .await,
                Err(Error::InvalidKey)
            ));
        }
        assert_eq!(store.gets(), before + 1);
    }
}

#[tokio::test]
async fn an_enormous_ttl_means_cache_for_long_not_panic() {
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .cache_ttl(StdDuration::MAX)
        .cache_fallback_ttl(StdDuration::MAX)
        .build()
        .unwrap();
    let (key, info) = m.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    m.revoke(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn an_unreachable_store_serves_stale_entries_only_when_asked_and_never_a_revoked_one() {
    let store = CountingStore::default();
    let audit = Recorder::default();
    let fallback = StdDuration::from_millis(100);
    let stale = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(fallback)
        .serve_stale_while_store_unreachable(StdDuration::from_secs(600))
        .audit(audit.clone())
        .build()
        .unwrap();
    let strict = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(fallback)
        .build()
        .unwrap();
    let (warm, _) = stale.generate(&alice(), prom()).await.unwrap();
    let (revoked, revoked_info) = stale.generate(&alice(), prom()).await.unwrap();
    let (deleted, deleted_info) = stale.generate(&alice(), prom()).await.unwrap();
    for m in [&stale, &strict] {
        for k in [&warm, &revoked, &deleted] {
            m.verify(k.expose_secret(), &Scope::Prometheus)
                .await
                .unwrap();
        }
    }
    stale.revoke(&alice(), &revoked_info.id).await.unwrap();
    stale.delete(&alice(), &deleted_info.id).await.unwrap();
    store
        .fail_get
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(fallback + StdDuration::from_millis(50)).await;

    // Off by default: a store error.
    assert!(matches!(
        strict
            .verify(warm.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Store(_))
    ));
    // Opted in: accepted from the cache, audited.
    stale
        .verify(warm.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    let served = |a: &Recorder| {
        a.events()
            .iter()
            .filter(|e| e.action == api_keys::AuditAction::ServedStale)
            .count()
    };
    assert_eq!(served(&audit), 1);
    // Never a key this node knows was revoked or deleted, never a wrong secret.
    assert!(matches!(
        stale
            .verify(revoked.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));
    assert!(matches!(
        stale
            .verify(deleted.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Store(_))
    ));
    assert!(
        stale
            .verify(&wrong_secret(warm.expose_secret()), &Scope::Prometheus)
            .await
            .is_err()
    );
    assert_eq!(served(&audit), 1);
}
