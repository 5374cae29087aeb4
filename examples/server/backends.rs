//! Shared backends for running several server nodes as one deployment: PostgreSQL for the keys
//! (`--postgres URL` or `API_KEYS_POSTGRES_URL`, feature `postgres`) and Redis for the usage
//! counters (`--redis URL` or `API_KEYS_REDIS_URL`, feature `redis`, strict mode: one atomic
//! script per verification, never over-admits).
//!
//! Every node of a deployment must use the same database, the same Redis and the same master
//! key (`API_KEYS_MASTER_KEY` is required with `--postgres`). A revoke on one node reaches the
//! caches of the others through the store's `LISTEN/NOTIFY` feed, which the manager subscribes
//! to when it is built; while the feed is down the cache falls back to its 1 s TTL.

use api_keys::{AnyStore, KeyManagerBuilder};

/// The shared backends asked for on the command line or in the environment. Its `Debug`
/// says which are set, never the URLs (they can carry passwords).
#[derive(Default, PartialEq, Eq)]
pub struct Backends {
    /// The PostgreSQL URL of the key store.
    pub postgres: Option<String>,
    /// The Redis URL of the usage counters.
    pub redis: Option<String>,
    /// The timeout of one Redis call (`API_KEYS_REDIS_TIMEOUT_MS`; the crate's default,
    /// 50 ms, when unset).
    pub redis_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Backends")
            .field("postgres", &set(&self.postgres))
            .field("redis", &set(&self.redis))
            .field("redis_timeout", &self.redis_timeout)
            .finish()
    }
}

/// Usage of the options this module takes.
pub const USAGE: &str = "  --postgres URL   keys in PostgreSQL, shared by every node (feature `postgres`; also API_KEYS_POSTGRES_URL; needs API_KEYS_MASTER_KEY)
  --redis URL      usage counters in Redis, shared by every node (feature `redis`; also API_KEYS_REDIS_URL;
                   API_KEYS_REDIS_TIMEOUT_MS: the timeout of one Redis call, default 50)";

/// Takes `--postgres` and `--redis` (with a separate or `=` value) out of `args` and returns
/// them with the remaining arguments; the environment fills in what the arguments leave unset.
pub fn take_backends(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Backends, Vec<String>), String> {
    let mut backends = Backends::default();
    let mut rest = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (slot, name) = match arg.split_once('=').map_or(arg.as_str(), |(k, _)| k) {
            "--postgres" => (&mut backends.postgres, "--postgres"),
            "--redis" => (&mut backends.redis, "--redis"),
            _ => {
                rest.push(arg);
                continue;
            }
        };
        let value = match arg.split_once('=') {
            Some((_, v)) => v.to_string(),
            None => args.next().ok_or(format!("{name} needs a URL"))?,
        };
        if value.is_empty() {
            return Err(format!("{name} needs a URL"));
        }
        *slot = Some(value);
    }
    let from_env = |k: &str| env(k).filter(|v| !v.is_empty());
    backends.postgres = backends
        .postgres
        .or_else(|| from_env("API_KEYS_POSTGRES_URL"));
    backends.redis = backends.redis.or_else(|| from_env("API_KEYS_REDIS_URL"));
    if let Some(ms) = from_env("API_KEYS_REDIS_TIMEOUT_MS") {
        let ms: u64 = ms
            .parse()
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or("API_KEYS_REDIS_TIMEOUT_MS must be a positive number of milliseconds")?;
        backends.redis_timeout = Some(std::time::Duration::from_millis(ms));
    }
    check_master_key(&backends, &env)?;
    Ok((backends, rest))
}

/// A shared store needs one master key on every node: a random one per process would make
/// every node's keys unreadable to the others.
fn check_master_key(b: &Backends, env: &impl Fn(&str) -> Option<String>) -> Result<(), String> {
    if b.postgres.is_some() && env("API_KEYS_MASTER_KEY").is_none_or(|k| k.is_empty()) {
        return Err(
            "--postgres needs API_KEYS_MASTER_KEY (32 hex digits), the same on every node".into(),
        );
    }
    Ok(())
}

/// The PostgreSQL store (created or migrated on connect), when one was asked for.
#[cfg(feature = "postgres")]
pub async fn postgres_store(b: &Backends) -> Result<Option<AnyStore>, String> {
    let Some(url) = &b.postgres else {
        return Ok(None);
    };
    let store = api_keys::PostgresStore::connect_and_migrate(url)
        .await
        .map_err(|e| {
            let source = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            format!("cannot connect to PostgreSQL (--postgres): {e}{source}")
        })?;
    println!("keys are kept in PostgreSQL, shared by every node (change feed: LISTEN/NOTIFY)");
    Ok(Some(AnyStore::new(store)))
}

/// The PostgreSQL store, when one was asked for (this build has no PostgreSQL store).
#[cfg(not(feature = "postgres"))]
pub async fn postgres_store(b: &Backends) -> Result<Option<AnyStore>, String> {
    match b.postgres {
        None => Ok(None),
        Some(_) => {
            Err("--postgres needs the PostgreSQL store: build with --features axum,postgres".into())
        }
    }
}

/// Hands the manager's builder the Redis usage counters, when they were asked for.
#[cfg(feature = "redis")]
pub fn counters(
    b: &Backends,
) -> Result<impl FnOnce(KeyManagerBuilder<AnyStore>) -> KeyManagerBuilder<AnyStore>, String> {
    let engine = match &b.redis {
        None => None,
        Some(url) => {
            let mut engine = api_keys::RedisCounters::builder(url.clone());
            if let Some(t) = b.redis_timeout {
                engine = engine.timeout(t);
            }
            let engine = engine
                .build()
                .map_err(|e| format!("invalid Redis URL (--redis): {e}"))?;
            println!("usage counters are kept in Redis, shared by every node (strict mode)");
            Some(engine)
        }
    };
    Ok(move |builder: KeyManagerBuilder<AnyStore>| match engine {
        Some(engine) => builder.counters(engine),
        None => builder,
    })
}

/// Hands the manager's builder the Redis usage counters (this build has none).
#[cfg(not(feature = "redis"))]
pub fn counters(
    b: &Backends,
) -> Result<impl FnOnce(KeyManagerBuilder<AnyStore>) -> KeyManagerBuilder<AnyStore>, String> {
    match b.redis {
        None => Ok(|builder| builder),
        Some(_) => Err("--redis needs the Redis counters: build with --features axum,redis".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    const KEY: &str = "000102030405060708090a0b0c0d0e0f";

    #[test]
    fn debug_never_shows_the_urls() {
        let b = Backends {
            postgres: Some("postgres://app:pg-secret@db/keys".into()),
            redis: Some("redis://:redis-secret@cache/".into()),
            redis_timeout: None,
        };
        let shown = format!("{b:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<set>"), "{shown}");
    }

    #[test]
    fn backends_come_out_of_the_arguments_and_the_rest_stays() {
        let env = |k: &str| (k == "API_KEYS_MASTER_KEY").then(|| KEY.to_string());
        let (b, rest) = take_backends(
            args(&[
                "81",
                "--postgres",
                "postgres://h/db",
                "--redis=redis://r/",
                "--allow-reveal",
            ]),
            env,
        )
        .unwrap();
        assert_eq!(b.postgres.as_deref(), Some("postgres://h/db"));
        assert_eq!(b.redis.as_deref(), Some("redis://r/"));
        assert_eq!(rest, args(&["81", "--allow-reveal"]));
    }

    #[test]
    fn the_environment_fills_in_and_arguments_win() {
        let env = |k: &str| match k {
            "API_KEYS_POSTGRES_URL" => Some("postgres://env/db".to_string()),
            "API_KEYS_REDIS_URL" => Some("redis://env/".to_string()),
            "API_KEYS_MASTER_KEY" => Some(KEY.to_string()),
            _ => None,
        };
        let (b, rest) = take_backends(args(&["--redis", "redis://arg/"]), env).unwrap();
        assert_eq!(b.postgres.as_deref(), Some("postgres://env/db"));
        assert_eq!(b.redis.as_deref(), Some("redis://arg/"));
        assert!(rest.is_empty());
        assert_eq!(b.redis_timeout, None);
    }

    #[test]
    fn the_redis_timeout_comes_from_the_environment() {
        let env = |ms: &'static str| {
            move |k: &str| (k == "API_KEYS_REDIS_TIMEOUT_MS").then(|| ms.to_string())
        };
        let (b, _) = take_backends(args(&[]), env("250")).unwrap();
        assert_eq!(b.redis_timeout, Some(std::time::Duration::from_millis(250)));
        assert!(take_backends(args(&[]), env("0")).is_err());
        assert!(take_backends(args(&[]), env("soon")).is_err());
    }

    #[test]
    fn a_missing_url_or_master_key_is_refused() {
        let key = |k: &str| (k == "API_KEYS_MASTER_KEY").then(|| KEY.to_string());
        assert!(take_backends(args(&["--postgres"]), key).is_err());
        assert!(take_backends(args(&["--redis="]), key).is_err());
        let none = |_: &str| None;
        assert!(take_backends(args(&["--postgres", "postgres://h/db"]), none).is_err());
        assert_eq!(
            take_backends(args(&[]), none).unwrap(),
            (Backends::default(), vec![])
        );
    }
}
