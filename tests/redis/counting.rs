//! Shared counts on Redis: the conformance suites, credits and rate limits across managers, windows, the largest limits and old balances.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_engine_passes_the_counters_conformance_suite() {
    let Some(url) = redis_url("the_redis_engine_passes_the_counters_conformance_suite") else {
        return;
    };
    let p = prefix();
    let build = || {
        RedisCounters::builder(&url)
            .prefix(&p)
            .timeout(StdDuration::from_secs(2))
            .build()
            .unwrap()
    };
    let engine = build();
    api_keys::testkit::counters::run(&engine).await.unwrap();
    // A second node's engine shares the counts.
    api_keys::testkit::counters::counts_are_shared_between_handles(&engine, &build())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_first_engine_passes_the_counters_conformance_suite() {
    let Some(url) = redis_url("the_local_first_engine_passes_the_counters_conformance_suite")
    else {
        return;
    };
    let p = prefix();
    let engine = local_first(&url, &p, StdDuration::from_secs(3600));
    api_keys::testkit::counters::run(&engine).await.unwrap();
    let other = local_first(&url, &p, StdDuration::from_secs(3600));
    api_keys::testkit::counters::counts_are_shared_between_handles(&engine, &other)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_credits_admit_exactly_n_verifies_across_three_managers() {
    let Some(url) = redis_url("n_credits_admit_exactly_n_verifies_across_three_managers") else {
        return;
    };
    let p = prefix();
    let store = MemoryStore::new();
    // Three "nodes": each its own manager, cache and Redis connection.
    let nodes: Vec<_> = (0..3)
        .map(|_| {
            let engine = RedisCounters::builder(url.clone())
                .prefix(p.clone())
                .timeout(StdDuration::from_secs(2))
                .build()
                .unwrap();
            manager(store.clone(), engine).0
        })
        .collect();
    let (key, _) = nodes[0]
        .generate(
            &alice(),
            req("shared")
                .credits(Credits::new(60))
                .rate_limit(RateLimit::new("minute", 1_000, StdDuration::from_secs(60))),
        )
        .await
        .unwrap();
    let token: Arc<str> = key.expose_secret().into();
    let tasks: Vec<_> = (0..240)
        .map(|i| {
            let m = nodes[i % 3].clone();
            let t = token.clone();
            tokio::spawn(async move { m.verify(&t, &Scope::Prometheus).await })
        })
        .collect();
    let (mut passed, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => passed += 1,
            Err(Error::UsageExceeded) => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((passed, refused), (60, 180));
    for node in &nodes {
        assert_eq!(
            node.credits_remaining(&alice(), key.id()).await.unwrap(),
            Some(0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_one_count_across_managers() {
    let Some(url) = redis_url("a_rate_limit_is_one_count_across_managers") else {
        return;
    };
    let p = prefix();
    let store = MemoryStore::new();
    let engine = |p: &str| {
        RedisCounters::builder(url.clone())
            .prefix(p)
            .timeout(StdDuration::from_secs(2))
            .build()
            .unwrap()
    };
    let (a, _) = manager(store.clone(), engine(&p));
    let (b, _) = manager(store.clone(), engine(&p));
    // An hour-long window: the test never straddles two windows.
    let (key, _) = a
        .generate(
            &alice(),
            req("r").rate_limit(RateLimit::new("hour", 4, StdDuration::from_secs(3600))),
        )
        .await
        .unwrap();
    let t = key.expose_secret();
    for m in [&a, &b, &a, &b] {
        m.verify(t, &Scope::Prometheus).await.unwrap();
    }
    for m in [&a, &b] {
        assert!(matches!(
            m.verify(t, &Scope::Prometheus).await,
            Err(Error::RateLimited { .. })
        ));
    }
}

/// Every counter a verification starts expires a second after its window and counts only
/// what was admitted; a refused request writes nothing (a refused first request starts no
/// counter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_expire_after_their_window_and_keep_only_admitted_counts() {
    let Some(url) = redis_url("counters_expire_after_their_window_and_keep_only_admitted_counts")
    else {
        return;
    };
    let p = prefix();
    let (engine, mut conn) = strict_with_connection(&url, &p).await;
    let (m, _) = manager(MemoryStore::new(), engine);
    let hour = StdDuration::from_secs(3600);
    let (two, _) = m
        .generate(
            &alice(),
            req("two")
                .rate_limit(RateLimit::new("hour", 2, hour))
                .rate_limit(RateLimit::new("ten", 5, StdDuration::from_secs(10))),
        )
        .await
        .unwrap();
    let (big, _) = m
        .generate(
            &alice(),
            req("big").rate_limit(RateLimit::new("minute", 3, StdDuration::from_secs(60))),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        m.verify(two.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    // The hour's limit refuses, and the ten-second limit's count stays as it was.
    assert!(matches!(
        m.verify(two.expose_secret(), &Scope::Prometheus).await,
        Err(Error::RateLimited { .. })
    ));
    // A first request above the limit is refused; the next one starts the counter.
    assert!(matches!(
        m.verify_with(big.expose_secret(), &Scope::Prometheus, 5)
            .await,
        Err(Error::RateLimited { .. })
    ));

    let started: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}:rl:k:minute:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(started, Vec::<String>::new(), "a refusal wrote a counter");
    m.verify_with(big.expose_secret(), &Scope::Prometheus, 2)
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}:rl:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    // Summed per limit: a window may end between two of the requests above.
    let mut seen = std::collections::BTreeMap::new();
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        let count: i64 = redis::cmd("GET")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        let (window_ms, name) = if k.contains(":hour:") {
            (3_600_000, "hour")
        } else if k.contains(":ten:") {
            (10_000, "ten")
        } else {
            (60_000, "minute")
        };
        assert!(
            ttl > 0 && ttl <= window_ms + 1_000,
            "{name}: PTTL {ttl} for a {window_ms} ms window"
        );
        *seen.entry(name).or_insert(0) += count;
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [("hour", 2), ("minute", 2), ("ten", 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_limits_and_balances_count_exactly_on_redis() {
    let Some(url) = redis_url("the_largest_limits_and_balances_count_exactly_on_redis") else {
        return;
    };
    let hour = StdDuration::from_secs(3600);
    let max = api_keys::MAX_UNITS;
    for engine in [
        RedisCounters::builder(&url)
            .prefix(prefix())
            .build()
            .unwrap(),
        local_first(&url, &prefix(), hour),
    ] {
        let (m, _) = manager(MemoryStore::new(), engine.clone());
        let (key, _) = m
            .generate(
                &alice(),
                req("k")
                    .rate_limit(RateLimit::new("hour", max, hour))
                    .credits(Credits::new(max)),
            )
            .await
            .unwrap();
        for spent in 1..=3 {
            let v = m
                .verify(key.expose_secret(), &Scope::Prometheus)
                .await
                .unwrap();
            assert_eq!(v.credits_remaining(), Some(max - spent));
            assert_eq!(v.limits().next().unwrap().remaining, max - spent);
        }
        assert!(!engine.stats().open, "{:?}", engine.stats());
    }
}

/// A cost above `MAX_UNITS` cannot fit any limit or balance: refused on every engine alike,
/// and nothing spent (Lua's doubles would round it down to 2^53, which fits a full limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costs_above_the_largest_limit_are_refused_on_every_engine() {
    let Some(url) = redis_url("costs_above_the_largest_limit_are_refused_on_every_engine") else {
        return;
    };
    let hour = StdDuration::from_secs(3600);
    let max = api_keys::MAX_UNITS;
    let strict = RedisCounters::builder(&url)
        .prefix(prefix())
        .build()
        .unwrap();
    let managers = [
        manager(MemoryStore::new(), strict).0,
        manager(MemoryStore::new(), local_first(&url, &prefix(), hour)).0,
        manager(MemoryStore::new(), api_keys::LocalCounters::new()).0,
    ];
    for m in managers {
        let (limited, _) = m
            .generate(
                &alice(),
                req("limited").rate_limit(RateLimit::new("hour", max, hour)),
            )
            .await
            .unwrap();
        let (paid, _) = m
            .generate(&alice(), req("paid").credits(Credits::new(max)))
            .await
            .unwrap();
        for cost in [max + 1, max + 2, u64::MAX] {
            let r = m
                .verify_with(limited.expose_secret(), &Scope::Prometheus, cost)
                .await;
            assert!(
                matches!(r, Err(Error::RateLimited { .. })),
                "cost {cost}: {r:?}"
            );
            let r = m
                .verify_with(paid.expose_secret(), &Scope::Prometheus, cost)
                .await;
            assert!(matches!(r, Err(Error::UsageExceeded)), "cost {cost}: {r:?}");
        }
        let v = m
            .verify(limited.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        assert_eq!(v.limits().next().unwrap().remaining, max - 1);
        let v = m
            .verify(paid.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        assert_eq!(v.credits_remaining(), Some(max - 1));
    }
}

/// Balances written by builds that kept only a period number (`p`), and balances an older node
/// changes during a rolling upgrade, keep their refills: due ones happen, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_of_earlier_builds_and_older_nodes_refill_once_per_period() {
    use api_keys::{KeyId, OrgId, Refill};
    let Some(url) = redis_url("balances_of_earlier_builds_and_older_nodes_refill_once_per_period")
    else {
        return;
    };
    let p = prefix();
    let (engine, mut conn) = strict_with_connection(&url, &p).await;
    let credits = Credits::new(100).refill(Refill::monthly(1, 100));
    let org = OrgId::new("acme");
    let at = |month: u8, day: u8| {
        let date = api_keys::time::Date::from_calendar_date(
            2026,
            api_keys::time::Month::try_from(month).unwrap(),
            day,
        )
        .unwrap();
        date.midnight().assume_utc().unix_timestamp() * 1000 + 3_600_000
    };
    // The earlier builds' period number of a monthly refill: months since year 0.
    let month_index = |month: u8| 2026 * 12 + i64::from(month) - 1;
    let left = |(key, _): (KeyId, u64), now_ms: i64| {
        let engine = engine.clone();
        let (org, credits) = (org.clone(), credits);
        async move {
            let req = UsageRequest {
                key,
                org: &org,
                limits: &[],
                credits: Some(&credits),
                cost: 1,
                now_ms,
            };
            let d = match engine.consume(req) {
                Consumed::Ready(r) => r,
                Consumed::Pending(f) => f.await,
            };
            match d.unwrap() {
                Decision::Allowed { usage, .. } => usage.credits,
                other => panic!("refused: {other:?}"),
            }
        }
    };
    let hset = |key: (KeyId, u64), fields: Vec<(&'static str, i64)>| {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(format!("{p}:cr:{:016x}", key.1));
        for (f, v) in fields {
            cmd.arg(f).arg(v);
        }
        cmd
    };
    let key = random_key;

    // Spent out in February by an earlier build: March's refill is due on its first use.
    let k = key();
    let _: i64 = hset(k, vec![("b", 0), ("p", month_index(2))])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left(k, at(3, 10)).await, Some(99));
    // Refilled in March by an earlier build: not again in March, again in April.
    let k = key();
    let _: i64 = hset(k, vec![("b", 5), ("p", month_index(3))])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left(k, at(3, 10)).await, Some(4));
    assert_eq!(left(k, at(4, 1)).await, Some(99));
    // Started here in March; on April 1st an older node refills it and spends it down to 40:
    // this node must not refill it again in April.
    let k = key();
    assert_eq!(left(k, at(3, 10)).await, Some(99));
    let p_written: i64 = redis::cmd("HGET")
        .arg(format!("{p}:cr:{:016x}", k.1))
        .arg("p")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        p_written,
        month_index(3),
        "older nodes find their period number"
    );
    let _: i64 = hset(k, vec![("b", 40), ("p", month_index(4))])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left(k, at(4, 2)).await, Some(39));
    assert_eq!(left(k, at(5, 1)).await, Some(99));
}

/// At the largest limit, a count one below it and a cost of 2 is over it by one: Lua's
/// doubles round `2^53 - 1 + 2` down to `2^53`, which must not make strict mode admit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_a_cost_that_passes_the_largest_limit_by_one() {
    let Some(url) = redis_url("strict_refuses_a_cost_that_passes_the_largest_limit_by_one") else {
        return;
    };
    let (engine, _) = strict_with_connection(&url, &prefix()).await;
    let org = api_keys::OrgId::new("acme");
    let max = api_keys::MAX_UNITS;
    let limits = [RateLimit::new("hour", max, StdDuration::from_secs(3600))];
    let key = random_key().0;
    let req = |cost| UsageRequest {
        key,
        org: &org,
        limits: &limits,
        credits: None,
        cost,
        now_ms: 1_800_000,
    };
    let d = consume_once(&engine, req(max - 1)).await;
    assert!(matches!(d, Decision::Allowed { .. }), "{d:?}");
    let d = consume_once(&engine, req(2)).await;
    assert!(
        matches!(d, Decision::RateLimited { .. }),
        "admitted {} units under a limit of {max}: {d:?}",
        max + 1
    );
}
