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
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(StdDuration::from_millis(100))
        .serve_stale_while_store_unreachable(StdDuration::from_secs(600))
        .audit(audit.clone())
        .build()
        .unwrap();
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
