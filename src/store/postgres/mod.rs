//! [`PostgresStore`]: keys in PostgreSQL, shared by many server nodes, with a
//! `LISTEN/NOTIFY` change feed (feature `postgres`).
//!
//! Layout (schema version 3):
//!
//! ```sql
//! CREATE TABLE api_keys_schema (version INTEGER NOT NULL);   -- one row
//! CREATE TABLE api_keys (
//!     id           TEXT COLLATE "C" PRIMARY KEY,   -- binary order
//!     org          TEXT   NOT NULL,
//!     revision     BIGINT NOT NULL,
//!     expires_at   BIGINT,          -- Unix seconds, NULL = never
//!     last_used_at BIGINT,          -- Unix seconds; authoritative (see below)
//!     record       JSONB  NOT NULL  -- the KeyRecord, its last_used_at left null
//! );
//! CREATE INDEX api_keys_org ON api_keys (org);
//! CREATE INDEX api_keys_expires_at ON api_keys (expires_at);
//! ```
//!
//! Version 2 adds a trigger (see `MIGRATIONS` in `schema.rs`): every row inserted, deleted,
//! or updated in any column but `last_used_at` calls
//! `pg_notify('api_keys_changes', '<id>:<revision>:<insert|update|delete>')`, and a
//! `TRUNCATE` sends `reset`; so the notification is sent if and only if the change commits,
//! whoever made it: this crate, the host's own SQL, a restore or a migration. Version 3 makes
//! both triggers fire `ALWAYS`, also in sessions with `session_replication_role = replica`.

use std::fmt;
use std::sync::{Arc, Weak};

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Row, Socket};

use super::sql::{corrupt, record_json, unix};
use super::{ChangeListener, KeyStore};
use crate::{KeyId, KeyRecord, OrgId, StoreError};

mod error;
mod feed;
mod options;
mod schema;

pub use error::{PostgresError, PostgresErrorKind};
use error::{is_connection_lost, pg, pool_err};
use feed::{FeedConnector, run_feed};
pub use options::PostgresOptions;

/// The notification channel of the change feed (also spelled out in the statements).
/// The change feed's channel for the default table (`<table>_changes` for another).
pub(crate) const CHANNEL: &str = "api_keys_changes";

const SELECT: &str = "SELECT id, org, revision, last_used_at, record::text FROM api_keys";

struct Inner {
    pool: Pool,
    feed: FeedConnector,
    runtime: tokio::runtime::Handle,
    /// The table's name (`api_keys` by default).
    table: String,
    /// The bound of one call on a pooled connection (statement timeout + 1 s; `None`: none).
    call_timeout: Option<std::time::Duration>,
}

/// A [`KeyStore`] in PostgreSQL, shared by many server nodes.
///
/// - Connections come from a [`deadpool_postgres`] pool over `tokio-postgres`. A connection
///   that breaks fails the call that was using it ([`StoreError::Backend`] with a
///   [`PostgresError`] of kind [`PostgresErrorKind::ConnectionLost`], its source the driver's
///   error) and is replaced on the next call.
/// - The schema is created or migrated on connect (under an advisory lock, so nodes starting
///   together do not race); a database written by a newer version of this crate is refused.
/// - `update` is `UPDATE ... WHERE id = $1 AND revision = $2`; ids are `TEXT COLLATE "C"`.
/// - A row that does not decode is a [`KeyRecord::undecodable`] placeholder (reported, left
///   out of lists, deletable by its id); a row whose id column is no key id at all (a hand
///   insert) is logged and skipped by `list` and `scan` — remove it with SQL.
/// - Change feed: a trigger on the table notifies channel `api_keys_changes` of every
///   insert, delete and update (except of `last_used_at` alone) in the same transaction,
///   whoever made it (the host's own SQL too). [`KeyStore::changes`] starts a task on
///   the tokio runtime that [`PostgresStore::connect`] ran on, with its own `LISTEN`
///   connection (named `<application_name>-feed` in `pg_stat_activity`): it reports each
///   notification, and *proves* the feed live every 200 ms by sending a `NOTIFY` with a
///   random nonce on the same channel through that connection and waiting for it to come
///   back ([`ChangeListener::proven`]): a manager trusts its cache beyond the fallback TTL
///   only until the last proof's send time + its fallback TTL, so a frozen backend, a hung
///   socket or a transaction-pooling proxy (where `LISTEN` "works" and nothing arrives)
///   cannot let a revoked key through for longer than that. It reports
///   [`ChangeListener::connected`] once the first probe came back and
///   [`ChangeListener::disconnected`] when the connection drops or no probe came back for
///   3 s, then reconnects with backoff (100 ms doubling to 5 s). It holds the listener
///   weakly and ends, closing its connection, within about 200 ms. `touch` sends no notification (last use is not cached).
///
/// Cloning is cheap; clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("PostgresStore")
            .field("pool_size", &status.size)
            .field("pool_max_size", &status.max_size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects without TLS to the database at `url` (a `postgres://` URL or a `key=value`
    /// connection string, as `tokio-postgres` parses them), with the default
    /// [`PostgresOptions`], and checks that the schema is current. It changes nothing in the
    /// database, so a least-privilege role may use it (README, "Choosing a store", lists the
    /// privileges); run [`PostgresStore::migrate`] once, as the schema's owner, before.
    /// Must run inside a tokio runtime, which will run the change feed.
    ///
    /// # Errors
    /// [`StoreError::Backend`] with a [`PostgresError`] source of kind
    /// [`PostgresErrorKind::InvalidUrl`], [`PostgresErrorKind::Connect`],
    /// [`PostgresErrorKind::SchemaOutdated`], [`PostgresErrorKind::NewerSchema`],
    /// [`PostgresErrorKind::NoRuntime`], [`PostgresErrorKind::PoolTimeout`],
    /// [`PostgresErrorKind::Unresponsive`] (the server stopped answering its checks) or
    /// [`PostgresErrorKind::Query`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        PostgresOptions::new().connect(url).await
    }

    /// Like [`PostgresStore::connect`], with a TLS connector (for example from the
    /// `postgres-native-tls` or `tokio-postgres-rustls` crates).
    ///
    /// # Errors
    /// As [`PostgresStore::connect`].
    pub async fn connect_with_tls<T>(url: &str, tls: T) -> Result<Self, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send + Sync,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        PostgresOptions::new().connect_with_tls(url, tls).await
    }

    /// Creates or upgrades the schema (under an advisory lock, so nodes starting together do
    /// not race), then connects as [`PostgresStore::connect`] does: for a role that owns the
    /// schema (or may create tables in it). When the schema is already current it changes
    /// nothing, so a least-privilege role may call it too.
    ///
    /// # Errors
    /// As [`PostgresStore::connect`], and [`PostgresErrorKind::Query`] when the role may not
    /// create what the migration needs.
    pub async fn connect_and_migrate(url: &str) -> Result<Self, StoreError> {
        PostgresOptions::new().connect_and_migrate(url).await
    }

    /// Migration as its own step (e.g. a deploy job run as the schema's owner):
    /// [`PostgresStore::connect_and_migrate`], then closes the connection.
    ///
    /// # Errors
    /// As [`PostgresStore::connect_and_migrate`].
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        PostgresOptions::new()
            .connect_and_migrate(url)
            .await
            .map(drop)
    }

    /// The options that [`PostgresStore::connect`] uses by default, to change pool size and
    /// timeouts.
    pub fn options() -> PostgresOptions {
        PostgresOptions::new()
    }

    /// `sql` written for the default table, for this store's table.
    fn sql(&self, sql: &str) -> String {
        super::sql::named(&self.inner.table, sql)
    }

    /// The table holding the keys (see [`PostgresOptions::table`]).
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(pool_err)
    }

    /// Runs `work` (statements on `client`) within the call timeout. A server that does not
    /// answer cannot fire its own statement timeout (frozen, or a hung socket): without this
    /// bound a verification would wait on it forever.
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<Result<T, StoreError>> {
        match self.inner.call_timeout {
            Some(d) => tokio::time::timeout(d, work).await.ok(),
            None => Some(work.await),
        }
    }

    /// The result of a [`PostgresStore::bounded`] call on `client`; a connection whose call
    /// timed out may still carry it, so it is closed instead of going back to the pool.
    fn finish<T>(
        client: deadpool_postgres::Object,
        result: Option<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        result.unwrap_or_else(|| {
            drop(deadpool_postgres::Object::take(client));
            Err(StoreError::backend(PostgresError::new(
                PostgresErrorKind::Unresponsive,
                None,
            )))
        })
    }

    async fn query_records(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Page, StoreError> {
        // A read is retried once on a lost connection: after a server restart the pool may
        // still hold connections that died with it, and a read has no effect to repeat.
        match self.query_records_once(sql, params).await {
            Err(e) if is_connection_lost(&e) => self.query_records_once(sql, params).await,
            r => r,
        }
    }

    async fn query_records_once(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Page, StoreError> {
        let client = self.client().await?;
        let rows = self
            .bounded(async {
                let stmt = client.prepare_cached(sql).await.map_err(pg)?;
                client.query(&stmt, params).await.map_err(pg)
            })
            .await;
        let rows = Self::finish(client, rows)?;
        let mut page = Page {
            records: Vec::with_capacity(rows.len()),
            last_id: rows.last().and_then(|r| r.try_get::<_, String>(0).ok()),
            rows: rows.len(),
        };
        page.records.extend(rows.iter().filter_map(decode));
        Ok(page)
    }
}

/// The rows a query read: the records of those whose id column is a key id, the raw id of
/// the last row (where a scan goes on), and how many rows there were.
struct Page {
    records: Vec<KeyRecord>,
    last_id: Option<String>,
    rows: usize,
}

fn revision_to_sql(revision: u64) -> Result<i64, StoreError> {
    i64::try_from(revision)
        .map_err(|_| StoreError::backend(PostgresError::new(PostgresErrorKind::OutOfRange, None)))
}

/// Decodes a row selected by [`SELECT`], checking that the columns agree with the JSON. A
/// row whose id column is a key id but which does not decode is a
/// [`KeyRecord::undecodable`] placeholder; a row whose id column is no key id (a hand insert,
/// a botched restore) is reported and left out (`None`): no key is ever looked up by it, and
/// it must not fail every `list` of its organization and every `scan` (so every sweep and
/// rewrap) either.
fn decode(row: &Row) -> Option<KeyRecord> {
    let decoded = match row.try_get::<_, &str>(0) {
        Ok(id) => {
            let org = row.try_get::<_, &str>(1);
            let columns = (|| -> Result<(i64, Option<i64>, &str), tokio_postgres::Error> {
                Ok((row.try_get(2)?, row.try_get(3)?, row.try_get(4)?))
            })();
            match (org, columns) {
                (Ok(org), Ok((revision, last_used, json))) => {
                    super::sql::decode_row(id, org, revision, last_used, json)
                }
                (Ok(org), Err(e)) => super::sql::placeholder(id, Some(org), corrupt(Some(id), e)),
                (Err(e), _) => super::sql::placeholder(id, None, corrupt(Some(id), e)),
            }
        }
        Err(e) => Err(corrupt(None, e)),
    };
    // Only a row whose id column is unusable fails to decode; its content is not logged.
    decoded
        .inspect_err(|e| {
            // Counted as the corrupt-row error it was before (as the SQLite store counts it).
            crate::metrics::store_error(e);
            tracing::error!(target: "api_keys", "a stored key row's id column is not a key id; it is reported and skipped");
        })
        .ok()
}

impl KeyStore for PostgresStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        {
            let json = record_json(&record)?;
            let revision = revision_to_sql(record.revision)?;
            let client = self.client().await?;
            let rows = self
                .bounded(async {
                    let stmt = client
                        .prepare_cached(&self.sql(
                            "INSERT INTO api_keys (id, org, revision, expires_at, last_used_at, record)
                             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)
                             ON CONFLICT (id) DO NOTHING",
                        ))
                        .await
                        .map_err(pg)?;
                    client
                        .execute(
                            &stmt,
                            &[
                                &record.id.to_string(),
                                &record.org.as_str(),
                                &revision,
                                &unix(record.expires_at),
                                &unix(record.last_used_at),
                                &json,
                            ],
                        )
                        .await
                        .map_err(pg)
                })
                .await;
            let rows = Self::finish(client, rows)?;
            if rows == 0 {
                Err(StoreError::Duplicate)
            } else {
                Ok(())
            }
        }
    }

    fn get(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        let id = id.to_string();
        async move {
            let sql = self.sql(&format!("{SELECT} WHERE id = $1"));
            Ok(self.query_records(&sql, &[&id]).await?.records.pop())
        }
    }

    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        let org = org.clone();
        async move {
            // PostgreSQL text cannot hold a NUL, so no row has such an organization (and the
            // server would refuse the parameter).
            if org.as_str().contains('\0') {
                return Ok(Vec::new());
            }
            let sql = self.sql(&format!("{SELECT} WHERE org = $1"));
            Ok(self.query_records(&sql, &[&org.as_str()]).await?.records)
        }
    }

    async fn update(&self, record: KeyRecord, expected_revision: u64) -> Result<(), StoreError> {
        {
            let json = record_json(&record)?;
            let revision = revision_to_sql(record.revision)?;
            let id = record.id.to_string();
            let client = self.client().await?;
            let outcome = self
                .bounded(async {
                    // No stored revision can be above i64::MAX: such an update can only fail.
                    if let Ok(expected) = i64::try_from(expected_revision) {
                        // `last_used_at` only ever rises (GREATEST ignores NULLs), even if the
                        // caller's copy is older than a concurrent `touch`.
                        let stmt = client
                            .prepare_cached(&self.sql(
                                "UPDATE api_keys SET org = $3, revision = $4, expires_at = $5,
                                     last_used_at = GREATEST(last_used_at, $6),
                                     record = $7::text::jsonb
                                 WHERE id = $1 AND revision = $2",
                            ))
                            .await
                            .map_err(pg)?;
                        let rows = client
                            .execute(
                                &stmt,
                                &[
                                    &id,
                                    &expected,
                                    &record.org.as_str(),
                                    &revision,
                                    &unix(record.expires_at),
                                    &unix(record.last_used_at),
                                    &json,
                                ],
                            )
                            .await
                            .map_err(pg)?;
                        if rows > 0 {
                            return Ok(());
                        }
                    }
                    let stmt = client
                        .prepare_cached(&self.sql("SELECT 1 FROM api_keys WHERE id = $1"))
                        .await
                        .map_err(pg)?;
                    let exists = client.query_opt(&stmt, &[&id]).await.map_err(pg)?;
                    Err(if exists.is_some() {
                        StoreError::Conflict
                    } else {
                        StoreError::NotFound
                    })
                })
                .await;
            Self::finish(client, outcome)
        }
    }

    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let id = id.to_string();
        async move {
            let client = self.client().await?;
            let rows = self
                .bounded(async {
                    let stmt = client
                        .prepare_cached(&self.sql("DELETE FROM api_keys WHERE id = $1"))
                        .await
                        .map_err(pg)?;
                    client.execute(&stmt, &[&id]).await.map_err(pg)
                })
                .await;
            Ok(Self::finish(client, rows)? > 0)
        }
    }

    fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        let mut after = after.map(KeyId::to_string);
        async move {
            // Skipped rows do not count towards `limit` (as with SQLite): a short page is the
            // end of the table to every pager (`expiring_all`, the CLI's rewrap count), so a
            // page is read on until it is full or the rows run out.
            let mut out: Vec<KeyRecord> = Vec::new();
            while out.len() < limit {
                let want = limit - out.len();
                let want_sql = i64::try_from(want).unwrap_or(i64::MAX);
                let page = match &after {
                    Some(after) => {
                        let sql = self.sql(&format!("{SELECT} WHERE id > $1 ORDER BY id LIMIT $2"));
                        self.query_records(&sql, &[after, &want_sql]).await?
                    }
                    None => {
                        let sql = self.sql(&format!("{SELECT} ORDER BY id LIMIT $1"));
                        self.query_records(&sql, &[&want_sql]).await?
                    }
                };
                out.extend(page.records);
                if page.rows < want {
                    break;
                }
                match page.last_id {
                    Some(last) => after = Some(last),
                    None => return Err(corrupt(None, "an id column that is not text")),
                }
            }
            Ok(out)
        }
    }

    fn touch(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let uses = [(*id, at)];
        async move { self.touch_many(&uses).await }
    }

    /// One `UPDATE` for the whole batch.
    fn touch_many(
        &self,
        uses: &[(KeyId, OffsetDateTime)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let ids: Vec<String> = uses.iter().map(|(id, _)| id.to_string()).collect();
        let ats: Vec<i64> = uses.iter().map(|(_, at)| at.unix_timestamp()).collect();
        async move {
            if ids.is_empty() {
                return Ok(());
            }
            let client = self.client().await?;
            let done = self
                .bounded(async {
                    let stmt = client
                        .prepare_cached(&self.sql(
                            "UPDATE api_keys AS k SET last_used_at = u.at
                             FROM (SELECT id, max(at) AS at
                                   FROM unnest($1::text[], $2::bigint[]) AS x(id, at) GROUP BY id) AS u
                             WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
                        ))
                        .await
                        .map_err(pg)?;
                    client.execute(&stmt, &[&ids, &ats]).await.map_err(pg)
                })
                .await;
            Self::finish(client, done).map(|_| ())
        }
    }

    fn changes(&self, listener: Weak<dyn ChangeListener>) -> bool {
        self.inner.runtime.spawn(run_feed(
            self.inner.feed.clone(),
            listener,
            self.sql(CHANNEL).into(),
        ));
        true
    }
}
