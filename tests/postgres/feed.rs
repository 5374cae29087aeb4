//! The LISTEN/NOTIFY change feed: revokes, plain SQL, deletes and truncates reach every node.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_on_one_node_is_refused_on_another_within_a_second() {
    let Some(cfg) = database_url("a_revoke_on_one_node_is_refused_on_another_within_a_second")
    else {
        return;
    };
    let org = org();
    let admin_actor = manager_of(&org);
    let node_a = KeyManager::builder(connect(&cfg, &app("node-a")).await, keyring())
        .build()
        .unwrap();
    // Node B caches for a minute, and 10 s even without a feed: only the feed can make it
    // notice the revoke within a second.
    let b_store = Arc::new(Observed::new(connect(&cfg, &app("node-b")).await));
    let node_b = KeyManager::builder(b_store.clone(), keyring())
        .cache_ttl(Duration::from_secs(60))
        .cache_fallback_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        b_store.feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("node B's change feed never connected");

    let (key, info) = node_a
        .generate(
            &admin_actor,
            GenerateRequest::new("scraper").scope(Scope::Prometheus),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        node_b
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    assert_eq!(
        node_b.cached_records(),
        1,
        "node B serves the key from its cache"
    );

    let t0 = Instant::now();
    node_a.revoke(&admin_actor, &info.id).await.unwrap();
    let revoke_took = t0.elapsed();
    let seen = time_until_revoked(&node_b, key.expose_secret(), Duration::from_secs(5))
        .await
        .expect("node B still accepted the revoked key after 5 s");
    report(&format!(
        "postgres: revoke on node A took {revoke_took:?}; node B refused the key {seen:?} after the revoke returned"
    ));
    assert!(seen < Duration::from_secs(1), "took {seen:?}");
}

/// Polls `verify` until it gives the wanted outcome, at most `limit`.
async fn until_verify<S: KeyStore + 'static>(
    node: &KeyManager<S>,
    key: &str,
    limit: Duration,
    want: impl Fn(&Result<api_keys::Verified, Error>) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        if want(&node.verify(key, &Scope::Prometheus).await) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Rows changed with plain SQL (a host's own statement, a restore) reach every node's cache
/// through the table's trigger, not only changes this crate makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sql_changes_reach_every_node_within_a_second() {
    let Some(cfg) = database_url("plain_sql_changes_reach_every_node_within_a_second") else {
        return;
    };
    let org = org();
    let actor = manager_of(&org);
    let node_a = KeyManager::builder(connect(&cfg, &app("sql-a")).await, keyring())
        .build()
        .unwrap();
    // Node B would cache for a minute, and 10 s without a feed.
    let b_store = Arc::new(Observed::new(connect(&cfg, &app("sql-b")).await));
    let node_b = KeyManager::builder(b_store.clone(), keyring())
        .cache_ttl(Duration::from_secs(60))
        .cache_fallback_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        b_store.feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("node B's change feed never connected");
    let admin = admin(&cfg, None).await;
    let make = |name: &'static str| {
        node_a.generate(&actor, GenerateRequest::new(name).scope(Scope::Prometheus))
    };
    let (deleted, deleted_info) = make("deleted").await.unwrap();
    let (restored, restored_info) = make("restored").await.unwrap();
    for k in [&deleted, &restored] {
        node_b
            .verify(k.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }

    // An external DELETE.
    admin
        .execute(
            "DELETE FROM api_keys WHERE id = $1",
            &[&deleted_info.id.to_string()],
        )
        .await
        .unwrap();
    let seen_delete = until_verify(
        &node_b,
        deleted.expose_secret(),
        Duration::from_secs(1),
        |r| matches!(r, Err(Error::InvalidKey)),
    )
    .await
    .expect("node B still accepted a key deleted with plain SQL after 1 s");

    // An external UPDATE: a restore of the row as it was before a revoke.
    let id = restored_info.id.to_string();
    let before = admin
        .query_one(
            "SELECT revision, record::text FROM api_keys WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (revision, record): (i64, String) = (before.get(0), before.get(1));
    node_a.revoke(&actor, &restored_info.id).await.unwrap();
    until_verify(
        &node_b,
        restored.expose_secret(),
        Duration::from_secs(1),
        |r| matches!(r, Err(Error::Revoked)),
    )
    .await
    .expect("node B never saw the revoke");
    admin
        .execute(
            "UPDATE api_keys SET revision = $2, record = $3::text::jsonb WHERE id = $1",
            &[&id, &revision, &record],
        )
        .await
        .unwrap();
    let seen_update = until_verify(
        &node_b,
        restored.expose_secret(),
        Duration::from_secs(1),
        Result::is_ok,
    )
    .await
    .expect("node B still refused a key restored with plain SQL after 1 s");
    report(&format!(
        "postgres plain SQL: a DELETE was seen by another node after {seen_delete:?}, an UPDATE after {seen_update:?}"
    ));
}

#[tokio::test]
async fn the_feed_reports_every_committed_change_and_nothing_else() {
    let Some(cfg) = database_url("the_feed_reports_every_committed_change_and_nothing_else") else {
        return;
    };
    let writer = connect(&cfg, &app("feed-writer")).await;
    let watched = connect(&cfg, &app("feed-watch")).await;
    let (spy, log) = Spy::recorder();
    let listener: Arc<dyn ChangeListener> = spy.clone();
    assert!(watched.changes(Arc::downgrade(&listener)));
    wait_until(Duration::from_secs(10), || {
        log.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the feed never connected");

    let org = org();
    let rec = api_keys::testkit::sample_record(random_id(), &org);
    writer.insert(rec.clone()).await.unwrap();
    // Neither a duplicate insert nor a lost CAS nor a touch is a change.
    assert!(matches!(
        writer.insert(rec.clone()).await,
        Err(StoreError::Duplicate)
    ));
    let mut next = rec.clone();
    next.revision = 2;
    next.name = "renamed".into();
    writer.update(next.clone(), 1).await.unwrap();
    assert!(matches!(
        writer.update(next.clone(), 1).await,
        Err(StoreError::Conflict)
    ));
    writer
        .touch(&rec.id, api_keys::time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert!(writer.delete(&rec.id).await.unwrap());
    assert!(!writer.delete(&rec.id).await.unwrap());

    let expected = vec![
        Change {
            id: rec.id,
            revision: 1,
            kind: ChangeKind::Inserted,
        },
        Change {
            id: rec.id,
            revision: 2,
            kind: ChangeKind::Updated,
        },
        Change {
            id: rec.id,
            revision: 0,
            kind: ChangeKind::Deleted,
        },
    ];
    let mine = || -> Vec<Change> {
        log.events()
            .into_iter()
            .filter_map(|e| match e {
                FeedEvent::Changed(c) if c.id == rec.id => Some(c),
                _ => None,
            })
            .collect()
    };
    wait_until(Duration::from_secs(5), || mine().len() >= 3)
        .await
        .unwrap_or_else(|| panic!("feed delivered only {:?}", mine()));
    assert_eq!(mine(), expected);
    drop(spy);
}

#[tokio::test]
async fn the_feed_stops_when_its_listener_is_dropped() {
    let Some(cfg) = database_url("the_feed_stops_when_its_listener_is_dropped") else {
        return;
    };
    let name = app("feed-drop");
    let store = connect(&cfg, &name).await;
    let admin = admin(&cfg, None).await;
    let (spy, log) = Spy::recorder();
    let listener: Arc<dyn ChangeListener> = spy;
    store.changes(Arc::downgrade(&listener));
    wait_until(Duration::from_secs(10), || {
        log.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the feed never connected");
    let feed_name = format!("{name}-feed");
    assert_eq!(backends(&admin, &feed_name).await.len(), 1);
    drop(listener);
    assert!(
        wait_for_backends(&admin, &feed_name, 0, Duration::from_secs(10)).await,
        "the LISTEN connection outlived its listener"
    );
}

/// a change made in a session with `session_replication_role = replica` (logical
/// replication's apply worker, `pg_restore`/bulk loads that set it) commits without a
/// notification, while the feed keeps proving itself live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_in_replica_mode_reaches_the_feed() {
    let Some(cfg) = database_url("a_delete_in_replica_mode_reaches_the_feed") else {
        return;
    };
    let store = connect(&cfg, &app("replica")).await;
    let (spy, log) = Spy::recorder();
    let listener: Arc<dyn ChangeListener> = spy;
    store.changes(Arc::downgrade(&listener));
    wait_until(Duration::from_secs(10), || {
        log.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the feed never connected");
    let rec = api_keys::testkit::sample_record(random_id(), &org());
    store.insert(rec.clone()).await.unwrap();
    let admin = admin(&cfg, None).await;
    admin
        .batch_execute(&format!(
            "SET session_replication_role = replica; DELETE FROM api_keys WHERE id = '{}'",
            rec.id
        ))
        .await
        .unwrap();
    assert!(
        store.get(&rec.id).await.unwrap().is_none(),
        "the row is gone"
    );
    let heard = wait_until(Duration::from_secs(3), || {
        log.events().iter().any(|e| {
            matches!(e, FeedEvent::Changed(c) if c.id == rec.id && c.kind == ChangeKind::Deleted)
        })
    })
    .await;
    let events = log.events();
    assert!(
        heard.is_some(),
        "a committed DELETE was never reported; feed still live: connected={} disconnected={}",
        events
            .iter()
            .filter(|e| **e == FeedEvent::Connected)
            .count(),
        events
            .iter()
            .filter(|e| **e == FeedEvent::Disconnected)
            .count()
    );
}

/// a TRUNCATE (notified as `reset`) deletes every key, but the other node keeps
/// accepting a warm key from its cache for up to the fallback TTL: nothing is invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_is_seen_at_once_by_a_warm_node() {
    let Some(cfg) = database_url("a_truncate_is_seen_at_once_by_a_warm_node") else {
        return;
    };
    let url = conninfo(&cfg, &app("truncate"), None, None);
    let table = format!("keys_{:08x}", random_u64() as u32);
    let opts = PostgresStore::options().table(&table);
    let node_a = KeyManager::builder(opts.connect_and_migrate(&url).await.unwrap(), keyring())
        .build()
        .unwrap();
    let node_b = KeyManager::builder(opts.connect(&url).await.unwrap(), keyring())
        .build()
        .unwrap();
    let org = org();
    let (key, _) = node_a
        .generate(
            &manager_of(&org),
            GenerateRequest::new("t").scope(Scope::Scim),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    node_b
        .verify(key.expose_secret(), &Scope::Scim)
        .await
        .unwrap();
    let admin = admin(&cfg, None).await;
    admin
        .batch_execute(&format!("TRUNCATE {table}"))
        .await
        .unwrap();
    let truncated = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut accepted = 0;
    while truncated.elapsed() < Duration::from_millis(2000) {
        match node_b.verify(key.expose_secret(), &Scope::Scim).await {
            Ok(_) => accepted += 1,
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        accepted,
        0,
        "a key deleted by TRUNCATE was accepted {accepted} times, until {:?} after the TRUNCATE",
        truncated.elapsed()
    );
}

/// A relay in front of the server that holds, forever, the first connection whose client
/// sends `pattern` (neither forwarded nor closed: the socket just stops); dropping the
/// returned task list closes every relayed connection.
pub(super) async fn hold_first(
    cfg: &tokio_postgres::Config,
    pattern: &'static [u8],
) -> (SocketAddr, Relays) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = tcp_target(cfg);
    let held = Arc::new(AtomicBool::new(false));
    let relays = Relays::default();
    let tasks = relays.0.clone();
    let accept = tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (upstream, held) = (upstream.clone(), held.clone());
            let relay = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut ri, wi) = inbound.into_split();
                let (ro, mut wo) = outbound.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match ri.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if buf[..n].windows(pattern.len()).any(|w| w == pattern)
                            && !held.swap(true, Ordering::SeqCst)
                        {
                            std::future::pending::<()>().await;
                        }
                        if wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = wo.shutdown().await;
                };
                tokio::join!(up, pump(ro, wi, Arc::new(AtomicBool::new(false))));
            });
            tasks.lock().unwrap().push(relay);
        }
    });
    relays.0.lock().unwrap().push(accept);
    (addr, relays)
}

#[derive(Default)]
pub(super) struct Relays(Arc<Mutex<Vec<JoinHandle<()>>>>);

impl Drop for Relays {
    fn drop(&mut self) {
        for r in self.0.lock().unwrap().drain(..) {
            r.abort();
        }
    }
}

/// Whether a store whose connections go through `addr` gets its change feed connected.
async fn feed_connects(cfg: &tokio_postgres::Config, addr: SocketAddr, tag: &str) -> bool {
    let store = PostgresStore::connect_and_migrate(&conninfo(cfg, &app(tag), Some(addr), None))
        .await
        .unwrap();
    let (spy, log) = Spy::recorder();
    let listener: Arc<dyn ChangeListener> = spy;
    store.changes(Arc::downgrade(&listener));
    wait_until(Duration::from_secs(30), || {
        log.count(&FeedEvent::Connected) == 1
    })
    .await
    .is_some()
}

/// A feed connection that hangs at its `LISTEN` (a half-open socket, a backend stuck right
/// after connecting) is given up like one whose heartbeat stops, and replaced: the feed
/// reconnects instead of waiting on it until TCP keepalive, with the cache on its fallback
/// TTL all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_connection_that_hangs_at_listen_is_replaced() {
    let Some(cfg) = database_url("a_feed_connection_that_hangs_at_listen_is_replaced") else {
        return;
    };
    let (addr, _relays) = hold_first(&cfg, b"LISTEN ").await;
    assert!(
        feed_connects(&cfg, addr, "hung-listen").await,
        "the feed never got past a connection that hung at LISTEN"
    );
}

/// The same for a feed connection whose startup handshake hangs (the server accepted the
/// TCP connection and then stopped answering): the connect timeout covers the whole
/// connection, as for a pooled one, and the feed tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_connection_that_hangs_in_its_handshake_is_replaced() {
    let Some(cfg) = database_url("a_feed_connection_that_hangs_in_its_handshake_is_replaced")
    else {
        return;
    };
    // The startup message names the feed's connection `<application_name>-feed`.
    let (addr, _relays) = hold_first(&cfg, b"-feed\0").await;
    assert!(
        feed_connects(&cfg, addr, "hung-startup").await,
        "the feed never got past a connection whose handshake hung"
    );
}
