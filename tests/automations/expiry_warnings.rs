//! Expiry warnings and expired events: once per lead time, late sweeps, failing notifiers, bad records.

use super::*;

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

/// "A key that expired more than 30 days before the sweep saw it is not announced": one that
/// expired exactly 30 days before is not "more than", and is announced; a second later it
/// is not. The window was open at its start only, so a key exactly 30 days past went
/// unannounced.
#[tokio::test]
async fn a_key_that_expired_exactly_the_window_ago_is_still_announced() {
    for (past_the_window, announced) in [(Duration::ZERO, 1), (Duration::seconds(1), 0)] {
        let n = node(Policy::default().warn_before(&[]));
        n.manager
            .generate(&alice(), req("edge").expiry(Expiry::Days(7)))
            .await
            .unwrap();
        n.clock
            .set(start() + days(7) + api_keys::EXPIRED_NOTICE_WINDOW + past_the_window);
        let r = n.manager.sweep().await.unwrap();
        assert_eq!(r.expired, announced, "{past_the_window}: {r:?}");
    }
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
