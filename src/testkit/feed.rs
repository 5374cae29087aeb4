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
/// revoke or a delete made on another node. A store without a feed (`false`) passes.
///
/// Waits up to 30 s for the feed to connect and for the delete to be reported, then up to a
/// second for the rest (guards, not speed requirements), giving the executor a turn between
/// looks: run it on the runtime that delivers the store's notifications. A feed that reports a
/// disconnection meanwhile (changes may then go unreported) gets the writes again once it has
/// reconnected, up to three tries.
pub async fn change_feed_reports_every_write<S: KeyStore>(store: &S) -> Check {
    const C: &str = "change_feed_reports_every_write";
    let rec = Arc::new(Recorder::default());
    let listener: Arc<dyn ChangeListener> = rec.clone();
    if !store.changes(Arc::downgrade(&listener) as Weak<dyn ChangeListener>) {
        return Ok(());
    }
    // A feed may drop meanwhile (changes may then go unreported until it reconnects, and a
    // cache empties itself): the writes are tried again, a few times, on the new connection.
    let mut attempts = 0;
    loop {
        attempts += 1;
        rec.with(|s| s.disconnected = false);
        if !eventually(&rec, PATIENCE, |s| s.connected).await {
            return Err(fail(
                C,
                "changes() returned true, but the listener's connected() was not called",
            ));
        }
        match writes_reported(store, &rec).await {
            Err(f) if attempts < ATTEMPTS && rec.seen(|s| s.disconnected) => drop(f),
            done => {
                drop(listener);
                return done;
            }
        }
    }
}

/// How many times the writes are tried when the feed reported a disconnection meanwhile.
const ATTEMPTS: u32 = 3;

/// An insert, a revoke and a delete of a new record, each reported by the feed.
async fn writes_reported<S: KeyStore>(store: &S, rec: &Recorder) -> Check {
    const C: &str = "change_feed_reports_every_write";
    let org = random_org();
    let first = sample_record(random_id(), &org);
    let id = first.id;
    store
        .insert(first.clone())
        .await
        .map_err(|e| store_err(C, "insert", e))?;
    let mut revoked = first.clone();
    revoked.revision = first.revision + 1;
    revoked.revoked_at = Some(t(1_750_000_000));
    revoked.revoked_by = Some(UserId::new("revoker"));
    store
        .update(revoked.clone(), first.revision)
        .await
        .map_err(|e| store_err(C, "update", e))?;
    store
        .delete(&id)
        .await
        .map_err(|e| store_err(C, "delete", e))?;
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
    let deleted = |s: &Seen| {
        s.changes
            .iter()
            .any(|c| c.id == id && c.kind == ChangeKind::Deleted)
    };
    let reported = eventually(rec, PATIENCE, |s| all_reported(s) || deleted(s)).await
        && eventually(rec, AFTER_LAST, all_reported).await;
    if !reported {
        let (got, dropped) = rec.seen(|s| {
            let got: Vec<Change> = s.changes.iter().filter(|c| c.id == id).copied().collect();
            (got, s.disconnected)
        });
        let dropped = if dropped {
            " (the feed reported a disconnection meanwhile)"
        } else {
            ""
        };
        return Err(fail(
            C,
            format!(
                "for an insert, an update (a revoke) and a delete of {id}, the feed reported \
                 {got:?}{dropped}; expected {expected:?} (kind, revision)"
            ),
        ));
    }
    Ok(())
}
