//! Master keys: rotation and rewrap with the CLI, keys from a file, and configuration errors that say what to do.

use super::*;

/// README's rotation walk-through: a new key as current with the old one as previous,
/// rewrap, then retire the old key — every key keeps verifying.
#[tokio::test]
async fn a_master_key_rotation_with_the_cli() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(make(&m, &acme(), &format!("k{i}"), 30).await.0);
    }

    let out = cli_with(&db.path, 2, &NEW)
        .env("API_KEYS_PREVIOUS_KEYS", format!("1:{}", hex_of(&OLD)))
        .args(["rewrap", "--json"])
        .assert()
        .success();
    let report = json(out.get_output());
    assert_eq!(report["rewrapped"], 5, "{report}");
    assert_eq!(report["failed"], 0);
    assert_eq!(report["current_version"], 2);
    // Not a terminal here: plain progress lines on standard error.
    assert!(stderr(out.get_output()).contains("rewrap: 5 records to check"));

    // Again: nothing left to do.
    let out = cli_with(&db.path, 2, &NEW)
        .env("API_KEYS_PREVIOUS_KEYS", format!("1:{}", hex_of(&OLD)))
        .arg("rewrap")
        .assert()
        .success();
    assert!(stdout(out.get_output()).contains("rewrapped 0, already current 5, failed 0"));

    // The old key retired: a manager with the new key alone verifies every key.
    let retired = manager(SqliteStore::open(&db.path).unwrap(), new_ring());
    for k in &keys {
        retired.verify(k.expose_secret(), &read()).await.unwrap();
    }
    cli_with(&db.path, 2, &NEW)
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .success();
}

#[tokio::test]
async fn rewrap_exits_1_when_records_fail() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k, _) = make(&m, &acme(), "sealed-under-1", 30).await;
    // Version 1 is not in the keyring: its records cannot be opened, so they are reported
    // and left as they are.
    let out = cli_with(&db.path, 2, &NEW)
        .args(["rewrap", "--json"])
        .assert()
        .code(1);
    assert_eq!(json(out.get_output())["failed"], 1);
    assert!(stderr(out.get_output()).contains("could not be re-sealed"));
    // Nothing was destroyed: the key still verifies under the old keyring.
    m.verify(k.expose_secret(), &read()).await.unwrap();
}

/// With `--master-key-file` the keys come from the file alone: the environment's
/// API_KEYS_PREVIOUS_KEYS is not read. A record sealed under a version the file lacks was
/// reported with "add that version to API_KEYS_PREVIOUS_KEYS" — advice that changes nothing
/// (the operator had done just that), with no word that the variable was ignored.
#[tokio::test]
async fn a_key_file_missing_a_version_names_the_file_not_the_environment() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (_, info) = make(&m, &acme(), "k", 30).await;
    let file = db.path.with_file_name("master.keys");
    std::fs::write(&file, format!("2:{}\n", hex_of(&NEW))).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    for args in [&["keys", "show", &info.id.to_string()][..], &["rewrap"][..]] {
        let out = cli()
            .arg("--sqlite")
            .arg(&db.path)
            .arg("--master-key-file")
            .arg(&file)
            .env("API_KEYS_PREVIOUS_KEYS", format!("1:{}", hex_of(&OLD)))
            .args(args)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(matches!(out.status.code(), Some(1 | 5)), "{args:?}: {err}");
        assert!(
            !err.contains("to API_KEYS_PREVIOUS_KEYS")
                && !err.contains("from API_KEYS_PREVIOUS_KEYS"),
            "{args:?}: {err}"
        );
        assert!(err.contains("master key file"), "{args:?}: {err}");
        assert!(
            err.contains("API_KEYS_PREVIOUS_KEYS is ignored"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn master_keys_from_a_file() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k, _) = make(&m, &acme(), "k", 30).await;
    let file = db.path.with_file_name("master.keys");
    std::fs::write(
        &file,
        format!(
            "# current first\n2:{}\n1:{}  # retire after rewrap\n",
            hex_of(&NEW),
            hex_of(&OLD)
        ),
    )
    .unwrap();
    let out = cli()
        .arg("--sqlite")
        .arg(&db.path)
        .arg("--master-key-file")
        .arg(&file)
        .args(["rewrap", "--json"])
        .assert()
        .success();
    assert_eq!(json(out.get_output())["rewrapped"], 1);
    let retired = manager(SqliteStore::open(&db.path).unwrap(), new_ring());
    retired.verify(k.expose_secret(), &read()).await.unwrap();

    // A file that is not there, or not keys: exit 3, and the key material is never echoed.
    cli()
        .arg("--sqlite")
        .arg(&db.path)
        .arg("--master-key-file")
        .arg(file.with_file_name("missing"))
        .arg("rewrap")
        .assert()
        .code(3);
    std::fs::write(&file, "2:0011zz\n").unwrap();
    let out = cli()
        .arg("--sqlite")
        .arg(&db.path)
        .arg("--master-key-file")
        .arg(&file)
        .arg("rewrap")
        .assert()
        .code(3);
    let err = stderr(out.get_output());
    assert!(
        err.contains("32 hexadecimal characters") && !err.contains("0011zz"),
        "{err}"
    );
}

#[test]
fn configuration_errors_say_what_to_do() {
    let db = db();
    // No store at all: usage.
    let out = cli()
        .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(2);
    assert!(stderr(out.get_output()).contains("--sqlite PATH or --postgres URL"));
    // Both: usage. An explicit --sqlite wins over a machine-wide DATABASE_URL.
    cli_with(&db.path, 1, &OLD)
        .args([
            "--postgres",
            "postgres://127.0.0.1:1/x",
            "keys",
            "list",
            "--org",
            "a",
        ])
        .assert()
        .code(2);
    let out = cli_with(&db.path, 1, &OLD)
        .env("DATABASE_URL", "postgres://127.0.0.1:1/x")
        .args(["keys", "list", "--org", "a"])
        .assert()
        .code(3);
    assert!(
        stderr(out.get_output()).contains("is not a file"),
        "the SQLite path was used"
    );
    // No master key.
    let out = cli()
        .arg("--sqlite")
        .arg(&db.path)
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(3);
    let err = stderr(out.get_output());
    assert!(
        err.contains("API_KEYS_MASTER_KEY") && err.contains("master-key new"),
        "{err}"
    );
    // A malformed master key is never echoed.
    let out = cli()
        .arg("--sqlite")
        .arg(&db.path)
        .env("API_KEYS_MASTER_KEY", "deadbeef")
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(3);
    assert!(!stderr(out.get_output()).contains("deadbeef"));
    // A SQLite path that does not exist is not silently created.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(3);
    assert!(stderr(out.get_output()).contains("is not a file"));
    assert!(!db.path.exists());
    // A password never goes on the command line (the process list shows it): usage, and
    // the password is not echoed.
    for url in [
        "postgres://app:hunter2@127.0.0.1:1/x",
        "postgresql://app:hunter2@[::1]:1/x?sslmode=disable",
        "postgres://127.0.0.1:1/x?user=app&password=hunter2",
        "host=127.0.0.1 user=app password=hunter2",
        // An unencoded `/` in the password, and a key-value string with a URL in a value.
        "postgres://app:hun/ter2@127.0.0.1:1/x",
        "password=hunter2 host=127.0.0.1 application_name=http://x",
        // A percent-encoded parameter name, which tokio-postgres decodes.
        "postgres://app@127.0.0.1:1/x?%70assword=hunter2",
        "postgres://app@127.0.0.1:1/x?PASS%57ORD=hunter2",
    ] {
        let out = cli()
            .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
            .args(["--postgres", url, "keys", "list", "--org", "acme"])
            .assert()
            .code(2);
        let err = stderr(out.get_output());
        assert!(
            err.contains("DATABASE_URL") && !err.contains("hunter2"),
            "{err}"
        );
    }
    // A PostgreSQL server that is not there (or a build without PostgreSQL): exit 3.
    let out = cli()
        .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
        .args(["--postgres", "postgres://postgres@127.0.0.1:1/x"])
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(3);
    assert!(stderr(out.get_output()).contains("PostgreSQL"));
    // The master key is not an option at all.
    cli_with(&db.path, 1, &OLD)
        .args(["--master-key", &hex_of(&OLD), "rewrap"])
        .assert()
        .code(2);
}

/// A master-key version given twice is a configuration error (exit 3) wherever it repeats.
#[test]
fn a_previous_master_key_version_given_twice_is_a_configuration_error() {
    let db = db();
    let _ = SqliteStore::open(&db.path).unwrap();
    let previous = format!("1:{},1:{}", hex_of(&OLD), hex_of(&OLD));
    let out = cli_with(&db.path, 2, &NEW)
        .env("API_KEYS_PREVIOUS_KEYS", previous)
        .args(["keys", "expiring"])
        .assert()
        .code(3);
    assert!(stderr(out.get_output()).contains("twice"));
}

/// README: "One bad row never blocks an organization or a rotation … `rewrap` counts it in
/// `failed` and moves on". A row whose `org` column a hand edit left empty, or turned into a
/// blob, is such a row: every other record is re-sealed, the damaged ones are counted
/// failed (exit 1), and a second run gets just as far instead of stopping at the same row.
#[tokio::test]
async fn a_row_with_a_damaged_org_column_never_blocks_the_rewrap() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.push(make(&m, &acme(), &format!("k{i}"), 30).await);
    }
    let (emptied, blob) = (keys[1].1.id, keys[2].1.id);
    {
        let conn = rusqlite::Connection::open(&db.path).unwrap();
        conn.execute(
            "UPDATE api_keys SET org = '' WHERE id = ?1",
            [emptied.to_string()],
        )
        .unwrap();
        conn.execute(
            "UPDATE api_keys SET org = X'00ff' WHERE id = ?1",
            [blob.to_string()],
        )
        .unwrap();
    }
    let rewrap = || {
        cli_with(&db.path, 2, &NEW)
            .env("API_KEYS_PREVIOUS_KEYS", format!("1:{}", hex_of(&OLD)))
            .args(["rewrap", "--json"])
            .assert()
    };
    let out = rewrap().code(1);
    let report = json(out.get_output());
    assert_eq!(
        (report["rewrapped"].as_u64(), report["failed"].as_u64()),
        (Some(2), Some(2)),
        "{report} {}",
        stderr(out.get_output())
    );
    let out = rewrap().code(1);
    let report = json(out.get_output());
    assert_eq!(
        (
            report["already_current"].as_u64(),
            report["failed"].as_u64()
        ),
        (Some(2), Some(2)),
        "{report}"
    );
    // Every undamaged key moved: it verifies under the new key alone.
    let retired = manager(SqliteStore::open(&db.path).unwrap(), new_ring());
    for (k, info) in &keys {
        if info.id != emptied && info.id != blob {
            retired.verify(k.expose_secret(), &read()).await.unwrap();
        }
    }
}

/// README: a SQLite path "is never created", and rotation step 4 retires the old master key on
/// exit 0 with `failed 0`. A path that names another SQLite file (another application's
/// database, a copy without the key store) is no key store either: `rewrap` over it must not
/// report success over zero records, nor create the key store's tables in that file.
#[test]
fn a_sqlite_file_without_a_key_store_is_refused_and_left_alone() {
    let db = db();
    {
        let conn = rusqlite::Connection::open(&db.path).unwrap();
        conn.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            .unwrap();
    }
    for args in [&["rewrap"][..], &["keys", "list", "--org", "acme"]] {
        let out = cli_with(&db.path, 2, &NEW)
            .env("API_KEYS_PREVIOUS_KEYS", format!("1:{}", hex_of(&OLD)))
            .args(args)
            .assert()
            .code(3);
        let err = stderr(out.get_output());
        assert!(err.contains("no api-keys key store"), "{args:?}: {err}");
    }
    let conn = rusqlite::Connection::open(&db.path).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'api_keys%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        tables, 0,
        "the key store's tables were created in another file"
    );
}

/// A master key file written by an editor that starts it with a byte-order mark works (the
/// mark is not part of the first version), and a path that is no key file but a device that
/// never ends (`/dev/zero`) is refused with exit 3 instead of being read without end.
#[test]
fn a_key_file_with_a_byte_order_mark_works_and_an_endless_one_is_refused() {
    let db = db();
    drop(SqliteStore::open(&db.path).unwrap());
    let file = db.path.with_file_name("keys.txt");
    std::fs::write(&file, format!("\u{feff}1:{}\n", hex_of(&OLD))).unwrap();
    let out = cli()
        .arg("--sqlite")
        .arg(&db.path)
        .arg("--master-key-file")
        .arg(&file)
        .args(["keys", "list", "--org", "acme", "--json"])
        .assert()
        .success();
    assert_eq!(json(out.get_output()), serde_json::json!([]));
    let out = cli()
        .timeout(std::time::Duration::from_secs(60))
        .arg("--sqlite")
        .arg(&db.path)
        .arg("--master-key-file")
        .arg("/dev/zero")
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(3);
    let err = stderr(out.get_output());
    assert!(err.contains("not a master key file"), "{err}");
}

/// `api-keys rewrap` with a current master key that is not the service's (a typo): the
/// service's nodes already seal under that version, so the records they made do not open
/// with it. It re-sealed every older record under the wrong key, breaking every key; now it
/// refuses before re-sealing anything (exit 5), and every key still verifies.
#[tokio::test]
async fn rewrap_with_a_wrong_current_key_reseals_nothing() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (under_1, _) = make(&m, &acme(), "under-1", 30).await;
    let upgraded = manager(
        SqliteStore::open(&db.path).unwrap(),
        Keyring::new(2, MasterKey::from_bytes(NEW)).with_previous(1, MasterKey::from_bytes(OLD)),
    );
    let (under_2, _) = make(&upgraded, &acme(), "under-2", 30).await;
    let typo = [0x5a; 16];
    let out = cli_with(&db.path, 2, &typo)
        .env("API_KEYS_PREVIOUS_KEYS", format!("1:{}", hex_of(&OLD)))
        .args(["rewrap"])
        .assert()
        .code(5);
    let err = stderr(out.get_output());
    assert!(err.contains("nothing re-sealed"), "{err}");
    assert!(!err.contains(&hex_of(&typo)), "{err}");
    for k in [&under_1, &under_2] {
        upgraded.verify(k.expose_secret(), &read()).await.unwrap();
    }
}
