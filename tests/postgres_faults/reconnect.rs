//! A feed reconnect that misses a notification (connections refused, the feed's backend terminated).

use super::*;

/// An admin connection to the `postgres` database of the same server (it stays usable while
/// the test's database refuses connections).
async fn admin_of(url: &str) -> (tokio_postgres::Client, String) {
    let mut cfg: tokio_postgres::Config = url.parse().unwrap();
    let db = cfg.get_dbname().unwrap().to_string();
    cfg.dbname("postgres");
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, db)
}

/// Terminates every backend whose `application_name` is `name`, and waits until they are gone.
async fn terminate(admin: &tokio_postgres::Client, name: &str) {
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{name} still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lets the test's database accept connections again when dropped (also on failure).
struct AllowConnections {
    url: String,
    db: String,
}

impl Drop for AllowConnections {
    fn drop(&mut self) {
        let (url, db) = (self.url.clone(), self.db.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let (admin, _) = admin_of(&url).await;
                    allow_connections(&admin, &db, true).await;
                });
        })
        .join()
        .unwrap();
    }
}

/// Two nodes on one database, each with a fallback TTL of `bound` (1 s): A, and B, which opted
/// into stale serving (120 s) and whose audit is kept; an organization and its manager.
struct Nodes {
    org: OrgId,
    actor: Actor,
    bound: Duration,
    a: KeyManager<PostgresStore>,
    b: KeyManager<PostgresStore>,
    /// B's application name (its feed's is `{b_app}-feed`).
    b_app: String,
    b_audit: Recorder,
}

async fn two_nodes(url: &str) -> Nodes {
    let org = OrgId::new(format!("faults-{:016x}", random_u64()));
    let actor = Actor::manager(org.clone(), UserId::new("alice"));
    let bound = Duration::from_secs(1);
    let a = manager(
        PostgresStore::connect_and_migrate(&with_app(url, &app("node-a")))
            .await
            .unwrap(),
        bound,
        Duration::ZERO,
        Recorder::default(),
    )
    .await;
    let b_app = app("node-b");
    let b_audit = Recorder::default();
    let b = manager(
        PostgresStore::connect_and_migrate(&with_app(url, &b_app))
            .await
            .unwrap(),
        bound,
        Duration::from_secs(120),
        b_audit.clone(),
    )
    .await;
    Nodes {
        org,
        actor,
        bound,
        a,
        b,
        b_app,
        b_audit,
    }
}

async fn allow_connections(admin: &tokio_postgres::Client, db: &str, allow: bool) {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS {allow}"
        ))
        .await
        .unwrap();
}

/// Node B's feed connection is terminated and cannot come back until node A's revoke has
/// committed (the database refuses new connections meanwhile): the notification is lost.
/// B's feed then reconnects and proves itself again, with the store reachable all along.
/// Seconds later B's store becomes unreachable: B, which opted into stale serving, must not
/// accept the key revoked before that outage (its entry was read before the reconnect).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_missed_while_the_feed_reconnected_is_not_served_stale_later() {
    let Some(server) =
        server("a_revoke_missed_while_the_feed_reconnected_is_not_served_stale_later")
    else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let Nodes {
        org,
        actor,
        bound,
        a,
        b,
        b_app,
        b_audit,
    } = two_nodes(&server.url).await;
    let token = keys(&a, &org, 1).await.remove(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = b.verify(&token, &read()).await.unwrap().key_id().to_owned();

    let (admin, db) = admin_of(&server.url).await;
    let feed_name = format!("{b_app}-feed");
    // B's feed is cut off and cannot reconnect while A revokes.
    allow_connections(&admin, &db, false).await;
    let guard = AllowConnections {
        url: server.url.clone(),
        db: db.clone(),
    };
    terminate(&admin, &feed_name).await;
    a.revoke(&actor, &id).await.unwrap();
    drop(guard);
    // B's feed comes back (and proves itself); the store was reachable all along.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&feed_name],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "B's feed never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(bound + Duration::from_millis(500)).await;

    // Later, B's store becomes unreachable.
    allow_connections(&admin, &db, false).await;
    let _guard = AllowConnections {
        url: server.url.clone(),
        db,
    };
    terminate(&admin, &b_app).await;
    terminate(&admin, &feed_name).await;
    let after = b.verify(&token, &read()).await;
    assert!(
        after.is_err(),
        "node B accepted a key revoked on node A before B's store became unreachable"
    );
    assert_eq!(b_audit.count(&AuditAction::ServedStale), 0);
}

/// Node B's feed is cut off and cannot come back (the database refuses new connections), while
/// B's pooled connections still work. Node A revokes a key B has warm; B then reads another key
/// from the store, so B's store is demonstrably reachable after the revoke. Only later does B's
/// store become unreachable: B, which opted into stale serving, must not accept the key revoked
/// before that outage (the change was made while B could read the store).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_missed_while_the_feed_was_down_and_the_store_answered_is_not_served_stale() {
    let Some(server) = server(
        "a_revoke_missed_while_the_feed_was_down_and_the_store_answered_is_not_served_stale",
    ) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let Nodes {
        org,
        actor,
        bound,
        a,
        b,
        b_app,
        b_audit,
    } = two_nodes(&server.url).await;
    let mut tokens = keys(&a, &org, 2).await;
    let (revoked, other) = (tokens.remove(0), tokens.remove(0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = b
        .verify(&revoked, &read())
        .await
        .unwrap()
        .key_id()
        .to_owned();
    b.verify(&other, &read()).await.unwrap();

    let (admin, db) = admin_of(&server.url).await;
    let feed_name = format!("{b_app}-feed");
    // B's feed is cut off for good; its pooled connections (and A's) stay up.
    allow_connections(&admin, &db, false).await;
    let _guard = AllowConnections {
        url: server.url.clone(),
        db: db.clone(),
    };
    terminate(&admin, &feed_name).await;
    a.revoke(&actor, &id).await.unwrap();
    // Past the feed's bound, B reads the other key from its store: the store answers.
    tokio::time::sleep(bound + Duration::from_millis(500)).await;
    b.verify(&other, &read()).await.unwrap();
    assert_eq!(b_audit.count(&AuditAction::ServedStale), 0);

    // Later, B's store becomes unreachable.
    terminate(&admin, &b_app).await;
    let after = b.verify(&revoked, &read()).await;
    assert!(
        after.is_err(),
        "node B accepted a key revoked on node A while B's store still answered, once that store became unreachable"
    );
    assert_eq!(b_audit.count(&AuditAction::ServedStale), 0);
}

/// As `a_revoke_missed_while_the_feed_was_down_and_the_store_answered_is_not_served_stale`,
/// B's store answering after the revoke a management read instead of a verification: B's
/// admin reads the key (`get`) and is told it is revoked. B's cache was not told: once B's
/// store became unreachable, B accepted that very key (served stale), although its own store
/// had answered after the revoke (the README: an entry read before the store's last answer
/// during a feed outage is not served stale).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_missed_while_the_feed_was_down_and_read_by_the_admin_is_not_served_stale() {
    let Some(server) =
        server("a_revoke_missed_while_the_feed_was_down_and_read_by_the_admin_is_not_served_stale")
    else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let Nodes {
        org,
        actor,
        bound,
        a,
        b,
        b_app,
        b_audit,
    } = two_nodes(&server.url).await;
    let revoked = keys(&a, &org, 1).await.remove(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = b
        .verify(&revoked, &read())
        .await
        .unwrap()
        .key_id()
        .to_owned();

    let (admin, db) = admin_of(&server.url).await;
    let feed_name = format!("{b_app}-feed");
    // B's feed is cut off for good; its pooled connections (and A's) stay up.
    allow_connections(&admin, &db, false).await;
    let _guard = AllowConnections {
        url: server.url.clone(),
        db: db.clone(),
    };
    terminate(&admin, &feed_name).await;
    a.revoke(&actor, &id).await.unwrap();
    // Past the feed's bound, B's admin reads the key from B's store: revoked.
    tokio::time::sleep(bound + Duration::from_millis(500)).await;
    let info = b.get(&actor, &id).await.unwrap();
    assert!(info.revoked_at.is_some(), "{info:?}");

    // Later, B's store becomes unreachable.
    terminate(&admin, &b_app).await;
    let after = b.verify(&revoked, &read()).await;
    assert!(
        after.is_err(),
        "node B accepted a key its own store had told it was revoked, once that store became unreachable"
    );
    assert_eq!(b_audit.count(&AuditAction::ServedStale), 0);
}
