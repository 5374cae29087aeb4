//! Time sources. Expiry is decided at [`Clock::now`]; tests use [`ManualClock`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Instant, SystemTime};

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

    /// The current time in whole Unix seconds, given `monotonic`, an [`Instant`] the caller
    /// read just before. The verification hot path already reads the monotonic clock for its
    /// cache, so a clock may derive wall time from that reading instead of reading the system
    /// clock a second time. The default ignores `monotonic` and calls [`Clock::now_unix`].
    fn now_unix_at(&self, monotonic: Instant) -> i64 {
        let _ = monotonic;
        self.now_unix()
    }
}

/// The system's wall clock.
///
/// [`Clock::now_unix_at`] (the verification hot path) reads the system clock at most every
/// 50 ms and extrapolates from the caller's monotonic reading in between, so a step of the
/// wall clock (e.g. an NTP correction) reaches expiry decisions within 50 ms.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// How often [`SystemClock::now_unix_at`] re-reads the wall clock.
const WALL_REFRESH_NS: u64 = 50_000_000;

/// The anchor between the monotonic clock and the wall clock (process-wide): the wall clock
/// minus the monotonic clock, in nanoseconds, as of the last refresh.
struct WallAnchor {
    base: Instant,
    refreshed_at: AtomicU64,
    offset_ns: AtomicI64,
}

fn wall_anchor() -> &'static WallAnchor {
    static ANCHOR: OnceLock<WallAnchor> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let base = Instant::now();
        WallAnchor {
            base,
            refreshed_at: AtomicU64::new(0),
            offset_ns: AtomicI64::new(wall_ns()),
        }
    })
}

/// Nanoseconds since the Unix epoch (negative before it), saturating.
fn wall_ns() -> i64 {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn now_unix(&self) -> i64 {
        wall_ns().div_euclid(1_000_000_000)
    }

    fn now_unix_at(&self, monotonic: Instant) -> i64 {
        let a = wall_anchor();
        // Saturating: an instant from before the anchor counts as the anchor itself.
        let mono = u64::try_from(monotonic.saturating_duration_since(a.base).as_nanos())
            .unwrap_or(u64::MAX);
        let refreshed = a.refreshed_at.load(Ordering::Relaxed);
        let offset = if mono.wrapping_sub(refreshed) >= WALL_REFRESH_NS && mono >= refreshed {
            // Re-anchor on a fresh pair of readings. Racing threads each store a valid pair.
            let m = u64::try_from(a.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let offset = wall_ns().saturating_sub(m as i64);
            a.offset_ns.store(offset, Ordering::Relaxed);
            a.refreshed_at.store(m, Ordering::Relaxed);
            offset
        } else {
            a.offset_ns.load(Ordering::Relaxed)
        };
        (mono as i64)
            .saturating_add(offset)
            .div_euclid(1_000_000_000)
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
    fn now_unix_at(&self, monotonic: Instant) -> i64 {
        (**self).now_unix_at(monotonic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_extrapolation_tracks_the_wall_clock() {
        let c = SystemClock;
        for _ in 0..3 {
            let direct = c.now_unix();
            let derived = c.now_unix_at(Instant::now());
            let again = c.now_unix();
            assert!(
                direct <= derived + 1 && derived <= again + 1,
                "{direct} {derived} {again}"
            );
            std::thread::sleep(std::time::Duration::from_millis(60));
        }
        // An instant from before the anchor is clamped, never a panic.
        let old = Instant::now();
        assert!((c.now_unix_at(old) - c.now_unix()).abs() <= 1);
    }

    #[test]
    fn other_clocks_ignore_the_monotonic_reading() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let c = ManualClock::new(t);
        assert_eq!(c.now_unix_at(Instant::now()), 1_700_000_000);
        c.advance(Duration::seconds(5));
        assert_eq!(Arc::new(c).now_unix_at(Instant::now()), 1_700_000_005);
    }
}
