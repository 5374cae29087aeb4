//! Concurrent sweeps on every store, and sweeps that lose a race: each event announced once.

use super::*;

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
    let notes = PanicsOnce::default();
    let (manager, first) = sweep_a_claim_of_two_notices(|b| b.notifier(notes.clone())).await;
    let again = manager.sweep().await.unwrap();
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

/// An audit sink that panics on its first event (a host's bug), then records quietly.
#[derive(Clone, Default)]
struct AuditPanicsOnce {
    calls: Arc<Mutex<usize>>,
}

impl api_keys::AuditSink for AuditPanicsOnce {
    fn record(&self, _: &api_keys::AuditEvent) -> Result<(), BoxError> {
        let first = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls == 1
        };
        assert!(!first, "audit sink bug");
        Ok(())
    }
}

/// As `a_panicking_notifier_loses_no_other_notice_of_the_same_claim`, with the audit sink
/// panicking on the claim's first event instead: the panic unwound out of the sweep before
/// either notice reached the notifier, and both marks were already written — neither warning
/// was ever sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_audit_sink_loses_no_notice_of_the_same_claim() {
    let notes = Notes::default();
    let sink = AuditPanicsOnce::default();
    let (_, swept) =
        sweep_a_claim_of_two_notices(|b| b.notifier(notes.clone()).audit(sink.clone())).await;
    assert_eq!(
        notes.names(),
        vec!["unused_warning", "expiry_warning"],
        "sweep {swept:?}"
    );
    swept.expect("the sweep survives its audit sink").unwrap();
}

/// A key whose one claim holds two notices — on day 53 it is unused for 53 days (the
/// unused-key warning of a 60-day policy is due) and has 27 days left (its 30-day warning is
/// due) — swept in a task of its own by a manager `with` configures (a notifier, an audit
/// sink). The manager and the sweep's outcome (an `Err` if it panicked); both
/// notices are checked to be marked sent.
async fn sweep_a_claim_of_two_notices(
    with: impl FnOnce(
        api_keys::KeyManagerBuilder<MemoryStore>,
    ) -> api_keys::KeyManagerBuilder<MemoryStore>,
) -> (
    KeyManager<MemoryStore>,
    Result<Result<api_keys::SweepReport, Error>, tokio::task::JoinError>,
) {
    let clock = ManualClock::new(start());
    let manager = with(
        KeyManager::builder(MemoryStore::new(), keyring())
            .clock(clock.clone())
            .policy(Policy::default().revoke_unused_after(days(60))),
    )
    .build()
    .unwrap();
    // Generated before the sweep: a sink that panics on its first event panics in the sweep.
    let store = manager.store().clone();
    let maker = KeyManager::builder(store, keyring())
        .clock(clock.clone())
        .build()
        .unwrap();
    let (key, _) = maker
        .generate(&alice(), req("ci").expiry(Expiry::At(start() + days(80))))
        .await
        .unwrap();
    clock.set(start() + days(53));
    let m = manager.clone();
    let swept = tokio::spawn(async move { m.sweep().await }).await;
    let notices = maker.get(&alice(), key.id()).await.unwrap().notices;
    assert!(notices.unused_warned && notices.expiry_warned == vec![days(30).whole_seconds()]);
    (manager, swept)
}
