//! PostgresStore against a real server: conformance, the LISTEN/NOTIFY change feed across
//! nodes, feed loss, connection loss, clear errors.
//!
//! Reads `DATABASE_URL`. Without it each test says why it is skipped and passes, unless
//! `API_KEYS_REQUIRE_POSTGRES=1` (as in CI), where a missing URL fails.

mod common;
mod store_support;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_keys::{
    Actor, Change, ChangeKind, ChangeListener, Error, GenerateRequest, KeyId, KeyManager, KeyStore,
    Keyring, MasterKey, OrgId, PostgresError, PostgresErrorKind, PostgresStore, Scope, StoreError,
    UserId,
};
use store_support::{FeedEvent, Observed, Spy, report, wait_until};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;

const MASTER: [u8; 16] = *b"postgres-testkey";

fn keyring() -> Keyring {
    Keyring::new(1, MasterKey::from_bytes(MASTER))
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// A random key id (its first character is a digit, so the value fits in 64 bits).
fn random_id() -> KeyId {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut b = [0u8; 11];
    getrandom::getrandom(&mut b).unwrap();
    let mut s = String::new();
    s.push(char::from(ALPHABET[usize::from(b[0]) % 10]));
    for &x in &b[1..] {
        s.push(char::from(ALPHABET[usize::from(x) % 62]));
    }
    KeyId::parse(&s).unwrap()
}

fn org() -> OrgId {
    OrgId::new(format!("pg-test-{:016x}", random_u64()))
}

fn manager_of(org: &OrgId) -> Actor {
    Actor::manager(org.clone(), UserId::new("alice"))
}

/// `DATABASE_URL`, or `None` after saying why the test is skipped. Panics when
/// `API_KEYS_REQUIRE_POSTGRES=1` and the URL is missing.
fn database_url(test: &str) -> Option<tokio_postgres::Config> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            Some(tokio_postgres::Config::from_str(&url).expect("DATABASE_URL does not parse"))
        }
        _ => {
            if std::env::var("API_KEYS_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("API_KEYS_REQUIRE_POSTGRES=1 but DATABASE_URL is not set");
            }
            eprintln!(
                "skipping {test}: DATABASE_URL is not set (source .ci/postgres.sh and run pg_start to get a server)"
            );
            None
        }
    }
}

fn tcp_target(cfg: &tokio_postgres::Config) -> (String, u16) {
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => panic!("the tests need a TCP host in DATABASE_URL"),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    (host, port)
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A `key=value` connection string for `cfg`'s server, named `app`, optionally through a
/// proxy and to another database.
fn conninfo(
    cfg: &tokio_postgres::Config,
    app: &str,
    via: Option<SocketAddr>,
    dbname: Option<&str>,
) -> String {
    let (host, port) = match via {
        Some(a) => (a.ip().to_string(), a.port()),
        None => tcp_target(cfg),
    };
    let mut s = format!(
        "host={} port={port} application_name={}",
        quote(&host),
        quote(app)
    );
    if let Some(u) = cfg.get_user() {
        s += &format!(" user={}", quote(u));
    }
    if let Some(p) = cfg.get_password() {
        s += &format!(" password={}", quote(&String::from_utf8_lossy(p)));
    }
    if let Some(d) = dbname.or(cfg.get_dbname()) {
        s += &format!(" dbname={}", quote(d));
    }
    s
}

fn app(tag: &str) -> String {
    format!("t-{tag}-{:08x}", random_u64() as u32)
}

/// A plain connection for test bookkeeping (pg_stat_activity, pg_terminate_backend, ...).
async fn admin(cfg: &tokio_postgres::Config, dbname: Option<&str>) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &conninfo(cfg, "api-keys-test-admin", None, dbname),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Backends of this database named `name`.
async fn backends(admin: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn wait_for_backends(
    admin: &tokio_postgres::Client,
    name: &str,
    want: usize,
    limit: Duration,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if backends(admin, name).await.len() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn connect(cfg: &tokio_postgres::Config, app: &str) -> PostgresStore {
    PostgresStore::connect_and_migrate(&conninfo(cfg, app, None, None))
        .await
        .unwrap()
}

/// The `PostgresError` behind a `StoreError::Backend`.
fn pg_error(e: &StoreError) -> &PostgresError {
    match e {
        StoreError::Backend(src) => src
            .downcast_ref::<PostgresError>()
            .unwrap_or_else(|| panic!("source is not a PostgresError: {src:?}")),
        other => panic!("expected StoreError::Backend, got {other:?}"),
    }
}

/// The error and all its sources, one per line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!("\n  caused by: {c}");
        cur = c.source();
    }
    s
}

/// A TCP relay in front of the server that can refuse new connections and cut live ones.
struct Proxy {
    addr: SocketAddr,
    accepting: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = Arc::new(AtomicBool::new(true));
        let frozen = Arc::new(AtomicBool::new(false));
        let relays: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (accepting, frozen, relays) = (accepting.clone(), frozen.clone(), relays.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !accepting.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let (upstream, frozen) = (upstream.clone(), frozen.clone());
                    let relay = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(upstream).await {
                            let (ri, wi) = inbound.into_split();
                            let (ro, wo) = outbound.into_split();
                            tokio::join!(pump(ri, wo, frozen.clone()), pump(ro, wi, frozen));
                        }
                    });
                    relays.lock().unwrap().push(relay);
                }
            })
        };
        Proxy {
            addr,
            accepting,
            frozen,
            relays,
            accept,
        }
    }

    /// Holds every byte in both directions (a network that silently stopped), or resumes.
    fn set_frozen(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }

    fn set_accepting(&self, on: bool) {
        self.accepting.store(on, Ordering::SeqCst);
    }

    /// Closes every relayed connection.
    fn cut_all(&self) {
        for r in self.relays.lock().unwrap().drain(..) {
            r.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

/// Copies one direction, holding the bytes while `frozen`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Polls `verify` on `node` until it is refused as revoked; returns how long that took.
async fn time_until_revoked<S: KeyStore + 'static>(
    node: &KeyManager<S>,
    token: &str,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        match node.verify(token, &Scope::Prometheus).await {
            Err(Error::Revoked) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) => panic!("unexpected verification error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

#[tokio::test]
async fn testkit_conforms() {
    let Some(cfg) = database_url("testkit_conforms") else {
        return;
    };
    let store = connect(&cfg, &app("testkit")).await;
    api_keys::testkit::run(&store).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_on_one_node_is_refused_on_another_within_a_second() {
    let Some(cfg) = database_url("a_revoke_on_one_node_is_refused_on_another_within_a_second")
    else {
        return;
    };
    let org = org();
    let admin_actor = manager_of(&org);
    let node_a = KeyManager::builder(connect(&cfg, &app("node-a")).await, keyring())
        .build()
        .unwrap();
    // Node B caches for a minute, and 10 s even without a feed: only the feed can make it
    // notice the revoke within a second.
    let b_store = Arc::new(Observed::new(connect(&cfg, &app("node-b")).await));
    let node_b = KeyManager::builder(b_store.clone(), keyring())
        .cache_ttl(Duration::from_secs(60))
        .cache_fallback_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        b_store.feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("node B's change feed never connected");

    let (key, info) = node_a
        .generate(
            &admin_actor,
            GenerateRequest::new("scraper").scope(Scope::Prometheus),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        node_b
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    assert_eq!(
        node_b.cached_records(),
        1,
        "node B serves the key from its cache"
    );

    let t0 = Instant::now();
    node_a.revoke(&admin_actor, &info.id).await.unwrap();
    let revoke_took = t0.elapsed();
    let seen = time_until_revoked(&node_b, key.expose_secret(), Duration::from_secs(5))
        .await
        .expect("node B still accepted the revoked key after 5 s");
    report(&format!(
        "postgres: revoke on node A took {revoke_took:?}; node B refused the key {seen:?} after the revoke returned"
    ));
    assert!(seen < Duration::from_secs(1), "took {seen:?}");
}

/// Polls `verify` until it gives the wanted outcome, at most `limit`.
async fn until_verify<S: KeyStore + 'static>(
    node: &KeyManager<S>,
    key: &str,
    limit: Duration,
    want: impl Fn(&Result<api_keys::Verified, Error>) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        if want(&node.verify(key, &Scope::Prometheus).await) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Rows changed with plain SQL (a host's own statement, a restore) reach every node's cache
/// through the table's trigger, not only changes this crate makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sql_changes_reach_every_node_within_a_second() {
    let Some(cfg) = database_url("plain_sql_changes_reach_every_node_within_a_second") else {
        return;
    };
    let org = org();
    let actor = manager_of(&org);
    let node_a = KeyManager::builder(connect(&cfg, &app("sql-a")).await, keyring())
        .build()
        .unwrap();
    // Node B would cache for a minute, and 10 s without a feed.
    let b_store = Arc::new(Observed::new(connect(&cfg, &app("sql-b")).await));
    let node_b = KeyManager::builder(b_store.clone(), keyring())
        .cache_ttl(Duration::from_secs(60))
        .cache_fallback_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        b_store.feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("node B's change feed never connected");
    let admin = admin(&cfg, None).await;
    let make = |name: &'static str| {
        node_a.generate(&actor, GenerateRequest::new(name).scope(Scope::Prometheus))
    };
    let (deleted, deleted_info) = make("deleted").await.unwrap();
    let (restored, restored_info) = make("restored").await.unwrap();
    for k in [&deleted, &restored] {
        node_b
            .verify(k.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }

    // An external DELETE.
    admin
        .execute(
            "DELETE FROM api_keys WHERE id = $1",
            &[&deleted_info.id.to_string()],
        )
        .await
        .unwrap();
    let seen_delete = until_verify(
        &node_b,
        deleted.expose_secret(),
        Duration::from_secs(1),
        |r| matches!(r, Err(Error::InvalidKey)),
    )
    .await
    .expect("node B still accepted a key deleted with plain SQL after 1 s");

    // An external UPDATE: a restore of the row as it was before a revoke.
    let id = restored_info.id.to_string();
    let before = admin
        .query_one(
            "SELECT revision, record::text FROM api_keys WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (revision, record): (i64, String) = (before.get(0), before.get(1));
    node_a.revoke(&actor, &restored_info.id).await.unwrap();
    until_verify(
        &node_b,
        restored.expose_secret(),
        Duration::from_secs(1),
        |r| matches!(r, Err(Error::Revoked)),
    )
    .await
    .expect("node B never saw the revoke");
    admin
        .execute(
            "UPDATE api_keys SET revision = $2, record = $3::text::jsonb WHERE id = $1",
            &[&id, &revision, &record],
        )
        .await
        .unwrap();
    let seen_update = until_verify(
        &node_b,
        restored.expose_secret(),
        Duration::from_secs(1),
        Result::is_ok,
    )
    .await
    .expect("node B still refused a key restored with plain SQL after 1 s");
    report(&format!(
        "postgres plain SQL: a DELETE was seen by another node after {seen_delete:?}, an UPDATE after {seen_update:?}"
    ));
}

#[tokio::test]
async fn the_feed_reports_every_committed_change_and_nothing_else() {
    let Some(cfg) = database_url("the_feed_reports_every_committed_change_and_nothing_else") else {
        return;
    };
    let writer = connect(&cfg, &app("feed-writer")).await;
    let watched = connect(&cfg, &app("feed-watch")).await;
    let (spy, log) = Spy::recorder();
    let listener: Arc<dyn ChangeListener> = spy.clone();
    assert!(watched.changes(Arc::downgrade(&listener)));
    wait_until(Duration::from_secs(10), || {
        log.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the feed never connected");

    let org = org();
    let rec = api_keys::testkit::sample_record(random_id(), &org);
    writer.insert(rec.clone()).await.unwrap();
    // Neither a duplicate insert nor a lost CAS nor a touch is a change.
    assert!(matches!(
        writer.insert(rec.clone()).await,
        Err(StoreError::Duplicate)
    ));
    let mut next = rec.clone();
    next.revision = 2;
    next.name = "renamed".into();
    writer.update(next.clone(), 1).await.unwrap();
    assert!(matches!(
        writer.update(next.clone(), 1).await,
        Err(StoreError::Conflict)
    ));
    writer
        .touch(&rec.id, api_keys::time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert!(writer.delete(&rec.id).await.unwrap());
    assert!(!writer.delete(&rec.id).await.unwrap());

    let expected = vec![
        Change {
            id: rec.id,
            revision: 1,
            kind: ChangeKind::Inserted,
        },
        Change {
            id: rec.id,
            revision: 2,
            kind: ChangeKind::Updated,
        },
        Change {
            id: rec.id,
            revision: 0,
            kind: ChangeKind::Deleted,
        },
    ];
    let mine = || -> Vec<Change> {
        log.events()
            .into_iter()
            .filter_map(|e| match e {
                FeedEvent::Changed(c) if c.id == rec.id => Some(c),
                _ => None,
            })
            .collect()
    };
    wait_until(Duration::from_secs(5), || mine().len() >= 3)
        .await
        .unwrap_or_else(|| panic!("feed delivered only {:?}", mine()));
    assert_eq!(mine(), expected);
    drop(spy);
}

#[tokio::test]
async fn the_feed_stops_when_its_listener_is_dropped() {
    let Some(cfg) = database_url("the_feed_stops_when_its_listener_is_dropped") else {
        return;
    };
    let name = app("feed-drop");
    let store = connect(&cfg, &name).await;
    let admin = admin(&cfg, None).await;
    let (spy, log) = Spy::recorder();
    let listener: Arc<dyn ChangeListener> = spy;
    store.changes(Arc::downgrade(&listener));
    wait_until(Duration::from_secs(10), || {
        log.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the feed never connected");
    let feed_name = format!("{name}-feed");
    assert_eq!(backends(&admin, &feed_name).await.len(), 1);
    drop(listener);
    assert!(
        wait_for_backends(&admin, &feed_name, 0, Duration::from_secs(10)).await,
        "the LISTEN connection outlived its listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_loss_falls_back_to_the_short_ttl_and_reconnects() {
    let Some(cfg) = database_url("feed_loss_falls_back_to_the_short_ttl_and_reconnects") else {
        return;
    };
    let admin = admin(&cfg, None).await;
    let org = org();
    let boss = manager_of(&org);
    let node_a = KeyManager::builder(connect(&cfg, &app("loss-a")).await, keyring())
        .build()
        .unwrap();
    // Node B reaches the server through a relay that can refuse new connections, so its
    // feed stays down while its pooled connection keeps working.
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let b_name = app("loss-b");
    let b_store = Arc::new(Observed::new(
        PostgresStore::connect_and_migrate(&conninfo(&cfg, &b_name, Some(proxy.addr), None))
            .await
            .unwrap(),
    ));
    let node_b = KeyManager::builder(b_store.clone(), keyring())
        .cache_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let feed = &b_store.feed;
    wait_until(Duration::from_secs(10), || {
        feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("node B's feed never connected");

    let (key, info) = node_a
        .generate(&boss, GenerateRequest::new("k1").scope(Scope::Prometheus))
        .await
        .unwrap();
    node_b
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(node_b.cached_records(), 1);

    // Kill B's LISTEN backend and keep the feed from reconnecting.
    proxy.set_accepting(false);
    let killed: Vec<bool> = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("{b_name}-feed")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        killed,
        vec![true],
        "exactly one LISTEN backend to terminate"
    );
    let noticed = wait_until(Duration::from_secs(10), || {
        feed.count(&FeedEvent::Disconnected) == 1
    })
    .await
    .expect("the feed loss was never reported");
    assert_eq!(
        node_b.cached_records(),
        0,
        "the cache is flushed on feed loss"
    );

    // Without a feed, node B caches for the fallback TTL (1 s) only.
    node_b
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    node_a.revoke(&boss, &info.id).await.unwrap();
    // The entry expires 1 s after its read began (before the revoke): no verification that
    // begins later than 1 s after the revoke returned is accepted. (Measured by when each
    // verification began, not when the refusal came back: on a loaded machine the store
    // read that finds the revocation can itself take a second or two.)
    let revoked_at = Instant::now();
    let mut last_accepted: Option<Duration> = None;
    let fallback = loop {
        let began = revoked_at.elapsed();
        match node_b.verify(key.expose_secret(), &Scope::Prometheus).await {
            Ok(_) => last_accepted = Some(began),
            Err(Error::Revoked) => break revoked_at.elapsed(),
            Err(e) => panic!("unexpected verification error: {e}"),
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "node B still accepted a revoked key 5 s after its feed dropped"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(
        last_accepted.is_none_or(|t| t < Duration::from_secs(1)),
        "the fallback TTL is 1 s; a verification that began {last_accepted:?} after the revoke was accepted"
    );

    // Let the feed reconnect.
    proxy.set_accepting(true);
    let reconnected = wait_until(Duration::from_secs(15), || {
        feed.count(&FeedEvent::Connected) == 2
    })
    .await
    .expect("the feed never reconnected");
    let events = feed.events();
    let lifecycle: Vec<&FeedEvent> = events
        .iter()
        .filter(|e| !matches!(e, FeedEvent::Changed(_)))
        .collect();
    assert_eq!(
        lifecycle,
        vec![
            &FeedEvent::Connected,
            &FeedEvent::Disconnected,
            &FeedEvent::Connected
        ]
    );

    // With the feed back, a revocation is seen at once again.
    let (key2, info2) = node_a
        .generate(&boss, GenerateRequest::new("k2").scope(Scope::Prometheus))
        .await
        .unwrap();
    node_b
        .verify(key2.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    node_a.revoke(&boss, &info2.id).await.unwrap();
    let via_feed = time_until_revoked(&node_b, key2.expose_secret(), Duration::from_secs(5))
        .await
        .expect("node B still accepted a revoked key after the feed reconnected");
    report(&format!(
        "postgres feed loss: reported {noticed:?} after the LISTEN backend was terminated; a revoke was seen through the fallback TTL after {fallback:?}; the feed reconnected {reconnected:?} after the server was reachable again; a revoke was then seen through the feed after {via_feed:?}"
    ));
    assert!(via_feed < Duration::from_secs(1), "took {via_feed:?}");
}

/// A feed connection that silently stops answering (no reset, no close) is noticed by its
/// heartbeat, reported, and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_feed_is_noticed_by_its_heartbeat() {
    let Some(cfg) = database_url("a_silently_dead_feed_is_noticed_by_its_heartbeat") else {
        return;
    };
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let store =
        PostgresStore::connect_and_migrate(&conninfo(&cfg, &app("silent"), Some(proxy.addr), None))
            .await
            .unwrap();
    let (spy, log) = Spy::recorder();
    let listener: Arc<dyn ChangeListener> = spy;
    store.changes(Arc::downgrade(&listener));
    wait_until(Duration::from_secs(10), || {
        log.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the feed never connected");
    proxy.set_frozen(true);
    // A probe every 2 s that times out after 3 s: noticed within about 5 s.
    let noticed = wait_until(Duration::from_secs(15), || {
        log.count(&FeedEvent::Disconnected) == 1
    })
    .await
    .expect("a silently dead feed connection was never noticed");
    proxy.set_frozen(false);
    let back = wait_until(Duration::from_secs(15), || {
        log.count(&FeedEvent::Connected) == 2
    })
    .await
    .expect("the feed never reconnected");
    report(&format!(
        "postgres silent feed death noticed after {noticed:?}; reconnected {back:?} later"
    ));
}

#[tokio::test]
async fn connection_loss_is_reported_then_recovered_on_the_next_call() {
    let Some(cfg) = database_url("connection_loss_is_reported_then_recovered_on_the_next_call")
    else {
        return;
    };
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let store = PostgresStore::connect_and_migrate(&conninfo(
        &cfg,
        &app("conn-loss"),
        Some(proxy.addr),
        None,
    ))
    .await
    .unwrap();
    let rec = api_keys::testkit::sample_record(random_id(), &org());
    store.insert(rec.clone()).await.unwrap();
    assert_eq!(store.get(&rec.id).await.unwrap().as_ref(), Some(&rec));

    // The server becomes unreachable: live connections are cut, new ones refused.
    proxy.set_accepting(false);
    proxy.cut_all();
    let e = store
        .get(&rec.id)
        .await
        .expect_err("a get with the server unreachable succeeded");
    let pe = pg_error(&e);
    assert!(
        matches!(
            pe.kind(),
            PostgresErrorKind::ConnectionLost | PostgresErrorKind::Connect
        ),
        "{pe:?}"
    );
    assert!(
        std::error::Error::source(pe).is_some(),
        "the driver's error is kept as the source"
    );
    report(&format!(
        "postgres connection loss reported as: {}",
        chain(&e).replace('\n', " |")
    ));

    // Reachable again: the very next call works.
    proxy.set_accepting(true);
    assert_eq!(store.get(&rec.id).await.unwrap().as_ref(), Some(&rec));
}

#[tokio::test]
async fn bad_urls_are_clear_errors() {
    let Some(cfg) = database_url("bad_urls_are_clear_errors") else {
        return;
    };
    // Unparsable, with a password that must not be echoed.
    for url in [
        "postgres://alice:hunter2@localhost:notaport/db",
        "host=localhost password=hunter2 sslmode=sometimes",
        "this is not a connection string at all",
    ] {
        let e = PostgresStore::connect_and_migrate(url)
            .await
            .expect_err(url);
        assert_eq!(pg_error(&e).kind(), PostgresErrorKind::InvalidUrl, "{url}");
        let text = chain(&e);
        assert!(text.contains("invalid PostgreSQL connection URL"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "the error echoes the password: {text}"
        );
    }
    // Nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = PostgresStore::connect_and_migrate(&format!(
        "postgres://postgres:hunter2@127.0.0.1:{port}/x?connect_timeout=5"
    ))
    .await
    .expect_err("connected to a closed port");
    assert_eq!(pg_error(&e).kind(), PostgresErrorKind::Connect);
    assert!(!chain(&e).contains("hunter2"));
    // A real server, a database that does not exist.
    let e = PostgresStore::connect_and_migrate(&conninfo(
        &cfg,
        &app("bad-db"),
        None,
        Some("no_such_database_here"),
    ))
    .await
    .expect_err("connected to a missing database");
    assert_eq!(pg_error(&e).kind(), PostgresErrorKind::Connect);
    let text = chain(&e);
    assert!(text.contains("no_such_database_here"), "{text}");
}

/// On a fresh database: nodes starting together migrate once, without errors; a schema
/// newer than this crate's is refused and left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_database_concurrent_migration_and_newer_schema() {
    let Some(cfg) = database_url("fresh_database_concurrent_migration_and_newer_schema") else {
        return;
    };
    let admin = admin(&cfg, None).await;
    let db = format!("api_keys_t_{:016x}", random_u64());
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let url = conninfo(&cfg, &app("fresh"), None, Some(&db));
    let nodes: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect_and_migrate(&url).await })
        })
        .collect();
    for n in nodes {
        let store = n.await.unwrap().unwrap();
        assert_eq!(store.schema_version().await.unwrap(), 3);
    }
    let in_db = admin_db(&cfg, &db).await;
    in_db
        .batch_execute("UPDATE api_keys_schema SET version = 9")
        .await
        .unwrap();
    let e = PostgresStore::connect_and_migrate(&url)
        .await
        .expect_err("a newer schema was accepted");
    assert_eq!(
        pg_error(&e).kind(),
        PostgresErrorKind::NewerSchema {
            found: 9,
            supported: 3
        }
    );
    assert!(chain(&e).contains("upgrade api-keys"));
    let v: i32 = in_db
        .query_one("SELECT version FROM api_keys_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 9);
    drop(in_db);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

async fn admin_db(cfg: &tokio_postgres::Config, db: &str) -> tokio_postgres::Client {
    admin(cfg, Some(db)).await
}

/// Node B reads a record, node A revokes it and B hears of it, then B's read returns: B must
/// not cache what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_racing_a_remote_revoke_does_not_cache_the_old_record() {
    let Some(cfg) = database_url("a_lookup_racing_a_remote_revoke_does_not_cache_the_old_record")
    else {
        return;
    };
    let org = org();
    let boss = manager_of(&org);
    let node_a = KeyManager::builder(connect(&cfg, &app("race-a")).await, keyring())
        .build()
        .unwrap();
    let b_store = Arc::new(Observed::new(connect(&cfg, &app("race-b")).await));
    let node_b = KeyManager::builder(b_store.clone(), keyring())
        .cache_ttl(Duration::from_secs(60))
        .cache_fallback_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        b_store.feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("node B's feed never connected");
    let (key, info) = node_a
        .generate(&boss, GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();

    b_store.gate.arm();
    let racing = {
        let (node_b, token) = (node_b.clone(), key.expose_secret().to_string());
        tokio::spawn(async move { node_b.verify(&token, &Scope::Prometheus).await })
    };
    b_store.gate.reached().await; // B holds the pre-revoke record
    node_a.revoke(&boss, &info.id).await.unwrap();
    wait_until(Duration::from_secs(5), || {
        b_store.feed.events().iter().any(|e| {
            matches!(e, FeedEvent::Changed(c) if c.id == info.id && c.kind == ChangeKind::Updated)
        })
    })
    .await
    .expect("node B never heard of the revoke");
    b_store.gate.release();
    racing.await.unwrap().unwrap(); // began before the revoke: may succeed
    assert!(matches!(
        node_b.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

/// Hardening: a `sak` and a `sap` manager over one PostgreSQL table never accept each other's
/// keys, not even a `sak` token re-prefixed as `sap_` with its public checksum recomputed.
#[tokio::test]
async fn two_key_classes_in_one_table_never_accept_each_other() {
    let Some(cfg) = database_url("two_key_classes_in_one_table_never_accept_each_other") else {
        return;
    };
    let sak = KeyManager::builder(connect(&cfg, &app("sak")).await, keyring())
        .prefix("sak")
        .build()
        .unwrap();
    let sap = KeyManager::builder(connect(&cfg, &app("sap")).await, keyring())
        .prefix("sap")
        .build()
        .unwrap();
    let org = org();
    let a = manager_of(&org);
    let (key, info) = sak
        .generate(&a, GenerateRequest::new("system").scope(Scope::Scim))
        .await
        .unwrap();
    let (_, pool) = sap
        .generate(&a, GenerateRequest::new("pool").scope(Scope::Scim))
        .await
        .unwrap();
    let t = key.expose_secret();
    let moved = common::fix_checksum(&format!("sap_{}", &t[4..t.len() - 6]));
    assert!(matches!(
        sap.verify(&moved, &Scope::Scim).await,
        Err(Error::InvalidKey)
    ));
    let ids: Vec<KeyId> = sap.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(ids, vec![pool.id]);
    assert!(matches!(
        sap.delete(&a, &info.id).await,
        Err(Error::NotFound)
    ));
    sak.verify(t, &Scope::Scim).await.unwrap();
}

/// Hardening: a row damaged with plain SQL fails closed and is reported, but `list`,
/// `generate` and its own `delete` keep working, and the test kit's duty holds.
#[tokio::test]
async fn one_bad_row_never_blocks_an_organization() {
    let Some(cfg) = database_url("one_bad_row_never_blocks_an_organization") else {
        return;
    };
    let store = connect(&cfg, &app("damaged")).await;
    let sql = admin(&cfg, None).await;
    let damage = |id: KeyId| {
        let sql = &sql;
        async move {
            sql.execute(
                "UPDATE api_keys SET revision = revision + 7 WHERE id = $1",
                &[&id.to_string()],
            )
            .await
            .unwrap();
        }
    };
    api_keys::testkit::damaged_rows_stay_deletable(&store, damage)
        .await
        .unwrap();
    let m = KeyManager::builder(store, keyring()).build().unwrap();
    let org = org();
    let a = manager_of(&org);
    let prom = || GenerateRequest::new("k").scope(Scope::Prometheus);
    let (bad_key, bad) = m.generate(&a, prom()).await.unwrap();
    let (_, good) = m.generate(&a, prom()).await.unwrap();
    damage(bad.id).await;
    let cold = KeyManager::builder(connect(&cfg, &app("damaged2")).await, keyring())
        .build()
        .unwrap();
    assert!(matches!(
        cold.verify(bad_key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Integrity)
    ));
    let ids: Vec<KeyId> = cold.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(ids, vec![good.id]);
    cold.generate(&a, prom()).await.unwrap();
    cold.delete(&a, &bad.id).await.unwrap();
    assert!(cold.store().get(&bad.id).await.unwrap().is_none());
}

/// Last use never holds up a verify: with writes to the table blocked
/// (`LOCK TABLE ... IN EXCLUSIVE MODE` from another connection, reads still allowed),
/// verifies of never-used keys complete and none fails, although the batched last-use
/// write is stuck; the uses are written once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_do_not_wait_on_last_use_while_writes_are_blocked() {
    let Some(cfg) = database_url("verifies_do_not_wait_on_last_use_while_writes_are_blocked")
    else {
        return;
    };
    let org = org();
    let actor = manager_of(&org);
    let node = KeyManager::builder(connect(&cfg, &app("locked")).await, keyring())
        .last_use_flush_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut keys = Vec::new();
    for i in 0..12 {
        let (k, info) = node
            .generate(
                &actor,
                GenerateRequest::new(format!("k{i}")).scope(Scope::Prometheus),
            )
            .await
            .unwrap();
        keys.push((k, info.id));
    }
    let mut locker = admin(&cfg, None).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE api_keys IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    for (k, _) in &keys {
        // Before, an unused key's verify waited on its last-use write for as long as the
        // lock was held, and stuck writes then starved the pool.
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            node.verify(k.expose_secret(), &Scope::Prometheus),
        )
        .await
        .expect("a verify waited on the blocked last-use write");
        r.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let id0 = keys[0].1.to_string();
    let before: Option<i64> = admin(&cfg, None)
        .await
        .query_one("SELECT last_used_at FROM api_keys WHERE id = $1", &[&id0])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, None, "the write went through despite the lock");
    tx.rollback().await.unwrap();
    let check = admin(&cfg, None).await;
    let ids: Vec<String> = keys.iter().map(|(_, id)| id.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = check
            .query_one(
                "SELECT count(*) FROM api_keys WHERE id = ANY($1) AND last_used_at IS NOT NULL",
                &[&ids],
            )
            .await
            .unwrap()
            .get(0);
        if n == ids.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "last uses never reached the table"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report(&format!(
        "postgres writes blocked by LOCK TABLE: {} verifies of unused keys took {took:?} in all (with 50 ms pauses), none failed",
        keys.len()
    ));
}

/// `connect` only checks the schema; `migrate` is its own step; a role with nothing but
/// SELECT/INSERT/UPDATE/DELETE on the tables (and SELECT on the version table) then runs
/// everything: the conformance suite, the change feed, a manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_role_connects_after_migrate_ran_as_the_owner() {
    let Some(cfg) = database_url("a_least_privilege_role_connects_after_migrate_ran_as_the_owner")
    else {
        return;
    };
    let admin = admin(&cfg, None).await;
    let tag = format!("{:016x}", random_u64());
    let db = format!("api_keys_lp_{tag}");
    let role = format!("api_keys_app_{tag}");
    for sql in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE ROLE {role} LOGIN PASSWORD 'app-secret'"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let owner_url = conninfo(&cfg, &app("owner"), None, Some(&db));
    let mut app_cfg = cfg.clone();
    app_cfg.user(&role).password("app-secret");
    let app_url = conninfo(&app_cfg, &app("least"), None, Some(&db));

    // Before migrate: connect refuses, changing nothing.
    let e = PostgresStore::connect(&owner_url)
        .await
        .expect_err("connect accepted a database without the schema");
    assert_eq!(
        pg_error(&e).kind(),
        PostgresErrorKind::SchemaOutdated {
            found: 0,
            required: 3
        }
    );
    assert!(
        chain(&e).contains("run PostgresStore::migrate"),
        "{}",
        chain(&e)
    );
    let in_db = admin_db(&cfg, &db).await;
    let tables: i64 = in_db
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'api_keys%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "connect created tables");
    // The least-privilege role cannot migrate.
    assert!(PostgresStore::migrate(&app_url).await.is_err());

    PostgresStore::migrate(&owner_url).await.unwrap();
    in_db
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {db} TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT ON api_keys_schema TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON api_keys TO {role};"
        ))
        .await
        .unwrap();
    let store = PostgresStore::connect(&app_url).await.unwrap();
    api_keys::testkit::run(&store).await.unwrap();
    // Migrating a current schema changes nothing, so the role may call it too.
    PostgresStore::connect_and_migrate(&app_url).await.unwrap();
    let feed_store = Arc::new(Observed::new(store.clone()));
    let m = KeyManager::builder(feed_store.clone(), keyring())
        .build()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        feed_store.feed.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the least-privilege role's change feed never connected");
    let org = org();
    let (key, _) = m
        .generate(
            &manager_of(&org),
            GenerateRequest::new("k").scope(Scope::Prometheus),
        )
        .await
        .unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    drop((m, feed_store, store, in_db));
    for sql in [
        format!("DROP DATABASE {db} WITH (FORCE)"),
        format!("DROP ROLE {role}"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
}

/// A pool wait and a statement timeout are each their own error kind, not "cannot connect".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_statement_timeouts_are_their_own_error_kinds() {
    let Some(cfg) = database_url("pool_and_statement_timeouts_are_their_own_error_kinds") else {
        return;
    };
    let name = app("timeouts");
    let store = PostgresStore::options()
        .pool_size(1)
        .statement_timeout(Duration::from_secs(2))
        .pool_wait_timeout(Duration::from_millis(300))
        .connect_and_migrate(&conninfo(&cfg, &name, None, None))
        .await
        .unwrap();
    let org = org();
    let mut locker = admin(&cfg, None).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // The store's only connection waits on the lock ...
    let listing = tokio::spawn({
        let store = store.clone();
        let org = org.clone();
        async move { store.list(&org).await }
    });
    let watcher = admin(&cfg, None).await;
    let waiting = async {
        loop {
            let n: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&name],
                )
                .await
                .unwrap()
                .get(0);
            if n == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the listing never waited on the lock");
    // ... so another call times out waiting for the pool,
    let e = store
        .get(&random_id())
        .await
        .expect_err("a call got a connection from a full pool");
    assert_eq!(
        pg_error(&e).kind(),
        PostgresErrorKind::PoolTimeout,
        "{}",
        chain(&e)
    );
    assert!(chain(&e).contains("waiting for a free PostgreSQL connection"));
    // ... and the stuck statement is cancelled by the statement timeout.
    let e = listing
        .await
        .unwrap()
        .expect_err("the listing finished despite the lock");
    assert_eq!(
        pg_error(&e).kind(),
        PostgresErrorKind::StatementTimeout,
        "{}",
        chain(&e)
    );
    tx.rollback().await.unwrap();
    // The connection is usable again.
    store.list(&org).await.unwrap();
}

/// A `key=value` string with an unquoted space in the password: the driver's parse error
/// quotes the next word, so it is never passed on.
#[tokio::test]
async fn a_malformed_connection_string_never_echoes_the_password() {
    let Some(cfg) = database_url("a_malformed_connection_string_never_echoes_the_password") else {
        return;
    };
    let (host, port) = tcp_target(&cfg);
    let url = format!(
        "host={host} port={port} user=postgres password=correct Horse battery=staple dbname=x"
    );
    let e = PostgresStore::connect(&url)
        .await
        .expect_err("a malformed string was accepted");
    assert_eq!(pg_error(&e).kind(), PostgresErrorKind::InvalidUrl);
    let text = format!("{}\n{e:?}", chain(&e));
    for word in ["correct", "Horse", "battery", "staple"] {
        assert!(
            !text.contains(word),
            "the error echoes part of the password ({word}): {text}"
        );
    }
}

/// A store in a table of its own: its own schema table, trigger and change channel; keys of
/// the default table are not there, and a revoke reaches another node through its channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_a_table_of_its_own() {
    let Some(cfg) = database_url("a_store_in_a_table_of_its_own") else {
        return;
    };
    let url = conninfo(&cfg, &app("table"), None, None);
    let table = format!("keys_{:08x}", random_u64() as u32);
    let opts = PostgresStore::options().table(&table);
    let store = opts.connect_and_migrate(&url).await.unwrap();
    assert_eq!(store.table(), table);
    api_keys::testkit::run(&store).await.unwrap();
    let node_a = KeyManager::builder(store, keyring()).build().unwrap();
    let node_b = KeyManager::builder(opts.connect(&url).await.unwrap(), keyring())
        .build()
        .unwrap();
    let default = KeyManager::builder(connect(&cfg, &app("default")).await, keyring())
        .build()
        .unwrap();
    let org = org();
    let a = manager_of(&org);
    let (key, info) = node_a
        .generate(&a, GenerateRequest::new("own").scope(Scope::Scim))
        .await
        .unwrap();
    assert!(default.list(&a).await.unwrap().is_empty());
    assert!(matches!(
        default.verify(key.expose_secret(), &Scope::Scim).await,
        Err(Error::InvalidKey)
    ));
    node_b
        .verify(key.expose_secret(), &Scope::Scim)
        .await
        .unwrap();
    node_a.revoke(&a, &info.id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match node_b.verify(key.expose_secret(), &Scope::Scim).await {
            Err(Error::Revoked) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            other => panic!("the revoke did not reach the other node within 1 s: {other:?}"),
        }
    }
    let e = PostgresStore::options()
        .table("Bad-Name")
        .connect(&url)
        .await
        .unwrap_err();
    assert_eq!(pg_error(&e).kind(), PostgresErrorKind::InvalidTable);
}

// ---------------------------------------------------------------- frozen servers, replica mode, truncate, names

/// a call on a connection whose server stopped answering (a frozen server, a
/// half-open socket) must end within the statement timeout, not hang forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_does_not_hang_a_read_forever() {
    let Some(cfg) = database_url("a_frozen_server_does_not_hang_a_read_forever") else {
        return;
    };
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let store = PostgresStore::options()
        .statement_timeout(Duration::from_secs(1))
        .pool_wait_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(2))
        .connect_and_migrate(&conninfo(&cfg, &app("frozen-pool"), Some(proxy.addr), None))
        .await
        .unwrap();
    let rec = api_keys::testkit::sample_record(random_id(), &org());
    store.insert(rec.clone()).await.unwrap();
    assert!(store.get(&rec.id).await.unwrap().is_some());
    proxy.set_frozen(true);
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), store.get(&rec.id)).await;
    proxy.set_frozen(false);
    assert!(
        r.is_ok(),
        "store.get against a frozen server was still pending after {:?} (statement_timeout 1 s, pool wait 1 s, connect timeout 2 s)",
        started.elapsed()
    );
}

/// the user-visible side: a warm key on a node that opted into
/// `serve_stale_while_store_unreachable` must keep verifying (or fail) when the database
/// freezes; it must not hang the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_does_not_hang_when_the_database_freezes() {
    let Some(cfg) = database_url("verify_does_not_hang_when_the_database_freezes") else {
        return;
    };
    let org = org();
    let boss = manager_of(&org);
    let proxy = Proxy::start(tcp_target(&cfg)).await;
    let store = PostgresStore::options()
        .statement_timeout(Duration::from_secs(1))
        .pool_wait_timeout(Duration::from_secs(1))
        .connect_and_migrate(&conninfo(
            &cfg,
            &app("frozen-verify"),
            Some(proxy.addr),
            None,
        ))
        .await
        .unwrap();
    let node = KeyManager::builder(store, keyring())
        .cache_fallback_ttl(Duration::from_secs(1))
        .serve_stale_while_store_unreachable(Duration::from_secs(600))
        .build()
        .unwrap();
    let (key, _) = node
        .generate(&boss, GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    proxy.set_frozen(true);
    // Past the last proof + the fallback TTL: the verify now asks the store.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        node.verify(key.expose_secret(), &Scope::Prometheus),
    )
    .await;
    proxy.set_frozen(false);
    match r {
        Ok(res) => eprintln!(
            "verify ended after {:?}: {:?}",
            started.elapsed(),
            res.map(|_| ())
        ),
        Err(_) => panic!(
            "verify of a warm key was still pending after {:?} with the database frozen (statement_timeout 1 s, serve_stale 600 s)",
            started.elapsed()
        ),
    }
}

/// a change made in a session with `session_replication_role = replica` (logical
/// replication's apply worker, `pg_restore`/bulk loads that set it) commits without a
/// notification, while the feed keeps proving itself live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_in_replica_mode_reaches_the_feed() {
    let Some(cfg) = database_url("a_delete_in_replica_mode_reaches_the_feed") else {
        return;
    };
    let store = connect(&cfg, &app("replica")).await;
    let (spy, log) = Spy::recorder();
    let listener: Arc<dyn ChangeListener> = spy;
    store.changes(Arc::downgrade(&listener));
    wait_until(Duration::from_secs(10), || {
        log.count(&FeedEvent::Connected) == 1
    })
    .await
    .expect("the feed never connected");
    let rec = api_keys::testkit::sample_record(random_id(), &org());
    store.insert(rec.clone()).await.unwrap();
    let admin = admin(&cfg, None).await;
    admin
        .batch_execute(&format!(
            "SET session_replication_role = replica; DELETE FROM api_keys WHERE id = '{}'",
            rec.id
        ))
        .await
        .unwrap();
    assert!(
        store.get(&rec.id).await.unwrap().is_none(),
        "the row is gone"
    );
    let heard = wait_until(Duration::from_secs(3), || {
        log.events().iter().any(|e| {
            matches!(e, FeedEvent::Changed(c) if c.id == rec.id && c.kind == ChangeKind::Deleted)
        })
    })
    .await;
    let events = log.events();
    assert!(
        heard.is_some(),
        "a committed DELETE was never reported; feed still live: connected={} disconnected={}",
        events
            .iter()
            .filter(|e| **e == FeedEvent::Connected)
            .count(),
        events
            .iter()
            .filter(|e| **e == FeedEvent::Disconnected)
            .count()
    );
}

/// `table()` documents `[a-z_][a-z0-9_]{0,47}` as the valid names and
/// `InvalidTable` for any other; a reserved word inside that pattern is accepted and then
/// breaks the migration with a syntax error.
#[tokio::test]
async fn a_table_name_the_pattern_accepts_works_or_is_invalid_table() {
    let Some(cfg) = database_url("a_table_name_the_pattern_accepts_works_or_is_invalid_table")
    else {
        return;
    };
    let url = conninfo(&cfg, &app("reserved"), None, None);
    for name in ["order", "user", "table"] {
        match PostgresStore::options()
            .table(name)
            .connect_and_migrate(&url)
            .await
        {
            Ok(_) => {}
            Err(e) => assert_eq!(
                pg_error(&e).kind(),
                PostgresErrorKind::InvalidTable,
                "table({name:?}): {}",
                chain(&e).replace('\n', " |")
            ),
        }
    }
}

/// a TRUNCATE (notified as `reset`) deletes every key, but the other node keeps
/// accepting a warm key from its cache for up to the fallback TTL: nothing is invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_is_seen_at_once_by_a_warm_node() {
    let Some(cfg) = database_url("a_truncate_is_seen_at_once_by_a_warm_node") else {
        return;
    };
    let url = conninfo(&cfg, &app("truncate"), None, None);
    let table = format!("keys_{:08x}", random_u64() as u32);
    let opts = PostgresStore::options().table(&table);
    let node_a = KeyManager::builder(opts.connect_and_migrate(&url).await.unwrap(), keyring())
        .build()
        .unwrap();
    let node_b = KeyManager::builder(opts.connect(&url).await.unwrap(), keyring())
        .build()
        .unwrap();
    let org = org();
    let (key, _) = node_a
        .generate(
            &manager_of(&org),
            GenerateRequest::new("t").scope(Scope::Scim),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    node_b
        .verify(key.expose_secret(), &Scope::Scim)
        .await
        .unwrap();
    let admin = admin(&cfg, None).await;
    admin
        .batch_execute(&format!("TRUNCATE {table}"))
        .await
        .unwrap();
    let truncated = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut accepted = 0;
    while truncated.elapsed() < Duration::from_millis(2000) {
        match node_b.verify(key.expose_secret(), &Scope::Scim).await {
            Ok(_) => accepted += 1,
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        accepted,
        0,
        "a key deleted by TRUNCATE was accepted {accepted} times, until {:?} after the TRUNCATE",
        truncated.elapsed()
    );
}

/// the migration's `CREATE OR REPLACE FUNCTION <table>_notify()` silently replaces a
/// host function of that name (e.g. table `audit` and the host's own `audit_notify()`).
#[tokio::test]
async fn migration_does_not_replace_a_host_function() {
    let Some(cfg) = database_url("migration_does_not_replace_a_host_function") else {
        return;
    };
    let admin = admin(&cfg, None).await;
    let table = format!("host_{:08x}", random_u64() as u32);
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_notify('host_channel', 'host'); RETURN NULL; END $$;"
        ))
        .await
        .unwrap();
    let r = PostgresStore::options()
        .table(&table)
        .connect_and_migrate(&conninfo(&cfg, &app("clobber"), None, None))
        .await;
    let body: String = admin
        .query_one(
            "SELECT prosrc FROM pg_proc WHERE proname = $1",
            &[&format!("{table}_notify")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        r.is_err() || body.contains("host_channel"),
        "migration succeeded and replaced the host's {table}_notify(): now {}",
        body.trim().lines().next().unwrap_or("")
    );
}

/// A statement the driver refuses to encode (a column whose type was changed by hand) is
/// `Query`, not `ConnectionLost` ("the next call uses a new connection"), which would send an
/// operator to the network instead of the schema.
#[tokio::test]
async fn an_encoding_error_is_not_reported_as_connection_lost() {
    let Some(cfg) = database_url("an_encoding_error_is_not_reported_as_connection_lost") else {
        return;
    };
    let table = format!("drift_{:08x}", random_u64() as u32);
    let store = PostgresStore::options()
        .table(&table)
        .connect_and_migrate(&conninfo(&cfg, &app("drift"), None, None))
        .await
        .unwrap();
    let admin = admin(&cfg, None).await;
    admin
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN last_used_at TYPE integer"
        ))
        .await
        .unwrap();
    let rec = api_keys::testkit::sample_record(random_id(), &org());
    let e = store.insert(rec).await.unwrap_err();
    assert_eq!(
        pg_error(&e).kind(),
        PostgresErrorKind::Query,
        "{}",
        chain(&e).replace('\n', " |")
    );
}
