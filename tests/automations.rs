//! The automations with a `ManualClock`: leak reports, offboarding, expiry warnings, unused
//! keys, retention, and sweeps racing on several nodes (MemoryStore here; SQLite and
//! PostgreSQL with their features — PostgreSQL reads `DATABASE_URL` and skips without it
//! unless `API_KEYS_REQUIRE_POSTGRES=1`).

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

// ---------------------------------------------------------------- revoke_leaked

#[tokio::test]
async fn a_genuine_leaked_token_revokes_its_key_with_the_source() {
    let n = node(Policy::default());
    let (key, _) = n.manager.generate(&alice(), req("ci")).await.unwrap();
    let source = "https://github.com/acme/app/blob/main/.env";
    let verdict = n
        .manager
        .revoke_leaked(key.expose_secret(), source)
        .await
        .unwrap();
    assert_eq!(verdict, LeakVerdict::TruePositive);
    let info = n.manager.get(&alice(), key.id()).await.unwrap();
    assert_eq!(info.status, KeyStatus::Revoked);
    assert_eq!(
        info.revocation,
        Some(RevocationReason::Leaked {
            source: source.into()
        })
    );
    assert!(matches!(
        n.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));
    assert_eq!(
        audited(&n.audit, &AuditAction::Leaked { revoked: true }),
        vec![Some(*key.id())]
    );
    let notes = n.notes.all();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        notes[0].event,
        AutomationEvent::Leaked {
            source: source.into()
        }
    );
    assert_eq!(notes[0].key.id, *key.id());

    // Reported again (idempotent): still a true positive, the first source stays, no second
    // notification, one more audit event saying it was already revoked.
    let again = n
        .manager
        .revoke_leaked(key.expose_secret(), "https://elsewhere.example/paste")
        .await
        .unwrap();
    assert_eq!(again, LeakVerdict::TruePositive);
    let info = n.manager.get(&alice(), key.id()).await.unwrap();
    assert_eq!(
        info.revocation,
        Some(RevocationReason::Leaked {
            source: source.into()
        })
    );
    assert_eq!(n.notes.all().len(), 1);
    assert_eq!(
        audited(&n.audit, &AuditAction::Leaked { revoked: false }),
        vec![Some(*key.id())]
    );
}

#[tokio::test]
async fn revoked_and_expired_keys_are_true_positives_too() {
    let n = node(Policy::default());
    let (revoked, _) = n.manager.generate(&alice(), req("r")).await.unwrap();
    n.manager.revoke(&alice(), revoked.id()).await.unwrap();
    let (expired, _) = n
        .manager
        .generate(&alice(), req("e").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    n.clock.advance(days(8));

    let v = n
        .manager
        .revoke_leaked(revoked.expose_secret(), "https://x.example/1")
        .await
        .unwrap();
    assert_eq!(v, LeakVerdict::TruePositive);
    // Already revoked: its first reason stays.
    let info = n.manager.get(&alice(), revoked.id()).await.unwrap();
    assert_eq!(info.revocation, Some(RevocationReason::Manual));

    let v = n
        .manager
        .revoke_leaked(expired.expose_secret(), "https://x.example/2")
        .await
        .unwrap();
    assert_eq!(v, LeakVerdict::TruePositive);
    let info = n.manager.get(&alice(), expired.id()).await.unwrap();
    assert_eq!(info.status, KeyStatus::Revoked);
    assert_eq!(
        info.revocation,
        Some(RevocationReason::Leaked {
            source: "https://x.example/2".into()
        })
    );
}

#[tokio::test]
async fn every_non_genuine_token_gets_the_same_answer_and_revokes_nothing() {
    let store = MemoryStore::new();
    let clock = ManualClock::new(start());
    let n = node_with(store.clone(), Policy::default(), &clock);
    let other = node_prefixed(store, Policy::default(), &clock, "sap");
    let (key, _) = n.manager.generate(&alice(), req("ci")).await.unwrap();
    let (foreign, _) = other
        .manager
        .generate(&alice(), req("other"))
        .await
        .unwrap();
    let token = key.expose_secret();
    let unknown = with_id(token, "0000000000A");
    let candidates = [
        wrong_secret(token),
        unknown,
        "sak_not-a-token".to_string(),
        String::new(),
        format!("{token}x"),
        token.to_uppercase(),
        foreign.expose_secret().to_string(),
    ];
    for t in &candidates {
        let v = n.manager.revoke_leaked(t, "https://x.example").await;
        assert!(matches!(v, Ok(LeakVerdict::FalsePositive)), "{v:?}");
    }
    let pairs: Vec<(&str, &str)> = candidates.iter().map(|t| (t.as_str(), "u")).collect();
    let batch = n.manager.revoke_leaked_batch(&pairs).await.unwrap();
    assert_eq!(batch, vec![LeakVerdict::FalsePositive; candidates.len()]);
    // Nothing was revoked, nothing announced.
    assert!(n.manager.verify(token, &Scope::Prometheus).await.is_ok());
    assert!(
        other
            .manager
            .verify(foreign.expose_secret(), &Scope::Prometheus)
            .await
            .is_ok()
    );
    assert!(n.notes.all().is_empty());
    assert!(audited(&n.audit, &AuditAction::Leaked { revoked: true }).is_empty());
}

#[tokio::test]
async fn leak_batches_are_bounded_and_sources_checked() {
    let n = node(Policy::default());
    let (a, _) = n.manager.generate(&alice(), req("a")).await.unwrap();
    let (b, _) = n.manager.generate(&alice(), req("b")).await.unwrap();
    let too_many = vec![(a.expose_secret(), "u"); api_keys::MAX_LEAK_BATCH + 1];
    assert!(matches!(
        n.manager.revoke_leaked_batch(&too_many).await,
        Err(Error::Policy(_))
    ));
    let long = "u".repeat(api_keys::MAX_LEAK_SOURCE_BYTES + 1);
    assert!(matches!(
        n.manager.revoke_leaked(a.expose_secret(), &long).await,
        Err(Error::Policy(_))
    ));
    // A source is shown to managers: one that would display as another URL is refused.
    for reordering in ["https://x/\u{202e}gpj.exe", "https://x/\u{2067}a"] {
        assert!(matches!(
            n.manager.revoke_leaked(a.expose_secret(), reordering).await,
            Err(Error::Policy(_))
        ));
    }
    // One bad source refuses the whole batch before anything is revoked.
    let bad = n
        .manager
        .revoke_leaked_batch(&[(a.expose_secret(), "ok"), (b.expose_secret(), &long)])
        .await;
    assert!(matches!(bad, Err(Error::Policy(_))));
    assert!(
        n.manager
            .verify(a.expose_secret(), &Scope::Prometheus)
            .await
            .is_ok()
    );
    // The error never echoes the token.
    let err = bad.unwrap_err();
    let msg = format!("{err:?} {err}");
    assert!(!msg.contains(a.expose_secret()));

    let max = vec![(a.expose_secret(), "u"); api_keys::MAX_LEAK_BATCH];
    let verdicts = n.manager.revoke_leaked_batch(&max).await.unwrap();
    assert_eq!(verdicts.len(), api_keys::MAX_LEAK_BATCH);
    assert!(verdicts.iter().all(|v| *v == LeakVerdict::TruePositive));
    let wrong = wrong_secret(b.expose_secret());
    let mixed = n
        .manager
        .revoke_leaked_batch(&[(b.expose_secret(), "u1"), (&wrong, "u2")])
        .await
        .unwrap();
    assert_eq!(
        mixed,
        vec![LeakVerdict::TruePositive, LeakVerdict::FalsePositive]
    );
    // One notification per key this call revoked.
    assert_eq!(n.notes.names(), vec!["leaked", "leaked"]);
}

// ---------------------------------------------------------------- revoke_created_by

#[tokio::test]
async fn a_departed_users_active_keys_are_revoked_and_nothing_else() {
    let n = node(Policy::default());
    let (a1, _) = n.manager.generate(&alice(), req("a1")).await.unwrap();
    let (a2, _) = n.manager.generate(&alice(), req("a2")).await.unwrap();
    let (a3, _) = n.manager.generate(&alice(), req("a3")).await.unwrap();
    n.manager.revoke(&alice(), a3.id()).await.unwrap();
    let (c1, _) = n.manager.generate(&carol(), req("c1")).await.unwrap();
    // Another organization's key created by a user of the same name.
    let globex_alice = Actor::manager(OrgId::new("globex"), UserId::new("alice"));
    let (g1, _) = n.manager.generate(&globex_alice, req("g1")).await.unwrap();

    assert!(matches!(
        n.manager
            .revoke_created_by(&bob_member(), &UserId::new("alice"))
            .await,
        Err(Error::PermissionDenied)
    ));
    let count = n
        .manager
        .revoke_created_by(&carol(), &UserId::new("alice"))
        .await
        .unwrap();
    assert_eq!(count, 2);
    for id in [a1.id(), a2.id()] {
        let info = n.manager.get(&carol(), id).await.unwrap();
        assert_eq!(info.status, KeyStatus::Revoked);
        assert_eq!(info.revocation, Some(RevocationReason::DepartedUser));
    }
    // The manually revoked key keeps its reason; carol's and globex's keys still work.
    let info = n.manager.get(&carol(), a3.id()).await.unwrap();
    assert_eq!(info.revocation, Some(RevocationReason::Manual));
    for t in [&c1, &g1] {
        assert!(
            n.manager
                .verify(t.expose_secret(), &Scope::Prometheus)
                .await
                .is_ok()
        );
    }
    let mut revoked = audited(&n.audit, &AuditAction::RevokedDepartedUser);
    revoked.sort();
    let mut expected = vec![Some(*a1.id()), Some(*a2.id())];
    expected.sort();
    assert_eq!(revoked, expected);
    assert_eq!(
        n.notes.names(),
        vec!["revoked_departed_user", "revoked_departed_user"]
    );
    // Again: nothing more to do.
    assert_eq!(
        n.manager
            .revoke_created_by(&carol(), &UserId::new("alice"))
            .await
            .unwrap(),
        0
    );
}

// ---------------------------------------------------------------- expiry warnings

#[tokio::test]
async fn expiry_warnings_go_out_once_per_lead_time_then_one_expired_event() {
    let n = node(Policy::default());
    let (key, _) = n.manager.generate(&alice(), req("ci")).await.unwrap();
    let id = *key.id();
    // Fresh key (90 days): nothing due.
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.scanned, r.expiry_warnings), (1, 0));
    n.clock.advance(days(59));
    assert_eq!(n.manager.sweep().await.unwrap().expiry_warnings, 0);

    let mut seen = Vec::new();
    for (at, expected) in [
        (days(60), Some(days(30))),
        (days(70), None),
        (days(83), Some(days(7))),
        (days(89), Some(days(1))),
    ] {
        n.clock.set(start() + at);
        for round in 0..3 {
            let r = n.manager.sweep().await.unwrap();
            let want = usize::from(round == 0 && expected.is_some());
            assert_eq!(r.expiry_warnings, want, "at {at}, round {round}");
        }
        seen.extend(n.notes.take());
        if let Some(lead) = expected {
            let info = n.manager.get(&alice(), &id).await.unwrap();
            assert_eq!(info.last_expiry_warning(), Some(lead));
        }
    }
    let events: Vec<AutomationEvent> = seen.iter().map(|n| n.event.clone()).collect();
    assert_eq!(
        events,
        vec![
            AutomationEvent::ExpiryWarning { lead: days(30) },
            AutomationEvent::ExpiryWarning { lead: days(7) },
            AutomationEvent::ExpiryWarning { lead: days(1) },
        ]
    );
    assert!(seen.iter().all(|n| n.key.id == id && n.key.name == "ci"));
    let warned = n.manager.get(&alice(), &id).await.unwrap().notices;
    assert_eq!(
        warned.expiry_warned,
        vec![
            days(30).whole_seconds(),
            days(7).whole_seconds(),
            days(1).whole_seconds()
        ]
    );
    assert!(!warned.expired);
    // The list shows the same state.
    let listed = n.manager.list(&alice()).await.unwrap();
    assert_eq!(listed[0].notices, warned);
    assert_eq!(listed[0].last_expiry_warning(), Some(days(1)));

    n.clock.set(start() + days(90));
    assert_eq!(n.manager.sweep().await.unwrap().expired, 1);
    assert_eq!(n.manager.sweep().await.unwrap().expired, 0);
    assert_eq!(n.notes.names(), vec!["expired"]);
    assert!(n.manager.get(&alice(), &id).await.unwrap().notices.expired);
    assert_eq!(audited(&n.audit, &AuditAction::Expired), vec![Some(id)]);
    assert_eq!(
        audited(&n.audit, &AuditAction::ExpiryWarning { lead: days(7) }),
        vec![Some(id)]
    );
}

#[tokio::test]
async fn a_late_sweep_sends_only_the_most_pressing_warning_and_short_keys_skip_long_leads() {
    let n = node(Policy::default());
    let (late, _) = n.manager.generate(&alice(), req("late")).await.unwrap();
    let (short, _) = n
        .manager
        .generate(&alice(), req("short").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    // The first sweep in a long time: 5 days before `late` expires, 30 and 7 days are both
    // due: one warning (7 days), both marked. `short` (7-day lifetime) started inside its
    // 30- and 7-day windows: no warning until the 1-day one.
    n.clock.set(start() + days(85));
    n.manager.sweep().await.unwrap();
    let notes = n.notes.take();
    let late_notes: Vec<_> = notes.iter().filter(|x| x.key.id == *late.id()).collect();
    assert_eq!(late_notes.len(), 1);
    assert_eq!(
        late_notes[0].event,
        AutomationEvent::ExpiryWarning { lead: days(7) }
    );
    let info = n.manager.get(&alice(), late.id()).await.unwrap();
    assert_eq!(
        info.notices.expiry_warned,
        vec![days(30).whole_seconds(), days(7).whole_seconds()]
    );
    // `short` expired long ago: only its Expired event, no warnings.
    assert!(
        notes
            .iter()
            .filter(|x| x.key.id == *short.id())
            .all(|x| x.event == AutomationEvent::Expired)
    );

    let n = node(Policy::default());
    let (short, _) = n
        .manager
        .generate(&alice(), req("short").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    n.manager.sweep().await.unwrap();
    n.clock.set(start() + days(3));
    n.manager.sweep().await.unwrap();
    assert!(n.notes.all().is_empty());
    n.clock.set(start() + days(6));
    n.manager.sweep().await.unwrap();
    assert_eq!(
        n.notes.all()[0].event,
        AutomationEvent::ExpiryWarning { lead: days(1) }
    );
    assert_eq!(n.notes.all()[0].key.id, *short.id());
}

#[tokio::test]
async fn keys_that_expired_long_before_the_first_sweep_are_not_announced() {
    let n = node(Policy::default().warn_before(&[]));
    let (old, _) = n
        .manager
        .generate(&alice(), req("old").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    let (recent, _) = n.manager.generate(&alice(), req("recent")).await.unwrap();
    // `old` expired on day 7, `recent` on day 90; the first sweep runs on day 100.
    n.clock.set(start() + days(100));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!(r.expired, 1);
    let notes = n.notes.all();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].key.id, *recent.id());
    assert!(
        !n.manager
            .get(&alice(), old.id())
            .await
            .unwrap()
            .notices
            .expired
    );
}

#[tokio::test]
async fn revoked_keys_and_a_rolled_keys_old_half_get_no_warnings() {
    let n = node(Policy::default());
    let (revoked, _) = n.manager.generate(&alice(), req("revoked")).await.unwrap();
    n.manager.revoke(&alice(), revoked.id()).await.unwrap();
    let (rolled, _) = n.manager.generate(&alice(), req("rolled")).await.unwrap();
    n.clock.set(start() + days(50));
    // The old half now expires in 10 days: inside the 30- and 7-day windows.
    let (replacement, _) = n
        .manager
        .roll(&alice(), rolled.id(), days(10))
        .await
        .unwrap();
    for at in [50, 55, 59, 61, 100] {
        n.clock.set(start() + days(at));
        n.manager.sweep().await.unwrap();
    }
    let notes = n.notes.all();
    assert!(
        notes
            .iter()
            .all(|x| x.key.id != *revoked.id() && x.key.id != *rolled.id()),
        "{:?}",
        n.notes.names()
    );
    // The replacement (90 days from day 50) got its 30-day warning at day 110? Not yet: only
    // what was due by day 100 — its 30-day warning (due day 110) is not.
    assert!(notes.iter().all(|x| x.key.id != *replacement.id()));
    n.clock.set(start() + days(111));
    n.manager.sweep().await.unwrap();
    let last = n.notes.all();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].key.id, *replacement.id());
}

#[tokio::test]
async fn a_failing_notifier_is_counted_and_the_notice_is_not_repeated() {
    let n = node(Policy::default());
    n.manager.generate(&alice(), req("ci")).await.unwrap();
    n.notes
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    n.clock.set(start() + days(61));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.expiry_warnings, r.notify_failed), (1, 1));
    n.notes
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.expiry_warnings, r.notify_failed), (0, 0));
    // The audit sink got it anyway.
    assert_eq!(
        audited(&n.audit, &AuditAction::ExpiryWarning { lead: days(30) }).len(),
        1
    );
}

#[tokio::test]
async fn one_bad_record_never_stops_the_sweep() {
    let store = MemoryStore::new();
    let n = node_with(store.clone(), Policy::default(), &ManualClock::new(start()));
    let mut ids = Vec::new();
    for i in 0..5 {
        let (k, _) = n
            .manager
            .generate(&alice(), req(&format!("k{i}")))
            .await
            .unwrap();
        ids.push(*k.id());
    }
    // Tampered: expiry moved without the master key. Plus an undecodable row.
    let mut bad = store.get(&ids[2]).await.unwrap().unwrap();
    bad.expires_at = Some(start() + days(3650));
    store.overwrite_unchecked(bad);
    store.overwrite_unchecked(api_keys::KeyRecord::undecodable(
        KeyId::parse("00000000001").unwrap(),
        OrgId::new("acme"),
    ));
    n.clock.set(start() + days(61));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!(r.scanned, 6);
    assert_eq!(r.failed, 2);
    assert_eq!(r.expiry_warnings, 4);
    assert_eq!(
        audited(&n.audit, &AuditAction::IntegrityFailure).len(),
        2,
        "each bad record is reported"
    );
    // The tampered record was never re-sealed (laundered) by the sweep.
    assert!(matches!(
        n.manager.get(&alice(), &ids[2]).await,
        Err(Error::Integrity)
    ));
}

// ---------------------------------------------------------------- unused keys

fn unused_policy() -> Policy {
    Policy::default()
        .allow_never(true)
        .revoke_unused_after(days(60))
        .warn_before(&[])
}

/// A use whose last-use write failed stays buffered: the next flush writes it, and a sweep
/// that cannot write it either still counts it, so a key used after its warning is not
/// revoked as unused because of a store hiccup.
#[tokio::test]
async fn a_use_whose_write_failed_still_keeps_the_key_from_being_revoked_as_unused() {
    let store = common::CountingStore::default();
    let clock = ManualClock::new(start());
    let n = node_with(store.clone(), unused_policy(), &clock);
    let (key, _) = n
        .manager
        .generate(&alice(), req("daily-job").expiry(Expiry::Never))
        .await
        .unwrap();
    let id = *key.id();
    n.clock.set(start() + days(53));
    assert_eq!(n.manager.sweep().await.unwrap().unused_warnings, 1);
    // Day 59: the job runs while the store refuses last-use writes, and they keep failing
    // through the day-60 sweep.
    n.clock.set(start() + days(59));
    store
        .fail_touch
        .store(true, std::sync::atomic::Ordering::SeqCst);
    n.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    n.clock.set(start() + days(60));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0), "{r:?}");
    assert_eq!(n.manager.pending_last_uses(), 1);
    // The store recovers: the next sweep writes the use, and the key stays active.
    store
        .fail_touch
        .store(false, std::sync::atomic::Ordering::SeqCst);
    n.clock.set(start() + days(61));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0), "{r:?}");
    let info = n.manager.get(&alice(), &id).await.unwrap();
    assert_eq!(info.status, KeyStatus::Active);
    assert_eq!(info.last_used_at, Some(start() + days(59)));
    assert_eq!(n.manager.pending_last_uses(), 0);
    assert_eq!(n.notes.names(), vec!["unused_warning"]);
}

/// A sweep's claim that committed but whose reply was lost is still announced, once: the
/// sweep reads the record back and finds its own claim (before, the mark was set and no
/// sweep ever sent the warning, the revocation's event or its audit line).
#[tokio::test]
async fn a_claim_whose_reply_was_lost_is_announced_once() {
    let store = common::CountingStore::default();
    let clock = ManualClock::new(start());
    let n = node_with(store.clone(), unused_policy(), &clock);
    let (key, _) = n
        .manager
        .generate(&alice(), req("idle").expiry(Expiry::Never))
        .await
        .unwrap();
    let lose_next_reply = || {
        store
            .lose_update_reply
            .store(true, std::sync::atomic::Ordering::SeqCst)
    };
    n.clock.set(start() + days(53));
    lose_next_reply();
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.failed), (1, 0), "{r:?}");
    n.clock.set(start() + days(54));
    assert_eq!(n.manager.sweep().await.unwrap().unused_warnings, 0);
    n.clock.set(start() + days(60));
    lose_next_reply();
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.revoked_unused, r.failed), (1, 0), "{r:?}");
    n.clock.set(start() + days(61));
    assert_eq!(n.manager.sweep().await.unwrap().revoked_unused, 0);
    let info = n.manager.get(&alice(), key.id()).await.unwrap();
    assert_eq!(info.revocation, Some(RevocationReason::Unused));
    assert_eq!(n.notes.names(), vec!["unused_warning", "revoked_unused"]);
    let audited = n
        .audit
        .events()
        .iter()
        .filter(|e| e.action == AuditAction::RevokedUnused)
        .count();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn an_unused_key_is_warned_then_revoked_on_a_later_sweep() {
    let n = node(unused_policy());
    let (key, _) = n
        .manager
        .generate(&alice(), req("idle").expiry(Expiry::Never))
        .await
        .unwrap();
    let id = *key.id();
    // Used on day 10: the idle period starts there.
    n.clock.set(start() + days(10));
    n.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    // Notice is 7 days: the warning is due at 53 idle days.
    n.clock.set(start() + days(10 + 52));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0));
    n.clock.set(start() + days(10 + 53));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (1, 0));
    let notes = n.notes.take();
    assert_eq!(
        notes[0].event,
        AutomationEvent::UnusedWarning {
            revoke_at: start() + days(70)
        }
    );
    assert_eq!(
        n.manager
            .get(&alice(), &id)
            .await
            .unwrap()
            .notices
            .unused_warned_at,
        Some(start() + days(63))
    );
    // Repeated sweeps before the deadline: nothing more.
    n.clock.set(start() + days(69));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0));
    n.clock.set(start() + days(70));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!(r.revoked_unused, 1);
    let info = n.manager.get(&alice(), &id).await.unwrap();
    assert_eq!(info.status, KeyStatus::Revoked);
    assert_eq!(info.revocation, Some(RevocationReason::Unused));
    assert_eq!(n.notes.names(), vec!["revoked_unused"]);
    assert_eq!(
        audited(&n.audit, &AuditAction::RevokedUnused),
        vec![Some(id)]
    );
    assert!(matches!(
        n.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Revoked)
    ));
}

#[tokio::test]
async fn turned_on_for_old_keys_the_warning_still_comes_a_full_notice_before() {
    let n = node(unused_policy());
    let (key, _) = n
        .manager
        .generate(&alice(), req("old").expiry(Expiry::Never))
        .await
        .unwrap();
    // Never used, 200 days old at the first sweep: warned, not revoked.
    n.clock.set(start() + days(200));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (1, 0));
    n.clock.set(start() + days(206));
    assert_eq!(n.manager.sweep().await.unwrap().revoked_unused, 0);
    n.clock.set(start() + days(207));
    assert_eq!(n.manager.sweep().await.unwrap().revoked_unused, 1);
    assert_eq!(
        n.manager.get(&alice(), key.id()).await.unwrap().revocation,
        Some(RevocationReason::Unused)
    );
}

#[tokio::test]
async fn a_key_used_inside_the_window_is_never_revoked() {
    let n = node(unused_policy());
    let (key, _) = n
        .manager
        .generate(&alice(), req("busy").expiry(Expiry::Never))
        .await
        .unwrap();
    // Used every 40 days for a year: never warned.
    for d in (40..400).step_by(40) {
        n.clock.set(start() + days(d));
        n.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
        n.manager.sweep().await.unwrap();
    }
    assert!(n.notes.all().is_empty());
    // Warned after an idle spell, then used before the deadline: the warning is void.
    n.clock.set(start() + days(360 + 53));
    assert_eq!(n.manager.sweep().await.unwrap().unused_warnings, 1);
    n.clock.set(start() + days(360 + 55));
    n.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    n.clock.set(start() + days(360 + 61));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (0, 0));
    assert_eq!(
        n.manager.get(&alice(), key.id()).await.unwrap().status,
        KeyStatus::Active
    );
    // The next idle period gets its own warning before any revocation.
    n.clock.set(start() + days(415 + 53));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (1, 0));
}

#[tokio::test]
async fn without_the_policy_unused_keys_stay() {
    let n = node(Policy::default().allow_never(true).warn_before(&[]));
    let (key, _) = n
        .manager
        .generate(&alice(), req("idle").expiry(Expiry::Never))
        .await
        .unwrap();
    n.clock.set(start() + days(3650));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!(
        r,
        api_keys::SweepReport {
            scanned: 1,
            ..Default::default()
        }
    );
    assert!(
        n.manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await
            .is_ok()
    );
}

// ---------------------------------------------------------------- retention

#[tokio::test]
async fn revoked_and_expired_keys_are_purged_after_retention_never_before() {
    let n = node(Policy::default().purge_after(days(30)).warn_before(&[]));
    let (revoked, _) = n.manager.generate(&alice(), req("revoked")).await.unwrap();
    let (expiring, _) = n
        .manager
        .generate(&alice(), req("expiring").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    let (active, _) = n.manager.generate(&alice(), req("active")).await.unwrap();
    n.clock.set(start() + days(1));
    n.manager.revoke(&alice(), revoked.id()).await.unwrap();

    // Revoked on day 1, expired on day 7: purged on days 31 and 37.
    n.clock.set(start() + days(31) - Duration::seconds(1));
    assert_eq!(n.manager.sweep().await.unwrap().purged, 0);
    n.clock.set(start() + days(31));
    assert_eq!(n.manager.sweep().await.unwrap().purged, 1);
    assert!(matches!(
        n.manager.get(&alice(), revoked.id()).await,
        Err(Error::NotFound)
    ));
    n.clock.set(start() + days(36));
    assert_eq!(n.manager.sweep().await.unwrap().purged, 0);
    assert!(n.manager.get(&alice(), expiring.id()).await.is_ok());
    n.clock.set(start() + days(37));
    assert_eq!(n.manager.sweep().await.unwrap().purged, 1);
    let left: Vec<KeyId> = n
        .manager
        .list(&alice())
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(left, vec![*active.id()]);
    let purged: Vec<_> = n
        .notes
        .all()
        .into_iter()
        .filter(|x| x.event == AutomationEvent::Purged)
        .map(|x| x.key.id)
        .collect();
    assert_eq!(purged, vec![*revoked.id(), *expiring.id()]);
    assert_eq!(audited(&n.audit, &AuditAction::Purged).len(), 2);
}

#[tokio::test]
async fn without_retention_nothing_is_purged() {
    let n = node(Policy::default());
    let (k, _) = n.manager.generate(&alice(), req("r")).await.unwrap();
    n.manager.revoke(&alice(), k.id()).await.unwrap();
    n.clock.set(start() + days(3650));
    assert_eq!(n.manager.sweep().await.unwrap().purged, 0);
    assert!(n.manager.get(&alice(), k.id()).await.is_ok());
}

// ---------------------------------------------------------------- concurrent sweeps

/// Two nodes (managers over two handles of one store, one clock) sweep at the same moments,
/// each many times: every key gets each warning and its `Expired` event exactly once.
///
/// `own_store`: nobody else writes to the store, so no sweep may report a failed record (a
/// shared test database may hold other tests' deliberately damaged rows).
async fn concurrent_sweeps_announce_once<S: KeyStore + 'static>(
    a: S,
    b: S,
    prefix: &str,
    own_store: bool,
) {
    let clock = ManualClock::new(start());
    let org = OrgId::new(format!("sweep-{prefix}"));
    let actor = Actor::manager(org.clone(), UserId::new("alice"));
    let n1 = node_prefixed(a, Policy::default(), &clock, prefix);
    let n2 = node_prefixed(b, Policy::default(), &clock, prefix);
    let mut ids = Vec::new();
    for i in 0..12 {
        let (k, _) = n1
            .manager
            .generate(&actor, req(&format!("k{i}")))
            .await
            .unwrap();
        ids.push(*k.id());
    }
    for at in [
        days(61),
        days(84),
        days(89) + Duration::seconds(1),
        days(90) + Duration::seconds(1),
    ] {
        clock.set(start() + at);
        for _ in 0..3 {
            let (m1, m2) = (n1.manager.clone(), n2.manager.clone());
            let t1 = tokio::spawn(async move { m1.sweep().await });
            let t2 = tokio::spawn(async move { m2.sweep().await });
            let (r1, r2) = (t1.await.unwrap().unwrap(), t2.await.unwrap().unwrap());
            if own_store {
                assert_eq!(r1.failed + r2.failed, 0);
            }
        }
    }
    let mut counts: HashMap<(KeyId, String), usize> = HashMap::new();
    for note in n1.notes.all().into_iter().chain(n2.notes.all()) {
        if note.key.org == org {
            let label = format!("{:?}", note.event);
            *counts.entry((note.key.id, label)).or_default() += 1;
        }
    }
    for id in &ids {
        for event in [
            AutomationEvent::ExpiryWarning { lead: days(30) },
            AutomationEvent::ExpiryWarning { lead: days(7) },
            AutomationEvent::ExpiryWarning { lead: days(1) },
            AutomationEvent::Expired,
        ] {
            let label = format!("{event:?}");
            assert_eq!(counts.get(&(*id, label.clone())), Some(&1), "{id} {label}");
        }
    }
    assert_eq!(counts.len(), ids.len() * 4, "{counts:?}");
    // The audit trails of both nodes together hold each event once too.
    let both: Vec<_> = n1
        .audit
        .events()
        .into_iter()
        .chain(n2.audit.events())
        .filter(|e| e.org.as_ref() == Some(&org) && e.action == AuditAction::Expired)
        .collect();
    assert_eq!(both.len(), ids.len());
    drop((n1.clock, n2.clock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sweeps_on_a_memory_store_announce_each_event_once() {
    // Every store call yields first, so the two sweeps interleave between read and write.
    let store = common::CountingStore::default();
    store
        .yields
        .store(true, std::sync::atomic::Ordering::SeqCst);
    concurrent_sweeps_announce_once(store.clone(), store, "sak", true).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sweeps_on_sqlite_announce_each_event_once() {
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "api-keys-sweep-{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(r)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys.db");
    // Two connections to one file, as two nodes sharing it.
    let a = api_keys::SqliteStore::open(&path).unwrap();
    let b = api_keys::SqliteStore::open(&path).unwrap();
    concurrent_sweeps_announce_once(a, b, "sak", true).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sweeps_on_postgres_announce_each_event_once() {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            if std::env::var("API_KEYS_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("API_KEYS_REQUIRE_POSTGRES=1 but DATABASE_URL is not set");
            }
            eprintln!(
                "skipping concurrent_sweeps_on_postgres_announce_each_event_once: DATABASE_URL is not set (source .ci/postgres.sh and run pg_start to get a server)"
            );
            return;
        }
    };
    let a = api_keys::PostgresStore::connect_and_migrate(&url)
        .await
        .unwrap();
    let b = api_keys::PostgresStore::connect_and_migrate(&url)
        .await
        .unwrap();
    // A key class of its own: other tests sharing the database are other classes to this
    // sweep (left alone), and theirs never see these keys as theirs.
    let mut r = [0u8; 4];
    getrandom::getrandom(&mut r).unwrap();
    let prefix = format!("swp{:08x}", u32::from_le_bytes(r));
    concurrent_sweeps_announce_once(a, b, &prefix, false).await;
}

/// Usage counters that note whose counters were forgotten, deciding through `LocalCounters`.
#[derive(Clone, Default)]
struct Forgetful {
    inner: Arc<api_keys::LocalCounters>,
    forgotten: Arc<Mutex<Vec<KeyId>>>,
}

impl api_keys::UsageCounters for Forgetful {
    fn consume<'a>(&'a self, req: api_keys::UsageRequest<'a>) -> api_keys::Consumed<'a> {
        self.inner.consume(req)
    }
    fn set_credits<'a>(
        &'a self,
        key: KeyId,
        credits: &'a api_keys::Credits,
        balance: u64,
        now_ms: i64,
    ) -> api_keys::BoxFuture<'a, Result<(), api_keys::CounterError>> {
        self.inner.set_credits(key, credits, balance, now_ms)
    }
    fn credits<'a>(
        &'a self,
        key: KeyId,
        credits: Option<&'a api_keys::Credits>,
        now_ms: i64,
    ) -> api_keys::BoxFuture<'a, Result<Option<u64>, api_keys::CounterError>> {
        self.inner.credits(key, credits, now_ms)
    }
    fn link_credits<'a>(
        &'a self,
        from: KeyId,
        to: KeyId,
    ) -> api_keys::BoxFuture<'a, Result<(), api_keys::CounterError>> {
        self.inner.link_credits(from, to)
    }
    fn forget<'a>(
        &'a self,
        key: KeyId,
    ) -> api_keys::BoxFuture<'a, Result<(), api_keys::CounterError>> {
        self.forgotten.lock().unwrap().push(key);
        self.inner.forget(key)
    }
}

#[tokio::test]
async fn a_purged_key_leaves_no_usage_counters_behind() {
    let clock = ManualClock::new(start());
    let counters = Forgetful::default();
    let manager = KeyManager::builder(MemoryStore::new(), keyring())
        .clock(clock.clone())
        .policy(Policy::default().purge_after(days(30)).warn_before(&[]))
        .counters(counters.clone())
        .build()
        .unwrap();
    let (key, _) = manager
        .generate(&alice(), req("limited").credits(api_keys::Credits::new(10)))
        .await
        .unwrap();
    manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    manager.revoke(&alice(), key.id()).await.unwrap();
    clock.set(start() + days(31));
    assert_eq!(manager.sweep().await.unwrap().purged, 1);
    assert_eq!(*counters.forgotten.lock().unwrap(), vec![*key.id()]);
}

/// Over a shared `MemoryStore`: after its first `get` it runs `then` (another node's step),
/// and its `fail_get`-th get fails as an unreachable store would.
#[derive(Clone)]
struct GetThenFail {
    inner: MemoryStore,
    gets: Arc<std::sync::atomic::AtomicUsize>,
    fail_get: Arc<std::sync::atomic::AtomicUsize>,
    then: Arc<Mutex<Option<KeyManager<MemoryStore>>>>,
}

impl KeyStore for GetThenFail {
    async fn insert(&self, r: api_keys::KeyRecord) -> Result<(), api_keys::StoreError> {
        self.inner.insert(r).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<api_keys::KeyRecord>, api_keys::StoreError> {
        let n = 1 + self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n == self.fail_get.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(api_keys::StoreError::backend(std::io::Error::other(
                "store unreachable",
            )));
        }
        let found = self.inner.get(id).await?;
        let other = self.then.lock().unwrap().take();
        if let Some(other) = other {
            other.sweep().await.unwrap();
        }
        Ok(found)
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.list(org).await
    }
    async fn update(&self, r: api_keys::KeyRecord, rev: u64) -> Result<(), api_keys::StoreError> {
        self.inner.update(r, rev).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, api_keys::StoreError> {
        self.inner.delete(id).await
    }
    async fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.scan(after, limit).await
    }
    async fn touch(
        &self,
        id: &KeyId,
        at: api_keys::time::OffsetDateTime,
    ) -> Result<(), api_keys::StoreError> {
        self.inner.touch(id, at).await
    }
}

#[tokio::test]
async fn a_sweep_that_lost_the_race_and_then_a_read_is_not_announcing_the_winners_claim() {
    let shared = MemoryStore::new();
    let clock = ManualClock::new(start());
    let store = GetThenFail {
        inner: shared.clone(),
        gets: Arc::default(),
        fail_get: Arc::default(),
        then: Arc::default(),
    };
    let a = node_with(store.clone(), Policy::default(), &clock);
    let b = node_with(shared.clone(), Policy::default(), &clock);
    a.manager.generate(&alice(), req("ci")).await.unwrap();
    clock.set(start() + days(60));
    // Node A reads the key and plans its 30-day warning; meanwhile node B claims and sends
    // it. A's write then meets a conflict (a definite "not written"), and A's re-read fails.
    *store.then.lock().unwrap() = Some(b.manager.clone());
    store.fail_get.store(
        store.gets.load(std::sync::atomic::Ordering::SeqCst) + 2,
        std::sync::atomic::Ordering::SeqCst,
    );
    let _ = a.manager.sweep().await.unwrap();
    let sent = a.notes.all().len() + b.notes.all().len();
    assert_eq!(sent, 1, "A {:?} B {:?}", a.notes.names(), b.notes.names());
}

#[tokio::test]
async fn a_purge_whose_reply_was_lost_is_announced_once() {
    let store = common::CountingStore::default();
    let clock = ManualClock::new(start());
    let n = node_with(
        store.clone(),
        Policy::default().purge_after(days(30)).warn_before(&[]),
        &clock,
    );
    let (key, _) = n.manager.generate(&alice(), req("old")).await.unwrap();
    n.manager.revoke(&alice(), key.id()).await.unwrap();
    clock.set(start() + days(30));
    // The purge's delete commits, but its reply is lost on the way back.
    store
        .lose_delete_reply
        .store(true, std::sync::atomic::Ordering::SeqCst);
    n.manager.sweep().await.unwrap();
    n.manager.sweep().await.unwrap();
    assert!(matches!(
        n.manager.get(&alice(), key.id()).await,
        Err(Error::NotFound)
    ));
    assert_eq!(n.notes.names(), vec!["purged"]);
    assert_eq!(
        audited(&n.audit, &AuditAction::Purged),
        vec![Some(*key.id())]
    );
}

#[tokio::test]
async fn a_sweep_whose_write_failed_does_not_announce_another_nodes_claim() {
    let store = common::CountingStore::default();
    let clock = ManualClock::new(start());
    let a = node_with(store.clone(), Policy::default(), &clock);
    let b = node_with(store.inner.clone(), Policy::default(), &clock);
    a.manager.generate(&alice(), req("ci")).await.unwrap();
    clock.set(start() + days(60));
    // Node A reads the key and plans its 30-day warning; meanwhile node B claims and sends
    // it. A's own update then never reaches the store (it writes nothing).
    let (node_b, st) = (b.manager.clone(), store.clone());
    store.after_next_get(move || async move {
        node_b.sweep().await.unwrap();
        st.fail_update
            .store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let _ = a.manager.sweep().await.unwrap();
    assert_eq!(b.notes.all().len(), 1, "B claimed and sent the warning");
    assert_eq!(
        a.notes.all().len(),
        0,
        "A wrote nothing: B's claim is not A's to send"
    );
}

/// A notifier that panics on its first call (a host's bug), then records quietly.
#[derive(Clone, Default)]
struct PanicsOnce {
    calls: Arc<Mutex<Vec<&'static str>>>,
}

impl Notifier for PanicsOnce {
    fn notify(&self, n: &Notification) -> Result<(), BoxError> {
        let first = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(n.event.name());
            calls.len() == 1
        };
        assert!(!first, "notifier bug");
        Ok(())
    }
}

/// One claim can hold two notices (an unused-key warning and an expiry warning). A notifier
/// that panics on the first must not lose the second: its mark is already written, so no
/// later sweep would ever send it (before, the panic unwound out of the sweep and the expiry
/// warning was never sent; a host sweeping in a spawned loop also lost every later sweep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_notifier_loses_no_other_notice_of_the_same_claim() {
    let clock = ManualClock::new(start());
    let notes = PanicsOnce::default();
    let manager = KeyManager::builder(MemoryStore::new(), keyring())
        .clock(clock.clone())
        .policy(Policy::default().revoke_unused_after(days(60)))
        .notifier(notes.clone())
        .build()
        .unwrap();
    let (key, _) = manager
        .generate(&alice(), req("ci").expiry(Expiry::At(start() + days(80))))
        .await
        .unwrap();
    // Day 53: unused for 53 days (warning due) and 27 days left (the 30-day warning due).
    clock.set(start() + days(53));
    let m = manager.clone();
    let first = tokio::spawn(async move { m.sweep().await }).await;
    let again = manager.sweep().await.unwrap();
    let notices = manager.get(&alice(), key.id()).await.unwrap().notices;
    assert!(notices.unused_warned && notices.expiry_warned == vec![days(30).whole_seconds()]);
    assert_eq!(
        *notes.calls.lock().unwrap(),
        vec!["unused_warning", "expiry_warning"],
        "first sweep {first:?}, second {again:?}"
    );
    let first = first.expect("the sweep survives its notifier").unwrap();
    assert_eq!(
        (
            first.notify_failed,
            first.unused_warnings,
            first.expiry_warnings
        ),
        (1, 1, 1)
    );
}

/// Node A's clock runs a few seconds ahead of node B's. A warns an idle key; right after,
/// the key is used through B, whose clock records the use a few seconds "before" the warning.
/// That use still ends the idle period: 60 idle days later the key gets a new warning, not a
/// revocation without one (before, the old warning counted and the key was revoked at once).
#[tokio::test]
async fn a_use_right_after_the_warning_on_a_node_whose_clock_is_behind_still_cancels_it() {
    let store = MemoryStore::new();
    let ahead = ManualClock::new(start());
    let behind = ManualClock::new(start());
    let a = node_with(store.clone(), unused_policy(), &ahead);
    let b = node_with(store.clone(), unused_policy(), &behind);
    let (key, _) = a
        .manager
        .generate(&alice(), req("job").expiry(Expiry::Never))
        .await
        .unwrap();
    let skew = Duration::seconds(5);
    ahead.set(start() + days(53) + skew);
    behind.set(start() + days(53));
    assert_eq!(a.manager.sweep().await.unwrap().unused_warnings, 1);
    b.manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    b.manager.flush_last_use().await.unwrap();
    let info = a.manager.get(&alice(), key.id()).await.unwrap();
    assert_eq!(info.last_used_at, Some(start() + days(53)));
    // Idle for the whole period after that use: warned again first, never revoked at once.
    ahead.set(start() + days(53 + 60) + skew);
    let r = a.manager.sweep().await.unwrap();
    assert_eq!((r.unused_warnings, r.revoked_unused), (1, 0), "{r:?}");
    assert_eq!(
        a.manager.get(&alice(), key.id()).await.unwrap().status,
        KeyStatus::Active
    );
}

/// A key announced `Expired` by a sweep whose clock then steps back (or by a node whose
/// clock runs ahead of another's) is never warned that it "expires within" a lead time
/// afterwards (before, a sweep that had missed the last day sent the 1-day warning after the
/// `Expired` event).
#[tokio::test]
async fn no_expiry_warning_follows_the_expired_event_when_a_clock_steps_back() {
    let n = node(Policy::default());
    let (key, _) = n.manager.generate(&alice(), req("ci")).await.unwrap();
    // The sweep did not run during the key's last day: the first one after sees it expired.
    n.clock.set(start() + days(90) + Duration::seconds(1));
    assert_eq!(n.manager.sweep().await.unwrap().expired, 1);
    // The clock steps back (NTP correction, or the next sweep runs on a node whose clock is
    // behind): the key is not yet expired by that clock.
    n.clock.set(start() + days(90) - Duration::seconds(30));
    let r = n.manager.sweep().await.unwrap();
    assert_eq!(r.expiry_warnings, 0, "{r:?}");
    assert_eq!(n.notes.names(), vec!["expired"]);
    assert!(
        n.manager
            .get(&alice(), key.id())
            .await
            .unwrap()
            .notices
            .expired
    );
}

/// The lead times change between sweeps (a new policy rolled out, node by node): a key
/// already warned 7 days before its expiry never gets a less pressing 30-day warning
/// afterwards (before, the first sweep under the new policy sent "expires within 30 days"
/// five days before the expiry, after the 7-day warning).
#[tokio::test]
async fn a_lead_time_added_later_never_sends_a_warning_less_pressing_than_one_sent() {
    let store = MemoryStore::new();
    let clock = ManualClock::new(start());
    let old = node_with(
        store.clone(),
        Policy::default().warn_before(&[days(7), days(1)]),
        &clock,
    );
    let new = node_with(store.clone(), Policy::default(), &clock);
    let (key, _) = old.manager.generate(&alice(), req("ci")).await.unwrap();
    clock.set(start() + days(83));
    assert_eq!(old.manager.sweep().await.unwrap().expiry_warnings, 1);
    clock.set(start() + days(85));
    let r = new.manager.sweep().await.unwrap();
    assert_eq!(r.expiry_warnings, 0, "{:?}", new.notes.all());
    clock.set(start() + days(89));
    assert_eq!(new.manager.sweep().await.unwrap().expiry_warnings, 1);
    let events: Vec<_> = new.notes.all().into_iter().map(|n| n.event).collect();
    assert_eq!(
        events,
        vec![AutomationEvent::ExpiryWarning { lead: days(1) }]
    );
    let info = new.manager.get(&alice(), key.id()).await.unwrap();
    assert_eq!(info.last_expiry_warning(), Some(days(1)));
}
