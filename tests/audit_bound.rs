//! A flood of bad tokens cannot flood the logs: the default `TracingAudit` sink logs the first
//! few failed verifications (and stale answers during a store outage) per class, key id and
//! window in full and then one summary line with the exact count; management actions are
//! never sampled. (Its own test binary: the bound is per process.)

mod common;

use api_keys::time::Duration;
use api_keys::{
    GenerateRequest, KeyManager, LOG_FULL_PER_WINDOW, LOG_WINDOW_SECS, MemoryStore, Scope,
    TracingAudit,
};
use common::*;

#[tokio::test(flavor = "current_thread")]
async fn failed_verifications_and_stale_answers_are_logged_with_a_bound_and_exact_counts() {
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let clock = api_keys::ManualClock::new(start());
    let m = KeyManager::builder(MemoryStore::new(), keyring())
        .clock(clock.clone())
        .build()
        .unwrap();
    let a = alice();
    let (key, _) = m
        .generate(&a, GenerateRequest::new("k").scope(Scope::Prometheus))
        .await
        .unwrap();
    const FLOOD: u64 = 2_000;
    for i in 0..FLOOD {
        let _ = m.verify(&format!("garbage-{i}"), &Scope::Prometheus).await;
        let _ = m
            .verify(&wrong_secret(key.expose_secret()), &Scope::Prometheus)
            .await;
    }
    // Management actions in the middle of a flood are always logged.
    for i in 0..20 {
        m.generate(&a, GenerateRequest::new(format!("n{i}")).scope(Scope::Scim))
            .await
            .unwrap();
    }
    let lines: Vec<String> = buffer.text().lines().map(str::to_string).collect();
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("outcome=\"malformed\""), LOG_FULL_PER_WINDOW as usize);
    assert_eq!(
        count("outcome=\"invalid_key\""),
        LOG_FULL_PER_WINDOW as usize
    );
    assert_eq!(count("action=\"generated\""), 21);
    // The next window: one summary line per class with the exact count left out.
    clock.advance(Duration::seconds(LOG_WINDOW_SECS));
    let _ = m.verify("garbage", &Scope::Prometheus).await;
    let _ = m
        .verify(&wrong_secret(key.expose_secret()), &Scope::Prometheus)
        .await;
    let lines: Vec<String> = buffer.text().lines().map(str::to_string).collect();
    let suppressed = FLOOD - u64::from(LOG_FULL_PER_WINDOW);
    for class in ["malformed", "invalid_key"] {
        one_summary(&lines, &format!("outcome=\"{class}\""), suppressed);
    }
    assert_eq!(TracingAudit::suppressed_total(), 2 * suppressed);
    // 4 000 failures produced a bounded number of lines.
    assert!(lines.len() < 60, "{} lines", lines.len());

    // A store outage with stale serving on: every request of a warm key is accepted from the
    // cache and audited, but the log gets the same bound (and a summary of its own).
    let store = CountingStore::default();
    let fallback = std::time::Duration::from_millis(100);
    let stale = KeyManager::builder(store.clone(), keyring())
        .clock(clock.clone())
        .cache_fallback_ttl(fallback)
        .serve_stale_while_store_unreachable(std::time::Duration::from_secs(600))
        .build()
        .unwrap();
    let (warm, _) = stale
        .generate(&a, GenerateRequest::new("w").scope(Scope::Prometheus))
        .await
        .unwrap();
    stale
        .verify(warm.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    store
        .fail_get
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(fallback + std::time::Duration::from_millis(50)).await;
    // A fresh window, so that no line of the failures above shares the stale key's slot.
    clock.advance(Duration::seconds(LOG_WINDOW_SECS));
    const OUTAGE: u64 = 500;
    for _ in 0..OUTAGE {
        stale
            .verify(warm.expose_secret(), &Scope::Prometheus)
            .await
            .unwrap();
    }
    let stale_lines = |text: String| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("action=\"served_stale\""))
            .map(str::to_string)
            .collect()
    };
    let served = stale_lines(buffer.text());
    assert_eq!(served.len(), LOG_FULL_PER_WINDOW as usize, "{served:?}");
    clock.advance(Duration::seconds(LOG_WINDOW_SECS));
    stale
        .verify(warm.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    let left_out = OUTAGE - u64::from(LOG_FULL_PER_WINDOW);
    one_summary(
        &stale_lines(buffer.text()),
        "action=\"served_stale\"",
        left_out,
    );
    assert_eq!(TracingAudit::suppressed_total(), 2 * suppressed + left_out);
}

/// Exactly one summary line among `lines` contains `needle`, and it counts `left_out`.
fn one_summary(lines: &[String], needle: &str, left_out: u64) {
    let summary: Vec<_> = lines
        .iter()
        .filter(|l| l.contains(needle) && l.contains("suppressed="))
        .collect();
    assert_eq!(summary.len(), 1, "{lines:?}");
    assert!(
        summary[0].contains(&format!("suppressed={left_out}")),
        "{}",
        summary[0]
    );
}
