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

#[test]
fn master_key_new_prints_sixteen_fresh_bytes_as_hex() {
    let a = cli().args(["master-key", "new"]).assert().success();
    let b = cli().args(["master-key", "new"]).assert().success();
    let (a, b) = (stdout(a.get_output()), stdout(b.get_output()));
    for k in [&a, &b] {
        let k = k.trim();
        assert_eq!(k.len(), 32, "{k}");
        assert!(hex::decode(k).is_ok(), "{k}");
    }
    assert_ne!(a, b);
}

#[tokio::test]
async fn keys_list_shows_an_organizations_keys_for_people_and_scripts() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k1, _) = make(&m, &acme(), "deploy-bot", 30).await;
    let (_k2, _) = make(&m, &acme(), "grafana", 90).await;
    let (_k3, _) = make(&m, &globex(), "globex-only", 30).await;

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .success();
    let table = stdout(out.get_output());
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains("deploy-bot") && table.contains("grafana"),
        "{table}"
    );
    assert!(table.contains("active"), "{table}");
    assert!(!table.contains("globex-only"), "{table}");
    assert!(!table.contains(k1.expose_secret()), "never a secret");

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "list", "--org", "acme", "--json"])
        .assert()
        .success();
    let v = json(out.get_output());
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(ids(&v).contains(&k1.id().to_string()));
    assert!(!stdout(out.get_output()).contains(k1.expose_secret()));
}

#[tokio::test]
async fn keys_show_names_the_key_and_says_when_there_is_none() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k, _) = make(&m, &acme(), "deploy-bot", 30).await;
    let id = k.id().to_string();

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", &id])
        .assert()
        .success();
    let text = stdout(out.get_output());
    assert!(
        text.contains("deploy-bot") && text.contains("acme") && text.contains(&id),
        "{text}"
    );

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", &id, "--json"])
        .assert()
        .success();
    assert_eq!(json(out.get_output())["name"], "deploy-bot");

    // An unknown id: exit 4 and a message; a whole token instead of an id: usage, exit 2.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", "00000000001"])
        .assert()
        .code(4);
    assert!(stderr(out.get_output()).contains("no such key"));
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", k.expose_secret()])
        .assert()
        .code(2);
    let err = stderr(out.get_output());
    assert!(err.contains("not a key id"), "{err}");
    assert!(
        !err.contains(k.expose_secret()),
        "a pasted token is not echoed: {err}"
    );

    // The wrong master key: an integrity failure, exit 5, with what to do.
    let out = cli_with(&db.path, 1, &NEW)
        .args(["keys", "show", &id])
        .assert()
        .code(5);
    assert!(stderr(out.get_output()).contains("API_KEYS_PREVIOUS_KEYS"));
}

/// Values from the store or the host reach the operator's terminal escaped: a key name
/// rewritten in the database (it is not under the tag) and ids holding control or bidi
/// characters cannot move the cursor, rewrite lines or reorder `keys list` / `show` /
/// `expiring`; ordinary UTF-8 prints unchanged, and JSON keeps the values as they are.
#[tokio::test]
async fn text_output_escapes_terminal_and_bidi_controls_from_the_store() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let eve = Actor::manager(OrgId::new("acme"), UserId::new("eve\u{1b}[1A\u{202e}"));
    let (evil, _) = make(&m, &eve, "placeholder", 30).await;
    let (_plain, _) = make(&m, &acme(), "Zürich – 東京", 30).await;
    let other = Actor::manager(OrgId::new("glo\u{1b}]0;pwned\u{7}bex"), UserId::new("gina"));
    let _ = make(&m, &other, "other", 7).await;
    // Someone who can write to the table renames the key: the record still opens.
    let evil_name = "ok\u{1b}[1A\u{1b}[2K\u{202e}gro.evil";
    let raw = SqliteStore::open(&db.path).unwrap();
    let mut rec = raw.get(evil.id()).await.unwrap().unwrap();
    rec.name = evil_name.into();
    let revision = rec.revision;
    rec.revision = revision + 1;
    raw.update(rec, revision).await.unwrap();
    let raw_controls = |s: &str| s.contains(['\u{1b}', '\u{7}', '\u{202e}']);
    let id = evil.id().to_string();

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .success();
    let table = stdout(out.get_output());
    assert!(!raw_controls(&table), "{table:?}");
    assert!(
        table.contains("ok\\u{1b}[1A\\u{1b}[2K\\u{202e}gro.evil"),
        "{table:?}"
    );
    assert!(table.contains("Zürich – 東京"), "{table:?}");

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", &id])
        .assert()
        .success();
    let shown = stdout(out.get_output());
    assert!(!raw_controls(&shown), "{shown:?}");
    assert!(
        shown.contains("ok\\u{1b}[1A\\u{1b}[2K\\u{202e}gro.evil"),
        "{shown:?}"
    );
    assert!(shown.contains("by eve\\u{1b}[1A\\u{202e}\n"), "{shown:?}");

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "10d"])
        .assert()
        .success();
    let expiring = stdout(out.get_output());
    assert!(!raw_controls(&expiring), "{expiring:?}");
    assert!(
        expiring.contains("glo\\u{1b}]0;pwned\\u{7}bex"),
        "{expiring:?}"
    );

    // Scripts get the stored values, escaped by JSON itself.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "show", &id, "--json"])
        .assert()
        .success();
    assert_eq!(json(out.get_output())["name"], evil_name);
}

#[tokio::test]
async fn keys_expiring_lists_every_organization_soonest_first() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (a, _) = make(&m, &acme(), "a-week", 7).await;
    let (g, _) = make(&m, &globex(), "g-week", 7).await;
    let (_, _) = make(&m, &acme(), "a-quarter", 90).await;
    let (r, info) = make(&m, &acme(), "revoked-week", 7).await;
    m.revoke(&acme(), &info.id).await.unwrap();

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "14d", "--json"])
        .assert()
        .success();
    let got = ids(&json(out.get_output()));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(&a.id().to_string()) && got.contains(&g.id().to_string()));
    assert!(
        !got.contains(&r.id().to_string()),
        "a revoked key is not expiring"
    );

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "14d"])
        .assert()
        .success();
    let table = stdout(out.get_output());
    assert!(
        table.contains("ORG") && table.contains("globex") && table.contains("in 6d"),
        "{table}"
    );

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "12h", "--json"])
        .assert()
        .success();
    assert!(ids(&json(out.get_output())).is_empty());

    // A duration without a unit is a usage error that shows the accepted forms.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "expiring", "--within", "14"])
        .assert()
        .code(2);
    assert!(stderr(out.get_output()).contains("14d"));
}

#[tokio::test]
async fn keys_revoke_stops_the_key_and_records_the_operator() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k, _) = make(&m, &acme(), "leaky", 30).await;
    m.verify(k.expose_secret(), &read()).await.unwrap();
    let id = k.id().to_string();

    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "revoke", &id, "--operator", "oncall-olga"])
        .assert()
        .success();
    assert!(stdout(out.get_output()).contains("revoked"));

    assert!(matches!(
        m.verify(k.expose_secret(), &read()).await,
        Err(Error::Revoked)
    ));
    let rec = m.store().get(k.id()).await.unwrap().unwrap();
    assert_eq!(rec.revoked_by, Some(UserId::new("oncall-olga")));
    assert_eq!(rec.revocation, Some(RevocationReason::Manual));

    // Again: a no-op that says so.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "revoke", &id])
        .assert()
        .success();
    assert!(stdout(out.get_output()).contains("already revoked"));

    cli_with(&db.path, 1, &OLD)
        .args(["keys", "revoke", "00000000001"])
        .assert()
        .code(4);
}

/// README's rotation walk-through: a new key as current with the old one as previous,
/// rewrap, then retire the old key — every key keeps verifying.
#[tokio::test]
async fn a_master_key_rotation_with_the_cli() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(make(&m, &acme(), &format!("k{i}"), 30).await.0);
    }

    let out = cli_with(&db.path, 2, &NEW)
        .env("API_KEYS_PREVIOUS_KEYS", format!("1:{}", hex_of(&OLD)))
        .args(["rewrap", "--json"])
        .assert()
        .success();
    let report = json(out.get_output());
    assert_eq!(report["rewrapped"], 5, "{report}");
    assert_eq!(report["failed"], 0);
    assert_eq!(report["current_version"], 2);
    // Not a terminal here: plain progress lines on standard error.
    assert!(stderr(out.get_output()).contains("rewrap: 5 records to check"));

    // Again: nothing left to do.
    let out = cli_with(&db.path, 2, &NEW)
        .env("API_KEYS_PREVIOUS_KEYS", format!("1:{}", hex_of(&OLD)))
        .arg("rewrap")
        .assert()
        .success();
    assert!(stdout(out.get_output()).contains("rewrapped 0, already current 5, failed 0"));

    // The old key retired: a manager with the new key alone verifies every key.
    let retired = manager(SqliteStore::open(&db.path).unwrap(), new_ring());
    for k in &keys {
        retired.verify(k.expose_secret(), &read()).await.unwrap();
    }
    cli_with(&db.path, 2, &NEW)
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .success();
}

#[tokio::test]
async fn rewrap_exits_1_when_records_fail() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k, _) = make(&m, &acme(), "sealed-under-1", 30).await;
    // Version 1 is not in the keyring: its records cannot be opened, so they are reported
    // and left as they are.
    let out = cli_with(&db.path, 2, &NEW)
        .args(["rewrap", "--json"])
        .assert()
        .code(1);
    assert_eq!(json(out.get_output())["failed"], 1);
    assert!(stderr(out.get_output()).contains("could not be re-sealed"));
    // Nothing was destroyed: the key still verifies under the old keyring.
    m.verify(k.expose_secret(), &read()).await.unwrap();
}

#[tokio::test]
async fn master_keys_from_a_file() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (k, _) = make(&m, &acme(), "k", 30).await;
    let file = db.path.with_file_name("master.keys");
    std::fs::write(
        &file,
        format!(
            "# current first\n2:{}\n1:{}  # retire after rewrap\n",
            hex_of(&NEW),
            hex_of(&OLD)
        ),
    )
    .unwrap();
    let out = cli()
        .arg("--sqlite")
        .arg(&db.path)
        .arg("--master-key-file")
        .arg(&file)
        .args(["rewrap", "--json"])
        .assert()
        .success();
    assert_eq!(json(out.get_output())["rewrapped"], 1);
    let retired = manager(SqliteStore::open(&db.path).unwrap(), new_ring());
    retired.verify(k.expose_secret(), &read()).await.unwrap();

    // A file that is not there, or not keys: exit 3, and the key material is never echoed.
    cli()
        .arg("--sqlite")
        .arg(&db.path)
        .arg("--master-key-file")
        .arg(file.with_file_name("missing"))
        .arg("rewrap")
        .assert()
        .code(3);
    std::fs::write(&file, "2:0011zz\n").unwrap();
    let out = cli()
        .arg("--sqlite")
        .arg(&db.path)
        .arg("--master-key-file")
        .arg(&file)
        .arg("rewrap")
        .assert()
        .code(3);
    let err = stderr(out.get_output());
    assert!(
        err.contains("32 hexadecimal characters") && !err.contains("0011zz"),
        "{err}"
    );
}

#[test]
fn configuration_errors_say_what_to_do() {
    let db = db();
    // No store at all: usage.
    let out = cli()
        .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(2);
    assert!(stderr(out.get_output()).contains("--sqlite PATH or --postgres URL"));
    // Both: usage. An explicit --sqlite wins over a machine-wide DATABASE_URL.
    cli_with(&db.path, 1, &OLD)
        .args([
            "--postgres",
            "postgres://127.0.0.1:1/x",
            "keys",
            "list",
            "--org",
            "a",
        ])
        .assert()
        .code(2);
    let out = cli_with(&db.path, 1, &OLD)
        .env("DATABASE_URL", "postgres://127.0.0.1:1/x")
        .args(["keys", "list", "--org", "a"])
        .assert()
        .code(3);
    assert!(
        stderr(out.get_output()).contains("is not a file"),
        "the SQLite path was used"
    );
    // No master key.
    let out = cli()
        .arg("--sqlite")
        .arg(&db.path)
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(3);
    let err = stderr(out.get_output());
    assert!(
        err.contains("API_KEYS_MASTER_KEY") && err.contains("master-key new"),
        "{err}"
    );
    // A malformed master key is never echoed.
    let out = cli()
        .arg("--sqlite")
        .arg(&db.path)
        .env("API_KEYS_MASTER_KEY", "deadbeef")
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(3);
    assert!(!stderr(out.get_output()).contains("deadbeef"));
    // A SQLite path that does not exist is not silently created.
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(3);
    assert!(stderr(out.get_output()).contains("is not a file"));
    assert!(!db.path.exists());
    // A password never goes on the command line (the process list shows it): usage, and
    // the password is not echoed.
    for url in [
        "postgres://app:hunter2@127.0.0.1:1/x",
        "postgresql://app:hunter2@[::1]:1/x?sslmode=disable",
        "postgres://127.0.0.1:1/x?user=app&password=hunter2",
        "host=127.0.0.1 user=app password=hunter2",
        // An unencoded `/` in the password, and a key-value string with a URL in a value.
        "postgres://app:hun/ter2@127.0.0.1:1/x",
        "password=hunter2 host=127.0.0.1 application_name=http://x",
        // A percent-encoded parameter name, which tokio-postgres decodes.
        "postgres://app@127.0.0.1:1/x?%70assword=hunter2",
        "postgres://app@127.0.0.1:1/x?PASS%57ORD=hunter2",
    ] {
        let out = cli()
            .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
            .args(["--postgres", url, "keys", "list", "--org", "acme"])
            .assert()
            .code(2);
        let err = stderr(out.get_output());
        assert!(
            err.contains("DATABASE_URL") && !err.contains("hunter2"),
            "{err}"
        );
    }
    // A PostgreSQL server that is not there (or a build without PostgreSQL): exit 3.
    let out = cli()
        .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
        .args(["--postgres", "postgres://postgres@127.0.0.1:1/x"])
        .args(["keys", "list", "--org", "acme"])
        .assert()
        .code(3);
    assert!(stderr(out.get_output()).contains("PostgreSQL"));
    // The master key is not an option at all.
    cli_with(&db.path, 1, &OLD)
        .args(["--master-key", &hex_of(&OLD), "rewrap"])
        .assert()
        .code(2);
}

/// The same operations over PostgreSQL, in a database of its own.
#[tokio::test]
async fn the_cli_over_postgres() {
    let Ok(url) = std::env::var("DATABASE_URL").map(|u| u.trim().to_string()) else {
        if std::env::var("API_KEYS_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("API_KEYS_REQUIRE_POSTGRES=1 but DATABASE_URL is not set");
        }
        eprintln!(
            "skipping the_cli_over_postgres: DATABASE_URL is not set (source .ci/postgres.sh and run pg_start to get a server)"
        );
        return;
    };
    postgres::run(&url).await;
}

#[cfg(not(feature = "postgres"))]
mod postgres {
    pub async fn run(_: &str) {
        if std::env::var("API_KEYS_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("API_KEYS_REQUIRE_POSTGRES=1 but the test was built without feature postgres");
        }
        eprintln!("skipping the_cli_over_postgres: built without feature postgres");
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use api_keys::PostgresStore;
    use std::str::FromStr;

    /// A `key=value` connection string for `cfg`'s server and database `db`.
    fn conninfo(cfg: &tokio_postgres::Config, db: &str) -> String {
        use tokio_postgres::config::Host;
        let host = match cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let mut s = format!("host={host} port={port} dbname={db}");
        if let Some(u) = cfg.get_user() {
            s.push_str(&format!(" user={u}"));
        }
        if let Some(p) = cfg.get_password() {
            s.push_str(&format!(" password={}", String::from_utf8_lossy(p)));
        }
        s
    }

    pub async fn run(url: &str) {
        let cfg = tokio_postgres::Config::from_str(url).expect("DATABASE_URL does not parse");
        let (admin, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).unwrap();
        let name = format!("api_keys_cli_{:016x}", u64::from_le_bytes(b));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = conninfo(&cfg, &name);
        let outcome = {
            let url = url.clone();
            tokio::spawn(async move { scenario(&url).await }).await
        };
        let _ = admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    async fn scenario(url: &str) {
        // The service migrates its schema; the tool only connects.
        let store = PostgresStore::connect_and_migrate(url).await.unwrap();
        let m = manager(store, old_ring());
        let (k, _) = make(&m, &acme(), "pg-key", 7).await;
        let id = k.id().to_string();
        let pg = |version: u32, key: &[u8; 16]| {
            let mut c = cli();
            c.env("DATABASE_URL", url)
                .env("API_KEYS_MASTER_KEY", hex_of(key))
                .env("API_KEYS_MASTER_KEY_VERSION", version.to_string());
            c
        };
        let out = pg(1, &OLD)
            .args(["keys", "list", "--org", "acme", "--json"])
            .assert()
            .success();
        assert_eq!(ids(&json(out.get_output())), vec![id.clone()]);
        let out = pg(1, &OLD)
            .args(["keys", "expiring", "--within", "8d", "--json"])
            .assert()
            .success();
        assert_eq!(ids(&json(out.get_output())), vec![id.clone()]);
        let out = pg(2, &NEW)
            .env("API_KEYS_PREVIOUS_KEYS", format!("1:{}", hex_of(&OLD)))
            .args(["rewrap", "--json"])
            .assert()
            .success();
        assert_eq!(json(out.get_output())["rewrapped"], 1);
        pg(2, &NEW).args(["keys", "revoke", &id]).assert().success();
        let again = manager(PostgresStore::connect(url).await.unwrap(), new_ring());
        assert!(matches!(
            again.verify(k.expose_secret(), &read()).await,
            Err(Error::Revoked)
        ));
    }
}

/// `keys revoke-leaked`: tokens on standard input; genuine ones revoked with the source, the
/// rest false positives; the output names lines, never tokens.
#[tokio::test]
async fn keys_revoke_leaked_reads_tokens_from_standard_input() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (leaked, _) = make(&m, &acme(), "leaked", 30).await;
    let (kept, _) = make(&m, &acme(), "kept", 30).await;
    let t = leaked.expose_secret();
    let wrong = format!("{}{}", &t[..20], if &t[20..21] == "a" { "b" } else { "a" });
    let input = format!("{t}\n\nnot-a-token\n{wrong}{}\n", &t[21..]);
    let out = cli_with(&db.path, 1, &OLD)
        .args([
            "keys",
            "revoke-leaked",
            "--source",
            "https://example.com/paste/9",
        ])
        .write_stdin(input)
        .assert()
        .success();
    let text = stdout(out.get_output());
    assert!(
        text.contains("1 genuine token(s) revoked (lines [1])"),
        "{text}"
    );
    assert!(
        text.contains("2 false positive(s) (lines [3, 4])"),
        "{text}"
    );
    for part in [t, &t[15..40]] {
        assert!(!text.contains(part) && !stderr(out.get_output()).contains(part));
    }
    assert!(matches!(m.verify(t, &read()).await, Err(Error::Revoked)));
    let rec = m.store().get(leaked.id()).await.unwrap().unwrap();
    assert_eq!(
        rec.revocation,
        Some(RevocationReason::Leaked {
            source: "https://example.com/paste/9".into()
        })
    );
    m.verify(kept.expose_secret(), &read()).await.unwrap();
}

/// A line that is not UTF-8 (a binary paste) is a false positive like any other non-token:
/// the leaked token after it is still revoked, and the report names both.
#[tokio::test]
async fn keys_revoke_leaked_goes_on_past_a_line_that_is_not_utf8() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (first, _) = make(&m, &acme(), "first", 30).await;
    let (second, _) = make(&m, &acme(), "second", 30).await;
    let mut input = Vec::new();
    input.extend_from_slice(first.expose_secret().as_bytes());
    input.extend_from_slice(b"\n\xff\xfe garbage from a paste\n");
    input.extend_from_slice(second.expose_secret().as_bytes());
    input.push(b'\n');
    let out = cli_with(&db.path, 1, &OLD)
        .args(["keys", "revoke-leaked", "--source", "paste"])
        .write_stdin(input)
        .assert()
        .success();
    let text = stdout(out.get_output());
    assert!(
        text.contains("2 genuine token(s) revoked (lines [1, 3]); 1 false positive(s) (lines [2])"),
        "{text}"
    );
    for key in [&first, &second] {
        assert!(matches!(
            m.verify(key.expose_secret(), &read()).await,
            Err(Error::Revoked)
        ));
    }
}

/// An invalid `--source` is a usage error (exit 2) before anything is read, also when
/// standard input is empty.
#[tokio::test]
async fn keys_revoke_leaked_refuses_a_bad_source_as_usage() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let (key, _) = make(&m, &acme(), "k", 30).await;
    for (source, input) in [
        ("x".repeat(600), String::new()),
        (
            "line\nbreak".to_owned(),
            format!("{}\n", key.expose_secret()),
        ),
        (
            "https://x/\u{202e}gpj.exe".to_owned(),
            format!("{}\n", key.expose_secret()),
        ),
    ] {
        let out = cli_with(&db.path, 1, &OLD)
            .args(["keys", "revoke-leaked", "--source", &source])
            .write_stdin(input)
            .assert()
            .code(2);
        assert!(stderr(out.get_output()).contains("--source"));
    }
    m.verify(key.expose_secret(), &read()).await.unwrap();
}

/// A master-key version given twice is a configuration error (exit 3) wherever it repeats.
#[test]
fn a_previous_master_key_version_given_twice_is_a_configuration_error() {
    let db = db();
    let _ = SqliteStore::open(&db.path).unwrap();
    let previous = format!("1:{},1:{}", hex_of(&OLD), hex_of(&OLD));
    let out = cli_with(&db.path, 2, &NEW)
        .env("API_KEYS_PREVIOUS_KEYS", previous)
        .args(["keys", "expiring"])
        .assert()
        .code(3);
    assert!(stderr(out.get_output()).contains("twice"));
}

/// `sweep`: the automations once, with the flags' policy, counts at the end — and a second
/// sweep sends no warning twice.
#[tokio::test]
async fn sweep_warns_once_and_revokes_unused_keys_when_asked() {
    let db = db();
    // Keys created 25 days ago: a 30-day key expires in 5 days (its 7-day warning is due),
    // a 365-day key much later (none due).
    let past = api_keys::time::OffsetDateTime::now_utc() - api_keys::time::Duration::days(25);
    let m = KeyManager::builder(SqliteStore::open(&db.path).unwrap(), old_ring())
        .clock(api_keys::ManualClock::new(past))
        .build()
        .unwrap();
    make(&m, &acme(), "soon", 30).await;
    make(&m, &acme(), "later", 365).await;
    let out = cli_with(&db.path, 1, &OLD)
        .args(["sweep", "--json", "--warn-before", "30d,7d,1d"])
        .assert()
        .success();
    let v = json(out.get_output());
    assert_eq!(v["scanned"], 2);
    assert_eq!(v["expiry_warnings"], 1, "{v}");
    let out = cli_with(&db.path, 1, &OLD)
        .args(["sweep", "--json"])
        .assert()
        .success();
    assert_eq!(json(out.get_output())["expiry_warnings"], 0);
    cli_with(&db.path, 1, &OLD)
        .args(["sweep", "--warn-before", "soon"])
        .assert()
        .code(2);
}

/// A token typed as an argument (rather than on standard input, or where an id belongs) is a
/// usage error that never repeats it: standard error may be logged, and the token is secret.
#[test]
fn a_token_given_as_an_argument_is_refused_without_echoing_it() {
    let token = format!("sak_{}x", "A1b2C3d4E5".repeat(6));
    let with_source = [
        "keys",
        "revoke-leaked",
        "--source",
        "https://x.example/a",
        &token,
    ];
    for args in [
        &["keys", "revoke-leaked", &token][..],
        &with_source[..],
        &["keys", "revoke", "00000000001", &token][..],
        &[&token, "keys", "list"][..],
        // An option's value that does not parse (the parser's own reason quoted it too).
        &["keys", "expiring", "--within", &token][..],
        &["keys", "expiring", &format!("--within={token}")][..],
    ] {
        let out = cli()
            .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
            .args(args)
            .assert()
            .code(2);
        let (out, err) = (stdout(out.get_output()), stderr(out.get_output()));
        assert!(
            !err.contains(&token) && !out.contains(&token),
            "{args:?}: {err}{out}"
        );
        assert!(!err.contains("A1b2C3d4E5"), "{args:?}: {err}");
    }
}

/// A reader that stops early (`api-keys keys list --org acme | head -1`) ends the output, not
/// the tool: no panic, and the exit code is still the command's own (a documented one) —
/// for `master-key new`, whose output is the whole point, 3 (the key did not reach anyone).
#[tokio::test]
async fn a_reader_that_stops_early_is_not_a_panic() {
    let db = db();
    let m = manager(SqliteStore::open(&db.path).unwrap(), old_ring());
    let _ = make(&m, &acme(), "deploy-bot", 30).await;
    let db_arg = db.path.to_str().unwrap();
    for (args, code) in [
        (&["master-key", "new"][..], 3),
        (
            &["--sqlite", db_arg, "keys", "list", "--org", "acme"][..],
            0,
        ),
        (
            &[
                "--sqlite", db_arg, "keys", "list", "--org", "acme", "--json",
            ][..],
            0,
        ),
    ] {
        // The reader is gone before the tool starts.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_api-keys"))
            .env_clear()
            .env("API_KEYS_MASTER_KEY", hex_of(&OLD))
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    }
}
