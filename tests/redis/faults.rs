//! Redis frozen, its scripts flushed, its balances edited by hand: what the engines answer.

use super::*;

/// Freezes a private Redis (SIGSTOP) until dropped (SIGCONT), so that a failing test never
/// leaves it stopped.
pub(crate) struct Frozen<'a>(&'a PrivateRedis);

impl<'a> Frozen<'a> {
    pub(crate) fn new(server: &'a PrivateRedis) -> Self {
        let pid = server.pid().unwrap();
        assert!(
            Command::new("kill")
                .args(["-STOP", &pid])
                .status()
                .unwrap()
                .success()
        );
        Frozen(server)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.0.pid() {
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
        }
    }
}

/// A Redis key's integer value (0 when absent).
pub(crate) async fn count_of(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> u64 {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap();
    let mut sum = 0;
    for k in keys {
        let v: u64 = redis::cmd("GET").arg(&k).query_async(conn).await.unwrap();
        sum += v;
    }
    sum
}

/// A private Redis and a local-first engine over it, its connection up and its scripts loaded
/// (a verification of another key of `acme` under "hour", 80 per hour, whose lease
/// `other_key_holds` counts), and a connection of the test's own.
pub(crate) struct Rig {
    server: PrivateRedis,
    pub(crate) engine: RedisCounters,
    pub(crate) conn: redis::aio::MultiplexedConnection,
    pub(crate) prefix: String,
    pub(crate) other_key_holds: u64,
}

pub(crate) async fn local_first_rig() -> Rig {
    let server = PrivateRedis::start(temp_dir(), free_port());
    let url = server.url();
    let prefix = prefix();
    let engine = RedisCounters::builder(&url)
        .prefix(&prefix)
        .timeout(StdDuration::from_secs(5))
        .local_first(StdDuration::from_secs(3600))
        .build()
        .unwrap();
    let conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 80, StdDuration::from_secs(3600))];
    consume_once(
        &engine,
        UsageRequest {
            key: random_key().0,
            org: &org,
            limits: &limits,
            credits: None,
            cost: 1,
            now_ms: 1_800_000,
        },
    )
    .await;
    let other_key_holds = engine.leased();
    Rig {
        server,
        engine,
        conn,
        prefix,
        other_key_holds,
    }
}

/// While Redis is frozen, starts `times` verifications of `req` one after another, each
/// dropped once its lease call is on the wire, as callers that go away do.
async fn drop_during_their_calls<'a>(
    rig: &'a Rig,
    req: impl Fn() -> UsageRequest<'a>,
    times: usize,
) {
    let _frozen = Frozen::new(&rig.server);
    for _ in 0..times {
        let Consumed::Pending(mut f) = rig.engine.consume(req()) else {
            panic!("no lease yet: the verification waits");
        };
        assert!(
            futures_util::FutureExt::now_or_never(&mut f).is_none(),
            "a frozen Redis answered"
        );
        // The call is on the wire; its caller goes away.
        tokio::time::sleep(StdDuration::from_millis(200)).await;
        drop(f);
    }
}

/// Local-first: a verification whose caller goes away while its lease call is in flight (a
/// client that disconnects: the host drops the verification's future) must not lose the
/// units Redis grants for it. Redis counts them as leased to this node; if the node does not
/// hold them, nobody can admit them in that window — under-admission past the documented
/// bound (at most two leases per node), one lease lost per dropped verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_keeps_the_lease_of_a_verification_dropped_during_its_call() {
    if redis_url("local_first_keeps_the_lease_of_a_verification_dropped_during_its_call").is_none()
    {
        return;
    }
    let rig = local_first_rig().await;
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
    drop_during_their_calls(&rig, req, 1).await;
    let (engine, p, other_key_holds) = (&rig.engine, &rig.prefix, rig.other_key_holds);
    let mut conn = rig.conn.clone();
    // Redis runs the queued call once thawed; a PING behind it on another connection shows
    // nothing about ordering, so wait until the counter exists.
    let pattern = format!("{p}:rl:k:*:{n:016x}");
    for _ in 0..400 {
        if count_of(&mut conn, &pattern).await > 0 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    // Let the background fetch the dropped call started (if any) settle.
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let mut admitted = 0u64;
    loop {
        match consume_once(engine, req()).await {
            Decision::Allowed { .. } => admitted += 1,
            _ => break,
        }
        assert!(admitted <= 80, "admitted past the limit");
    }
    let counted = count_of(&mut conn, &pattern).await;
    let held = engine.leased() - other_key_holds;
    assert_eq!(
        counted,
        admitted + held,
        "units Redis counts as leased to this node that it neither admitted nor holds \
         (admitted {admitted}, held {held})"
    );
}

/// Local-first, a fail-open limit, Redis going down mid-window: what the node admits on its
/// own count comes on top of what it admitted through Redis in that window. Documented: at
/// most `nodes × limit` while Redis is down (one node: the limit), `(nodes + 1) × limit` only
/// in the window in which Redis comes back. Counting alone from zero, one node admitted the
/// limit again in the window in which Redis went down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_failing_open_mid_window_admits_at_most_the_limit_on_one_node() {
    if redis_url("local_first_failing_open_mid_window_admits_at_most_the_limit_on_one_node")
        .is_none()
    {
        return;
    }
    let server = PrivateRedis::start(temp_dir(), free_port());
    let engine = RedisCounters::builder(server.url())
        .prefix(prefix())
        .timeout(StdDuration::from_millis(500))
        .local_first(StdDuration::from_secs(3600))
        .fail_open(["hour"])
        .build()
        .unwrap();
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 16, StdDuration::from_secs(3600))];
    let key = random_key().0;
    let req = || UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms: 1_800_000,
    };
    let mut admitted = 0;
    for _ in 0..12 {
        assert!(matches!(
            consume_once(&engine, req()).await,
            Decision::Allowed {
                degraded: false,
                ..
            }
        ));
        admitted += 1;
    }
    server.stop();
    for _ in 0..40 {
        let d = tokio::time::timeout(StdDuration::from_secs(10), consume_once(&engine, req()))
            .await
            .expect("a verification hung without Redis");
        match d {
            Decision::Allowed { .. } => admitted += 1,
            _ => break,
        }
    }
    assert!(
        admitted <= 16,
        "one node admitted {admitted} in one window of a limit of 16"
    );
}

/// Local-first, a cost one past the largest limit (`MAX_UNITS + 1`, which a Lua double rounds
/// down to `MAX_UNITS`): refused, and it must not lease the whole window's budget to this
/// node on the way (a node holds at most two leases, `2 · ⌈limit / 8⌉`; the budget it sits on
/// is refused on every other node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_a_cost_past_the_largest_limit_leases_no_more_than_a_lease() {
    let Some(url) =
        redis_url("local_first_a_cost_past_the_largest_limit_leases_no_more_than_a_lease")
    else {
        return;
    };
    let engine = local_first(&url, &prefix(), StdDuration::from_secs(3600));
    let org = api_keys::OrgId::new("acme");
    let max = api_keys::MAX_UNITS;
    let limits = [RateLimit::new("hour", max, StdDuration::from_secs(3600))];
    let d = consume_once(
        &engine,
        UsageRequest {
            key: random_key().0,
            org: &org,
            limits: &limits,
            credits: None,
            cost: max + 1,
            now_ms: 1_800_000,
        },
    )
    .await;
    assert!(matches!(d, Decision::RateLimited { .. }), "{d:?}");
    assert!(
        engine.leased() <= 2 * max.div_ceil(8),
        "one refused request left this node holding {} of {max}",
        engine.leased()
    );
}

/// Local-first: verifications dropped one after another while their lease call is in flight
/// (clients that give up on a slow Redis) must not each start a lease call of their own: the
/// first call still runs, and every grant is recorded for the node, which then holds a lease
/// per dropped verification — past the documented two leases per node (`2 · ⌈limit / 8⌉`),
/// all of it under-admission if the window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_verifications_dropped_during_a_call_do_not_lease_again_and_again() {
    if redis_url("local_first_verifications_dropped_during_a_call_do_not_lease_again_and_again")
        .is_none()
    {
        return;
    }
    let rig = local_first_rig().await;
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
    drop_during_their_calls(&rig, req, 4).await;
    let (engine, p, other_key_holds) = (&rig.engine, &rig.prefix, rig.other_key_holds);
    let mut conn = rig.conn.clone();
    // Every call Redis runs once thawed is recorded by the node: wait until the node holds
    // all that Redis counts (nothing was admitted).
    let pattern = format!("{p}:rl:k:*:{n:016x}");
    let mut held = 0;
    for _ in 0..500 {
        let counted = count_of(&mut conn, &pattern).await;
        held = engine.leased() - other_key_holds;
        if counted > 0 && counted == held {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert!(
        held <= 2 * 80u64.div_ceil(8),
        "four dropped verifications left this node holding {held} of 80"
    );
}

/// Local-first: a costly verification (50 of a limit of 80) dropped while its lease call is
/// in flight: Redis grants what it asked for, sized for its cost, and nobody is left to spend
/// it at once. The node must keep no more than a lease of it (documented: at most two leases
/// per node, `2 · ⌈limit / 8⌉`, unspent when the window ends); it held all 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_a_costly_verification_dropped_during_its_call_leaves_a_lease_at_most() {
    if redis_url("local_first_a_costly_verification_dropped_during_its_call_leaves_a_lease_at_most")
        .is_none()
    {
        return;
    }
    let rig = local_first_rig().await;
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 80, StdDuration::from_secs(3600))];
    let (key, n) = random_key();
    let req = |cost| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost,
        now_ms: 1_800_000,
    };
    drop_during_their_calls(&rig, || req(50), 1).await;
    let (engine, p, other_key_holds) = (&rig.engine, &rig.prefix, rig.other_key_holds);
    let mut conn = rig.conn.clone();
    let pattern = format!("{p}:rl:k:*:{n:016x}");
    let mut recorded = false;
    for _ in 0..500 {
        if count_of(&mut conn, &pattern).await > 0 && engine.leased() > other_key_holds {
            recorded = true;
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert!(
        recorded,
        "the dropped verification's grant was never recorded"
    );
    let held = engine.leased() - other_key_holds;
    assert!(
        held <= 2 * 80u64.div_ceil(8),
        "a dropped verification left this node holding {held} of 80"
    );
    // What it does not keep goes back with the node's next lease call: a smaller request is
    // admitted, and then the rest of the window's budget still is, in all exactly the limit.
    let mut admitted = 0u64;
    while let Decision::Allowed { .. } = consume_once(engine, req(1)).await {
        admitted += 1;
        assert!(admitted <= 80, "admitted past the limit");
    }
    assert_eq!(admitted + engine.leased() - other_key_holds, 80);
}

/// Polls a future to its end on this thread, with no runtime of any kind.
pub(crate) fn block_on_plain<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Local-first, a verification polled outside any Tokio runtime (a host's own executor, a
/// thread of its own; the engine built in a runtime that still runs): the lease call has a
/// fallback for this (no task of its own: the call runs in the verification), which
/// panicked ("there is no reactor running") in the call's timeout instead of asking Redis.
#[test]
fn local_first_a_verification_outside_a_tokio_runtime_leases_from_redis() {
    let Some(url) =
        redis_url("local_first_a_verification_outside_a_tokio_runtime_leases_from_redis")
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let engine = {
        let _in = rt.enter();
        local_first(&url, &prefix(), StdDuration::from_secs(3600))
    };
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 80, StdDuration::from_secs(3600))];
    let req = |key| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms: 1_800_000,
    };
    // The engine's connection is up, in its runtime.
    rt.block_on(consume_once(&engine, req(random_key().0)));
    let key = random_key().0;
    let d = std::thread::scope(|s| {
        // The second waits for the first's lease call.
        s.spawn(|| {
            block_on_plain(futures_util::future::join(
                consume_once(&engine, req(key)),
                consume_once(&engine, req(key)),
            ))
        })
        .join()
        .map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        })
    });
    match d {
        Ok(ds) => {
            for d in [ds.0, ds.1] {
                assert!(
                    matches!(
                        d,
                        Decision::Allowed {
                            degraded: false,
                            ..
                        }
                    ),
                    "{d:?}"
                );
            }
        }
        Err(p) => panic!("the verification panicked outside a runtime: {p:?}"),
    }
}

/// Strict, a verification polled outside any Tokio runtime (a host's own executor; the engine
/// built in a runtime that still runs): its one call's timeout, and the connection under it,
/// needed a runtime of the calling thread, so it panicked ("there is no reactor running")
/// where local-first asks Redis from the engine's own runtime. So did `credits`.
#[test]
fn strict_a_verification_outside_a_tokio_runtime_asks_redis() {
    let Some(url) = redis_url("strict_a_verification_outside_a_tokio_runtime_asks_redis") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (engine, _conn) = rt.block_on(strict_with_connection(&url, &prefix()));
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 2, StdDuration::from_secs(3600))];
    let credits = api_keys::Credits::new(5);
    let key = random_key().0;
    let req = || UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: Some(&credits),
        cost: 1,
        now_ms: 1_800_000,
    };
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            block_on_plain(async {
                let mut ds = Vec::new();
                for _ in 0..3 {
                    ds.push(consume_once(&engine, req()).await);
                }
                let left = engine.credits(key, Some(&credits), 1_800_000).await;
                (ds, left)
            })
        })
        .join()
        .map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        })
    });
    let (ds, left) = match outcome {
        Ok(v) => v,
        Err(p) => panic!("the verification panicked outside a runtime: {p:?}"),
    };
    // Decided by Redis, not degraded: two admitted, the third refused by the limit.
    for d in &ds[..2] {
        assert!(
            matches!(
                d,
                Decision::Allowed {
                    degraded: false,
                    ..
                }
            ),
            "{d:?}"
        );
    }
    assert!(matches!(ds[2], Decision::RateLimited { .. }), "{:?}", ds[2]);
    assert_eq!(left.unwrap(), Some(3));
}
