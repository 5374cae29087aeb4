//! Opening a SQLite key store's file: the connection's settings, WAL mode (waiting for another
//! process's lock), the schema's migrations, and the file's identity (to notice it replaced).

use super::*;

/// The schema version this crate writes. A file with a higher version is refused.
const SCHEMA_VERSION: i64 = 1;

/// Migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE api_keys (
        id           TEXT    NOT NULL PRIMARY KEY COLLATE BINARY,
        org          TEXT    NOT NULL,
        revision     INTEGER NOT NULL,
        expires_at   INTEGER,
        last_used_at INTEGER,
        record       TEXT    NOT NULL
    );
    CREATE INDEX api_keys_org ON api_keys (org);
    CREATE INDEX api_keys_expires_at ON api_keys (expires_at);
"];

pub(super) fn open_connection(path: &Path, table: &str) -> Result<Connection, SqliteError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(SqliteError::new(SqliteErrorKind::CannotOpen, path, None));
        }
        Ok(m) if m.permissions().readonly() => {
            return Err(SqliteError::new(SqliteErrorKind::ReadOnly, path, None));
        }
        _ => {}
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| {
        let e = SqliteError::from_sqlite(path, e);
        // Opening reports most failures as "cannot open"; keep the other kinds it found.
        if e.kind == SqliteErrorKind::Query {
            SqliteError {
                kind: SqliteErrorKind::CannotOpen,
                ..e
            }
        } else {
            e
        }
    })?;
    let err = |e| SqliteError::from_sqlite(path, e);
    if conn.is_readonly(rusqlite::MAIN_DB).map_err(err)? {
        return Err(SqliteError::new(SqliteErrorKind::ReadOnly, path, None));
    }
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    // The first statement that reads the file: a file that is not a database fails here.
    let mode = wal_mode(&conn).map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteError::new(SqliteErrorKind::Query, path, None));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    migrate(&mut conn, path, table)?;
    Ok(conn)
}

/// Switches the file to WAL (nothing to do when it already is) and returns the journal mode.
///
/// A file still in rollback-journal mode (a host's own database) needs an exclusive lock to
/// switch, and SQLite does not run the busy handler for it while another process holds the
/// write lock: it fails at once. The switch is retried here for up to the busy timeout, as
/// every other statement waits; each try ends its statement, so it holds no lock meanwhile.
fn wal_mode(conn: &Connection) -> rusqlite::Result<String> {
    let started = std::time::Instant::now();
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Creates or upgrades the schema in one `BEGIN IMMEDIATE` transaction (so two processes
/// opening a new file at once cannot both create it).
fn migrate(conn: &mut Connection, path: &Path, table: &str) -> Result<(), SqliteError> {
    let err = |e| SqliteError::from_sqlite(path, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    tx.execute_batch(&named(
        table,
        "CREATE TABLE IF NOT EXISTS api_keys_schema (version INTEGER NOT NULL)",
    ))
    .map_err(err)?;
    let found: Option<i64> = tx
        .query_row(
            &named(table, "SELECT max(version) FROM api_keys_schema"),
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(SqliteError::new(
            SqliteErrorKind::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            },
            path,
            None,
        ));
    }
    if found < SCHEMA_VERSION {
        for step in &MIGRATIONS[found.max(0) as usize..] {
            tx.execute_batch(&named(table, step)).map_err(err)?;
        }
        tx.execute(&named(table, "DELETE FROM api_keys_schema"), [])
            .map_err(err)?;
        tx.execute(
            &named(table, "INSERT INTO api_keys_schema (version) VALUES (?1)"),
            [SCHEMA_VERSION],
        )
        .map_err(err)?;
    }
    tx.commit().map_err(err)
}

/// The identity (device, inode) of the file at `path`, where the platform has one.
#[cfg(unix)]
pub(super) fn identity(path: &Path) -> std::io::Result<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| Some((m.dev(), m.ino())))
}

#[cfg(not(unix))]
pub(super) fn identity(_: &Path) -> std::io::Result<Option<(u64, u64)>> {
    Ok(None)
}

/// Whether the file opened as `opened` is gone from its path or another file is there. A
/// path that cannot be examined (a directory's permissions changed) says neither.
pub(super) fn replaced(now: std::io::Result<Option<(u64, u64)>>, opened: (u64, u64)) -> bool {
    match now {
        Ok(now) => now.is_some_and(|now| now != opened),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}
