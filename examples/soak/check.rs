//! Judging the run: every sample against what the harness knew when it was sent, and the
//! report (a table on stdout, and JSON).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::load::{Class, Key, Kind, Res, Sample, Window};

#[path = "check_rate.rs"]
mod rate;

/// What the judge needs besides the samples.
pub struct Bounds {
    /// A request sent this long after a revoke returned must be refused.
    pub late_bound: Duration,
    /// After a fault ends, failures are still attributed to it for this long.
    pub settle: Duration,
    /// Whether the nodes' Redis counters lease local-first (a bounded under-admission is
    /// then no failure) rather than count strictly.
    pub local_first: bool,
}

/// A revocation that takes longer than this to reach a node is listed in the report.
const SLOW_MS: f64 = 50.0;

/// With no fault in progress, a revocation reaches every node through the change feed
/// "within the feed's latency (ms)" (README, "Many nodes"): a revoked key accepted by a
/// request sent more than this after the revoke returned, with no fault window overlapping,
/// went by the fallback TTL (a feed not delivering): a failure. Well above
/// what a loaded 2-core machine shows (tens of ms), well below the fallback TTL (1 s) that
/// `late_bound` checks.
const FEED_BOUND_MS: f64 = 250.0;

/// Whether a failure of a `kind` request is explained by the fault `window` (its name, as
/// `main.rs` records it). A Redis outage, and a burst (a Redis call under load may exceed
/// its timeout), fail only requests that go to Redis: those of keys with a rate limit or
/// credits. A node killed or PostgreSQL restarted or cut off may fail anything.
fn excuses(window: &str, kind: Kind) -> bool {
    match window {
        "redis_stop_10s" | "burst_10x_5s" => matches!(kind, Kind::RateLimited | Kind::Credits),
        _ => true,
    }
}

fn hist() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn hist_json(h: &Histogram<u64>) -> Value {
    // Values in µs; reported in ms.
    let q = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    json!({
        "count": h.len(),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "max_ms": h.max() as f64 / 1e3,
    })
}

fn outcome(res: Res) -> &'static str {
    match res {
        Res::Status(s) if (200..300).contains(&s) => "2xx",
        Res::Status(401) => "401",
        Res::Status(403) => "403",
        Res::Status(429) => "429",
        Res::Status(s) if s >= 500 => "5xx",
        Res::Status(_) => "4xx_other",
        Res::Conn => "no_answer",
        Res::Timeout => "timeout",
    }
}

#[derive(Default)]
struct NodeStats {
    outcomes: BTreeMap<&'static str, u64>,
    by_kind: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    latency: Option<Histogram<u64>>,
}

impl NodeStats {
    fn add(&mut self, s: &Sample) {
        *self.outcomes.entry(outcome(s.res)).or_default() += 1;
        *self
            .by_kind
            .entry(s.kind.name())
            .or_default()
            .entry(outcome(s.res))
            .or_default() += 1;
        if let Res::Status(_) = s.res {
            let us = (s.done - s.sent).as_micros().max(1) as u64;
            let _ = self
                .latency
                .get_or_insert_with(hist)
                .record(us.min(600_000_000));
        }
    }
    fn json(&self) -> Value {
        json!({
            "requests": self.outcomes.values().sum::<u64>(),
            "outcomes": self.outcomes,
            "by_kind": self.by_kind,
            "latency": self.latency.as_ref().map(hist_json),
        })
    }
}

/// The verdict: the report, and every failure found.
pub struct Verdict {
    pub report: Value,
    pub failures: Vec<String>,
}

/// Judges `samples` against `keys`, `windows` and the end-of-run listing check.
pub fn judge(
    samples: &[Sample],
    keys: &[Key],
    windows: &[Window],
    nodes: usize,
    bounds: &Bounds,
    end_check: Value,
    mut failures: Vec<String>,
) -> Verdict {
    let mut per_node: Vec<NodeStats> = (0..nodes).map(|_| NodeStats::default()).collect();
    let mut total = NodeStats::default();
    let mut late = Vec::new();
    // Accepted more than FEED_BOUND_MS after the revoke returned with no fault in progress.
    let mut slow_outside = Vec::new();
    let mut accepted_after_revoke = hist();
    let mut wrongly_refused = 0u64;
    let mut accepted_invalid = 0u64;
    let mut outside = Vec::new();
    let mut inside: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); windows.len()];
    let mut last_failure: Vec<Option<Duration>> = vec![None; windows.len()];
    let mut accepted_per_key: HashMap<usize, u64> = HashMap::new();
    let mut per_window: HashMap<(usize, i64), u64> = HashMap::new();
    // First refusal per (key, node) from the probes, for the propagation delays.
    let mut first_refusal: HashMap<(usize, usize), Duration> = HashMap::new();
    // Per credit key: when its first 429 (out of credits) was answered, and every request
    // that may have spent a credit (accepted, or failed with no known outcome) by when it
    // was sent.
    let mut first_429: HashMap<usize, Duration> = HashMap::new();
    let mut may_have_spent: HashMap<usize, Vec<Duration>> = HashMap::new();

    for s in samples {
        per_node[s.node].add(s);
        total.add(s);
        let key = s.key.map(|k| (k, &keys[k]));
        if s.res.failed() {
            // In a fault's window if it was in flight at any time from the fault's start to
            // its end plus the settle time. The settle time outlasts the gap between two
            // faults, so windows overlap: a failure is the latest fault's that started before
            // it ended (a failure in the settle tail of a PostgreSQL cut-off that is in fact
            // the Redis outage begun since must not read as the cut-off's).
            let w = windows.iter().rposition(|w| {
                s.done >= w.start && s.sent <= w.end + bounds.settle && excuses(&w.name, s.kind)
            });
            match w {
                Some(i) => {
                    *inside[i]
                        .entry(format!("{} {}", s.kind.name(), outcome(s.res)))
                        .or_default() += 1;
                    let l = &mut last_failure[i];
                    *l = Some(l.map_or(s.sent, |l| l.max(s.sent)));
                }
                None => outside.push(format!(
                    "{} on node {} at {:.3} s ({}) outside every fault window",
                    outcome(s.res),
                    s.node,
                    s.sent.as_secs_f64(),
                    s.kind.name()
                )),
            }
        }
        if s.kind == Kind::Malformed && s.res.accepted() {
            accepted_invalid += 1;
        }
        let Some((k, key)) = key else { continue };
        if let Class::Credits { .. } = key.class {
            if s.res == Res::Status(429) {
                let f = first_429.entry(k).or_insert(s.done);
                *f = (*f).min(s.done);
            } else if s.res.accepted() || s.res.failed() {
                may_have_spent.entry(k).or_default().push(s.sent);
            }
        }
        if s.res.accepted() {
            *accepted_per_key.entry(k).or_default() += 1;
            if let Class::Rate { window_ms, .. } = key.class {
                let (a, b) = (
                    s.wall_sent_ms.div_euclid(window_ms),
                    s.wall_done_ms.div_euclid(window_ms),
                );
                // Counted only when the whole exchange fell in one window: exact, never a
                // false alarm.
                if a == b {
                    *per_window.entry((k, a)).or_default() += 1;
                }
            }
            if let Some(r) = key.revoked
                && s.sent > r
            {
                let delay = s.sent - r;
                let _ = accepted_after_revoke.record(delay.as_micros().max(1) as u64);
                if delay.as_secs_f64() * 1e3 > FEED_BOUND_MS
                    && !in_a_window(r, s.done, windows, bounds.settle)
                {
                    slow_outside.push(json!({
                        "key": key.id, "node": s.node, "kind": s.kind.name(),
                        "sent_after_revoke_ms": ms(delay), "at_s": ms(s.sent) / 1e3,
                    }));
                }
                if delay > bounds.late_bound {
                    late.push(json!({
                        "key": key.id, "node": s.node, "kind": s.kind.name(),
                        "sent_after_revoke_ms": ms(delay),
                        "deleted": key.deleted,
                    }));
                }
            }
        }
        if s.kind == Kind::Probe
            && s.res == Res::Status(401)
            && let Some(r) = key.revoked
        {
            let f = first_refusal.entry((k, s.node)).or_insert(s.sent);
            *f = (*f).min(s.sent);
            let _ = r;
        }
        // A refusal of a key that should work: it is not limited, and the whole exchange
        // ended before any revoke or delete of it was sent (a request in flight while the
        // revoke is sent may go either way; a roll keeps the old key working through the
        // overlap).
        let refused = matches!(s.res, Res::Status(401 | 403))
            || (s.res == Res::Status(429)
                && !matches!(key.class, Class::Rate { .. } | Class::Credits { .. }));
        if refused && key.revoke_sent.is_none_or(|r| s.done < r) {
            wrongly_refused += 1;
            if wrongly_refused <= 20 {
                failures.push(format!(
                    "a valid key ({}) was refused ({:?}) on node {} at {:.3} s",
                    key.id,
                    s.res,
                    s.node,
                    s.sent.as_secs_f64()
                ));
            }
        }
    }

    // Over-admission: credits exactly; rate limits per fixed window.
    let mut over = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        if let Class::Credits { n } = key.class {
            let a = accepted_per_key.get(&k).copied().unwrap_or(0);
            if a > n {
                over.push(json!({"key": key.id, "kind": "credits", "allowed": n, "accepted": a}));
            }
        }
    }
    for (&(k, w), &a) in &per_window {
        if let Class::Rate { limit, .. } = keys[k].class
            && a > limit
        {
            over.push(json!({"key": keys[k].id, "kind": "rate_limit", "window": w,
                "allowed": limit, "accepted": a}));
        }
    }
    // Under-admission: a credit key refused before its credits could all have been spent
    // (credits spent twice, or spent by a request that was refused).
    let mut under = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        if let (Class::Credits { n }, Some(&d)) = (&key.class, first_429.get(&k)) {
            let spent = may_have_spent.get(&k).map_or(&[][..], Vec::as_slice);
            if let Some(most) = credits_short(*n, d, spent) {
                under.push(json!({"key": key.id, "kind": "credits", "credits": n,
                    "refused_at_s": ms(d) / 1e3, "could_have_spent": most}));
            }
        }
    }
    let rate_under = rate::under_admitted(
        samples,
        keys,
        windows,
        bounds.settle,
        nodes,
        bounds.local_first,
    );
    let n_credits_under = under.len();
    under.extend(rate_under);
    let credits_spent: Vec<Value> = keys
        .iter()
        .enumerate()
        .filter_map(|(k, key)| match key.class {
            Class::Credits { n } => Some(json!({"key": key.id, "credits": n,
                "accepted": accepted_per_key.get(&k).copied().unwrap_or(0)})),
            _ => None,
        })
        .collect();

    // Propagation: from the revoke's return to the first refusal, per node.
    let mut propagation = hist();
    let mut never = 0u64;
    let mut victims = 0u64;
    let mut slow = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        if key.class != Class::Victim {
            continue;
        }
        let Some(r) = key.revoked else { continue };
        victims += 1;
        let mut per_node = Vec::new();
        for node in 0..nodes {
            match first_refusal.get(&(k, node)) {
                Some(&f) => {
                    let d = f.saturating_sub(r);
                    let _ = propagation.record(d.as_micros().max(1) as u64);
                    per_node.push(json!(ms(d)));
                }
                None => {
                    never += 1;
                    per_node.push(Value::Null);
                }
            }
        }
        let slowest = per_node
            .iter()
            .filter_map(Value::as_f64)
            .fold(0.0, f64::max);
        // A revocation slower than the feed (tens of ms at worst when it is up) went by
        // the fallback TTL: listed with when it happened, to set beside the faults.
        if slowest > SLOW_MS {
            slow.push(json!({"at_s": ms(r) / 1e3, "key": key.id, "node_ms": per_node}));
        }
    }

    let fault_json: Vec<Value> = windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            json!({
                "fault": w.name,
                "start_s": ms(w.start) / 1e3,
                "end_s": ms(w.end) / 1e3,
                "note": w.note,
                "failures_inside": inside[i],
                "recovery_ms": last_failure[i].map_or(0.0, |l| ms(l.saturating_sub(w.end))),
            })
        })
        .collect();

    if !late.is_empty() {
        failures.push(format!(
            "{} late acceptances (accepted more than {} ms after the revoke or delete returned)",
            late.len(),
            bounds.late_bound.as_millis()
        ));
    }
    if !over.is_empty() {
        failures.push(format!("{} over-admissions", over.len()));
    }
    if n_credits_under > 0 {
        failures.push(format!(
            "{n_credits_under} credit keys refused before their credits could all have been spent"
        ));
    }
    if under.len() > n_credits_under {
        failures.push(format!(
            "{} windows of a rate-limited key refused (429) before its limit could have been reached",
            under.len() - n_credits_under
        ));
    }
    if !slow_outside.is_empty() {
        failures.push(format!(
            "{} acceptances of a revoked or deleted key sent more than {FEED_BOUND_MS} ms after the revoke returned with no fault in progress (the change feed did not deliver it)",
            slow_outside.len()
        ));
    }
    if accepted_invalid > 0 {
        failures.push(format!("{accepted_invalid} malformed tokens accepted"));
    }
    if wrongly_refused > 20 {
        failures.push(format!("{wrongly_refused} valid requests refused in all"));
    }
    let n_outside = outside.len();
    failures.extend(outside.into_iter().take(20));
    if n_outside > 20 {
        failures.push(format!(
            "{n_outside} failed requests outside fault windows in all"
        ));
    }
    let missing = end_check["missing"].as_u64().unwrap_or(0);
    if missing > 0 {
        failures.push(format!(
            "{missing} keys generated and confirmed are missing"
        ));
    }
    for what in ["resurrected", "wrong_status", "not_verifying"] {
        let n = end_check[what].as_u64().unwrap_or(0);
        if n > 0 {
            failures.push(format!("end check: {n} {what}"));
        }
    }

    let report = json!({
        "total": total.json(),
        "nodes": per_node.iter().map(NodeStats::json).collect::<Vec<_>>(),
        "late_acceptances": late,
        "late_bound_ms": bounds.late_bound.as_millis() as u64,
        "accepted_after_revoke_returned": hist_json(&accepted_after_revoke),
        "revocations": victims,
        "revoke_propagation": hist_json(&propagation),
        "revoke_never_refused_by_probe": never,
        "slow_revocations": slow,
        "slow_revocation_ms": SLOW_MS,
        "over_admissions": over,
        "under_admissions": under,
        "slow_revocations_outside_faults": slow_outside,
        "feed_bound_ms": FEED_BOUND_MS,
        "credits": credits_spent,
        "wrongly_refused": wrongly_refused,
        "malformed_accepted": accepted_invalid,
        "failed_outside_fault_windows": n_outside,
        "settle_ms": bounds.settle.as_millis() as u64,
        "faults": fault_json,
        "end_check": end_check,
        "failures": failures,
    });
    Verdict { report, failures }
}

/// When a credit key with `n` credits was first refused (answered) at `refused`: `None` if
/// the requests that may have spent a credit and were sent before then (`spent`: when each
/// was sent) account for all `n`, else how many could have.
fn credits_short(n: u64, refused: Duration, spent: &[Duration]) -> Option<u64> {
    let most = spent.iter().filter(|&&t| t < refused).count() as u64;
    (most < n).then_some(most)
}

/// Whether `[from, to]` overlaps a fault window (the fault and its settle time).
fn in_a_window(from: Duration, to: Duration, windows: &[Window], settle: Duration) -> bool {
    windows
        .iter()
        .any(|w| from <= w.end + settle && to >= w.start)
}

/// The report as a table.
pub fn table(r: &Value) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let cols = [
        "2xx",
        "401",
        "403",
        "429",
        "4xx_other",
        "5xx",
        "no_answer",
        "timeout",
    ];
    let _ = writeln!(
        t,
        "{:<7} {:>8}{}  {:>8} {:>8} {:>8}",
        "node",
        "requests",
        cols.map(|c| format!("{c:>10}")).join(""),
        "p50 ms",
        "p99 ms",
        "max ms"
    );
    let row = |t: &mut String, name: &str, n: &Value| {
        let lat = &n["latency"];
        let _ = writeln!(
            t,
            "{:<7} {:>8}{}  {:>8} {:>8} {:>8}",
            name,
            n["requests"],
            cols.map(|c| format!("{:>10}", n["outcomes"][c].as_u64().unwrap_or(0)))
                .join(""),
            lat["p50_ms"],
            lat["p99_ms"],
            lat["max_ms"]
        );
    };
    for (i, n) in r["nodes"].as_array().into_iter().flatten().enumerate() {
        row(&mut t, &format!("node {i}"), n);
    }
    row(&mut t, "total", &r["total"]);
    let p = &r["revoke_propagation"];
    let _ = writeln!(
        t,
        "\nrevocations: {} — reached each node (first refusal after the revoke returned): p50 {} ms, p99 {} ms, max {} ms over {} node-revocations; never refused by a probe: {}",
        r["revocations"],
        p["p50_ms"],
        p["p99_ms"],
        p["max_ms"],
        p["count"],
        r["revoke_never_refused_by_probe"]
    );
    for s in r["slow_revocations"].as_array().into_iter().flatten() {
        let _ = writeln!(
            t,
            "  slower than {} ms: revoke returned at {:.1} s; first refusal per node (ms): {}",
            r["slow_revocation_ms"],
            s["at_s"].as_f64().unwrap_or(0.0),
            s["node_ms"]
        );
    }
    for s in r["slow_revocations_outside_faults"]
        .as_array()
        .into_iter()
        .flatten()
        .take(10)
    {
        let _ = writeln!(
            t,
            "  FAILED: {} accepted on node {} at {:.1} s, {} ms after its revoke returned (no fault in progress; feed bound {} ms)",
            s["key"],
            s["node"],
            s["at_s"].as_f64().unwrap_or(0.0),
            s["sent_after_revoke_ms"],
            r["feed_bound_ms"]
        );
    }
    let a = &r["accepted_after_revoke_returned"];
    let _ = writeln!(
        t,
        "accepted after a revoke/delete returned: {} (max {} ms after); late acceptances beyond {} ms: {}",
        a["count"],
        a["max_ms"],
        r["late_bound_ms"],
        r["late_acceptances"].as_array().map_or(0, Vec::len)
    );
    let _ = writeln!(
        t,
        "over-admissions: {}; under-admissions: {}; credit keys (credits/accepted): {}; valid requests refused: {}; malformed accepted: {}",
        r["over_admissions"].as_array().map_or(0, Vec::len),
        r["under_admissions"].as_array().map_or(0, Vec::len),
        r["credits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{}/{}", c["credits"], c["accepted"]))
            .collect::<Vec<_>>()
            .join(" "),
        r["wrongly_refused"],
        r["malformed_accepted"]
    );
    let _ = writeln!(
        t,
        "\n{:<22} {:>8} {:>8} {:>12}  failures inside (window = fault + {} ms settle)",
        "fault", "start s", "end s", "recovery ms", r["settle_ms"]
    );
    for f in r["faults"].as_array().into_iter().flatten() {
        let _ = writeln!(
            t,
            "{:<22} {:>8.1} {:>8.1} {:>12}  {} {}",
            f["fault"].as_str().unwrap_or(""),
            f["start_s"].as_f64().unwrap_or(0.0),
            f["end_s"].as_f64().unwrap_or(0.0),
            f["recovery_ms"],
            f["failures_inside"],
            f["note"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(
        t,
        "failed requests outside fault windows: {}",
        r["failed_outside_fault_windows"]
    );
    let e = &r["end_check"];
    let _ = writeln!(
        t,
        "end check: {} keys confirmed, {} missing, {} resurrected, {} wrong status, {} not verifying",
        e["confirmed"], e["missing"], e["resurrected"], e["wrong_status"], e["not_verifying"]
    );
    t
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
