//! Hooks for the benchmarks, fuzz targets and timing tests (feature `bench`). Not part of the
//! public API: hidden from the docs, no stability promise, never enabled by default.
//!
//! Nothing here constructs a [`Verified`](crate::Verified): only
//! [`KeyManager::verify`](crate::KeyManager::verify) does. What it offers is what a bench
//! needs to set up realistic inputs without a million management calls: the token formatter
//! (to build a token with a valid checksum and a wrong secret) and sealing/opening a record
//! under a keyring (to fill a store in bulk and to time the crypto alone).

use time::OffsetDateTime;

use crate::record::Draft;
use crate::token::SECRET_LEN;
use crate::{Error, KeyId, KeyRecord, Keyring, OrgId, Scope, UserId};

/// Formats a token of `prefix` with the given id and secret, with a valid checksum.
pub fn format_token(prefix: &str, id: KeyId, secret: &[u8; SECRET_LEN]) -> String {
    crate::token::format_token(prefix, id, secret).to_string()
}

/// A key id from its raw 64-bit value.
pub fn key_id(value: u64) -> KeyId {
    KeyId(value)
}

/// Seals a new record (revision 1) under the keyring's current version, exactly as
/// `KeyManager::generate` does after its policy checks.
///
/// # Errors
/// [`Error::Random`] if the OS generator fails (for the IV).
#[allow(clippy::too_many_arguments)]
pub fn seal_record(
    keyring: &Keyring,
    id: KeyId,
    org: OrgId,
    name: String,
    scopes: Vec<Scope>,
    created_at: OffsetDateTime,
    created_by: UserId,
    expires_at: Option<OffsetDateTime>,
    secret: &[u8; SECRET_LEN],
) -> Result<KeyRecord, Error> {
    let draft = Draft {
        id,
        org,
        name,
        scopes,
        created_at,
        created_by,
        expires_at,
        ..Draft::new("sak")
    };
    KeyRecord::seal_new(keyring, draft, secret)
}

/// Opens a record as `verify` does on a cache miss (tag check, id check, decrypt) and reports
/// whether the decrypted secret equals `secret` (compared in constant time).
///
/// # Errors
/// [`Error::Integrity`] for a record that fails its integrity check.
pub fn open_record(
    keyring: &Keyring,
    record: &KeyRecord,
    secret: &[u8; SECRET_LEN],
) -> Result<bool, Error> {
    let mut plain = zeroize::Zeroizing::new([0u8; SECRET_LEN]);
    record.open_to_verify(keyring, &record.class, record.id, &mut plain)?;
    Ok(crate::crypto::ct_eq_bytes(&plain, secret).into())
}

/// Parses a token exactly as `verify` does (format, checksum, canonical decoding) and returns
/// its id and secret: for the SHA-256 baseline, which must do the same parsing work.
///
/// # Errors
/// [`Error::Malformed`] as [`UntrustedToken::parse`](crate::UntrustedToken::parse).
pub fn parse_token(prefix: &str, token: &str) -> Result<(KeyId, [u8; SECRET_LEN]), Error> {
    let mut secret = zeroize::Zeroizing::new([0u8; SECRET_LEN]);
    let id = crate::UntrustedToken::parse_into(prefix, token.as_bytes(), &mut secret)?;
    Ok((id, *secret))
}
