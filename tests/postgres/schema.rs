//! Migrations: fresh databases, concurrent and newer schemas, least-privilege roles, host functions.

use super::*;

/// On a fresh database: nodes starting together migrate once, without errors; a schema
/// newer than this crate's is refused and left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_database_concurrent_migration_and_newer_schema() {
    let Some(cfg) = database_url("fresh_database_concurrent_migration_and_newer_schema") else {
        return;
    };
    let admin = admin(&cfg, None).await;
    let db = format!("api_keys_t_{:016x}", random_u64());
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let url = conninfo(&cfg, &app("fresh"), None, Some(&db));
    let nodes: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect_and_migrate(&url).await })
        })
        .collect();
    for n in nodes {
        let store = n.await.unwrap().unwrap();
        assert_eq!(store.schema_version().await.unwrap(), 3);
    }
    let in_db = admin_db(&cfg, &db).await;
    in_db
        .batch_execute("UPDATE api_keys_schema SET version = 9")
        .await
        .unwrap();
    let e = PostgresStore::connect_and_migrate(&url)
        .await
        .expect_err("a newer schema was accepted");
    assert_eq!(
        pg_error(&e).kind(),
        PostgresErrorKind::NewerSchema {
            found: 9,
            supported: 3
        }
    );
    assert!(chain(&e).contains("upgrade api-keys"));
    let v: i32 = in_db
        .query_one("SELECT version FROM api_keys_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 9);
    drop(in_db);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

async fn admin_db(cfg: &tokio_postgres::Config, db: &str) -> tokio_postgres::Client {
    admin(cfg, Some(db)).await
}

/// `connect` only checks the schema; `migrate` is its own step; a role with nothing but
/// SELECT/INSERT/UPDATE/DELETE on the tables (and SELECT on the version table) then runs
/// everything: the conformance suite, the change feed, a manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_role_connects_after_migrate_ran_as_the_owner() {
    let Some(cfg) = database_url("a_least_privilege_role_connects_after_migrate_ran_as_the_owner")
    else {
        return;
    };
    let admin = admin(&cfg, None).await;
    let tag = format!("{:016x}", random_u64());
    let db = format!("api_keys_lp_{tag}");
    let role = format!("api_keys_app_{tag}");
    for sql in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE ROLE {role} LOGIN PASSWORD 'app-secret'"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let owner_url = conninfo(&cfg, &app("owner"), None, Some(&db));
    let mut app_cfg = cfg.clone();
    app_cfg.user(&role).password("app-secret");
    let app_url = conninfo(&app_cfg, &app("least"), None, Some(&db));

    // Before migrate: connect refuses, changing nothing.
    let e = PostgresStore::connect(&owner_url)
        .await
        .expect_err("connect accepted a database without the schema");
    assert_eq!(
        pg_error(&e).kind(),
        PostgresErrorKind::SchemaOutdated {
            found: 0,
            required: 3
        }
    );
    assert!(
        chain(&e).contains("run PostgresStore::migrate"),
        "{}",
        chain(&e)
    );
    let in_db = admin_db(&cfg, &db).await;
    let tables: i64 = in_db
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'api_keys%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "connect created tables");
    // The least-privilege role cannot migrate.
    assert!(PostgresStore::migrate(&app_url).await.is_err());

    PostgresStore::migrate(&owner_url).await.unwrap();
    in_db
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {db} TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT ON api_keys_schema TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON api_keys TO {role};"
        ))
        .await
        .unwrap();
    let store = PostgresStore::connect(&app_url).await.unwrap();
    api_keys::testkit::run(&store).await.unwrap();
    // Migrating a current schema changes nothing, so the role may call it too.
    PostgresStore::connect_and_migrate(&app_url).await.unwrap();
    let feed_store = Arc::new(Observed::new(store.clone()));
    let m = KeyManager::builder(feed_store.clone(), keyring())
        .build()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        feed_store.feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the least-privilege role's change feed never connected");
    let org = org();
    let (key, _) = m
        .generate(
            &manager_of(&org),
            GenerateRequest::new("k").scope(Scope::Prometheus),
        )
        .await
        .unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    drop((m, feed_store, store, in_db));
    for sql in [
        format!("DROP DATABASE {db} WITH (FORCE)"),
        format!("DROP ROLE {role}"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
}

/// the migration's `CREATE OR REPLACE FUNCTION <table>_notify()` silently replaces a
/// host function of that name (e.g. table `audit` and the host's own `audit_notify()`).
#[tokio::test]
async fn migration_does_not_replace_a_host_function() {
    let Some(cfg) = database_url("migration_does_not_replace_a_host_function") else {
        return;
    };
    let admin = admin(&cfg, None).await;
    let table = format!("host_{:08x}", random_u64() as u32);
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_notify('host_channel', 'host'); RETURN NULL; END $$;"
        ))
        .await
        .unwrap();
    let r = PostgresStore::options()
        .table(&table)
        .connect_and_migrate(&conninfo(&cfg, &app("clobber"), None, None))
        .await;
    let body: String = admin
        .query_one(
            "SELECT prosrc FROM pg_proc WHERE proname = $1",
            &[&format!("{table}_notify")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        r.is_err() || body.contains("host_channel"),
        "migration succeeded and replaced the host's {table}_notify(): now {}",
        body.trim().lines().next().unwrap_or("")
    );
}
