//! A runnable server guarding `/metrics` (Prometheus) and `/scim/v2/Users` (SCIM) with API
//! keys, with a JSON management API for an organization's managers.
//!
//! ```text
//! cargo run --example server --features axum -- [PORT] [--allow-reveal]
//! ```
//!
//! The port comes from the first argument, else `PORT`, else 8080; the server binds
//! 127.0.0.1. Without the `sqlite` feature keys live in memory (they vanish with the process)
//! and the master key comes from `API_KEYS_MASTER_KEY` (32 hex digits) or is generated at
//! random for this run. With `--features axum,sqlite` keys live in a SQLite file (`--db PATH`,
//! `API_KEYS_DB`, default `api-keys-example.db`) and, unless `API_KEYS_MASTER_KEY` is set, the
//! master key is kept in `<db>.master-key` next to it — a demo convenience only: a real host
//! keeps its master key in a secret manager, never beside the database.
//!
//! Who the caller of the management API is comes from a *demo* stand-in for the host's own
//! login session: a signed `X-Demo-Session` header. The server prints two such sessions at
//! start (alice, a manager of acme; bob, a member). A real host builds the `Actor` from its
//! own session instead.

mod app;
#[allow(dead_code)] // `Webhooks` is wired into AppState's builder by the host config (webhooks.rs)
mod webhooks;

use std::net::Ipv4Addr;
use std::process::ExitCode;

use api_keys::{AnyStore, Keyring, MasterKey, MemoryStore, Policy};

const USAGE: &str = "usage: server [PORT] [--allow-reveal]   (PORT also from the environment; default 8080; binds 127.0.0.1)
  --allow-reveal   let managers copy an existing key again (every reveal is audited)
  --db PATH        the SQLite file (builds with the `sqlite` feature; default api-keys-example.db)
environment: PORT, API_KEYS_DB, API_KEYS_MASTER_KEY (32 hex digits; random when unset)";

/// What the command line and the environment ask for.
#[derive(Debug, PartialEq, Eq)]
struct Config {
    port: u16,
    db: Option<String>,
    allow_reveal: bool,
}

fn parse_config(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, String> {
    let mut port: Option<String> = None;
    let mut db: Option<String> = None;
    let mut allow_reveal = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err(USAGE.to_string()),
            "--allow-reveal" => allow_reveal = true,
            "--db" => db = Some(args.next().ok_or("--db needs a path")?),
            a if a.starts_with("--db=") => db = Some(a["--db=".len()..].to_string()),
            a if a.starts_with('-') => return Err(format!("unknown option {a}\n{USAGE}")),
            a if port.is_none() => port = Some(a.to_string()),
            a => return Err(format!("unexpected argument {a}\n{USAGE}")),
        }
    }
    let port = match port.or_else(|| env("PORT")) {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("invalid port {p:?}: expected 0-65535"))?,
        None => 8080,
    };
    let db = db.or_else(|| env("API_KEYS_DB").filter(|p| !p.is_empty()));
    Ok(Config {
        port,
        db,
        allow_reveal,
    })
}

fn keyring_from_hex(hex_key: &str, what: &str) -> Result<Keyring, String> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 16]);
    hex::decode_to_slice(hex_key.trim(), &mut *bytes)
        .map_err(|_| format!("{what} must be 32 hex digits"))?;
    Ok(Keyring::new(1, MasterKey::from_bytes(*bytes)))
}

/// The master key from `API_KEYS_MASTER_KEY`; else, for a SQLite file, the demo key file next
/// to it (created on first run); else a random one for this run.
fn keyring(key_file: Option<&std::path::Path>) -> Result<Keyring, String> {
    if let Ok(hex_key) = std::env::var("API_KEYS_MASTER_KEY") {
        return keyring_from_hex(&hex_key, "API_KEYS_MASTER_KEY");
    }
    if let Some(path) = key_file {
        if let Ok(text) = std::fs::read_to_string(path) {
            return keyring_from_hex(&text, &path.display().to_string());
        }
        let mut bytes = zeroize::Zeroizing::new([0u8; 16]);
        getrandom::getrandom(&mut *bytes).map_err(|e| e.to_string())?;
        let text = zeroize::Zeroizing::new(hex::encode(*bytes));
        write_private(path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!(
            "note: created a DEMO master key file {} (a real host keeps it in a secret manager)",
            path.display()
        );
        return Ok(Keyring::new(1, MasterKey::from_bytes(*bytes)));
    }
    eprintln!("note: API_KEYS_MASTER_KEY is not set; using a random master key for this run");
    let key = MasterKey::try_generate().map_err(|e| e.to_string())?;
    Ok(Keyring::new(1, key))
}

/// Writes a file readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// The store, and the demo master-key file that goes with it (for a persistent store).
#[cfg(not(feature = "sqlite"))]
fn store(config: &Config) -> Result<(AnyStore, Option<std::path::PathBuf>), String> {
    match &config.db {
        None => Ok((AnyStore::new(MemoryStore::new()), None)),
        Some(_) => Err(
            "--db / API_KEYS_DB need the SQLite store: run with --features axum,sqlite".to_string(),
        ),
    }
}

/// The store, and the demo master-key file that goes with it (for a persistent store).
#[cfg(feature = "sqlite")]
fn store(config: &Config) -> Result<(AnyStore, Option<std::path::PathBuf>), String> {
    let _ = MemoryStore::new; // the in-memory store is the choice of builds without `sqlite`
    let path = config
        .db
        .clone()
        .unwrap_or_else(|| "api-keys-example.db".to_string());
    let store = api_keys::SqliteStore::open(&path).map_err(|e| {
        let source = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        format!("cannot open {path}: {e}{source}")
    })?;
    println!("keys are kept in the SQLite file {path}");
    Ok((
        AnyStore::new(store),
        Some(format!("{path}.master-key").into()),
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(true)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let config = parse_config(std::env::args().skip(1), |k| std::env::var(k).ok())?;
    let policy = Policy::default().allow_reveal(config.allow_reveal);
    let (store, key_file) = store(&config)?;
    let state = app::AppState::with_policy(store, keyring(key_file.as_deref())?, policy)
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, config.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", config.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The automations (expiry warnings, unused keys, retention): hourly, safe on every node.
    tokio::spawn(webhooks::sweep_every(
        state.manager.clone(),
        std::time::Duration::from_secs(3600),
    ));
    println!("api-keys example server on http://{addr}");
    println!("admin page: http://{addr}/settings/api-keys");
    println!("demo sessions (send as the X-Demo-Session header; a real host uses its own login):");
    for s in state.demo_sessions() {
        println!("  {:<26} {}", s.label, s.session);
    }
    println!("try:");
    if let Some(alice) = state.demo_sessions().first() {
        println!(
            "  curl -s -H 'X-Demo-Session: {}' -H 'Content-Type: application/json' \\\n    -d '{{\"name\":\"prometheus\",\"scopes\":[\"prometheus\"],\"expiry\":{{\"days\":30}}}}' http://{addr}/api/keys",
            alice.session
        );
    }
    println!("  curl -s -H 'Authorization: Bearer <key>' http://{addr}/metrics");
    axum::serve(listener, app::router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn port_from_argument_then_env_then_default() {
        let c = parse_config(args(&["9000"]), env_of(&[("PORT", "7000")])).unwrap();
        assert_eq!(c.port, 9000);
        let c = parse_config(args(&[]), env_of(&[("PORT", "7000")])).unwrap();
        assert_eq!(c.port, 7000);
        let c = parse_config(args(&[]), env_of(&[])).unwrap();
        assert_eq!(
            c,
            Config {
                port: 8080,
                db: None,
                allow_reveal: false
            }
        );
        let c = parse_config(args(&["--allow-reveal", "81"]), env_of(&[])).unwrap();
        assert_eq!((c.port, c.allow_reveal), (81, true));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse_config(args(&["99999"]), env_of(&[])).is_err());
        assert!(parse_config(args(&["x"]), env_of(&[])).is_err());
        assert!(parse_config(args(&["--nope"]), env_of(&[])).is_err());
        assert!(parse_config(args(&["1", "2"]), env_of(&[])).is_err());
        assert!(parse_config(args(&["--db"]), env_of(&[])).is_err());
    }

    #[test]
    fn db_from_flag_or_env() {
        let c = parse_config(args(&["--db", "k.db"]), env_of(&[])).unwrap();
        assert_eq!(c.db.as_deref(), Some("k.db"));
        let c = parse_config(args(&["--db=x.db", "81"]), env_of(&[])).unwrap();
        assert_eq!((c.port, c.db.as_deref()), (81, Some("x.db")));
        let c = parse_config(args(&[]), env_of(&[("API_KEYS_DB", "e.db")])).unwrap();
        assert_eq!(c.db.as_deref(), Some("e.db"));
    }

    #[cfg(not(feature = "sqlite"))]
    #[test]
    fn a_db_path_without_the_sqlite_store_is_refused() {
        let c = parse_config(args(&["--db", "k.db"]), env_of(&[])).unwrap();
        assert!(store(&c).is_err(), "no SQLite store in this build");
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn a_db_path_opens_a_sqlite_file_with_its_demo_key_file() {
        let dir = std::env::temp_dir().join(format!("api-keys-server-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.db");
        let c = parse_config(args(&["--db", path.to_str().unwrap()]), env_of(&[])).unwrap();
        let (_, key_file) = store(&c).unwrap();
        assert_eq!(key_file, Some(dir.join("k.db.master-key")));
        assert!(path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
