//! Management calls racing each other on one key.

use super::*;
use api_keys::Credits;

/// Two managers set a key's credits at once: the one whose configuration is stored last must
/// also be the one whose balance the key spends from, whatever order the two balance writes
/// land in.
#[tokio::test]
async fn racing_set_credits_leave_the_balance_of_the_stored_configuration() {
    let store = CountingStore::default();
    let s = setup_with(store.clone(), Policy::default());
    let (_, info) = s
        .manager
        .generate(&alice(), prom("a").credits(Credits::new(5)))
        .await
        .unwrap();
    // Right after this call stores 1 000 credits, another manager stores 10 and sets that
    // balance; only then does this call set its own balance.
    let (m, id) = (s.manager.clone(), info.id);
    store.after_next_update(move || async move {
        m.set_credits(&alice(), &id, Some(Credits::new(10)))
            .await
            .unwrap();
    });
    s.manager
        .set_credits(&alice(), &info.id, Some(Credits::new(1000)))
        .await
        .unwrap();
    let stored = s.manager.get(&alice(), &info.id).await.unwrap().credits;
    assert_eq!(stored, Some(Credits::new(10)));
    assert_eq!(
        s.manager
            .credits_remaining(&alice(), &info.id)
            .await
            .unwrap(),
        Some(10),
        "the key's record says 10 credits; its balance must not be the other call's 1 000"
    );
}
