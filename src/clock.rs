//! Time sources. Expiry is decided at [`Clock::now`]; tests use [`ManualClock`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use time::{Duration, OffsetDateTime};

/// A source of the current time (UTC).
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;

    /// The current time in whole Unix seconds. The verification hot path only needs this
    /// (expiry is whole seconds); implementations may make it cheaper than [`Clock::now`].
    fn now_unix(&self) -> i64 {
        self.now().unix_timestamp()
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn now_unix(&self) -> i64 {
        match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }
}

/// A clock that only moves when told to; clones share one time. For tests.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    /// Sets the time.
    pub fn set(&self, t: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    /// Moves the time by `d` (which may be negative).
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *t = t.saturating_add(d);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
    fn now_unix(&self) -> i64 {
        (**self).now_unix()
    }
}
