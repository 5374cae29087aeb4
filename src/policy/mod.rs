//! What managers may ask for: expiry periods, reveal, how many keys, usage limits.

mod limits;

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use crate::limits::check_limits;
use crate::record::whole_seconds;
use crate::{Credits, Error, MAX_RATE_LIMITS, RateLimit, Scope};

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Most scopes on one key.
pub const MAX_SCOPES: usize = 8;
/// Largest encoded size of a key's metadata (keys and values, in bytes).
pub const MAX_META_BYTES: usize = 4096;
/// Longest owner / external id, in bytes.
pub const MAX_OWNER_BYTES: usize = 128;

/// How long a new key lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// This many days from now; must be one of [`Policy::allowed_days`].
    Days(u16),
    /// An explicit time, in the future and within [`Policy::max_days`]; truncated to whole
    /// seconds.
    At(OffsetDateTime),
    /// Never expires; refused unless [`Policy::allow_never`] is on.
    Never,
}

/// The rules for generating and managing keys.
///
/// Defaults: keys live 90 days; the allowed periods are 7, 30, 60, 90, 180 and 365 days, or an
/// explicit date at most 365 days ahead; "never" is off; reveal is off; at most 100 active keys
/// per organization.
///
/// `max_active_keys` is best-effort under concurrent `generate` calls for one organization:
/// the count is read before the insert, so two racing calls may both pass the last slot.
///
/// **Usage limits.** By default a key gets only the limits its request names, and any valid
/// limits are accepted. A policy may give keys *defaults* — [`Policy::default_rate_limits`]
/// (used when a [`GenerateRequest`] names no rate limit) and [`Policy::default_credits`] (used
/// when it names no credits) — and *maxima* that [`KeyManager::generate`],
/// [`KeyManager::set_limits`] and [`KeyManager::set_credits`] enforce with
/// [`Error::Policy`]: [`Policy::max_rate_limits`] (how many limits one key may carry),
/// [`Policy::max_rate`] (the highest rate any limit may allow) and [`Policy::max_credits`]
/// (the largest balance or refill). A maximum also means a key cannot be without that kind of
/// limit (it would be unlimited): with `max_rate` set, every key needs at least one rate
/// limit, and with `max_credits` set, every key needs credits. [`KeyManager::roll`] copies a
/// key's limits as they are (maxima apply when a configuration is chosen, not to a copy).
///
/// ```
/// use std::time::Duration;
/// use api_keys::{Credits, Policy, RateLimit, Refill};
/// let policy = Policy::default()
///     .default_rate_limits(&[RateLimit::new("burst", 10, Duration::from_secs(1))])
///     .default_credits(Credits::new(1_000).refill(Refill::monthly(1, 1_000)))
///     .max_rate(100, Duration::from_secs(1))
///     .max_credits(100_000)
///     .max_rate_limits(3);
/// assert_eq!(policy.default_limits().len(), 1);
/// assert_eq!(policy.rate_cap(), Some((100, Duration::from_secs(1))));
/// ```
///
/// [`KeyManager::generate`]: crate::KeyManager::generate
/// [`KeyManager::set_limits`]: crate::KeyManager::set_limits
/// [`KeyManager::set_credits`]: crate::KeyManager::set_credits
/// [`KeyManager::roll`]: crate::KeyManager::roll
#[derive(Clone, Debug)]
pub struct Policy {
    allowed_days: Vec<u16>,
    default_days: u16,
    max_days: u16,
    allow_never: bool,
    allow_reveal: bool,
    max_active_keys: usize,
    revoke_unused_after: Option<Duration>,
    warn_before: Vec<Duration>,
    purge_after: Option<Duration>,
    default_rate_limits: Vec<RateLimit>,
    default_credits: Option<Credits>,
    max_rate_limits: usize,
    /// The highest rate a limit may allow: `limit` per `per`, kept exactly (a fraction of a
    /// millisecond in `per` is part of the cap).
    max_rate: Option<(u64, std::time::Duration)>,
    max_credits: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_days: vec![7, 30, 60, 90, 180, 365],
            default_days: 90,
            max_days: 365,
            allow_never: false,
            allow_reveal: false,
            max_active_keys: 100,
            revoke_unused_after: None,
            warn_before: vec![Duration::days(30), Duration::days(7), Duration::days(1)],
            purge_after: None,
            default_rate_limits: Vec::new(),
            default_credits: None,
            max_rate_limits: MAX_RATE_LIMITS,
            max_rate: None,
            max_credits: None,
        }
    }
}

impl Policy {
    /// The periods (in days) a manager may choose with [`Expiry::Days`].
    pub fn allowed_days(mut self, days: &[u16]) -> Self {
        let mut d = days.to_vec();
        d.sort_unstable();
        d.dedup();
        self.allowed_days = d;
        self
    }

    /// The period used when a request names none (90 by default); must be allowed.
    pub fn default_days(mut self, days: u16) -> Self {
        self.default_days = days;
        self
    }

    /// The longest lifetime any key may get, in days.
    pub fn max_days(mut self, days: u16) -> Self {
        self.max_days = days;
        self
    }

    /// Whether keys that never expire may be generated.
    pub fn allow_never(mut self, allow: bool) -> Self {
        self.allow_never = allow;
        self
    }

    /// Whether managers may reveal (copy again) an existing key. Every reveal is audited.
    pub fn allow_reveal(mut self, allow: bool) -> Self {
        self.allow_reveal = allow;
        self
    }

    /// Most active (neither revoked nor expired) keys per organization.
    pub fn max_active_keys(mut self, n: usize) -> Self {
        self.max_active_keys = n;
        self
    }

    /// Revokes (in [`KeyManager::sweep`](crate::KeyManager::sweep)) an active key whose last
    /// use — or creation, if never used — is older than `after` (off by default). The key's
    /// warning goes out first.
    pub fn revoke_unused_after(mut self, after: Duration) -> Self {
        self.revoke_unused_after = Some(after);
        self
    }

    /// The lead times of the sweep's expiry warnings (default 30, 7 and 1 days before
    /// expiry). An empty list turns expiry warnings off.
    pub fn warn_before(mut self, leads: &[Duration]) -> Self {
        let mut l = leads.to_vec();
        l.sort_unstable_by(|a, b| b.cmp(a));
        l.dedup();
        self.warn_before = l;
        self
    }

    /// Deletes (in the sweep) revoked and expired keys `after` they stopped working (off by
    /// default), so that lists and per-organization counts stay bounded.
    pub fn purge_after(mut self, after: Duration) -> Self {
        self.purge_after = Some(after);
        self
    }

    /// The unused-key revocation period, if on.
    pub fn unused_revocation(&self) -> Option<Duration> {
        self.revoke_unused_after
    }

    /// The expiry warnings' lead times, longest first.
    pub fn warnings(&self) -> &[Duration] {
        &self.warn_before
    }

    /// The retention of revoked and expired keys, if purging is on.
    pub fn purge_period(&self) -> Option<Duration> {
        self.purge_after
    }

    /// The allowed periods (1 day or more), ascending, limited to `max_days`.
    pub fn periods(&self) -> Vec<u16> {
        self.allowed_days
            .iter()
            .copied()
            .filter(|d| (1..=self.max_days).contains(d))
            .collect()
    }

    /// The default period in days.
    pub fn default_period(&self) -> u16 {
        self.default_days
    }

    /// The maximum lifetime in days.
    pub fn max_period(&self) -> u16 {
        self.max_days
    }

    /// Whether "never expires" is allowed.
    pub fn never_allowed(&self) -> bool {
        self.allow_never
    }

    /// Whether reveal is allowed.
    pub fn reveal_allowed(&self) -> bool {
        self.allow_reveal
    }

    /// The per-organization cap on active keys.
    pub fn active_key_limit(&self) -> usize {
        self.max_active_keys
    }

    fn allowed_text(&self) -> String {
        let days: Vec<String> = self.periods().iter().map(u16::to_string).collect();
        format!(
            "allowed: {} days, or an explicit date at most {} days ahead{}",
            days.join(", "),
            self.max_days,
            if self.allow_never { ", or never" } else { "" }
        )
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.max_days == 0 {
            return Err(Error::Policy("max_days must be at least 1".into()));
        }
        if !self.periods().contains(&self.default_days) {
            let days: Vec<String> = self.periods().iter().map(u16::to_string).collect();
            return Err(Error::Policy(format!(
                "default_days is {}, which is not one of the allowed periods [{}] (at most max_days = {}); \
                 set .default_days(..) to one of them, or add {} to .allowed_days(..)",
                self.default_days,
                days.join(", "),
                self.max_days,
                self.default_days,
            )));
        }
        let non_positive = |d: &Duration| !d.is_positive();
        if self.revoke_unused_after.as_ref().is_some_and(non_positive)
            || self.purge_after.as_ref().is_some_and(non_positive)
            || self.warn_before.iter().any(non_positive)
        {
            return Err(Error::Policy(
                "revoke_unused_after, purge_after and warn_before need positive durations".into(),
            ));
        }
        if !(1..=MAX_RATE_LIMITS).contains(&self.max_rate_limits) {
            return Err(Error::Policy(format!(
                "max_rate_limits must be 1 to {MAX_RATE_LIMITS}"
            )));
        }
        if self
            .max_rate
            .is_some_and(|(l, per)| l == 0 || per < std::time::Duration::from_millis(1))
        {
            return Err(Error::Policy(
                "max_rate needs a limit of at least 1 per a window of at least 1 ms".into(),
            ));
        }
        // The defaults must pass the policy's own maxima (checked only where they apply:
        // a policy may cap rates and leave the limits to each request).
        // Each refusal names the setting it is about.
        let about = |what: &'static str| {
            move |e: Error| match e {
                Error::Policy(msg) => Error::Policy(format!("{what}: {msg}")),
                other => other,
            }
        };
        if !self.default_rate_limits.is_empty() {
            check_limits(&self.default_rate_limits, None)
                .and_then(|()| self.check_rate_limits(&self.default_rate_limits))
                .map_err(about("default_rate_limits"))?;
        }
        if let Some(c) = &self.default_credits {
            c.check()
                .and_then(|()| self.check_credits(Some(c)))
                .map_err(about("default_credits"))?;
        }
        Ok(())
    }

    /// Resolves a requested expiry at `now` into an absolute time (`None` = never).
    pub(crate) fn resolve(
        &self,
        expiry: Option<Expiry>,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, Error> {
        let now = whole_seconds(now);
        match expiry.unwrap_or(Expiry::Days(self.default_days)) {
            Expiry::Days(d) => {
                if d == 0 || d > self.max_days || !self.allowed_days.contains(&d) {
                    return Err(Error::Policy(format!(
                        "an expiry of {d} days is not allowed; {}",
                        self.allowed_text()
                    )));
                }
                // Never shortened: past the calendar's end is no expiry the store can hold.
                match now.checked_add(Duration::days(i64::from(d))) {
                    Some(t) => Ok(Some(t)),
                    None => Err(Error::Policy(format!(
                        "an expiry of {d} days from now falls past the end of the calendar"
                    ))),
                }
            }
            Expiry::At(t) => {
                let t = whole_seconds(t);
                if t <= now || t > now.saturating_add(Duration::days(i64::from(self.max_days))) {
                    return Err(Error::Policy(format!(
                        "an explicit expiry must be in the future and at most {} days ahead; {}",
                        self.max_days,
                        self.allowed_text()
                    )));
                }
                Ok(Some(t))
            }
            Expiry::Never => {
                if self.allow_never {
                    Ok(None)
                } else {
                    Err(Error::Policy(format!(
                        "keys that never expire are not allowed; {}",
                        self.allowed_text()
                    )))
                }
            }
        }
    }
}

/// Checks a key name: 1–128 characters, at least one visible, no control characters and no
/// bidirectional controls (which make `abc\u{202e}txt.exe` display as `abcexe.txt`).
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(Error::Policy(format!(
            "a key name must be 1 to {MAX_NAME_CHARS} characters with no control characters"
        )));
    }
    if name.chars().any(is_bidi_control) {
        return Err(Error::Policy(
            "a key name must not contain bidirectional controls (U+202A–U+202E, U+2066–U+2069): \
             they make a name display differently from what it is"
                .into(),
        ));
    }
    if !name.chars().any(|c| !is_invisible(c)) {
        return Err(Error::Policy(
            "a key name needs at least one visible character (not only spaces or zero-width characters)"
                .into(),
        ));
    }
    Ok(())
}

/// U+202A–U+202E and U+2066–U+2069: the embeddings, overrides and isolates that reorder the
/// text around them when it is displayed.
pub(crate) fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// White space and Unicode's default-ignorable code points (format characters such as
/// zero-width spaces and joiners, soft hyphen, word joiner, BOM, tags, shorthand format
/// controls; fillers; variation selectors; the reserved U+FFF0–U+FFF8): characters that show
/// nothing on their own.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}')
}

/// Checks an owner / external id: 1–128 bytes, no control characters.
pub(crate) fn check_owner(owner: &str) -> Result<(), Error> {
    if owner.is_empty() || owner.len() > MAX_OWNER_BYTES || owner.chars().any(char::is_control) {
        return Err(Error::Policy(format!(
            "an owner id must be 1 to {MAX_OWNER_BYTES} bytes with no control characters"
        )));
    }
    Ok(())
}

/// Checks an id an actor writes into a key record (its organization into a new key; its user
/// as creator): no NUL (U+0000), which PostgreSQL cannot store, so that a record
/// any store accepts is one every store accepts. [`OrgId`] and [`UserId`] check only their
/// length when made, so that records of earlier builds keep loading; other control
/// characters are the host's to allow (the CLI escapes them when it shows a record).
///
/// [`OrgId`]: crate::OrgId
/// [`UserId`]: crate::UserId
pub(crate) fn check_written_id(what: &str, id: &str) -> Result<(), Error> {
    if id.contains('\0') {
        return Err(Error::Policy(format!(
            "{what} written into a key must not contain NUL (U+0000): not every key store can keep it"
        )));
    }
    Ok(())
}

/// Checks metadata: non-empty keys without control characters, values without NUL (which
/// PostgreSQL's JSON cannot hold), at most 4 KiB in all.
pub(crate) fn check_meta(meta: &BTreeMap<String, String>) -> Result<(), Error> {
    let size: usize = meta.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_META_BYTES {
        return Err(Error::Policy(format!(
            "a key's metadata may hold at most {MAX_META_BYTES} bytes of keys and values ({size} given)"
        )));
    }
    if meta
        .keys()
        .any(|k| k.is_empty() || k.chars().any(char::is_control))
    {
        return Err(Error::Policy(
            "metadata keys must be non-empty with no control characters".into(),
        ));
    }
    if meta.values().any(|v| v.contains('\0')) {
        return Err(Error::Policy(
            "metadata values must not contain NUL (U+0000): not every key store can keep it".into(),
        ));
    }
    Ok(())
}

/// Checks a scope list: 1–8 scopes after de-duplication.
pub(crate) fn check_scopes(scopes: &[Scope]) -> Result<Vec<Scope>, Error> {
    // `Scope::Custom` can be built directly; its name is checked here, on input.
    for scope in scopes {
        if let Scope::Custom(name) = scope {
            Scope::custom(&**name)?;
        }
    }
    let mut s = scopes.to_vec();
    s.sort();
    s.dedup();
    if s.is_empty() || s.len() > MAX_SCOPES {
        return Err(Error::Policy(format!(
            "a key needs 1 to {MAX_SCOPES} scopes"
        )));
    }
    Ok(s)
}

/// What a manager asks for when generating a key.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub(crate) name: String,
    pub(crate) scopes: Vec<Scope>,
    pub(crate) expiry: Option<Expiry>,
    pub(crate) rate_limits: Vec<RateLimit>,
    pub(crate) credits: Option<Credits>,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) owner: Option<String>,
}

impl GenerateRequest {
    /// A request for a key named `name`, with no scopes yet and the policy's default expiry.
    pub fn new(name: impl Into<String>) -> Self {
        GenerateRequest {
            name: name.into(),
            scopes: Vec::new(),
            expiry: None,
            rate_limits: Vec::new(),
            credits: None,
            meta: BTreeMap::new(),
            owner: None,
        }
    }

    /// Adds a named rate limit (at most 8 per key, names unique). `verify` enforces it.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limits.push(limit);
        self
    }

    /// Gives the key a budget of usage credits. `verify` spends them.
    pub fn credits(mut self, credits: Credits) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Adds one entry of host metadata (at most 4 KiB in all), returned by every
    /// verification ([`Verified::meta`](crate::Verified::meta)).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// The host's owner or external id for the key (1–128 bytes), returned by every
    /// verification ([`Verified::owner`](crate::Verified::owner)).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Adds a scope.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scopes.push(scope);
        self
    }

    /// Adds several scopes.
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = Scope>) -> Self {
        self.scopes.extend(scopes);
        self
    }

    /// Chooses the expiry (default: the policy's default period).
    pub fn expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = Some(expiry);
        self
    }
}
