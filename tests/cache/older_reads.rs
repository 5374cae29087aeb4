//! A store read that began before another read of the same key, finishing after it: what the
//! newer read found (the key gone, or revoked) must not be undone by the older read's fill.

use super::eviction_and_stale::{refused_in_outage, shard_of};
use super::*;

/// Two cold reads of one key race a delete made on another node: the first read holds the
/// live record, the second finds the key gone (and refuses it), and the first finishes last.
/// Its fill must not put the key back: this node read the key as deleted, so it must never
/// accept it again from the cache - here as a stale entry once the store is unreachable
/// (`Cache::gone` fences off "a fill still in flight from an older read").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_read_finishing_after_the_key_was_read_as_deleted_never_puts_it_back() {
    let store = PausingStore::default();
    let audit = Recorder::default();
    let m = stale_serving(&store, &audit, None);
    let other = other_node(&store);
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    let token = key.expose_secret().to_string();
    // The first read (nothing cached yet) holds the live record ...
    let (read, go_on) = arm(&store.pause);
    let first = spawn_verify(&m, &token);
    read.await.unwrap();
    // ... another node deletes the key, and a second read finds it gone.
    other.delete(&alice(), &info.id).await.unwrap();
    assert!(matches!(
        m.verify(&token, &Scope::Prometheus).await,
        Err(Error::InvalidKey)
    ));
    // The first read finishes last (it began before the delete: accepting it is fine).
    go_on.send(()).unwrap();
    first.await.unwrap().unwrap();
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    assert!(
        refused_in_outage(&m, &store.fail_get, &token, &audit).await,
        "a key this node had read as deleted was accepted again from an older read's entry"
    );
}

/// The same race as `an_older_read_finishing_last_never_replaces_a_newer_entry`, when the
/// newer (revoked) entry is evicted from a full shard before the older read finishes: the
/// older read's record must not come back in its place, or the node, which has refused the
/// key as revoked, accepts it again as a stale entry once the store is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_read_finishing_after_the_newer_entry_was_evicted_never_replaces_it() {
    let store = PausingStore::default();
    let audit = Recorder::default();
    let m = stale_serving(&store, &audit, Some(64));
    let other = other_node(&store);
    let ((token, id), (neighbour, _)) = two_keys_of_one_shard(&other).await;
    // The first read holds the active record ...
    let (read, go_on) = arm(&store.pause);
    let first = spawn_verify(&m, &token);
    read.await.unwrap();
    // ... another node revokes the key, and a second read sees that ...
    other.revoke(&alice(), &id).await.unwrap();
    assert!(is_revoked(&m, &token).await);
    // ... whose entry the neighbour's then evicts from the full shard.
    m.verify(&neighbour, &Scope::Prometheus).await.unwrap();
    // The first read finishes last (it began before the revoke: accepting it is fine).
    go_on.send(()).unwrap();
    first.await.unwrap().unwrap();
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    assert!(
        refused_in_outage(&m, &store.fail_get, &token, &audit).await,
        "a key this node had read as revoked was accepted again from an older read's entry"
    );
}

/// The same race when the newer read presents a wrong secret into a full shard: it sees the
/// key revoked and answers `InvalidKey`, and keeps nothing (wrong guesses never evict); the
/// older read, finishing last, must still not install the active record it read before the
/// revoke, or the node accepts a key it has read as revoked once the store is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_read_finishing_after_a_wrong_guess_saw_the_key_revoked_never_puts_it_back() {
    let store = PausingStore::default();
    let audit = Recorder::default();
    let m = stale_serving(&store, &audit, Some(64));
    let other = other_node(&store);
    let ((token, id), (neighbour, _)) = two_keys_of_one_shard(&other).await;
    // The neighbour fills the shard.
    m.verify(&neighbour, &Scope::Prometheus).await.unwrap();
    // The first read holds the active record ...
    let (read, go_on) = arm(&store.pause);
    let first = spawn_verify(&m, &token);
    read.await.unwrap();
    // ... another node revokes the key, and a wrong guess reads it revoked.
    other.revoke(&alice(), &id).await.unwrap();
    assert!(matches!(
        m.verify(&common::wrong_secret(&token), &Scope::Prometheus)
            .await,
        Err(Error::InvalidKey)
    ));
    // The first read finishes last (it began before the revoke: accepting it is fine).
    go_on.send(()).unwrap();
    first.await.unwrap().unwrap();
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    assert!(
        refused_in_outage(&m, &store.fail_get, &token, &audit).await,
        "a key this node had read as revoked was accepted again from an older read's entry"
    );
}

/// Wrong guesses of a key into a full shard read the very record a legitimate read in flight
/// read (nothing changed): they must not fence that read's fill off, or a flood of wrong
/// guesses of a key's id keeps the key itself out of the cache for good (every verification
/// of it a store read, and none answered from the cache while the store is unreachable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_guesses_that_saw_nothing_change_never_fence_off_a_legitimate_fill() {
    let store = PausingStore::default();
    let audit = Recorder::default();
    // 64 entries over 64 shards: one per shard.
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_capacity(64)
        .cache_ttl(StdDuration::from_secs(3600))
        .cache_fallback_ttl(StdDuration::from_secs(3600))
        .audit(audit.clone())
        .build()
        .unwrap();
    let other = other_node(&store);
    let ((token, _), (neighbour, _)) = two_keys_of_one_shard(&other).await;
    // The neighbour fills the shard.
    m.verify(&neighbour, &Scope::Prometheus).await.unwrap();
    // A legitimate read holds the key's record ...
    let (read, go_on) = arm(&store.pause);
    let first = spawn_verify(&m, &token);
    read.await.unwrap();
    // ... while a wrong guess of the same key reads the same record.
    assert!(matches!(
        m.verify(&common::wrong_secret(&token), &Scope::Prometheus)
            .await,
        Err(Error::InvalidKey)
    ));
    go_on.send(()).unwrap();
    first.await.unwrap().unwrap();
    // The legitimate read's entry answers without the store.
    store
        .fail_get
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        m.verify(&token, &Scope::Prometheus).await.is_ok(),
        "a wrong guess that saw the same record kept the key's legitimate read out of the cache"
    );
}

/// A node serving stale answers while the store is unreachable (fallback TTL 100 ms), with
/// `capacity` entries (64: one per shard, so the second key of a shard evicts the first).
fn stale_serving(
    store: &PausingStore,
    audit: &Recorder,
    capacity: Option<usize>,
) -> KeyManager<PausingStore> {
    let b = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(StdDuration::from_millis(100))
        .serve_stale_while_store_unreachable(StdDuration::from_secs(600))
        .audit(audit.clone());
    match capacity {
        Some(n) => b.cache_capacity(n),
        None => b,
    }
    .build()
    .unwrap()
}

/// Two keys (token, id) that another node generates into one shard of this node's cache.
async fn two_keys_of_one_shard(
    other: &KeyManager<MemoryStore>,
) -> ((String, KeyId), (String, KeyId)) {
    let mut by_shard: std::collections::HashMap<u64, (String, KeyId)> = Default::default();
    loop {
        let (key, info) = other.generate(&alice(), prom()).await.unwrap();
        let this = (key.expose_secret().to_string(), info.id);
        if let Some(first) = by_shard.insert(shard_of(&info.id.to_string()), this.clone()) {
            return (first, this);
        }
    }
}
