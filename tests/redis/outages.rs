//! Redis down, frozen or edited by hand: failing open or closed, the breaker, and probes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_limits_fail_open_or_closed_and_the_breaker_opens_and_closes() {
    if redis_url("while_redis_is_down_limits_fail_open_or_closed_and_the_breaker_opens_and_closes")
        .is_none()
    {
        return;
    }
    let dir = temp_dir();
    let port = free_port();
    let server = PrivateRedis::start(dir.clone(), port);
    let open_for = StdDuration::from_millis(300);
    let engine = RedisCounters::builder(server.url())
        .timeout(StdDuration::from_secs(1))
        .breaker(2, open_for)
        .fail_open(["soft"])
        .build()
        .unwrap();
    let (m, audit) = manager(MemoryStore::new(), engine.clone());
    let hour = StdDuration::from_secs(3600);
    let (soft, _) = m
        .generate(
            &alice(),
            req("soft").rate_limit(RateLimit::new("soft", 100, hour)),
        )
        .await
        .unwrap();
    let (hard, _) = m
        .generate(
            &alice(),
            req("hard").rate_limit(RateLimit::new("hard", 100, hour)),
        )
        .await
        .unwrap();
    let (paid, _) = m
        .generate(&alice(), req("paid").credits(Credits::new(10)))
        .await
        .unwrap();
    let (mixed, _) = m
        .generate(
            &alice(),
            req("mixed")
                .rate_limit(RateLimit::new("soft", 100, hour))
                .rate_limit(RateLimit::new("hard", 100, hour)),
        )
        .await
        .unwrap();
    let verify = |t: &str| {
        let m = m.clone();
        let t = t.to_string();
        async move { m.verify(&t, &Scope::Prometheus).await }
    };
    for k in [&soft, &hard, &paid, &mixed] {
        verify(k.expose_secret()).await.unwrap();
    }
    assert_eq!(
        verify(paid.expose_secret())
            .await
            .unwrap()
            .credits_remaining(),
        Some(8)
    );

    server.stop();
    // Fail closed: the hard limit, the credits, and a key with one hard limit among others.
    for k in [&hard, &paid, &mixed] {
        let r = verify(k.expose_secret()).await;
        assert!(matches!(r, Err(Error::LimitsUnavailable(_))), "{r:?}");
    }
    assert!(engine.stats().open, "the breaker opens after 2 failures");
    // Fail open: admitted, and the host is told.
    let v = verify(soft.expose_secret()).await.unwrap();
    assert_eq!(v.limits().next().unwrap().remaining, 100);
    assert!(
        audit
            .events()
            .iter()
            .any(|e| e.action == AuditAction::LimitsFailedOpen && e.key_id == Some(*soft.id()))
    );
    // While open, no call goes out: refusals come from the breaker.
    let before = engine.stats();
    for _ in 0..5 {
        assert!(verify(hard.expose_secret()).await.is_err());
    }
    let after = engine.stats();
    assert_eq!(
        after.calls, before.calls,
        "no call while the breaker is open"
    );
    assert_eq!(after.short_circuited, before.short_circuited + 5);

    // Redis comes back (same port, same append-only file): after `open_for`, one probe
    // closes the breaker, and the balance spent before the outage is still spent.
    let _server = PrivateRedis::start(dir.clone(), port);
    tokio::time::sleep(open_for + StdDuration::from_millis(50)).await;
    let mut recovered = None;
    for _ in 0..40 {
        match verify(paid.expose_secret()).await {
            Ok(v) => {
                recovered = Some(v);
                break;
            }
            Err(Error::LimitsUnavailable(_)) => {
                tokio::time::sleep(open_for).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let v = recovered.expect("the breaker closes once Redis answers again");
    assert_eq!(
        v.credits_remaining(),
        Some(7),
        "credits survived the restart"
    );
    assert!(!engine.stats().open);
    verify(hard.expose_secret()).await.unwrap();
    drop(_server);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Redis URL can carry a password: the builder's `Debug` never shows the URL.
#[test]
fn the_builder_never_shows_its_url() {
    let b = api_keys::RedisCounters::builder("redis://:hunter2-secret@cache.internal:6379/0");
    let shown = format!("{b:?}");
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    assert!(!shown.contains("cache.internal"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_dropped_before_its_answer_lets_the_next_call_probe() {
    let open_for = StdDuration::from_millis(50);
    let engine = RedisCounters::builder(frozen_redis())
        .timeout(StdDuration::from_millis(300))
        .breaker(1, open_for)
        .build()
        .unwrap();
    let (m, _) = manager(MemoryStore::new(), engine.clone());
    let (key, _) = m
        .generate(
            &alice(),
            req("k").rate_limit(RateLimit::new("hard", 100, StdDuration::from_secs(3600))),
        )
        .await
        .unwrap();
    let verify = || m.verify(key.expose_secret(), &Scope::Prometheus);
    // The first call times out: the breaker opens.
    assert!(matches!(verify().await, Err(Error::LimitsUnavailable(_))));
    assert!(engine.stats().open);
    // Its time up, the next verification is the probe, and its caller gives up before the
    // answer (a client gone, the host's own deadline).
    tokio::time::sleep(open_for + StdDuration::from_millis(20)).await;
    let before = engine.stats();
    assert!(
        tokio::time::timeout(StdDuration::from_millis(40), verify())
            .await
            .is_err()
    );
    assert_eq!(engine.stats().calls, before.calls + 1, "it was the probe");
    // A later verification may probe again instead of being cut off for good.
    let before = engine.stats();
    assert!(matches!(verify().await, Err(Error::LimitsUnavailable(_))));
    let after = engine.stats();
    assert_eq!(
        (after.calls, after.short_circuited),
        (before.calls + 1, before.short_circuited),
        "the dropped probe kept the breaker shut to every later call"
    );
}

/// Redis answering an error about one key's own data (a counter edited by hand into text, or
/// into another type) is not Redis failing: that key cannot be decided (it fails as
/// configured), but the breaker stays closed and every other key is decided as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_edited_by_hand_fails_its_own_key_and_never_opens_the_breaker() {
    let Some(url) =
        redis_url("a_counter_edited_by_hand_fails_its_own_key_and_never_opens_the_breaker")
    else {
        return;
    };
    let p = prefix();
    let (engine, mut conn) = strict_with_connection(&url, &p).await;
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 5, StdDuration::from_secs(3600))];
    let decide = |key| {
        let (engine, org, limits) = (engine.clone(), org.clone(), limits.clone());
        async move {
            let req = UsageRequest {
                key,
                org: &org,
                limits: &limits,
                credits: None,
                cost: 1,
                now_ms: 1_800_000,
            };
            match engine.consume(req) {
                Consumed::Ready(r) => r,
                Consumed::Pending(f) => f.await,
            }
        }
    };
    let (text, other_type, healthy) = (random_key(), random_key(), random_key().0);
    // Each key's counter is started, then edited by hand: into text, and into a hash.
    for ((key, n), edit) in [(text, "SET"), (other_type, "HSET")] {
        decide(key).await.expect("a healthy Redis decides a key");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{p}:rl:k:*:{n:016x}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let counter = keys.pop().unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&counter)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut cmd = redis::cmd(edit);
        cmd.arg(&counter);
        if edit == "HSET" {
            cmd.arg("f");
        }
        let _: redis::Value = cmd.arg("oops").query_async(&mut conn).await.unwrap();
        for _ in 0..3 {
            let r = decide(key).await;
            assert!(r.is_err(), "{edit}: {r:?}");
        }
    }
    assert!(!engine.stats().open, "a healthy Redis opened the breaker");
    let r = decide(healthy).await;
    assert!(
        matches!(r, Ok(Decision::Allowed { .. })),
        "an unrelated key: {r:?}"
    );
}
