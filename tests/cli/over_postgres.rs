//! The CLI against a PostgreSQL store.

#[cfg(feature = "postgres")]
use super::*;

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
