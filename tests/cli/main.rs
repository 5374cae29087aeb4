//! The `api-keys` binary (feature `cli`), driven as an operator would: against a SQLite file
//! the test fills through the library, and against PostgreSQL when `DATABASE_URL` is set
//! (skipped with the reason otherwise, unless `API_KEYS_REQUIRE_POSTGRES=1`).

use std::path::{Path, PathBuf};

use api_keys::{
    Actor, ApiKey, Error, Expiry, GenerateRequest, KeyInfo, KeyManager, KeyStore, Keyring,
    MasterKey, OrgId, RevocationReason, Scope, SqliteStore, UserId,
};
use assert_cmd::Command;
use serde_json::Value;

mod keys;
mod leaks_and_sweeps;
mod master_keys;
mod over_postgres;

const OLD: [u8; 16] = *b"0123456789abcdef";
const NEW: [u8; 16] = *b"fedcba9876543210";

fn hex_of(k: &[u8; 16]) -> String {
    hex::encode(k)
}

/// The binary with a clean environment: nothing of the machine's leaks into a test.
fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_api-keys"));
    c.env_clear();
    c
}

/// The binary over `db` with the master key `key` as version `version`.
fn cli_with(db: &Path, version: u32, key: &[u8; 16]) -> Command {
    let mut c = cli();
    c.arg("--sqlite")
        .arg(db)
        .env("API_KEYS_MASTER_KEY", hex_of(key))
        .env("API_KEYS_MASTER_KEY_VERSION", version.to_string());
    c
}

fn acme() -> Actor {
    Actor::manager(OrgId::new("acme"), UserId::new("alice"))
}

fn globex() -> Actor {
    Actor::manager(OrgId::new("globex"), UserId::new("gina"))
}

fn read() -> Scope {
    Scope::custom("read").unwrap()
}

struct Db {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    Db { _dir: dir, path }
}

fn manager<S: KeyStore + 'static>(store: S, ring: Keyring) -> KeyManager<S> {
    KeyManager::builder(store, ring)
        .cache_capacity(0)
        .build()
        .unwrap()
}

fn old_ring() -> Keyring {
    Keyring::new(1, MasterKey::from_bytes(OLD))
}

fn new_ring() -> Keyring {
    Keyring::new(2, MasterKey::from_bytes(NEW))
}

async fn make(
    m: &KeyManager<impl KeyStore + 'static>,
    actor: &Actor,
    name: &str,
    days: u16,
) -> (ApiKey, KeyInfo) {
    m.generate(
        actor,
        GenerateRequest::new(name)
            .scope(read())
            .expiry(Expiry::Days(days)),
    )
    .await
    .unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}
