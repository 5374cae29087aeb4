//! Connection strings, URLs and table names: clear errors and stores in tables of their own.

use super::*;

#[tokio::test]
async fn bad_urls_are_clear_errors() {
    let Some(cfg) = database_url("bad_urls_are_clear_errors") else {
        return;
    };
    // Unparsable, with a password that must not be echoed.
    for url in [
        "postgres://alice:hunter2@localhost:notaport/db",
        "host=localhost password=hunter2 sslmode=sometimes",
        "this is not a connection string at all",
    ] {
        let e = PostgresStore::connect_and_migrate(url)
            .await
            .expect_err(url);
        assert_eq!(pg_error(&e).kind(), PostgresErrorKind::InvalidUrl, "{url}");
        let text = chain(&e);
        assert!(text.contains("invalid PostgreSQL connection URL"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "the error echoes the password: {text}"
        );
    }
    // Nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = PostgresStore::connect_and_migrate(&format!(
        "postgres://postgres:hunter2@127.0.0.1:{port}/x?connect_timeout=5"
    ))
    .await
    .expect_err("connected to a closed port");
    assert_eq!(pg_error(&e).kind(), PostgresErrorKind::Connect);
    assert!(!chain(&e).contains("hunter2"));
    // A real server, a database that does not exist.
    let e = PostgresStore::connect_and_migrate(&conninfo(
        &cfg,
        &app("bad-db"),
        None,
        Some("no_such_database_here"),
    ))
    .await
    .expect_err("connected to a missing database");
    assert_eq!(pg_error(&e).kind(), PostgresErrorKind::Connect);
    let text = chain(&e);
    assert!(text.contains("no_such_database_here"), "{text}");
}

/// A `key=value` string with an unquoted space in the password: the driver's parse error
/// quotes the next word, so it is never passed on.
#[tokio::test]
async fn a_malformed_connection_string_never_echoes_the_password() {
    let Some(cfg) = database_url("a_malformed_connection_string_never_echoes_the_password") else {
        return;
    };
    let (host, port) = tcp_target(&cfg);
    let url = format!(
        "host={host} port={port} user=postgres password=correct Horse battery=staple dbname=x"
    );
    let e = PostgresStore::connect(&url)
        .await
        .expect_err("a malformed string was accepted");
    assert_eq!(pg_error(&e).kind(), PostgresErrorKind::InvalidUrl);
    let text = format!("{}\n{e:?}", chain(&e));
    for word in ["correct", "Horse", "battery", "staple"] {
        assert!(
            !text.contains(word),
            "the error echoes part of the password ({word}): {text}"
        );
    }
}

/// A store in a table of its own: its own schema table, trigger and change channel; keys of
/// the default table are not there, and a revoke reaches another node through its channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_a_table_of_its_own() {
    let Some(cfg) = database_url("a_store_in_a_table_of_its_own") else {
        return;
    };
    let url = conninfo(&cfg, &app("table"), None, None);
    let table = format!("keys_{:08x}", random_u64() as u32);
    let opts = PostgresStore::options().table(&table);
    let store = opts.connect_and_migrate(&url).await.unwrap();
    assert_eq!(store.table(), table);
    api_keys::testkit::run(&store).await.unwrap();
    let node_a = KeyManager::builder(store, keyring()).build().unwrap();
    let node_b = KeyManager::builder(opts.connect(&url).await.unwrap(), keyring())
        .build()
        .unwrap();
    let default = KeyManager::builder(connect(&cfg, &app("default")).await, keyring())
        .build()
        .unwrap();
    let org = org();
    let a = manager_of(&org);
    let (key, info) = node_a
        .generate(&a, GenerateRequest::new("own").scope(Scope::Scim))
        .await
        .unwrap();
    assert!(default.list(&a).await.unwrap().is_empty());
    assert!(matches!(
        default.verify(key.expose_secret(), &Scope::Scim).await,
        Err(Error::InvalidKey)
    ));
    node_b
        .verify(key.expose_secret(), &Scope::Scim)
        .await
        .unwrap();
    node_a.revoke(&a, &info.id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match node_b.verify(key.expose_secret(), &Scope::Scim).await {
            Err(Error::Revoked) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            other => panic!("the revoke did not reach the other node within 1 s: {other:?}"),
        }
    }
    let e = PostgresStore::options()
        .table("Bad-Name")
        .connect(&url)
        .await
        .unwrap_err();
    assert_eq!(pg_error(&e).kind(), PostgresErrorKind::InvalidTable);
}

/// `table()` documents `[a-z_][a-z0-9_]{0,47}` as the valid names and
/// `InvalidTable` for any other; a reserved word inside that pattern is accepted and then
/// breaks the migration with a syntax error.
#[tokio::test]
async fn a_table_name_the_pattern_accepts_works_or_is_invalid_table() {
    let Some(cfg) = database_url("a_table_name_the_pattern_accepts_works_or_is_invalid_table")
    else {
        return;
    };
    let url = conninfo(&cfg, &app("reserved"), None, None);
    for name in ["order", "user", "table"] {
        match PostgresStore::options()
            .table(name)
            .connect_and_migrate(&url)
            .await
        {
            Ok(_) => {}
            Err(e) => assert_eq!(
                pg_error(&e).kind(),
                PostgresErrorKind::InvalidTable,
                "table({name:?}): {}",
                chain(&e).replace('\n', " |")
            ),
        }
    }
}

/// A statement timeout longer than PostgreSQL's largest (`i32::MAX` ms, about 24.8 days) —
/// e.g. 30 days for a batch job, or `Duration::MAX` for "practically none" — is the
/// largest the server takes, not a refused option that fails every connection as
/// `Connect` ("cannot connect to PostgreSQL").
#[tokio::test]
async fn a_statement_timeout_beyond_the_servers_range_still_connects() {
    let Some(cfg) = database_url("a_statement_timeout_beyond_the_servers_range_still_connects")
    else {
        return;
    };
    let url = conninfo(&cfg, &app("long-timeout"), None, None);
    for d in [Duration::from_secs(30 * 86_400), Duration::MAX] {
        let store = PostgresStore::options()
            .statement_timeout(d)
            .connect_and_migrate(&url)
            .await
            .unwrap_or_else(|e| panic!("statement_timeout({d:?}): {}", chain(&e)));
        assert!(store.list(&org()).await.unwrap().is_empty());
    }
}

/// A pool size from a host's configuration is never a panic: far above what any PostgreSQL
/// server accepts (`max_connections` is at most 262 143) it is that bound, and the store
/// connects and works.
#[tokio::test]
async fn an_absurd_pool_size_is_bounded_not_a_panic() {
    let Some(cfg) = database_url("an_absurd_pool_size_is_bounded_not_a_panic") else {
        return;
    };
    let url = conninfo(&cfg, &app("huge-pool"), None, None);
    let store = PostgresStore::options()
        .pool_size(usize::MAX)
        .connect_and_migrate(&url)
        .await
        .unwrap();
    assert!(store.list(&org()).await.unwrap().is_empty());
}
