//! PostgresStore under real faults of the server: a restart (`pg_ctl restart -m fast`), a
//! stop, a frozen feed backend (`kill -STOP`). These change the whole server, so the tests of
//! this file run one at a time, and only when `API_KEYS_PG_CTL` names how to run `pg_ctl`
//! for the server at `DATABASE_URL` (`.ci/postgres.sh` exports it with
//! `API_KEYS_PG_START_ARGS`); otherwise each says why it is skipped and passes, unless
//! `API_KEYS_REQUIRE_POSTGRES=1`.

mod store_support;

use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use api_keys::{
    Actor, AuditAction, AuditEvent, AuditSink, BoxError, Error, GenerateRequest, KeyManager,
    Keyring, MasterKey, OrgId, PostgresStore, Scope, UserId,
};
use store_support::report;

static SERIAL: Mutex<()> = Mutex::new(());

struct Server {
    url: String,
    pg_ctl: String,
    start_args: String,
}

fn server(test: &str) -> Option<Server> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("DATABASE_URL"),
        get("API_KEYS_PG_CTL"),
        get("API_KEYS_PG_START_ARGS"),
    ) {
        (Some(url), Some(pg_ctl), Some(start_args)) => Some(Server {
            url,
            pg_ctl,
            start_args,
        }),
        _ => {
            if std::env::var("API_KEYS_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!(
                    "API_KEYS_REQUIRE_POSTGRES=1 but DATABASE_URL, API_KEYS_PG_CTL or API_KEYS_PG_START_ARGS is not set"
                );
            }
            eprintln!(
                "skipping {test}: needs DATABASE_URL and API_KEYS_PG_CTL (see .ci/postgres.sh)"
            );
            None
        }
    }
}

impl Server {
    fn ctl(&self, args: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("{} {args} >/dev/null", self.pg_ctl))
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {args} failed");
    }
    fn restart(&self) {
        self.ctl("restart -m fast -w -t 60");
    }
    fn stop(&self) {
        self.ctl("stop -m fast -w -t 60");
    }
    fn start(&self) {
        self.ctl(&format!("start -w -t 60 {}", self.start_args));
    }
}

/// Starts the server again if a test stopped it and then failed.
struct Restart<'a>(&'a Server, bool);

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.start();
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).unwrap();
    u64::from_le_bytes(b)
}

fn app(tag: &str) -> String {
    format!("t-{tag}-{:08x}", random_u64() as u32)
}

fn with_app(url: &str, app: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}")
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<AuditEvent>>>);

impl AuditSink for Recorder {
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

impl Recorder {
    fn count(&self, action: &AuditAction) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.action == *action)
            .count()
    }
}

fn keyring() -> Keyring {
    Keyring::new(1, MasterKey::from_bytes(*b"postgres-faultky"))
}

fn read() -> Scope {
    Scope::parse("read").unwrap()
}

async fn manager(
    store: PostgresStore,
    fallback: Duration,
    stale: Duration,
    audit: Recorder,
) -> KeyManager<PostgresStore> {
    KeyManager::builder(store, keyring())
        .cache_ttl(Duration::from_secs(300))
        .cache_fallback_ttl(fallback)
        .serve_stale_while_store_unreachable(stale)
        .audit(audit)
        .build()
        .unwrap()
}

async fn keys(m: &KeyManager<PostgresStore>, org: &OrgId, n: usize) -> Vec<String> {
    let actor = Actor::manager(org.clone(), UserId::new("alice"));
    let mut out = Vec::new();
    for i in 0..n {
        let (key, _) = m
            .generate(
                &actor,
                GenerateRequest::new(format!("k{i}")).scopes([read()]),
            )
            .await
            .unwrap();
        out.push(key.expose_secret().to_string());
    }
    out
}

/// Warm keys keep verifying through a real fast restart; with the server stopped they keep
/// verifying until the fallback bound and are then refused (a store error); a manager that
/// opted into a maximum staleness keeps accepting them, audited, but never a key it knows was
/// revoked.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_keys_verify_through_a_restart_and_stop_at_the_bound() {
    let Some(server) = server("warm_keys_verify_through_a_restart_and_stop_at_the_bound") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let org = OrgId::new(format!("faults-{:016x}", random_u64()));
    // A bound generous enough that a fast restart on a loaded machine fits in it.
    let bound = Duration::from_secs(5);
    let plain_audit = Recorder::default();
    let plain = manager(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &app("restart")))
            .await
            .unwrap(),
        bound,
        Duration::ZERO,
        plain_audit.clone(),
    )
    .await;
    let stale_audit = Recorder::default();
    let stale = manager(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &app("stale")))
            .await
            .unwrap(),
        bound,
        Duration::from_secs(120),
        stale_audit.clone(),
    )
    .await;
    // A third node with the default fallback TTL (1 s).
    let default_node = KeyManager::builder(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &app("default")))
            .await
            .unwrap(),
        keyring(),
    )
    .build()
    .unwrap();
    let tokens = keys(&plain, &org, 4).await;
    let revoked = keys(&stale, &org, 1).await.remove(0);
    let actor = Actor::manager(org.clone(), UserId::new("alice"));
    // Let both feeds prove themselves, then warm every key on both nodes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for t in &tokens {
        plain.verify(t, &read()).await.unwrap();
        stale.verify(t, &read()).await.unwrap();
        default_node.verify(t, &read()).await.unwrap();
    }
    let revoked_id = stale
        .verify(&revoked, &read())
        .await
        .unwrap()
        .key_id()
        .to_owned();
    stale.revoke(&actor, &revoked_id).await.unwrap();
    assert!(matches!(
        stale.verify(&revoked, &read()).await,
        Err(Error::Revoked)
    ));

    // 1. A real fast restart while the warm keys verify: none fails.
    let restart = std::thread::spawn({
        let s = Server {
            url: server.url.clone(),
            pg_ctl: server.pg_ctl.clone(),
            start_args: server.start_args.clone(),
        };
        move || {
            let t = Instant::now();
            s.restart();
            t.elapsed()
        }
    });
    let mut verified = 0usize;
    let mut default_failed = 0usize;
    while !restart.is_finished() {
        for t in &tokens {
            if let Err(e) = plain.verify(t, &read()).await {
                panic!("a warm key failed during a fast restart: {e}");
            }
            default_failed += usize::from(default_node.verify(t, &read()).await.is_err());
            verified += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = restart.join().unwrap();
    // With the server back, every verify works again at once, through the store where the
    // cache no longer answers (the pool's connections died with the old server).
    let after = Instant::now();
    let mut after_count = 0usize;
    while after.elapsed() < Duration::from_millis(1500) {
        for t in &tokens {
            if let Err(e) = default_node.verify(t, &read()).await {
                panic!("a verify failed after the restart completed: {e}");
            }
            after_count += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report(&format!(
        "postgres fast restart took {took:?}; {verified} warm verifies during it: 0 failed with a 5 s fallback TTL, {default_failed} with the default 1 s; {after_count} after it, 0 failed"
    ));

    // 2. The server stopped: warm keys verify at first, then stop at the bound.
    // An entry read before the restart may have missed a change while the feed reconnected,
    // so it is never served stale: past its fallback deadline, the verifies below read the
    // store again (as entries of the current feed connection).
    tokio::time::sleep(bound).await;
    for t in &tokens {
        plain.verify(t, &read()).await.unwrap();
        stale.verify(t, &read()).await.unwrap();
    }
    server.stop();
    let guard = Restart(&server, true);
    let stopped = Instant::now();
    plain.verify(&tokens[0], &read()).await.unwrap();
    let mut refused_after = None;
    while stopped.elapsed() < bound + Duration::from_secs(10) {
        match plain.verify(&tokens[0], &read()).await {
            Ok(_) => {}
            Err(Error::Store(_)) => {
                refused_after = Some(stopped.elapsed());
                break;
            }
            Err(e) => panic!("unexpected error with the store down: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_after =
        refused_after.expect("warm keys were served past the bound with the store down");
    assert_eq!(plain_audit.count(&AuditAction::ServedStale), 0);
    // 3. With a maximum staleness, the other node still accepts them (audited) once its own
    // feed trust (proven up to one probe later than the first node's) has lapsed too ...
    let past = (bound + Duration::from_secs(1)).saturating_sub(stopped.elapsed());
    tokio::time::sleep(past).await;
    for t in &tokens {
        stale.verify(t, &read()).await.unwrap();
    }
    assert!(stale_audit.count(&AuditAction::ServedStale) >= tokens.len());
    // ... but never a key it knows was revoked, nor a wrong secret.
    assert!(matches!(
        stale.verify(&revoked, &read()).await,
        Err(Error::Revoked)
    ));
    let mut wrong = tokens[0].clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    assert!(stale.verify(&wrong, &read()).await.is_err());
    report(&format!(
        "postgres server stopped: warm keys refused {refused_after:?} after the stop (bound {bound:?}); with serve_stale_while_store_unreachable they kept verifying"
    ));

    // 4. The server back: verification through the store works again.
    drop(guard);
    let mut ok = false;
    for _ in 0..100 {
        if plain.verify(&tokens[1], &read()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok,
        "verification never recovered after the server came back"
    );
}

/// A feed whose backend is frozen (SIGSTOP) proves nothing: a key revoked on another node is
/// refused within the fallback bound, not after the heartbeat gives up.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_the_feed_is_frozen_is_refused_within_the_bound() {
    let Some(server) = server("a_key_revoked_while_the_feed_is_frozen_is_refused_within_the_bound")
    else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let org = OrgId::new(format!("faults-{:016x}", random_u64()));
    let actor = Actor::manager(org.clone(), UserId::new("alice"));
    let bound = Duration::from_secs(1);
    let a = manager(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &app("node-a")))
            .await
            .unwrap(),
        bound,
        Duration::ZERO,
        Recorder::default(),
    )
    .await;
    let b_app = app("node-b");
    let b = manager(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &b_app))
            .await
            .unwrap(),
        bound,
        Duration::ZERO,
        Recorder::default(),
    )
    .await;
    let token = keys(&a, &org, 1).await.remove(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = b.verify(&token, &read()).await.unwrap().key_id().to_owned();

    let (admin, conn) = tokio_postgres::connect(&server.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let feed_name = format!("{b_app}-feed");
    let pid: i32 = admin
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&feed_name],
        )
        .await
        .unwrap()
        .get(0);
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .unwrap()
                .success()
        );
    };
    struct Cont<F: Fn()>(F);
    impl<F: Fn()> Drop for Cont<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    signal("STOP");
    let _cont = Cont(|| signal("CONT"));
    // Still warm and served from the cache (the revoke has not happened yet).
    b.verify(&token, &read()).await.unwrap();
    a.revoke(&actor, &id).await.unwrap();
    let revoked_at = Instant::now();
    // The old heartbeat gave up after ~5 s; the proof lapses within the bound (+ one probe).
    let mut refused = None;
    while revoked_at.elapsed() < bound + Duration::from_millis(1500) {
        match b.verify(&token, &read()).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(Error::Revoked) => {
                refused = Some(revoked_at.elapsed());
                break;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let refused =
        refused.expect("a revoked key was accepted past the bound while the feed was frozen");
    report(&format!(
        "postgres frozen feed backend: a remote revoke was refused {refused:?} after it returned (bound {bound:?})"
    ));
}

/// the pooled backends frozen (`kill -STOP`, as a server stuck on I/O): a read
/// must end within the statement timeout (it cannot fire server-side) or a client-side bound,
/// not hang forever.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_a_frozen_backend_ends() {
    let Some(server) = server("a_read_on_a_frozen_backend_ends") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let name = app("frozen-backend");
    let store = PostgresStore::options()
        .statement_timeout(Duration::from_secs(1))
        .pool_size(1)
        .connect_and_migrate(&with_app(&server.url, &name))
        .await
        .unwrap();
    let org = OrgId::new(format!("faults-{:016x}", random_u64()));
    let m = manager(
        store.clone(),
        Duration::from_secs(1),
        Duration::ZERO,
        Recorder::default(),
    )
    .await;
    let token = keys(&m, &org, 1).await.remove(0);
    let id = m.verify(&token, &read()).await.unwrap().key_id().to_owned();
    let (admin, conn) = tokio_postgres::connect(&server.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let pids: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pids.len(), 1, "one pooled backend");
    let signal = |sig: &str| {
        for pid in &pids {
            assert!(
                Command::new("kill")
                    .arg(format!("-{sig}"))
                    .arg(pid.to_string())
                    .status()
                    .unwrap()
                    .success()
            );
        }
    };
    struct Cont<F: Fn()>(F);
    impl<F: Fn()> Drop for Cont<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    signal("STOP");
    let _cont = Cont(|| signal("CONT"));
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        api_keys::KeyStore::get(&store, &id),
    )
    .await;
    assert!(
        r.is_ok(),
        "store.get on a frozen backend still pending after {:?} (statement_timeout 1 s)",
        started.elapsed()
    );
}

/// An admin connection to the `postgres` database of the same server (it stays usable while
/// the test's database refuses connections).
async fn admin_of(url: &str) -> (tokio_postgres::Client, String) {
    let mut cfg: tokio_postgres::Config = url.parse().unwrap();
    let db = cfg.get_dbname().unwrap().to_string();
    cfg.dbname("postgres");
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, db)
}

/// Terminates every backend whose `application_name` is `name`, and waits until they are gone.
async fn terminate(admin: &tokio_postgres::Client, name: &str) {
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{name} still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lets the test's database accept connections again when dropped (also on failure).
struct AllowConnections {
    url: String,
    db: String,
}

impl Drop for AllowConnections {
    fn drop(&mut self) {
        let (url, db) = (self.url.clone(), self.db.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let (admin, _) = admin_of(&url).await;
                    allow_connections(&admin, &db, true).await;
                });
        })
        .join()
        .unwrap();
    }
}

async fn allow_connections(admin: &tokio_postgres::Client, db: &str, allow: bool) {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS {allow}"
        ))
        .await
        .unwrap();
}

/// Node B's feed connection is terminated and cannot come back until node A's revoke has
/// committed (the database refuses new connections meanwhile): the notification is lost.
/// B's feed then reconnects and proves itself again, with the store reachable all along.
/// Seconds later B's store becomes unreachable: B, which opted into stale serving, must not
/// accept the key revoked before that outage (its entry was read before the reconnect).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_missed_while_the_feed_reconnected_is_not_served_stale_later() {
    let Some(server) =
        server("a_revoke_missed_while_the_feed_reconnected_is_not_served_stale_later")
    else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let org = OrgId::new(format!("faults-{:016x}", random_u64()));
    let actor = Actor::manager(org.clone(), UserId::new("alice"));
    let bound = Duration::from_secs(1);
    let a = manager(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &app("node-a")))
            .await
            .unwrap(),
        bound,
        Duration::ZERO,
        Recorder::default(),
    )
    .await;
    let b_app = app("node-b");
    let b_audit = Recorder::default();
    let b = manager(
        PostgresStore::connect_and_migrate(&with_app(&server.url, &b_app))
            .await
            .unwrap(),
        bound,
        Duration::from_secs(120),
        b_audit.clone(),
    )
    .await;
    let token = keys(&a, &org, 1).await.remove(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = b.verify(&token, &read()).await.unwrap().key_id().to_owned();

    let (admin, db) = admin_of(&server.url).await;
    let feed_name = format!("{b_app}-feed");
    // B's feed is cut off and cannot reconnect while A revokes.
    allow_connections(&admin, &db, false).await;
    let guard = AllowConnections {
        url: server.url.clone(),
        db: db.clone(),
    };
    terminate(&admin, &feed_name).await;
    a.revoke(&actor, &id).await.unwrap();
    drop(guard);
    // B's feed comes back (and proves itself); the store was reachable all along.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&feed_name],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "B's feed never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(bound + Duration::from_millis(500)).await;

    // Later, B's store becomes unreachable.
    allow_connections(&admin, &db, false).await;
    let _guard = AllowConnections {
        url: server.url.clone(),
        db,
    };
    terminate(&admin, &b_app).await;
    terminate(&admin, &feed_name).await;
    let after = b.verify(&token, &read()).await;
    assert!(
        after.is_err(),
        "node B accepted a key revoked on node A before B's store became unreachable"
    );
    assert_eq!(b_audit.count(&AuditAction::ServedStale), 0);
}
