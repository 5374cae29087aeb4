//! Concurrency: lookups racing revokes, concurrent verifications, last-use flushes and a held write lock.

use super::*;

/// A verification that read the record before a revoke and returns after it must not put
/// the pre-revoke record into the cache.
#[tokio::test]
async fn a_lookup_racing_a_revoke_does_not_cache_the_old_record() {
    let dir = TempDir::new("race");
    let store = Arc::new(Observed::new(
        SqliteStore::open(dir.path("keys.db")).unwrap(),
    ));
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    // Generated through another manager (another node), so that `m` has nothing cached.
    let (key, info) = manager(SqliteStore::open(dir.path("keys.db")).unwrap())
        .generate(&alice(), GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    store.gate.arm();
    let racing = {
        let (m, token) = (m.clone(), key.expose_secret().to_string());
        tokio::spawn(async move { m.verify(&token, &Scope::Prometheus).await })
    };
    store.gate.reached().await; // the racing verify holds the pre-revoke record
    m.revoke(&alice(), &info.id).await.unwrap();
    store.gate.release();
    // It began before the revoke returned, so it may still succeed...
    racing.await.unwrap().unwrap();
    // ...but it must not have cached what it read: the next verify is refused.
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn many_concurrent_verifications() {
    let dir = TempDir::new("concurrent");
    let m = manager(SqliteStore::open(dir.path("keys.db")).unwrap());
    let mut tokens = Vec::new();
    for i in 0..20 {
        let (k, _) = m
            .generate(
                &alice(),
                GenerateRequest::new(format!("k{i}")).scope(Scope::Prometheus),
            )
            .await
            .unwrap();
        tokens.push(k.expose_secret().to_string());
    }
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let m = m.clone();
            tokio::spawn(async move { m.verify(&t, &Scope::Prometheus).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// A background flush dropped with its runtime (here before it ever ran, as when a warm-up
/// runtime is shut down) does not stop later uses, on another runtime, from being written.
#[test]
fn a_flush_dropped_with_its_runtime_does_not_stop_later_last_uses() {
    let dir = TempDir::new("flush-runtime");
    let m = KeyManager::builder(SqliteStore::open(dir.path("keys.db")).unwrap(), keyring())
        .last_use_flush_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let warm_up = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (second, second_id) = warm_up.block_on(async {
        let prom = |n: &str| GenerateRequest::new(n).scope(Scope::Prometheus);
        let (first, _) = m.generate(&alice(), prom("first")).await.unwrap();
        let (second, info) = m.generate(&alice(), prom("second")).await.unwrap();
        m.verify(first.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        (second, info.id)
    });
    drop(warm_up);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        m.verify(second.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while m
            .store()
            .get(&second_id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "no flush was scheduled again: {} uses wait in the buffer",
                m.pending_last_uses()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Last use never holds up a verify: with another connection holding the write lock (as
/// another process would), verifies of never-used keys complete well within the 5 s busy
/// timeout their last-use write would wait, and the uses are written once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_do_not_wait_on_last_use_while_another_writer_holds_the_lock() {
    let dir = TempDir::new("locked");
    let path = dir.path("keys.db");
    let store = SqliteStore::open(&path).unwrap();
    let m = KeyManager::builder(store, keyring())
        .last_use_flush_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut keys = Vec::new();
    for i in 0..6 {
        let (k, info) = m
            .generate(
                &alice(),
                GenerateRequest::new(format!("k{i}")).scope(Scope::Prometheus),
            )
            .await
            .unwrap();
        keys.push((k, info.id));
    }
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    for (k, _) in &keys {
        // Far below the busy timeout a blocked last-use write would wait.
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            m.verify(k.expose_secret(), &Scope::Prometheus),
        )
        .await
        .expect("a verify waited on the write lock");
        r.unwrap();
        // Let a flush start and block on the lock while the next keys verify.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    locker.execute_batch("ROLLBACK").unwrap();
    // The buffered uses reach the file after the lock is gone (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut all = true;
        for (_, id) in &keys {
            all &= m
                .store()
                .get(id)
                .await
                .unwrap()
                .unwrap()
                .last_used_at
                .is_some();
        }
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "last uses never reached the file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report(&format!(
        "sqlite write lock held by another connection: {} verifies of unused keys took {took:?} in all (with 50 ms pauses)",
        keys.len()
    ));
}
