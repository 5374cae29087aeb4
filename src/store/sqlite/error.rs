//! The errors of a [`SqliteStore`](super::SqliteStore): what failed, on which file.

use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

/// What went wrong in a [`SqliteStore`](super::SqliteStore); see [`SqliteError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqliteErrorKind {
    /// The path cannot be opened or created (a missing directory, no permission, a directory
    /// instead of a file, ...).
    CannotOpen,
    /// The file exists but is not a SQLite database (or is encrypted or badly damaged).
    NotADatabase,
    /// The file or its directory is read-only, or the file is marked read-only (no write
    /// permission bits — refused even for a superuser, who could otherwise write it).
    ReadOnly,
    /// The file's key-store schema is newer than this version of the crate knows. The file is
    /// left untouched; upgrade the crate.
    NewerSchema {
        /// The version found in the file.
        found: i64,
        /// The newest version this crate knows.
        supported: i64,
    },
    /// A value cannot be stored (a revision above `i64::MAX`).
    OutOfRange,
    /// The table name given to [`SqliteStore::open_table`](super::SqliteStore::open_table) is
    /// not `[a-z_][a-z0-9_]{0,47}`.
    InvalidTable,
    /// A statement failed (I/O error, disk full, the file locked by another process for too
    /// long, ...).
    Query,
    /// The file was deleted or replaced (renamed over, restored from a backup) after the store
    /// opened it: the store would read and write the old, deleted file, unseen by every other
    /// process. Open the store again.
    Replaced,
}

/// The source of the [`StoreError::Backend`](crate::StoreError::Backend) errors of a
/// [`SqliteStore`](super::SqliteStore): what failed, on which file, with SQLite's own error as
/// its source. Reach it with [`std::error::Error::source`] and
/// `downcast_ref::<SqliteError>()`.
#[derive(Debug)]
pub struct SqliteError {
    pub(super) kind: SqliteErrorKind,
    pub(super) path: PathBuf,
    pub(super) source: Option<rusqlite::Error>,
}

impl SqliteError {
    /// What went wrong.
    pub fn kind(&self) -> SqliteErrorKind {
        self.kind
    }

    /// The database file concerned.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn new(kind: SqliteErrorKind, path: &Path, source: Option<rusqlite::Error>) -> Self {
        SqliteError {
            kind,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Classifies a SQLite error by its code.
    pub(super) fn from_sqlite(path: &Path, e: rusqlite::Error) -> Self {
        let kind = match e.sqlite_error_code() {
            Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => {
                SqliteErrorKind::CannotOpen
            }
            // A damaged file (`SQLITE_CORRUPT`) is no database to retry a statement on.
            Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
                SqliteErrorKind::NotADatabase
            }
            Some(ErrorCode::ReadOnly) => SqliteErrorKind::ReadOnly,
            _ => SqliteErrorKind::Query,
        };
        Self::new(kind, path, Some(e))
    }
}

impl fmt::Display for SqliteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match self.kind {
            SqliteErrorKind::CannotOpen => {
                write!(f, "cannot open or create the SQLite key store at {p}")
            }
            SqliteErrorKind::NotADatabase => {
                write!(f, "{p} is not a SQLite database (or is damaged)")
            }
            SqliteErrorKind::ReadOnly => write!(
                f,
                "the SQLite key store at {p} is read-only; it needs write access to the file and its directory"
            ),
            SqliteErrorKind::NewerSchema { found, supported } => write!(
                f,
                "the SQLite key store at {p} has schema version {found}, newer than version {supported} known to this version of api-keys; upgrade api-keys (the file was not changed)"
            ),
            SqliteErrorKind::OutOfRange => write!(
                f,
                "SQLite key store at {p}: a revision above i64::MAX cannot be stored"
            ),
            SqliteErrorKind::Query => write!(f, "SQLite key store at {p}: statement failed"),
            SqliteErrorKind::Replaced => write!(
                f,
                "the SQLite key store at {p} was deleted or replaced since it was opened; open the store again"
            ),
            SqliteErrorKind::InvalidTable => write!(
                f,
                "SQLite key store at {p}: a table name must match [a-z_][a-z0-9_]{{0,47}}"
            ),
        }
    }
}

impl std::error::Error for SqliteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
