//! SqliteStore: conformance, restart, crash safety (SIGKILL), other processes' locks, clear errors.

#[path = "../common/mod.rs"]
mod common;
#[path = "../store_support/mod.rs"]
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

mod concurrency;
mod durability;
mod files_and_tables;
mod processes;
mod records;
mod tampering;

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
