//! The policy's usage limits: defaults for keys whose request names none, and maxima.

use std::time::Duration as StdDuration;

use super::Policy;
use crate::limits::check_limits;
use crate::{Credits, Error, RateLimit};

impl Policy {
    /// The rate limits a key gets when its [`GenerateRequest`](crate::GenerateRequest) names none (default: none).
    /// A request that names any rate limit gets exactly those instead.
    pub fn default_rate_limits(mut self, limits: &[RateLimit]) -> Self {
        self.default_rate_limits = limits.to_vec();
        self
    }

    /// The credits a key gets when its [`GenerateRequest`](crate::GenerateRequest) names none (default: none, the
    /// key is not metered).
    pub fn default_credits(mut self, credits: Credits) -> Self {
        self.default_credits = Some(credits);
        self
    }

    /// Most rate limits one key may carry (default and upper bound
    /// [`MAX_RATE_LIMITS`](crate::MAX_RATE_LIMITS)).
    pub fn max_rate_limits(mut self, n: usize) -> Self {
        self.max_rate_limits = n;
        self
    }

    /// The highest rate any rate limit may allow: a limit of `l` per window `w` is accepted
    /// only if its average rate `l / w` is at most `limit / per` (so with
    /// `max_rate(100, 1 s)`, `6 000` per minute passes and `200` per second or `10 000` per
    /// minute do not). Every key then needs at least one rate limit (without one it would be
    /// unlimited): give requests a limit, or the policy [`Policy::default_rate_limits`].
    pub fn max_rate(mut self, limit: u64, per: StdDuration) -> Self {
        self.max_rate = Some((limit, per));
        self
    }

    /// The largest credit balance a key may be given, initial or by refill. Every key then
    /// needs credits (without them it would be unmetered): give requests credits, or the
    /// policy [`Policy::default_credits`].
    pub fn max_credits(mut self, n: u64) -> Self {
        self.max_credits = Some(n);
        self
    }

    /// The default rate limits.
    pub fn default_limits(&self) -> &[RateLimit] {
        &self.default_rate_limits
    }

    /// The default credits, if any.
    pub fn default_credit_budget(&self) -> Option<Credits> {
        self.default_credits
    }

    /// The most rate limits per key.
    pub fn rate_limit_cap(&self) -> usize {
        self.max_rate_limits
    }

    /// The highest rate a limit may allow (`limit` per window), if capped.
    pub fn rate_cap(&self) -> Option<(u64, StdDuration)> {
        self.max_rate
    }

    /// The largest credit balance, if capped.
    pub fn credit_cap(&self) -> Option<u64> {
        self.max_credits
    }

    /// Checks a key's rate limits against the policy's maxima (after [`check_limits`] checked
    /// them on their own).
    pub(crate) fn check_rate_limits(&self, limits: &[RateLimit]) -> Result<(), Error> {
        if limits.len() > self.max_rate_limits {
            return Err(Error::Policy(format!(
                "a key may carry at most {} rate limits under this policy ({} given)",
                self.max_rate_limits,
                limits.len()
            )));
        }
        let Some((cap, per)) = self.max_rate else {
            return Ok(());
        };
        if limits.is_empty() {
            return Err(Error::Policy(format!(
                "this policy allows at most {cap} per {per:?}, so a key needs at least one rate limit"
            )));
        }
        for l in limits {
            // l.limit / l.window <= cap / per, without division, in nanoseconds (`per` may
            // have a fraction of a millisecond). The right side stays below 2^120 for a
            // checked window (at most a year); a left side past u128 is above it.
            let allowed = u128::from(cap)
                .saturating_mul(u128::from(l.window_ms()))
                .saturating_mul(1_000_000);
            let asked = u128::from(l.limit()).checked_mul(per.as_nanos());
            if asked.is_none_or(|asked| asked > allowed) {
                return Err(Error::Policy(format!(
                    "rate limit `{}` allows {} per {} ms, above this policy's maximum rate of {cap} per {per:?}",
                    l.name(),
                    l.limit(),
                    l.window_ms()
                )));
            }
        }
        Ok(())
    }

    /// Checks a key's credits against the policy's maximum.
    pub(crate) fn check_credits(&self, credits: Option<&Credits>) -> Result<(), Error> {
        let Some(cap) = self.max_credits else {
            return Ok(());
        };
        let Some(c) = credits else {
            return Err(Error::Policy(format!(
                "this policy allows at most {cap} credits, so a key needs credits"
            )));
        };
        let refill = c.refill_schedule().map(|r| r.amount());
        if c.initial() > cap || refill.is_some_and(|r| r > cap) {
            let refilled = refill.map_or(String::new(), |r| format!(", refilled to {r},"));
            return Err(Error::Policy(format!(
                "credits of {}{refilled} exceed this policy's maximum of {cap}",
                c.initial()
            )));
        }
        Ok(())
    }

    /// The rate limits and credits of a new key: the request's, or the policy's defaults
    /// where it names none; checked on their own and against the maxima.
    pub(crate) fn resolve_limits(
        &self,
        limits: Vec<RateLimit>,
        credits: Option<Credits>,
    ) -> Result<(Vec<RateLimit>, Option<Credits>), Error> {
        let limits = if limits.is_empty() {
            self.default_rate_limits.clone()
        } else {
            limits
        };
        let credits = credits.or(self.default_credits);
        check_limits(&limits, credits.as_ref())?;
        self.check_rate_limits(&limits)?;
        self.check_credits(credits.as_ref())?;
        Ok((limits, credits))
    }
}
