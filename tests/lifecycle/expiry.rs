//! Expiry: keys about to expire, absurd durations, and the edges of the calendar.

use super::*;

#[tokio::test]
async fn expiring_within_returns_exactly_the_right_keys_soonest_first() {
    let s = setup_with(MemoryStore::new(), Policy::default().allow_never(true));
    let m = &s.manager;
    let a = alice();
    let (_, in_30) = m
        .generate(&a, prom("30d").expiry(Expiry::Days(30)))
        .await
        .unwrap();
    let (_, in_7) = m
        .generate(&a, prom("7d").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    let (_, in_10) = m
        .generate(
            &a,
            prom("10d").expiry(Expiry::At(start() + Duration::days(10))),
        )
        .await
        .unwrap();
    let (_, in_14) = m
        .generate(
            &a,
            prom("14d").expiry(Expiry::At(start() + Duration::days(14))),
        )
        .await
        .unwrap();
    m.generate(&a, prom("never").expiry(Expiry::Never))
        .await
        .unwrap();
    let (_, revoked) = m
        .generate(&a, prom("revoked").expiry(Expiry::Days(7)))
        .await
        .unwrap();
    m.revoke(&a, &revoked.id).await.unwrap();
    let (_, gone) = m
        .generate(
            &a,
            prom("already expired").expiry(Expiry::At(start() + Duration::hours(1))),
        )
        .await
        .unwrap();
    m.generate(
        &mallory_other_org(),
        prom("other org").expiry(Expiry::Days(7)),
    )
    .await
    .unwrap();
    s.clock.advance(Duration::hours(2));

    let got: Vec<KeyId> = m
        .expiring_within(&a, Duration::days(14))
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(got, vec![in_7.id, in_10.id, in_14.id]);
    assert!(!got.contains(&in_30.id) && !got.contains(&gone.id));
    assert_eq!(
        m.get(&a, &gone.id).await.unwrap().status,
        KeyStatus::Expired
    );

    // The host-level sweep sees every organization.
    let all = m.expiring_all(Duration::days(14)).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].expires_at <= w[1].expires_at));
    assert!(all.iter().any(|i| i.org == OrgId::new("globex")));
}

#[tokio::test]
async fn absurd_durations_from_requests_never_panic() {
    let s = setup();
    let (old, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let (new, _) = s
        .manager
        .roll(&alice(), &info.id, Duration::MAX)
        .await
        .unwrap();
    // The old key keeps its own expiry: an overlap never extends it.
    assert_eq!(
        s.manager.get(&alice(), &info.id).await.unwrap().expires_at,
        Some(start() + Duration::days(90))
    );
    works(&s.manager, old.expose_secret()).await.unwrap();
    works(&s.manager, new.expose_secret()).await.unwrap();
    let (_, other) = s.manager.generate(&alice(), prom("k2")).await.unwrap();
    s.manager
        .roll(&alice(), &other.id, Duration::MIN)
        .await
        .unwrap();
    // k, its replacement and the replacement of k2 (k2 itself stopped at once).
    assert_eq!(
        s.manager
            .expiring_within(&alice(), Duration::MAX)
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(
        s.manager
            .expiring_within(&alice(), Duration::MIN)
            .await
            .unwrap()
            .is_empty()
    );
    let far = api_keys::time::OffsetDateTime::new_utc(
        api_keys::time::Date::MAX,
        api_keys::time::Time::MIDNIGHT,
    );
    assert!(matches!(
        s.manager
            .generate(&alice(), prom("x").expiry(Expiry::At(far)))
            .await,
        Err(Error::Policy(_))
    ));
}

/// A default period that `generate` would always refuse (0 days) is refused when the manager
/// is built, like any default outside the allowed periods.
#[test]
fn a_default_period_of_zero_days_is_refused_at_build() {
    let built = KeyManager::builder(MemoryStore::new(), keyring())
        .policy(Policy::default().allowed_days(&[0, 30]).default_days(0))
        .build();
    assert!(matches!(built, Err(Error::Policy(_))));
    assert_eq!(Policy::default().allowed_days(&[0, 30]).periods(), vec![30]);
}

/// At the end of the calendar an expiry that does not fit is refused, never shortened to
/// whatever is left (a key that dies seconds after it was handed out).
#[tokio::test]
async fn an_expiry_past_the_end_of_the_calendar_is_refused_not_shortened() {
    let s = setup();
    let now = OffsetDateTime::new_utc(
        api_keys::time::Date::MAX,
        api_keys::time::Time::from_hms(23, 59, 0).unwrap(),
    );
    s.clock.set(now);
    assert!(matches!(
        s.manager.generate(&alice(), prom("k")).await,
        Err(Error::Policy(_))
    ));
}

/// A clock may show a time whose UTC instant lies just outside the calendar (the last
/// moment of 9999 at UTC-1, the first of -9999 at UTC+1). Records hold whole UTC seconds, so
/// such a time is held as the calendar's nearest end: truncating it kept the clock's value
/// as it was (not whole seconds, not UTC), and `generate` handed out a key whose record
/// failed its own integrity check from then on (or failed with `Integrity` itself), and
/// could not be revoked either.
#[tokio::test]
async fn a_clock_just_outside_the_calendar_makes_keys_that_work() {
    use api_keys::time::{PrimitiveDateTime, UtcOffset};
    let ends = [
        (
            PrimitiveDateTime::MAX.assume_offset(UtcOffset::from_hms(-1, 0, 0).unwrap()),
            Expiry::Never,
        ),
        (
            PrimitiveDateTime::MIN.assume_offset(UtcOffset::from_hms(1, 0, 0).unwrap()),
            Expiry::Days(7),
        ),
    ];
    for (now, expiry) in ends {
        let s = setup_with(MemoryStore::new(), Policy::default().allow_never(true));
        s.clock.set(now);
        let (key, info) = s
            .manager
            .generate(&alice(), prom("k").expiry(expiry))
            .await
            .unwrap_or_else(|e| panic!("{now}: {e:?}"));
        assert_eq!(info.created_at.offset(), UtcOffset::UTC, "{now}");
        assert_eq!(info.created_at.nanosecond(), 0, "{now}");
        works(&s.manager, key.expose_secret())
            .await
            .unwrap_or_else(|e| panic!("{now}: {e:?}"));
        s.manager.revoke(&alice(), &info.id).await.unwrap();
        assert!(matches!(
            works(&s.manager, key.expose_secret()).await,
            Err(Error::Revoked)
        ));
    }
}
