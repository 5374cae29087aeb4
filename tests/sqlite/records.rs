//! Rows: last use in its own column, bad rows that block nothing, and key classes that never accept each other.

use super::*;

#[tokio::test]
async fn last_use_lives_in_its_own_column() {
    let dir = TempDir::new("touch");
    let path = dir.path("keys.db");
    let store = SqliteStore::open(&path).unwrap();
    let org = OrgId::new("acme");
    let rec = api_keys::testkit::sample_record(KeyId::parse("0000000000A").unwrap(), &org);
    store.insert(rec.clone()).await.unwrap();
    let at = api_keys::time::OffsetDateTime::from_unix_timestamp(1_720_000_000).unwrap();
    store.touch(&rec.id, at).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (col, json): (Option<i64>, String) = conn
        .query_row(
            "SELECT last_used_at, record FROM api_keys WHERE id = '0000000000A'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(col, Some(1_720_000_000));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["last_used_at"].is_null(), "{json}");
    assert_eq!(
        store.get(&rec.id).await.unwrap().unwrap().last_used_at,
        Some(at)
    );
}

/// Rows damaged in the database (an index column that disagrees with the JSON, JSON that does
/// not decode) fail closed and are reported by id, but never block `list`, `generate`,
/// `rewrap` or their own `delete`.
#[tokio::test]
async fn one_bad_row_never_blocks_an_organization_or_a_rotation() {
    let dir = TempDir::new("damaged");
    let path = dir.path("keys.db");
    let m = manager(SqliteStore::open(&path).unwrap());
    let a = alice();
    let prom = || GenerateRequest::new("k").scope(Scope::Prometheus);
    let (bad_key, bad) = m.generate(&a, prom()).await.unwrap();
    let (broken_key, broken) = m.generate(&a, prom()).await.unwrap();
    let (good_key, good) = m.generate(&a, prom()).await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        // The revision column no longer matches its JSON.
        conn.execute(
            "UPDATE api_keys SET revision = revision + 1 WHERE id = ?1",
            [bad.id.to_string()],
        )
        .unwrap();
        // JSON that does not decode at all.
        conn.execute(
            "UPDATE api_keys SET record = '{\"format\": 2, \"secret\": \"x' WHERE id = ?1",
            [broken.id.to_string()],
        )
        .unwrap();
    }
    let events = Recorder::default();
    let m = KeyManager::builder(SqliteStore::open(&path).unwrap(), keyring())
        .audit(events.clone())
        .build()
        .unwrap();
    // Both damaged keys fail closed; the good one works.
    for key in [&bad_key, &broken_key] {
        assert!(matches!(
            m.verify(key.expose_secret(), &Scope::Prometheus).await,
            Err(Error::Integrity)
        ));
    }
    m.verify(good_key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    // `list` leaves them out and reports them by id; `generate` keeps working.
    let before = events.integrity_failures();
    let listed: Vec<KeyId> = m.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(listed, vec![good.id]);
    assert_eq!(events.integrity_failures(), before + 2);
    let (_, fresh) = m.generate(&a, prom()).await.unwrap();
    // `rewrap` counts them as failed and moves on to every other record.
    let m2 = KeyManager::builder(
        SqliteStore::open(&path).unwrap(),
        Keyring::new(2, MasterKey::from_bytes(*b"sqlite-test-key2"))
            .with_previous(1, MasterKey::from_bytes(MASTER)),
    )
    .build()
    .unwrap();
    let report = m2.rewrap().await.unwrap();
    assert_eq!(report.failed, 2, "{report:?}");
    assert_eq!(report.rewrapped, 2, "{report:?}");
    m2.verify(good_key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    // Both can still be deleted (by their id column), and are gone.
    for id in [bad.id, broken.id] {
        m2.delete(&a, &id).await.unwrap();
        assert!(m2.store().get(&id).await.unwrap().is_none());
    }
    let listed: Vec<KeyId> = m2.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&good.id) && listed.contains(&fresh.id));
}

/// SQLite keeps whatever type a hand edit writes into a column: a row whose `last_used_at`,
/// `revision` or `record` column has the wrong type is one undecodable row (reported,
/// skipped, deletable), never an error for every read that touches the table.
#[tokio::test]
async fn a_column_of_the_wrong_type_is_one_bad_row() {
    for (what, sql) in [
        (
            "text last_used_at",
            "UPDATE api_keys SET last_used_at = '2024-01-01' WHERE id = ?1",
        ),
        (
            "real last_used_at",
            "UPDATE api_keys SET last_used_at = 1.5 WHERE id = ?1",
        ),
        (
            "blob record",
            "UPDATE api_keys SET record = CAST(record AS BLOB) WHERE id = ?1",
        ),
        (
            "non-UTF-8 record",
            "UPDATE api_keys SET record = CAST(x'7bff7d' AS TEXT) WHERE id = ?1",
        ),
        (
            "text revision",
            "UPDATE api_keys SET revision = 'x' WHERE id = ?1",
        ),
    ] {
        let dir = TempDir::new("column-type");
        let path = dir.path("keys.db");
        let store = SqliteStore::open(&path).unwrap();
        let p = path.clone();
        api_keys::testkit::damaged_rows_stay_deletable(&store, |id| async move {
            let conn = rusqlite::Connection::open(&p).unwrap();
            assert_eq!(conn.execute(sql, [id.to_string()]).unwrap(), 1);
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // Through a manager: list, sweep and rewrap go on past it.
    let dir = TempDir::new("column-type-manager");
    let path = dir.path("keys.db");
    let m = manager(SqliteStore::open(&path).unwrap());
    let a = alice();
    let prom = || GenerateRequest::new("k").scope(Scope::Prometheus);
    let (_, bad) = m.generate(&a, prom()).await.unwrap();
    let (good_key, good) = m.generate(&a, prom()).await.unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE api_keys SET last_used_at = '2024-01-01' WHERE id = ?1",
            [bad.id.to_string()],
        )
        .unwrap();
    let listed: Vec<KeyId> = m.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(listed, vec![good.id]);
    let swept = m.sweep().await.unwrap();
    assert_eq!((swept.scanned, swept.failed), (2, 1), "{swept:?}");
    let m2 = KeyManager::builder(
        SqliteStore::open(&path).unwrap(),
        Keyring::new(2, MasterKey::from_bytes(*b"sqlite-test-key2"))
            .with_previous(1, MasterKey::from_bytes(MASTER)),
    )
    .build()
    .unwrap();
    let report = m2.rewrap().await.unwrap();
    assert_eq!((report.rewrapped, report.failed), (1, 1), "{report:?}");
    m2.verify(good_key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
}

/// Two managers of different key classes (`sak` system keys, `sap` agent-pool keys) share one
/// SQLite table: neither accepts, lists or acts on the other's keys — not even a `sak` token
/// re-prefixed as `sap_` with its public checksum recomputed.
#[tokio::test]
async fn two_key_classes_in_one_table_never_accept_each_other() {
    let dir = TempDir::new("classes");
    let path = dir.path("keys.db");
    let events = Recorder::default();
    let sak = KeyManager::builder(SqliteStore::open(&path).unwrap(), keyring())
        .prefix("sak")
        .build()
        .unwrap();
    let sap = KeyManager::builder(SqliteStore::open(&path).unwrap(), keyring())
        .prefix("sap")
        .audit(events.clone())
        .build()
        .unwrap();
    let a = alice();
    let (key, info) = sak
        .generate(&a, GenerateRequest::new("system").scope(Scope::Scim))
        .await
        .unwrap();
    let (pool_key, pool) = sap
        .generate(&a, GenerateRequest::new("pool").scope(Scope::Scim))
        .await
        .unwrap();
    let moved = common::fix_checksum(&format!(
        "sap_{}",
        &key.expose_secret()[4..key.expose_secret().len() - 6]
    ));
    // Not `sap`'s key: an invalid key, as an unknown id is, and audited as one.
    assert!(matches!(
        sap.verify(&moved, &Scope::Scim).await,
        Err(Error::InvalidKey)
    ));
    assert!(
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.key_id == Some(info.id)
                && matches!(
                    e.action,
                    AuditAction::VerificationFailed(api_keys::FailureClass::InvalidKey)
                ))
    );
    assert!(matches!(
        sap.verify(key.expose_secret(), &Scope::Scim).await,
        Err(Error::Malformed)
    ));
    sap.verify(pool_key.expose_secret(), &Scope::Scim)
        .await
        .unwrap();
    // Lists show each manager its own class only; acting on the other's id is NotFound.
    let ids = |l: Vec<api_keys::KeyInfo>| l.iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(ids(sap.list(&a).await.unwrap()), vec![pool.id]);
    assert_eq!(ids(sak.list(&a).await.unwrap()), vec![info.id]);
    assert!(matches!(
        sap.revoke(&a, &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        sap.delete(&a, &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(sap.get(&a, &info.id).await, Err(Error::NotFound)));
    // Each rewraps its own records and leaves the other's alone.
    let report = sap.rewrap().await.unwrap();
    assert_eq!(report.other_class, 1, "{report:?}");
    sak.verify(key.expose_secret(), &Scope::Scim).await.unwrap();
}

/// A row whose id column itself is damaged (a hand edit wrote text that is no key id, or a
/// number) has no id to report or delete it by, but it is still one bad row: `list` of its
/// organization, `sweep` and `rewrap` go on past it, and the other keys keep working.
#[tokio::test]
async fn a_damaged_id_column_is_one_bad_row() {
    for (what, sql) in [
        (
            "text that is no key id",
            "UPDATE api_keys SET id = 'not a key id' WHERE id = ?1",
        ),
        ("integer id", "UPDATE api_keys SET id = 42 WHERE id = ?1"),
        (
            "blob id",
            "UPDATE api_keys SET id = CAST(id AS BLOB) WHERE id = ?1",
        ),
    ] {
        let dir = TempDir::new("id-column");
        let path = dir.path("keys.db");
        let m = manager(SqliteStore::open(&path).unwrap());
        let a = alice();
        let prom = || GenerateRequest::new("k").scope(Scope::Prometheus);
        let (_, bad) = m.generate(&a, prom()).await.unwrap();
        let (good_key, good) = m.generate(&a, prom()).await.unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(sql, [bad.id.to_string()])
            .unwrap();
        let listed: Vec<KeyId> = m
            .list(&a)
            .await
            .unwrap_or_else(|e| panic!("{what}: list: {e:?}"))
            .iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(listed, vec![good.id], "{what}");
        m.sweep()
            .await
            .unwrap_or_else(|e| panic!("{what}: sweep: {e:?}"));
        let m2 = KeyManager::builder(
            SqliteStore::open(&path).unwrap(),
            Keyring::new(2, MasterKey::from_bytes(*b"sqlite-test-key2"))
                .with_previous(1, MasterKey::from_bytes(MASTER)),
        )
        .build()
        .unwrap();
        let report = m2
            .rewrap()
            .await
            .unwrap_or_else(|e| panic!("{what}: rewrap: {e:?}"));
        assert_eq!(report.rewrapped, 1, "{what}: {report:?}");
        m2.verify(good_key.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
}
