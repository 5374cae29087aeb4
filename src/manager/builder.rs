//! [`KeyManagerBuilder`]: a [`KeyManager`]'s configuration, checked once at `build`.

use super::*;

impl<S: KeyStore + 'static> KeyManager<S> {
    /// Starts building a manager over `store` with `keyring`.
    pub fn builder(store: S, keyring: Keyring) -> KeyManagerBuilder<S> {
        KeyManagerBuilder {
            store,
            keyring,
            prefix: DEFAULT_PREFIX.to_string(),
            clock: Arc::new(SystemClock),
            policy: Policy::default(),
            audit: Arc::new(TracingAudit),
            cache_ttl: StdDuration::from_secs(30),
            fallback_ttl: StdDuration::from_secs(1),
            max_stale: StdDuration::ZERO,
            cache_capacity: 100_000,
            notifier: None,
            last_use_interval: StdDuration::from_secs(10),
            last_use_capacity: 10_000,
            counters: Arc::new(LocalCounters::new()),
            local: None,
        }
        .counters(LocalCounters::new())
    }
}

/// Builds a [`KeyManager`]; see [`KeyManager::builder`].
pub struct KeyManagerBuilder<S> {
    store: S,
    keyring: Keyring,
    prefix: String,
    clock: Arc<dyn Clock>,
    policy: Policy,
    audit: Arc<dyn AuditSink>,
    cache_ttl: StdDuration,
    fallback_ttl: StdDuration,
    max_stale: StdDuration,
    cache_capacity: usize,
    notifier: Option<Arc<dyn Notifier>>,
    last_use_interval: StdDuration,
    last_use_capacity: usize,
    counters: Arc<dyn UsageCounters>,
    /// `counters` when it is the in-process engine (the warm path's shortcut).
    local: Option<Arc<LocalCounters>>,
}

impl<S: KeyStore + 'static> KeyManagerBuilder<S> {
    /// Where the counters of usage limits live (default: a fresh [`LocalCounters`], counting
    /// in this process only). Give every manager of a deployment the same shared engine
    /// (e.g. the `redis` feature's) to enforce limits across nodes.
    ///
    /// With [`LocalCounters`] given here (or the default), each cached record keeps a handle
    /// to its key's counters, so a warm verification of a limited key goes straight to them.
    pub fn counters<C: UsageCounters>(mut self, counters: C) -> Self {
        let mut slot = Some(counters);
        let local = (&mut slot as &mut dyn std::any::Any)
            .downcast_mut::<Option<LocalCounters>>()
            .and_then(Option::take);
        match (local, slot) {
            (Some(local), _) => {
                let local = Arc::new(local);
                self.local = Some(local.clone());
                self.counters = local;
            }
            (None, Some(other)) => {
                self.local = None;
                self.counters = Arc::new(other);
            }
            // `take` emptied the slot only when it was a `LocalCounters`.
            (None, None) => {}
        }
        self
    }

    /// As [`KeyManagerBuilder::counters`], for an engine already shared (e.g. by several
    /// managers of one process).
    pub fn shared_counters(mut self, counters: Arc<dyn UsageCounters>) -> Self {
        self.local = None;
        self.counters = counters;
        self
    }

    /// Where the automations' events go besides the audit sink (expiry warnings, expiries,
    /// unused-key warnings and revocations, purges, leaks, departed users): e-mail, chat,
    /// webhooks. None by default.
    pub fn notifier(mut self, notifier: impl Notifier) -> Self {
        self.notifier = Some(Arc::new(notifier));
        self
    }

    /// The token prefix, `[a-z][a-z0-9]{1,15}` (default `sak`). A manager rejects tokens of
    /// any other prefix as [`Error::Malformed`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The clock deciding creation and expiry (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The policy (default [`Policy::default`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The audit sink (default [`TracingAudit`]).
    pub fn audit(mut self, sink: impl AuditSink) -> Self {
        self.audit = Arc::new(sink);
        self
    }

    /// How long a verified record may be served from the cache while the store's change feed
    /// is connected (default 30 s).
    pub fn cache_ttl(mut self, ttl: StdDuration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long a verified record may be served from the cache when the store has no change
    /// feed or it is disconnected (default 1 s). This bounds how long a revocation made by
    /// *another* process can go unnoticed. Zero disables the cache.
    pub fn cache_fallback_ttl(mut self, ttl: StdDuration) -> Self {
        self.fallback_ttl = ttl;
        self
    }

    /// Off by default. While the store is *unreachable* (a verify's store read fails with
    /// [`Error::Store`]), keep accepting a key this node verified from the store less than
    /// `max` ago (and since the store's change feed last connected, if it has one: an older
    /// entry may predate a change whose notification was lost; and, while the feed is down or
    /// for a store without one, since the latest store read — a verification's, a `get` or
    /// `list` — that answered), instead of failing. Each such use is audited as
    /// [`AuditAction::ServedStale`](crate::AuditAction::ServedStale). It never applies to a
    /// key this node knows was revoked or deleted (its cache entry says revoked, or is gone),
    /// nor to a tampered record; but a revocation made on *another* node during the outage
    /// goes unnoticed for up to `max`. Zero (the default) turns it off. It is meant for a
    /// store with a change feed (PostgreSQL): over one without, little qualifies.
    pub fn serve_stale_while_store_unreachable(mut self, max: StdDuration) -> Self {
        self.max_stale = max;
        self
    }

    /// How often buffered last uses are written to the store, in one batch (default 10 s).
    /// A verify never waits on that write; a crash loses at most the uses of one interval
    /// (each key's use is recorded at most once a minute anyway).
    pub fn last_use_flush_interval(mut self, interval: StdDuration) -> Self {
        self.last_use_interval = interval;
        self
    }

    /// Most keys whose last use waits in the buffer (default 10 000); uses beyond it, while
    /// the store is slow, are dropped and logged.
    pub fn last_use_buffer(mut self, capacity: usize) -> Self {
        self.last_use_capacity = capacity;
        self
    }

    /// Most records kept in the cache (default 100 000), rounded up to a multiple of its 64
    /// shards: each shard keeps at most `n / 64` records, rounded up, so `cache_capacity(1)`
    /// keeps up to 64. Zero disables the cache.
    pub fn cache_capacity(mut self, n: usize) -> Self {
        self.cache_capacity = n;
        self
    }

    /// Checks the configuration and builds the manager.
    ///
    /// # Errors
    /// [`Error::Policy`] for an invalid prefix, policy or keyring; [`Error::Random`] if the
    /// OS generator fails.
    pub fn build(self) -> Result<KeyManager<S>, Error> {
        if !valid_prefix(&self.prefix) {
            return Err(Error::Policy(
                "a token prefix must match [a-z][a-z0-9]{1,15}".into(),
            ));
        }
        self.policy.validate()?;
        self.keyring.validate()?;
        let cache = Arc::new(Cache::new(
            self.cache_ttl.max(self.fallback_ttl),
            self.fallback_ttl,
            self.max_stale,
            self.cache_capacity,
        )?);
        let listener: Arc<dyn ChangeListener> = cache.clone();
        if self.store.changes(Arc::downgrade(&listener)) {
            cache.feed_subscribed();
        }
        crate::metrics::describe();
        Ok(KeyManager {
            inner: Arc::new(Inner {
                store: self.store,
                keyring: RwLock::new(Arc::new(self.keyring)),
                prefix: self.prefix,
                clock: self.clock,
                policy: self.policy,
                audit: self.audit,
                cache,
                notifier: self.notifier,
                uses: uses::Uses::new(self.last_use_capacity, self.last_use_interval),
                counters: self.counters,
                local: self.local,
            }),
        })
    }
}
