//! The manager's clock at the edges: negative Unix times read alike by every call.

use super::*;
use api_keys::{Credits, Refill};

/// A management call reads the clock in milliseconds as a verification does (rounding down,
/// also before 1970): half a millisecond before midnight is still the day before. Rounding
/// toward zero read 1969-12-31T23:59:59.9995 as 1970-01-01T00:00:00.000, so
/// `credits_remaining` applied the next day's refill a day early and the key spent it at
/// once.
#[tokio::test]
async fn credits_remaining_just_before_a_midnight_before_1970_refills_nothing_early() {
    let s = setup();
    let epoch = OffsetDateTime::UNIX_EPOCH;
    s.clock.set(epoch - Duration::hours(1));
    let credits = Credits::new(2).refill(Refill::Daily { amount: 2 });
    let (key, info) = s
        .manager
        .generate(&alice(), prom("paid").credits(credits))
        .await
        .unwrap();
    s.clock.set(epoch - Duration::microseconds(500));
    works(&s.manager, key.expose_secret()).await.unwrap();
    works(&s.manager, key.expose_secret()).await.unwrap();
    assert!(matches!(
        works(&s.manager, key.expose_secret()).await,
        Err(Error::UsageExceeded)
    ));
    assert_eq!(
        s.manager
            .credits_remaining(&alice(), &info.id)
            .await
            .unwrap(),
        Some(0)
    );
    assert!(matches!(
        works(&s.manager, key.expose_secret()).await,
        Err(Error::UsageExceeded)
    ));
    // At midnight the refill comes.
    s.clock.set(epoch);
    works(&s.manager, key.expose_secret()).await.unwrap();
}
