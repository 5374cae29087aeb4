//! Frozen backends (`kill -STOP`): the feed's and the pool's.

use super::*;

/// A feed whose backend is frozen (SIGSTOP) proves nothing: a key revoked on another node is
/// refused within the fallback bound, not after the heartbeat gives up.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_the_feed_is_frozen_is_refused_within_the_bound() {
    let Some(server) = server("a_key_revoked_while_the_feed_is_frozen_is_refused_within_the_bound")
    else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let org = OrgId::new(format!("faults-{:016x}", random_u64()));
    let actor = Actor::manager(org.clone(), UserId::new("alice"));
    let bound = Duration::from_secs(1);
    let a = manager(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &app("node-a")))
            .await
            .unwrap(),
        bound,
        Duration::ZERO,
        Recorder::default(),
    )
    .await;
    let b_app = app("node-b");
    let b = manager(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &b_app))
            .await
            .unwrap(),
        bound,
        Duration::ZERO,
        Recorder::default(),
    )
    .await;
    let token = keys(&a, &org, 1).await.remove(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = b.verify(&token, &read()).await.unwrap().key_id().to_owned();

    let (admin, conn) = tokio_postgres::connect(&server.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let feed_name = format!("{b_app}-feed");
    let pid: i32 = admin
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&feed_name],
        )
        .await
        .unwrap()
        .get(0);
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .unwrap()
                .success()
        );
    };
    struct Cont<F: Fn()>(F);
    impl<F: Fn()> Drop for Cont<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    signal("STOP");
    let _cont = Cont(|| signal("CONT"));
    // Still warm and served from the cache (the revoke has not happened yet).
    b.verify(&token, &read()).await.unwrap();
    a.revoke(&actor, &id).await.unwrap();
    let revoked_at = Instant::now();
    // The old heartbeat gave up after ~5 s; the proof lapses within the bound (+ one probe).
    let mut refused = None;
    while revoked_at.elapsed() < bound + Duration::from_millis(1500) {
        match b.verify(&token, &read()).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(Error::Revoked) => {
                refused = Some(revoked_at.elapsed());
                break;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let refused =
        refused.expect("a revoked key was accepted past the bound while the feed was frozen");
    report(&format!(
        "postgres frozen feed backend: a remote revoke was refused {refused:?} after it returned (bound {bound:?})"
    ));
}

/// the pooled backends frozen (`kill -STOP`, as a server stuck on I/O): a read
/// must end within the statement timeout (it cannot fire server-side) or a client-side bound,
/// not hang forever.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_a_frozen_backend_ends() {
    let Some(server) = server("a_read_on_a_frozen_backend_ends") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let name = app("frozen-backend");
    let store = PostgresStore::options()
        .statement_timeout(Duration::from_secs(1))
        .pool_size(1)
        .connect_and_migrate(&with_app(&server.url, &name))
        .await
        .unwrap();
    let org = OrgId::new(format!("faults-{:016x}", random_u64()));
    let m = manager(
        store.clone(),
        Duration::from_secs(1),
        Duration::ZERO,
        Recorder::default(),
    )
    .await;
    let token = keys(&m, &org, 1).await.remove(0);
    let id = m.verify(&token, &read()).await.unwrap().key_id().to_owned();
    let (admin, conn) = tokio_postgres::connect(&server.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let pids: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pids.len(), 1, "one pooled backend");
    let signal = |sig: &str| {
        for pid in &pids {
            assert!(
                Command::new("kill")
                    .arg(format!("-{sig}"))
                    .arg(pid.to_string())
                    .status()
                    .unwrap()
                    .success()
            );
        }
    };
    struct Cont<F: Fn()>(F);
    impl<F: Fn()> Drop for Cont<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    signal("STOP");
    let _cont = Cont(|| signal("CONT"));
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        api_keys::KeyStore::get(&store, &id),
    )
    .await;
    assert!(
        r.is_ok(),
        "store.get on a frozen backend still pending after {:?} (statement_timeout 1 s)",
        started.elapsed()
    );
}
