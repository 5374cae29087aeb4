//! What managers may ask for: expiry periods, reveal, how many keys.

use time::{Duration, OffsetDateTime};

use crate::record::whole_seconds;
use crate::{Error, Scope};

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Most scopes on one key.
pub const MAX_SCOPES: usize = 8;

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
#[derive(Clone, Debug)]
pub struct Policy {
    allowed_days: Vec<u16>,
    default_days: u16,
    max_days: u16,
    allow_never: bool,
    allow_reveal: bool,
    max_active_keys: usize,
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

    /// The allowed periods, ascending, limited to `max_days`.
    pub fn periods(&self) -> Vec<u16> {
        self.allowed_days
            .iter()
            .copied()
            .filter(|d| *d <= self.max_days)
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
            return Err(Error::Policy(format!(
                "the default period of {} days is not an allowed period ({})",
                self.default_days,
                self.allowed_text()
            )));
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
                Ok(Some(now.saturating_add(Duration::days(i64::from(d)))))
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

/// Checks a key name: 1–128 characters, no control characters.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS || name.chars().any(char::is_control) || name.trim().is_empty()
    {
        return Err(Error::Policy(format!(
            "a key name must be 1 to {MAX_NAME_CHARS} characters, not blank, with no control characters"
        )));
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
}

impl GenerateRequest {
    /// A request for a key named `name`, with no scopes yet and the policy's default expiry.
    pub fn new(name: impl Into<String>) -> Self {
        GenerateRequest {
            name: name.into(),
            scopes: Vec::new(),
            expiry: None,
        }
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
