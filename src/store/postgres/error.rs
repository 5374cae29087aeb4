//! The errors of [`PostgresStore`](super::PostgresStore).

use std::fmt;

use tokio_postgres::error::SqlState;

use crate::{BoxError, StoreError};

/// What went wrong in a [`PostgresStore`](super::PostgresStore); see [`PostgresError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PostgresErrorKind {
    /// The connection URL could not be parsed. Neither the message nor a source repeats any
    /// part of it (it may hold a password).
    InvalidUrl,
    /// The table name given to [`PostgresOptions::table`](crate::PostgresOptions::table) is
    /// not `[a-z_][a-z0-9_]{0,47}`, is a word PostgreSQL reserves, or names a
    /// `<table>_notify()` function the host already has (the source says which).
    InvalidTable,
    /// No connection could be made (server down, refused, authentication failed, timed out
    /// connecting, ...).
    Connect,
    /// Every pooled connection stayed busy for the pool-wait timeout
    /// ([`PostgresOptions::pool_wait_timeout`](super::PostgresOptions::pool_wait_timeout));
    /// the server may be perfectly reachable. Raise the pool size or look for slow statements.
    PoolTimeout,
    /// The server cancelled a statement that ran, or waited on a lock, longer than the
    /// statement timeout ([`PostgresOptions::statement_timeout`](super::PostgresOptions::statement_timeout)).
    StatementTimeout,
    /// The database's key-store schema is missing or older than this version of the crate
    /// needs: run [`PostgresStore::migrate`](super::PostgresStore::migrate) as the schema's
    /// owner. Nothing was changed.
    SchemaOutdated {
        /// The version found in the database (0: none).
        found: i32,
        /// The version this crate needs.
        required: i32,
    },
    /// An established connection was lost. The pool replaces it: the next call reconnects.
    ConnectionLost,
    /// The database's key-store schema is newer than this version of the crate knows. Nothing
    /// was changed; upgrade the crate.
    NewerSchema {
        /// The version found in the database.
        found: i32,
        /// The newest version this crate knows.
        supported: i32,
    },
    /// A value cannot be stored (a revision above `i64::MAX`).
    OutOfRange,
    /// [`PostgresStore::connect`](super::PostgresStore::connect) was called outside a tokio runtime.
    NoRuntime,
    /// The server refused a statement.
    Query,
    /// The server did not answer a call within the statement timeout plus a second (a frozen
    /// server or a hung socket, where the server's own timeout cannot fire). The call's
    /// connection is closed, never reused; the next call takes another.
    Unresponsive,
}

/// The source of the [`StoreError::Backend`] errors of a [`PostgresStore`](super::PostgresStore): what failed,
/// with the driver's own error as its source. Reach it with [`std::error::Error::source`]
/// and `downcast_ref::<PostgresError>()`.
#[derive(Debug)]
pub struct PostgresError {
    kind: PostgresErrorKind,
    source: Option<BoxError>,
}

impl PostgresError {
    /// What went wrong.
    pub fn kind(&self) -> PostgresErrorKind {
        self.kind
    }

    pub(super) fn new(kind: PostgresErrorKind, source: Option<BoxError>) -> Self {
        PostgresError { kind, source }
    }

    /// Classifies a driver error: a lost connection, or a refused statement.
    fn from_pg(e: tokio_postgres::Error) -> Self {
        let lost = e.is_closed()
            || match e.code() {
                None => e.as_db_error().is_none() && !is_about_the_statement(&e),
                Some(code) => {
                    code.code().starts_with("08")
                        || *code == SqlState::ADMIN_SHUTDOWN
                        || *code == SqlState::CRASH_SHUTDOWN
                        || *code == SqlState::CANNOT_CONNECT_NOW
                }
            };
        let kind = if e.code() == Some(&SqlState::QUERY_CANCELED) {
            PostgresErrorKind::StatementTimeout
        } else if lost {
            PostgresErrorKind::ConnectionLost
        } else {
            PostgresErrorKind::Query
        };
        Self::new(kind, Some(Box::new(e)))
    }
}

impl fmt::Display for PostgresError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PostgresErrorKind::InvalidTable => f.write_str(
                "a PostgreSQL key store table name must match [a-z_][a-z0-9_]{0,47}, not be a reserved word, and not clash with a function of the host",
            ),
            PostgresErrorKind::InvalidUrl => f.write_str(
                "invalid PostgreSQL connection URL (in a key=value string, quote values that hold spaces with single quotes)",
            ),
            PostgresErrorKind::Connect => f.write_str("cannot connect to PostgreSQL"),
            PostgresErrorKind::PoolTimeout => f.write_str(
                "timed out waiting for a free PostgreSQL connection: every pooled connection stayed busy (raise the pool size or look for slow statements)",
            ),
            PostgresErrorKind::StatementTimeout => f.write_str(
                "PostgreSQL cancelled a statement that exceeded the statement timeout (a locked table or an overloaded server)",
            ),
            PostgresErrorKind::SchemaOutdated { found, required } => write!(
                f,
                "the PostgreSQL key store has schema version {found}, but this version of api-keys needs version {required}: run PostgresStore::migrate as the schema's owner first (nothing was changed)"
            ),
            PostgresErrorKind::ConnectionLost => f.write_str(
                "the PostgreSQL connection was lost (the next call uses a new connection)",
            ),
            PostgresErrorKind::NewerSchema { found, supported } => write!(
                f,
                "the PostgreSQL key store has schema version {found}, newer than version {supported} known to this version of api-keys; upgrade api-keys (nothing was changed)"
            ),
            PostgresErrorKind::OutOfRange => {
                f.write_str("a revision above i64::MAX cannot be stored in PostgreSQL")
            }
            PostgresErrorKind::NoRuntime => {
                f.write_str("PostgresStore must be created inside a tokio runtime")
            }
            PostgresErrorKind::Query => f.write_str("PostgreSQL refused a statement"),
            PostgresErrorKind::Unresponsive => f.write_str(
                "PostgreSQL did not answer within the statement timeout plus a second (a frozen server or a hung connection); that connection was closed",
            ),
        }
    }
}

impl std::error::Error for PostgresError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Whether a driver error without a server code is about the statement and its values, not
/// the connection: a parameter that does not encode or a column that does not decode (a
/// column's type changed by hand), a column or parameter count that does not match. The
/// driver does not expose its error kinds; these are the `Display` texts of those kinds in
/// `tokio-postgres` 0.7. Anything else without a code is taken as a lost connection, as
/// before (a read is then retried once on a fresh one).
fn is_about_the_statement(e: &tokio_postgres::Error) -> bool {
    let text = e.to_string();
    [
        "error serializing parameter",
        "error deserializing column",
        "invalid column",
        "query returned an unexpected number of",
    ]
    .iter()
    .any(|p| text.starts_with(p))
        || (text.starts_with("expected ") && text.contains(" parameters but got "))
}

pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::backend(PostgresError::from_pg(e))
}

pub(super) fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::{PoolError, TimeoutType};
    // A pooled connection that fails its recycling check is replaced transparently, so what
    // reaches us is a wait for a free connection, or a failure to make a new one.
    let kind = match &e {
        PoolError::Timeout(TimeoutType::Wait) => PostgresErrorKind::PoolTimeout,
        _ => PostgresErrorKind::Connect,
    };
    StoreError::backend(PostgresError::new(kind, Some(Box::new(e))))
}

/// Whether `e` is a lost connection (a read may then be retried once on a fresh one).
pub(super) fn is_connection_lost(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend(b)
        if b.downcast_ref::<PostgresError>()
            .is_some_and(|p| p.kind == PostgresErrorKind::ConnectionLost))
}
