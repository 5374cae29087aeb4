//! The change feed and the cache: fences, feed loss, reconnects, proofs, the fallback TTL and epochs coming back round.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_event_fences_off_a_fill_that_began_before_it() {
    let store = PausingStore {
        feed: true,
        ..Default::default()
    };
    let verifier = long_lived(&store);
    let listener = connected_feed(&store);
    // Another node (no shared process) revokes directly in the store.
    let other = other_node(&store);
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    let (read_done, release) = arm(&store.pause);
    let token = key.expose_secret().to_string();
    let racing = spawn_verify(&verifier, &token);
    read_done.await.unwrap();
    other.revoke(&alice(), &info.id).await.unwrap();
    // The feed delivers the change while the verification still holds the old record.
    listener.changed(api_keys::Change {
        id: info.id,
        revision: 2,
        kind: api_keys::ChangeKind::Updated,
    });
    release.send(()).unwrap();
    let _ = racing.await.unwrap();
    assert_eq!(
        verifier.cached_records(),
        0,
        "the fill that began before the event was dropped"
    );
    assert!(matches!(
        verifier.verify(&token, &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

/// A manager over a store with a feed this test drives by hand, plus a second manager over
/// the same records whose changes the feed does not report (a lost notification).
fn fed(
    fallback: StdDuration,
) -> (
    PausingStore,
    KeyManager<PausingStore>,
    Arc<dyn ChangeListener>,
) {
    let store = PausingStore {
        feed: true,
        ..Default::default()
    };
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_ttl(StdDuration::from_secs(3600))
        .cache_fallback_ttl(fallback)
        .build()
        .unwrap();
    let listener = store
        .listener
        .lock()
        .unwrap()
        .clone()
        .unwrap()
        .upgrade()
        .unwrap();
    (store, m, listener)
}

#[tokio::test]
async fn losing_the_feed_keeps_warm_entries_until_the_drop_plus_the_fallback_ttl() {
    let fallback = StdDuration::from_millis(300);
    let (store, m, listener) = fed(fallback);
    let other = other_node(&store);
    listener.connected();
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    // Past the fallback TTL while the feed is live: still served (the long TTL applies).
    tokio::time::sleep(fallback + StdDuration::from_millis(100)).await;
    other.revoke(&alice(), &info.id).await.unwrap();
    listener.disconnected();
    // Not flushed: the warm entry is as fresh as the drop ...
    assert_eq!(m.cached_records(), 1);
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    // ... and is served no later than the drop + the fallback TTL.
    tokio::time::sleep(fallback + StdDuration::from_millis(100)).await;
    assert!(is_revoked(&m, key.expose_secret()).await);
}

#[tokio::test]
async fn a_reconnect_leaves_older_entries_only_their_fallback_ttl() {
    let fallback = StdDuration::from_millis(300);
    let (store, m, listener) = fed(fallback);
    let other = other_node(&store);
    listener.connected();
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    other.revoke(&alice(), &info.id).await.unwrap();
    // A quick drop and reconnect: the change in between may have been missed.
    listener.disconnected();
    listener.connected();
    tokio::time::sleep(fallback + StdDuration::from_millis(100)).await;
    assert!(is_revoked(&m, key.expose_secret()).await);
}

#[tokio::test]
async fn a_feed_that_proves_itself_is_trusted_only_until_its_last_proof_plus_the_fallback_ttl() {
    let fallback = StdDuration::from_millis(300);
    let (store, m, listener) = fed(fallback);
    let other = other_node(&store);
    listener.proven(std::time::Instant::now());
    listener.connected();
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    // Proofs keep coming: the entry outlives its fallback TTL.
    for _ in 0..4 {
        tokio::time::sleep(StdDuration::from_millis(100)).await;
        listener.proven(std::time::Instant::now());
    }
    other.revoke(&alice(), &info.id).await.unwrap();
    assert!(!is_revoked(&m, key.expose_secret()).await);
    // The feed hangs (no proof, no drop reported): trust lapses at the last proof + fallback.
    tokio::time::sleep(fallback + StdDuration::from_millis(100)).await;
    assert!(is_revoked(&m, key.expose_secret()).await);
}

#[tokio::test]
async fn without_a_feed_entries_expire_after_the_fallback_ttl() {
    let store = PausingStore::default();
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(StdDuration::from_millis(200))
        .build()
        .unwrap();
    let other = other_node(&store);
    let (key, info) = other.generate(&alice(), prom()).await.unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    other.revoke(&alice(), &info.id).await.unwrap();
    // After the TTL the revoke made elsewhere is seen (bounded wait, no timing assertion).
    tokio::time::sleep(StdDuration::from_millis(250)).await;
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

/// Feed epochs are numbered modulo 65 535: after that many reconnections an entry of the
/// first cycle would be trusted again, although the feed was down when another node revoked
/// its key. The cache starts empty at each new cycle.
#[tokio::test]
async fn an_entry_is_never_trusted_again_when_the_feed_epochs_come_back_round() {
    let store = PausingStore {
        feed: true,
        ..Default::default()
    };
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_ttl(StdDuration::from_secs(3600))
        .cache_fallback_ttl(StdDuration::from_millis(1))
        .build()
        .unwrap();
    let listener = connected_feed(&store);
    let (key, info) = m.generate(&alice(), prom()).await.unwrap();
    let token = key.expose_secret().to_string();
    m.verify(&token, &Scope::Prometheus).await.unwrap();
    assert_eq!(m.cached_records(), 1);
    // The feed goes down; meanwhile another node revokes the key (unheard).
    listener.disconnected();
    other_node(&store).revoke(&alice(), &info.id).await.unwrap();
    tokio::time::sleep(StdDuration::from_millis(20)).await;
    // Reconnections bring the epoch back round to the entry's.
    for _ in 0..65_535 {
        listener.disconnected();
        listener.connected();
    }
    assert!(matches!(
        m.verify(&token, &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}
