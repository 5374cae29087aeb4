//! Webhook delivery of the key manager's events, signed per the Standard Webhooks
//! specification (<https://www.standardwebhooks.com/>), and the periodic sweep.
//!
//! - Every message is a JSON `{"type": "api_key.<event>", "timestamp": "<RFC 3339>", "data":
//!   {...}}` POSTed to one configured `http://` URL with the headers `webhook-id` (stable across
//!   retries), `webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature`
//!   (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the secret given as
//!   `whsec_<base64>`).
//! - Messages wait in a bounded queue: when it is full, new ones are dropped and counted
//!   (the events also reached the audit log) — a slow receiver never slows the sweep or a
//!   request.
//! - A delivery that fails (connection error, timeout, any non-2xx answer) is retried with
//!   exponential back-off, up to `max_attempts` attempts.
//! - At shutdown, [`Webhooks::drain`] gives the queue a grace period and says how many
//!   messages it leaves unsent (the process exiting would otherwise drop them silently).
//! - It is a [`Notifier`] (the sweep's and the leak and offboarding events) and an
//!   [`AuditSink`] (every management action; failed verifications are not sent).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use api_keys::time::{OffsetDateTime, UtcOffset};
use api_keys::{
    AuditAction, AuditEvent, AuditSink, AutomationEvent, BoxError, KeyManager, KeyStore,
    Notification, Notifier,
};
use axum::body::Bytes;
use axum::http::{Request, Uri};
use base64ct::{Base64, Encoding};
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

/// Where and how to deliver. Its `Debug` leaves the secret out.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The receiver, `http://host:port/path` (plain HTTP: put a TLS proxy in front, or a
    /// loopback relay).
    pub url: Uri,
    /// The signing secret, `whsec_<base64>`.
    pub secret: String,
    /// Most messages waiting for delivery.
    pub capacity: usize,
    /// Attempts per message (the first one included).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each next one.
    pub backoff: Duration,
    /// Longest wait for one attempt's answer.
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &format_args!("{}", shown_url(&self.url)))
            .field("secret", &"..")
            .field("capacity", &self.capacity)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `url` as it may be shown (at start, in `Debug`): without its credentials
/// (`user:password@`) or its query, which may carry a receiver's token (`?token=...`, shown
/// as `?...`).
pub fn shown_url(url: &Uri) -> String {
    let authority = url.authority().map_or("", |a| a.as_str());
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let scheme = url
        .scheme_str()
        .map(|s| format!("{s}://"))
        .unwrap_or_default();
    let query = if url.query().is_some() { "?..." } else { "" };
    format!("{scheme}{host}{}{query}", url.path())
}

impl WebhookConfig {
    /// Delivery to `url` signed with `secret`: a queue of 1 000, 5 attempts from 1 s apart,
    /// 10 s per attempt.
    pub fn new(url: Uri, secret: impl Into<String>) -> Self {
        WebhookConfig {
            url,
            secret: secret.into(),
            capacity: 1000,
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

struct Message {
    id: String,
    body: Vec<u8>,
}

/// The sending side: cheap to clone; enqueueing never waits.
#[derive(Clone)]
pub struct Webhooks {
    tx: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

/// Messages queued and not yet delivered or given up, and a signal each time one is done.
#[derive(Default)]
struct Progress {
    pending: AtomicU64,
    done: Notify,
}

/// The secret of a `whsec_<base64>` string.
///
/// # Errors
/// A message when it is not of that form.
pub fn parse_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("a webhook secret starts with whsec_")?;
    let key = Base64::decode_vec(b64).map_err(|_| "a webhook secret is whsec_ and base64")?;
    if key.len() < 24 {
        return Err("a webhook secret needs at least 24 bytes".into());
    }
    Ok(key)
}

/// Whether `url` is one delivery can use: `http://host[:port]/...` with a TCP port (1-65535;
/// none, or an empty one, is 80) and no credentials.
///
/// # Errors
/// A message (which never repeats the URL) when it is not.
pub fn check_url(url: &Uri) -> Result<(), String> {
    let shape = || "the webhook URL must be http://host[:port]/path".to_string();
    let (Some("http"), Some(authority), Some(host)) =
        (url.scheme_str(), url.authority(), url.host())
    else {
        return Err(shape());
    };
    // `http://:9000/x` parses with an empty host, which no connection reaches.
    if host.is_empty() {
        return Err(shape());
    }
    // `user:password@` would go out in every request's `Host` header (and into logs): the
    // receiver authenticates a delivery by its signature.
    if authority.as_str().contains('@') {
        return Err("the webhook URL must not carry credentials (user:password@)".into());
    }
    // A port the URI parser cannot read (`:99999`) leaves `port_u16` empty: delivery would
    // fall back to 80, another service than the one named.
    let after_host = authority.as_str().strip_prefix(host).unwrap_or(":");
    let default_port = after_host.is_empty() || after_host == ":";
    if !default_port && url.port_u16().is_none_or(|p| p == 0) {
        return Err("the webhook URL's port must be 1-65535".into());
    }
    Ok(())
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", Base64::encode_string(&mac.finalize().into_bytes()))
}

/// `t` in UTC as RFC 3339 (whole seconds): the fields are read after converting to UTC, as the
/// `Z` says (a host's clock may hand out any offset).
fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.checked_to_offset(UtcOffset::UTC).unwrap_or(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).unwrap_or_default();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("msg_{hex}")
}

/// The largest queue [`Webhooks::start`] accepts (tokio's channel panics past `usize::MAX >> 3`;
/// a queue that large is a mistake anyway).
pub const MAX_CAPACITY: usize = 1_000_000;

impl Webhooks {
    /// Starts the delivery task (on the current tokio runtime).
    ///
    /// # Errors
    /// A message for an invalid secret, a URL that is not `http://host[:port]/...` (one with
    /// credentials, `user:password@`, included) or a capacity over [`MAX_CAPACITY`].
    pub fn start(config: WebhookConfig) -> Result<Webhooks, String> {
        let key = parse_secret(&config.secret)?;
        check_url(&config.url)?;
        if config.capacity > MAX_CAPACITY {
            return Err(format!(
                "a webhook queue of {} events is over the {MAX_CAPACITY} allowed",
                config.capacity
            ));
        }
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let hooks = Webhooks {
            tx,
            dropped: Arc::default(),
            delivered: Arc::default(),
            failed: Arc::default(),
            progress: Arc::default(),
        };
        tokio::spawn(deliver(
            config,
            key,
            rx,
            hooks.delivered.clone(),
            hooks.failed.clone(),
            hooks.progress.clone(),
        ));
        Ok(hooks)
    }

    /// Queues one message of `event_type` (e.g. `api_key.expired`) about `data`; `false`
    /// (and counted) when the queue is full.
    pub fn enqueue(&self, event_type: &str, at: OffsetDateTime, data: Value) -> bool {
        let body = json!({"type": event_type, "timestamp": rfc3339(at), "data": data});
        let message = Message {
            id: random_id(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        };
        // Counted before it can be taken off the queue (and the count lowered).
        self.progress.pending.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(message) {
            Ok(()) => true,
            Err(_) => {
                self.progress.pending.fetch_sub(1, Ordering::SeqCst);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "server::webhooks", event_type, "webhook queue full: message dropped");
                false
            }
        }
    }

    /// Messages dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Messages the receiver accepted (2xx).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Messages given up after `max_attempts`.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Messages queued (or being attempted) and not yet delivered or given up.
    pub fn pending(&self) -> u64 {
        self.progress.pending.load(Ordering::SeqCst)
    }

    /// Waits, at most `grace`, for every queued message to be delivered or given up (call it
    /// at shutdown: what is still queued when the process exits is lost); the number still
    /// pending when it returns.
    pub async fn drain(&self, grace: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let done = self.progress.done.notified();
            tokio::pin!(done);
            // Registered before the count is read: a message finished in between wakes it.
            done.as_mut().enable();
            let pending = self.pending();
            if pending == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return self.pending();
            }
        }
    }
}

impl Notifier for Webhooks {
    fn notify(&self, n: &Notification) -> Result<(), BoxError> {
        let mut data = json!({
            "key_id": n.key.id.to_string(),
            "org": n.key.org.as_str(),
            "name": n.key.name,
            "created_by": n.key.created_by.as_str(),
            // Whom to tell, with the organization and the creator (who may have left).
            "owner": n.key.owner,
            "expires_at": n.key.expires_at.map(|t| t.unix_timestamp()),
        });
        match &n.event {
            AutomationEvent::ExpiryWarning { lead } => {
                data["lead_seconds"] = json!(lead.whole_seconds());
            }
            AutomationEvent::UnusedWarning { revoke_at } => {
                data["revoke_at"] = json!(revoke_at.unix_timestamp());
            }
            AutomationEvent::Leaked { source } => data["source"] = json!(source),
            _ => {}
        }
        if self.enqueue(&format!("api_key.{}", n.event.name()), n.at, data) {
            Ok(())
        } else {
            Err("webhook queue full".into())
        }
    }
}

impl AuditSink for Webhooks {
    fn record(&self, e: &AuditEvent) -> Result<(), BoxError> {
        // Management actions only: failed verifications are the metrics' business, and the
        // automations' own events come through the notifier with more detail.
        let management = matches!(
            e.action,
            AuditAction::Generated
                | AuditAction::Revealed
                | AuditAction::Rolled { .. }
                | AuditAction::Revoked
                | AuditAction::Deleted
                | AuditAction::Rewrapped { .. }
                | AuditAction::LimitsChanged
                | AuditAction::CreditsChanged
                | AuditAction::IntegrityFailure
        );
        if management {
            let mut data = json!({
                "key_id": e.key_id.map(|k| k.to_string()),
                "org": e.org.as_ref().map(|o| o.as_str()),
                "actor": e.actor.as_ref().map(|a| a.as_str()),
            });
            // What the action's own fields add: the new key of a roll (the integration to
            // move to it), the master-key versions of a rewrap.
            match e.action {
                AuditAction::Rolled { replacement } => {
                    data["replacement"] = json!(replacement.to_string());
                }
                AuditAction::Rewrapped {
                    from_version,
                    to_version,
                } => {
                    data["from_version"] = json!(from_version);
                    data["to_version"] = json!(to_version);
                }
                _ => {}
            }
            self.enqueue(&format!("api_key.{}", e.action.name()), e.at, data);
        }
        Ok(())
    }
}

async fn deliver(
    config: WebhookConfig,
    key: Vec<u8>,
    mut rx: mpsc::Receiver<Message>,
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    progress: Arc<Progress>,
) {
    while let Some(message) = rx.recv().await {
        let mut wait = config.backoff;
        let mut ok = false;
        for attempt in 1..=config.max_attempts {
            match tokio::time::timeout(config.timeout, attempt_once(&config, &key, &message)).await
            {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    ok = true;
                    break;
                }
                Ok(Ok(status)) => {
                    tracing::warn!(target: "server::webhooks", id = %message.id, attempt, status, "webhook refused")
                }
                Ok(Err(e)) => {
                    tracing::warn!(target: "server::webhooks", id = %message.id, attempt, error = %e, "webhook delivery failed")
                }
                Err(_) => {
                    tracing::warn!(target: "server::webhooks", id = %message.id, attempt, "webhook delivery timed out")
                }
            }
            if attempt < config.max_attempts {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
        }
        if ok {
            delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(target: "server::webhooks", id = %message.id, "webhook given up");
        }
        progress.pending.fetch_sub(1, Ordering::SeqCst);
        progress.done.notify_waiters();
    }
}

async fn attempt_once(config: &WebhookConfig, key: &[u8], m: &Message) -> Result<u16, BoxError> {
    let host = config.url.host().ok_or("no host")?;
    // An IPv6 literal keeps its brackets in the URI (`[::1]`); the socket address has none.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = config.url.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
    // An empty path is `/` (RFC 3986): `http://host?query` asks for `/?query`, and a bare
    // `?query` is no request target.
    let path = match config.url.path_and_query().map_or("/", |p| p.as_str()) {
        p if p.starts_with('/') => p.to_string(),
        p => format!("/{p}"),
    };
    let authority = config
        .url
        .authority()
        .map_or(host, |a| a.as_str())
        .to_string();
    let req = Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .header("webhook-id", &m.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", sign(key, &m.id, timestamp, &m.body))
        .body(Full::new(Bytes::from(m.body.clone())))?;
    let resp = sender.send_request(req).await?;
    Ok(resp.status().as_u16())
}

/// Runs `manager.sweep()` every `every` (first run at once), logging each report; never
/// returns.
pub async fn sweep_every<S: KeyStore + 'static>(manager: KeyManager<S>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match manager.sweep().await {
            Ok(r) => tracing::info!(
                target: "server::sweep",
                scanned = r.scanned,
                expiry_warnings = r.expiry_warnings,
                expired = r.expired,
                unused_warnings = r.unused_warnings,
                revoked_unused = r.revoked_unused,
                purged = r.purged,
                failed = r.failed,
                "sweep done"
            ),
            Err(e) => tracing::error!(target: "server::sweep", error = %e, "sweep failed"),
        }
    }
}
