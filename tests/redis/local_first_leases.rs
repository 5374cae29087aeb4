//! The local-first engine: leases, hand-backs, changed limits, clock steps and wakeups.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_admits_from_leases_mostly_without_redis_and_never_over_the_limit() {
    let Some(url) =
        redis_url("local_first_admits_from_leases_mostly_without_redis_and_never_over_the_limit")
    else {
        return;
    };
    let p = prefix();
    let store = MemoryStore::new();
    // The background task's interval is an hour: only leases and prefetches talk to Redis.
    let hour = StdDuration::from_secs(3600);
    let (ea, eb) = (local_first(&url, &p, hour), local_first(&url, &p, hour));
    let (a, _) = manager(store.clone(), ea.clone());
    let (b, _) = manager(store.clone(), eb.clone());
    let (key, _) = a
        .generate(
            &alice(),
            req("lf").rate_limit(RateLimit::new("hour", 100, hour)),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    // One node alone: all 100 units, then refusals decided locally.
    let mut admitted = 0;
    for _ in 0..100 {
        admitted += usize::from(a.verify(t, &Scope::Prometheus).await.is_ok());
    }
    assert_eq!(admitted, 100);
    let r = a.verify(t, &Scope::Prometheus).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");
    let s = ea.stats();
    // A verification waits only when it finds no lease: at most once per lease (batches of
    // an eighth of what is left: about 25 leases for 100 units), so most are local.
    assert!(s.decided_locally >= 60, "{s:?}");
    // One client in sequence waits at most once per lease call.
    assert!(s.waited_for_redis <= s.calls, "{s:?}");
    assert_eq!(s.decided_locally + s.waited_for_redis, 101, "{s:?}");
    assert!(s.calls <= 40, "one lease call per batch: {s:?}");
    // The other node shares the same count: nothing left for it either.
    let r = b.verify(t, &Scope::Prometheus).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");

    // Two nodes taking turns on a fresh key: together exactly the limit, never more.
    let (key, _) = a
        .generate(
            &alice(),
            req("lf2").rate_limit(RateLimit::new("hour", 10, hour)),
        )
        .await
        .unwrap();
    let t2 = key.expose_secret();
    let mut admitted = 0;
    for _ in 0..200 {
        for m in [&a, &b] {
            admitted += usize::from(m.verify(t2, &Scope::Prometheus).await.is_ok());
        }
        // A lease fetched in the background after a node's last turn may still be held:
        // keep taking turns until it is spent.
        if admitted == 10 && ea.leased() + eb.leased() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(admitted, 10);
    for m in [&a, &b] {
        assert!(m.verify(t2, &Scope::Prometheus).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_hands_idle_leases_back_for_other_nodes() {
    let Some(url) = redis_url("local_first_hands_idle_leases_back_for_other_nodes") else {
        return;
    };
    let p = prefix();
    let store = MemoryStore::new();
    let hour = StdDuration::from_secs(3600);
    // A lease idle for 20 ms and for half the window (at most a second) goes back; B asks
    // Redis again 20 ms after it found nothing left.
    let every = StdDuration::from_millis(20);
    let (ea, eb) = (local_first(&url, &p, every), local_first(&url, &p, every));
    let (a, _) = manager(store.clone(), ea.clone());
    let (b, _) = manager(store.clone(), eb.clone());
    let (key, _) = a
        .generate(
            &alice(),
            req("idle").rate_limit(RateLimit::new("hour", 10, hour)),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    a.verify(t, &Scope::Prometheus).await.unwrap();
    // A holds the rest of its lease (and perhaps a prefetched one) until it idles.
    for _ in 0..2000 {
        if ea.leased() == 0 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    assert_eq!(ea.leased(), 0, "an idle lease is handed back");
    // B can spend everything A did not: 9 in all (asking again after each refusal's mark
    // ages, as the background task would).
    let mut admitted = 0;
    for _ in 0..500 {
        admitted += usize::from(b.verify(t, &Scope::Prometheus).await.is_ok());
        if admitted == 9 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(1)).await;
    }
    assert_eq!(admitted, 9);
    assert!(b.verify(t, &Scope::Prometheus).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_without_redis_fails_closed_or_counts_alone_as_configured() {
    // No Redis at all (nothing listens on port 1): runs everywhere, needs no server.
    let engine = RedisCounters::builder("redis://127.0.0.1:1/")
        .prefix(prefix())
        .timeout(StdDuration::from_millis(200))
        .local_first(StdDuration::from_secs(3600))
        .fail_open(["soft"])
        .build()
        .unwrap();
    let (m, audit) = manager(MemoryStore::new(), engine.clone());
    let hour = StdDuration::from_secs(3600);
    let (soft, _) = m
        .generate(
            &alice(),
            req("soft").rate_limit(RateLimit::new("soft", 3, hour)),
        )
        .await
        .unwrap();
    let (hard, _) = m
        .generate(
            &alice(),
            req("hard").rate_limit(RateLimit::new("hard", 3, hour)),
        )
        .await
        .unwrap();
    let r = m.verify(hard.expose_secret(), &Scope::Prometheus).await;
    assert!(matches!(r, Err(Error::LimitsUnavailable(_))), "{r:?}");
    // Fail open: this node enforces the limit on its own count, and the host is told.
    for _ in 0..3 {
        m.verify(soft.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    let r = m.verify(soft.expose_secret(), &Scope::Prometheus).await;
    assert!(matches!(r, Err(Error::RateLimited { .. })), "{r:?}");
    assert!(
        audit
            .events()
            .iter()
            .any(|e| e.action == AuditAction::LimitsFailedOpen && e.key_id == Some(*soft.id()))
    );
    let s = engine.stats();
    assert!(s.open || s.short_circuited > 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_keeps_deciding_after_a_waiting_verification_is_dropped() {
    let Some(url) = redis_url("local_first_keeps_deciding_after_a_waiting_verification_is_dropped")
    else {
        return;
    };
    let engine = RedisCounters::builder(&url)
        .prefix(prefix())
        .timeout(StdDuration::from_millis(500))
        .local_first(StdDuration::from_secs(3600))
        .build()
        .unwrap();
    let (m, _) = manager(MemoryStore::new(), engine.clone());
    let hour = StdDuration::from_secs(3600);
    let (key, _) = m
        .generate(
            &alice(),
            req("k").rate_limit(RateLimit::new("hour", 100, hour).per_org()),
        )
        .await
        .unwrap();
    let verify = || m.verify(key.expose_secret(), &Scope::Prometheus);
    // The window's first verification waits for a lease; its caller goes away during the
    // call (polled once, then dropped). Polled by hand: a zero timeout polls it again when
    // woken, and a Redis that answers within the timer's millisecond finished it.
    assert!(
        futures_util::FutureExt::now_or_never(verify()).is_none(),
        "the first verification of the window waits for Redis"
    );
    assert_eq!(engine.stats().waited_for_redis, 1);
    // The next ones fetch a lease and are admitted, instead of waiting for the dropped call.
    for _ in 0..3 {
        let v = verify().await;
        assert!(v.is_ok(), "a healthy Redis answered {v:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_follows_a_changed_limit_within_its_window() {
    let Some(url) = redis_url("local_first_follows_a_changed_limit_within_its_window") else {
        return;
    };
    let hour = StdDuration::from_secs(3600);
    let engine = local_first(&url, &prefix(), hour);
    let (m, _) = manager(MemoryStore::new(), engine);
    let (key, info) = m
        .generate(
            &alice(),
            req("k").rate_limit(RateLimit::new("hour", 100, hour)),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    let admitted = |n: usize| {
        let m = m.clone();
        let t = t.to_string();
        async move {
            let mut ok = 0;
            for _ in 0..n {
                ok += usize::from(m.verify(&t, &Scope::Prometheus).await.is_ok());
            }
            ok
        }
    };
    // A lease of the 100 is held after the first verification.
    assert_eq!(admitted(1).await, 1);
    // Lowered to 3 in this window: 2 more, whatever this node still holds.
    m.set_limits(&alice(), &info.id, vec![RateLimit::new("hour", 3, hour)])
        .await
        .unwrap();
    assert_eq!(admitted(10).await, 2, "the lowered limit holds");
    // Raised to 6: this node asks again instead of refusing on its remembered answer.
    m.set_limits(&alice(), &info.id, vec![RateLimit::new("hour", 6, hour)])
        .await
        .unwrap();
    assert_eq!(admitted(10).await, 3, "the raised limit admits");
}

/// After the managers' clock steps back by hours, the background sync keeps the leases of
/// the new time's windows (it forgot them as ended, leaving their units counted in Redis, and
/// the key was refused after a fraction of its limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_keeps_its_leases_after_the_clock_steps_back() {
    let Some(url) = redis_url("local_first_keeps_its_leases_after_the_clock_steps_back") else {
        return;
    };
    let engine = local_first(&url, &prefix(), StdDuration::from_secs(3600));
    let org = api_keys::OrgId::try_new("acme").unwrap();
    let (key, _) = random_key();
    let limits = [RateLimit::new("hour", 100, StdDuration::from_secs(3600))];
    let at = |now_ms| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms,
    };
    const HOUR: i64 = 3_600_000;
    let t0 = 1_796_083_200_000;
    let engine = &engine;
    let consume = |req| async move {
        match engine.consume(req) {
            Consumed::Ready(r) => r,
            Consumed::Pending(f) => f.await,
        }
        .unwrap()
    };
    // A reading two hours ahead, then the clock back where it belongs.
    assert!(matches!(
        consume(at(t0 + 2 * HOUR)).await,
        Decision::Allowed { .. }
    ));
    for i in 0..100 {
        match consume(at(t0 + 10_000 + i)).await {
            Decision::Allowed { .. } => {}
            other => panic!("refused after {i} of 100 units in the window: {other:?}"),
        }
        // What the background task does every `sync_every`.
        engine.sync_once().await;
    }
    assert!(matches!(
        consume(at(t0 + 20_000)).await,
        Decision::RateLimited { .. }
    ));
}

/// Two keys of one organization share an org-wide limit with different values: a request is
/// admitted only if the shared count plus its cost stays within *its own key's* limit (the
/// trait's duty, as strict mode decides). A node that leased under the larger limit and
/// heard nothing from Redis since must not admit the smaller limit's requests from its lease
/// when other nodes already spent far beyond that smaller limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_decides_a_smaller_limit_on_the_shared_count_not_a_stale_lease() {
    let Some(url) =
        redis_url("local_first_decides_a_smaller_limit_on_the_shared_count_not_a_stale_lease")
    else {
        return;
    };
    let p = prefix();
    let hour = StdDuration::from_secs(3600);
    let node1 = local_first(&url, &p, hour);
    let node2 = local_first(&url, &p, hour);
    let org = api_keys::OrgId::new("acme");
    let big = [RateLimit::new("daily", 100, hour).per_org()];
    let small = [RateLimit::new("daily", 10, hour).per_org()];
    let (key_a, key_b) = (random_key().0, random_key().0);
    // Mid-window of an hour-long window, on a fixed clock: the test never straddles two.
    let now_ms = 1_800_000_i64 + 3_600_000 * 500_000;
    let req = |key, limits, cost| UsageRequest {
        key,
        org: &org,
        limits,
        credits: None,
        cost,
        now_ms,
    };
    // Node 1 admits one request of key A (limit 100) and keeps the rest of its lease.
    let d = consume_once(&node1, req(key_a, &big[..], 1)).await;
    assert!(matches!(d, Decision::Allowed { .. }), "{d:?}");
    // Node 2 admits 40 more of key A: the organization's count is now at least 41.
    for _ in 0..40 {
        let d = consume_once(&node2, req(key_a, &big[..], 1)).await;
        assert!(matches!(d, Decision::Allowed { .. }), "{d:?}");
    }
    // Key B's limit is 10: with 41 already counted, every request of it must be refused, on
    // either node (node 2 does refuse: its view of the count is fresh).
    let d = consume_once(&node2, req(key_b, &small[..], 1)).await;
    assert!(matches!(d, Decision::RateLimited { .. }), "node 2: {d:?}");
    let mut admitted = 0;
    for _ in 0..10 {
        if let Decision::Allowed { .. } = consume_once(&node1, req(key_b, &small[..], 1)).await {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 0,
        "node 1 admitted key B past its limit of 10 from a lease taken under key A's 100"
    );
}

/// Polls a future once, without yielding to the runtime.
async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await
}

/// A verification waiting for its counter's lease, which another verification is fetching,
/// is woken whenever any lease call of the node ends (other keys' counters included). Those
/// wake-ups are not answers about its own counter: however many come while the call it waits
/// for is in flight, it must wait for that call and be decided on its answer, never give up
/// on a healthy Redis (`Unavailable` for a limit that fails closed).
#[tokio::test]
async fn local_first_waits_for_its_own_lease_through_other_counters_wakeups() {
    let Some(url) = redis_url("local_first_waits_for_its_own_lease_through_other_counters_wakeups")
    else {
        return;
    };
    let engine = local_first(&url, &prefix(), StdDuration::from_secs(3600));
    let org = api_keys::OrgId::new("acme");
    let limits = [RateLimit::new("hour", 100, StdDuration::from_secs(3600))];
    let req = |key| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost: 1,
        now_ms: 1_800_000,
    };
    let pending = |c| match c {
        Consumed::Pending(f) => f,
        Consumed::Ready(r) => panic!("decided without a lease: {r:?}"),
    };
    let key = random_key().0;
    // The first verification of the window fetches the key's lease (its call goes out)...
    let mut fetching = pending(engine.consume(req(key)));
    assert!(poll_once(&mut fetching).await.is_pending());
    // ...and a second one waits for that call.
    let mut waiting = pending(engine.consume(req(key)));
    assert!(poll_once(&mut waiting).await.is_pending());
    // Meanwhile lease calls of other counters end on this node (here: verifications of other
    // keys that go away before their call, which wakes the waiters as an answer would).
    for _ in 0..20 {
        drop(pending(engine.consume(req(random_key().0))));
        let r = poll_once(&mut waiting).await;
        assert!(
            r.is_pending(),
            "gave up before its own lease call answered: {r:?}"
        );
    }
    // The lease call answers: both are admitted.
    let first = fetching.await;
    assert!(matches!(first, Ok(Decision::Allowed { .. })), "{first:?}");
    let second = waiting.await;
    assert!(matches!(second, Ok(Decision::Allowed { .. })), "{second:?}");
}
