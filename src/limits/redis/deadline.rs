//! Deadlines kept by a thread of their own, for calls polled outside any Tokio runtime: the
//! runtime the engine was built in may not be driving its timers (a current-thread runtime
//! nobody is blocked on runs none), and such a call must still end at its timeout.

use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::task::Waker;
use std::time::Instant;

/// The waker of one call, replaced on each poll; the timer holds it weakly (a call that
/// ended leaves nothing to wake).
pub(super) type Slot = Arc<Mutex<Waker>>;

struct Timer {
    due: Mutex<Vec<(Instant, Weak<Mutex<Waker>>)>>,
    changed: Condvar,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            due: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        }));
        // Without the thread (none could be spawned), a call still ends at its deadline
        // when anything else polls it after that.
        let _ = std::thread::Builder::new()
            .name("api-keys-redis-deadlines".into())
            .spawn(move || run(t));
        t
    })
}

fn run(t: &'static Timer) {
    let mut due = t.due.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let now = Instant::now();
        let mut ready = Vec::new();
        due.retain(|(at, slot)| {
            if *at > now {
                return slot.strong_count() > 0;
            }
            if let Some(slot) = slot.upgrade() {
                ready.push(slot.lock().unwrap_or_else(PoisonError::into_inner).clone());
            }
            false
        });
        if !ready.is_empty() {
            // Woken without the lock: a waker may poll the call at once, which may register.
            drop(due);
            ready.into_iter().for_each(Waker::wake);
            due = t.due.lock().unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        due = match due.iter().map(|(at, _)| *at).min() {
            None => t.changed.wait(due).unwrap_or_else(PoisonError::into_inner),
            Some(next) => {
                t.changed
                    .wait_timeout(due, next.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

/// Wakes `slot`'s waker at `at`.
pub(super) fn wake_at(at: Instant, slot: &Slot) {
    let t = timer();
    t.due
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((at, Arc::downgrade(slot)));
    t.changed.notify_one();
}

/// `f`'s output, or `None` once `timeout` has passed (one the clock cannot add: far off),
/// timed by this module's thread: for a caller outside any runtime waiting on a task of a
/// runtime that may not be running (its timers would never fire either).
pub(super) struct Within<F> {
    f: std::pin::Pin<Box<F>>,
    timeout: std::time::Duration,
    deadline: Deadline,
}

impl<F> Within<F> {
    pub(super) fn new(f: F, timeout: std::time::Duration) -> Self {
        Within {
            f: Box::pin(f),
            timeout,
            deadline: Deadline::default(),
        }
    }
}

/// A deadline kept by this module's thread, set at the first poll that has to wait.
#[derive(Default)]
pub(super) struct Deadline(Option<(Instant, Slot)>);

impl Deadline {
    /// Whether `timeout` has passed since the first call (one the clock cannot add is far
    /// off, as Tokio's own timeout takes it: never an overflow); if not, `cx`'s waker is woken
    /// when it does.
    pub(super) fn passed(
        &mut self,
        timeout: std::time::Duration,
        cx: &std::task::Context<'_>,
    ) -> bool {
        match &self.0 {
            None => {
                let now = Instant::now();
                let at = now
                    .checked_add(timeout)
                    .or_else(|| now.checked_add(super::call::FAR_FUTURE))
                    .unwrap_or(now);
                let slot = Arc::new(Mutex::new(cx.waker().clone()));
                wake_at(at, &slot);
                self.0 = Some((at, slot));
                false
            }
            Some((at, _)) if Instant::now() >= *at => true,
            Some((_, slot)) => {
                slot.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone_from(cx.waker());
                false
            }
        }
    }
}

impl<F: std::future::Future> std::future::Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        if let std::task::Poll::Ready(v) = this.f.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(v));
        }
        if this.deadline.passed(this.timeout, cx) {
            return std::task::Poll::Ready(None);
        }
        std::task::Poll::Pending
    }
}
