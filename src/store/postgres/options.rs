//! [`PostgresOptions`]: pool size and timeouts of a [`PostgresStore`].

use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};

use super::error::{PostgresError, PostgresErrorKind};
use super::feed::FeedConnector;
use super::{Inner, PostgresStore};
use crate::StoreError;

const DEFAULT_APPLICATION_NAME: &str = "api-keys";
/// PostgreSQL's upper limit of `max_connections` (`MAX_BACKENDS`, 2^18 - 1).
const MAX_POOL_SIZE: usize = 262_143;

/// Pool size and timeouts of a [`PostgresStore`]; start from [`PostgresStore::options`].
///
/// | knob | default | on expiry |
/// |---|---|---|
/// | [`pool_size`](Self::pool_size) | 16 connections (plus one for the change feed) | — |
/// | [`connect_timeout`](Self::connect_timeout) | the URL's `connect_timeout`, else 10 s | [`PostgresErrorKind::Connect`] |
/// | [`statement_timeout`](Self::statement_timeout) | 5 s (server-side `statement_timeout`; every call is also bounded on this side by it plus 1 s) | [`PostgresErrorKind::StatementTimeout`]; [`PostgresErrorKind::Unresponsive`] when the server does not answer at all |
/// | [`pool_wait_timeout`](Self::pool_wait_timeout) | 5 s waiting for a free connection | [`PostgresErrorKind::PoolTimeout`] |
/// | [`table`](Self::table) | `api_keys` | — |
///
/// ```no_run
/// # async fn f() -> Result<(), api_keys::StoreError> {
/// use std::time::Duration;
/// use api_keys::PostgresStore;
/// let store = PostgresStore::options()
///     .pool_size(32)
///     .statement_timeout(Duration::from_secs(2))
///     .connect("postgres://app@db/keys")
///     .await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    pool_size: usize,
    connect_timeout: Option<Duration>,
    statement_timeout: Duration,
    pool_wait_timeout: Duration,
    table: String,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl PostgresOptions {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        PostgresOptions {
            pool_size: 16,
            connect_timeout: None,
            statement_timeout: Duration::from_secs(5),
            pool_wait_timeout: Duration::from_secs(5),
            table: super::super::sql::DEFAULT_TABLE.to_string(),
        }
    }

    /// The table holding the keys (default `api_keys`; `[a-z_][a-z0-9_]{0,47}`). Its schema
    /// version is in `<table>_schema`, its trigger notifies channel `<table>_changes`. Key
    /// stores of separate products can share one database this way; managers of different
    /// key classes (token prefixes) may also share one table — every record is bound to its
    /// class — so a table of its own keeps rows apart, it is not needed for safety. An invalid
    /// name — or one PostgreSQL reserves (`order`, `user`, ...), or whose `<table>_notify()`
    /// function a new schema would replace — fails `connect` with
    /// [`PostgresErrorKind::InvalidTable`].
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Most pooled connections (at least 1, at most 262 143 — the most `max_connections` any
    /// PostgreSQL server allows; the pool reserves its slots up front). The change feed has
    /// one more of its own.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.clamp(1, MAX_POOL_SIZE);
        self
    }

    /// How long making a connection may take (overrides the URL's `connect_timeout`). Zero is
    /// the default, as the URL's `connect_timeout=0` is (a connection attempt is always
    /// bounded: a server that accepts and never answers must not hold the pool or the feed).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// The server-side `statement_timeout` of the pooled connections: a statement that runs
    /// (or waits on a lock) longer is cancelled and fails with
    /// [`PostgresErrorKind::StatementTimeout`]. A server that does not answer at all (frozen,
    /// a hung socket) cannot cancel anything, so each call is also bounded here, by this
    /// timeout plus a second, after which it fails with [`PostgresErrorKind::Unresponsive`] and
    /// its connection is closed. Zero: no limit on either side. The server's side takes at
    /// most `i32::MAX` milliseconds (about 24.8 days): a longer timeout is that long there.
    pub fn statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = d;
        self
    }

    /// How long a call waits for a free pooled connection before failing with
    /// [`PostgresErrorKind::PoolTimeout`].
    pub fn pool_wait_timeout(mut self, d: Duration) -> Self {
        self.pool_wait_timeout = d;
        self
    }

    /// [`PostgresStore::connect`] with these options.
    ///
    /// # Errors
    /// As [`PostgresStore::connect`].
    pub async fn connect(&self, url: &str) -> Result<PostgresStore, StoreError> {
        self.open(url, NoTls, false).await
    }

    /// [`PostgresStore::connect_with_tls`] with these options.
    ///
    /// # Errors
    /// As [`PostgresStore::connect`].
    pub async fn connect_with_tls<T>(&self, url: &str, tls: T) -> Result<PostgresStore, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send + Sync,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        self.open(url, tls, false).await
    }

    /// [`PostgresStore::connect_and_migrate`] with these options.
    ///
    /// # Errors
    /// As [`PostgresStore::connect_and_migrate`].
    pub async fn connect_and_migrate(&self, url: &str) -> Result<PostgresStore, StoreError> {
        self.open(url, NoTls, true).await
    }

    /// [`PostgresOptions::connect_and_migrate`] with a TLS connector.
    ///
    /// # Errors
    /// As [`PostgresStore::connect_and_migrate`].
    pub async fn connect_and_migrate_with_tls<T>(
        &self,
        url: &str,
        tls: T,
    ) -> Result<PostgresStore, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send + Sync,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        self.open(url, tls, true).await
    }

    async fn open<T>(&self, url: &str, tls: T, migrate: bool) -> Result<PostgresStore, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send + Sync,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        if !super::super::sql::valid_table(&self.table) {
            return Err(StoreError::backend(PostgresError::new(
                PostgresErrorKind::InvalidTable,
                None,
            )));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            StoreError::backend(PostgresError::new(
                PostgresErrorKind::NoRuntime,
                Some(Box::new(e)),
            ))
        })?;
        // The driver's parse error can quote a fragment of the string (e.g. a word of an
        // unquoted password): it is never passed on.
        let mut config = tokio_postgres::Config::from_str(url).map_err(|_| {
            StoreError::backend(PostgresError::new(PostgresErrorKind::InvalidUrl, None))
        })?;
        if config.get_application_name().is_none() {
            config.application_name(DEFAULT_APPLICATION_NAME);
        }
        if let Some(d) = self.connect_timeout.filter(|d| !d.is_zero()) {
            config.connect_timeout(d);
        } else if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let mut feed_config = config.clone();
        feed_config.application_name(format!(
            "{}-feed",
            config
                .get_application_name()
                .unwrap_or(DEFAULT_APPLICATION_NAME)
        ));
        if !self.statement_timeout.is_zero() {
            // PostgreSQL refuses a longer one (and with it every connection): its largest.
            let ms = self
                .statement_timeout
                .as_millis()
                .clamp(1, i32::MAX as u128);
            let options = match config.get_options() {
                Some(o) if !o.is_empty() => format!("{o} -c statement_timeout={ms}"),
                _ => format!("-c statement_timeout={ms}"),
            };
            config.options(options);
        }
        let manager = Manager::from_config(
            config,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .runtime(Runtime::Tokio1)
            .max_size(self.pool_size)
            .wait_timeout(Some(self.pool_wait_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| {
                StoreError::backend(PostgresError::new(
                    PostgresErrorKind::Connect,
                    Some(Box::new(e)),
                ))
            })?;
        let feed: FeedConnector = Arc::new(move || {
            let config = feed_config.clone();
            let tls = tls.clone();
            Box::pin(async move {
                // The driver's own connect timeout covers the socket only: a server that
                // accepts and then stops answering would hold the feed forever.
                let (client, mut connection) =
                    tokio::time::timeout(connect_timeout, config.connect(tls))
                        .await
                        .map_err(|_| "timed out connecting (the handshake got no answer)")??;
                let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                Ok((client, Box::pin(messages) as Pin<Box<_>>))
            })
        });
        let store = PostgresStore {
            inner: Arc::new(Inner {
                pool,
                feed,
                runtime,
                table: self.table.clone(),
                call_timeout: (!self.statement_timeout.is_zero()).then(|| {
                    self.statement_timeout
                        .saturating_add(Duration::from_secs(1))
                }),
            }),
        };
        store.check_table_name().await?;
        if migrate {
            store.run_migrations().await?;
        }
        store.check_schema().await?;
        Ok(store)
    }
}
