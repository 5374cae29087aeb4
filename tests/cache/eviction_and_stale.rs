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
pub(super) fn shard_of(id: &str) -> u64 {
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
    // Over a store without a change feed, only an entry read since the store last answered
    // this node (here, the revoke's and the delete's reads) may be served stale: the warm
    // key is read again once its entry is past the fallback TTL.
    tokio::time::sleep(fallback + StdDuration::from_millis(50)).await;
    stale
        .verify(warm.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
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

/// A node that opted into stale serving (fallback TTL 100 ms), over a store whose changes it
/// does not hear (no feed), and its audit.
fn stale_node(store: &CountingStore) -> (KeyManager<CountingStore>, Recorder) {
    let audit = Recorder::default();
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(StdDuration::from_millis(100))
        .serve_stale_while_store_unreachable(StdDuration::from_secs(600))
        .policy(Policy::default().max_active_keys(1000))
        .audit(audit.clone())
        .build()
        .unwrap();
    (m, audit)
}

/// Makes the store unreachable (`fail_get`), then presents `token` to `m`: whether it was
/// refused and nothing was served stale.
pub(super) async fn refused_in_outage<S: KeyStore + 'static>(
    m: &KeyManager<S>,
    fail_get: &std::sync::atomic::AtomicBool,
    token: &str,
    audit: &Recorder,
) -> bool {
    fail_get.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = m.verify(token, &Scope::Prometheus).await.is_err();
    let served = audit
        .events()
        .iter()
        .any(|e| e.action == api_keys::AuditAction::ServedStale);
    refused && !served
}

/// A revocation this node's feed missed while it reconnected (the store was reachable all
/// along, the revoke returned long before any outage) must not be accepted later as a stale
/// entry while the store is unreachable: the contract flushes the cache on a reconnect, so
/// an entry read before it can no longer be trusted to say what the store holds — not by the
/// feed, and not by `serve_stale_while_store_unreachable` either.
#[tokio::test]
async fn a_revoke_missed_during_a_feed_reconnect_is_never_served_stale_later() {
    let store = CountingStore::default();
    let audit = Recorder::default();
    let fallback = StdDuration::from_millis(100);
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_ttl(StdDuration::from_secs(3600))
        .cache_fallback_ttl(fallback)
        .serve_stale_while_store_unreachable(StdDuration::from_secs(600))
        .audit(audit.clone())
        .build()
        .unwrap();
    store.feed(true);
    let other = KeyManager::builder(store.inner.clone(), keyring())
        .build()
        .unwrap();
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    // The feed drops; another node revokes the key (the notification is lost); the feed
    // comes back. The store stays reachable throughout.
    store.feed(false);
    other.revoke(&alice(), &info.id).await.unwrap();
    store.feed(true);
    tokio::time::sleep(fallback + StdDuration::from_millis(50)).await;
    // Later the store becomes unreachable: the revocation predates the outage.
    assert!(
        refused_in_outage(&m, &store.fail_get, key.expose_secret(), &audit).await,
        "a key revoked before the outage was accepted as a stale entry"
    );
}

/// A key deleted on another node, which this node then *read as gone* (and refused), must
/// never be accepted again from its older cache entry once the store is unreachable: the
/// node knows the key was deleted.
#[tokio::test]
async fn a_key_read_as_deleted_is_never_served_stale_afterwards() {
    let store = CountingStore::default();
    let (m, audit) = stale_node(&store);
    let other = KeyManager::builder(store.inner.clone(), keyring())
        .build()
        .unwrap();
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    let token = key.expose_secret().to_string();
    m.verify(&token, &Scope::Prometheus).await.unwrap();
    other.delete(&alice(), &info.id).await.unwrap();
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    // Past the fallback TTL this node reads the store: the key is gone, and refused.
    assert!(matches!(
        m.verify(&token, &Scope::Prometheus).await,
        Err(Error::InvalidKey)
    ));
    // Later the store becomes unreachable.
    assert!(
        refused_in_outage(&m, &store.fail_get, &token, &audit).await,
        "a key this node had read as deleted was accepted again from its stale entry"
    );
}

/// The same for a key read as revoked, when that read's fill is fenced off by an unrelated
/// invalidation in the key's cache shard (here: this node revokes another key of that shard
/// while the read is in flight). The older, active entry must not survive the read that saw
/// the key revoked, or it is accepted again once the store is unreachable.
#[tokio::test]
async fn a_key_read_as_revoked_is_never_served_stale_afterwards_even_if_its_fill_was_fenced() {
    let store = CountingStore::default();
    let (m, audit) = stale_node(&store);
    let other = KeyManager::builder(store.inner.clone(), keyring())
        .policy(Policy::default().max_active_keys(1000))
        .build()
        .unwrap();
    // Two keys of one cache shard.
    let mut by_shard: std::collections::HashMap<u64, (String, KeyId)> = Default::default();
    let ((token, id), (_, neighbour)) = loop {
        let (key, info) = other.generate(&alice(), prom()).await.unwrap();
        let slot = shard_of(&info.id.to_string());
        let this = (key.expose_secret().to_string(), info.id);
        if let Some(first) = by_shard.insert(slot, this.clone()) {
            break (first, this);
        }
    };
    m.verify(&token, &Scope::Prometheus).await.unwrap();
    other.revoke(&alice(), &id).await.unwrap();
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    // This node reads the key (revoked); meanwhile it changes the other key of the shard.
    let m2 = m.clone();
    store.after_next_get(move || async move {
        m2.revoke(&alice(), &neighbour).await.unwrap();
    });
    assert!(matches!(
        m.verify(&token, &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
    assert!(
        refused_in_outage(&m, &store.fail_get, &token, &audit).await,
        "a key this node had read as revoked was accepted again from its stale entry"
    );
}

/// A record that fails its integrity check when this node reads it (tampered, or revoked by
/// a node sealing under a master key this one lacks) is refused as `Integrity`; the older
/// entry must not be served stale afterwards ("never a tampered record").
#[tokio::test]
async fn a_key_read_as_tampered_is_never_served_stale_afterwards() {
    let store = CountingStore::default();
    let (m, audit) = stale_node(&store);
    let other = KeyManager::builder(store.inner.clone(), keyring())
        .build()
        .unwrap();
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    let token = key.expose_secret().to_string();
    m.verify(&token, &Scope::Prometheus).await.unwrap();
    let mut row = store.inner.get(&info.id).await.unwrap().unwrap();
    row.expires_at = None;
    store.inner.overwrite_unchecked(row);
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    let first = m.verify(&token, &Scope::Prometheus).await;
    assert!(
        matches!(first, Err(Error::Integrity)),
        "{:?}",
        first.map(|_| ())
    );
    assert!(
        refused_in_outage(&m, &store.fail_get, &token, &audit).await,
        "a key this node had read as tampered was accepted again from its stale entry"
    );
}

/// Two cold reads of one key race: the later one sees it revoked (and refuses), the earlier
/// one - begun before the revoke - finishes last. Its older record must not replace the
/// revoked one in the cache, or the node, which has refused the key, accepts it again as a
/// stale entry once the store is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_read_finishing_last_never_replaces_a_newer_entry() {
    let store = PausingStore::default();
    let audit = Recorder::default();
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(StdDuration::from_millis(100))
        .serve_stale_while_store_unreachable(StdDuration::from_secs(600))
        .audit(audit.clone())
        .build()
        .unwrap();
    let other = other_node(&store);
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    let token = key.expose_secret().to_string();
    // The first read holds the active record ...
    let (read, go_on) = arm(&store.pause);
    let first = spawn_verify(&m, &token);
    read.await.unwrap();
    // ... another node revokes the key, and a second read sees that.
    other.revoke(&alice(), &info.id).await.unwrap();
    assert!(is_revoked(&m, &token).await);
    // The first read finishes last (it began before the revoke: accepting it is fine).
    go_on.send(()).unwrap();
    first.await.unwrap().unwrap();
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    assert!(
        refused_in_outage(&m, &store.fail_get, &token, &audit).await,
        "a key this node had read as revoked was accepted again from an older read's entry"
    );
}

/// A row the store reports as undecodable (`StoreError::Corrupt`: damaged or tampered beyond
/// parsing) is refused as `Integrity`, like a row whose tag fails; the older entry must not be
/// served stale afterwards either ("never a tampered record").
#[tokio::test]
async fn a_key_read_as_corrupt_is_never_served_stale_afterwards() {
    let store = PausingStore::default();
    let audit = Recorder::default();
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(StdDuration::from_millis(100))
        .serve_stale_while_store_unreachable(StdDuration::from_secs(600))
        .audit(audit.clone())
        .build()
        .unwrap();
    let other = other_node(&store);
    let (key, _) = other.generate(&alice(), prom()).await.unwrap();
    let token = key.expose_secret().to_string();
    m.verify(&token, &Scope::Prometheus).await.unwrap();
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    // Past the fallback TTL this node reads the row again: it no longer decodes.
    store
        .corrupt_get
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let first = m.verify(&token, &Scope::Prometheus).await;
    assert!(
        matches!(first, Err(Error::Integrity)),
        "{:?}",
        first.map(|_| ())
    );
    // Later the store becomes unreachable.
    store
        .corrupt_get
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        refused_in_outage(&m, &store.fail_get, &token, &audit).await,
        "a key this node had read as corrupt was accepted again from its stale entry"
    );
}

/// This node changes a key (its limits); right after the write commits, another node revokes
/// the key and this node reads it as revoked (and refuses it). The change's own record, older
/// than that read's, must not replace it when the change returns: the node, which has refused
/// the key as revoked, would accept it again from the cache - as a stale entry once the store
/// is unreachable.
#[tokio::test]
async fn a_managers_own_write_never_replaces_a_later_read_of_the_key_revoked() {
    let store = CountingStore::default();
    let (m, audit) = stale_node(&store);
    let other = KeyManager::builder(store.inner.clone(), keyring())
        .build()
        .unwrap();
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    let token = key.expose_secret().to_string();
    let seen = Arc::new(Mutex::new(None));
    {
        let (m, seen, token, id) = (m.clone(), seen.clone(), token.clone(), info.id);
        store.after_next_update(move || async move {
            other.revoke(&alice(), &id).await.unwrap();
            let verdict = m.verify(&token, &Scope::Prometheus).await.map(|_| ());
            *seen.lock().unwrap() = Some(verdict);
        });
    }
    let limit = api_keys::RateLimit::new("burst", 100, StdDuration::from_secs(60));
    m.set_limits(&alice(), &info.id, vec![limit]).await.unwrap();
    let seen = seen.lock().unwrap().take();
    assert!(
        matches!(seen, Some(Err(Error::Revoked))),
        "the read right after the write did not see the key revoked: {seen:?}"
    );
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    assert!(
        refused_in_outage(&m, &store.fail_get, &token, &audit).await,
        "a key this node had read as revoked was accepted again from its own older write"
    );
}

/// The same for a store without a change feed (SQLite, or a host's own store): another node
/// revokes a key this node verified, this node's store answers a later verification (of
/// another key), and only then does the store become unreachable. The revoke predates the
/// outage, so it must be refused (the fallback TTL bounds it), not served stale for up to
/// the maximum staleness.
#[tokio::test]
async fn a_revoke_made_while_a_feedless_store_answered_is_never_served_stale_later() {
    let store = CountingStore::default();
    let (m, audit) = stale_node(&store);
    let other = KeyManager::builder(store.inner.clone(), keyring())
        .build()
        .unwrap();
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    let (answered, _) = other.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    other.revoke(&alice(), &info.id).await.unwrap();
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    // Past the fallback TTL, the store answers this node (after the revoke).
    m.verify(answered.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert!(
        refused_in_outage(&m, &store.fail_get, key.expose_secret(), &audit).await,
        "a key revoked while the store answered this node was accepted as a stale entry"
    );
}
