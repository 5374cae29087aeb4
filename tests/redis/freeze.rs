//! A Redis frozen (`SIGSTOP`) and thawed (`SIGCONT`): calls that timed out run when it thaws.

use super::*;

/// Sends `signal` (`-STOP`, `-CONT`) to the private server.
fn signal(server: &PrivateRedis, signal: &str) {
    let pid = server.pid().expect("the private redis-server's pid");
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Local-first, one node, 800 an hour: Redis freezes, the node's lease calls time out (the
/// limit fails closed meanwhile), and Redis runs them when it thaws, granting leases nobody
/// holds. The node must still be able to admit what the window has left, less the documented
/// under-admission (two leases, `2 · ⌈800 / 8⌉`). It admitted 259 of 800: a two-second
/// freeze refused the key for the rest of the hour, as the ten lost grants (an eighth of
/// what was left each) stayed counted as leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_lease_calls_that_timed_out_do_not_take_the_windows_budget() {
    if redis_url("local_first_lease_calls_that_timed_out_do_not_take_the_windows_budget").is_none()
    {
        return;
    }
    let dir = temp_dir();
    let server = PrivateRedis::start(dir.clone(), free_port());
    let engine = RedisCounters::builder(server.url())
        .prefix(prefix())
        .timeout(StdDuration::from_millis(200))
        .breaker(1000, StdDuration::from_millis(1))
        .local_first(StdDuration::from_secs(3600))
        .build()
        .unwrap();
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 800, StdDuration::from_secs(3600))];
    let key = random_key().0;
    let req = || UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms: 1_800_000,
    };
    let consume = || async {
        match engine.consume(req()) {
            Consumed::Ready(r) => r,
            Consumed::Pending(f) => f.await,
        }
    };
    let mut admitted = 0u64;
    assert!(matches!(
        consume().await,
        Ok(Decision::Allowed {
            degraded: false,
            ..
        })
    ));
    admitted += 1;

    signal(&server, "-STOP");
    let mut timed_out = 0;
    while timed_out < 10 {
        match consume().await {
            Ok(Decision::Allowed {
                degraded: false, ..
            }) => admitted += 1,
            Err(api_keys::CounterError::Unavailable(_)) => timed_out += 1,
            other => panic!("while Redis is frozen: {other:?}"),
        }
    }
    signal(&server, "-CONT");

    // Redis answers again: the node admits until the window's budget is spent.
    let mut unavailable = 0;
    loop {
        match consume().await {
            Ok(Decision::Allowed {
                degraded: false, ..
            }) => admitted += 1,
            Ok(Decision::RateLimited { .. }) => break,
            Err(api_keys::CounterError::Unavailable(_)) if unavailable < 100 => {
                unavailable += 1;
                tokio::time::sleep(StdDuration::from_millis(20)).await;
            }
            other => panic!("after Redis thawed: {other:?}"),
        }
    }
    assert!(
        admitted >= 800 - 2 * 100,
        "after a freeze in which {timed_out} verifications' lease calls timed out, the node \
         admitted {admitted} of 800 in the window"
    );
    drop(engine);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Local-first: a lease call lost to a freeze ran when Redis thawed, and before the node
/// handed its grant back, its counter was edited by hand into a number that is not an
/// integer ("7.5"). Handing back failed on it (`DECRBY` refuses a non-integer), the lost call
/// stayed on the list, and every later lease call of the node — any key's, as each first
/// hands back the lost calls — failed with it, until the lost call aged out (a window and
/// more). One bad key must not fail every other key (as a key of another type does not): the
/// other key is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_a_lost_calls_counter_edited_by_hand_does_not_fail_every_lease_call() {
    if redis_url("local_first_a_lost_calls_counter_edited_by_hand_does_not_fail_every_lease_call")
        .is_none()
    {
        return;
    }
    let dir = temp_dir();
    let server = PrivateRedis::start(dir.clone(), free_port());
    let p = prefix();
    let engine = RedisCounters::builder(server.url())
        .prefix(&p)
        .timeout(StdDuration::from_millis(200))
        .breaker(1000, StdDuration::from_millis(1))
        .local_first(StdDuration::from_secs(3600))
        .build()
        .unwrap();
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 800, StdDuration::from_secs(3600))];
    let req = |key| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms: 1_800_000,
    };
    let consume = |key| {
        let engine = &engine;
        let req = &req;
        async move {
            match engine.consume(req(key)) {
                Consumed::Ready(r) => r,
                Consumed::Pending(f) => f.await,
            }
        }
    };
    // The connection up and the scripts loaded (another key).
    assert!(matches!(
        consume(random_key().0).await,
        Ok(Decision::Allowed { .. })
    ));
    let (lost_key, n) = random_key();
    signal(&server, "-STOP");
    assert!(
        matches!(
            consume(lost_key).await,
            Err(api_keys::CounterError::Unavailable(_))
        ),
        "a frozen Redis answered"
    );
    signal(&server, "-CONT");
    // Redis runs the lost call once thawed: its grant is recorded.
    let grants = format!("{p}:lg:k:*:{n:016x}");
    let mut recorded = Vec::new();
    for _ in 0..500 {
        recorded = redis::cmd("KEYS")
            .arg(&grants)
            .query_async::<Vec<String>>(&mut conn)
            .await
            .unwrap();
        if !recorded.is_empty() {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    assert_eq!(recorded.len(), 1, "the lost call never ran");
    let counters: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}:rl:k:*:{n:016x}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&counters[0])
        .arg("7.5")
        .arg("KEEPTTL")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Another key: its lease call hands back the lost call first.
    let other = random_key().0;
    for _ in 0..3 {
        let d = consume(other).await;
        assert!(
            matches!(
                d,
                Ok(Decision::Allowed {
                    degraded: false,
                    ..
                })
            ),
            "another key, after a lost call's counter was edited by hand: {d:?}"
        );
    }
    drop(engine);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
