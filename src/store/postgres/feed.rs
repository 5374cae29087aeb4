//! The `LISTEN/NOTIFY` change feed of [`PostgresStore`](super::PostgresStore), with a
//! heartbeat that *proves* the feed live: a `NOTIFY` with a fresh nonce on the feed's own
//! channel, sent through the feed's connection, must come back as a notification. When it
//! does, every change committed before it was sent has been delivered (PostgreSQL delivers
//! notifications in commit order), and the listener is told so
//! ([`ChangeListener::proven`]). A frozen backend, a hung socket or a transaction-pooling
//! proxy (behind which `LISTEN` "works" and nothing arrives) proves nothing: the listener's
//! trust lapses within its fallback TTL of the last proof, and after
//! [`HEARTBEAT_TIMEOUT`] without a proof the connection is dropped and replaced.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{Stream, StreamExt};
use tokio_postgres::AsyncMessage;

use crate::KeyId;
use crate::store::{Change, ChangeKind, ChangeListener};

/// How often the feed is probed (and checks that its listener still exists).
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// With no proof for this long, the feed connection is dropped and replaced.
pub(super) const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The prefix of a probe's payload (a key id never contains `-`).
const PROBE_PREFIX: &str = "probe-";

/// A connection for the change feed: the client and the stream of the connection's
/// asynchronous messages (driving that stream drives the connection).
pub(super) type FeedConnection = (
    tokio_postgres::Client,
    Pin<Box<dyn Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send>>,
);
pub(super) type FeedConnector =
    Arc<dyn Fn() -> BoxFuture<'static, Result<FeedConnection, crate::BoxError>> + Send + Sync>;

/// Parses a notification payload `<id>:<revision>:<insert|update|delete>`.
pub(super) fn parse_payload(payload: &str) -> Option<Change> {
    let mut parts = payload.split(':');
    let id = KeyId::parse(parts.next()?).ok()?;
    let revision = parts.next()?.parse().ok()?;
    let kind = match parts.next()? {
        "insert" => ChangeKind::Inserted,
        "update" => ChangeKind::Updated,
        "delete" => ChangeKind::Deleted,
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Change { id, revision, kind })
}

/// How a feed connection ended.
enum FeedEnd {
    /// The listener is gone: stop for good.
    ListenerGone,
    /// The connection failed or was lost; `was_live` if the listener was told `connected`.
    Lost { was_live: bool },
}

/// The change-feed task: connect, `LISTEN`, prove, report, and reconnect with backoff, until
/// the listener is dropped.
pub(super) async fn run_feed(
    connect: FeedConnector,
    listener: Weak<dyn ChangeListener>,
    channel: Arc<str>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if listener.strong_count() == 0 {
            return;
        }
        let end = match connect().await {
            Ok((client, messages)) => listen(&client, messages, &listener, &channel).await,
            Err(e) => {
                tracing::warn!(target: "api_keys", error = %e, "change feed: cannot connect to PostgreSQL");
                FeedEnd::Lost { was_live: false }
            }
        };
        match end {
            FeedEnd::ListenerGone => return,
            FeedEnd::Lost { was_live } => {
                if was_live {
                    if let Some(l) = listener.upgrade() {
                        l.disconnected();
                    }
                    backoff = MIN_BACKOFF;
                }
            }
        }
        // Sleep in steps so that a dropped listener ends the task promptly.
        let mut slept = Duration::ZERO;
        while slept < backoff {
            if listener.strong_count() == 0 {
                return;
            }
            let step = (backoff - slept).min(Duration::from_secs(1));
            tokio::time::sleep(step).await;
            slept += step;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn nonce() -> Option<u64> {
    let mut b = [0u8; 8];
    crate::crypto::fill_random(&mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

/// Runs one feed connection until it is lost or the listener is gone.
async fn listen(
    client: &tokio_postgres::Client,
    mut messages: Pin<Box<dyn Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send>>,
    listener: &Weak<dyn ChangeListener>,
    channel: &str,
) -> FeedEnd {
    // The connection is driven by its own task, which forwards notifications here; queries on
    // `client` (LISTEN, probes) need it driven while they wait.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let failed = message.is_err();
            if tx.send(message).is_err() || failed {
                break;
            }
        }
    });
    let _abort = AbortOnDrop(driver);

    // Bounded like a probe: a connection that hangs here (a half-open socket, a stuck
    // backend) is replaced, not waited on until TCP keepalive gives up.
    let listening = tokio::time::timeout(
        HEARTBEAT_TIMEOUT,
        client.batch_execute(&format!("LISTEN {channel}")),
    )
    .await;
    match listening {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(target: "api_keys", error = %e, "change feed: LISTEN failed");
            return FeedEnd::Lost { was_live: false };
        }
        Err(_) => {
            tracing::warn!(target: "api_keys", "change feed: LISTEN got no answer; reconnecting");
            return FeedEnd::Lost { was_live: false };
        }
    }
    let mut live = false;
    let mut last_proof = Instant::now();
    // The probe whose notification is awaited: (payload, when it was sent).
    let mut outstanding: Option<(String, Instant)> = None;
    // The probe's statement in flight, polled alongside the notifications.
    let mut sending: Option<BoxFuture<'_, bool>> = None;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let Some(l) = listener.upgrade() else {
                        return FeedEnd::ListenerGone;
                    };
                    let payload = n.payload();
                    if let Some(rest) = payload.strip_prefix(PROBE_PREFIX) {
                        // Our own probe proves the feed; another node's is no news.
                        if let Some((_, sent)) = outstanding.take_if(|(p, _)| p == rest) {
                            last_proof = Instant::now();
                            l.proven(sent);
                            if !live {
                                live = true;
                                l.connected();
                                tracing::debug!(target: "api_keys", "change feed: listening");
                            }
                        }
                        continue;
                    }
                    match parse_payload(payload) {
                        Some(change) => l.changed(change),
                        // A TRUNCATE: every key is gone.
                        None if payload == "reset" => l.reset(),
                        None => {
                            // Something we cannot attribute to one key: any key may have
                            // changed.
                            tracing::warn!(target: "api_keys", "change feed: unrecognized notification; the cache is emptied");
                            l.reset();
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(target: "api_keys", error = %e, "change feed: connection lost");
                    return FeedEnd::Lost { was_live: live };
                }
                None => {
                    tracing::warn!(target: "api_keys", "change feed: connection closed");
                    return FeedEnd::Lost { was_live: live };
                }
            },
            ok = async {
                match sending.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            } => {
                sending = None;
                if !ok {
                    tracing::warn!(target: "api_keys", "change feed: probe failed");
                    return FeedEnd::Lost { was_live: live };
                }
            }
            _ = tick.tick() => {
                if listener.strong_count() == 0 {
                    return FeedEnd::ListenerGone;
                }
                if last_proof.elapsed() >= HEARTBEAT_TIMEOUT {
                    tracing::warn!(target: "api_keys", "change feed: no heartbeat came back; reconnecting");
                    return FeedEnd::Lost { was_live: live };
                }
                if sending.is_none() {
                    let Some(n) = nonce() else { continue };
                    let payload = format!("{n:016x}");
                    let sql = format!("SELECT pg_notify('{channel}', '{PROBE_PREFIX}{payload}')");
                    // A newer probe replaces an unanswered one: a late answer proves less.
                    outstanding = Some((payload, Instant::now()));
                    sending = Some(Box::pin(async move {
                        matches!(
                            tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query(&sql)).await,
                            Ok(Ok(_))
                        )
                    }));
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
