//! PostgresStore under real faults of the server: a restart (`pg_ctl restart -m fast`), a
//! stop, a frozen feed backend (`kill -STOP`). These change the whole server, so the tests of
//! this file run one at a time, and only when `API_KEYS_PG_CTL` names how to run `pg_ctl`
//! for the server at `DATABASE_URL` (`.ci/postgres.sh` exports it with
//! `API_KEYS_PG_START_ARGS`); otherwise each says why it is skipped and passes, unless
//! `API_KEYS_REQUIRE_POSTGRES=1`.

#[path = "../store_support/mod.rs"]
mod store_support;

mod frozen;
mod reconnect;
mod restart;

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
