//! Opening files: clear errors for missing, foreign, damaged, read-only and newer files; sharing a file with other tables.

use super::*;

#[test]
fn missing_directory_is_a_clear_error() {
    let dir = TempDir::new("badpath");
    let path = dir.path("no/such/dir/keys.db");
    let e = open_err(&path);
    let se = sqlite_error(&e);
    assert_eq!(se.kind(), SqliteErrorKind::CannotOpen);
    assert_eq!(se.path(), path);
    let msg = se.to_string();
    assert!(
        msg.contains("cannot open") && msg.contains("no/such/dir/keys.db"),
        "{msg}"
    );
}

#[test]
fn a_directory_is_not_a_store() {
    let dir = TempDir::new("isdir");
    let e = open_err(&dir.0);
    assert_eq!(sqlite_error(&e).kind(), SqliteErrorKind::CannotOpen);
}

#[test]
fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = TempDir::new("notdb");
    let path = dir.path("notes.txt");
    let content = "These are my notes, not a database. ".repeat(200);
    std::fs::write(&path, &content).unwrap();
    let e = open_err(&path);
    let se = sqlite_error(&e);
    assert_eq!(se.kind(), SqliteErrorKind::NotADatabase, "{se}");
    assert!(se.to_string().contains("is not a SQLite database"), "{se}");
    assert!(std::error::Error::source(se).is_some());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
}

/// A key store file damaged on disk (here: cut in half, as a failed copy leaves it) is
/// `NotADatabase`, as documented, not a failed statement to retry.
#[tokio::test]
async fn a_damaged_file_is_refused_as_damaged() {
    let dir = TempDir::new("damaged-file");
    let path = dir.path("keys.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        for i in 0..300u64 {
            let id = KeyId::parse(&format!("{:011}", i * 7 + 1)).unwrap();
            let mut r = api_keys::testkit::sample_record(id, &OrgId::new(format!("org{}", i % 5)));
            r.meta.insert("m".into(), "v".repeat(300));
            store.insert(r).await.unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 100_000, "{}", bytes.len());
    bytes.truncate(bytes.len() / 2 + 100);
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(&path);
    let se = sqlite_error(&e);
    assert_eq!(se.kind(), SqliteErrorKind::NotADatabase, "{se} ({se:?})");
}

#[tokio::test]
async fn a_read_only_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("readonly");
    let path = dir.path("keys.db");
    {
        let m = manager(SqliteStore::open(&path).unwrap());
        m.generate(&alice(), GenerateRequest::new("k").scope(Scope::Prometheus))
            .await
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let e = open_err(&path);
    let se = sqlite_error(&e);
    assert_eq!(se.kind(), SqliteErrorKind::ReadOnly, "{se}");
    assert!(se.to_string().contains("read-only"), "{se}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    SqliteStore::open(&path).unwrap();
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let dir = TempDir::new("newer");
    let path = dir.path("keys.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE api_keys_schema SET version = 7", [])
            .unwrap();
    }
    let e = open_err(&path);
    let se = sqlite_error(&e);
    assert_eq!(
        se.kind(),
        SqliteErrorKind::NewerSchema {
            found: 7,
            supported: 1
        }
    );
    assert!(se.to_string().contains("upgrade api-keys"), "{se}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("SELECT version FROM api_keys_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 7);
}

#[tokio::test]
async fn shares_a_file_with_the_hosts_own_tables() {
    let dir = TempDir::new("shared");
    let path = dir.path("app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('alice');")
            .unwrap();
    }
    let m = manager(SqliteStore::open(&path).unwrap());
    let (key, _) = m
        .generate(&alice(), GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let name: String = conn
        .query_row("SELECT name FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "alice");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// Two key stores in one SQLite file, each in a table of its own; a bad name is refused.
#[tokio::test]
async fn stores_in_separate_tables_of_one_file_are_apart() {
    let dir = TempDir::new("tables");
    let path = dir.path("keys.db");
    let a = manager(SqliteStore::open(&path).unwrap());
    let b_store = SqliteStore::open_table(&path, "pool_keys").unwrap();
    assert_eq!(b_store.table(), "pool_keys");
    api_keys::testkit::run(&b_store).await.unwrap();
    let b = manager(b_store);
    let (ka, ia) = a
        .generate(&alice(), GenerateRequest::new("a").scope(Scope::Scim))
        .await
        .unwrap();
    let (kb, ib) = b
        .generate(&alice(), GenerateRequest::new("b").scope(Scope::Scim))
        .await
        .unwrap();
    let ids = |l: Vec<api_keys::KeyInfo>| l.iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(ids(a.list(&alice()).await.unwrap()), vec![ia.id]);
    assert_eq!(ids(b.list(&alice()).await.unwrap()), vec![ib.id]);
    assert!(matches!(
        b.verify(ka.expose_secret(), &Scope::Scim).await,
        Err(Error::InvalidKey)
    ));
    a.verify(ka.expose_secret(), &Scope::Scim).await.unwrap();
    // Reopened, each table keeps its keys.
    let b = manager(SqliteStore::open_table(&path, "pool_keys").unwrap());
    b.verify(kb.expose_secret(), &Scope::Scim).await.unwrap();
    for bad in [
        "",
        "Keys",
        "1keys",
        "keys; DROP TABLE api_keys",
        &"k".repeat(49),
    ] {
        let e = SqliteStore::open_table(&path, bad).unwrap_err();
        assert_eq!(
            sqlite_error(&e).kind(),
            SqliteErrorKind::InvalidTable,
            "{bad}"
        );
    }
}
