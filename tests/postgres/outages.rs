//! Feed loss, dead connections, frozen servers and timeouts: reported, bounded, recovered.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_loss_falls_back_to_the_short_ttl_and_reconnects() {
    let Some(cfg) = database_url("feed_loss_falls_back_to_the_short_ttl_and_reconnects") else {
        return;
    };
    let admin = admin(&cfg, None).await;
    let org = org();
    let boss = manager_of(&org);
    let node_a = KeyManager::builder(connect(&cfg, &app("loss-a")).await, keyring())
        .build()
        .unwrap();
    // Node B reaches the server through a relay that can refuse new connections, so its
    // feed stays down while its pooled connection keeps working.
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let b_name = app("loss-b");
    let b_store = Arc::new(Observed::new(
        PostgresStore::connect_and_migrate(&conninfo(&cfg, &b_name, Some(proxy.addr), None))
            .await
            .unwrap(),
    ));
    let node_b = KeyManager::builder(b_store.clone(), keyring())
        .cache_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let feed = &b_store.feed;
    wait_until(Duration::from_secs(10), || {
        feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("node B's feed never connected");

    let (key, info) = node_a
        .generate(&boss, GenerateRequest::new("k1").scope(Scope::Prometheus))
        .await
        .unwrap();
    node_b
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(node_b.cached_records(), 1);

    // Kill B's LISTEN backend and keep the feed from reconnecting.
    proxy.set_accepting(false);
    let killed: Vec<bool> = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("{b_name}-feed")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        killed,
        vec![true],
        "exactly one LISTEN backend to terminate"
    );
    let noticed = wait_until(Duration::from_secs(10), || {
        feed.count(&FeedEvent::Disconnected) == 1
    })
    .await
    .expect("the feed loss was never reported");
    assert_eq!(
        node_b.cached_records(),
        0,
        "the cache is flushed on feed loss"
    );

    // Without a feed, node B caches for the fallback TTL (1 s) only.
    node_b
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    node_a.revoke(&boss, &info.id).await.unwrap();
    // The entry expires 1 s after its read began (before the revoke): no verification that
    // begins later than 1 s after the revoke returned is accepted. (Measured by when each
    // verification began, not when the refusal came back: on a loaded machine the store
    // read that finds the revocation can itself take a second or two.)
    let revoked_at = Instant::now();
    let mut last_accepted: Option<Duration> = None;
    let fallback = loop {
        let began = revoked_at.elapsed();
        match node_b.verify(key.expose_secret(), &Scope::Prometheus).await {
            Ok(_) => last_accepted = Some(began),
            Err(Error::Revoked) => break revoked_at.elapsed(),
            Err(e) => panic!("unexpected verification error: {e}"),
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "node B still accepted a revoked key 5 s after its feed dropped"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(
        last_accepted.is_none_or(|t| t < Duration::from_secs(1)),
        "the fallback TTL is 1 s; a verification that began {last_accepted:?} after the revoke was accepted"
    );

    // Let the feed reconnect.
    proxy.set_accepting(true);
    let reconnected = wait_until(Duration::from_secs(15), || {
        feed.count(&FeedEvent::Connected) == 2
    })
    .await
    .expect("the feed never reconnected");
    let events = feed.events();
    let lifecycle: Vec<&FeedEvent> = events
        .iter()
        .filter(|e| !matches!(e, FeedEvent::Changed(_)))
        .collect();
    assert_eq!(
        lifecycle,
        vec![
            &FeedEvent::Connected,
            &FeedEvent::Disconnected,
            &FeedEvent::Connected
        ]
    );

    // With the feed back, a revocation is seen at once again.
    let (key2, info2) = node_a
        .generate(&boss, GenerateRequest::new("k2").scope(Scope::Prometheus))
        .await
        .unwrap();
    node_b
        .verify(key2.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    node_a.revoke(&boss, &info2.id).await.unwrap();
    let via_feed = time_until_revoked(&node_b, key2.expose_secret(), Duration::from_secs(5))
        .await
        .expect("node B still accepted a revoked key after the feed reconnected");
    report(&format!(
        "postgres feed loss: reported {noticed:?} after the LISTEN backend was terminated; a revoke was seen through the fallback TTL after {fallback:?}; the feed reconnected {reconnected:?} after the server was reachable again; a revoke was then seen through the feed after {via_feed:?}"
    ));
    assert!(via_feed < Duration::from_secs(1), "took {via_feed:?}");
}

/// A feed connection that silently stops answering (no reset, no close) is noticed by its
/// heartbeat, reported, and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_feed_is_noticed_by_its_heartbeat() {
    let Some(cfg) = database_url("a_silently_dead_feed_is_noticed_by_its_heartbeat") else {
        return;
    };
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let store =
        PostgresStore::connect_and_migrate(&conninfo(&cfg, &app("silent"), Some(proxy.addr), None))
            .await
            .unwrap();
    let (spy, log) = Spy::recorder();
    let listener: Arc<dyn ChangeListener> = spy;
    store.changes(Arc::downgrade(&listener));
    wait_until(Duration::from_secs(10), || {
        log.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the feed never connected");
    proxy.set_frozen(true);
    // A probe every 2 s that times out after 3 s: noticed within about 5 s.
    let noticed = wait_until(Duration::from_secs(15), || {
        log.count(&FeedEvent::Disconnected) == 1
    })
    .await
    .expect("a silently dead feed connection was never noticed");
    proxy.set_frozen(false);
    let back = wait_until(Duration::from_secs(15), || {
        log.count(&FeedEvent::Connected) == 2
    })
    .await
    .expect("the feed never reconnected");
    report(&format!(
        "postgres silent feed death noticed after {noticed:?}; reconnected {back:?} later"
    ));
}

#[tokio::test]
async fn connection_loss_is_reported_then_recovered_on_the_next_call() {
    let Some(cfg) = database_url("connection_loss_is_reported_then_recovered_on_the_next_call")
    else {
        return;
    };
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let store = PostgresStore::connect_and_migrate(&conninfo(
        &cfg,
        &app("conn-loss"),
        Some(proxy.addr),
        None,
    ))
    .await
    .unwrap();
    let rec = api_keys::testkit::sample_record(random_id(), &org());
    store.insert(rec.clone()).await.unwrap();
    assert_eq!(store.get(&rec.id).await.unwrap().as_ref(), Some(&rec));

    // The server becomes unreachable: live connections are cut, new ones refused.
    proxy.set_accepting(false);
    proxy.cut_all();
    let e = store
        .get(&rec.id)
        .await
        .expect_err("a get with the server unreachable succeeded");
    let pe = pg_error(&e);
    assert!(
        matches!(
            pe.kind(),
            PostgresErrorKind::ConnectionLost | PostgresErrorKind::Connect
        ),
        "{pe:?}"
    );
    assert!(
        std::error::Error::source(pe).is_some(),
        "the driver's error is kept as the source"
    );
    report(&format!(
        "postgres connection loss reported as: {}",
        chain(&e).replace('\n', " |")
    ));

    // Reachable again: the very next call works.
    proxy.set_accepting(true);
    assert_eq!(store.get(&rec.id).await.unwrap().as_ref(), Some(&rec));
}

/// A pool wait and a statement timeout are each their own error kind, not "cannot connect".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_statement_timeouts_are_their_own_error_kinds() {
    let Some(cfg) = database_url("pool_and_statement_timeouts_are_their_own_error_kinds") else {
        return;
    };
    let name = app("timeouts");
    let store = PostgresStore::options()
        .pool_size(1)
        .statement_timeout(Duration::from_secs(2))
        .pool_wait_timeout(Duration::from_millis(300))
        .connect_and_migrate(&conninfo(&cfg, &name, None, None))
        .await
        .unwrap();
    let org = org();
    let mut locker = admin(&cfg, None).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // The store's only connection waits on the lock ...
    let listing = tokio::spawn({
        let store = store.clone();
        let org = org.clone();
        async move { store.list(&org).await }
    });
    let watcher = admin(&cfg, None).await;
    let waiting = async {
        loop {
            let n: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&name],
                )
                .await
                .unwrap()
                .get(0);
            if n == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the listing never waited on the lock");
    // ... so another call times out waiting for the pool,
    let e = store
        .get(&random_id())
        .await
        .expect_err("a call got a connection from a full pool");
    assert_eq!(
        pg_error(&e).kind(),
        PostgresErrorKind::PoolTimeout,
        "{}",
        chain(&e)
    );
    assert!(chain(&e).contains("waiting for a free PostgreSQL connection"));
    // ... and the stuck statement is cancelled by the statement timeout.
    let e = listing
        .await
        .unwrap()
        .expect_err("the listing finished despite the lock");
    assert_eq!(
        pg_error(&e).kind(),
        PostgresErrorKind::StatementTimeout,
        "{}",
        chain(&e)
    );
    tx.rollback().await.unwrap();
    // The connection is usable again.
    store.list(&org).await.unwrap();
}

// ---------------------------------------------------------------- frozen servers, replica mode, truncate, names

/// a call on a connection whose server stopped answering (a frozen server, a
/// half-open socket) must end within the statement timeout, not hang forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_does_not_hang_a_read_forever() {
    let Some(cfg) = database_url("a_frozen_server_does_not_hang_a_read_forever") else {
        return;
    };
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let store = PostgresStore::options()
        .statement_timeout(Duration::from_secs(1))
        .pool_wait_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(2))
        .connect_and_migrate(&conninfo(&cfg, &app("frozen-pool"), Some(proxy.addr), None))
        .await
        .unwrap();
    let rec = api_keys::testkit::sample_record(random_id(), &org());
    store.insert(rec.clone()).await.unwrap();
    assert!(store.get(&rec.id).await.unwrap().is_some());
    proxy.set_frozen(true);
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), store.get(&rec.id)).await;
    proxy.set_frozen(false);
    assert!(
        r.is_ok(),
        "store.get against a frozen server was still pending after {:?} (statement_timeout 1 s, pool wait 1 s, connect timeout 2 s)",
        started.elapsed()
    );
}

/// the user-visible side: a warm key on a node that opted into
/// `serve_stale_while_store_unreachable` must keep verifying (or fail) when the database
/// freezes; it must not hang the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_does_not_hang_when_the_database_freezes() {
    let Some(cfg) = database_url("verify_does_not_hang_when_the_database_freezes") else {
        return;
    };
    let org = org();
    let boss = manager_of(&org);
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let store = PostgresStore::options()
        .statement_timeout(Duration::from_secs(1))
        .pool_wait_timeout(Duration::from_secs(1))
        .connect_and_migrate(&conninfo(
            &cfg,
            &app("frozen-verify"),
            Some(proxy.addr),
            None,
        ))
        .await
        .unwrap();
    let node = KeyManager::builder(store, keyring())
        .cache_fallback_ttl(Duration::from_secs(1))
        .serve_stale_while_store_unreachable(Duration::from_secs(600))
        .build()
        .unwrap();
    let (key, _) = node
        .generate(&boss, GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    proxy.set_frozen(true);
    // Past the last proof + the fallback TTL: the verify now asks the store.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        node.verify(key.expose_secret(), &Scope::Prometheus),
    )
    .await;
    proxy.set_frozen(false);
    match r {
        Ok(res) => eprintln!(
            "verify ended after {:?}: {:?}",
            started.elapsed(),
            res.map(|_| ())
        ),
        Err(_) => panic!(
            "verify of a warm key was still pending after {:?} with the database frozen (statement_timeout 1 s, serve_stale 600 s)",
            started.elapsed()
        ),
    }
}

/// A statement the driver refuses to encode (a column whose type was changed by hand) is
/// `Query`, not `ConnectionLost` ("the next call uses a new connection"), which would send an
/// operator to the network instead of the schema.
#[tokio::test]
async fn an_encoding_error_is_not_reported_as_connection_lost() {
    let Some(cfg) = database_url("an_encoding_error_is_not_reported_as_connection_lost") else {
        return;
    };
    let table = format!("drift_{:08x}", random_u64() as u32);
    let store = PostgresStore::options()
        .table(&table)
        .connect_and_migrate(&conninfo(&cfg, &app("drift"), None, None))
        .await
        .unwrap();
    let admin = admin(&cfg, None).await;
    admin
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN last_used_at TYPE integer"
        ))
        .await
        .unwrap();
    let rec = api_keys::testkit::sample_record(random_id(), &org());
    let e = store.insert(rec).await.unwrap_err();
    assert_eq!(
        pg_error(&e).kind(),
        PostgresErrorKind::Query,
        "{}",
        chain(&e).replace('\n', " |")
    );
}

/// `schema_version` (a host's readiness probe) is a call on a pooled connection like any
/// other: against a frozen server it ends with `Unresponsive` within the statement timeout
/// plus a second (`PostgresOptions::statement_timeout`), never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_version_against_a_frozen_server_is_unresponsive_not_a_hang() {
    let Some(cfg) =
        database_url("schema_version_against_a_frozen_server_is_unresponsive_not_a_hang")
    else {
        return;
    };
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let store = PostgresStore::options()
        .statement_timeout(Duration::from_secs(1))
        .pool_size(1)
        .connect_and_migrate(&conninfo(
            &cfg,
            &app("frozen-version"),
            Some(proxy.addr),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 3);
    proxy.set_frozen(true);
    // The guard only keeps a failing run from hanging the suite.
    let r = tokio::time::timeout(Duration::from_secs(30), store.schema_version()).await;
    proxy.set_frozen(false);
    let e = r
        .expect("schema_version against a frozen server was still pending after 30 s")
        .unwrap_err();
    assert_eq!(pg_error(&e).kind(), PostgresErrorKind::Unresponsive);
    // Its connection was closed, never reused: the next call answers.
    assert_eq!(store.schema_version().await.unwrap(), 3);
}

/// `connect` at a node's start is bounded too: a server that stops answering while the
/// store checks its table name and schema (here: the connection that asks is held) fails
/// the start with `Unresponsive` instead of hanging it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_against_a_server_that_stops_answering_fails_not_hangs() {
    let Some(cfg) = database_url("connect_against_a_server_that_stops_answering_fails_not_hangs")
    else {
        return;
    };
    connect(&cfg, &app("migrated")).await;
    for pattern in [&b"pg_get_keywords"[..], b"max(version)"] {
        let (addr, _relays) = super::feed::hold_first(&cfg, pattern).await;
        let url = conninfo(&cfg, &app("held-start"), Some(addr), None);
        // The guard only keeps a failing run from hanging the suite.
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            PostgresStore::options()
                .statement_timeout(Duration::from_secs(1))
                .connect(&url),
        )
        .await
        .unwrap_or_else(|_| panic!("connect still pending after 30 s (held at {pattern:?})"));
        let e = r.expect_err("connect through a held connection succeeded");
        assert_eq!(pg_error(&e).kind(), PostgresErrorKind::Unresponsive);
    }
}

/// The same for `connect_and_migrate` (every node of a deploy may call it at start): a
/// server that stops answering during the migration's transaction fails it with
/// `Unresponsive`, and the held transaction is rolled back when its connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_against_a_server_that_stops_answering_fails_not_hangs() {
    let Some(cfg) =
        database_url("a_migration_against_a_server_that_stops_answering_fails_not_hangs")
    else {
        return;
    };
    let (addr, relays) = super::feed::hold_first(&cfg, b"pg_advisory_xact_lock").await;
    let url = conninfo(&cfg, &app("held-migrate"), Some(addr), None);
    // The guard only keeps a failing run from hanging the suite.
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        PostgresStore::options()
            .statement_timeout(Duration::from_secs(1))
            .connect_and_migrate(&url),
    )
    .await
    .expect("connect_and_migrate still pending after 60 s");
    let e = r.expect_err("a migration through a held connection succeeded");
    assert_eq!(pg_error(&e).kind(), PostgresErrorKind::Unresponsive);
    drop(relays);
    // Nothing was left locked: the next node migrates.
    connect(&cfg, &app("after-held-migrate")).await;
}

/// `connect_timeout(Duration::ZERO)` (libpq's "no limit", as a host may pass it through) made
/// every connection attempt time out at once: the store could not connect at all. Zero is the
/// default now, as the URL's `connect_timeout=0` already was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_connect_timeout_is_the_default_not_an_instant_failure() {
    let Some(cfg) = database_url("a_zero_connect_timeout_is_the_default_not_an_instant_failure")
    else {
        return;
    };
    let store = PostgresStore::options()
        .connect_timeout(Duration::ZERO)
        .connect_and_migrate(&conninfo(&cfg, &app("zero-connect"), None, None))
        .await
        .unwrap();
    let rec = api_keys::testkit::sample_record(random_id(), &org());
    store.insert(rec.clone()).await.unwrap();
    assert!(store.get(&rec.id).await.unwrap().is_some());
}
