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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async {
        RedisCounters::builder(&url)
            .prefix(prefix())
            .timeout(StdDuration::from_millis(50))
            .build()
            .unwrap()
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let caller = std::thread::spawn(move || {
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
        let d = super::faults::block_on_plain(async {
            match engine.consume(req) {
                Consumed::Ready(r) => r,
                Consumed::Pending(f) => f.await,
            }
        });
        let _ = tx.send(d);
    });
    let d = rx.recv_timeout(StdDuration::from_secs(60));
    assert!(
        matches!(d, Ok(Err(api_keys::CounterError::Unavailable(_)))),
        "{d:?}"
    );
    caller.join().unwrap();
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async {
        RedisCounters::builder(&url)
            .prefix(prefix())
            .timeout(StdDuration::from_millis(50))
            .local_first(StdDuration::from_secs(1))
            .build()
            .unwrap()
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let caller = std::thread::spawn(move || {
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
        let d = super::faults::block_on_plain(async {
            match engine.consume(req) {
                Consumed::Ready(r) => r,
                Consumed::Pending(f) => f.await,
            }
        });
        let _ = tx.send(format!("{d:?}"));
    });
    let d = rx.recv_timeout(StdDuration::from_secs(60));
    assert!(d.is_ok(), "a verification outside any runtime never ended");
    caller.join().unwrap();
    drop(rt);
}
