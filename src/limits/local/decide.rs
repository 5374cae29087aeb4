//! One key's (or organization's) counters and one decision on them: the window counts, the
//! credit balance, how a limit finds its count, and the all-or-nothing decision.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration as StdDuration;

use crate::limits::engine::{Left, Refused, Verdict, next_refill_ms, refill_period, unix_day};
use crate::{Credits, MAX_RATE_LIMITS, Refill};

/// How many org-wide names beyond the inline [`MAX_RATE_LIMITS`] an organization's counters
/// keep at most (its keys may name that many different org-wide limits at once); past that,
/// the count whose window ends first gives way to a new name.
pub(super) const MORE_ORG_WINDOWS: usize = 56;

/// How long before the window being counted a reading still counts in it, for windows
/// shorter than this (longer ones: one window). A verification reads the clock before it
/// waits for the key's lock; under load a thread can wait longer than a 1 ms window.
pub(super) const STALE_MS: i64 = 1_000;

/// One rate limit, compacted for deciding (24 bytes: the first sits in the handle's first
/// cache line).
#[derive(Clone, Copy, Default)]
pub(super) struct Lim {
    /// The limit's name and window length, hashed: what identifies its count.
    pub(super) name: u64,
    pub(super) limit: u64,
    /// The window in ms (bits 0..56), the limit's [`Lim::hint`] (bits 56..63) and [`ORG`]
    /// for an org-wide limit.
    pub(super) window: u64,
}

/// The bit of [`Lim::window`] that marks an org-wide limit (windows are at most a year).
const ORG: u64 = 1 << 63;
/// Where [`Lim::hint`] sits in [`Lim::window`].
const HINT_SHIFT: u32 = 56;
const WINDOW_MASK: u64 = (1 << HINT_SHIFT) - 1;

impl Lim {
    /// `window_ms` at most a year (so well below [`WINDOW_MASK`]; 0 counts as 1); `nth` is
    /// the limit's index among the key's limits of its scope (below [`MAX_RATE_LIMITS`]).
    pub(super) fn new(name: u64, limit: u64, window_ms: u64, org: bool, nth: usize) -> Self {
        let nth = (nth % MAX_RATE_LIMITS) as u64;
        Lim {
            name,
            limit,
            window: window_ms.clamp(1, WINDOW_MASK) | nth << HINT_SHIFT | if org { ORG } else { 0 },
        }
    }

    pub(super) fn org(&self) -> bool {
        self.window & ORG != 0
    }

    pub(super) fn window_ms(&self) -> i64 {
        (self.window & WINDOW_MASK) as i64
    }

    /// Where this limit's count usually is: its index among the limits of its scope. A
    /// key's windows hold only its own limits and an organization's only org-wide ones (in
    /// the order its keys first named them: usually the same for every key of it).
    #[inline(always)]
    pub(super) fn hint(&self) -> usize {
        ((self.window & !ORG) >> HINT_SHIFT) as usize % MAX_RATE_LIMITS
    }
}

/// One key's counters (the windows' count and first windows first, next to the lock).
#[derive(Default)]
#[repr(C)]
pub(super) struct KeyEntry {
    pub(super) windows: Windows,
    pub(super) credits: CreditCell,
}

/// A key's (or organization's) window counters: the first [`MAX_RATE_LIMITS`] inline (all a
/// key ever needs), an organization's further ones in `more` (its keys may name more org-wide
/// limits between them than one key can have).
#[derive(Default)]
#[repr(C)]
pub(super) struct Windows {
    pub(super) len: u8,
    pub(super) items: [Window; MAX_RATE_LIMITS],
    pub(super) more: Vec<Window>,
}

/// One limit's count in its current window `[start, end)` (Unix ms; a verification inside it
/// needs no division). A limit of another window length is another count (see [`Lim::name`]).
#[derive(Clone, Copy)]
pub(super) struct Window {
    /// The limit's name and window length, hashed (names of one key are unique; 64-bit
    /// hashes of at most a few dozen per key or organization do not collide in practice).
    pub(super) name: u64,
    pub(super) used: u64,
    pub(super) start: i64,
    pub(super) end: i64,
}

impl Default for Window {
    fn default() -> Self {
        Window::fresh(0)
    }
}

impl Window {
    /// A count not started yet: `end - start` is 0, never a window's length, so its first
    /// [`roll`](Window::roll) starts it.
    pub(super) fn fresh(name: u64) -> Self {
        Window {
            name,
            used: 0,
            start: i64::MIN,
            end: i64::MIN,
        }
    }

    /// Moves the count to the window of `window_ms` containing `now` (a later window, or a
    /// window of another length, starts at zero) and returns that window's end. A reading
    /// up to one window — and, for windows under a second, up to [`STALE_MS`] — before the
    /// current window (a thread that read the clock and then waited for the lock, a wall
    /// clock stepped back a little) counts in the current window: going back would zero a
    /// count the next reading then zeroes again, admitting more than the limit. A reading
    /// further back (a step of the wall clock by more than that) starts over in its own
    /// window, so that such a step cannot keep a key refused until the clock catches up
    /// again. The last window below `i64::MAX`, whose end saturates, counts like any other.
    #[inline(always)]
    pub(super) fn roll(&mut self, window_ms: i64, now: i64) -> i64 {
        // (A window of 0, which `Lim` never holds, would go to `roll_elsewhere`: no count has
        // length 0 but a count not started, and no difference is below 0.)
        let w = window_ms;
        // The usual case, `now` in `[start, end)`: `end - start == w` says `end` did not
        // saturate (`end == start + w`), so the unsigned difference decides exactly.
        if self.end.wrapping_sub(self.start) == w
            && (now.wrapping_sub(self.start) as u64) < w as u64
        {
            return self.end;
        }
        self.roll_elsewhere(w, now)
    }

    /// [`Window::roll`] when `now` is not in the current window (a new window, a reading
    /// before it, a count of another length or not started).
    #[cold]
    #[inline(never)]
    fn roll_elsewhere(&mut self, w: i64, now: i64) -> i64 {
        let w = w.max(1);
        // A count of this length (its end saturated or not; a count not started, `(MIN,
        // MIN)`, is none), and `now` in it or at most a window (a second) before it.
        let counting = self.end == self.start.saturating_add(w);
        let keep = counting
            && (now < self.end || self.end == i64::MAX)
            && now >= self.start.saturating_sub(w.max(STALE_MS));
        if !keep {
            let start = now.div_euclid(w).saturating_mul(w);
            self.start = start;
            self.end = start.saturating_add(w);
            self.used = 0;
        }
        self.end
    }

    /// Whether this window's count still matters at `now` (a reading in or before it).
    pub(super) fn live(&self, now: i64) -> bool {
        now < self.end || self.end == i64::MAX
    }
}

/// A key's credit balance: its own (inline, under the key's lock), or shared with the keys
/// of a roll (under its own lock, always taken after the key's).
pub(super) enum CreditCell {
    Own(Balance),
    Shared(Arc<Mutex<Balance>>),
}

impl Default for CreditCell {
    fn default() -> Self {
        CreditCell::Own(Balance::default())
    }
}

impl CreditCell {
    #[inline]
    pub(super) fn with<R>(&mut self, f: impl FnOnce(&mut Balance) -> R) -> R {
        match self {
            CreditCell::Own(b) => f(b),
            CreditCell::Shared(a) => f(&mut a.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    /// Makes the balance shareable and returns it.
    pub(super) fn share(&mut self) -> Arc<Mutex<Balance>> {
        let own = match std::mem::take(self) {
            CreditCell::Shared(a) => a,
            CreditCell::Own(b) => Arc::new(Mutex::new(b)),
        };
        *self = CreditCell::Shared(own.clone());
        own
    }
}

#[derive(Clone, Copy, Default)]
pub(super) struct Balance {
    pub(super) initialized: bool,
    pub(super) balance: u64,
    /// The Unix day the balance was last started, set or refilled (see
    /// [`refill_period`]).
    pub(super) day: i64,
    /// When the next refill is due, as last worked out (see [`Balance::refill_due`]).
    pub(super) due: Due,
}

/// The first millisecond a refill is due ([`next_refill_ms`]) for a balance of Unix day `day`
/// under a schedule of refill day `on` (0: daily), so that a verification compares one number
/// instead of redoing the calendar. Worked out again when the day or the schedule differs (a
/// refill, a `set_credits`, keys of different schedules sharing the balance after a roll).
#[derive(Clone, Copy, Default)]
pub(super) struct Due {
    known: bool,
    on: u8,
    day: i64,
    at_ms: Option<i64>,
}

impl Balance {
    /// A balance of `balance` started, set or refilled at `now_ms`.
    pub(super) fn at(balance: u64, now_ms: i64) -> Self {
        Balance {
            initialized: true,
            balance,
            day: unix_day(now_ms),
            due: Due::default(),
        }
    }

    /// Brings the balance to `now_ms`: the configured start on first use, a refill (which
    /// sets) in a new period.
    #[inline(always)]
    pub(super) fn current(&mut self, credits: &Credits, now_ms: i64) -> u64 {
        if !self.initialized {
            self.restart(credits.initial(), now_ms);
        } else if let Some(r) = credits.refill_schedule()
            && self.refill_due(r, now_ms)
        {
            self.restart(r.amount(), now_ms);
        }
        self.balance
    }

    /// The first use's start, or a refill.
    #[cold]
    #[inline(never)]
    fn restart(&mut self, balance: u64, now_ms: i64) {
        *self = Balance::at(balance, now_ms);
    }

    /// Whether refill `r` is due at `now_ms`: `refill_period(Some(r), now_ms) > self.day`,
    /// from the remembered first due millisecond when it is for this day and schedule.
    #[inline]
    fn refill_due(&mut self, r: Refill, now_ms: i64) -> bool {
        let on = match r {
            Refill::Daily { .. } => 0,
            Refill::Monthly { day, .. } => day.max(1),
        };
        let due = &mut self.due;
        if !(due.known && due.on == on && due.day == self.day) {
            *due = Due {
                known: true,
                on,
                day: self.day,
                at_ms: next_refill_ms(r, self.day),
            };
        }
        match due.at_ms {
            Some(at) => now_ms >= at,
            None => refill_period(Some(r), now_ms) > self.day,
        }
    }
}

/// The counter of limit `l` among `windows`; `hint` is where it usually is (see
/// [`Lim::hint`]), checked first. A name not counted yet takes a slot no current limit of
/// this decision uses, so a decision never takes over another limit's count:
/// - a free inline slot;
/// - for a key's own limits, a slot whose name the key's configuration no longer has (a key
///   has at most [`MAX_RATE_LIMITS`] limits, so there always is one once all are taken);
/// - for an organization's (whose other keys may count in any slot), a slot whose window is
///   over (its count would start at zero anyway), else a new slot — at most
///   [`MORE_ORG_WINDOWS`] beyond the inline ones, then the slot of another name whose window
///   ends first.
#[inline(always)]
pub(super) fn find<'w>(
    windows: &'w mut Windows,
    hint: usize,
    l: &Lim,
    limits: &[Lim],
    now: i64,
) -> &'w mut Window {
    if hint < usize::from(windows.len) && windows.items[hint].name == l.name {
        return &mut windows.items[hint];
    }
    find_elsewhere(windows, l, limits, now)
}

/// [`find`] when the counter is not at its hint (the first decision of a configuration).
#[cold]
#[inline(never)]
pub(super) fn find_elsewhere<'w>(
    windows: &'w mut Windows,
    l: &Lim,
    limits: &[Lim],
    now: i64,
) -> &'w mut Window {
    let len = usize::from(windows.len);
    let name = l.name;
    if let Some(p) = windows.items[..len].iter().position(|w| w.name == name) {
        // Moved to where the limit's hint looks (a key whose limits were reordered or
        // removed), so that the next decisions find it there. Counts are found by name, so
        // where one sits never changes what it counts.
        let hint = l.hint();
        if hint < len {
            windows.items.swap(p, hint);
            return &mut windows.items[hint];
        }
        return &mut windows.items[p];
    }
    if let Some(p) = windows.more.iter().position(|w| w.name == name) {
        return &mut windows.more[p];
    }
    let current = |w: &Window| {
        limits
            .iter()
            .any(|c| c.org() == l.org() && c.name == w.name)
    };
    let slot = if len < MAX_RATE_LIMITS {
        windows.len = u8::try_from(len + 1).unwrap_or(u8::MAX);
        &mut windows.items[len]
    } else if !l.org() {
        // At most MAX_RATE_LIMITS - 1 other current names: one slot is free of them.
        let p = windows
            .items
            .iter()
            .position(|w| !current(w))
            .unwrap_or(MAX_RATE_LIMITS - 1);
        &mut windows.items[p]
    } else if let Some(p) = windows
        .items
        .iter()
        .position(|w| !w.live(now) && !current(w))
    {
        &mut windows.items[p]
    } else if let Some(p) = windows
        .more
        .iter()
        .position(|w| !w.live(now) && !current(w))
    {
        &mut windows.more[p]
    } else if windows.more.len() < MORE_ORG_WINDOWS {
        windows.more.push(Window::fresh(name));
        let last = windows.more.len() - 1;
        &mut windows.more[last]
    } else {
        // Bounded: the count of another name (not one of this decision's) whose window ends
        // first gives way.
        let inline = windows
            .items
            .iter()
            .enumerate()
            .map(|(i, w)| (false, i, w.end, current(w)));
        let more = windows
            .more
            .iter()
            .enumerate()
            .map(|(i, w)| (true, i, w.end, current(w)));
        match inline
            .chain(more)
            .filter(|&(.., cur)| !cur)
            .min_by_key(|&(_, _, end, _)| end)
        {
            Some((true, i, ..)) => &mut windows.more[i],
            Some((false, i, ..)) => &mut windows.items[i],
            None => &mut windows.items[MAX_RATE_LIMITS - 1],
        }
    };
    *slot = Window::fresh(name);
    slot
}

/// The counter of limit `l` (one of `limits`): among the key's windows, or its
/// organization's. `ONE`: the decision's only limit is the key's own (so its count is
/// usually the key's first).
#[inline(always)]
pub(super) fn counter<'a, const ONE: bool>(
    entry: &'a mut Option<&mut KeyEntry>,
    org: &'a mut Option<&mut Windows>,
    l: &Lim,
    limits: &[Lim],
    now: i64,
) -> Option<&'a mut Window> {
    let windows = if !ONE && l.org() {
        org.as_deref_mut()
    } else {
        entry.as_deref_mut().map(|e| &mut e.windows)
    };
    let hint = if ONE { 0 } else { l.hint() };
    windows.map(|w| find(w, hint, l, limits, now))
}

/// Decides under the locks of the counters it reads, in one pass: each limit is checked and
/// spent in turn, and a refusal (a later limit, or the credits) puts back what earlier limits
/// spent before any lock is released — so the decision is all or nothing, and a key's usual
/// decision (admitted) touches each counter once.
///
/// `ONE` says that `limits` is one limit of the key's own and `credits` is `None`: the
/// handle's common case, which [`LocalCounters::decide_with`](super::LocalCounters) inlines
/// with those constants (no loop, no organization, no credits). [`decide_any`] is the
/// out-of-line form for every other configuration.
#[inline(always)]
pub(super) fn decide<const ONE: bool>(
    mut entry: Option<&mut KeyEntry>,
    mut org_windows: Option<&mut Windows>,
    limits: &[Lim],
    credits: Option<&Credits>,
    cost: u64,
    now: i64,
    ends: Option<&mut [i64; MAX_RATE_LIMITS]>,
) -> Verdict {
    // A key has at most MAX_RATE_LIMITS (the handle keeps no more); said here so that the
    // per-limit arrays need no bounds checks.
    let limits = &limits[..limits.len().min(MAX_RATE_LIMITS)];
    let mut v = Verdict {
        refused: Refused::No,
        left: Left {
            len: u8::try_from(limits.len()).unwrap_or(u8::MAX),
            remaining: [0; MAX_RATE_LIMITS],
            ahead: 0,
            credits: None,
        },
    };
    // Where the windows' ends go (a caller that does not ask for them gets a scratch array,
    // so the loop does not test for it).
    let mut scratch = [0; MAX_RATE_LIMITS];
    let ends = match ends {
        Some(e) => e,
        None => &mut scratch,
    };
    // The refusing limit whose window ends last, and the first refusing limit's index
    // (limits before it were spent).
    let mut refused: Option<(usize, i64)> = None;
    let mut spent_upto = limits.len();
    for (i, l) in limits.iter().enumerate() {
        let Some(w) = counter::<ONE>(&mut entry, &mut org_windows, l, limits, now) else {
            continue;
        };
        let end = w.roll(l.window_ms(), now);
        if now < w.start {
            // Counted in the window after `now`'s (see `Window::roll`).
            v.left.ahead |= 1 << i;
        }
        ends[i] = end;
        // A cost of 0 is never refused, even by a count above a limit lowered since.
        if let Some(after) = w.used.checked_add(cost)
            && (after <= l.limit || cost == 0)
        {
            if refused.is_none() {
                w.used = after;
            }
            v.left.remaining[i] = l.limit.saturating_sub(w.used);
        } else {
            v.left.remaining[i] = l.limit.saturating_sub(w.used);
            if refused.is_none() {
                spent_upto = i;
            }
            if refused.is_none_or(|(_, r)| end > r) {
                refused = Some((i, end));
            }
        }
    }
    if let Some((i, end)) = refused {
        put_back(
            &mut entry,
            &mut org_windows,
            limits,
            spent_upto,
            cost,
            &mut v,
            now,
        );
        v.refused = Refused::Rate {
            limit: i,
            retry_after: StdDuration::from_millis(
                u64::try_from(end.saturating_sub(now)).unwrap_or(0),
            ),
        };
        if let (Some(c), Some(e)) = (credits, entry.as_deref_mut()) {
            v.left.credits = Some(e.credits.with(|b| b.current(c, now)));
        }
        return v;
    }
    // Credits: checked and spent under the key's lock (and a shared balance's own lock).
    if let (Some(c), Some(e)) = (credits, entry.as_deref_mut()) {
        let spent = e.credits.with(|b| {
            let balance = b.current(c, now);
            if balance < cost {
                Err(balance)
            } else {
                b.balance = balance - cost;
                Ok(b.balance)
            }
        });
        match spent {
            Ok(left) => v.left.credits = Some(left),
            Err(balance) => {
                v.left.credits = Some(balance);
                let n = limits.len();
                put_back(&mut entry, &mut org_windows, limits, n, cost, &mut v, now);
                v.refused = Refused::Credits;
            }
        }
    }
    v
}

/// [`decide`], out of line (every configuration but the common one).
pub(super) fn decide_any(
    entry: Option<&mut KeyEntry>,
    org_windows: Option<&mut Windows>,
    limits: &[Lim],
    credits: Option<&Credits>,
    cost: u64,
    now: i64,
    ends: Option<&mut [i64; MAX_RATE_LIMITS]>,
) -> Verdict {
    decide::<false>(entry, org_windows, limits, credits, cost, now, ends)
}

/// Takes back the `cost` that limits `..upto` spent in this decision (each was found, rolled
/// and spent by it without overflow, under the same locks: a refused decision spends
/// nothing).
#[cold]
pub(super) fn put_back(
    entry: &mut Option<&mut KeyEntry>,
    org_windows: &mut Option<&mut Windows>,
    limits: &[Lim],
    upto: usize,
    cost: u64,
    v: &mut Verdict,
    now: i64,
) {
    for (i, l) in limits.iter().enumerate().take(upto) {
        if let Some(w) = counter::<false>(entry, org_windows, l, limits, now) {
            w.used = w.used.saturating_sub(cost);
            v.left.remaining[i] = l.limit.saturating_sub(w.used);
        }
    }
}
