//! Several processes on one file: a write lock held by another process.

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
