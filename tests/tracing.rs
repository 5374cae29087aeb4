//! Every management action and failed verification produces a `tracing` event with the key
//! id, org and outcome class — and no event ever carries secret material.

mod common;

use api_keys::time::Duration;
use api_keys::{GenerateRequest, KeyManager, MemoryStore, Policy, Scope};
use common::*;

#[tokio::test(flavor = "current_thread")]
async fn tracing_events_name_ids_and_outcomes_but_never_secrets() {
    let (buffer, _guard) = capture_thread_logs();

    // The default audit sink is `TracingAudit`.
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .policy(Policy::default().allow_reveal(true))
        .build()
        .unwrap();
    let a = alice();
    let (key, info) = m
        .generate(&a, GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    m.list(&a).await.unwrap();
    m.reveal(&a, &info.id).await.unwrap();
    let (key2, info2) = m.roll(&a, &info.id, Duration::hours(1)).await.unwrap();
    let _ = m.verify(key.expose_secret(), &Scope::Scim).await;
    let t = key.expose_secret();
    let near_miss = format!(
        "{}{}",
        &t[..t.len() - 1],
        if t.ends_with('x') { 'y' } else { 'x' }
    );
    let _ = m.verify(&near_miss, &Scope::Prometheus).await;
    m.revoke(&a, &info2.id).await.unwrap();
    let _ = m.verify(key2.expose_secret(), &Scope::Prometheus).await;
    m.delete(&a, &info.id).await.unwrap();

    let out = buffer.text();
    for action in [
        "generated",
        "listed",
        "revealed",
        "rolled",
        "revoked",
        "deleted",
    ] {
        assert!(
            out.contains(&format!("action=\"{action}\"")),
            "no {action} event in:\n{out}"
        );
    }
    for outcome in ["scope_not_allowed", "malformed", "revoked"] {
        assert!(
            out.contains(&format!("outcome=\"{outcome}\"")),
            "no {outcome} outcome in:\n{out}"
        );
    }
    assert!(out.contains(&info.id.to_string()) && out.contains("org=\"acme\""));
    for token in [
        key.expose_secret(),
        key2.expose_secret(),
        near_miss.as_str(),
    ] {
        assert!(!out.contains(token), "a token reached the log:\n{out}");
        assert!(
            !out.contains(&token[15..40]),
            "part of a secret reached the log:\n{out}"
        );
    }
}

/// An audit sink that refuses every event.
struct RefusingSink;

impl api_keys::AuditSink for RefusingSink {
    fn record(&self, _: &api_keys::AuditEvent) -> Result<(), api_keys::BoxError> {
        Err("audit database unreachable".into())
    }
}

/// When the host's sink fails, a management action still succeeds (its event is best
/// effort), but the event is not lost without a trace: the log line names the action, the key,
/// the organization and the actor, and says why the sink failed.
#[tokio::test(flavor = "current_thread")]
async fn an_event_the_sink_refused_is_logged_with_what_it_was() {
    let (buffer, _guard) = capture_thread_logs();
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .audit(RefusingSink)
        .build()
        .unwrap();
    let a = alice();
    let (_, info) = m
        .generate(&a, GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    m.revoke(&a, &info.id).await.unwrap();
    let out = buffer.text();
    let line = out
        .lines()
        .find(|l| l.contains("audit sink failed") && l.contains("revoked"))
        .unwrap_or_else(|| panic!("no line for the lost revoked event in:\n{out}"));
    for part in [
        info.id.to_string(),
        "acme".to_string(),
        "alice".to_string(),
        "audit database unreachable".to_string(),
    ] {
        assert!(line.contains(&part), "{part} missing from: {line}");
    }
}

/// A flood of bad tokens while the host's sink is down must not flood the log with one
/// "audit sink failed" line per request: those lines are bounded like the failed
/// verifications `TracingAudit` logs, and the rest are summarized with their count.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_sink_under_a_flood_of_bad_tokens_does_not_flood_the_log() {
    let (buffer, _guard) = capture_thread_logs();
    let clock = api_keys::ManualClock::new(start());
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .clock(clock.clone())
        .audit(RefusingSink)
        .build()
        .unwrap();
    for _ in 0..200 {
        m.verify("sak_not_a_token", &Scope::Prometheus)
            .await
            .unwrap_err();
    }
    let out = buffer.text();
    let lines = out
        .lines()
        .filter(|l| l.contains("audit sink failed"))
        .count();
    assert!(
        (1..=api_keys::LOG_FULL_PER_WINDOW as usize).contains(&lines),
        "{lines} lines for 200 failures in one window:\n{out}"
    );
    // A later window says how many were left out.
    clock.advance(Duration::seconds(api_keys::LOG_WINDOW_SECS));
    m.verify("sak_not_a_token", &Scope::Prometheus)
        .await
        .unwrap_err();
    let out = buffer.text();
    let left_out = 200 - lines;
    assert!(
        out.contains(&format!("suppressed={left_out}")),
        "no summary of {left_out} in:\n{out}"
    );
}

/// A store outage with stale serving on, while the host's sink (often in the same database)
/// is down too: every request of a warm key is accepted from the cache, and the sink's
/// refusals of those `served_stale` events are logged with the same bound, not once per
/// request.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_sink_during_a_store_outage_does_not_flood_the_log() {
    let (buffer, _guard) = capture_thread_logs();
    let clock = api_keys::ManualClock::new(start());
    let store = CountingStore::default();
    let fallback = std::time::Duration::from_millis(100);
    let m = KeyManager::builder(store.clone(), keyring())
        .clock(clock.clone())
        .audit(RefusingSink)
        .cache_fallback_ttl(fallback)
        .serve_stale_while_store_unreachable(std::time::Duration::from_secs(600))
        .build()
        .unwrap();
    let (warm, _) = m
        .generate(&alice(), GenerateRequest::new("w").scope(Scope::Prometheus))
        .await
        .unwrap();
    m.verify(warm.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    store
        .fail_get
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Past the fallback TTL: each verify reads the (failing) store and is served stale.
    tokio::time::sleep(fallback + std::time::Duration::from_millis(50)).await;
    for _ in 0..200 {
        m.verify(warm.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    let out = buffer.text();
    let lines = out
        .lines()
        .filter(|l| l.contains("audit sink failed") && l.contains("served_stale"))
        .count();
    assert!(
        (1..=api_keys::LOG_FULL_PER_WINDOW as usize).contains(&lines),
        "{lines} lines for 200 stale answers in one window:\n{out}"
    );
}

/// Organization and user ids may hold any character: an event's text shows a plain id as it
/// is, and quotes and escapes one holding a newline, a space or a `=`, so that no id can add
/// a line or a field (a forged `key=`) to a log that writes events with `{}`.
#[test]
fn an_events_text_cannot_be_given_a_line_or_a_field_by_an_id() {
    use api_keys::{AuditAction, AuditEvent, OrgId, UserId};
    let event = |org: &str, actor: &str| AuditEvent {
        action: AuditAction::Revoked,
        actor: Some(UserId::new(actor)),
        org: Some(OrgId::new(org)),
        key_id: None,
        at: start(),
    };
    assert_eq!(
        event("acme", "alice").to_string(),
        "revoked org=acme actor=alice"
    );
    let forged = event("acme\nrevoked org=globex", "mallory key=AAAAAAAAAAA").to_string();
    assert_eq!(forged.lines().count(), 1, "{forged}");
    assert_eq!(
        forged,
        r#"revoked org="acme\nrevoked org=globex" actor="mallory key=AAAAAAAAAAA""#
    );
}
