//! Usage limits that are part of a key: named rate limits and usage credits.
//!
//! The configuration decides acceptance, so it is sealed under the record's tag; the counters
//! (how much of a window or of the credits is used) are usage state and live in a counter
//! engine ([`UsageCounters`]): [`LocalCounters`] in process by default.

mod config;
mod engine;
mod local;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::{RedisCounters, RedisCountersBuilder, RedisStats};
pub(crate) use config::check_limits;
pub use config::{Credits, LimitScope, MAX_RATE_LIMITS, MAX_UNITS, RateLimit, Refill};
pub use engine::{
    Consumed, CounterError, Decision, LimitUsage, Usage, UsageCounters, UsageRequest,
};
pub(crate) use engine::{Left, Refused, Verdict, window_of};
pub use local::LocalCounters;
pub(crate) use local::LocalHandle;
