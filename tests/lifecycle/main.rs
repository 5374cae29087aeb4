//! Issue 3: roll, reveal, expiry tracking, last use, master-key rotation, audit.

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use api_keys::time::{Duration, OffsetDateTime};
use api_keys::{
    AuditAction, AuditEvent, AuditSink, BoxError, Error, Expiry, FailureClass, GenerateRequest,
    KeyId, KeyManager, KeyRecord, KeyStatus, KeyStore, Keyring, MasterKey, MemoryStore, OrgId,
    Policy, RateLimit, Scope, StoreError,
};
use common::*;

mod audit;
mod clock_edges;
mod expiry;
mod last_use;
mod races;
mod rewrap;
mod roll;

fn prom(name: &str) -> GenerateRequest {
    GenerateRequest::new(name).scope(Scope::Prometheus)
}

async fn works<S: KeyStore + 'static>(m: &KeyManager<S>, token: &str) -> Result<(), Error> {
    m.verify(token, &Scope::Prometheus).await.map(|_| ())
}

const V2: [u8; 16] = *b"fedcba9876543210";

fn v2_keyring() -> Keyring {
    Keyring::new(2, MasterKey::from_bytes(V2)).with_previous(1, MasterKey::from_bytes(MASTER))
}

/// A node of a rotation's step 2: still sealing under 1, already opening 2.
fn lagging_keyring() -> Keyring {
    Keyring::new(1, MasterKey::from_bytes(MASTER)).with_next(2, MasterKey::from_bytes(V2))
}
