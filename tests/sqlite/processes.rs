//! Several processes on one file: a write lock held by another process; the file replaced.

use super::*;
use std::io::Write;

const LOCK_ENV: &str = "API_KEYS_LOCK_CHILD_DB";
const LOCK_SQL_ENV: &str = "API_KEYS_LOCK_CHILD_SQL";

/// The child half of the lock tests: runs `API_KEYS_LOCK_CHILD_SQL` on its own connection
/// to the file (a transaction left open, so the lock it took is held), says `LOCKED` and
/// holds it until killed.
#[test]
#[ignore = "a child process of sqlite/processes.rs; runs only when started by it"]
fn lock_child_process() {
    let path = std::env::var(LOCK_ENV).expect("started by a test only");
    let sql = std::env::var(LOCK_SQL_ENV).expect("started by a test only");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&sql).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nLOCKED").unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(conn);
}

/// Starts [`lock_child_process`] running `sql` on `path`; returns once it holds its lock.
fn locker(path: &Path, sql: &str) -> std::process::Child {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "processes::lock_child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LOCK_ENV, path)
        .env(LOCK_SQL_ENV, sql)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The child writes nothing more once locked: its stdout may close.
    let locked = BufReader::new(c.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim() == "LOCKED");
    if !locked {
        panic!("the locker died: {:?}", c.wait());
    }
    c
}

/// A host's own database, still in rollback-journal mode (the store switches it to WAL on its
/// first open), while the host's process holds its write lock: opening the store waits for the
/// lock, up to the busy timeout, like every other statement of the store, instead of failing
/// at once with "database is locked". Here the host's process is killed mid-transaction well
/// within that timeout: the open recovers its hot journal and succeeds, without its write.
#[test]
fn opening_a_host_file_waits_for_another_processs_write_lock() {
    let dir = TempDir::new("host-locked");
    let host = dir.path("host.db");
    rusqlite::Connection::open(&host)
        .unwrap()
        .execute_batch("CREATE TABLE t (a); INSERT INTO t VALUES (1);")
        .unwrap();
    let mut writer = locker(&host, "BEGIN IMMEDIATE; INSERT INTO t VALUES (2);");
    let opening = std::thread::spawn({
        let host = host.clone();
        move || SqliteStore::open(&host)
    });
    // No signal comes out of `open` while it waits; the lock is held for far less than the
    // busy timeout (5 s) either way.
    std::thread::sleep(Duration::from_millis(300));
    writer.kill().unwrap();
    writer.wait().unwrap();
    let store = opening.join().unwrap().unwrap_or_else(|e| {
        panic!(
            "open failed although the lock was gone within the busy timeout: {e}: {:?}",
            std::error::Error::source(&e)
        )
    });
    assert_eq!(store.path(), host);
    let conn = rusqlite::Connection::open(&host).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "the killed process's write was rolled back");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// The file deleted or replaced while the store has it open (a clean-up job, an operator, a
/// restore from a backup that moves the copy into place): SQLite keeps using the old, deleted
/// file, so the store went on answering from it. A revocation another process (the CLI)
/// makes on the file now at the path — SECURITY.md's "after a restore, re-apply revocations
/// made since the backup" — was never seen, and a key generated afterwards was reported
/// created yet is gone on the next start. The store now fails its calls with
/// `SqliteErrorKind::Replaced` instead.
#[tokio::test]
async fn a_file_replaced_while_open_is_not_served_from_its_deleted_copy() {
    let dir = TempDir::new("replaced");
    let path = dir.path("keys.db");
    let m = KeyManager::builder(SqliteStore::open(&path).unwrap(), keyring())
        .cache_fallback_ttl(Duration::ZERO)
        .build()
        .unwrap();
    let (key, info) = m
        .generate(&alice(), GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    // A backup, then a restore that moves it into place (the old files removed first).
    let backup = dir.path("backup.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    for suffix in ["-wal", "-shm", ""] {
        std::fs::remove_file(format!("{}{suffix}", path.display())).unwrap();
    }
    std::fs::rename(&backup, &path).unwrap();
    // The operator re-applies a revocation through another store on the file.
    manager(SqliteStore::open(&path).unwrap())
        .revoke(&alice(), &info.id)
        .await
        .unwrap();
    match m.verify(key.expose_secret(), &Scope::Prometheus).await {
        Err(Error::Revoked) => {}
        Err(Error::Store(e)) => assert_eq!(sqlite_error(&e).kind(), SqliteErrorKind::Replaced),
        other => panic!(
            "a key revoked in the file at the store's path was accepted: {:?}",
            other.map(|v| *v.key_id())
        ),
    }
    match m
        .generate(
            &alice(),
            GenerateRequest::new("k2").scope(Scope::Prometheus),
        )
        .await
    {
        Err(Error::Store(e)) => assert_eq!(sqlite_error(&e).kind(), SqliteErrorKind::Replaced),
        other => panic!(
            "a key was generated into the deleted file: {:?}",
            other.map(|(_, i)| i.id)
        ),
    }
}
