//! The limit configuration a key carries: [`RateLimit`], [`Credits`] and [`Refill`].

use std::time::Duration as StdDuration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Most rate limits one key may carry.
pub const MAX_RATE_LIMITS: usize = 8;
/// The largest limit, credit balance or refill amount: 2^53, counted exactly by every engine
/// (Redis's scripts count in Lua numbers, which are doubles; Redis before 7.2 also writes a
/// number of 10^17 or more in exponent form, which its integer commands refuse).
pub const MAX_UNITS: u64 = 1 << 53;
/// The longest rate-limit window (one year).
const MAX_WINDOW_MS: u64 = 366 * 86_400 * 1000;

/// Whom a rate limit counts: the key alone, or every key of its organization together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// This key only (the default).
    #[default]
    Key,
    /// Shared by every key of the organization that carries a limit of the same name.
    Org,
}

/// A named rate limit: at most `limit` units of cost per `window`.
///
/// ```
/// use std::time::Duration;
/// use api_keys::RateLimit;
/// let per_second = RateLimit::new("burst", 10, Duration::from_secs(1));
/// let per_day = RateLimit::new("daily", 10_000, Duration::from_secs(86_400)).per_org();
/// assert_eq!(per_day.limit(), 10_000);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    name: String,
    limit: u64,
    window_ms: u64,
    #[serde(default)]
    scope: LimitScope,
}

impl RateLimit {
    /// `limit` units of cost per `window` (whole milliseconds), counted for this key.
    /// Checked when the key is generated: see [`RateLimit::check`].
    pub fn new(name: impl Into<String>, limit: u64, window: StdDuration) -> Self {
        RateLimit {
            name: name.into(),
            limit,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            scope: LimitScope::Key,
        }
    }

    /// Makes the limit shared by every key of the organization with a limit of this name.
    pub fn per_org(mut self) -> Self {
        self.scope = LimitScope::Org;
        self
    }

    /// The limit's name (`[a-z][a-z0-9._-]{0,31}`), unique per key.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Units of cost allowed per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window.
    pub fn window(&self) -> StdDuration {
        StdDuration::from_millis(self.window_ms)
    }

    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Whether the key alone or its whole organization is counted.
    pub fn scope(&self) -> LimitScope {
        self.scope
    }

    /// Checks the limit's values.
    ///
    /// # Errors
    /// [`Error::Policy`] saying what is allowed.
    pub fn check(&self) -> Result<(), Error> {
        if !valid_limit_name(&self.name) {
            return Err(Error::Policy(
                "a rate limit's name must match [a-z][a-z0-9._-]{0,31}".into(),
            ));
        }
        if self.limit == 0 || self.limit > MAX_UNITS {
            return Err(Error::Policy(format!(
                "rate limit `{}`: the limit must be 1 to {MAX_UNITS}",
                self.name
            )));
        }
        if self.window_ms == 0 || self.window_ms > MAX_WINDOW_MS {
            return Err(Error::Policy(format!(
                "rate limit `{}`: the window must be between 1 ms and 366 days",
                self.name
            )));
        }
        Ok(())
    }
}

fn valid_limit_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
}

/// When a key's credits are refilled. A refill *sets* the balance to `amount`; it does not
/// add to what is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "every", rename_all = "snake_case")]
pub enum Refill {
    /// Every day at 00:00 UTC.
    Daily {
        /// The balance after the refill.
        amount: u64,
    },
    /// Every month at 00:00 UTC on `day` (1–28, so that every month has it).
    Monthly {
        /// Day of the month, 1–28.
        day: u8,
        /// The balance after the refill.
        amount: u64,
    },
}

impl Refill {
    /// A daily refill to `amount`.
    pub fn daily(amount: u64) -> Self {
        Refill::Daily { amount }
    }

    /// A monthly refill to `amount` on `day` (1–28).
    pub fn monthly(day: u8, amount: u64) -> Self {
        Refill::Monthly { day, amount }
    }

    /// The balance a refill sets.
    pub fn amount(&self) -> u64 {
        match *self {
            Refill::Daily { amount } | Refill::Monthly { amount, .. } => amount,
        }
    }
}

/// Usage credits: how many units of cost a key may spend (each verify costs 1 unless the host
/// says otherwise), optionally refilled on a schedule.
///
/// ```
/// use api_keys::{Credits, Refill};
/// let monthly = Credits::new(1_000).refill(Refill::monthly(1, 1_000));
/// assert_eq!(monthly.initial(), 1_000);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Credits {
    initial: u64,
    #[serde(default)]
    refill: Option<Refill>,
}

impl Credits {
    /// A starting balance of `n` credits, never refilled.
    pub fn new(n: u64) -> Self {
        Credits {
            initial: n,
            refill: None,
        }
    }

    /// Refills the balance on a schedule.
    pub fn refill(mut self, refill: Refill) -> Self {
        self.refill = Some(refill);
        self
    }

    /// The balance the key starts with.
    pub fn initial(&self) -> u64 {
        self.initial
    }

    /// The refill schedule, if any.
    pub fn refill_schedule(&self) -> Option<Refill> {
        self.refill
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Policy`] saying what is allowed.
    pub fn check(&self) -> Result<(), Error> {
        if self.initial > MAX_UNITS || self.refill.is_some_and(|r| r.amount() > MAX_UNITS) {
            return Err(Error::Policy(format!(
                "credits must be at most {MAX_UNITS}"
            )));
        }
        if let Some(Refill::Monthly { day, .. }) = self.refill
            && !(1..=28).contains(&day)
        {
            return Err(Error::Policy(
                "a monthly refill's day must be 1 to 28 (every month has it)".into(),
            ));
        }
        Ok(())
    }
}

/// Checks a key's limits: each valid, at most [`MAX_RATE_LIMITS`], names unique.
pub(crate) fn check_limits(limits: &[RateLimit], credits: Option<&Credits>) -> Result<(), Error> {
    if limits.len() > MAX_RATE_LIMITS {
        return Err(Error::Policy(format!(
            "a key may carry at most {MAX_RATE_LIMITS} rate limits"
        )));
    }
    for (i, l) in limits.iter().enumerate() {
        l.check()?;
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(Error::Policy(format!(
                "rate limit `{}` is named twice; each limit of a key needs its own name",
                l.name
            )));
        }
    }
    if let Some(c) = credits {
        c.check()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        let ok = RateLimit::new("burst", 10, StdDuration::from_secs(1));
        assert!(check_limits(std::slice::from_ref(&ok), None).is_ok());
        assert!(check_limits(&[ok.clone(), ok.clone()], None).is_err());
        assert!(
            RateLimit::new("Burst", 10, StdDuration::from_secs(1))
                .check()
                .is_err()
        );
        assert!(
            RateLimit::new("b", 0, StdDuration::from_secs(1))
                .check()
                .is_err()
        );
        assert!(RateLimit::new("b", 1, StdDuration::ZERO).check().is_err());
        assert!(
            Credits::new(5)
                .refill(Refill::monthly(29, 5))
                .check()
                .is_err()
        );
        assert!(
            Credits::new(5)
                .refill(Refill::monthly(28, 5))
                .check()
                .is_ok()
        );
        let many: Vec<_> = (0..9)
            .map(|i| RateLimit::new(format!("l{i}"), 1, StdDuration::from_secs(1)))
            .collect();
        assert!(check_limits(&many, None).is_err());
    }
}
