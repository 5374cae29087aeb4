//! Time sources. Expiry is decided at [`Clock::now`]; tests use [`ManualClock`].

use std::cell::Cell;
use std::sync::{Arc, Mutex, PoisonError};
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

    /// The current time in Unix milliseconds (usage-limit windows). Implementations may
    /// make it cheaper than [`Clock::now`].
    fn now_unix_ms(&self) -> i64 {
        i64::try_from(self.now().unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
    }

    /// The current time in Unix milliseconds, given `monotonic`, an [`Instant`] the caller
    /// read just before (as [`Clock::now_unix_at`]). The default ignores `monotonic` and calls
    /// [`Clock::now_unix_ms`].
    ///
    /// The verification of a key with usage limits reads only this (one clock reading) and
    /// takes its expiry second from it (`div_euclid(1000)`): an implementation that overrides
    /// the seconds methods must keep this one in agreement with them.
    fn now_unix_ms_at(&self, monotonic: Instant) -> i64 {
        let _ = monotonic;
        self.now_unix_ms()
    }
}

/// The system's wall clock.
///
/// [`Clock::now_unix_at`] (the verification hot path) reads the system clock at most every
/// 50 ms per thread (and at each change of the whole second) and otherwise answers from the
/// caller's monotonic reading, so a step of the wall clock (e.g. an NTP correction) reaches
/// expiry decisions within 50 ms.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// How long [`SystemClock::now_unix_at`] trusts one reading of the wall clock.
const WALL_REFRESH: Duration = Duration::milliseconds(50);

/// A monotonic window `[from, until)` and the wall clock's value (in some unit) during it.
type WallWindow = (Instant, Instant, i64);

thread_local! {
    /// Per thread (nothing shared between verifying threads): a monotonic window
    /// `[from, until)` during which the wall clock shows the whole second `secs`.
    static WALL_SECOND: Cell<Option<WallWindow>> = const { Cell::new(None) };
    /// Per thread: a monotonic window `[from, until)` during which the wall clock shows the
    /// whole millisecond `ms`.
    static WALL_MS: Cell<Option<WallWindow>> = const { Cell::new(None) };
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

    fn now_unix_ms(&self) -> i64 {
        wall_ns().div_euclid(1_000_000)
    }

    /// From the caller's monotonic reading: the system clock is read at most once per
    /// millisecond per thread (and at least every 50 ms, so a step of the wall clock reaches
    /// usage-limit windows within 50 ms); in between, two comparisons answer.
    fn now_unix_ms_at(&self, monotonic: Instant) -> i64 {
        whole_units_at(&WALL_MS, 1_000_000, monotonic)
    }

    /// As [`SystemClock::now_unix_ms_at`], in whole seconds.
    fn now_unix_at(&self, monotonic: Instant) -> i64 {
        whole_units_at(&WALL_SECOND, 1_000_000_000, monotonic)
    }
}

/// The wall clock in whole `unit`s (nanoseconds per unit) at the monotonic reading
/// `monotonic`, from the thread's window in `cell` when the reading falls inside it;
/// otherwise the wall clock is read and trusted until its next whole unit or for
/// [`WALL_REFRESH`], whichever comes first.
#[inline]
fn whole_units_at(
    cell: &'static std::thread::LocalKey<Cell<Option<WallWindow>>>,
    unit: i64,
    monotonic: Instant,
) -> i64 {
    if let Some((from, until, value)) = cell.get()
        && from <= monotonic
        && monotonic < until
    {
        return value;
    }
    let now = Instant::now();
    let wall = wall_ns();
    let value = wall.div_euclid(unit);
    let to_next = unit - wall.rem_euclid(unit);
    let valid = Duration::nanoseconds(to_next).min(WALL_REFRESH);
    let until = std::time::Duration::try_from(valid)
        .ok()
        .and_then(|d| now.checked_add(d));
    if let Some(until) = until {
        cell.set(Some((now, until, value)));
    }
    // An instant from before this reading belongs to an earlier unit at most; the decision
    // it serves (expiry, a limit's window) is then (harmlessly) made a little late.
    value
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
    fn now_unix_ms(&self) -> i64 {
        (**self).now_unix_ms()
    }
    fn now_unix_ms_at(&self, monotonic: Instant) -> i64 {
        (**self).now_unix_ms_at(monotonic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_extrapolation_tracks_the_wall_clock() {
        let c = SystemClock;
        // Across at least one change of the whole second: the cached window never reports a
        // second the wall clock has not reached, and lags it by at most the microseconds
        // the monotonic and wall clocks can drift apart within one window.
        let mut exact = 0;
        for _ in 0..15 {
            let direct = c.now_unix();
            let derived = c.now_unix_at(Instant::now());
            let again = c.now_unix();
            assert!(
                direct - 1 <= derived && derived <= again,
                "{direct} {derived} {again}"
            );
            exact += usize::from(direct <= derived);
            std::thread::sleep(std::time::Duration::from_millis(90));
        }
        assert!(exact >= 13, "{exact} of 15 readings matched the wall clock");
        // An instant from before the cached window is answered, never a panic.
        let old = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(60));
        let _ = c.now_unix_at(Instant::now());
        assert!((c.now_unix_at(old) - c.now_unix()).abs() <= 1);
    }

    #[test]
    fn system_clock_milliseconds_from_a_monotonic_reading_track_the_wall_clock() {
        let c = SystemClock;
        // Readings inside one 50 ms window, and past it (a fresh pair is taken): the derived
        // milliseconds always lie between two direct readings (allowing the rounding of one
        // millisecond and the drift of the two clocks within one window).
        for pause in [0u64, 3, 20, 70] {
            let direct = c.now_unix_ms();
            let derived = c.now_unix_ms_at(Instant::now());
            let again = c.now_unix_ms();
            assert!(
                direct - 1 <= derived && derived <= again + 1,
                "{direct} {derived} {again}"
            );
            std::thread::sleep(std::time::Duration::from_millis(pause));
        }
        // An instant from before the cached pair is answered, never a panic.
        let old = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let _ = c.now_unix_ms_at(Instant::now());
        assert!((c.now_unix_ms_at(old) - c.now_unix_ms()).abs() <= 10);
        // Other clocks ignore the reading.
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(
            ManualClock::new(t).now_unix_ms_at(Instant::now()),
            1_700_000_000_000
        );
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
