//! The PostgreSQL store's schema: its versions, the migrations between them, and the checks
//! that a table name and a database's schema are ones this crate can use.

use super::error::pg;
use super::{PostgresError, PostgresErrorKind, PostgresStore};
use crate::StoreError;

/// The schema version this crate writes. A database with a higher version is refused.
const SCHEMA_VERSION: i32 = 3;

/// Migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE api_keys (
        id           TEXT COLLATE "C" PRIMARY KEY,
        org          TEXT   NOT NULL,
        revision     BIGINT NOT NULL,
        expires_at   BIGINT,
        last_used_at BIGINT,
        record       JSONB  NOT NULL
    );
    CREATE INDEX api_keys_org ON api_keys (org);
    CREATE INDEX api_keys_expires_at ON api_keys (expires_at);
"#,
    r#"
    CREATE OR REPLACE FUNCTION api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'TRUNCATE' THEN
            PERFORM pg_notify('api_keys_changes', 'reset');
            RETURN NULL;
        END IF;
        IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id) THEN
            PERFORM pg_notify('api_keys_changes', OLD.id || ':0:delete');
        END IF;
        IF TG_OP = 'INSERT' THEN
            PERFORM pg_notify('api_keys_changes', NEW.id || ':' || NEW.revision || ':insert');
        ELSIF TG_OP = 'UPDATE' THEN
            PERFORM pg_notify('api_keys_changes', NEW.id || ':' || NEW.revision || ':update');
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER api_keys_notify
        AFTER INSERT OR DELETE OR UPDATE OF id, org, revision, expires_at, record ON api_keys
        FOR EACH ROW EXECUTE FUNCTION api_keys_notify();
    CREATE TRIGGER api_keys_notify_truncate
        AFTER TRUNCATE ON api_keys
        FOR EACH STATEMENT EXECUTE FUNCTION api_keys_notify();
"#,
    // The triggers fire in every session, also under `session_replication_role = replica`
    // (a logical-replication apply worker, or the bulk-load idiom that skips triggers): a
    // change committed there must be heard too.
    r#"
    ALTER TABLE api_keys ENABLE ALWAYS TRIGGER api_keys_notify;
    ALTER TABLE api_keys ENABLE ALWAYS TRIGGER api_keys_notify_truncate;
"#,
];

/// Serializes concurrent migrations (any constant unlikely to collide with the host's own
/// advisory locks: "api-keys" in ASCII).
const MIGRATION_LOCK: i64 = 0x6170_692d_6b65_7973;

/// More than the statements of the migration's transaction (its bound is this many calls).
const MIGRATION_STATEMENTS: u32 = 16;

impl PostgresStore {
    pub(super) async fn run_migrations(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        // The server bounds each statement by its statement timeout; this side bounds the
        // whole transaction (fewer than MIGRATION_STATEMENTS of them) by as many calls, so a
        // server that stops answering fails the migration instead of hanging it. The
        // connection is then closed, which rolls the transaction back.
        let done = match self.inner.call_timeout {
            Some(d) => tokio::time::timeout(
                d.saturating_mul(MIGRATION_STATEMENTS),
                self.migrate_on(&mut client),
            )
            .await
            .ok(),
            None => Some(self.migrate_on(&mut client).await),
        };
        Self::finish(client, done)
    }

    async fn migrate_on(&self, client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let exists: bool = tx
            .query_one(
                &self.sql("SELECT to_regclass('api_keys_schema') IS NOT NULL"),
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        if !exists {
            tx.batch_execute(&self.sql("CREATE TABLE api_keys_schema (version INTEGER NOT NULL)"))
                .await
                .map_err(pg)?;
        }
        let found: Option<i32> = tx
            .query_one(&self.sql("SELECT max(version) FROM api_keys_schema"), &[])
            .await
            .map_err(pg)?
            .get(0);
        let found = found.unwrap_or(0);
        if found < 2 {
            // Version 2 creates `<table>_notify()`: a function of that name that is already
            // there is the host's own, never replaced.
            let taken: bool = tx
                .query_one(
                    &self.sql("SELECT to_regproc('api_keys_notify') IS NOT NULL"),
                    &[],
                )
                .await
                .map_err(pg)?
                .get(0);
            if taken {
                return Err(StoreError::backend(PostgresError::new(
                    PostgresErrorKind::InvalidTable,
                    Some(
                        format!(
                            "a function named {} already exists: choose another table name",
                            self.sql("api_keys_notify()")
                        )
                        .into(),
                    ),
                )));
            }
        }
        if found > SCHEMA_VERSION {
            return Err(StoreError::backend(PostgresError::new(
                PostgresErrorKind::NewerSchema {
                    found,
                    supported: SCHEMA_VERSION,
                },
                None,
            )));
        }
        if found < SCHEMA_VERSION {
            for step in &MIGRATIONS[found.max(0) as usize..] {
                tx.batch_execute(&self.sql(step)).await.map_err(pg)?;
            }
            tx.execute(&self.sql("DELETE FROM api_keys_schema"), &[])
                .await
                .map_err(pg)?;
            tx.execute(
                &self.sql("INSERT INTO api_keys_schema (version) VALUES ($1)"),
                &[&SCHEMA_VERSION],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    }

    /// Refuses a table name that PostgreSQL reserves (`order`, `user`, ...): it matches the
    /// name pattern but cannot name a table unquoted.
    pub(super) async fn check_table_name(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let reserved = self
            .bounded(async {
                client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_get_keywords() WHERE word = $1 AND catcode IN ('R', 'T'))",
                        &[&self.inner.table],
                    )
                    .await
                    .map_err(pg)?
                    .try_get::<_, bool>(0)
                    .map_err(pg)
            })
            .await;
        if Self::finish(client, reserved)? {
            return Err(StoreError::backend(PostgresError::new(
                PostgresErrorKind::InvalidTable,
                Some(format!("`{}` is a reserved word in PostgreSQL", self.inner.table).into()),
            )));
        }
        Ok(())
    }

    /// Checks that the schema is the one this crate writes, changing nothing.
    pub(super) async fn check_schema(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let found = self
            .bounded(async {
                match client
                    .query_one(&self.sql("SELECT max(version) FROM api_keys_schema"), &[])
                    .await
                {
                    Ok(row) => Ok(row.try_get::<_, Option<i32>>(0).map_err(pg)?.unwrap_or(0)),
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
                    {
                        Ok(0)
                    }
                    Err(e) => Err(pg(e)),
                }
            })
            .await;
        let found = Self::finish(client, found)?;
        let kind = match found.cmp(&SCHEMA_VERSION) {
            std::cmp::Ordering::Equal => return Ok(()),
            std::cmp::Ordering::Greater => PostgresErrorKind::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            },
            std::cmp::Ordering::Less => PostgresErrorKind::SchemaOutdated {
                found,
                required: SCHEMA_VERSION,
            },
        };
        Err(StoreError::backend(PostgresError::new(kind, None)))
    }

    /// The schema version of the database.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the query fails, with a [`PostgresError`] of kind
    /// [`PostgresErrorKind::Unresponsive`] when the server does not answer within the
    /// statement timeout plus a second, like every call.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let client = self.client().await?;
        let version = self
            .bounded(async {
                client
                    .query_one(&self.sql("SELECT max(version) FROM api_keys_schema"), &[])
                    .await
                    .map_err(pg)?
                    .try_get::<_, Option<i32>>(0)
                    .map_err(pg)
                    .map(|v| v.unwrap_or(0))
            })
            .await;
        Self::finish(client, version)
    }
}
