//! What the command line and the environment ask for, the master key, the store, and
//! GitHub's secret-scanning public keys.

use std::fmt;
use std::path::{Path, PathBuf};

use api_keys::axum::secret_scanning::PublicKeys;
use api_keys::{AnyStore, Keyring, MasterKey, MemoryStore};
use axum::http::Uri;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::app::webhooks::{check_url, parse_secret, shown_url};

const USAGE: &str = "usage: server [PORT] [--allow-reveal] [--db PATH] [--webhook-url URL] [--github-keys FILE]
  (PORT also from the environment; default 8080; binds 127.0.0.1)
  --allow-reveal        let managers copy an existing key again (every reveal is audited)
  --db PATH             the SQLite file (builds with the `sqlite` feature; default api-keys-example.db)
  --webhook-url URL     POST every management action and automation event (expiry warnings,
                        expired, unused, leaked, departed user) to this http:// URL, signed per
                        Standard Webhooks; needs API_KEYS_WEBHOOK_SECRET
  --github-keys FILE    mount GitHub's secret-scanning partner endpoint at POST /github/secret-scanning,
                        checking reports against the public keys in FILE (GitHub's document from
                        https://api.github.com/meta/public_keys/secret_scanning)
environment:
  PORT, API_KEYS_DB, API_KEYS_MASTER_KEY (32 hex digits; random when unset)
  API_KEYS_WEBHOOK_URL        as --webhook-url
  API_KEYS_WEBHOOK_SECRET     the webhook signing secret, whsec_<base64> (from the environment only:
                              on the command line it would show in `ps`)
  API_KEYS_GITHUB_KEYS_FILE   as --github-keys
  API_KEYS_OPS_METRICS_ADDR   serve the crate's own metrics there (feature `metrics`)";

/// A secret read from the environment: never printed, compared in constant time, wiped when
/// dropped.
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

/// Where the webhooks go, and the key they are signed with. Its `Debug` shows the URL as the
/// start-up line does (without a query, which may carry a receiver's token) and not the secret.
#[derive(PartialEq, Eq)]
pub struct WebhookTarget {
    /// An `http://host[:port]/path` URL.
    pub url: Uri,
    /// `whsec_<base64>`, checked.
    pub secret: Secret,
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &format_args!("{}", shown_url(&self.url)))
            .field("secret", &self.secret)
            .finish()
    }
}

/// What the command line and the environment ask for.
#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    pub port: u16,
    pub db: Option<String>,
    pub allow_reveal: bool,
    /// Webhook delivery, when both the URL and the secret are given.
    pub webhook: Option<WebhookTarget>,
    /// The file holding GitHub's secret-scanning public keys.
    pub github_keys: Option<PathBuf>,
}

/// The value of `--name VALUE` or `--name=VALUE` for the argument `arg`, if it is that option.
fn option_value(
    name: &str,
    arg: &str,
    rest: &mut impl Iterator<Item = String>,
) -> Option<Result<String, String>> {
    if arg == name {
        return Some(rest.next().ok_or_else(|| format!("{name} needs a value")));
    }
    let value = arg.strip_prefix(name)?.strip_prefix('=')?;
    Some(Ok(value.to_string()))
}

fn webhook_target(
    url: Option<String>,
    secret: Option<String>,
) -> Result<Option<WebhookTarget>, String> {
    let secret = secret.map(Secret::new);
    match (url, secret) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(
            "--webhook-url / API_KEYS_WEBHOOK_URL needs the signing secret in the environment: \
             API_KEYS_WEBHOOK_SECRET=whsec_<base64>"
                .to_string(),
        ),
        (None, Some(_)) => Err(
            "API_KEYS_WEBHOOK_SECRET is set but no webhook URL is: give --webhook-url URL or \
             API_KEYS_WEBHOOK_URL (or unset the secret)"
                .to_string(),
        ),
        (Some(url), Some(secret)) => {
            // The messages never repeat the URL: it may carry credentials (refused: the
            // receiver checks the signature made with API_KEYS_WEBHOOK_SECRET) or a token.
            let uri: Uri = url
                .parse()
                .map_err(|_| "invalid webhook URL: expected http://host[:port]/path".to_string())?;
            check_url(&uri).map_err(|e| format!("invalid webhook URL: {e}"))?;
            parse_secret(secret.expose()).map_err(|e| format!("API_KEYS_WEBHOOK_SECRET: {e}"))?;
            Ok(Some(WebhookTarget { url: uri, secret }))
        }
    }
}

pub fn parse_config(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, String> {
    let mut port: Option<String> = None;
    let mut db: Option<String> = None;
    let mut allow_reveal = false;
    let mut webhook_url: Option<String> = None;
    let mut github_keys: Option<String> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if let Some(v) = option_value("--webhook-url", &arg, &mut args) {
            webhook_url = Some(v?);
            continue;
        }
        if let Some(v) = option_value("--github-keys", &arg, &mut args) {
            github_keys = Some(v?);
            continue;
        }
        match arg.as_str() {
            "-h" | "--help" => return Err(USAGE.to_string()),
            "--allow-reveal" => allow_reveal = true,
            "--db" => db = Some(args.next().ok_or("--db needs a path")?),
            a if a.starts_with("--db=") => db = Some(a["--db=".len()..].to_string()),
            a if a == "--webhook-secret" || a.starts_with("--webhook-secret=") => {
                return Err("the webhook secret is read from the environment only \
                     (API_KEYS_WEBHOOK_SECRET): on the command line it would show in `ps`"
                    .to_string());
            }
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
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    let db = db.or_else(|| set("API_KEYS_DB"));
    let webhook = webhook_target(
        webhook_url.or_else(|| set("API_KEYS_WEBHOOK_URL")),
        set("API_KEYS_WEBHOOK_SECRET"),
    )?;
    let github_keys = github_keys
        .or_else(|| set("API_KEYS_GITHUB_KEYS_FILE"))
        .map(PathBuf::from);
    Ok(Config {
        port,
        db,
        allow_reveal,
        webhook,
        github_keys,
    })
}

/// GitHub's secret-scanning public keys, read from `path` (GitHub's document, as
/// `https://api.github.com/meta/public_keys/secret_scanning` serves it). A real host fetches
/// and refreshes that document itself (a `PublicKeySource`); the demo reads it once at start.
pub fn github_keys(path: &Path) -> Result<PublicKeys, String> {
    let shown = path.display();
    let document = std::fs::read(path)
        .map_err(|e| format!("cannot read GitHub's public keys from {shown}: {e}"))?;
    let keys = PublicKeys::from_github_json(&document).map_err(|e| match e {
        api_keys::Error::Policy(why) => format!("{shown}: {why}"),
        other => format!("{shown}: {other}"),
    })?;
    if keys.identifiers().next().is_none() {
        return Err(format!(
            "{shown}: GitHub's public-key document lists no keys: every report would be refused"
        ));
    }
    Ok(keys)
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
                allow_reveal: false,
                webhook: None,
                github_keys: None,
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

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn webhooks_take_the_url_from_flag_or_env_and_the_secret_from_env_only() {
        let env = env_of(&[("API_KEYS_WEBHOOK_SECRET", SECRET)]);
        let c = parse_config(
            args(&["--webhook-url", "http://127.0.0.1:9000/hooks"]),
            &env,
        )
        .unwrap();
        let target = c.webhook.unwrap();
        assert_eq!(target.url, "http://127.0.0.1:9000/hooks");
        assert_eq!(target.secret.expose(), SECRET);
        // Never printed.
        assert!(!format!("{target:?}").contains("MfKQ9r8G"), "{target:?}");
        let c = parse_config(args(&["--webhook-url=http://h/x"]), &env).unwrap();
        assert_eq!(c.webhook.unwrap().url, "http://h/x");
        let c = parse_config(
            args(&[]),
            env_of(&[
                ("API_KEYS_WEBHOOK_URL", "http://hooks.internal/api-keys"),
                ("API_KEYS_WEBHOOK_SECRET", SECRET),
            ]),
        )
        .unwrap();
        assert_eq!(c.webhook.unwrap().url, "http://hooks.internal/api-keys");
        // The flag wins over the environment.
        let c = parse_config(
            args(&["--webhook-url", "http://flag/x"]),
            env_of(&[
                ("API_KEYS_WEBHOOK_URL", "http://env/x"),
                ("API_KEYS_WEBHOOK_SECRET", SECRET),
            ]),
        )
        .unwrap();
        assert_eq!(c.webhook.unwrap().url, "http://flag/x");
        // Neither: no webhooks; empty values count as unset.
        let c = parse_config(
            args(&[]),
            env_of(&[
                ("API_KEYS_WEBHOOK_URL", ""),
                ("API_KEYS_WEBHOOK_SECRET", ""),
            ]),
        )
        .unwrap();
        assert!(c.webhook.is_none());
    }

    #[test]
    fn a_webhook_url_with_credentials_is_refused_without_repeating_them() {
        let env = env_of(&[("API_KEYS_WEBHOOK_SECRET", SECRET)]);
        for url in [
            "http://ops:hunter2@hooks.internal/x",
            "http://hunter2@h:9000/x",
        ] {
            let e = parse_config(args(&["--webhook-url", url]), &env).unwrap_err();
            assert!(e.contains("credentials"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        // An `@` after the host is part of the path, not credentials.
        let c = parse_config(args(&["--webhook-url", "http://h/a@b"]), &env).unwrap();
        assert_eq!(c.webhook.unwrap().url, "http://h/a@b");
    }

    #[test]
    fn webhooks_need_both_a_url_and_a_valid_secret() {
        let e = parse_config(args(&["--webhook-url", "http://h/x"]), env_of(&[])).unwrap_err();
        assert!(e.contains("API_KEYS_WEBHOOK_SECRET"), "{e}");
        let e =
            parse_config(args(&[]), env_of(&[("API_KEYS_WEBHOOK_SECRET", SECRET)])).unwrap_err();
        assert!(e.contains("no webhook URL"), "{e}");
        // The secret is never a flag (it would show in `ps`), and the refusal says where it goes.
        for flag in [
            vec!["--webhook-url", "http://h/x", "--webhook-secret", SECRET],
            vec!["--webhook-secret=whsec_x"],
        ] {
            let e = parse_config(args(&flag), env_of(&[])).unwrap_err();
            assert!(e.contains("environment only"), "{e}");
            assert!(!e.contains("whsec_"), "{e}");
        }
        let with_secret = |secret: &'static str, url: &'static str| {
            parse_config(args(&["--webhook-url", url]), move |k: &str| {
                (k == "API_KEYS_WEBHOOK_SECRET").then(|| secret.to_string())
            })
        };
        for bad_url in ["https://h/x", "h/x", "http://", "not a url"] {
            let e = with_secret(SECRET, bad_url).unwrap_err();
            assert!(e.contains("invalid webhook URL"), "{bad_url}: {e}");
        }
        for bad_secret in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_***",
            "whsec_c2hvcnQ=",
        ] {
            let e = with_secret(bad_secret, "http://h/x").unwrap_err();
            assert!(e.starts_with("API_KEYS_WEBHOOK_SECRET:"), "{e}");
            assert!(!e.contains(bad_secret), "the error repeats the secret: {e}");
        }
        assert!(parse_config(args(&["--webhook-url"]), env_of(&[])).is_err());
    }

    /// A P-256 public key (any will do: nothing is verified here).
    const PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpB9va3SrSLs9UpaiNAwX1WmzxW5m\n\
FT0yfSuxQbRhZYLj4v4hDvPVksR4TnJ0IzFWxTjThlRbyG4R9FoKUIv3kg==\n\
-----END PUBLIC KEY-----\n";

    #[test]
    fn github_keys_from_flag_or_env_read_at_start() {
        let c = parse_config(args(&["--github-keys", "gh.json"]), env_of(&[])).unwrap();
        assert_eq!(c.github_keys.as_deref(), Some(Path::new("gh.json")));
        let c = parse_config(args(&["--github-keys=a.json"]), env_of(&[])).unwrap();
        assert_eq!(c.github_keys.as_deref(), Some(Path::new("a.json")));
        let c = parse_config(
            args(&[]),
            env_of(&[("API_KEYS_GITHUB_KEYS_FILE", "/etc/gh.json")]),
        )
        .unwrap();
        assert_eq!(c.github_keys.as_deref(), Some(Path::new("/etc/gh.json")));
        assert!(parse_config(args(&["--github-keys"]), env_of(&[])).is_err());

        let dir = std::env::temp_dir().join(format!("api-keys-gh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let good = write(
            "good.json",
            &serde_json::json!({"public_keys": [
                {"key_identifier": "k1", "key": PEM, "is_current": true}
            ]})
            .to_string(),
        );
        let keys = github_keys(&good).unwrap();
        assert_eq!(keys.identifiers().collect::<Vec<_>>(), vec!["k1"]);
        let missing = dir.join("missing.json");
        let e = github_keys(&missing).unwrap_err();
        assert!(
            e.contains("cannot read GitHub's public keys") && e.contains("missing.json"),
            "{e}"
        );
        let e = github_keys(&write("bad.json", "{\"keys\": 1}")).unwrap_err();
        assert!(
            e.contains("bad.json") && e.contains("public-key document"),
            "{e}"
        );
        let e = github_keys(&write(
            "badkey.json",
            r#"{"public_keys": [{"key_identifier": "k", "key": "nope", "is_current": true}]}"#,
        ))
        .unwrap_err();
        assert!(e.contains("not a PEM P-256 public key"), "{e}");
        let e = github_keys(&write("empty.json", r#"{"public_keys": []}"#)).unwrap_err();
        assert!(e.contains("no keys"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
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

    /// A port that is no TCP port was accepted, and the webhooks then went to port 80.
    #[test]
    fn a_webhook_url_whose_port_is_no_tcp_port_is_refused() {
        let env = env_of(&[("API_KEYS_WEBHOOK_SECRET", SECRET)]);
        for url in ["http://h:99999/x", "http://h:0/x"] {
            let e = parse_config(args(&["--webhook-url", url]), &env).unwrap_err();
            assert!(e.contains("invalid webhook URL"), "{url}: {e}");
        }
    }

    /// `http://:PORT/x` has no host; it was accepted and every delivery failed.
    #[test]
    fn a_webhook_url_with_an_empty_host_is_refused() {
        let env = env_of(&[("API_KEYS_WEBHOOK_SECRET", SECRET)]);
        let e = parse_config(args(&["--webhook-url", "http://:9000/x"]), &env).unwrap_err();
        assert!(e.contains("invalid webhook URL"), "{e}");
    }

    /// A receiver's token in the URL's query is a credential (the start-up line and
    /// `WebhookConfig`'s `Debug` show it as `?...`), but the configuration's derived `Debug`
    /// printed the whole URL.
    #[test]
    fn the_configurations_debug_never_shows_a_query_token() {
        let env = env_of(&[("API_KEYS_WEBHOOK_SECRET", SECRET)]);
        let url = "http://127.0.0.1:9000/hooks?token=hook-query-secret";
        let c = parse_config(args(&["--webhook-url", url]), &env).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hook-query-secret"), "{shown}");
        assert!(shown.contains("http://127.0.0.1:9000/hooks?..."), "{shown}");
        assert_eq!(c.webhook.unwrap().url, url);
    }
}
