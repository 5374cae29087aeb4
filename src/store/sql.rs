//! What the SQL stores share: the row layout (index columns plus the record as JSON, with
//! `last_used_at` only in its own column) and how a row decodes.

use std::fmt;

use time::OffsetDateTime;

use crate::{KeyId, KeyRecord, OrgId, StoreError};

/// A row that does not decode into a valid record (the source of [`StoreError::Corrupt`]).
#[derive(Debug)]
struct RowError {
    id: Option<String>,
    reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "stored key {id}: {}", self.reason),
            None => write!(f, "stored key row: {}", self.reason),
        }
    }
}

impl std::error::Error for RowError {}

pub(crate) fn corrupt(id: Option<&str>, reason: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(Box::new(RowError {
        id: id.map(str::to_owned),
        reason: reason.to_string(),
    }))
}

pub(crate) fn unix(t: Option<OffsetDateTime>) -> Option<i64> {
    t.map(OffsetDateTime::unix_timestamp)
}

/// The record as JSON, without `last_used_at` (its column is authoritative).
pub(crate) fn record_json(record: &KeyRecord) -> Result<String, StoreError> {
    let mut r = record.clone();
    r.last_used_at = None;
    serde_json::to_string(&r).map_err(StoreError::backend)
}

/// Decodes a row's columns, checking that the index columns agree with the JSON and taking
/// `last_used_at` from its own column.
///
/// A row that does not decode, but whose id column does, becomes a
/// [`KeyRecord::undecodable`] placeholder: one corrupt row never fails a whole `list`, `scan`
/// or `get` (the manager reports it by id, leaves it out and can still delete it). Only a row
/// whose id column itself is unusable is an error (the SQLite store logs and skips such a
/// row in `list` and `scan`).
pub(crate) fn decode_row(
    id: &str,
    org: &str,
    revision: i64,
    last_used: Option<i64>,
    json: &str,
) -> Result<KeyRecord, StoreError> {
    decode_row_strict(id, org, revision, last_used, json).or_else(|e| placeholder(id, Some(org), e))
}

/// The [`KeyRecord::undecodable`] placeholder of a row whose id column decodes but whose
/// other columns (or JSON) do not; `e` itself when the id does not decode either. (SQLite
/// keeps whatever type a hand edit wrote into a column: a text `last_used_at` must not fail
/// every `scan` and so every sweep and rewrap.) An org column that is no organization's
/// (`None`: not text; empty or too long) gives the placeholder an organization no actor
/// belongs to: one such row must not fail every `scan` either.
pub(crate) fn placeholder(
    id: &str,
    org: Option<&str>,
    e: StoreError,
) -> Result<KeyRecord, StoreError> {
    let Ok(key_id) = KeyId::parse(id) else {
        return Err(e);
    };
    let org_id = org
        .and_then(|o| OrgId::try_new(o).ok())
        .unwrap_or_else(OrgId::nobody);
    // The id only: a decoder's message can quote the row's content.
    tracing::error!(target: "api_keys", key_id = %key_id, "a stored key row does not decode; it is reported and skipped");
    Ok(KeyRecord::undecodable(key_id, org_id))
}

fn decode_row_strict(
    id: &str,
    org: &str,
    revision: i64,
    last_used: Option<i64>,
    json: &str,
) -> Result<KeyRecord, StoreError> {
    let mut rec: KeyRecord = serde_json::from_str(json).map_err(|e| corrupt(Some(id), e))?;
    if rec.id.to_string() != id
        || rec.org.as_str() != org
        || u64::try_from(revision) != Ok(rec.revision)
    {
        return Err(corrupt(
            Some(id),
            "the id, org or revision column disagrees with the stored record",
        ));
    }
    rec.last_used_at = last_used
        .map(OffsetDateTime::from_unix_timestamp)
        .transpose()
        .map_err(|e| corrupt(Some(id), e))?;
    Ok(rec)
}

/// The default table name.
pub(crate) const DEFAULT_TABLE: &str = "api_keys";

/// A table name the stores accept: `[a-z_][a-z0-9_]{0,47}` (it is spliced into SQL).
pub(crate) fn valid_table(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 48
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// `sql` written for the default table (`api_keys`, `api_keys_schema`, `api_keys_org`, ...),
/// for `table` instead.
pub(crate) fn named(table: &str, sql: &str) -> String {
    sql.replace(DEFAULT_TABLE, table)
}
