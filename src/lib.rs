#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod audit;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench_support;
mod cache;
mod checksum;
mod clock;
mod crypto;
mod error;
mod ids;
mod key;
mod leaks;
mod limits;
mod manager;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod policy;
mod record;
mod store;
mod sweep;
mod token;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;

pub use audit::{
    AuditAction, AuditEvent, AuditSink, FailureClass, LOG_FULL_PER_WINDOW, LOG_WINDOW_SECS,
    TracingAudit,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use crypto::{Keyring, MasterKey};
pub use error::{BoxError, Error, StoreError};
pub use ids::{Actor, KeyId, OrgId, Role, Scope, UserId};
pub use key::{ApiKey, KeyInfo, KeyStatus, LimitStatus, RevocationReason, Verified};
pub use leaks::{LeakVerdict, MAX_LEAK_BATCH, MAX_LEAK_SOURCE_BYTES};
pub use limits::{
    Consumed, CounterError, Credits, Decision, LimitScope, LimitUsage, LocalCounters,
    MAX_RATE_LIMITS, MAX_UNITS, RateLimit, Refill, Usage, UsageCounters, UsageRequest,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use limits::{RedisCounters, RedisCountersBuilder, RedisStats};
pub use manager::{KeyManager, KeyManagerBuilder, RewrapReport};
pub use policy::{Expiry, GenerateRequest, Policy};
pub use record::{KeyRecord, Notices, RECORD_FORMAT, Sealed};
pub use store::{
    AnyStore, BoxFuture, Change, ChangeKind, ChangeListener, DynKeyStore, KeyStore, MemoryStore,
};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::{PostgresError, PostgresErrorKind, PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::{SqliteError, SqliteErrorKind, SqliteStore};
pub use sweep::{
    AutomationEvent, EXPIRED_NOTICE_WINDOW, Notification, Notifier, SweepReport, UNUSED_NOTICE,
};
pub use token::{DEFAULT_PREFIX, MAX_TOKEN_LEN, UntrustedToken};

/// Re-exported so hosts use the same `time` as the crate.
pub use time;
