//! The automations with a `ManualClock`: leak reports, offboarding, expiry warnings, unused
//! keys, retention, and sweeps racing on several nodes (MemoryStore here; SQLite and
//! PostgreSQL with their features — PostgreSQL reads `DATABASE_URL` and skips without it
//! unless `API_KEYS_REQUIRE_POSTGRES=1`).

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use api_keys::time::Duration;
use api_keys::{
    Actor, AuditAction, AutomationEvent, BoxError, Error, Expiry, GenerateRequest, KeyId,
    KeyManager, KeyStatus, KeyStore, LeakVerdict, ManualClock, MemoryStore, Notification, Notifier,
    OrgId, Policy, RevocationReason, Scope, UserId,
};
use common::{Recorder, alice, bob_member, days, keyring, start, with_id, wrong_secret};

mod concurrency;
mod departed_and_unused;
mod expiry_warnings;
mod leaks;
mod purge;

/// A notifier that keeps every notification (and can be told to fail).
#[derive(Clone, Default)]
struct Notes {
    seen: Arc<Mutex<Vec<Notification>>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Notes {
    fn all(&self) -> Vec<Notification> {
        self.seen.lock().unwrap().clone()
    }
    fn names(&self) -> Vec<&'static str> {
        self.all().iter().map(|n| n.event.name()).collect()
    }
    fn take(&self) -> Vec<Notification> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Notifier for Notes {
    fn notify(&self, n: &Notification) -> Result<(), BoxError> {
        self.seen.lock().unwrap().push(n.clone());
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("mail server down".into());
        }
        Ok(())
    }
}

struct Node<S> {
    manager: KeyManager<S>,
    clock: ManualClock,
    audit: Recorder,
    notes: Notes,
}

fn node_with<S: KeyStore + 'static>(store: S, policy: Policy, clock: &ManualClock) -> Node<S> {
    node_prefixed(store, policy, clock, "sak")
}

fn node_prefixed<S: KeyStore + 'static>(
    store: S,
    policy: Policy,
    clock: &ManualClock,
    prefix: &str,
) -> Node<S> {
    let audit = Recorder::default();
    let notes = Notes::default();
    let manager = KeyManager::builder(store, keyring())
        .prefix(prefix)
        .clock(clock.clone())
        .policy(policy)
        .audit(audit.clone())
        .notifier(notes.clone())
        .build()
        .unwrap();
    Node {
        manager,
        clock: clock.clone(),
        audit,
        notes,
    }
}

fn node(policy: Policy) -> Node<MemoryStore> {
    node_with(MemoryStore::new(), policy, &ManualClock::new(start()))
}

fn req(name: &str) -> GenerateRequest {
    GenerateRequest::new(name).scope(Scope::Prometheus)
}

fn carol() -> Actor {
    Actor::manager(OrgId::new("acme"), UserId::new("carol"))
}

fn audited(audit: &Recorder, action: &AuditAction) -> Vec<Option<KeyId>> {
    audit
        .events()
        .into_iter()
        .filter(|e| &e.action == action)
        .map(|e| e.key_id)
        .collect()
}
