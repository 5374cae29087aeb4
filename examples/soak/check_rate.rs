//! Rate limits judged for under-admission: a key refused (429) in a fixed window in which
//! fewer than its limit could have been admitted.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

use super::{in_a_window, ms};
use crate::load::{Class, Key, Res, Sample, Window};

/// How many admissions a correct engine may leave unspent in one window of a `limit` across
/// `nodes` nodes: strict counters none; local-first leases up to two leases per node, of at
/// most `⌈limit / 8⌉` each (README, "Usage limits", `local_first`).
pub fn slack(limit: u64, nodes: usize, local_first: bool) -> u64 {
    if local_first {
        (nodes as u64)
            .saturating_mul(2)
            .saturating_mul(limit.div_ceil(8))
    } else {
        0
    }
}

/// Every (rate-limited key, fixed window) in which a 429 was answered, with no fault window
/// overlapping its exchange, although fewer than `limit - slack` requests of the key could
/// have been admitted in that window. A request could have been admitted in every window its
/// exchange touched if it was accepted, or if its outcome is unknown (a 5xx, no answer or a
/// timeout: its call may have run on Redis); a 429 is judged only when its whole exchange
/// fell in one window (then the engine decided it in that window). Never a false alarm for
/// an engine that refuses only at its limit.
pub fn under_admitted(
    samples: &[Sample],
    keys: &[Key],
    windows: &[Window],
    settle: Duration,
    nodes: usize,
    local_first: bool,
) -> Vec<Value> {
    // Admitted with the whole exchange in the window; admitted or unknown touching it.
    let mut sure: HashMap<(usize, i64), u64> = HashMap::new();
    let mut maybe: HashMap<(usize, i64), u64> = HashMap::new();
    // The first judged refusal per (key, window).
    let mut refused: BTreeMap<(usize, i64), &Sample> = BTreeMap::new();
    for s in samples {
        let Some(k) = s.key else { continue };
        let Class::Rate { window_ms, .. } = keys[k].class else {
            continue;
        };
        let (a, b) = (
            s.wall_sent_ms.div_euclid(window_ms),
            s.wall_done_ms.div_euclid(window_ms),
        );
        if s.res.accepted() && a == b {
            *sure.entry((k, a)).or_default() += 1;
        } else if s.res.accepted() || s.res.failed() {
            for w in a..=b {
                *maybe.entry((k, w)).or_default() += 1;
            }
        } else if s.res == Res::Status(429)
            && a == b
            && !in_a_window(s.sent, s.done, windows, settle)
        {
            refused.entry((k, a)).or_insert(s);
        }
    }
    let mut under = Vec::new();
    for (&(k, w), s) in &refused {
        let Class::Rate { limit, .. } = keys[k].class else {
            continue;
        };
        let admitted = sure.get(&(k, w)).copied().unwrap_or(0);
        let unknown = maybe.get(&(k, w)).copied().unwrap_or(0);
        let floor = limit.saturating_sub(slack(limit, nodes, local_first));
        if admitted + unknown < floor {
            under.push(json!({"key": keys[k].id, "kind": "rate_limit", "window": w,
                "limit": limit, "admitted": admitted, "unknown": unknown,
                "refused_on_node": s.node, "refused_at_s": ms(s.sent) / 1e3}));
        }
    }
    under
}
