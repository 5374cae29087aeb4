//! The judge's checks, each shown failing on what a planted bug produces and passing on what
//! a correct cluster does.

use std::time::Duration;

use serde_json::json;

use super::{Bounds, credits_short, judge, rate};
use crate::load::{Class, Key, Kind, Res, Sample, Window};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn key(class: Class) -> Key {
    Key {
        token: String::new(),
        id: "k".to_string(),
        class,
        confirmed: true,
        revoke_sent: None,
        revoked: None,
        deleted: false,
        rolled: false,
    }
}

fn sample(node: usize, kind: Kind, key: Option<usize>, at: f64, res: Res) -> Sample {
    Sample {
        node,
        kind,
        key,
        sent: secs(at),
        done: secs(at + 0.001),
        wall_sent_ms: (at * 1e3) as i64,
        wall_done_ms: (at * 1e3) as i64 + 1,
        res,
    }
}

fn failures(samples: &[Sample], keys: &[Key], windows: &[Window]) -> Vec<String> {
    let bounds = Bounds {
        late_bound: Duration::from_millis(1000),
        settle: Duration::from_secs(5),
        local_first: false,
    };
    let end = json!({"missing": 0});
    judge(samples, keys, windows, 3, &bounds, end, Vec::new()).failures
}

fn window(name: &str, start: f64, end: f64) -> Window {
    Window {
        name: name.to_string(),
        start: secs(start),
        end: secs(end),
        note: String::new(),
    }
}

#[test]
fn a_credit_key_refused_before_its_credits_were_spent_fails_the_run() {
    let keys = [key(Class::Credits { n: 4 })];
    let ok = Res::Status(200);
    // Each request spent two credits: refused after two.
    let twice = [
        sample(0, Kind::Credits, Some(0), 1.0, ok),
        sample(1, Kind::Credits, Some(0), 2.0, ok),
        sample(2, Kind::Credits, Some(0), 3.0, Res::Status(429)),
    ];
    let f = failures(&twice, &keys, &[]);
    assert!(
        f.iter().any(|f| f.contains("before their credits")),
        "{f:?}"
    );
    // All four spent, then refused: no failure.
    let mut right: Vec<Sample> = (0..4)
        .map(|i| sample(i % 3, Kind::Credits, Some(0), 1.0 + i as f64, ok))
        .collect();
    right.push(sample(0, Kind::Credits, Some(0), 6.0, Res::Status(429)));
    assert_eq!(failures(&right, &keys, &[]), Vec::<String>::new());
}

#[test]
fn a_request_with_no_known_outcome_may_have_spent_a_credit() {
    let t = |s: f64| secs(s);
    // Three accepted and one unanswered before the refusal: all four may be spent.
    assert_eq!(
        credits_short(4, t(5.0), &[t(1.0), t(2.0), t(3.0), t(4.0)]),
        None
    );
    // What was sent after the refusal was answered cannot have led to it.
    assert_eq!(
        credits_short(4, t(5.0), &[t(1.0), t(2.0), t(3.0), t(6.0)]),
        Some(3)
    );
}

#[test]
fn a_revocation_by_the_fallback_ttl_with_no_fault_fails_the_run() {
    let mut victim = key(Class::Victim);
    (victim.revoke_sent, victim.revoked) = (Some(secs(9.99)), Some(secs(10.0)));
    let keys = [victim];
    let (ok, refused) = (Res::Status(200), Res::Status(401));
    // Node 1 accepted 0.6 s after the revoke returned (within the fallback TTL, so no late
    // acceptance): the feed did not deliver the revocation.
    let ttl = [
        sample(0, Kind::Probe, Some(0), 10.001, refused),
        sample(1, Kind::Probe, Some(0), 10.6, ok),
        sample(1, Kind::Probe, Some(0), 10.7, refused),
        sample(2, Kind::Probe, Some(0), 10.002, refused),
    ];
    let f = failures(&ttl, &keys, &[]);
    assert!(
        f.iter().any(|f| f.contains("no fault in progress")),
        "{f:?}"
    );
    // The same during a PostgreSQL restart: the fallback TTL is the contract then.
    let pg = [window("postgres_restart", 9.5, 10.2)];
    assert_eq!(failures(&ttl, &keys, &pg), Vec::<String>::new());
    // Accepted by a request sent just after the revoke returned (the feed's latency), then
    // refused: no failure.
    let feed = [
        sample(1, Kind::Probe, Some(0), 10.001, ok),
        sample(1, Kind::Probe, Some(0), 10.01, refused),
    ];
    assert_eq!(failures(&feed, &keys, &[]), Vec::<String>::new());
}

#[test]
fn a_redis_outage_explains_only_failures_of_limited_keys() {
    let keys = [
        key(Class::Stable),
        key(Class::Rate {
            limit: 2,
            window_ms: 1000,
        }),
    ];
    let redis = [window("redis_stop_10s", 10.0, 20.0)];
    let unlimited = [sample(0, Kind::Valid, Some(0), 15.0, Res::Status(500))];
    let f = failures(&unlimited, &keys, &redis);
    assert!(
        f.iter().any(|f| f.contains("outside every fault window")),
        "{f:?}"
    );
    let limited = [sample(
        0,
        Kind::RateLimited,
        Some(1),
        15.0,
        Res::Status(503),
    )];
    assert_eq!(failures(&limited, &keys, &redis), Vec::<String>::new());
    // A node killed explains any failure.
    let kill = [window("sigkill_node", 10.0, 11.0)];
    assert_eq!(failures(&unlimited, &keys, &kill), Vec::<String>::new());
}

#[test]
fn a_failure_in_overlapping_windows_is_the_latest_faults() {
    let keys = [key(Class::Rate {
        limit: 2,
        window_ms: 1000,
    })];
    // A PostgreSQL cut-off whose settle time (5 s) runs into a Redis outage begun since: a
    // 503 of a limited key after the outage began is the outage's, not the cut-off's.
    let windows = [
        window("pg_terminate_backend", 12.6, 12.7),
        window("redis_stop_10s", 16.8, 27.0),
    ];
    let s = [sample(
        0,
        Kind::RateLimited,
        Some(0),
        17.5,
        Res::Status(503),
    )];
    let bounds = Bounds {
        late_bound: Duration::from_millis(1000),
        settle: Duration::from_secs(5),
        local_first: false,
    };
    let v = judge(
        &s,
        &keys,
        &windows,
        3,
        &bounds,
        json!({"missing": 0}),
        Vec::new(),
    );
    let faults = &v.report["faults"];
    assert_eq!(faults[0]["failures_inside"], json!({}), "{faults}");
    assert_eq!(faults[0]["recovery_ms"], json!(0.0), "{faults}");
    assert_eq!(
        faults[1]["failures_inside"],
        json!({"rate_limited 5xx": 1}),
        "{faults}"
    );
}

#[test]
fn a_rate_limited_key_refused_below_its_limit_fails_the_run() {
    let keys = [key(Class::Rate {
        limit: 2,
        window_ms: 1000,
    })];
    let (ok, refused) = (Res::Status(200), Res::Status(429));
    // Refused at limit - 1: one admitted in the window [10 s, 11 s), then a 429.
    let early = [
        sample(0, Kind::RateLimited, Some(0), 10.1, ok),
        sample(1, Kind::RateLimited, Some(0), 10.2, refused),
    ];
    let f = failures(&early, &keys, &[]);
    assert!(f.iter().any(|f| f.contains("before its limit")), "{f:?}");
    // Inside a fault window it is not judged.
    let redis = [window("redis_stop_10s", 5.0, 6.0)];
    assert_eq!(failures(&early, &keys, &redis), Vec::<String>::new());
    // A request whose outcome is unknown (no answer) may have been the second admission.
    let mut unknown = early.to_vec();
    unknown.insert(1, sample(2, Kind::RateLimited, Some(0), 10.15, Res::Conn));
    // (It fails the run as a failure outside every fault window; not as an under-admission.)
    let unknown = rate::under_admitted(&unknown, &keys, &[], Duration::from_secs(5), 3, false);
    assert_eq!(unknown, Vec::<serde_json::Value>::new());
    // Refused at the limit: no failure.
    let right = [
        sample(0, Kind::RateLimited, Some(0), 10.1, ok),
        sample(1, Kind::RateLimited, Some(0), 10.2, ok),
        sample(2, Kind::RateLimited, Some(0), 10.3, refused),
    ];
    assert_eq!(failures(&right, &keys, &[]), Vec::<String>::new());
    // Local-first leases may leave up to two leases per node unspent.
    assert_eq!(rate::slack(2, 3, false), 0);
    assert_eq!(rate::slack(2, 3, true), 6);
    assert_eq!(rate::slack(100, 3, true), 78);
    let lenient = rate::under_admitted(&early, &keys, &[], Duration::from_secs(5), 3, true);
    assert_eq!(lenient, Vec::<serde_json::Value>::new());
}
