//! A verification polled outside any Tokio runtime runs its Redis call in the runtime the
//! engine was built in: once that runtime shut down, the call is unavailable, not a panic.

use super::*;

/// Runs `f` on a thread of its own, outside any runtime; its panic message if it panicked.
fn outside_any_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, Option<String>> {
    std::thread::scope(|s| {
        s.spawn(f).join().map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        })
    })
}

/// A current-thread runtime and an engine built in it (50 ms timeout; local-first with the
/// given sync period). Nobody is blocked on the runtime afterwards unless a test says so.
fn current_thread_engine(
    url: &str,
    local_first: Option<StdDuration>,
) -> (tokio::runtime::Runtime, RedisCounters) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async {
        let b = RedisCounters::builder(url)
            .prefix(prefix())
            .timeout(StdDuration::from_millis(50));
        match local_first {
            Some(sync) => b.local_first(sync),
            None => b,
        }
        .build()
        .unwrap()
    });
    (rt, engine)
}

/// `limit` per hour for `key` of "acme", cost 1, at a fixed time (a request borrows these).
struct Hourly {
    org: api_keys::OrgId,
    limits: [RateLimit; 1],
    key: api_keys::KeyId,
}

impl Hourly {
    fn new(limit: u64, key: api_keys::KeyId) -> Self {
        Hourly {
            org: api_keys::OrgId::new("acme"),
            limits: [RateLimit::new("hour", limit, StdDuration::from_secs(3600))],
            key,
        }
    }

    fn req(&self) -> UsageRequest<'_> {
        UsageRequest {
            key: self.key,
            org: &self.org,
            limits: &self.limits,
            credits: None,
            cost: 1,
            now_ms: 1_800_000,
        }
    }
}

/// Runs `n` verifications of `hourly`'s request through `engine` on a thread of its own,
/// outside any runtime: the last answer, or `None` if they did not all end within a minute
/// (a hang: the thread is not joined, so that it cannot hang the test).
fn verify_outside_any_runtime(
    engine: &RedisCounters,
    hourly: Hourly,
    n: usize,
) -> Option<Result<Decision, api_keys::CounterError>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = engine.clone();
    std::thread::spawn(move || {
        let mut last = None;
        for _ in 0..n {
            last = Some(super::faults::block_on_plain(async {
                match engine.consume(hourly.req()) {
                    Consumed::Ready(r) => r,
                    Consumed::Pending(f) => f.await,
                }
            }));
        }
        let _ = tx.send(last);
    });
    rx.recv_timeout(StdDuration::from_secs(60)).ok().flatten()
}

/// The engine built in a runtime that was then shut down (dropped), before its connection
/// was first used, or after: a strict verification polled outside any runtime entered the
/// dead runtime, whose timers (the call's timeout, the connection's own retry delay) panic
/// ("A Tokio 1.x context was found, but it is being shutdown"). It is `Unavailable` instead.
#[test]
fn strict_after_the_engines_runtime_shut_down_is_unavailable_not_a_panic() {
    let Some(url) =
        redis_url("strict_after_the_engines_runtime_shut_down_is_unavailable_not_a_panic")
    else {
        return;
    };
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 2, StdDuration::from_secs(3600))];
    let req = |key| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms: 1_800_000,
    };
    for connected_first in [false, true] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (engine, _conn) = rt.block_on(strict_with_connection(&url, &prefix()));
        if connected_first {
            rt.block_on(consume_once(&engine, req(random_key().0)));
        }
        drop(rt);
        let key = random_key().0;
        let out = outside_any_runtime(|| {
            super::faults::block_on_plain(async {
                match engine.consume(req(key)) {
                    Consumed::Ready(r) => r,
                    Consumed::Pending(f) => f.await,
                }
            })
        });
        match out {
            Ok(Err(api_keys::CounterError::Unavailable(_))) => {}
            other => panic!("connected first: {connected_first}: {other:?}"),
        }
    }
}

/// The engine built in a current-thread runtime that nobody is blocked on afterwards (a host
/// that built it with `block_on` and verifies from threads of its own): that runtime runs
/// neither the connection nor its timers, so a verification polled outside any runtime
/// waited forever instead of ending at the engine's timeout. It is `Unavailable` at the
/// timeout now. (The wait below only bounds a hang; the timeout is 50 ms.)
#[test]
fn strict_with_the_engines_current_thread_runtime_idle_ends_at_the_timeout() {
    let Some(url) =
        redis_url("strict_with_the_engines_current_thread_runtime_idle_ends_at_the_timeout")
    else {
        return;
    };
    let (rt, engine) = current_thread_engine(&url, None);
    let d = verify_outside_any_runtime(&engine, Hourly::new(2, random_key().0), 1);
    assert!(
        matches!(d, Some(Err(api_keys::CounterError::Unavailable(_)))),
        "{d:?}"
    );
    drop(rt);
}

/// An engine whose per-call timeout is as long as a `Duration` goes (no timeout, in effect),
/// built in a runtime that keeps running, with a verification polled outside any runtime:
/// its call's own deadline (`now + timeout`) overflowed and panicked on the first poll that
/// had to wait, where the same call inside a runtime just waits for Redis's answer.
#[test]
fn strict_with_an_unbounded_timeout_outside_any_runtime_is_not_a_panic() {
    let Some(url) =
        redis_url("strict_with_an_unbounded_timeout_outside_any_runtime_is_not_a_panic")
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async {
        RedisCounters::builder(&url)
            .prefix(prefix())
            .timeout(StdDuration::MAX)
            .build()
            .unwrap()
    });
    let out = outside_any_runtime(|| {
        let org = api_keys::OrgId::new("acme");
        let limits = [RateLimit::new("hour", 2, StdDuration::from_secs(3600))];
        let req = UsageRequest {
            key: random_key().0,
            org: &org,
            limits: &limits,
            credits: None,
            cost: 1,
            now_ms: 1_800_000,
        };
        super::faults::block_on_plain(async {
            match engine.consume(req) {
                Consumed::Ready(r) => r,
                Consumed::Pending(f) => f.await,
            }
        })
    });
    assert!(matches!(out, Ok(Ok(Decision::Allowed { .. }))), "{out:?}");
    drop(rt);
}

/// `strict_with_the_engines_current_thread_runtime_idle_ends_at_the_timeout` in local-first
/// mode: the lease call ran in a task spawned on the engine's idle runtime, which never runs
/// it, and the verification waited for its answer forever. It ends (refused: the limit fails
/// closed without Redis) instead. (The wait below only bounds a hang; the timeout is 50 ms.)
#[test]
fn local_first_with_the_engines_current_thread_runtime_idle_ends_at_the_timeout() {
    let Some(url) =
        redis_url("local_first_with_the_engines_current_thread_runtime_idle_ends_at_the_timeout")
    else {
        return;
    };
    let (rt, engine) = current_thread_engine(&url, Some(StdDuration::from_secs(1)));
    assert!(
        verify_outside_any_runtime(&engine, Hourly::new(2, random_key().0), 1).is_some(),
        "a verification outside any runtime never ended"
    );
    drop(rt);
}

/// Local-first, the engine built in a current-thread runtime that a thread of the host keeps
/// running (blocked on it), and a verification polled outside any runtime whose caller goes
/// away while its lease call is in flight (a client that disconnects). Redis counts the units
/// it grants as leased to this node: the node must hold them, as it does inside a runtime
/// (`local_first_keeps_the_lease_of_a_verification_dropped_during_its_call`). The call ran in
/// the verification itself there, so its grant was lost with the caller, and nobody could
/// admit those units in that window.
#[test]
fn local_first_outside_any_runtime_keeps_the_lease_of_a_dropped_verification() {
    if redis_url("local_first_outside_any_runtime_keeps_the_lease_of_a_dropped_verification")
        .is_none()
    {
        return;
    }
    let server = PrivateRedis::start(temp_dir(), free_port());
    let url = server.url();
    let p = prefix();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async {
        RedisCounters::builder(&url)
            .prefix(&p)
            .timeout(StdDuration::from_secs(5))
            .local_first(StdDuration::from_secs(3600))
            .build()
            .unwrap()
    });
    // The host keeps the engine's runtime running on a thread of its own.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = std::thread::spawn(move || {
        rt.block_on(async {
            let _ = stopped.await;
        })
    });
    let checker = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut conn = checker
        .block_on(
            redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection(),
        )
        .unwrap();
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 80, StdDuration::from_secs(3600))];
    let (key, n) = random_key();
    let req = |key| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms: 1_800_000,
    };
    // This test's thread is outside any runtime. The engine's connection is up (another key).
    super::faults::block_on_plain(consume_once(&engine, req(random_key().0)));
    let other_key_holds = engine.leased();
    {
        let _frozen = super::faults::Frozen::new(&server);
        let Consumed::Pending(mut f) = engine.consume(req(key)) else {
            panic!("the window's first verification waits for a lease");
        };
        assert!(
            futures_util::FutureExt::now_or_never(&mut f).is_none(),
            "a frozen Redis answered"
        );
        // The call is on the wire; its caller goes away.
        std::thread::sleep(StdDuration::from_millis(200));
        drop(f);
    }
    let pattern = format!("{p}:rl:k:*:{n:016x}");
    for _ in 0..400 {
        if checker.block_on(super::faults::count_of(&mut conn, &pattern)) > 0 {
            break;
        }
        std::thread::sleep(StdDuration::from_millis(10));
    }
    // Let the recording of the dropped call's answer (if any) settle.
    std::thread::sleep(StdDuration::from_millis(200));
    let mut admitted = 0u64;
    while let Decision::Allowed { .. } =
        super::faults::block_on_plain(consume_once(&engine, req(key)))
    {
        admitted += 1;
        assert!(admitted <= 80, "admitted past the limit");
    }
    let counted = checker.block_on(super::faults::count_of(&mut conn, &pattern));
    let held = engine.leased() - other_key_holds;
    drop(engine);
    let _ = stop.send(());
    driver.join().unwrap();
    assert_eq!(
        counted,
        admitted + held,
        "units Redis counts as leased to this node that it neither admitted nor holds \
         (admitted {admitted}, held {held})"
    );
}

/// Local-first, the engine built (and its first leases fetched) in a current-thread runtime
/// that nobody is blocked on afterwards, verifications polled outside any runtime: spending
/// the lease starts a fetch ahead in a task of that runtime, which never runs it, and the
/// counter stayed marked as being fetched. Once the lease was spent, the next verification
/// waited for that fetch, on a timer of that same idle runtime, forever. It ends instead.
/// (The wait below only bounds a hang; the timeout is 50 ms.)
#[test]
fn local_first_a_fetch_ahead_on_an_idle_current_thread_runtime_is_not_waited_for_forever() {
    let Some(url) = redis_url(
        "local_first_a_fetch_ahead_on_an_idle_current_thread_runtime_is_not_waited_for_forever",
    ) else {
        return;
    };
    let (rt, engine) = current_thread_engine(&url, Some(StdDuration::from_secs(3600)));
    let key = random_key().0;
    // The host's first verification, in the runtime: the key's first lease.
    rt.block_on(consume_once(&engine, Hourly::new(80, key).req()));
    assert!(engine.leased() > 0, "no lease was fetched in the runtime");
    // Spent from the lease, then refused or unavailable (the limit fails as configured
    // without Redis): any answer, so long as there is one.
    assert!(
        verify_outside_any_runtime(&engine, Hourly::new(80, key), 20).is_some(),
        "a verification outside any runtime waited forever for a fetch that never runs"
    );
    drop(engine);
    drop(rt);
}

/// As `local_first_a_fetch_ahead_on_an_idle_current_thread_runtime_is_not_waited_for_forever`,
/// the fetch ahead started by the host's last verification in the runtime (queued there when
/// its `block_on` returned, never run since): a verification outside any runtime that waited
/// for it did so on a timer of that idle runtime, forever. It ends instead.
/// (The wait below only bounds a hang; the timeout is 50 ms.)
#[test]
fn local_first_a_fetch_left_queued_on_an_idle_current_thread_runtime_is_not_waited_for_forever() {
    let Some(url) = redis_url(
        "local_first_a_fetch_left_queued_on_an_idle_current_thread_runtime_is_not_waited_for_forever",
    ) else {
        return;
    };
    let (rt, engine) = current_thread_engine(&url, Some(StdDuration::from_secs(3600)));
    let hourly = Hourly::new(80, random_key().0);
    rt.block_on(async {
        consume_once(&engine, hourly.req()).await;
        // Spent (answered at once, never yielding) until the next lease is fetched ahead.
        let batch = engine.leased();
        while engine.leased() > batch / 2 {
            consume_once(&engine, hourly.req()).await;
        }
    });
    assert!(
        verify_outside_any_runtime(&engine, hourly, 10).is_some(),
        "a verification outside any runtime waited forever for a fetch that never runs"
    );
    drop(engine);
    drop(rt);
}

/// Local-first, inside a runtime: verifications dropped right after they started their lease
/// call, before its task first ran (a busy runtime; here a current-thread one the test does
/// not yield to), must not each start a lease call of their own: the task owns the counter's
/// "being fetched" mark from the start, so later verifications wait for it instead of leasing
/// again — the node then holds at most the documented two leases (`2 · ⌈limit / 8⌉`).
#[tokio::test]
async fn local_first_verifications_dropped_before_their_lease_task_ran_do_not_lease_again() {
    if redis_url("local_first_verifications_dropped_before_their_lease_task_ran_do_not_lease_again")
        .is_none()
    {
        return;
    }
    let rig = super::faults::local_first_rig().await;
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 80, StdDuration::from_secs(3600))];
    let (key, n) = random_key();
    let req = || UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms: 1_800_000,
    };
    for _ in 0..4 {
        let Consumed::Pending(mut f) = rig.engine.consume(req()) else {
            panic!("no lease yet: the verification waits");
        };
        // Polled once (its lease task spawned, not run yet), then its caller goes away.
        assert!(futures_util::FutureExt::now_or_never(&mut f).is_none());
        drop(f);
    }
    // Every call Redis runs is recorded by the node: wait until it holds all Redis counts.
    let mut conn = rig.conn.clone();
    let pattern = format!("{}:rl:k:*:{n:016x}", rig.prefix);
    let mut held = 0;
    for _ in 0..500 {
        tokio::time::sleep(StdDuration::from_millis(10)).await;
        let counted = super::faults::count_of(&mut conn, &pattern).await;
        held = rig.engine.leased() - rig.other_key_holds;
        if counted > 0 && counted == held {
            break;
        }
    }
    assert!(
        held <= 2 * 80u64.div_ceil(8),
        "four verifications dropped before their lease task ran left this node holding {held} of 80"
    );
}

/// An engine built outside any Tokio runtime (a host's synchronous `main` building its parts
/// before it starts its runtime): `build` panicked ("there is no reactor running"), as the
/// connection manager it made spawns a task at once, although `build` documents only an
/// unparsable URL as its failure and says it connects lazily. It builds, counts on Redis once
/// polled in a runtime (strict on a current-thread one, local-first on a multi-thread one),
/// and polled outside any runtime it is `Unavailable`, not a panic.
#[test]
fn an_engine_built_outside_any_runtime_is_not_a_panic_and_counts_in_one() {
    let Some(url) =
        redis_url("an_engine_built_outside_any_runtime_is_not_a_panic_and_counts_in_one")
    else {
        return;
    };
    for local in [None, Some(StdDuration::from_millis(20))] {
        let built = outside_any_runtime(|| {
            let b = RedisCounters::builder(&url)
                .prefix(prefix())
                .timeout(StdDuration::from_secs(2));
            match local {
                Some(sync) => b.local_first(sync),
                None => b,
            }
            .build()
        });
        let engine = match built {
            Ok(Ok(engine)) => engine,
            other => panic!("local-first {local:?}: {other:?}"),
        };
        let rt = match local {
            None => tokio::runtime::Builder::new_current_thread(),
            Some(_) => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .unwrap();
        let hourly = Hourly::new(1, random_key().0);
        rt.block_on(async {
            let first = consume_once(&engine, hourly.req()).await;
            assert!(
                matches!(
                    first,
                    Decision::Allowed {
                        degraded: false,
                        ..
                    }
                ),
                "{first:?}"
            );
            let second = consume_once(&engine, hourly.req()).await;
            assert!(matches!(second, Decision::RateLimited { .. }), "{second:?}");
        });
        // Outside any runtime, an engine that has none of its own cannot call Redis.
        let other = Hourly::new(1, random_key().0);
        let out = outside_any_runtime(|| {
            super::faults::block_on_plain(async {
                match engine.consume(other.req()) {
                    Consumed::Ready(r) => r,
                    Consumed::Pending(f) => f.await,
                }
            })
        });
        assert!(
            matches!(out, Ok(Err(api_keys::CounterError::Unavailable(_)))),
            "local-first {local:?}: {out:?}"
        );
        drop(engine);
        drop(rt);
    }
}

/// Local-first, an engine built outside any runtime (or in one) whose first verifications ran
/// in a runtime the host then dropped (a warm-up `block_on`), the host's verifications in
/// another runtime afterwards: the calls recover (the connection reconnects in the new
/// runtime), but the background task had been spawned on the dropped runtime, died with it,
/// and was never started again — leases unused for a second were never handed back to other
/// nodes, ended windows never forgotten (this node's map grew with every window) and lost
/// lease calls' grants were handed back only by lease calls. It starts again in the runtime
/// of the next verification.
#[test]
fn local_first_background_task_restarts_after_its_runtime_was_dropped() {
    let Some(url) = redis_url("local_first_background_task_restarts_after_its_runtime_was_dropped")
    else {
        return;
    };
    let built = outside_any_runtime(|| {
        RedisCounters::builder(&url)
            .prefix(prefix())
            .timeout(StdDuration::from_secs(2))
            .local_first(StdDuration::from_millis(20))
            .build()
    });
    let engine = match built {
        Ok(Ok(engine)) => engine,
        other => panic!("{other:?}"),
    };
    let warm_up = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    warm_up.block_on(consume_once(&engine, Hourly::new(80, random_key().0).req()));
    drop(warm_up);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hourly = Hourly::new(80, random_key().0);
    rt.block_on(async {
        // The first call after the warm-up may meet the connection of the dropped runtime.
        let mut admitted = false;
        for _ in 0..10 {
            let d = match engine.consume(hourly.req()) {
                Consumed::Ready(r) => r,
                Consumed::Pending(f) => f.await,
            };
            if matches!(
                d,
                Ok(Decision::Allowed {
                    degraded: false,
                    ..
                })
            ) {
                admitted = true;
                break;
            }
        }
        assert!(admitted, "the engine never counted on Redis again");
        assert!(engine.leased() > 0, "no lease was fetched");
        // Unused for `sync_every` (20 ms) and half its window (at most 1 s), the lease goes
        // back by the background task (the wait only bounds a task that never runs).
        for _ in 0..500 {
            if engine.leased() == 0 {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        }
        assert_eq!(
            engine.leased(),
            0,
            "an unused lease was never handed back: the background task is gone"
        );
    });
    drop(engine);
    drop(rt);
}
