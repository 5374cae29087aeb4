//! [`SqliteStore`]: keys in one SQLite file, for a single server (feature `sqlite`).
//!
//! Layout (schema version 1):
//!
//! ```sql
//! CREATE TABLE api_keys_schema (version INTEGER NOT NULL);   -- one row
//! CREATE TABLE api_keys (
//!     id           TEXT    NOT NULL PRIMARY KEY COLLATE BINARY,
//!     org          TEXT    NOT NULL,
//!     revision     INTEGER NOT NULL,
//!     expires_at   INTEGER,          -- Unix seconds, NULL = never
//!     last_used_at INTEGER,          -- Unix seconds; authoritative (see below)
//!     record       TEXT    NOT NULL  -- the KeyRecord as JSON, its last_used_at left null
//! );
//! CREATE INDEX api_keys_org ON api_keys (org);
//! CREATE INDEX api_keys_expires_at ON api_keys (expires_at);
//! ```
//!
//! `last_used_at` lives only in its own column: `touch` is one `UPDATE` of that column, so it
//! can never rewrite (and un-revoke) a record, and reads overlay it onto the decoded record.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::KeyStore;
use super::sql::{DEFAULT_TABLE, corrupt, named, record_json, unix, valid_table};
use crate::{KeyId, KeyRecord, OrgId, StoreError};

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const COLUMNS: &str = "id, org, revision, last_used_at, record";

mod error;
mod open;
pub use error::{SqliteError, SqliteErrorKind};
use open::{identity, open_connection, replaced};

struct Inner {
    conn: Mutex<Connection>,
    /// A second connection for last-use writes only: while another process holds the write
    /// lock, a waiting `touch` never holds the connection that reads serve verifies.
    touch: Mutex<Connection>,
    path: PathBuf,
    /// The table's name (`api_keys` by default); the schema-version table is `<table>_schema`.
    table: String,
    /// The opened file's absolute path (as SQLite resolved it) and identity: the calls fail
    /// once the file there is another or gone ([`replaced`]).
    file: Option<(PathBuf, (u64, u64))>,
}

/// A [`KeyStore`] in one SQLite file: persistent, for a single server (several processes on
/// the same machine may share the file; SQLite serializes their writes).
///
/// - The bundled SQLite is used (no system library needed); the file is in WAL mode with
///   `synchronous = FULL`, so a key whose `generate` returned survives a crash of the process
///   or of the machine.
/// - The schema is created, or migrated, when the file is opened; a file written by a newer
///   version of this crate is refused with [`SqliteErrorKind::NewerSchema`].
/// - `update` is a compare-and-swap inside one `BEGIN IMMEDIATE` transaction; ids use binary
///   collation.
/// - Every call runs on tokio's blocking thread pool (`spawn_blocking`) when called inside a
///   tokio runtime, so it never blocks the runtime's workers; outside tokio it runs inline.
///   One connection serves all calls, one at a time.
/// - There is no change feed (another process may write the same file unseen), so a
///   [`KeyManager`] over it caches verified records for its fallback TTL only (1 s by
///   default): a revocation made through another manager or process is refused within that
///   TTL, one made through the same manager at once. Within one process, share one manager
///   (clones are cheap).
/// - Once the file at the path is deleted or replaced (renamed over, restored from a backup),
///   every call fails with [`SqliteErrorKind::Replaced`] (on Unix): SQLite would go on using
///   the deleted file, which no other process sees and which is gone on the next start.
///
/// Cloning is cheap; clones share the connection.
///
/// [`KeyManager`]: crate::KeyManager
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (or creates) the key store in the SQLite file at `path`, switches it to WAL
    /// and creates or migrates the schema. This does file I/O on the calling thread; in an
    /// async context, call it once at start-up (or inside `spawn_blocking`). While another
    /// process holds the file's write lock, it waits up to the 5 s busy timeout.
    ///
    /// # Errors
    /// [`StoreError::Backend`] with a [`SqliteError`] source whose kind is
    /// [`SqliteErrorKind::CannotOpen`] (missing directory, no permission, a directory),
    /// [`SqliteErrorKind::NotADatabase`], [`SqliteErrorKind::ReadOnly`],
    /// [`SqliteErrorKind::NewerSchema`] or [`SqliteErrorKind::Query`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_table(path, DEFAULT_TABLE)
    }

    /// [`SqliteStore::open`] with the keys in table `table` (and its schema version in
    /// `<table>_schema`) instead of `api_keys`: for several key stores in one file. Managers of
    /// different key classes (token prefixes) may also share one table — each record is bound
    /// to its class — so separate tables are for keeping rows apart, not for safety.
    ///
    /// # Errors
    /// [`StoreError::Backend`] with a [`SqliteError`] of kind [`SqliteErrorKind::InvalidTable`]
    /// for a name that is not `[a-z_][a-z0-9_]{0,47}`; otherwise as [`SqliteStore::open`].
    pub fn open_table(path: impl AsRef<Path>, table: &str) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if !valid_table(table) {
            return Err(StoreError::backend(SqliteError::new(
                SqliteErrorKind::InvalidTable,
                path,
                None,
            )));
        }
        let conn = open_connection(path, table).map_err(StoreError::backend)?;
        let touch = open_connection(path, table).map_err(StoreError::backend)?;
        let file = std::path::absolute(path)
            .ok()
            .and_then(|at| identity(&at).ok().flatten().map(|id| (at, id)));
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                touch: Mutex::new(touch),
                path: path.to_path_buf(),
                table: table.to_string(),
                file,
            }),
        })
    }

    /// The table holding the keys.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema version of the open file (the newest this crate knows once opened).
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the query fails.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(|conn, path, t| {
            conn.query_row(&named(t, "SELECT version FROM api_keys_schema"), [], |r| {
                r.get(0)
            })
            .map_err(|e| backend(path, e))
        })
        .await
    }

    /// Runs `f` with the connection: on tokio's blocking pool inside a runtime, inline
    /// otherwise.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Path, &str) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_on(false, f).await
    }

    /// [`SqliteStore::run`] on the main connection, or on the last-use one.
    async fn run_on<T, F>(&self, touch: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Path, &str) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let job = move || {
            if let Some((at, id)) = &inner.file
                && replaced(identity(at), *id)
            {
                return Err(StoreError::backend(SqliteError::new(
                    SqliteErrorKind::Replaced,
                    &inner.path,
                    None,
                )));
            }
            let conn = if touch { &inner.touch } else { &inner.conn };
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn, &inner.path, &inner.table)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.spawn_blocking(job).await.map_err(StoreError::backend)?,
            Err(_) => job(),
        }
    }
}

fn backend(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::backend(SqliteError::from_sqlite(path, e))
}

fn revision_to_sql(path: &Path, revision: u64) -> Result<i64, StoreError> {
    i64::try_from(revision)
        .map_err(|_| StoreError::backend(SqliteError::new(SqliteErrorKind::OutOfRange, path, None)))
}

/// Decodes a row selected as [`COLUMNS`], checking that the columns agree with the JSON.
fn decode(row: &rusqlite::Row<'_>) -> Result<KeyRecord, StoreError> {
    let id: String = row.get(0).map_err(|e| corrupt(None, e))?;
    let id = id.as_str();
    // SQLite keeps any type a hand edit writes: a column of the wrong type (the org column
    // included) makes this row undecodable, never the whole read.
    let org: rusqlite::Result<String> = row.get(1);
    let columns = (|| -> rusqlite::Result<(i64, Option<i64>, String)> {
        Ok((row.get(2)?, row.get(3)?, row.get(4)?))
    })();
    match (org, columns) {
        (Ok(org), Ok((revision, last_used, json))) => {
            super::sql::decode_row(id, &org, revision, last_used, &json)
        }
        (Ok(org), Err(e)) => super::sql::placeholder(id, Some(&org), corrupt(Some(id), e)),
        (Err(e), _) => super::sql::placeholder(id, None, corrupt(Some(id), e)),
    }
}

/// Runs a query returning rows of [`COLUMNS`] and decodes up to `limit` records.
///
/// A row whose id column itself is unusable (a hand edit wrote something that is no key id)
/// has no id to report it by: it is logged and skipped, so it cannot fail every `list` of its
/// organization and every `scan` (and with them every sweep and rewrap). It does not count
/// towards `limit`: a page of such rows never looks like the end of a scan.
fn query_records(
    conn: &Connection,
    path: &Path,
    sql: &str,
    params: impl rusqlite::Params,
    limit: usize,
) -> Result<Vec<KeyRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| backend(path, e))?;
    let mut rows = stmt.query(params).map_err(|e| backend(path, e))?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(row) = rows.next().map_err(|e| backend(path, e))? else {
            break;
        };
        match decode(row) {
            Ok(rec) => out.push(rec),
            // Neither the row nor the decoder's message is quoted: either may hold the
            // row's content. Counted as the corrupt-row error it was before.
            Err(e) => {
                crate::metrics::store_error(&e);
                tracing::error!(
                    target: "api_keys",
                    path = %path.display(),
                    "a stored key row has no usable id column; it is skipped"
                );
            }
        }
    }
    Ok(out)
}

impl KeyStore for SqliteStore {
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.run(move |conn, path, t| {
            let json = record_json(&record)?;
            let revision = revision_to_sql(path, record.revision)?;
            let n = conn
                .prepare_cached(&named(
                    t,
                    "INSERT INTO api_keys (id, org, revision, expires_at, last_used_at, record)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        record.id.to_string(),
                        record.org.as_str(),
                        revision,
                        unix(record.expires_at),
                        unix(record.last_used_at),
                        json,
                    ])
                })
                .map_err(|e| backend(path, e))?;
            if n == 0 {
                Err(StoreError::Duplicate)
            } else {
                Ok(())
            }
        })
    }

    fn get(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        let id = id.to_string();
        self.run(move |conn, path, t| {
            let sql = named(t, &format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"));
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| backend(path, e))?;
            let mut rows = stmt.query([&id]).map_err(|e| backend(path, e))?;
            match rows.next().map_err(|e| backend(path, e))? {
                Some(row) => decode(row).map(Some),
                None => Ok(None),
            }
        })
    }

    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        let org = org.clone();
        self.run(move |conn, path, t| {
            let sql = named(t, &format!("SELECT {COLUMNS} FROM api_keys WHERE org = ?1"));
            query_records(conn, path, &sql, [org.as_str()], usize::MAX)
        })
    }

    fn update(
        &self,
        record: KeyRecord,
        expected_revision: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.run(move |conn, path, t| {
            let json = record_json(&record)?;
            let revision = revision_to_sql(path, record.revision)?;
            let id = record.id.to_string();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| backend(path, e))?;
            let updated = match i64::try_from(expected_revision) {
                // `last_used_at` only ever rises, even if the caller's copy is older than a
                // concurrent `touch`.
                Ok(expected) => tx
                    .prepare_cached(&named(
                        t,
                        "UPDATE api_keys SET org = ?3, revision = ?4, expires_at = ?5,
                             last_used_at = CASE
                                 WHEN ?6 IS NULL THEN last_used_at
                                 WHEN last_used_at IS NULL OR last_used_at < ?6 THEN ?6
                                 ELSE last_used_at END,
                             record = ?7
                         WHERE id = ?1 AND revision = ?2",
                    ))
                    .and_then(|mut s| {
                        s.execute(params![
                            id,
                            expected,
                            record.org.as_str(),
                            revision,
                            unix(record.expires_at),
                            unix(record.last_used_at),
                            json,
                        ])
                    })
                    .map_err(|e| backend(path, e))?,
                // No stored revision can be above i64::MAX.
                Err(_) => 0,
            };
            let outcome = if updated > 0 {
                Ok(())
            } else {
                let exists = tx
                    .query_row(
                        &named(t, "SELECT 1 FROM api_keys WHERE id = ?1"),
                        [&id],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(|e| backend(path, e))?;
                Err(if exists.is_some() {
                    StoreError::Conflict
                } else {
                    StoreError::NotFound
                })
            };
            tx.commit().map_err(|e| backend(path, e))?;
            outcome
        })
    }

    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let id = id.to_string();
        self.run(move |conn, path, t| {
            conn.prepare_cached(&named(t, "DELETE FROM api_keys WHERE id = ?1"))
                .and_then(|mut s| s.execute([&id]))
                .map(|n| n > 0)
                .map_err(|e| backend(path, e))
        })
    }

    fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        let after = after.map(KeyId::to_string);
        // No `LIMIT` in the SQL: rows without a usable id are skipped and do not fill the
        // page; the rows are read lazily and reading stops at `limit` records.
        self.run(move |conn, path, t| match after {
            Some(after) => {
                let sql = named(
                    t,
                    &format!("SELECT {COLUMNS} FROM api_keys WHERE id > ?1 ORDER BY id"),
                );
                query_records(conn, path, &sql, [after], limit)
            }
            None => {
                let sql = named(t, &format!("SELECT {COLUMNS} FROM api_keys ORDER BY id"));
                query_records(conn, path, &sql, [], limit)
            }
        })
    }

    fn touch(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let uses = [(*id, at)];
        async move { self.touch_many(&uses).await }
    }

    /// One transaction on the last-use connection for the whole batch.
    fn touch_many(
        &self,
        uses: &[(KeyId, OffsetDateTime)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let uses: Vec<(String, i64)> = uses
            .iter()
            .map(|(id, at)| (id.to_string(), at.unix_timestamp()))
            .collect();
        self.run_on(true, move |conn, path, t| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| backend(path, e))?;
            {
                let mut stmt = tx
                    .prepare_cached(&named(
                        t,
                        "UPDATE api_keys SET last_used_at = ?2
                         WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
                    ))
                    .map_err(|e| backend(path, e))?;
                for (id, at) in &uses {
                    stmt.execute(params![id, at])
                        .map_err(|e| backend(path, e))?;
                }
            }
            tx.commit().map_err(|e| backend(path, e))
        })
    }
}
