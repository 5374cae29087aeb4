//! The soak run (issue 14): three example-server processes on one PostgreSQL, one Redis and
//! one master key, driven open-loop while faults are injected, every answer checked against
//! what the harness knows ("revoked means revoked", limits hold, nothing is lost).
//!
//! ```text
//! cargo build --release --locked --features axum,postgres,redis --example server --example soak
//! target/release/examples/soak --duration 600 --rate 200 --json soak.json
//! ```
//!
//! It starts PostgreSQL (`initdb`/`pg_ctl`, as the `postgres` user when run as root) and
//! `redis-server` on free loopback ports, then the already built server binary (`--server`)
//! three times, and stops everything it started on exit, also on failure or panic. The exit
//! status is non-zero on any late acceptance, over-admission, failed request outside a fault
//! window, node dying unbidden, or key lost. See README "Many nodes".

mod check;
mod load;
mod mgmt;
mod procs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use api_keys::{Keyring, MasterKey};
use hyper::Method;
use serde_json::{Value, json};

use load::{Res, Shared, Window, lock};
use procs::{Node, Postgres, Redis};

const USAGE: &str = "usage: soak [--server PATH] [--rate N] [--duration SECS] [--late-bound-ms MS]
            [--settle-secs SECS] [--timeout-ms MS] [--json PATH] [--redis-timeout-ms MS]
            [--no-faults]
  --server PATH       the built example server (default target/release/examples/server)
  --rate N            requests per second across the three nodes, open loop (default 100)
  --duration SECS     how long the traffic runs (default 60)
  --late-bound-ms MS  a request sent this long after a revoke returned must be refused
                      (default 1000: the documented fallback TTL)
  --settle-secs SECS  failures up to this long after a fault ends belong to it (default 5)
  --timeout-ms MS     a request unanswered this long is a hang (default 5000)
  --json PATH         also write the report as JSON
  --redis-timeout-ms MS  the nodes' timeout of one Redis call (default 250; the crate's is 50)
  --no-faults         traffic only";

struct Args {
    server: PathBuf,
    rate: f64,
    duration: Duration,
    late_bound: Duration,
    settle: Duration,
    timeout: Duration,
    json: Option<PathBuf>,
    faults: bool,
    redis_timeout_ms: u64,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        server: PathBuf::from("target/release/examples/server"),
        rate: 100.0,
        duration: Duration::from_secs(60),
        late_bound: Duration::from_millis(1000),
        settle: Duration::from_secs(5),
        timeout: Duration::from_millis(5000),
        json: None,
        faults: true,
        redis_timeout_ms: 250,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        let num = |v: String, name: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n > 0.0)
                .ok_or(format!("{name}: not a positive number: {v:?}"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Err(USAGE.to_string()),
            "--server" => a.server = value("--server")?.into(),
            "--rate" => a.rate = num(value("--rate")?, "--rate")?,
            "--duration" => {
                a.duration = Duration::from_secs_f64(num(value("--duration")?, "--duration")?)
            }
            "--late-bound-ms" => {
                a.late_bound = Duration::from_secs_f64(
                    num(value("--late-bound-ms")?, "--late-bound-ms")? / 1e3,
                )
            }
            "--settle-secs" => {
                a.settle = Duration::from_secs_f64(num(value("--settle-secs")?, "--settle-secs")?)
            }
            "--timeout-ms" => {
                a.timeout =
                    Duration::from_secs_f64(num(value("--timeout-ms")?, "--timeout-ms")? / 1e3)
            }
            "--json" => a.json = Some(value("--json")?.into()),
            "--no-faults" => a.faults = false,
            "--redis-timeout-ms" => {
                a.redis_timeout_ms = num(value("--redis-timeout-ms")?, "--redis-timeout-ms")? as u64
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let began = Instant::now();
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(&args) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    // Requests still in flight end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    eprintln!("soak: took {:.1} s", began.elapsed().as_secs_f64());
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("soak: FAILED (see the failures above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The processes of the run. Dropped (stopped) in reverse order: nodes, Redis, PostgreSQL.
struct Cluster {
    pg: Postgres,
    redis: Redis,
    nodes: Vec<Node>,
    /// Nodes the harness is restarting (their exit is no failure).
    down: Vec<bool>,
    logs: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

async fn run(args: &Args) -> Result<bool, String> {
    if !args.server.exists() {
        return Err(format!(
            "{} does not exist: cargo build --release --locked --features axum,postgres,redis --example server",
            args.server.display()
        ));
    }
    let pg = tokio::task::block_in_place(Postgres::start)?;
    let redis = tokio::task::block_in_place(Redis::start)?;
    println!(
        "soak: PostgreSQL on 127.0.0.1:{}, Redis on 127.0.0.1:{}",
        pg.port, redis.port
    );
    let mut master = zeroize::Zeroizing::new([0u8; 16]);
    getrandom::getrandom(&mut *master).map_err(|e| e.to_string())?;
    let master_hex = hex::encode(*master);
    let logs = tempfile::Builder::new()
        .prefix("api-keys-soak-logs.")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let node_args = vec![
        "--postgres".to_string(),
        pg.url.clone(),
        "--redis".to_string(),
        redis.url.clone(),
    ];
    let env = vec![
        ("API_KEYS_MASTER_KEY".to_string(), master_hex),
        // The crate's default Redis timeout is 50 ms; on a shared 2-core CI machine a Redis
        // call (the first one of a node above all: connect, then load the script) sometimes
        // takes longer, and a strict limit then answers 503 with no fault at all.
        (
            "API_KEYS_REDIS_TIMEOUT_MS".to_string(),
            args.redis_timeout_ms.to_string(),
        ),
    ];
    // The nodes' output stays for a post-mortem with SOAK_KEEP_LOGS=1.
    let mut logs = logs;
    if std::env::var_os("SOAK_KEEP_LOGS").is_some() {
        logs.disable_cleanup(true);
        println!("soak: node logs kept in {}", logs.path().display());
    }
    let mut cluster = Cluster {
        pg,
        redis,
        nodes: Vec::new(),
        down: vec![false; 3],
        logs,
    };
    let mut sessions = Vec::new();
    for i in 0..3 {
        let mut node = Node::new(
            i,
            &args.server,
            node_args.clone(),
            env.clone(),
            cluster.logs.path(),
        )?;
        let session = tokio::task::block_in_place(|| node.start(Duration::from_secs(30)))?;
        println!("soak: node {i} on 127.0.0.1:{}", node.port);
        cluster.nodes.push(node);
        sessions.push(session);
    }
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let shared = Arc::new(Shared::new(&ports, sessions, args.timeout));
    let keyring = Keyring::new(1, MasterKey::from_bytes(*master));
    mgmt::setup(&shared, &cluster.pg.url, keyring, 12, 3).await?;
    let t0 = shared.now();
    let until = t0 + args.duration;
    println!(
        "soak: {} s at {} req/s across 3 nodes{}",
        args.duration.as_secs_f64(),
        args.rate,
        if args.faults { ", with faults" } else { "" }
    );

    let mut tasks = vec![
        tokio::spawn(load::open_loop(shared.clone(), args.rate, until)),
        tokio::spawn(mgmt::victims(
            shared.clone(),
            Duration::from_secs(2),
            Duration::from_millis(1500),
            until,
        )),
        tokio::spawn(mgmt::trickle(
            shared.clone(),
            Duration::from_millis(1500),
            until,
        )),
    ];
    let schedule = if args.faults {
        fault_schedule(args.duration)
    } else {
        Vec::new()
    };
    let mut next = 0;
    while shared.now() < until {
        if let Some(why) = unbidden_exit(&mut cluster) {
            shared.fail(why);
            break;
        }
        if let Some((at, fault)) = schedule.get(next)
            && shared.now() >= t0 + *at
        {
            next += 1;
            inject(*fault, &shared, &mut cluster).await;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks.drain(..) {
        let _ = tokio::time::timeout(args.timeout + Duration::from_secs(35), t).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    // Let the last open-loop requests finish (each ends by the client timeout).
    tokio::time::sleep(args.timeout.min(Duration::from_secs(2))).await;
    if let Some(why) = unbidden_exit(&mut cluster) {
        shared.fail(why);
    }
    let end_check = end_check(&shared).await;
    tokio::time::sleep(args.timeout).await;

    let samples = lock(&shared.samples).clone();
    let keys = lock(&shared.keys).all.clone();
    let windows = lock(&shared.windows).clone();
    let failures = lock(&shared.failures).clone();
    let verdict = check::judge(
        &samples,
        &keys,
        &windows,
        3,
        &check::Bounds {
            late_bound: args.late_bound,
            settle: args.settle,
            // The example server's Redis counters are strict (`examples/server/backends.rs`).
            local_first: false,
        },
        end_check,
        failures,
    );
    let mut report = verdict.report;
    report["config"] = json!({
        "nodes": 3, "rate": args.rate, "duration_s": args.duration.as_secs_f64(),
        "faults": args.faults, "timeout_ms": args.timeout.as_millis() as u64,
        "redis_timeout_ms": args.redis_timeout_ms, "late_bound_ms": args.late_bound.as_millis() as u64,
    });
    println!("\n{}", check::table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("soak: report written to {}", path.display());
    }
    for f in &verdict.failures {
        eprintln!("soak: FAILURE: {f}");
    }
    Ok(verdict.failures.is_empty())
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillNode,
    RestartPostgres,
    TerminateBackends,
    StopRedis,
    Burst,
}

/// Every fault once per cycle, spread over it; a run has one cycle per full 2 minutes (at
/// least one), so a 60 s run has each fault once and a 10-minute run five times.
fn fault_schedule(d: Duration) -> Vec<(Duration, Fault)> {
    let cycles = ((d.as_secs_f64() / 120.0).floor() as u32).max(1);
    let cycle = d / cycles;
    (0..cycles)
        .flat_map(|c| {
            [
                (0.10, Fault::KillNode),
                (0.27, Fault::RestartPostgres),
                (0.42, Fault::TerminateBackends),
                (0.56, Fault::StopRedis),
                (0.80, Fault::Burst),
            ]
            .into_iter()
            .map(move |(f, fault)| (cycle * c + cycle.mul_f64(f), fault))
        })
        .collect()
}

fn unbidden_exit(c: &mut Cluster) -> Option<String> {
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if !c.down[i]
            && let Some(status) = n.exited()
        {
            return Some(format!("node {i} died unbidden ({status})"));
        }
    }
    c.redis
        .exited()
        .map(|s| format!("redis-server died unbidden ({s})"))
}

async fn inject(fault: Fault, shared: &Arc<Shared>, c: &mut Cluster) {
    let start = shared.now();
    println!("soak: {:>6.1} s  fault: {fault:?}", start.as_secs_f64());
    let (name, note) = match fault {
        Fault::KillNode => {
            let i = 1;
            c.down[i] = true;
            c.nodes[i].kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let node = &mut c.nodes[i];
            let note = match tokio::task::block_in_place(|| node.start(Duration::from_secs(30))) {
                Ok(session) => {
                    *shared.nodes[i]
                        .session
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = session;
                    format!("node {i} SIGKILLed, restarted after 1 s")
                }
                Err(e) => {
                    shared.fail(format!("restarting node {i}: {e}"));
                    "restart failed".to_string()
                }
            };
            c.down[i] = false;
            ("sigkill_node", note)
        }
        Fault::RestartPostgres => {
            let r = tokio::task::block_in_place(|| c.pg.restart_fast());
            if let Err(e) = &r {
                shared.fail(format!("pg_ctl restart: {e}"));
            }
            ("postgres_restart", "pg_ctl restart -m fast".to_string())
        }
        Fault::TerminateBackends => {
            let note = match tokio::task::block_in_place(|| c.pg.terminate_backends()) {
                Ok(n) => format!("pg_terminate_backend of {n} connections"),
                Err(e) => {
                    shared.fail(format!("pg_terminate_backend: {e}"));
                    "failed".to_string()
                }
            };
            ("pg_terminate_backend", note)
        }
        Fault::StopRedis => {
            tokio::task::block_in_place(|| c.redis.stop());
            tokio::time::sleep(Duration::from_secs(10)).await;
            if let Err(e) = tokio::task::block_in_place(|| c.redis.restart()) {
                shared.fail(format!("restarting Redis: {e}"));
            }
            (
                "redis_stop_10s",
                "SIGTERM, 10 s down, started again".to_string(),
            )
        }
        Fault::Burst => {
            shared.rate_mult.store(10, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(5)).await;
            shared.rate_mult.store(1, Ordering::Relaxed);
            ("burst_10x_5s", "10x the rate for 5 s".to_string())
        }
    };
    let end = shared.now();
    println!(
        "soak: {:>6.1} s  fault over: {name} ({note})",
        end.as_secs_f64()
    );
    lock(&shared.windows).push(Window {
        name: name.to_string(),
        start,
        end,
        note,
    });
}

/// After the run: every node lists the organization's keys. Every key generated and confirmed
/// must be there (revoked ones as revoked), no deleted key may be, and every key that should
/// still work must verify on every node.
async fn end_check(shared: &Shared) -> Value {
    let keys = lock(&shared.keys).all.clone();
    let (mut missing, mut resurrected, mut wrong_status, mut not_verifying) = (0, 0, 0, 0);
    let mut problems = Vec::new();
    let mut listed_ok = 0;
    for node in 0..shared.nodes.len() {
        let mut listing = None;
        for _ in 0..20 {
            let (res, _, _, json) = shared.manage(node, Method::GET, "/api/keys", None).await;
            if res == Res::Status(200)
                && let Value::Array(items) = json
            {
                listing = Some(items);
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let Some(items) = listing else {
            problems.push(format!("node {node}: the key listing never answered"));
            continue;
        };
        listed_ok += 1;
        let status_of = |id: &str| {
            items
                .iter()
                .find(|i| i["id"].as_str() == Some(id))
                .map(|i| i["status"].as_str().unwrap_or("").to_string())
        };
        for k in keys.iter().filter(|k| k.confirmed) {
            match (status_of(&k.id), k.deleted) {
                (Some(_), true) => {
                    resurrected += 1;
                    problems.push(format!("node {node}: deleted key {} is listed", k.id));
                }
                (None, false) => {
                    missing += 1;
                    problems.push(format!("node {node}: key {} is missing", k.id));
                }
                (Some(s), false) if k.revoked.is_some() && s != "revoked" => {
                    wrong_status += 1;
                    problems.push(format!("node {node}: revoked key {} is {s}", k.id));
                }
                _ => {}
            }
        }
        for k in keys
            .iter()
            .filter(|k| k.confirmed && k.revoke_sent.is_none() && !k.deleted && !k.rolled)
            .filter(|k| matches!(k.class, load::Class::Stable | load::Class::Trickle))
        {
            let res = shared
                .guarded(node, load::Kind::Valid, None, &k.token, false)
                .await;
            if !res.accepted() {
                not_verifying += 1;
                problems.push(format!("node {node}: key {} answered {res:?}", k.id));
            }
        }
    }
    if listed_ok < shared.nodes.len() {
        missing += 1;
    }
    json!({
        "confirmed": keys.iter().filter(|k| k.confirmed).count(),
        "missing": missing,
        "resurrected": resurrected,
        "wrong_status": wrong_status,
        "not_verifying": not_verifying,
        "problems": problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_refused() {
        let a = parse_args(args(&[
            "--rate",
            "50",
            "--duration",
            "600",
            "--json",
            "r.json",
        ]))
        .unwrap();
        assert_eq!((a.rate, a.duration), (50.0, Duration::from_secs(600)));
        assert_eq!(a.late_bound, Duration::from_millis(1000));
        assert_eq!(a.json, Some(PathBuf::from("r.json")));
        assert!(parse_args(args(&["--rate", "-1"])).is_err());
        assert!(parse_args(args(&["--rate"])).is_err());
        assert!(parse_args(args(&["--what"])).is_err());
    }

    #[test]
    fn every_fault_is_scheduled_once_inside_the_run() {
        let s = fault_schedule(Duration::from_secs(60));
        assert_eq!(s.len(), 5);
        assert!(s.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(s.last().unwrap().0 + Duration::from_secs(5) < Duration::from_secs(60));
        // Ten minutes: five cycles of the five faults, the Redis outage (10 s) and the burst
        // (5 s) each over before the next fault.
        let s = fault_schedule(Duration::from_secs(600));
        assert_eq!(s.len(), 25);
        assert!(
            s.windows(2)
                .all(|w| w[0].0 + Duration::from_secs(10) < w[1].0)
        );
    }
}
