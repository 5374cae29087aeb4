//! Durability: the testkit, keys surviving a restart, and use without a tokio runtime.

use super::*;

#[tokio::test]
async fn testkit_conforms() {
    let dir = TempDir::new("testkit");
    let store = SqliteStore::open(dir.path("keys.db")).unwrap();
    api_keys::testkit::run(&store).await.unwrap();
    // Another process's writes to the file are read back, and race this one's atomically.
    let other = SqliteStore::open(dir.path("keys.db")).unwrap();
    api_keys::testkit::reads_follow_writes_of_other_handles(&store, &other)
        .await
        .unwrap();
    api_keys::testkit::writes_are_atomic_across_handles(&store, &other)
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 1);
    let path = dir.path("keys.db");
    api_keys::testkit::damaged_rows_stay_deletable(&store, |id| async move {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE api_keys SET revision = revision + 7 WHERE id = ?1",
            [id.to_string()],
        )
        .unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn keys_survive_a_restart() {
    let dir = TempDir::new("restart");
    let path = dir.path("keys.db");
    let (key, info) = {
        let m = manager(SqliteStore::open(&path).unwrap());
        let out = m
            .generate(
                &alice(),
                GenerateRequest::new("scraper").scope(Scope::Prometheus),
            )
            .await
            .unwrap();
        m.verify(out.0.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        out
        // manager and store dropped here: the connection is closed
    };
    let m = manager(SqliteStore::open(&path).unwrap());
    let v = m
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(*v.key_id(), info.id);
    let listed = m.list(&alice()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, info.id);
    assert_eq!(listed[0].name, "scraper");
    // A revocation also survives.
    m.revoke(&alice(), &info.id).await.unwrap();
    drop(m);
    let m = manager(SqliteStore::open(&path).unwrap());
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
    assert_eq!(
        m.get(&alice(), &info.id).await.unwrap().status,
        KeyStatus::Revoked
    );
}

/// Without a tokio runtime the store runs its statements inline: the future is ready at its
/// first poll.
#[test]
fn works_without_a_tokio_runtime() {
    let dir = TempDir::new("noruntime");
    let store = SqliteStore::open(dir.path("keys.db")).unwrap();
    let org = OrgId::new("acme");
    let rec = api_keys::testkit::sample_record(KeyId::parse("00000000001").unwrap(), &org);
    let mut cx = Context::from_waker(Waker::noop());
    let mut insert = std::pin::pin!(store.insert(rec.clone()));
    assert!(matches!(insert.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    let mut get = std::pin::pin!(store.get(&rec.id));
    match get.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(Some(got))) => assert_eq!(got, rec),
        other => panic!("{other:?}"),
    }
}
