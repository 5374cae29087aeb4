//! Every call to Redis goes through here: the circuit breaker, the per-call timeout, and the
//! runtime the call runs on (the caller's, or the engine's own for a caller polled outside
//! any Tokio runtime).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, ServerErrorKind};

use super::{RedisCounters, unavailable};
use crate::limits::engine::CounterError;

/// The runtime the engine was built in, and whether it still runs: a runtime shut down (its
/// `Runtime` dropped) still hands out its handle, but its timers panic when polled ("A Tokio
/// 1.x context was found, but it is being shutdown"), the connection's own retry timer
/// included.
pub(super) struct OwnRuntime {
    handle: tokio::runtime::Handle,
    alive: Arc<AtomicBool>,
    /// Dropped with the engine, it ends the task holding [`Alive`].
    _engine: tokio::sync::oneshot::Sender<()>,
}

/// Held by a task of the runtime that lasts as long as the engine: dropped (with every task)
/// when the runtime shuts down, before its timers and I/O stop.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl OwnRuntime {
    /// The current runtime, if any.
    pub(super) fn current() -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let alive = Arc::new(AtomicBool::new(true));
        let guard = Alive(Arc::clone(&alive));
        let (engine, dropped) = tokio::sync::oneshot::channel();
        handle.spawn(async move {
            let _guard = guard;
            let _ = dropped.await;
        });
        Some(OwnRuntime {
            handle,
            alive,
            _engine: engine,
        })
    }

    /// Its handle while it runs.
    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.alive
            .load(Ordering::Acquire)
            .then(|| self.handle.clone())
    }
}

/// The deadline of a call whose timeout the clock cannot add (as Tokio's far future: 30 years).
pub(super) const FAR_FUTURE: std::time::Duration =
    std::time::Duration::from_secs(86_400 * 365 * 30);

/// A call polled inside the engine's own runtime `rt` (entered for each poll), for a caller
/// outside any; [`CounterError::Unavailable`] once that runtime shut down, even midway (its
/// timers would panic), and at the engine's timeout by a timer of its own (that runtime may
/// not be driving its timers and I/O: a current-thread runtime nobody is blocked on).
struct InRuntime<'a, F> {
    engine: &'a RedisCounters,
    rt: &'a OwnRuntime,
    f: std::pin::Pin<Box<F>>,
    deadline: super::deadline::Deadline,
}

impl<T, F: Future<Output = Result<T, CounterError>>> Future for InRuntime<'_, F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = &mut *self;
        let Some(handle) = this.rt.handle() else {
            return std::task::Poll::Ready(Err(unavailable(None)));
        };
        let polled = {
            let _in = handle.enter();
            this.f.as_mut().poll(cx)
        };
        if polled.is_ready() {
            return polled;
        }
        if this.deadline.passed(this.engine.inner.timeout, cx) {
            // Timed out, as the call's own timeout would have said.
            this.engine.record(false);
            return std::task::Poll::Ready(Err(unavailable(None)));
        }
        std::task::Poll::Pending
    }
}

/// The breaker's probe, held by the call that won it; clears the mark when dropped (after
/// [`RedisCounters::record`] did, or without an answer).
struct Probe<'a>(&'a Breaker);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
    }
}

#[derive(Default)]
pub(super) struct Breaker {
    pub(super) failures: AtomicU32,
    /// While open: until when (ms since `epoch`); 0 when closed.
    pub(super) open_until: AtomicU64,
    pub(super) probing: AtomicBool,
    pub(super) calls: AtomicU64,
    pub(super) short_circuited: AtomicU64,
}

/// Whether an error is Redis's answer about the call's own keys — a value a script cannot
/// read as a number (a counter or balance edited by hand), a key of another type, a reply of
/// the wrong shape — rather than a sign that Redis cannot serve. Such a call fails (its limits
/// fail as configured) but does not count toward the breaker: one bad key must not cut every
/// other key off from a healthy Redis.
///
/// A script's error names Redis's own condition when a `redis.call` inside it met one (Redis 6
/// and earlier report an out-of-memory or read-only server that way, as a script error): that
/// is Redis failing, whatever the keys.
pub(super) fn about_own_keys(e: &RedisError) -> bool {
    const REDIS_CONDITIONS: [&str; 8] = [
        "OOM",
        "READONLY",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "NOREPLICAS",
        "CLUSTERDOWN",
        "TRYAGAIN",
    ];
    match e.kind() {
        ErrorKind::UnexpectedReturnType => true,
        ErrorKind::Server(ServerErrorKind::ResponseError) => e.detail().is_some_and(|d| {
            d.contains("user_script") && !REDIS_CONDITIONS.iter().any(|c| d.contains(c))
        }),
        _ => e.code() == Some("WRONGTYPE"),
    }
}

impl RedisCounters {
    /// The Tokio runtime to spawn on: the current one, else the engine's own.
    pub(super) fn runtime(&self) -> Option<tokio::runtime::Handle> {
        tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.inner.runtime.as_ref()?.handle())
    }

    /// The connection: the one made at `build`, else made now in the current runtime or the
    /// engine's own (it spawns its tasks there). [`CounterError::Unavailable`] without either:
    /// an engine built outside any runtime and polled outside any cannot reach Redis.
    pub(super) fn connection(&self) -> Result<ConnectionManager, CounterError> {
        if let Some(conn) = self.inner.conn.get() {
            return Ok(conn.clone());
        }
        let handle = self.runtime().ok_or_else(|| unavailable(None))?;
        let _in = handle.enter();
        let made = ConnectionManager::new_lazy_with_config(
            self.inner.client.clone(),
            self.inner.config.clone(),
        )
        .map_err(|e| unavailable(Some(e)))?;
        Ok(self.inner.conn.get_or_init(|| made).clone())
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether a call may go out now: the breaker is closed (`Some(false)`), or it is open,
    /// its time is up and this caller won the single probe (`Some(true)`).
    pub(super) fn admit_call(&self) -> Option<bool> {
        let b = &self.inner.breaker;
        let until = b.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Some(false);
        }
        if self.now_ms() >= until
            && b.probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Some(true);
        }
        b.short_circuited.fetch_add(1, Ordering::Relaxed);
        None
    }

    pub(super) fn record(&self, ok: bool) {
        let b = &self.inner.breaker;
        if ok {
            b.failures.store(0, Ordering::Release);
            b.open_until.store(0, Ordering::Release);
        } else {
            let n = b.failures.fetch_add(1, Ordering::AcqRel) + 1;
            let was_open = b.open_until.load(Ordering::Acquire) != 0;
            if was_open || n >= self.inner.failures_to_open {
                let ms = u64::try_from(self.inner.open_for.as_millis()).unwrap_or(u64::MAX);
                b.open_until
                    .store(self.now_ms().saturating_add(ms).max(1), Ordering::Release);
            }
        }
    }

    /// Runs one call through the breaker and the timeout: on the calling thread's Tokio
    /// runtime, or — for a caller polled outside any (a host's own executor) — entering the
    /// runtime the engine was built in for each poll (the timeout's timer and the connection
    /// need one; without either, the call is [`CounterError::Unavailable`], not a panic).
    pub(super) async fn call<T, F>(&self, f: F) -> Result<T, CounterError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            return self.call_here(f).await;
        }
        match &self.inner.runtime {
            Some(rt) => {
                InRuntime {
                    engine: self,
                    rt,
                    f: Box::pin(self.call_here(f)),
                    deadline: super::deadline::Deadline::default(),
                }
                .await
            }
            None => Err(unavailable(None)),
        }
    }

    /// [`RedisCounters::call`] in the current runtime.
    pub(super) async fn call_here<T, F>(&self, f: F) -> Result<T, CounterError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let Some(probe) = self.admit_call() else {
            return Err(unavailable(None));
        };
        // A probe whose caller is dropped before the answer (a client gone, a host's own
        // timeout) hands the probe back: otherwise no call would ever be let through again.
        let _probe = probe.then(|| Probe(&self.inner.breaker));
        self.inner.breaker.calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.inner.timeout, f).await {
            Ok(Ok(v)) => {
                self.record(true);
                Ok(v)
            }
            Ok(Err(e)) => {
                // Redis answered, about this call's own keys: the call fails, Redis does not.
                self.record(about_own_keys(&e));
                Err(unavailable(Some(e)))
            }
            Err(_) => {
                self.record(false);
                Err(unavailable(None))
            }
        }
    }
}
