//! SqliteStore: conformance, restart, crash safety (SIGKILL), clear errors.

mod common;
mod store_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use api_keys::time::Duration as TimeDuration;
use api_keys::{
    Actor, AuditAction, AuditEvent, AuditSink, BoxError, Error, GenerateRequest, KeyId, KeyManager,
    KeyStatus, KeyStore, Keyring, MasterKey, OrgId, Scope, SqliteError, SqliteErrorKind,
    SqliteStore, StoreError, UserId,
};
use std::sync::Mutex;
use store_support::{Observed, report};

const MASTER: [u8; 16] = *b"sqlite-test-key!";
const CHILD_ENV: &str = "API_KEYS_CRASH_CHILD_DB";
const CHILD_KEYS: usize = 1000;
const CHILD_ORGS: usize = 20;

fn keyring() -> Keyring {
    Keyring::new(1, MasterKey::from_bytes(MASTER))
}

fn alice() -> Actor {
    Actor::manager(OrgId::new("acme"), UserId::new("alice"))
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).unwrap();
        let p = std::env::temp_dir().join(format!(
            "api-keys-{tag}-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(b)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An audit sink that keeps every event.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<AuditEvent>>>);

impl AuditSink for Recorder {
    fn record(&self, event: &AuditEvent) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

impl Recorder {
    fn integrity_failures(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e.action, AuditAction::IntegrityFailure))
            .count()
    }
}

fn manager<S: KeyStore + 'static>(store: S) -> KeyManager<S> {
    KeyManager::builder(store, keyring()).build().unwrap()
}

/// The `SqliteError` behind a `StoreError::Backend`.
fn sqlite_error(e: &StoreError) -> &SqliteError {
    match e {
        StoreError::Backend(src) => src
            .downcast_ref::<SqliteError>()
            .unwrap_or_else(|| panic!("source is not a SqliteError: {src:?}")),
        other => panic!("expected StoreError::Backend, got {other:?}"),
    }
}

fn open_err(path: &Path) -> StoreError {
    match SqliteStore::open(path) {
        Ok(s) => panic!("opening {} succeeded: {s:?}", path.display()),
        Err(e) => e,
    }
}

#[tokio::test]
async fn testkit_conforms() {
    let dir = TempDir::new("testkit");
    let store = SqliteStore::open(dir.path("keys.db")).unwrap();
    api_keys::testkit::run(&store).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 1);
    let path = dir.path("keys.db");
    api_keys::testkit::damaged_rows_stay_deletable(&store, |id| async move {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE api_keys SET revision = revision + 7 WHERE id = ?1",
            [id.to_string()],
        )
        .unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn keys_survive_a_restart() {
    let dir = TempDir::new("restart");
    let path = dir.path("keys.db");
    let (key, info) = {
        let m = manager(SqliteStore::open(&path).unwrap());
        let out = m
            .generate(
                &alice(),
                GenerateRequest::new("scraper").scope(Scope::Prometheus),
            )
            .await
            .unwrap();
        m.verify(out.0.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        out
        // manager and store dropped here: the connection is closed
    };
    let m = manager(SqliteStore::open(&path).unwrap());
    let v = m
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    assert_eq!(*v.key_id(), info.id);
    let listed = m.list(&alice()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, info.id);
    assert_eq!(listed[0].name, "scraper");
    // A revocation also survives.
    m.revoke(&alice(), &info.id).await.unwrap();
    drop(m);
    let m = manager(SqliteStore::open(&path).unwrap());
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
    assert_eq!(
        m.get(&alice(), &info.id).await.unwrap().status,
        KeyStatus::Revoked
    );
}

/// The child half of `crash_safety`: generates keys and reports each one on stdout once
/// `generate` has returned. Run only by `crash_safety` (which sets the variable).
#[tokio::test]
#[ignore = "the child process of crash_safety; runs only when started by it"]
async fn crash_child_process() {
    use std::io::Write;
    let path = std::env::var(CHILD_ENV)
        .expect("crash_child_process is started by crash_safety with API_KEYS_CRASH_CHILD_DB");
    let m = manager(SqliteStore::open(&path).unwrap());
    let mut out = std::io::stdout().lock();
    for i in 0..CHILD_KEYS {
        let actor = Actor::manager(
            OrgId::new(format!("org-{}", i % CHILD_ORGS)),
            UserId::new("crash-test"),
        );
        let (key, info) = m
            .generate(
                &actor,
                GenerateRequest::new(format!("key {i}")).scope(Scope::Prometheus),
            )
            .await
            .unwrap();
        // One write per line, flushed: the parent sees whole lines of returned keys only.
        writeln!(out, "KEY {} {}", info.id, key.expose_secret()).unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test]
async fn crash_safety() {
    let dir = TempDir::new("crash");
    let path = dir.path("keys.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let kill_after = 250;
    let started = Instant::now();
    let mut reported: Vec<(KeyId, String)> = Vec::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("KEY ") else {
            continue;
        };
        let (id, token) = rest
            .split_once(' ')
            .expect("a KEY line has an id and a token");
        reported.push((KeyId::parse(id).unwrap(), token.to_string()));
        if !killed && reported.len() == kill_after {
            // SIGKILL in the middle of the run; lines already in the pipe are still read.
            child.kill().unwrap();
            killed = true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the child took too long"
        );
    }
    let status = child.wait().unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the child was not killed part way: {status:?} after {} keys",
            reported.len()
        );
    }
    assert!(reported.len() >= kill_after && reported.len() < CHILD_KEYS);

    // The file opens (WAL recovery), with the schema intact.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 1);
    // SQLite's own check of the file.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    let audit = Recorder::default();
    let m = KeyManager::builder(store, keyring())
        .audit(audit.clone())
        .build()
        .unwrap();
    // Every key whose generate returned verifies.
    for (id, token) in &reported {
        let v = m
            .verify(token, &Scope::Prometheus)
            .await
            .unwrap_or_else(|e| panic!("reported key {id} does not verify: {e}"));
        assert_eq!(v.key_id(), id);
    }
    // No stored record fails its integrity check: a full scan opens each one.
    let all = m.expiring_all(TimeDuration::days(36_500)).await.unwrap();
    assert_eq!(audit.integrity_failures(), 0);
    let rewrap = m.rewrap().await.unwrap();
    assert_eq!(rewrap.failed, 0, "{rewrap:?}");
    assert_eq!(rewrap.rewrapped, 0);
    assert_eq!(rewrap.already_current, all.len());
    // Every reported key is stored; at most the one in flight was stored unreported.
    assert!(
        all.len() >= reported.len() && all.len() <= reported.len() + 1,
        "{} stored, {} reported",
        all.len(),
        reported.len()
    );
    report(&format!(
        "sqlite crash safety: child SIGKILLed after {} reported keys; {} records stored, all authentic; every reported key verifies",
        reported.len(),
        all.len()
    ));
}

#[test]
fn missing_directory_is_a_clear_error() {
    let dir = TempDir::new("badpath");
    let path = dir.path("no/such/dir/keys.db");
    let e = open_err(&path);
    let se = sqlite_error(&e);
    assert_eq!(se.kind(), SqliteErrorKind::CannotOpen);
    assert_eq!(se.path(), path);
    let msg = se.to_string();
    assert!(
        msg.contains("cannot open") && msg.contains("no/such/dir/keys.db"),
        "{msg}"
    );
}

#[test]
fn a_directory_is_not_a_store() {
    let dir = TempDir::new("isdir");
    let e = open_err(&dir.0);
    assert_eq!(sqlite_error(&e).kind(), SqliteErrorKind::CannotOpen);
}

#[test]
fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = TempDir::new("notdb");
    let path = dir.path("notes.txt");
    let content = "These are my notes, not a database. ".repeat(200);
    std::fs::write(&path, &content).unwrap();
    let e = open_err(&path);
    let se = sqlite_error(&e);
    assert_eq!(se.kind(), SqliteErrorKind::NotADatabase, "{se}");
    assert!(se.to_string().contains("is not a SQLite database"), "{se}");
    assert!(std::error::Error::source(se).is_some());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
}

/// A key store file damaged on disk (here: cut in half, as a failed copy leaves it) is
/// `NotADatabase`, as documented, not a failed statement to retry.
#[tokio::test]
async fn a_damaged_file_is_refused_as_damaged() {
    let dir = TempDir::new("damaged-file");
    let path = dir.path("keys.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        for i in 0..300u64 {
            let id = KeyId::parse(&format!("{:011}", i * 7 + 1)).unwrap();
            let mut r = api_keys::testkit::sample_record(id, &OrgId::new(format!("org{}", i % 5)));
            r.meta.insert("m".into(), "v".repeat(300));
            store.insert(r).await.unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 100_000, "{}", bytes.len());
    bytes.truncate(bytes.len() / 2 + 100);
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(&path);
    let se = sqlite_error(&e);
    assert_eq!(se.kind(), SqliteErrorKind::NotADatabase, "{se} ({se:?})");
}

#[tokio::test]
async fn a_read_only_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("readonly");
    let path = dir.path("keys.db");
    {
        let m = manager(SqliteStore::open(&path).unwrap());
        m.generate(&alice(), GenerateRequest::new("k").scope(Scope::Prometheus))
            .await
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let e = open_err(&path);
    let se = sqlite_error(&e);
    assert_eq!(se.kind(), SqliteErrorKind::ReadOnly, "{se}");
    assert!(se.to_string().contains("read-only"), "{se}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    SqliteStore::open(&path).unwrap();
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let dir = TempDir::new("newer");
    let path = dir.path("keys.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE api_keys_schema SET version = 7", [])
            .unwrap();
    }
    let e = open_err(&path);
    let se = sqlite_error(&e);
    assert_eq!(
        se.kind(),
        SqliteErrorKind::NewerSchema {
            found: 7,
            supported: 1
        }
    );
    assert!(se.to_string().contains("upgrade api-keys"), "{se}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("SELECT version FROM api_keys_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 7);
}

#[tokio::test]
async fn shares_a_file_with_the_hosts_own_tables() {
    let dir = TempDir::new("shared");
    let path = dir.path("app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('alice');")
            .unwrap();
    }
    let m = manager(SqliteStore::open(&path).unwrap());
    let (key, _) = m
        .generate(&alice(), GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    m.verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let name: String = conn
        .query_row("SELECT name FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "alice");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn last_use_lives_in_its_own_column() {
    let dir = TempDir::new("touch");
    let path = dir.path("keys.db");
    let store = SqliteStore::open(&path).unwrap();
    let org = OrgId::new("acme");
    let rec = api_keys::testkit::sample_record(KeyId::parse("0000000000A").unwrap(), &org);
    store.insert(rec.clone()).await.unwrap();
    let at = api_keys::time::OffsetDateTime::from_unix_timestamp(1_720_000_000).unwrap();
    store.touch(&rec.id, at).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (col, json): (Option<i64>, String) = conn
        .query_row(
            "SELECT last_used_at, record FROM api_keys WHERE id = '0000000000A'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(col, Some(1_720_000_000));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["last_used_at"].is_null(), "{json}");
    assert_eq!(
        store.get(&rec.id).await.unwrap().unwrap().last_used_at,
        Some(at)
    );
}

/// Rows damaged in the database (an index column that disagrees with the JSON, JSON that does
/// not decode) fail closed and are reported by id, but never block `list`, `generate`,
/// `rewrap` or their own `delete`.
#[tokio::test]
async fn one_bad_row_never_blocks_an_organization_or_a_rotation() {
    let dir = TempDir::new("damaged");
    let path = dir.path("keys.db");
    let m = manager(SqliteStore::open(&path).unwrap());
    let a = alice();
    let prom = || GenerateRequest::new("k").scope(Scope::Prometheus);
    let (bad_key, bad) = m.generate(&a, prom()).await.unwrap();
    let (broken_key, broken) = m.generate(&a, prom()).await.unwrap();
    let (good_key, good) = m.generate(&a, prom()).await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        // The revision column no longer matches its JSON.
        conn.execute(
            "UPDATE api_keys SET revision = revision + 1 WHERE id = ?1",
            [bad.id.to_string()],
        )
        .unwrap();
        // JSON that does not decode at all.
        conn.execute(
            "UPDATE api_keys SET record = '{\"format\": 2, \"secret\": \"x' WHERE id = ?1",
            [broken.id.to_string()],
        )
        .unwrap();
    }
    let events = Recorder::default();
    let m = KeyManager::builder(SqliteStore::open(&path).unwrap(), keyring())
        .audit(events.clone())
        .build()
        .unwrap();
    // Both damaged keys fail closed; the good one works.
    for key in [&bad_key, &broken_key] {
        assert!(matches!(
            m.verify(key.expose_secret(), &Scope::Prometheus).await,
            Err(Error::Integrity)
        ));
    }
    m.verify(good_key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    // `list` leaves them out and reports them by id; `generate` keeps working.
    let before = events.integrity_failures();
    let listed: Vec<KeyId> = m.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(listed, vec![good.id]);
    assert_eq!(events.integrity_failures(), before + 2);
    let (_, fresh) = m.generate(&a, prom()).await.unwrap();
    // `rewrap` counts them as failed and moves on to every other record.
    let m2 = KeyManager::builder(
        SqliteStore::open(&path).unwrap(),
        Keyring::new(2, MasterKey::from_bytes(*b"sqlite-test-key2"))
            .with_previous(1, MasterKey::from_bytes(MASTER)),
    )
    .build()
    .unwrap();
    let report = m2.rewrap().await.unwrap();
    assert_eq!(report.failed, 2, "{report:?}");
    assert_eq!(report.rewrapped, 2, "{report:?}");
    m2.verify(good_key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    // Both can still be deleted (by their id column), and are gone.
    for id in [bad.id, broken.id] {
        m2.delete(&a, &id).await.unwrap();
        assert!(m2.store().get(&id).await.unwrap().is_none());
    }
    let listed: Vec<KeyId> = m2.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&good.id) && listed.contains(&fresh.id));
}

/// SQLite keeps whatever type a hand edit writes into a column: a row whose `last_used_at`,
/// `revision` or `record` column has the wrong type is one undecodable row (reported,
/// skipped, deletable), never an error for every read that touches the table.
#[tokio::test]
async fn a_column_of_the_wrong_type_is_one_bad_row() {
    for (what, sql) in [
        (
            "text last_used_at",
            "UPDATE api_keys SET last_used_at = '2024-01-01' WHERE id = ?1",
        ),
        (
            "real last_used_at",
            "UPDATE api_keys SET last_used_at = 1.5 WHERE id = ?1",
        ),
        (
            "blob record",
            "UPDATE api_keys SET record = CAST(record AS BLOB) WHERE id = ?1",
        ),
        (
            "non-UTF-8 record",
            "UPDATE api_keys SET record = CAST(x'7bff7d' AS TEXT) WHERE id = ?1",
        ),
        (
            "text revision",
            "UPDATE api_keys SET revision = 'x' WHERE id = ?1",
        ),
    ] {
        let dir = TempDir::new("column-type");
        let path = dir.path("keys.db");
        let store = SqliteStore::open(&path).unwrap();
        let p = path.clone();
        api_keys::testkit::damaged_rows_stay_deletable(&store, |id| async move {
            let conn = rusqlite::Connection::open(&p).unwrap();
            assert_eq!(conn.execute(sql, [id.to_string()]).unwrap(), 1);
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // Through a manager: list, sweep and rewrap go on past it.
    let dir = TempDir::new("column-type-manager");
    let path = dir.path("keys.db");
    let m = manager(SqliteStore::open(&path).unwrap());
    let a = alice();
    let prom = || GenerateRequest::new("k").scope(Scope::Prometheus);
    let (_, bad) = m.generate(&a, prom()).await.unwrap();
    let (good_key, good) = m.generate(&a, prom()).await.unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE api_keys SET last_used_at = '2024-01-01' WHERE id = ?1",
            [bad.id.to_string()],
        )
        .unwrap();
    let listed: Vec<KeyId> = m.list(&a).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(listed, vec![good.id]);
    let swept = m.sweep().await.unwrap();
    assert_eq!((swept.scanned, swept.failed), (2, 1), "{swept:?}");
    let m2 = KeyManager::builder(
        SqliteStore::open(&path).unwrap(),
        Keyring::new(2, MasterKey::from_bytes(*b"sqlite-test-key2"))
            .with_previous(1, MasterKey::from_bytes(MASTER)),
    )
    .build()
    .unwrap();
    let report = m2.rewrap().await.unwrap();
    assert_eq!((report.rewrapped, report.failed), (1, 1), "{report:?}");
    m2.verify(good_key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
}

/// Two managers of different key classes (`sak` system keys, `sap` agent-pool keys) share one
/// SQLite table: neither accepts, lists or acts on the other's keys — not even a `sak` token
/// re-prefixed as `sap_` with its public checksum recomputed.
#[tokio::test]
async fn two_key_classes_in_one_table_never_accept_each_other() {
    let dir = TempDir::new("classes");
    let path = dir.path("keys.db");
    let events = Recorder::default();
    let sak = KeyManager::builder(SqliteStore::open(&path).unwrap(), keyring())
        .prefix("sak")
        .build()
        .unwrap();
    let sap = KeyManager::builder(SqliteStore::open(&path).unwrap(), keyring())
        .prefix("sap")
        .audit(events.clone())
        .build()
        .unwrap();
    let a = alice();
    let (key, info) = sak
        .generate(&a, GenerateRequest::new("system").scope(Scope::Scim))
        .await
        .unwrap();
    let (pool_key, pool) = sap
        .generate(&a, GenerateRequest::new("pool").scope(Scope::Scim))
        .await
        .unwrap();
    let moved = common::fix_checksum(&format!(
        "sap_{}",
        &key.expose_secret()[4..key.expose_secret().len() - 6]
    ));
    // Not `sap`'s key: an invalid key, as an unknown id is, and audited as one.
    assert!(matches!(
        sap.verify(&moved, &Scope::Scim).await,
        Err(Error::InvalidKey)
    ));
    assert!(
        events
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.key_id == Some(info.id)
                && matches!(
                    e.action,
                    AuditAction::VerificationFailed(api_keys::FailureClass::InvalidKey)
                ))
    );
    assert!(matches!(
        sap.verify(key.expose_secret(), &Scope::Scim).await,
        Err(Error::Malformed)
    ));
    sap.verify(pool_key.expose_secret(), &Scope::Scim)
        .await
        .unwrap();
    // Lists show each manager its own class only; acting on the other's id is NotFound.
    let ids = |l: Vec<api_keys::KeyInfo>| l.iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(ids(sap.list(&a).await.unwrap()), vec![pool.id]);
    assert_eq!(ids(sak.list(&a).await.unwrap()), vec![info.id]);
    assert!(matches!(
        sap.revoke(&a, &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        sap.delete(&a, &info.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(sap.get(&a, &info.id).await, Err(Error::NotFound)));
    // Each rewraps its own records and leaves the other's alone.
    let report = sap.rewrap().await.unwrap();
    assert_eq!(report.other_class, 1, "{report:?}");
    sak.verify(key.expose_secret(), &Scope::Scim).await.unwrap();
}

/// Without a tokio runtime the store runs its statements inline: the future is ready at its
/// first poll.
#[test]
fn works_without_a_tokio_runtime() {
    let dir = TempDir::new("noruntime");
    let store = SqliteStore::open(dir.path("keys.db")).unwrap();
    let org = OrgId::new("acme");
    let rec = api_keys::testkit::sample_record(KeyId::parse("00000000001").unwrap(), &org);
    let mut cx = Context::from_waker(Waker::noop());
    let mut insert = std::pin::pin!(store.insert(rec.clone()));
    assert!(matches!(insert.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    let mut get = std::pin::pin!(store.get(&rec.id));
    match get.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(Some(got))) => assert_eq!(got, rec),
        other => panic!("{other:?}"),
    }
}

/// A verification that read the record before a revoke and returns after it must not put
/// the pre-revoke record into the cache.
#[tokio::test]
async fn a_lookup_racing_a_revoke_does_not_cache_the_old_record() {
    let dir = TempDir::new("race");
    let store = Arc::new(Observed::new(
        SqliteStore::open(dir.path("keys.db")).unwrap(),
    ));
    let m = KeyManager::builder(store.clone(), keyring())
        .cache_fallback_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    // Generated through another manager (another node), so that `m` has nothing cached.
    let (key, info) = manager(SqliteStore::open(dir.path("keys.db")).unwrap())
        .generate(&alice(), GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    store.gate.arm();
    let racing = {
        let (m, token) = (m.clone(), key.expose_secret().to_string());
        tokio::spawn(async move { m.verify(&token, &Scope::Prometheus).await })
    };
    store.gate.reached().await; // the racing verify holds the pre-revoke record
    m.revoke(&alice(), &info.id).await.unwrap();
    store.gate.release();
    // It began before the revoke returned, so it may still succeed...
    racing.await.unwrap().unwrap();
    // ...but it must not have cached what it read: the next verify is refused.
    assert!(matches!(
        m.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn many_concurrent_verifications() {
    let dir = TempDir::new("concurrent");
    let m = manager(SqliteStore::open(dir.path("keys.db")).unwrap());
    let mut tokens = Vec::new();
    for i in 0..20 {
        let (k, _) = m
            .generate(
                &alice(),
                GenerateRequest::new(format!("k{i}")).scope(Scope::Prometheus),
            )
            .await
            .unwrap();
        tokens.push(k.expose_secret().to_string());
    }
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let m = m.clone();
            tokio::spawn(async move { m.verify(&t, &Scope::Prometheus).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// A background flush dropped with its runtime (here before it ever ran, as when a warm-up
/// runtime is shut down) does not stop later uses, on another runtime, from being written.
#[test]
fn a_flush_dropped_with_its_runtime_does_not_stop_later_last_uses() {
    let dir = TempDir::new("flush-runtime");
    let m = KeyManager::builder(SqliteStore::open(dir.path("keys.db")).unwrap(), keyring())
        .last_use_flush_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let warm_up = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (second, second_id) = warm_up.block_on(async {
        let prom = |n: &str| GenerateRequest::new(n).scope(Scope::Prometheus);
        let (first, _) = m.generate(&alice(), prom("first")).await.unwrap();
        let (second, info) = m.generate(&alice(), prom("second")).await.unwrap();
        m.verify(first.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        (second, info.id)
    });
    drop(warm_up);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        m.verify(second.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while m
            .store()
            .get(&second_id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "no flush was scheduled again: {} uses wait in the buffer",
                m.pending_last_uses()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Last use never holds up a verify: with another connection holding the write lock (as
/// another process would), verifies of never-used keys complete well within the 5 s busy
/// timeout their last-use write would wait, and the uses are written once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_do_not_wait_on_last_use_while_another_writer_holds_the_lock() {
    let dir = TempDir::new("locked");
    let path = dir.path("keys.db");
    let store = SqliteStore::open(&path).unwrap();
    let m = KeyManager::builder(store, keyring())
        .last_use_flush_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut keys = Vec::new();
    for i in 0..6 {
        let (k, info) = m
            .generate(
                &alice(),
                GenerateRequest::new(format!("k{i}")).scope(Scope::Prometheus),
            )
            .await
            .unwrap();
        keys.push((k, info.id));
    }
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    for (k, _) in &keys {
        // Far below the busy timeout a blocked last-use write would wait.
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            m.verify(k.expose_secret(), &Scope::Prometheus),
        )
        .await
        .expect("a verify waited on the write lock");
        r.unwrap();
        // Let a flush start and block on the lock while the next keys verify.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    locker.execute_batch("ROLLBACK").unwrap();
    // The buffered uses reach the file after the lock is gone (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut all = true;
        for (_, id) in &keys {
            all &= m
                .store()
                .get(id)
                .await
                .unwrap()
                .unwrap()
                .last_used_at
                .is_some();
        }
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "last uses never reached the file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report(&format!(
        "sqlite write lock held by another connection: {} verifies of unused keys took {took:?} in all (with 50 ms pauses)",
        keys.len()
    ));
}

/// Two key stores in one SQLite file, each in a table of its own; a bad name is refused.
#[tokio::test]
async fn stores_in_separate_tables_of_one_file_are_apart() {
    let dir = TempDir::new("tables");
    let path = dir.path("keys.db");
    let a = manager(SqliteStore::open(&path).unwrap());
    let b_store = SqliteStore::open_table(&path, "pool_keys").unwrap();
    assert_eq!(b_store.table(), "pool_keys");
    api_keys::testkit::run(&b_store).await.unwrap();
    let b = manager(b_store);
    let (ka, ia) = a
        .generate(&alice(), GenerateRequest::new("a").scope(Scope::Scim))
        .await
        .unwrap();
    let (kb, ib) = b
        .generate(&alice(), GenerateRequest::new("b").scope(Scope::Scim))
        .await
        .unwrap();
    let ids = |l: Vec<api_keys::KeyInfo>| l.iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(ids(a.list(&alice()).await.unwrap()), vec![ia.id]);
    assert_eq!(ids(b.list(&alice()).await.unwrap()), vec![ib.id]);
    assert!(matches!(
        b.verify(ka.expose_secret(), &Scope::Scim).await,
        Err(Error::InvalidKey)
    ));
    a.verify(ka.expose_secret(), &Scope::Scim).await.unwrap();
    // Reopened, each table keeps its keys.
    let b = manager(SqliteStore::open_table(&path, "pool_keys").unwrap());
    b.verify(kb.expose_secret(), &Scope::Scim).await.unwrap();
    for bad in [
        "",
        "Keys",
        "1keys",
        "keys; DROP TABLE api_keys",
        &"k".repeat(49),
    ] {
        let e = SqliteStore::open_table(&path, bad).unwrap_err();
        assert_eq!(
            sqlite_error(&e).kind(),
            SqliteErrorKind::InvalidTable,
            "{bad}"
        );
    }
}
