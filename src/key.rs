//! What the manager hands out: [`ApiKey`] (the secret, once), [`KeyInfo`] (metadata) and
//! [`Verified`] (the result of a successful verification).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use serde::Serialize;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::record::{unix, unix_opt};
use crate::{Credits, Error, KeyId, KeyRecord, OrgId, RateLimit, Scope, UserId};

/// A full API key token. Shown once at generation (and by `reveal` when the policy allows).
/// Zeroized on drop; `Debug` shows only the id; no `Display`, `PartialEq` or `Serialize`.
pub struct ApiKey {
    id: KeyId,
    token: Zeroizing<String>,
}

impl ApiKey {
    pub(crate) fn new(id: KeyId, token: Zeroizing<String>) -> Self {
        ApiKey { id, token }
    }

    /// The token, to hand to the integration that will use it.
    pub fn expose_secret(&self) -> &str {
        &self.token
    }

    /// The key's public id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// The state of a key at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Neither revoked nor expired.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked by a manager.
    Revoked,
}

impl KeyStatus {
    pub(crate) fn of(rec: &KeyRecord, now: OffsetDateTime) -> KeyStatus {
        if rec.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if rec.expires_at.is_some_and(|e| now >= e) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// Why a key was revoked (or, for [`RevocationReason::Rolled`], why it stopped working).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RevocationReason {
    /// A manager revoked it.
    Manual,
    /// Someone holding the whole token reported it as leaked (`revoke_leaked`).
    Leaked {
        /// Where it was found (e.g. a URL), as reported; at most 512 bytes.
        source: String,
    },
    /// Not used for longer than the policy's `revoke_unused_after`.
    Unused,
    /// Its creator left the organization (`revoke_created_by`).
    DepartedUser,
    /// Replaced by `roll`, and its overlap window is over.
    Rolled,
}

/// A key's metadata, safe to show to an organization's managers (no secret).
/// Serializes timestamps as Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Public id.
    pub id: KeyId,
    /// Owning organization.
    pub org: OrgId,
    /// Display name.
    pub name: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Creation time.
    #[serde(with = "unix")]
    pub created_at: OffsetDateTime,
    /// Creating manager.
    pub created_by: UserId,
    /// Expiry (`None` = never).
    #[serde(with = "unix_opt")]
    pub expires_at: Option<OffsetDateTime>,
    /// Revocation time, if revoked.
    #[serde(with = "unix_opt")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Why the key stopped working: the revocation reason, or [`RevocationReason::Rolled`]
    /// for a rolled key whose overlap is over. `None` for a working key (and for one that
    /// simply expired).
    pub revocation: Option<RevocationReason>,
    /// The key this one replaced (by `roll`).
    pub replaces: Option<KeyId>,
    /// The key that replaced this one (by `roll`).
    pub replaced_by: Option<KeyId>,
    /// The host's owner / external id.
    pub owner: Option<String>,
    /// Named rate limits.
    pub rate_limits: Vec<crate::RateLimit>,
    /// The credit configuration, if any.
    pub credits: Option<crate::Credits>,
    /// Status at the manager's `clock.now()` when this was built.
    pub status: KeyStatus,
    /// Last recorded use (throttled to once a minute per key and process).
    #[serde(with = "unix_opt")]
    pub last_used_at: Option<OffsetDateTime>,
    /// Masked hint from the prefix and the id, e.g. `sak_…x7Qa`.
    pub hint: String,
    /// What the sweep already announced: the expiry warnings' lead times (seconds), whether
    /// the `Expired` event went out, and when the unused-key warning was sent.
    pub notices: crate::Notices,
}

impl KeyInfo {
    pub(crate) fn from_record(rec: &KeyRecord, now: OffsetDateTime, prefix: &str) -> KeyInfo {
        KeyInfo {
            id: rec.id,
            org: rec.org.clone(),
            name: rec.name.clone(),
            scopes: rec.scopes.clone(),
            created_at: rec.created_at,
            created_by: rec.created_by.clone(),
            expires_at: rec.expires_at,
            revoked_at: rec.revoked_at,
            revocation: match (&rec.revocation, rec.replaced_by) {
                (Some(r), _) => Some(r.clone()),
                (None, Some(_)) if KeyStatus::of(rec, now) == KeyStatus::Expired => {
                    Some(RevocationReason::Rolled)
                }
                _ => None,
            },
            replaces: rec.replaces,
            replaced_by: rec.replaced_by,
            owner: rec.owner.clone(),
            rate_limits: rec.rate_limits.clone(),
            credits: rec.credits,
            status: KeyStatus::of(rec, now),
            last_used_at: rec.last_used_at,
            hint: crate::token::hint(prefix, rec.id),
            notices: rec.notices.clone(),
        }
    }

    /// The shortest lead time whose expiry warning the sweep sent, if any (e.g. 7 days once
    /// the 30- and 7-day warnings went out).
    pub fn last_expiry_warning(&self) -> Option<time::Duration> {
        self.notices
            .expiry_warned
            .iter()
            .min()
            .map(|s| time::Duration::seconds(*s))
    }
}

/// The parts of a record that [`Facts`] keeps whole.
struct Moved {
    scopes: Vec<Scope>,
    owner: Option<String>,
    meta: std::collections::BTreeMap<String, String>,
}

/// What the manager knows about a genuine key, shared between its cache and [`Verified`].
///
/// The fields the hot path reads (`id`, `expires_unix`, `last_touch`, `revoked`,
/// `builtin_scopes`) come first, next to the reference counts, so a cache hit touches one
/// cache line of this allocation.
#[repr(C)]
pub(crate) struct Facts {
    pub id: KeyId,
    /// `expires_at` in Unix seconds, `i64::MAX` for never.
    pub expires_unix: i64,
    /// Unix seconds of the last `touch` this process sent (or the store's last use).
    pub last_touch: AtomicI64,
    pub revoked: bool,
    /// Bit 0: `Scope::Scim`, bit 1: `Scope::Prometheus` (custom scopes are looked up in
    /// `scopes`).
    pub builtin_scopes: u8,
    /// The key's usage limits; `None` (one branch on the hot path) for a key without any.
    pub limits: Option<Box<KeyLimits>>,
    pub org: OrgId,
    pub scopes: Box<[Scope]>,
    pub expires_at: Option<OffsetDateTime>,
    pub owner: Option<String>,
    pub meta: std::collections::BTreeMap<String, String>,
    /// The record's revision: of two records of the key, the later state.
    pub revision: u64,
}

impl Facts {
    /// The facts of a record the caller is done with: its scopes, owner and metadata move
    /// over instead of being copied (the cold path reads an owned record from the store and
    /// drops it right after).
    pub(crate) fn from_owned(mut rec: KeyRecord, local: Option<&crate::LocalCounters>) -> Facts {
        let moved = Moved {
            scopes: std::mem::take(&mut rec.scopes),
            owner: rec.owner.take(),
            meta: std::mem::take(&mut rec.meta),
        };
        Facts::build(&rec, moved, local)
    }

    /// The facts of a record; a key with limits gets its handle into `local`'s counters.
    pub(crate) fn from_record(rec: &KeyRecord, local: Option<&crate::LocalCounters>) -> Facts {
        let copied = Moved {
            scopes: rec.scopes.clone(),
            owner: rec.owner.clone(),
            meta: rec.meta.clone(),
        };
        Facts::build(rec, copied, local)
    }

    /// `rec`'s facts, with its scopes, owner and metadata given apart (moved or copied).
    fn build(rec: &KeyRecord, own: Moved, local: Option<&crate::LocalCounters>) -> Facts {
        let builtin_scopes = own.scopes.iter().fold(0u8, |bits, s| match s {
            Scope::Scim => bits | 1,
            Scope::Prometheus => bits | 2,
            Scope::Custom(_) => bits,
        });
        Facts {
            id: rec.id,
            expires_unix: rec.expires_at.map_or(i64::MAX, |t| t.unix_timestamp()),
            last_touch: AtomicI64::new(rec.last_used_at.map_or(i64::MIN, |t| t.unix_timestamp())),
            revoked: rec.revoked_at.is_some(),
            builtin_scopes,
            limits: if rec.rate_limits.is_empty() && rec.credits.is_none() {
                None
            } else {
                Some(Box::new(KeyLimits {
                    local: local.map_or_else(crate::limits::LocalHandle::unresolved, |l| {
                        l.handle(&rec.rate_limits, rec.credits.as_ref())
                    }),
                    rate_limits: rec.rate_limits.clone().into_boxed_slice(),
                    credits: rec.credits,
                }))
            },
            // A copy of its own, allocated right after these facts: a failed verification
            // clones it for its audit event, and a private copy sits next to the facts (in
            // cache when they are) and is never contended by other keys' verifications, where
            // the store's shared `Arc` would be both cold and shared by the whole
            // organization.
            org: OrgId::try_new(rec.org.as_str()).unwrap_or_else(|_| rec.org.clone()),
            scopes: own.scopes.into_boxed_slice(),
            expires_at: rec.expires_at,
            owner: own.owner,
            meta: own.meta,
            revision: rec.revision,
        }
    }

    /// Whether the key grants `scope` (built-in scopes without leaving this cache line).
    #[inline]
    pub(crate) fn allows(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Scim => self.builtin_scopes & 1 != 0,
            Scope::Prometheus => self.builtin_scopes & 2 != 0,
            Scope::Custom(_) => self.scopes.contains(scope),
        }
    }
}

/// A key's limit configuration, as its authenticated record says.
#[repr(C)]
pub(crate) struct KeyLimits {
    /// Where the in-process engine keeps this key's counters, resolved when these facts were
    /// built (a manager over [`LocalCounters`](crate::LocalCounters)); first, so a warm
    /// verification reads it with the allocation's first cache line.
    pub local: crate::limits::LocalHandle,
    pub rate_limits: Box<[RateLimit]>,
    pub credits: Option<Credits>,
}

/// One rate limit's state as a verification left it (see [`Verified::limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStatus<'a> {
    /// The limit's name.
    pub name: &'a str,
    /// Units allowed per window.
    pub limit: u64,
    /// The window.
    pub window: std::time::Duration,
    /// Units left in the current window after this verification.
    pub remaining: u64,
    /// When the current window ends.
    pub reset: OffsetDateTime,
    /// Time from the verification to the end of the window.
    pub reset_after: std::time::Duration,
}

/// What a verification of a key with limits left: per rate limit the units left in its
/// window, and the credits left. Compact and inline (no allocation per verification): a
/// window's end follows from the time, since windows are aligned to the Unix epoch (the
/// [`UsageCounters`](crate::UsageCounters) duties).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spent {
    pub(crate) left: crate::limits::Left,
    pub(crate) at_ms: i64,
}

/// Proof that a token was verified: only [`KeyManager::verify`](crate::KeyManager::verify)
/// makes one (no public constructor, no `Default`, no `Deserialize`).
///
/// The host must still check that the key's organization is the tenant of the request:
/// [`Verified::require_org`] does that in one call.
#[derive(Clone)]
pub struct Verified {
    facts: Arc<Facts>,
    spent: Option<Spent>,
}

impl Verified {
    pub(crate) fn new(facts: Arc<Facts>, spent: Option<Spent>) -> Self {
        Verified { facts, spent }
    }

    /// Each rate limit of the key with what is left of its current window after this
    /// verification, in the key's order (empty for a key without rate limits). For the
    /// `RateLimit` / `RateLimit-Policy` response headers.
    pub fn limits(&self) -> impl Iterator<Item = LimitStatus<'_>> + '_ {
        let configured: &[RateLimit] = self
            .facts
            .limits
            .as_ref()
            .map_or(&[], |l| &l.rate_limits[..]);
        let spent = self.spent.as_ref();
        configured.iter().enumerate().filter_map(move |(i, l)| {
            let s = spent?;
            let remaining = *s.left.remaining[..usize::from(s.left.len)].get(i)?;
            let mut reset_ms = crate::limits::window_of(l, s.at_ms).1;
            if s.left.ahead & (1 << i) != 0 {
                // Counted in the next window (a reading a moment before it).
                reset_ms = reset_ms.saturating_add(i64::try_from(l.window_ms()).unwrap_or(0));
            }
            Some(LimitStatus {
                name: l.name(),
                limit: l.limit(),
                window: l.window(),
                remaining,
                // A window ending past the calendar (year 9999) resets at its last moment.
                reset: OffsetDateTime::from_unix_timestamp_nanos(i128::from(reset_ms) * 1_000_000)
                    .unwrap_or(if reset_ms > 0 {
                        time::PrimitiveDateTime::MAX.assume_utc()
                    } else {
                        time::PrimitiveDateTime::MIN.assume_utc()
                    }),
                reset_after: std::time::Duration::from_millis(
                    u64::try_from(reset_ms.saturating_sub(s.at_ms)).unwrap_or(0),
                ),
            })
        })
    }

    /// The credits left after this verification (`None` for a key without credits).
    pub fn credits_remaining(&self) -> Option<u64> {
        self.spent.as_ref().and_then(|s| s.left.credits)
    }

    /// The verified key's id.
    pub fn key_id(&self) -> &KeyId {
        &self.facts.id
    }

    /// The organization the key belongs to.
    pub fn org(&self) -> &OrgId {
        &self.facts.org
    }

    /// The key's scopes.
    pub fn scopes(&self) -> &[Scope] {
        &self.facts.scopes
    }

    /// The key's expiry (`None` = never).
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.facts.expires_at
    }

    /// The host's owner / external id given at generation, if any.
    pub fn owner(&self) -> Option<&str> {
        self.facts.owner.as_deref()
    }

    /// The host's metadata given at generation (empty if none).
    pub fn meta(&self) -> &std::collections::BTreeMap<String, String> {
        &self.facts.meta
    }

    /// Checks that the key belongs to `org` (the tenant of the request).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] when it belongs to another organization: a key never
    /// authenticates anything of another organization.
    pub fn require_org(&self, org: &OrgId) -> Result<(), Error> {
        if &self.facts.org == org {
            Ok(())
        } else {
            Err(Error::InvalidKey)
        }
    }
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("key_id", &self.facts.id)
            .field("org", &self.facts.org)
            .field("scopes", &self.facts.scopes)
            .field("expires_at", &self.facts.expires_at)
            .finish()
    }
}
