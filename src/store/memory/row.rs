//! `MemoryStore`'s compact row: what one record becomes in the slab, the interned names it
//! refers to, and the conversions between a row and a [`KeyRecord`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

use super::Data;
use crate::record::Notices;
use crate::{Credits, KeyId, KeyRecord, RateLimit, RevocationReason, Scope, Sealed, StoreError};

/// No timestamp (`None`). Real timestamps never reach `i64::MIN` seconds.
pub(super) const NO_TIME: i64 = i64::MIN;

/// Scopes of one row: the canonical lists of built-in scopes as a bit mask (no allocation),
/// anything else as given.
pub(super) enum Scopes {
    /// Bit 0: `Scim`, bit 1: `Prometheus`, in that (sorted) order.
    Builtin(u8),
    List(Box<[Scope]>),
}

impl Scopes {
    pub(super) fn of(scopes: Vec<Scope>) -> Scopes {
        let bits = match scopes.as_slice() {
            [] => Some(0),
            [Scope::Scim] => Some(1),
            [Scope::Prometheus] => Some(2),
            [Scope::Scim, Scope::Prometheus] => Some(3),
            _ => None,
        };
        match bits {
            Some(b) => Scopes::Builtin(b),
            None => Scopes::List(scopes.into_boxed_slice()),
        }
    }

    pub(super) fn to_vec(&self) -> Vec<Scope> {
        match self {
            Scopes::Builtin(b) => {
                let mut v = Vec::with_capacity(b.count_ones() as usize);
                if b & 1 != 0 {
                    v.push(Scope::Scim);
                }
                if b & 2 != 0 {
                    v.push(Scope::Prometheus);
                }
                v
            }
            Scopes::List(l) => l.to_vec(),
        }
    }
}

/// The fields most keys leave empty, boxed only when one is set. (What a revoke or a roll
/// writes to an existing key — the reason's kind, the revoker, the replacing key — stays
/// inline in the row:
/// reading a revoked or a rolled key must cost what reading an active one does. A leak
/// report's source is the exception: copying it allocated before it moved here, and a key
/// reported leaked has been revoked in public.)
#[derive(Default, PartialEq)]
pub(super) struct Extra {
    pub(super) replaces: Option<KeyId>,
    pub(super) owner: Option<String>,
    pub(super) meta: BTreeMap<String, String>,
    pub(super) rate_limits: Vec<RateLimit>,
    pub(super) credits: Option<Credits>,
    pub(super) notices: Notices,
    /// A scope list that is not a canonical list of built-in scopes (the row's
    /// `scopes` is [`CUSTOM_SCOPES`]).
    pub(super) scopes: Option<Box<[Scope]>>,
    /// The nanoseconds of `created_at`, `expires_at`, `revoked_at`, `last_used_at`, only when
    /// one is not a whole second (the crate never writes such times).
    pub(super) nanos: Option<[u32; 4]>,
    /// Where a leak report found the key (each report's own, so kept with the row rather
    /// than interned: it goes when the row does).
    pub(super) leak_source: Option<Box<str>>,
}

/// [`Row::scopes`] when the list is in [`Extra::scopes`].
pub(super) const CUSTOM_SCOPES: u8 = u8::MAX;

/// One record, compactly. Converts back to an equal [`KeyRecord`].
pub(super) struct Row {
    pub(super) id: KeyId,
    /// The organization, the class and the users as numbers in the store's [`Interner`]s
    /// (4 bytes each instead of a 16-byte `Arc`); `revoked_by` is [`NO_NAME`] when unset.
    pub(super) org: u32,
    pub(super) class: u32,
    pub(super) created_by: u32,
    pub(super) revoked_by: u32,
    pub(super) extra: Option<Box<Extra>>,
    /// The revocation reason's kind ([`Reason`]; a leak report's source is in
    /// [`Extra::leak_source`]).
    pub(super) revocation: u8,
    /// The replacing key, when `has_replacement` (no `Option`: 8 bytes, not 16).
    pub(super) replaced_by: u64,
    pub(super) has_replacement: bool,
    pub(super) name: Box<str>,
    /// The scopes as [`Scopes::Builtin`]'s bits, or [`CUSTOM_SCOPES`].
    pub(super) scopes: u8,
    /// Unix seconds of `created_at`, `expires_at`, `revoked_at` (`NO_TIME` for `None`).
    pub(super) secs: [i64; 3],
    /// Unix seconds of `last_used_at` (`NO_TIME` for `None`): atomic, so that `touch` of a
    /// whole second (what the manager sends) needs only the shared lock.
    pub(super) last_used: AtomicI64,
    pub(super) revision: u64,
    pub(super) key_version: u32,
    pub(super) format: u16,
    pub(super) iv: [u8; 16],
    pub(super) ciphertext: [u8; 32],
    pub(super) details_tag: [u8; 16],
    pub(super) tag: [u8; 16],
}

pub(super) const CREATED: usize = 0;
pub(super) const EXPIRES: usize = 1;
pub(super) const REVOKED: usize = 2;
pub(super) const LAST_USED: usize = 3;

pub(super) fn split(t: Option<OffsetDateTime>) -> (i64, u32) {
    t.map_or((NO_TIME, 0), |t| (t.unix_timestamp(), t.nanosecond()))
}

pub(super) fn join(secs: i64, nanos: u32) -> Result<Option<OffsetDateTime>, StoreError> {
    // The same conversion whether the time is set or not: a row without a revocation time
    // must not read faster than one with it.
    let present = secs != NO_TIME;
    let t =
        OffsetDateTime::from_unix_timestamp(std::hint::black_box(if present { secs } else { 0 }))
            .and_then(|t| t.replace_nanosecond(nanos))
            .map_err(|e| StoreError::Corrupt(e.into()))?;
    Ok(present.then_some(t))
}

impl Row {
    /// The sub-second part of `last_used_at` (0 for the whole seconds the manager records).
    pub(super) fn last_used_nanos(&self) -> u32 {
        self.extra
            .as_ref()
            .and_then(|e| e.nanos)
            .map_or(0, |n| n[LAST_USED])
    }
}

/// "No name": an unset `revoked_by` or leak source. Interners never hand out this number.
pub(super) const NO_NAME: u32 = u32::MAX;

/// Equal values stored once, each known by a `u32` that rows hold instead of the value. Kept
/// for the store's lifetime: bounded by the distinct organizations, users and classes it has
/// seen.
pub(super) struct Interner<T> {
    pub(super) items: Vec<T>,
    pub(super) ids: HashMap<T, u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            items: Vec::new(),
            ids: HashMap::new(),
        }
    }
}

impl<T: Clone + Eq + std::hash::Hash> Interner<T> {
    /// `v`'s number (a new one for a value not seen before).
    pub(super) fn id(&mut self, v: T) -> Result<u32, StoreError> {
        if let Some(&i) = self.ids.get(&v) {
            return Ok(i);
        }
        let i = u32::try_from(self.items.len())
            .ok()
            .filter(|&i| i != NO_NAME)
            .ok_or_else(|| StoreError::backend("MemoryStore interns at most 2^32 - 1 names"))?;
        self.items.push(v.clone());
        self.ids.insert(v, i);
        Ok(i)
    }

    /// `v`'s number, if it has one.
    pub(super) fn find(&self, v: &T) -> Option<u32> {
        self.ids.get(v).copied()
    }

    /// The value numbered `i` (a number this interner handed out).
    pub(super) fn get(&self, i: u32) -> &T {
        &self.items[i as usize]
    }
}

/// [`Row::revocation`]'s codes.
pub(super) struct Reason;

impl Reason {
    pub(super) const NONE: u8 = 0;
    pub(super) const MANUAL: u8 = 1;
    pub(super) const LEAKED: u8 = 2;
    pub(super) const UNUSED: u8 = 3;
    pub(super) const DEPARTED_USER: u8 = 4;
    pub(super) const ROLLED: u8 = 5;
}

impl Data {
    pub(super) fn compact(&mut self, r: KeyRecord) -> Result<Row, StoreError> {
        let times = [
            split(Some(r.created_at)),
            split(r.expires_at),
            split(r.revoked_at),
            split(r.last_used_at),
        ];
        let nanos = times.iter().any(|t| t.1 != 0).then(|| times.map(|t| t.1));
        let (scopes, custom) = match Scopes::of(r.scopes) {
            Scopes::Builtin(bits) => (bits, None),
            Scopes::List(list) => (CUSTOM_SCOPES, Some(list)),
        };
        let (revocation, leak_source) = match r.revocation {
            None => (Reason::NONE, None),
            Some(RevocationReason::Manual) => (Reason::MANUAL, None),
            Some(RevocationReason::Leaked { source }) => {
                (Reason::LEAKED, Some(source.into_boxed_str()))
            }
            Some(RevocationReason::Unused) => (Reason::UNUSED, None),
            Some(RevocationReason::DepartedUser) => (Reason::DEPARTED_USER, None),
            Some(RevocationReason::Rolled) => (Reason::ROLLED, None),
        };
        let revoked_by = match r.revoked_by {
            Some(u) => self.users.id(u)?,
            None => NO_NAME,
        };
        let extra = Extra {
            replaces: r.replaces,
            owner: r.owner,
            meta: r.meta,
            rate_limits: r.rate_limits,
            credits: r.credits,
            notices: r.notices,
            scopes: custom,
            nanos,
            leak_source,
        };
        Ok(Row {
            id: r.id,
            org: self.orgs.id(r.org)?,
            class: self.classes.id(Arc::from(r.class))?,
            created_by: self.users.id(r.created_by)?,
            revoked_by,
            extra: (extra != Extra::default()).then(|| Box::new(extra)),
            revocation,
            replaced_by: r.replaced_by.map_or(0, |k| k.0),
            has_replacement: r.replaced_by.is_some(),
            name: r.name.into_boxed_str(),
            scopes,
            secs: [times[0].0, times[1].0, times[2].0],
            last_used: AtomicI64::new(times[3].0),
            revision: r.revision,
            key_version: r.sealed.key_version,
            format: r.format,
            iv: r.sealed.iv,
            ciphertext: r.sealed.ciphertext,
            details_tag: r.sealed.details_tag,
            tag: r.sealed.tag,
        })
    }

    pub(super) fn to_record(&self, row: &Row) -> Result<KeyRecord, StoreError> {
        let extra = row.extra.as_deref();
        let n = |i: usize| extra.and_then(|e| e.nanos).map_or(0, |n| n[i]);
        let time = |i: usize| {
            let secs = match i {
                LAST_USED => row.last_used.load(Ordering::Relaxed),
                i => row.secs[i],
            };
            join(secs, n(i))
        };
        // The same work whether the key was revoked or not: one clone (and, later, one drop)
        // of an interned user id either way, so reading a revoked row costs what reading an
        // active one does.
        let set = row.revoked_by != NO_NAME;
        let by = self
            .users
            .get(if set { row.revoked_by } else { row.created_by })
            .clone();
        let revoked_by = if set {
            Some(by)
        } else {
            drop(by);
            None
        };
        Ok(KeyRecord {
            format: row.format,
            class: String::from(&**self.classes.get(row.class)),
            revocation: self.reason(row)?,
            replaces: extra.and_then(|e| e.replaces),
            replaced_by: row.has_replacement.then_some(KeyId(row.replaced_by)),
            owner: extra.and_then(|e| e.owner.clone()),
            meta: extra.map(|e| e.meta.clone()).unwrap_or_default(),
            rate_limits: extra.map(|e| e.rate_limits.clone()).unwrap_or_default(),
            credits: extra.and_then(|e| e.credits),
            notices: extra.map(|e| e.notices.clone()).unwrap_or_default(),
            id: row.id,
            org: self.orgs.get(row.org).clone(),
            name: String::from(&*row.name),
            scopes: match (row.scopes, extra.and_then(|e| e.scopes.as_ref())) {
                (CUSTOM_SCOPES, Some(list)) => list.to_vec(),
                (CUSTOM_SCOPES, None) => {
                    return Err(StoreError::Corrupt("row's scope list is missing".into()));
                }
                (bits, _) => Scopes::Builtin(bits).to_vec(),
            },
            created_at: time(CREATED)?
                .ok_or_else(|| StoreError::Corrupt("stored record has no creation time".into()))?,
            created_by: self.users.get(row.created_by).clone(),
            expires_at: time(EXPIRES)?,
            revoked_at: time(REVOKED)?,
            revoked_by,
            last_used_at: time(LAST_USED)?,
            revision: row.revision,
            sealed: Sealed {
                key_version: row.key_version,
                iv: row.iv,
                ciphertext: row.ciphertext,
                details_tag: row.details_tag,
                tag: row.tag,
            },
        })
    }

    /// The row's revocation reason.
    pub(super) fn reason(&self, row: &Row) -> Result<Option<RevocationReason>, StoreError> {
        Ok(Some(match row.revocation {
            Reason::NONE => return Ok(None),
            Reason::MANUAL => RevocationReason::Manual,
            Reason::LEAKED => RevocationReason::Leaked {
                source: row
                    .extra
                    .as_ref()
                    .and_then(|e| e.leak_source.as_deref())
                    .map(String::from)
                    .ok_or_else(|| StoreError::Corrupt("leak report without a source".into()))?,
            },
            Reason::UNUSED => RevocationReason::Unused,
            Reason::DEPARTED_USER => RevocationReason::DepartedUser,
            Reason::ROLLED => RevocationReason::Rolled,
            other => {
                return Err(StoreError::Corrupt(
                    format!("unknown revocation code {other}").into(),
                ));
            }
        }))
    }
}
