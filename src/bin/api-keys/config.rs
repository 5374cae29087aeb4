//! Where the tool's configuration comes from: master keys (environment or file, never
//! arguments), the store, durations.

use std::io::Write as _;
use std::path::Path;

use api_keys::time::Duration;
use api_keys::{AnyStore, Keyring, MasterKey, UserId};
use zeroize::Zeroizing;

use crate::{Failure, Global};

pub(crate) const ENV_KEY: &str = "API_KEYS_MASTER_KEY";
pub(crate) const ENV_VERSION: &str = "API_KEYS_MASTER_KEY_VERSION";
pub(crate) const ENV_PREVIOUS: &str = "API_KEYS_PREVIOUS_KEYS";

/// `master-key new`: 16 bytes from the operating system, as hex.
pub(crate) fn new_master_key(json: bool) -> Result<(), Failure> {
    let mut bytes = Zeroizing::new([0u8; 16]);
    getrandom::getrandom(&mut *bytes).map_err(|e| {
        Failure::config(format!(
            "the operating system's random number generator failed: {e}"
        ))
    })?;
    let hex = Zeroizing::new(hex::encode(*bytes));
    // Printing is the whole command: a key that did not reach its reader is a failure.
    let line = if json {
        Zeroizing::new(format!("{{\"master_key\":\"{}\"}}\n", hex.as_str()))
    } else {
        Zeroizing::new(format!("{}\n", hex.as_str()))
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::config(format!("cannot write the master key: {e}")))
}

/// Whether the keys came from `--master-key-file` (the environment's are then not read).
static KEYS_FROM_FILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What to do about a record sealed under a version the keyring lacks, where the keys come
/// from.
pub(crate) fn add_previous_key() -> &'static str {
    if KEYS_FROM_FILE.load(std::sync::atomic::Ordering::Relaxed) {
        "add that version's VERSION:HEX line to the master key file"
    } else {
        "add that version to API_KEYS_PREVIOUS_KEYS"
    }
}

/// The keyring from `--master-key-file`, or else from the environment.
pub(crate) fn keyring(file: Option<&Path>) -> Result<Keyring, Failure> {
    let mut keys = match file {
        Some(path) => {
            KEYS_FROM_FILE.store(true, std::sync::atomic::Ordering::Relaxed);
            for var in [ENV_KEY, ENV_VERSION, ENV_PREVIOUS] {
                if std::env::var_os(var).is_some() {
                    eprintln!(
                        "api-keys: warning: {var} is ignored: the master keys come from \
                         --master-key-file alone"
                    );
                }
            }
            from_file(path)?
        }
        None => from_env()?,
    };
    let (version, key) = keys.remove(0);
    let mut ring = Keyring::new(version, key);
    let mut seen = std::collections::BTreeSet::from([version]);
    for (v, k) in keys {
        if !seen.insert(v) {
            return Err(Failure::config(format!(
                "master key version {v} is given twice; each version must appear once"
            )));
        }
        ring = ring.with_previous(v, k);
    }
    Ok(ring)
}

fn from_env() -> Result<Vec<(u32, MasterKey)>, Failure> {
    let Some(hex) = std::env::var_os(ENV_KEY) else {
        return Err(Failure::config(format!(
            "no master key: set {ENV_KEY} to the current key's hex (and {ENV_VERSION} to its \
             version), or pass --master-key-file PATH; `api-keys master-key new` makes one"
        )));
    };
    let hex =
        Zeroizing::new(hex.into_string().map_err(|_| {
            Failure::config(format!("{ENV_KEY} must be 32 hexadecimal characters"))
        })?);
    let version = match std::env::var(ENV_VERSION) {
        Ok(v) => parse_version(&v, ENV_VERSION)?,
        Err(std::env::VarError::NotPresent) => 1,
        Err(_) => {
            return Err(Failure::config(format!(
                "{ENV_VERSION} must be a positive whole number"
            )));
        }
    };
    let mut keys = vec![(version, parse_key(&hex, ENV_KEY)?)];
    if let Some(previous) = std::env::var_os(ENV_PREVIOUS) {
        let previous = Zeroizing::new(previous.into_string().map_err(|_| {
            Failure::config(format!(
                "{ENV_PREVIOUS} must be VERSION:HEX,VERSION:HEX,..."
            ))
        })?);
        for entry in previous.split(',').filter(|e| !e.trim().is_empty()) {
            keys.push(parse_entry(entry.trim(), ENV_PREVIOUS)?);
        }
    }
    Ok(keys)
}

/// The largest master key file read (a keyring of hundreds of versions fits).
const MAX_KEY_FILE: u64 = 64 * 1024;

fn from_file(path: &Path) -> Result<Vec<(u32, MasterKey)>, Failure> {
    use std::io::Read as _;
    let what = format!("the master key file {}", path.display());
    let cannot = |e: std::io::Error| Failure::config(format!("cannot read {what}: {e}"));
    // Read at most a little more than any keyring needs: a path to a device or a huge file
    // (`/dev/zero`, a log given by mistake) is refused instead of read without end.
    // Room for the most read, so that reading never moves (and leaves behind) key bytes.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 1));
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(Failure::config(format!(
            "{what} is larger than {MAX_KEY_FILE} bytes: not a master key file"
        )));
    }
    let text = Zeroizing::new(String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
        // The bytes come back with the error: wiped, like every other copy.
        drop(Zeroizing::new(e.into_bytes()));
        Failure::config(format!(
            "{what} is not UTF-8 text: write one VERSION:HEX per line"
        ))
    })?);
    warn_if_readable_by_others(path);
    let mut keys = Vec::new();
    // A byte-order mark (some editors write one) is not part of the first key's version.
    for line in text.strip_prefix('\u{feff}').unwrap_or(&text).lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if !line.is_empty() {
            keys.push(parse_entry(line, &what)?);
        }
    }
    if keys.is_empty() {
        return Err(Failure::config(format!(
            "{what} has no key: write one VERSION:HEX per line, the current key first"
        )));
    }
    Ok(keys)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "api-keys: warning: {} can be read by other users; `chmod 600` it",
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// `VERSION:HEX`.
fn parse_entry(entry: &str, what: &str) -> Result<(u32, MasterKey), Failure> {
    let Some((version, hex)) = entry.split_once(':') else {
        return Err(Failure::config(format!(
            "{what}: each key must be written VERSION:HEX (e.g. 1:00112233...)"
        )));
    };
    Ok((
        parse_version(version.trim(), what)?,
        parse_key(hex.trim(), what)?,
    ))
}

fn parse_version(s: &str, what: &str) -> Result<u32, Failure> {
    s.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
        Failure::config(format!(
            "{what}: a key version must be a positive whole number"
        ))
    })
}

/// 32 hexadecimal characters; the message never repeats the input.
fn parse_key(hex: &str, what: &str) -> Result<MasterKey, Failure> {
    let mut bytes = Zeroizing::new([0u8; 16]);
    hex::decode_to_slice(hex.trim(), &mut *bytes).map_err(|_| {
        Failure::config(format!(
            "{what}: a master key must be 32 hexadecimal characters (16 bytes)"
        ))
    })?;
    Ok(MasterKey::from_bytes(*bytes))
}

/// The store the options name.
pub(crate) async fn store(global: &Global) -> Result<AnyStore, Failure> {
    // DATABASE_URL is often set machine-wide: an explicit --sqlite wins over it.
    match (&global.sqlite, &global.postgres) {
        (Some(_), Some(_)) => {
            return Err(Failure::usage(
                "give one store: --sqlite PATH or --postgres URL, not both",
            ));
        }
        (Some(path), None) => return sqlite(path),
        (None, Some(url)) if carries_password(url) => {
            return Err(Failure::usage(
                "--postgres URL carries a password, which other users of the machine can read \
                 in the process list: give the URL in DATABASE_URL instead",
            ));
        }
        (None, Some(url)) => return postgres(url).await,
        (None, None) => {}
    }
    if let Some(url) = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        return postgres(&url).await;
    }
    Err(Failure::usage(
        "no key store: pass --sqlite PATH or --postgres URL (or set DATABASE_URL)",
    ))
}

/// Whether a PostgreSQL connection string carries a password, read the way `tokio-postgres`
/// reads it: a URL (`postgres://` or `postgresql://`) whose text before its first `@` holds a
/// `:` (user:password; a password may hold `/` or `?` unencoded), or a `password=` parameter
/// (parameter names are percent-decoded: `%70assword=` is one); otherwise the key-value form
/// with a `password` key.
fn carries_password(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    let rest = lower
        .strip_prefix("postgres://")
        .or_else(|| lower.strip_prefix("postgresql://"));
    match rest {
        Some(rest) => {
            rest.split_once('@')
                .is_some_and(|(user_info, _)| user_info.contains(':'))
                || percent_decoded(rest)
                    .to_ascii_lowercase()
                    .contains("password=")
        }
        None => lower.contains("password"),
    }
}

/// `s` with every `%XX` escape decoded (others kept as they are), lossily as UTF-8.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(feature = "sqlite")]
fn sqlite(path: &Path) -> Result<AnyStore, Failure> {
    // Opening creates a missing file: an operator's typo must not look like an empty store.
    if !path.is_file() {
        return Err(Failure::config(format!(
            "{} is not a file; give the path of the service's existing SQLite key store",
            path.display()
        )));
    }
    // Opening also creates the key store's tables in a file that has none: another
    // application's database, or a copy without them, would look like an empty store (and
    // `rewrap` over it like a finished rotation).
    if holds_no_key_store(path) {
        return Err(Failure::config(format!(
            "{} holds no api-keys key store (no table api_keys_schema); give the path of the \
             service's existing SQLite key store",
            path.display()
        )));
    }
    api_keys::SqliteStore::open(path)
        .map(AnyStore::new)
        .map_err(|e| {
            Failure::config(format!(
                "cannot open the SQLite key store {}: {}",
                path.display(),
                crate::chain(&e)
            ))
        })
}

/// Whether `path` is a SQLite database without the key store's schema table, read without
/// writing. A file that cannot be read here is left to `SqliteStore::open` to report.
#[cfg(feature = "sqlite")]
fn holds_no_key_store(path: &Path) -> bool {
    use rusqlite::{Connection, OpenFlags};
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = Connection::open_with_flags(path, flags) else {
        return false;
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'api_keys_schema'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .is_ok_and(|n| n == 0)
}

#[cfg(not(feature = "sqlite"))]
fn sqlite(_: &Path) -> Result<AnyStore, Failure> {
    Err(Failure::config(
        "this api-keys was built without SQLite support; reinstall it with \
         `cargo install api-keys --features cli,sqlite`",
    ))
}

#[cfg(feature = "postgres")]
async fn postgres(url: &str) -> Result<AnyStore, Failure> {
    api_keys::PostgresStore::connect(url)
        .await
        .map(AnyStore::new)
        .map_err(|e| {
            Failure::config(format!(
                "cannot connect to the PostgreSQL key store: {}; check the URL, that the \
                 server is up and that the user may log in",
                crate::chain(&e)
            ))
        })
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_: &str) -> Result<AnyStore, Failure> {
    Err(Failure::config(
        "this api-keys was built without PostgreSQL support; reinstall it with \
         `cargo install api-keys --features cli,postgres`",
    ))
}

/// The operator recorded on revocations: `--operator` (or `API_KEYS_OPERATOR`), else `$USER`,
/// else `operator`. An empty `API_KEYS_OPERATOR=` is unset, as an empty `$USER` is.
pub(crate) fn operator(global: &Global) -> Result<UserId, Failure> {
    let name = global
        .operator
        .clone()
        .filter(|o| !o.is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "operator".to_string());
    UserId::try_new(&name)
        .map_err(|_| Failure::usage("--operator (or API_KEYS_OPERATOR) must be 1 to 128 bytes"))
}

/// `14d`, `12h`, `30m`, `90s`, `2w`. The reasons never quote the value: a token typed here by
/// mistake must not reach standard error.
/// `sweep --warn-before`'s lead times.
#[derive(Clone, Debug)]
pub(crate) struct Leads(pub(crate) Vec<Duration>);

/// Comma-separated durations (`30d,7d,1d`), or `none`: parsed with the other arguments, so a
/// mistake is a usage error (exit 2) before any store or master key is touched.
pub(crate) fn parse_leads(s: &str) -> Result<Leads, String> {
    if s.trim() == "none" {
        return Ok(Leads(Vec::new()));
    }
    s.split(',')
        .map(parse_duration)
        .collect::<Result<_, _>>()
        .map(Leads)
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "a duration needs a unit: e.g. 14d, 12h, 30m, 90s or 2w".to_owned())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| "a duration starts with a whole number, e.g. 14d".to_owned())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err("unknown unit: use s, m, h, d or w (e.g. 14d)".to_owned()),
    };
    n.checked_mul(secs)
        .filter(|s| *s <= 100 * 365 * 86_400)
        .map(Duration::seconds)
        .ok_or_else(|| "too long: at most 100 years".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("14d"), Ok(Duration::days(14)));
        assert_eq!(parse_duration("12h"), Ok(Duration::hours(12)));
        assert_eq!(parse_duration("2w"), Ok(Duration::days(14)));
        assert_eq!(parse_duration("90s"), Ok(Duration::seconds(90)));
        assert!(parse_duration("14").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("14y").is_err());
        assert!(parse_duration("99999999999999d").is_err());
    }

    #[test]
    fn key_entries() {
        let (v, _) = parse_entry("7:000102030405060708090a0b0c0d0e0f", "x").unwrap();
        assert_eq!(v, 7);
        for bad in [
            "7:0001",
            "0:000102030405060708090a0b0c0d0e0f",
            "000102030405060708090a0b0c0d0e0f",
            "x:00",
        ] {
            let e = parse_entry(bad, "x").unwrap_err();
            assert_eq!(e.code, crate::EXIT_CONFIG);
            assert!(!e.message.contains("0001"), "{}", e.message);
        }
    }
}
