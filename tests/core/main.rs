//! The core rules of issue 2: generation, policy, roles, verification order, tampering.

#[path = "../common/mod.rs"]
mod common;

use api_keys::time::{Duration, OffsetDateTime};
use api_keys::{
    Actor, AnyStore, Error, Expiry, GenerateRequest, KeyId, KeyManager, KeyStatus, KeyStore,
    Keyring, MasterKey, MemoryStore, OrgId, Policy, Scope, UserId,
};
use common::*;

mod access;
mod integrity;
mod policy;
mod tokens;

fn prom(name: &str) -> GenerateRequest {
    GenerateRequest::new(name).scope(Scope::Prometheus)
}
