//! The stored form of a key: [`KeyRecord`], and sealing/opening it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::crypto::{Keyring, Subkeys, fill_random};
use crate::token::SECRET_LEN;
use crate::{
    Credits, Error, KeyId, LimitScope, OrgId, RateLimit, Refill, RevocationReason, Scope, UserId,
};
use serde_fields::hex_bytes;
pub(crate) use serde_fields::{unix, unix_opt};

/// The record layout version this crate writes and reads. Format 1 (before the first
/// release) did not bind the key class; its records are refused as [`Error::Integrity`].
pub const RECORD_FORMAT: u16 = 2;
/// The `format` of a placeholder a store returns for a row it cannot decode
/// ([`KeyRecord::undecodable`]).
const UNDECODABLE_FORMAT: u16 = 0;

/// The encrypted and authenticated part of a record.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Master-key version whose subkeys sealed this record.
    pub key_version: u32,
    /// CBC initialization vector (lowercase hex in serialized form).
    #[serde(with = "hex_bytes")]
    pub iv: [u8; 16],
    /// AES-128-CBC encryption of the 32-byte secret (lowercase hex in serialized form).
    #[serde(with = "hex_bytes")]
    pub ciphertext: [u8; 32],
    /// AES-CMAC over the revocation details (`revoked_by` and the reason), bound to the
    /// record's format, key version, class and id (lowercase hex in serialized form). The main
    /// tag covers these 16 bytes, so verification checks a fixed-length encoding whatever the
    /// key's state; management calls check this tag too. (Absent in format 1 rows, which then
    /// decode and fail closed.)
    #[serde(default, with = "hex_bytes")]
    pub details_tag: [u8; 16],
    /// AES-CMAC over the canonical encoding (lowercase hex in serialized form).
    #[serde(with = "hex_bytes")]
    pub tag: [u8; 16],
}

impl Sealed {
    /// Whether `other` is this very seal, as a write sent it: the same key version and both
    /// tags equal, the tags compared in constant time. The main tag covers the IV, fresh for
    /// every write, so another writer's identical change has another seal.
    pub(crate) fn same_seal(&self, other: &Sealed) -> bool {
        let tags = crate::crypto::ct_eq_bytes(&self.tag, &other.tag)
            & crate::crypto::ct_eq_bytes(&self.details_tag, &other.details_tag);
        self.key_version == other.key_version && bool::from(tags)
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

/// A key as the store keeps it. Serialized field names are a stable storage format.
///
/// Everything that decides whether a key is accepted is covered by `sealed.tag`: `format`,
/// `sealed.key_version`, `class` (the manager's token prefix), `id`, `org`, `scopes`,
/// `created_at`, `created_by`, `expires_at`, `revoked_at`, `revoked_by`, `revocation`,
/// `replaces`, `replaced_by`, `owner`, `meta`, `rate_limits`, `credits`, `sealed.iv` and
/// `sealed.ciphertext`. `name`, `last_used_at`, `revision` and `notices` are not (they decide
/// nothing). A record whose tag does not match is never accepted, and a record of another
/// class (another manager's prefix) is never this manager's key: management calls treat it as
/// absent, verification as an unknown id.
///
/// Timestamps are whole UTC seconds, serialized as Unix seconds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Layout version ([`RECORD_FORMAT`]).
    pub format: u16,
    /// The key class: the token prefix of the manager that created the key (e.g. `sak`).
    /// (Absent in format 1 rows, which then decode and fail closed.)
    #[serde(default)]
    pub class: String,
    /// The key's public id.
    pub id: KeyId,
    /// Owning organization.
    pub org: OrgId,
    /// Display name (1–128 characters, no control characters).
    pub name: String,
    /// Granted scopes, sorted and de-duplicated.
    pub scopes: Vec<Scope>,
    /// Creation time.
    #[serde(with = "unix")]
    pub created_at: OffsetDateTime,
    /// Manager who created the key.
    pub created_by: UserId,
    /// Expiry; `None` means never.
    #[serde(with = "unix_opt")]
    pub expires_at: Option<OffsetDateTime>,
    /// Revocation time, if revoked.
    #[serde(with = "unix_opt")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Manager who revoked the key (for automations: the acting user, if any).
    pub revoked_by: Option<UserId>,
    /// Why the key was revoked.
    #[serde(default)]
    pub revocation: Option<RevocationReason>,
    /// The key this one replaced (by `roll`).
    #[serde(default)]
    pub replaces: Option<KeyId>,
    /// The key that replaced this one (by `roll`).
    #[serde(default)]
    pub replaced_by: Option<KeyId>,
    /// The host's owner or external id for the key (at most 128 bytes).
    #[serde(default)]
    pub owner: Option<String>,
    /// The host's metadata (string map, at most 4 KiB encoded).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Named rate limits (at most 8).
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    /// Usage credits, if the key has a budget.
    #[serde(default)]
    pub credits: Option<Credits>,
    /// Which notices the sweep already sent (not authenticated: they decide nothing).
    #[serde(default)]
    pub notices: Notices,
    /// Last successful verification (throttled), not authenticated.
    #[serde(with = "unix_opt")]
    pub last_used_at: Option<OffsetDateTime>,
    /// Compare-and-swap revision, bumped by every update except `touch`. Fits an `i64`.
    pub revision: u64,
    /// Encrypted secret and tag.
    pub sealed: Sealed,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("org", &self.org)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("revision", &self.revision)
            .field("sealed", &self.sealed)
            .finish_non_exhaustive()
    }
}

/// What the sweep already announced for a key, so that each notice goes out once even when
/// several nodes sweep at the same moment (changed with compare-and-swap). Not under the tag:
/// a forged mark can suppress or repeat a notice, or (an `unused_warned_at` in the past) let an
/// idle key be revoked without its warning — denial of service, as deleting the row is — but
/// never make a key work.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notices {
    /// Lead times (seconds before expiry) whose warning was sent.
    #[serde(default)]
    pub expiry_warned: Vec<i64>,
    /// Whether the `Expired` event was sent.
    #[serde(default)]
    pub expired: bool,
    /// Whether the warning before an unused-key revocation was sent.
    #[serde(default)]
    pub unused_warned: bool,
    /// When that warning was sent (Unix seconds when serialized; absent when never). A use
    /// after it makes it stale: the next idle period gets a warning of its own.
    #[serde(default, with = "unix_opt", skip_serializing_if = "Option::is_none")]
    pub unused_warned_at: Option<OffsetDateTime>,
}

/// Truncates to whole UTC seconds (records hold whole UTC seconds only). A time whose UTC
/// instant lies outside the calendar (its last moment at a negative offset, its first at a
/// positive one: a clock may show either) is held as the calendar's nearest end, so the
/// result is always a time a record can hold and its tag can cover.
pub(crate) fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    const FIRST: i64 = time::PrimitiveDateTime::MIN.assume_utc().unix_timestamp();
    const LAST: i64 = time::PrimitiveDateTime::MAX.assume_utc().unix_timestamp();
    OffsetDateTime::from_unix_timestamp(t.unix_timestamp().clamp(FIRST, LAST))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The deciding fields of a new record, before sealing.
#[derive(Clone)]
pub(crate) struct Draft {
    pub class: String,
    pub id: KeyId,
    pub org: OrgId,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: OffsetDateTime,
    pub created_by: UserId,
    pub expires_at: Option<OffsetDateTime>,
    pub replaces: Option<KeyId>,
    pub owner: Option<String>,
    pub meta: BTreeMap<String, String>,
    pub rate_limits: Vec<RateLimit>,
    pub credits: Option<Credits>,
}

impl Draft {
    /// A draft of `class` with empty fields, for struct-update syntax.
    #[allow(dead_code)]
    pub(crate) fn new(class: &str) -> Draft {
        Draft {
            class: class.to_string(),
            id: KeyId(0),
            org: OrgId::new("-"),
            name: String::new(),
            scopes: Vec::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            created_by: UserId::new("-"),
            expires_at: None,
            replaces: None,
            owner: None,
            meta: BTreeMap::new(),
            rate_limits: Vec::new(),
            credits: None,
        }
    }
}

impl KeyRecord {
    /// A placeholder for a row a store cannot decode (corrupt JSON, index columns that
    /// disagree with the record, ...), built from the row's id and organization columns.
    ///
    /// Return it from `get`, `list` and `scan` instead of failing the whole call: the manager
    /// never accepts it (it fails every integrity check), reports it with an audit event
    /// naming the id (never the row's content), leaves it out of lists, counts it as failed in
    /// `rewrap`, and can still `delete` it by its id.
    pub fn undecodable(id: KeyId, org: OrgId) -> KeyRecord {
        KeyRecord {
            format: UNDECODABLE_FORMAT,
            class: String::new(),
            id,
            org,
            name: String::new(),
            scopes: Vec::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            created_by: UserId::new("?"),
            expires_at: None,
            revoked_at: None,
            revoked_by: None,
            revocation: None,
            replaces: None,
            replaced_by: None,
            owner: None,
            meta: BTreeMap::new(),
            rate_limits: Vec::new(),
            credits: None,
            notices: Notices::default(),
            last_used_at: None,
            revision: 0,
            sealed: Sealed {
                key_version: 0,
                iv: [0; 16],
                ciphertext: [0; 32],
                details_tag: [0; 16],
                tag: [0; 16],
            },
        }
    }

    /// Whether this is a [`KeyRecord::undecodable`] placeholder.
    pub fn is_undecodable(&self) -> bool {
        self.format == UNDECODABLE_FORMAT
    }

    /// The key id (the store's primary key).
    pub fn id(&self) -> &KeyId {
        &self.id
    }
    /// The owning organization (indexed for `list`).
    pub fn org(&self) -> &OrgId {
        &self.org
    }
    /// The CAS revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }
    /// The expiry, if any (indexable for expiry sweeps).
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }
    /// The revocation time, if revoked.
    pub fn revoked_at(&self) -> Option<OffsetDateTime> {
        self.revoked_at
    }
    /// Last recorded use.
    pub fn last_used_at(&self) -> Option<OffsetDateTime> {
        self.last_used_at
    }
    /// The master-key version that sealed this record.
    pub fn key_version(&self) -> u32 {
        self.sealed.key_version
    }

    /// Seals a new record (revision 1) under the keyring's current version.
    pub(crate) fn seal_new(
        keyring: &Keyring,
        draft: Draft,
        secret: &[u8; SECRET_LEN],
    ) -> Result<KeyRecord, Error> {
        let mut scopes = draft.scopes;
        scopes.sort();
        scopes.dedup();
        let mut rec = KeyRecord {
            format: RECORD_FORMAT,
            class: draft.class,
            id: draft.id,
            org: draft.org,
            name: draft.name,
            scopes,
            created_at: whole_seconds(draft.created_at),
            created_by: draft.created_by,
            expires_at: draft.expires_at.map(whole_seconds),
            revoked_at: None,
            revoked_by: None,
            revocation: None,
            replaces: draft.replaces,
            replaced_by: None,
            owner: draft.owner,
            meta: draft.meta,
            rate_limits: draft.rate_limits,
            credits: draft.credits,
            notices: Notices::default(),
            last_used_at: None,
            revision: 1,
            sealed: Sealed {
                key_version: 0,
                iv: [0; 16],
                ciphertext: [0; 32],
                details_tag: [0; 16],
                tag: [0; 16],
            },
        };
        rec.reseal(keyring, secret)?;
        Ok(rec)
    }

    /// Encrypts `secret` under the current version with a fresh IV and recomputes the tag over
    /// the record's present fields. Only ever called with a secret obtained from
    /// [`KeyRecord::open`] of this same record (or a new one): never launders a tampered row.
    pub(crate) fn reseal(
        &mut self,
        keyring: &Keyring,
        secret: &[u8; SECRET_LEN],
    ) -> Result<(), Error> {
        self.reseal_under(keyring.current(), secret)
    }

    /// [`KeyRecord::reseal`] for a change to a stored record: one sealed under the keyring's
    /// *next* version (written by a node already upgraded, during a rotation) stays under it,
    /// so a node not yet upgraded never moves it back to the version the rotation retires.
    pub(crate) fn reseal_change(
        &mut self,
        keyring: &Keyring,
        secret: &[u8; SECRET_LEN],
    ) -> Result<(), Error> {
        let v = self.sealed.key_version;
        let sealing = match keyring.get(v) {
            Some(keys) if keyring.is_next(v) => (v, keys),
            _ => keyring.current(),
        };
        self.reseal_under(sealing, secret)
    }

    /// Seals under `sealing` (a version and its subkeys) with a fresh IV.
    fn reseal_under(
        &mut self,
        sealing: (u32, &Subkeys),
        secret: &[u8; SECRET_LEN],
    ) -> Result<(), Error> {
        let mut iv = [0u8; 16];
        fill_random(&mut iv)?;
        self.seal_under(sealing, secret, iv);
        Ok(())
    }

    /// [`KeyRecord::reseal`] with a given IV (the known-answer vectors).
    #[cfg(test)]
    fn reseal_with_iv(&mut self, keyring: &Keyring, secret: &[u8; SECRET_LEN], iv: [u8; 16]) {
        self.seal_under(keyring.current(), secret, iv);
    }

    fn seal_under(
        &mut self,
        (version, keys): (u32, &Subkeys),
        secret: &[u8; SECRET_LEN],
        iv: [u8; 16],
    ) {
        self.format = RECORD_FORMAT;
        self.created_at = whole_seconds(self.created_at);
        self.expires_at = self.expires_at.map(whole_seconds);
        self.revoked_at = self.revoked_at.map(whole_seconds);
        self.scopes.sort();
        self.scopes.dedup();
        self.sealed.key_version = version;
        self.sealed.iv = iv;
        self.sealed.ciphertext = keys.encrypt(&iv, secret);
        self.sealed.details_tag = self.compute_details_tag(keys);
        self.sealed.tag = self.compute_tag(keys);
    }

    /// Checks the tag in constant time, then that the record is the one the token names and
    /// of the manager's class, and only then decrypts the secret into `out` (memory the caller
    /// owns and zeroizes, so no copy is left behind by a move).
    ///
    /// # Errors
    /// [`Error::Integrity`] for an unknown format or key version, a tag mismatch, an id
    /// mismatch or another class.
    pub(crate) fn open_into(
        &self,
        keyring: &Keyring,
        class: &str,
        expected: KeyId,
        out: &mut Zeroizing<[u8; SECRET_LEN]>,
    ) -> Result<(), Error> {
        let keys = self.authenticate(keyring, class)?;
        self.decrypt_if(keys, expected, out)
    }

    /// [`KeyRecord::open_into`] for a change that replaces the revocation details (a
    /// revocation writes its own revoker and reason over them): checks the format, the key
    /// version, the main tag (which covers the details tag as 16 fixed bytes) and the class,
    /// decrypts, and says whether the details tag matches too. A key whose main tag passes is
    /// one `verify` accepts, so forged details must never make it unrevocable; nothing of the
    /// forged details survives the change, so re-sealing launders nothing.
    ///
    /// # Errors
    /// As [`KeyRecord::open_into`], except for a details tag that does not match (`Ok(false)`).
    pub(crate) fn open_replacing_details(
        &self,
        keyring: &Keyring,
        class: &str,
        expected: KeyId,
        out: &mut Zeroizing<[u8; SECRET_LEN]>,
    ) -> Result<bool, Error> {
        let keys = self.check_main_tag(keyring, class)?;
        let details = self.compute_details_tag(keys);
        let authentic = bool::from(crate::crypto::ct_eq_bytes(
            &details,
            &self.sealed.details_tag,
        ));
        self.decrypt_if(keys, expected, out)?;
        Ok(authentic)
    }

    /// Whether the main tag and the class check out (the revocation details unchecked): the
    /// record is one `verify` accepts (see [`KeyRecord::open_replacing_details`]).
    pub(crate) fn main_tag_authentic(&self, keyring: &Keyring, class: &str) -> bool {
        self.check_main_tag(keyring, class).is_ok()
    }

    /// [`KeyRecord::open_into`] for verification: checks the main tag (which covers the
    /// details tag as 16 fixed bytes) but does not recompute the details tag — `verify` needs
    /// none of the revocation details, and skipping them keeps the work the same for an
    /// active, a revoked, an expired or a rolled key (the key's state must not be observable
    /// without its secret).
    ///
    /// An authentic record of another class (a manager of another prefix sharing the store)
    /// is not this manager's key: it is as absent as an unknown id, and never decrypted.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for a record whose tag verifies but whose class is not `class`;
    /// [`Error::Integrity`] for an unknown format or key version, a tag mismatch or an id
    /// mismatch.
    pub(crate) fn open_to_verify(
        &self,
        keyring: &Keyring,
        class: &str,
        expected: KeyId,
        out: &mut Zeroizing<[u8; SECRET_LEN]>,
    ) -> Result<(), Error> {
        let keys = self.check_tag(keyring)?;
        // The class is under the tag; compared after it, it is authentic (and public: it is
        // the token prefix shown in every listing's hint). A row under another id stays
        // `Integrity` (`decrypt_if`).
        if self.id == expected && self.class != class {
            return Err(Error::InvalidKey);
        }
        self.decrypt_if(keys, expected, out)
    }

    /// After authentication: decrypts into `out` if the record is the one the token names.
    fn decrypt_if(
        &self,
        keys: &Subkeys,
        expected: KeyId,
        out: &mut Zeroizing<[u8; SECRET_LEN]>,
    ) -> Result<(), Error> {
        if self.id != expected {
            return Err(Error::Integrity);
        }
        keys.decrypt_into(&self.sealed.iv, &self.sealed.ciphertext, out);
        Ok(())
    }

    /// Checks the format, the key version, (in constant time) both tags and the class,
    /// without decrypting.
    pub(crate) fn authenticate<'k>(
        &self,
        keyring: &'k Keyring,
        class: &str,
    ) -> Result<&'k Subkeys, Error> {
        let keys = self.check_main_tag(keyring, class)?;
        let details = self.compute_details_tag(keys);
        if bool::from(crate::crypto::ct_eq_bytes(
            &details,
            &self.sealed.details_tag,
        )) {
            Ok(keys)
        } else {
            Err(Error::Integrity)
        }
    }

    /// Checks the format, the key version, (in constant time) the main tag and the class.
    fn check_main_tag<'k>(&self, keyring: &'k Keyring, class: &str) -> Result<&'k Subkeys, Error> {
        let keys = self.check_tag(keyring)?;
        // The class is under the tag; compared after it, it is authentic.
        if self.class == class {
            Ok(keys)
        } else {
            Err(Error::Integrity)
        }
    }

    /// Checks the format, the key version and (in constant time) the main tag, which covers
    /// the record's own class.
    ///
    /// A record at the last revision (`i64::MAX`, or beyond) fails too: no write can follow
    /// it, so not even a revocation could ever stop it. The revision is not under the tag;
    /// only an edit in the database puts a record there (a write per nanosecond would take
    /// three centuries), and such a record must fail closed, not work for good.
    fn check_tag<'k>(&self, keyring: &'k Keyring) -> Result<&'k Subkeys, Error> {
        if self.format != RECORD_FORMAT || self.revision >= i64::MAX as u64 || !self.is_canonical()
        {
            return Err(Error::Integrity);
        }
        let keys = keyring
            .get(self.sealed.key_version)
            .ok_or(Error::Integrity)?;
        let tag = self.compute_tag(keys);
        if bool::from(crate::crypto::ct_eq_bytes(&tag, &self.sealed.tag)) {
            Ok(keys)
        } else {
            Err(Error::Integrity)
        }
    }
}

mod canonical;
#[cfg(test)]
mod known_answers;
mod serde_fields;
