//! The change feed: a store that says it has one reports every committed insert, update and
//! delete, with the revision after it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration as StdDuration, Instant};

use super::{Check, fail, random_id, random_org, sample_record, store_err, t};
use crate::{Change, ChangeKind, ChangeListener, KeyStore, UserId};

/// How long the check waits for the feed to connect and for each change to arrive. Not a
/// speed requirement: a guard, so that a feed that never reports fails instead of hanging.
const PATIENCE: StdDuration = StdDuration::from_secs(30);

/// What the feed delivered to the check's listener.
#[derive(Default)]
struct Seen {
    connected: bool,
    disconnected: bool,
    changes: Vec<Change>,
}

#[derive(Default)]
struct Recorder(Mutex<Seen>);

impl Recorder {
    fn seen<R>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn with(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl ChangeListener for Recorder {
    fn changed(&self, change: Change) {
        self.with(|s| s.changes.push(change));
    }
    fn connected(&self) {
        self.with(|s| s.connected = true);
    }
    fn disconnected(&self) {
        self.with(|s| {
            s.connected = false;
            s.disconnected = true;
        });
    }
}

/// Gives the executor a turn (the feed may be delivered by a task on the same thread).
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// How long the check still waits for the other changes once the delete (the last write) was
/// reported: a feed need not deliver in commit order.
const AFTER_LAST: StdDuration = StdDuration::from_secs(1);

/// Waits until `done` holds or `patience` has passed; whether it holds.
async fn eventually(rec: &Recorder, patience: StdDuration, done: impl Fn(&Seen) -> bool) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if rec.seen(&done) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        YieldOnce(false).await;
    }
}

/// A store whose [`KeyStore::changes`] returns `true` calls the listener's `connected` and
/// then reports every committed write: an insert as [`ChangeKind::Inserted`] with the
/// record's revision, an update as [`ChangeKind::Updated`] with the new revision, a delete
/// as [`ChangeKind::Deleted`] with revision 0 — this is how every node's cache hears of a
/// revoke or a delete made on another node. Two listeners are subscribed, as two managers
/// sharing one store (two key classes) subscribe, and each hears every write. A store without
/// a feed (`false`) passes.
///
/// Waits up to 30 s for the feed to connect and for the delete to be reported, then up to a
/// second for the rest (guards, not speed requirements), giving the executor a turn between
/// looks: run it on the runtime that delivers the store's notifications. A feed that reports a
/// disconnection meanwhile (changes may then go unreported) gets the writes again once it has
/// reconnected, up to three tries.
pub async fn change_feed_reports_every_write<S: KeyStore>(store: &S) -> Check {
    feed_reports("change_feed_reports_every_write", store, None::<&S>).await
}

/// [`change_feed_reports_every_write`] for the writes of another node: `other` is a second
/// handle on the same database (another connection, as another node opens it), and the
/// feed of `store` must report the insert, revoke and delete made through `other`. A feed
/// that reports only its own handle's writes (listeners called in process after each write)
/// passes [`run`](super::run), whose writes all go through the handle it listens on, while
/// the other nodes never hear of a revoke. A store without a feed passes.
///
/// Not part of [`run`](super::run), which has one handle. Once `other`'s writes are done, a
/// record inserted and deleted through `store` marks their end: the check waits for its
/// delete (up to 30 s), then up to a second for the rest.
///
/// # Errors
/// A [`Failure`](super::Failure) naming `change_feed_reports_writes_of_other_handles`.
pub async fn change_feed_reports_writes_of_other_handles<S: KeyStore, O: KeyStore>(
    store: &S,
    other: &O,
) -> Check {
    feed_reports(
        "change_feed_reports_writes_of_other_handles",
        store,
        Some(other),
    )
    .await
}

/// Subscribes to `store`'s feed and checks that it reports the writes made through `other`
/// (through `store` itself if `None`).
async fn feed_reports<S: KeyStore, O: KeyStore>(
    check: &'static str,
    store: &S,
    other: Option<&O>,
) -> Check {
    // Two listeners, as two managers sharing one store (two key classes) subscribe: each
    // hears every write (a store keeping only the latest leaves the first manager's cache
    // trusting revoked keys). The later one is waited for; the earlier gets a second more.
    let recs = [Recorder::default(), Recorder::default()].map(Arc::new);
    let listeners = recs.clone().map(|r| r as Arc<dyn ChangeListener>);
    for listener in &listeners {
        if !store.changes(Arc::downgrade(listener) as Weak<dyn ChangeListener>) {
            return Ok(());
        }
    }
    let [earlier, later] = &recs;
    let recs = [later.as_ref(), earlier.as_ref()];
    // A feed may drop meanwhile (changes may then go unreported until it reconnects, and a
    // cache empties itself): the writes are tried again, a few times, on the new connection.
    let mut attempts = 0;
    loop {
        attempts += 1;
        for rec in recs {
            rec.with(|s| s.disconnected = false);
            if !eventually(rec, PATIENCE, |s| s.connected).await {
                return Err(fail(
                    check,
                    "changes() returned true, but the listener's connected() was not called",
                ));
            }
        }
        let result = match other {
            Some(other) => writes_reported(check, other, Some(store), &recs).await,
            None => writes_reported(check, store, None::<&S>, &recs).await,
        };
        let dropped = recs.iter().any(|r| r.seen(|s| s.disconnected));
        match result {
            Err(f) if attempts < ATTEMPTS && dropped => drop(f),
            done => {
                drop(listeners);
                return done;
            }
        }
    }
}

/// How many times the writes are tried when the feed reported a disconnection meanwhile.
const ATTEMPTS: u32 = 3;

/// An insert, a revoke and a delete of a new record through `store`, each reported by the
/// feed to each of `recs` (the first waited for, each other given a second more); with
/// `listened` (the handle whose feed they hear, when not `store`), a record inserted and
/// deleted through it afterwards marks the end of the writes.
async fn writes_reported<S: KeyStore, L: KeyStore>(
    check: &'static str,
    store: &S,
    listened: Option<&L>,
    recs: &[&Recorder; 2],
) -> Check {
    let org = random_org();
    let first = sample_record(random_id(), &org);
    let id = first.id;
    store
        .insert(first.clone())
        .await
        .map_err(|e| store_err(check, "insert", e))?;
    let mut revoked = first.clone();
    revoked.revision = first.revision + 1;
    revoked.revoked_at = Some(t(1_750_000_000));
    revoked.revoked_by = Some(UserId::new("revoker"));
    store
        .update(revoked.clone(), first.revision)
        .await
        .map_err(|e| store_err(check, "update", e))?;
    store
        .delete(&id)
        .await
        .map_err(|e| store_err(check, "delete", e))?;
    let expected = [
        (ChangeKind::Inserted, first.revision),
        (ChangeKind::Updated, revoked.revision),
        (ChangeKind::Deleted, 0),
    ];
    let all_reported = |s: &Seen| {
        expected
            .iter()
            .all(|&(kind, revision)| s.changes.contains(&Change { id, revision, kind }))
    };
    // The last write: `id`'s delete, or the marker's.
    let mut last = id;
    if let Some(listened) = listened {
        let marker = sample_record(random_id(), &org);
        last = marker.id;
        listened
            .insert(marker)
            .await
            .map_err(|e| store_err(check, "insert", e))?;
        listened
            .delete(&last)
            .await
            .map_err(|e| store_err(check, "delete", e))?;
    }
    let deleted = |s: &Seen| {
        s.changes
            .iter()
            .any(|c| c.id == last && c.kind == ChangeKind::Deleted)
    };
    for (n, rec) in recs.iter().enumerate() {
        let reported = if n == 0 {
            eventually(rec, PATIENCE, |s| all_reported(s) || deleted(s)).await
                && eventually(rec, AFTER_LAST, all_reported).await
        } else {
            eventually(rec, AFTER_LAST, all_reported).await
        };
        if reported {
            continue;
        }
        let (got, dropped) = rec.seen(|s| {
            let got: Vec<Change> = s.changes.iter().filter(|c| c.id == id).copied().collect();
            (got, s.disconnected)
        });
        let through = if listened.is_some() {
            " through another handle"
        } else {
            ""
        };
        let dropped = if dropped {
            " (the feed reported a disconnection meanwhile)"
        } else {
            ""
        };
        let whom = if n == 0 {
            ""
        } else {
            " to the first of two listeners (to the second: all)"
        };
        return Err(fail(
            check,
            format!(
                "for an insert, an update (a revoke) and a delete of {id}{through}, the feed \
                 reported {got:?}{whom}{dropped}; expected {expected:?} (kind, revision)"
            ),
        ));
    }
    Ok(())
}
