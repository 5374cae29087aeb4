//! The store's contract: the testkit, races with remote revokes, key classes, bad rows, last use.

use super::*;

#[tokio::test]
async fn testkit_conforms() {
    let Some(cfg) = database_url("testkit_conforms") else {
        return;
    };
    let store = connect(&cfg, &app("testkit")).await;
    api_keys::testkit::run(&store).await.unwrap();
    // Another node's writes reach this one's feed and reads, and race its own atomically.
    let other = connect(&cfg, &app("testkit-other")).await;
    api_keys::testkit::change_feed_reports_writes_of_other_handles(&store, &other)
        .await
        .unwrap();
    api_keys::testkit::reads_follow_writes_of_other_handles(&store, &other)
        .await
        .unwrap();
    api_keys::testkit::writes_are_atomic_across_handles(&store, &other)
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 3);
}

/// Node B reads a record, node A revokes it and B hears of it, then B's read returns: B must
/// not cache what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_racing_a_remote_revoke_does_not_cache_the_old_record() {
    let Some(cfg) = database_url("a_lookup_racing_a_remote_revoke_does_not_cache_the_old_record")
    else {
        return;
    };
    let org = org();
    let boss = manager_of(&org);
    let node_a = KeyManager::builder(connect(&cfg, &app("race-a")).await, keyring())
        .build()
        .unwrap();
    let b_store = Arc::new(Observed::new(connect(&cfg, &app("race-b")).await));
    let node_b = KeyManager::builder(b_store.clone(), keyring())
        .cache_ttl(Duration::from_secs(60))
        .cache_fallback_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        b_store.feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("node B's feed never connected");
    let (key, info) = node_a
        .generate(&boss, GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();

    b_store.gate.arm();
    let racing = {
        let (node_b, token) = (node_b.clone(), key.expose_secret().to_string());
        tokio::spawn(async move { node_b.verify(&token, &Scope::Prometheus).await })
    };
    b_store.gate.reached().await; // B holds the pre-revoke record
    node_a.revoke(&boss, &info.id).await.unwrap();
    wait_until(Duration::from_secs(5), || {
        b_store.feed.events().iter().any(|e| {
            matches!(e, FeedEvent::Changed(c) if c.id == info.id && c.kind == ChangeKind::Updated)
        })
    })
    .await
    .expect("node B never heard of the revoke");
    b_store.gate.release();
    racing.await.unwrap().unwrap(); // began before the revoke: may succeed
    assert!(matches!(
        node_b.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

/// Hardening: a `sak` and a `sap` manager over one PostgreSQL table never accept each other's
/// keys, not even a `sak` token re-prefixed as `sap_` with its public checksum recomputed.
#[tokio::test]
async fn two_key_classes_in_one_table_never_accept_each_other() {
    let Some(cfg) = database_url("two_key_classes_in_one_table_never_accept_each_other") else {
        return;
    };
    let sak = KeyManager::builder(connect(&cfg, &app("sak")).await, keyring())
        .prefix("sak")
        .build()
        .unwrap();
    let sap = KeyManager::builder(connect(&cfg, &app("sap")).await, keyring())
        .prefix("sap")
        .build()
        .unwrap();
    let org = org();
    let a = manager_of(&org);
    let (key, info) = sak
        .generate(&a, GenerateRequest::new("system").scope(Scope::Scim))
        .await
        .unwrap();
    let (_, pool) = sap
        .generate(&a, GenerateRequest::new("pool").scope(Scope::Scim))
        .await
        .unwrap();
    let t = key.expose_secret();
    let moved = common::fix_checksum(&format!("sap_{}", &t[4..t.len() - 6]));
    assert!(matches!(
        sap.verify(&moved, &Scope::Scim).await,
        Err(Error::InvalidKey)
    ));
    let ids: Vec<KeyId> = sap.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(ids, vec![pool.id]);
    assert!(matches!(
        sap.delete(&a, &info.id).await,
        Err(Error::NotFound)
    ));
    sak.verify(t, &Scope::Scim).await.unwrap();
}

/// Hardening: a row damaged with plain SQL fails closed and is reported, but `list`,
/// `generate` and its own `delete` keep working, and the test kit's duty holds.
#[tokio::test]
async fn one_bad_row_never_blocks_an_organization() {
    let Some(cfg) = database_url("one_bad_row_never_blocks_an_organization") else {
        return;
    };
    let store = connect(&cfg, &app("damaged")).await;
    let sql = admin(&cfg, None).await;
    let damage = |id: KeyId| {
        let sql = &sql;
        async move {
            sql.execute(
                "UPDATE api_keys SET revision = revision + 7 WHERE id = $1",
                &[&id.to_string()],
            )
            .await
            .unwrap();
        }
    };
    api_keys::testkit::damaged_rows_stay_deletable(&store, damage)
        .await
        .unwrap();
    let m = KeyManager::builder(store, keyring()).build().unwrap();
    let org = org();
    let a = manager_of(&org);
    let prom = || GenerateRequest::new("k").scope(Scope::Prometheus);
    let (bad_key, bad) = m.generate(&a, prom()).await.unwrap();
    let (_, good) = m.generate(&a, prom()).await.unwrap();
    damage(bad.id).await;
    let cold = KeyManager::builder(connect(&cfg, &app("damaged2")).await, keyring())
        .build()
        .unwrap();
    assert!(matches!(
        cold.verify(bad_key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Integrity)
    ));
    let ids: Vec<KeyId> = cold.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(ids, vec![good.id]);
    cold.generate(&a, prom()).await.unwrap();
    cold.delete(&a, &bad.id).await.unwrap();
    assert!(cold.store().get(&bad.id).await.unwrap().is_none());
}

/// Last use never holds up a verify: with writes to the table blocked
/// (`LOCK TABLE ... IN EXCLUSIVE MODE` from another connection, reads still allowed),
/// verifies of never-used keys complete and none fails, although the batched last-use
/// write is stuck; the uses are written once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_do_not_wait_on_last_use_while_writes_are_blocked() {
    let Some(cfg) = database_url("verifies_do_not_wait_on_last_use_while_writes_are_blocked")
    else {
        return;
    };
    let org = org();
    let actor = manager_of(&org);
    let node = KeyManager::builder(connect(&cfg, &app("locked")).await, keyring())
        .last_use_flush_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut keys = Vec::new();
    for i in 0..12 {
        let (k, info) = node
            .generate(
                &actor,
                GenerateRequest::new(format!("k{i}")).scope(Scope::Prometheus),
            )
            .await
            .unwrap();
        keys.push((k, info.id));
    }
    let mut locker = admin(&cfg, None).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE api_keys IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    for (k, _) in &keys {
        // Before, an unused key's verify waited on its last-use write for as long as the
        // lock was held, and stuck writes then starved the pool.
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            node.verify(k.expose_secret(), &Scope::Prometheus),
        )
        .await
        .expect("a verify waited on the blocked last-use write");
        r.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let id0 = keys[0].1.to_string();
    let before: Option<i64> = admin(&cfg, None)
        .await
        .query_one("SELECT last_used_at FROM api_keys WHERE id = $1", &[&id0])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, None, "the write went through despite the lock");
    tx.rollback().await.unwrap();
    let check = admin(&cfg, None).await;
    let ids: Vec<String> = keys.iter().map(|(_, id)| id.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = check
            .query_one(
                "SELECT count(*) FROM api_keys WHERE id = ANY($1) AND last_used_at IS NOT NULL",
                &[&ids],
            )
            .await
            .unwrap()
            .get(0);
        if n == ids.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "last uses never reached the table"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report(&format!(
        "postgres writes blocked by LOCK TABLE: {} verifies of unused keys took {took:?} in all (with 50 ms pauses), none failed",
        keys.len()
    ));
}

/// A row whose id column is no key id (a hand insert, a botched restore) is skipped and
/// reported like any other row that does not decode: it blocks neither its organization's
/// `list` nor a `sweep` or `rewrap` over the whole table (README: "One bad row never blocks
/// an organization or a rotation").
#[tokio::test]
async fn a_row_whose_id_is_no_key_id_blocks_neither_list_nor_sweep() {
    let Some(cfg) = database_url("a_row_whose_id_is_no_key_id_blocks_neither_list_nor_sweep")
    else {
        return;
    };
    let url = conninfo(&cfg, &app("badid"), None, None);
    let table = format!("badid_{:08x}", random_u64() as u32);
    let store = PostgresStore::options()
        .table(&table)
        .connect_and_migrate(&url)
        .await
        .unwrap();
    let m = KeyManager::builder(store, keyring()).build().unwrap();
    let org = org();
    let a = manager_of(&org);
    let (_, good) = m
        .generate(&a, GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    let sql = admin(&cfg, None).await;
    // Sorted before every key id ('0' < every base62 digit but none), and one after them all.
    for junk in ["!not-a-key", "~not-a-key"] {
        sql.execute(
            &format!(
                "INSERT INTO {table} (id, org, revision, record) \
                 SELECT $1, org, revision, record FROM {table} WHERE id = $2"
            ),
            &[&junk, &good.id.to_string()],
        )
        .await
        .unwrap();
    }
    let ids: Vec<KeyId> = m.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(ids, vec![good.id]);
    let scanned = m.store().scan(None, 10).await.unwrap();
    assert_eq!(
        scanned.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![good.id]
    );
    // A page of skipped rows only is not the end of the table.
    let first = m.store().scan(None, 1).await.unwrap();
    assert_eq!(
        first.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![good.id]
    );
    assert!(m.store().scan(Some(&good.id), 1).await.unwrap().is_empty());
    let report = m.sweep().await.unwrap();
    assert_eq!(report.scanned, 1);
    m.rewrap().await.unwrap();
    sql.batch_execute(&format!(
        "DROP TABLE {table}; DROP TABLE {table}_schema; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}

/// An organization whose id holds a NUL (U+0000) has no keys — no key can be generated for
/// it, and PostgreSQL cannot store one — so its manager's `list` is empty, as with every
/// other store, not a store error (a 500 and a `store_errors_total` alarm any such actor
/// could raise).
#[tokio::test]
async fn an_organization_id_with_nul_lists_no_keys() {
    let Some(cfg) = database_url("an_organization_id_with_nul_lists_no_keys") else {
        return;
    };
    let m = KeyManager::builder(connect(&cfg, &app("nul-org")).await, keyring())
        .build()
        .unwrap();
    let a = manager_of(&OrgId::new("acme\0evil"));
    assert!(m.list(&a).await.unwrap().is_empty());
    assert!(
        m.expiring_within(&a, time::Duration::days(30))
            .await
            .unwrap()
            .is_empty()
    );
    let m = KeyManager::builder(api_keys::MemoryStore::new(), keyring())
        .build()
        .unwrap();
    assert!(m.list(&a).await.unwrap().is_empty());
}

/// A page that lost a skipped row (an id column that is no key id) to its `limit` must still
/// be full while records follow: `expiring_all` and the CLI's rewrap count stop at the first
/// short page, so a short page in the middle of the table hid every record after it (the
/// SQLite store does not count skipped rows towards the page).
#[tokio::test]
async fn a_skipped_row_does_not_shorten_a_scan_page() {
    let Some(cfg) = database_url("a_skipped_row_does_not_shorten_a_scan_page") else {
        return;
    };
    let url = conninfo(&cfg, &app("badid-page"), None, None);
    let table = format!("badidp_{:08x}", random_u64() as u32);
    let store = PostgresStore::options()
        .table(&table)
        .connect_and_migrate(&url)
        .await
        .unwrap();
    let m = KeyManager::builder(store, keyring()).build().unwrap();
    let a = manager_of(&org());
    let mut ids = Vec::new();
    for name in ["k1", "k2"] {
        let (_, k) = m
            .generate(&a, GenerateRequest::new(name).scope(Scope::Prometheus))
            .await
            .unwrap();
        ids.push(k.id);
    }
    ids.sort();
    let sql = admin(&cfg, None).await;
    // Sorted before every key id: the first page's rows are this one and the first key.
    sql.execute(
        &format!(
            "INSERT INTO {table} (id, org, revision, record) \
             SELECT '!not-a-key', org, revision, record FROM {table} WHERE id = $1"
        ),
        &[&ids[0].to_string()],
    )
    .await
    .unwrap();
    let page = m.store().scan(None, 2).await.unwrap();
    let got: Vec<KeyId> = page.iter().map(|r| r.id).collect();
    sql.batch_execute(&format!(
        "DROP TABLE {table}; DROP TABLE {table}_schema; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
    assert_eq!(got, ids, "a short page ends every pager that stops on one");
}

/// A skipped row (an id column that is no key id) is counted in
/// `api_keys_store_errors_total{kind="corrupt"}` as the SQLite store counts it: on
/// PostgreSQL it was only logged, so an operator alerting on that counter never learned of
/// a row that every `list` and `scan` leaves out.
#[cfg(feature = "metrics")]
#[test]
fn a_skipped_row_is_counted_as_a_store_error() {
    let Some(cfg) = database_url("a_skipped_row_is_counted_as_a_store_error") else {
        return;
    };
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let table = format!("badidm_{:08x}", random_u64() as u32);
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let url = conninfo(&cfg, &app("badid-metric"), None, None);
                let store = PostgresStore::options()
                    .table(&table)
                    .connect_and_migrate(&url)
                    .await
                    .unwrap();
                let sql = admin(&cfg, None).await;
                sql.execute(
                    &format!(
                        "INSERT INTO {table} (id, org, revision, record) \
                         VALUES ('!not-a-key', 'acme', 1, '{{}}')"
                    ),
                    &[],
                )
                .await
                .unwrap();
                assert!(store.scan(None, 10).await.unwrap().is_empty());
                sql.batch_execute(&format!(
                    "DROP TABLE {table}; DROP TABLE {table}_schema; DROP FUNCTION {table}_notify()"
                ))
                .await
                .unwrap();
            });
    });
    let corrupt: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| {
            k.key().name() == api_keys::metrics::STORE_ERRORS_TOTAL
                && k.key().labels().any(|l| l.value() == "corrupt")
        })
        .map(|(_, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(corrupt, 1, "the skipped row is counted once");
}
