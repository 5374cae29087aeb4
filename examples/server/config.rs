//! What the command line and the environment ask for, the master key, and the store.

use api_keys::{AnyStore, Keyring, MasterKey, MemoryStore};

const USAGE: &str = "usage: server [PORT] [--allow-reveal]   (PORT also from the environment; default 8080; binds 127.0.0.1)
  --allow-reveal   let managers copy an existing key again (every reveal is audited)
  --db PATH        the SQLite file (builds with the `sqlite` feature; default api-keys-example.db)
environment: PORT, API_KEYS_DB, API_KEYS_MASTER_KEY (32 hex digits; random when unset)";

/// What the command line and the environment ask for.
#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    pub port: u16,
    pub db: Option<String>,
    pub allow_reveal: bool,
}

pub fn parse_config(
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
pub fn keyring(key_file: Option<&std::path::Path>) -> Result<Keyring, String> {
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
pub fn store(config: &Config) -> Result<(AnyStore, Option<std::path::PathBuf>), String> {
    match &config.db {
        None => Ok((AnyStore::new(MemoryStore::new()), None)),
        Some(_) => Err(
            "--db / API_KEYS_DB need the SQLite store: run with --features axum,sqlite".to_string(),
        ),
    }
}

/// The store, and the demo master-key file that goes with it (for a persistent store).
#[cfg(feature = "sqlite")]
pub fn store(config: &Config) -> Result<(AnyStore, Option<std::path::PathBuf>), String> {
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
