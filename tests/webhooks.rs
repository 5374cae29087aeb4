//! The example server's webhook delivery against a loopback receiver: signatures checked by
//! an independent verifier written from the Standard Webhooks specification, retries on 500,
//! the queue bound, and the sweep's events delivered end to end.

#[allow(dead_code)]
#[path = "../examples/server/webhooks.rs"]
mod webhooks;

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_keys::{GenerateRequest, KeyManager, ManualClock, MemoryStore, Scope};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64ct::{Base64, Encoding};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use webhooks::{WebhookConfig, Webhooks};

const SECRET_BYTES: &[u8; 32] = b"an example webhook signing key!!";

fn secret() -> String {
    format!("whsec_{}", Base64::encode_string(SECRET_BYTES))
}

struct Delivery {
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver answering the given statuses in turn (then 200), reporting each delivery.
async fn receiver(statuses: &[u16]) -> (axum::http::Uri, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let plan = Arc::new(Mutex::new(
        statuses.iter().copied().collect::<VecDeque<u16>>(),
    ));
    let app = Router::new().route(
        "/hooks",
        post(move |headers: HeaderMap, body: Bytes| {
            let (tx, plan) = (tx.clone(), plan.clone());
            async move {
                let _ = tx.send(Delivery { headers, body });
                let code = plan.lock().unwrap().pop_front().unwrap_or(200);
                StatusCode::from_u16(code).unwrap()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hooks").parse().unwrap(), rx)
}

/// Standard Webhooks verification, written from the specification (not from the sender).
fn verify(d: &Delivery) -> bool {
    let h = |n: &str| {
        d.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (Some(id), Some(ts), Some(sigs)) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    ) else {
        return false;
    };
    let mut content = format!("{id}.{ts}.").into_bytes();
    content.extend_from_slice(&d.body);
    sigs.split(' ').any(|s| {
        let Some(b64) = s.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = Base64::decode_vec(b64) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET_BYTES).unwrap();
        mac.update(&content);
        mac.verify_slice(&sig).is_ok()
    })
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    // A guard against a hang, not a timing assertion.
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no delivery")
        .expect("receiver gone")
}

fn config(url: axum::http::Uri) -> WebhookConfig {
    let mut c = WebhookConfig::new(url, secret());
    c.backoff = Duration::from_millis(5);
    c
}

/// A manager whose audit sink is the webhooks of a loopback receiver, with one key generated
/// (its `api_key.generated` webhook on its way).
async fn audited_key() -> (
    KeyManager<MemoryStore>,
    api_keys::KeyInfo,
    mpsc::UnboundedReceiver<Delivery>,
) {
    let (url, rx) = receiver(&[]).await;
    let hooks = Webhooks::start(config(url)).unwrap();
    let manager = KeyManager::builder(MemoryStore::new(), common::keyring())
        .clock(ManualClock::new(common::start()))
        .audit(hooks)
        .build()
        .unwrap();
    let (_, info) = manager
        .generate(
            &common::alice(),
            GenerateRequest::new("ci").scope(Scope::Prometheus),
        )
        .await
        .unwrap();
    (manager, info, rx)
}

#[tokio::test]
async fn deliveries_carry_a_valid_signature_and_a_forged_one_fails_the_verifier() {
    let (url, mut rx) = receiver(&[]).await;
    let hooks = Webhooks::start(config(url)).unwrap();
    assert!(hooks.enqueue(
        "api_key.expired",
        common::start(),
        serde_json::json!({"key_id": "x"})
    ));
    let d = next(&mut rx).await;
    assert!(verify(&d));
    let v: Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(v["type"], "api_key.expired");
    assert_eq!(v["timestamp"], "2025-06-15T15:06:40Z");
    assert_eq!(v["data"]["key_id"], "x");
    // The verifier is not a rubber stamp: a changed body or another secret fails.
    let mut tampered = Delivery {
        headers: d.headers.clone(),
        body: Bytes::from(d.body.iter().copied().rev().collect::<Vec<u8>>()),
    };
    assert!(!verify(&tampered));
    tampered.body = d.body.clone();
    let other = webhooks::sign(b"another secret of enough length!", "msg_1", 1, &d.body);
    tampered
        .headers
        .insert("webhook-signature", other.parse().unwrap());
    assert!(!verify(&tampered));
    assert!(webhooks::parse_secret("whsec_short").is_err());
    assert!(webhooks::parse_secret("nope").is_err());
}

#[tokio::test]
async fn a_500_is_retried_with_the_same_id_until_accepted() {
    let (url, mut rx) = receiver(&[500, 500]).await;
    let hooks = Webhooks::start(config(url)).unwrap();
    hooks.enqueue("api_key.revoked", common::start(), serde_json::json!({}));
    let attempts = [
        next(&mut rx).await,
        next(&mut rx).await,
        next(&mut rx).await,
    ];
    let id = attempts[0].headers["webhook-id"].clone();
    for a in &attempts {
        assert!(verify(a));
        assert_eq!(a.headers["webhook-id"], id);
    }
    // Accepted on the third attempt: nothing more arrives for it.
    hooks.enqueue("api_key.deleted", common::start(), serde_json::json!({}));
    let after = next(&mut rx).await;
    assert_ne!(after.headers["webhook-id"], id);
    assert!(hooks.delivered() >= 1);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    // A receiver that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut c = config(format!("http://{addr}/hooks").parse().unwrap());
    c.capacity = 2;
    c.timeout = Duration::from_secs(600);
    let hooks = Webhooks::start(c).unwrap();
    let accepted = (0..10)
        .filter(|_| hooks.enqueue("api_key.generated", common::start(), serde_json::json!({})))
        .count();
    // Two wait in the queue; at most one more is already being delivered.
    assert!((2..=3).contains(&accepted), "{accepted}");
    assert_eq!(hooks.dropped(), (10 - accepted) as u64);
}

#[tokio::test]
async fn the_sweep_and_management_actions_arrive_as_webhooks() {
    let (url, mut rx) = receiver(&[]).await;
    let hooks = Webhooks::start(config(url)).unwrap();
    let clock = ManualClock::new(common::start());
    let manager = KeyManager::builder(MemoryStore::new(), common::keyring())
        .clock(clock.clone())
        .audit(hooks.clone())
        .notifier(hooks.clone())
        .build()
        .unwrap();
    let (key, _) = manager
        .generate(
            &common::alice(),
            GenerateRequest::new("ci").scope(Scope::Prometheus),
        )
        .await
        .unwrap();
    let d = next(&mut rx).await;
    assert!(verify(&d));
    let v: Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(v["type"], "api_key.generated");
    clock.advance(common::days(61));
    manager.sweep().await.unwrap();
    let d = next(&mut rx).await;
    assert!(verify(&d));
    let v: Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(v["type"], "api_key.expiry_warning");
    assert_eq!(v["data"]["key_id"], key.id().to_string());
    assert_eq!(v["data"]["lead_seconds"], 30 * 86_400);
    assert!(!String::from_utf8_lossy(&d.body).contains(key.expose_secret()));
}

/// A receiver on an IPv6 literal (`http://[::1]:PORT/hooks`): `Webhooks::start`
/// accepts the URL, but every attempt connects to the host string with its brackets.
#[tokio::test]
async fn an_ipv6_literal_receiver_gets_its_webhooks() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hooks",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Delivery { headers, body });
                StatusCode::OK
            }
        }),
    );
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        eprintln!("skipping: this machine has no IPv6 loopback");
        return;
    };
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url: axum::http::Uri = format!("http://{addr}/hooks").parse().unwrap();
    let hooks = Webhooks::start(config(url)).expect("the URL is accepted");
    assert!(hooks.enqueue("api_key.revoked", common::start(), serde_json::json!({})));
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(
        matches!(got, Ok(Some(ref d)) if verify(d)),
        "no delivery to {addr}: delivered {}, given up {}",
        hooks.delivered(),
        hooks.failed()
    );
}

/// An event time carried in another offset than UTC (a host's `Clock` may return any
/// `OffsetDateTime`) was written with its local wall-clock fields and a `Z`: the payload's
/// `timestamp` named another instant than the event's.
#[tokio::test]
async fn the_payload_timestamp_is_the_event_instant_in_utc_whatever_its_offset() {
    let (url, mut rx) = receiver(&[]).await;
    let hooks = Webhooks::start(config(url)).unwrap();
    let plus_two = api_keys::time::UtcOffset::from_hms(2, 0, 0).unwrap();
    let at = common::start().to_offset(plus_two);
    assert_eq!(at, common::start(), "the same instant");
    assert!(hooks.enqueue("api_key.expired", at, serde_json::json!({})));
    let d = next(&mut rx).await;
    assert!(verify(&d));
    let v: Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(v["timestamp"], "2025-06-15T15:06:40Z");
}

/// The server's configuration refuses a webhook URL with credentials, but
/// `Webhooks::start` took one: the `user:password` went out in every request's `Host`
/// header, and `WebhookConfig`'s `Debug` (which "leaves the secret out") printed it.
#[tokio::test]
async fn a_webhook_url_with_credentials_is_refused_and_never_shown() {
    let (url, _rx) = receiver(&[]).await;
    let authority = url.authority().unwrap().as_str().to_string();
    let with_credentials: axum::http::Uri =
        format!("http://hook-user:hook-password@{authority}/hooks")
            .parse()
            .unwrap();
    let c = config(with_credentials);
    let shown = format!("{c:?}");
    assert!(!shown.contains("hook-password"), "{shown}");
    assert!(shown.contains(&authority), "{shown}");
    let e = Webhooks::start(c)
        .err()
        .expect("credentials in the URL are refused");
    assert!(!e.contains("hook-password"), "{e}");
}

/// A port that is no TCP port (`:99999`, `:0`) was accepted at start; the delivery then
/// read no port and fell back to 80: every signed event went to another service on that host
/// (or nowhere).
#[tokio::test]
async fn a_webhook_url_whose_port_is_no_tcp_port_is_refused() {
    for url in [
        "http://127.0.0.1:99999/hooks",
        "http://127.0.0.1:0/hooks",
        "http://[::1]:65536/hooks",
    ] {
        let started = Webhooks::start(config(url.parse().unwrap()));
        assert!(started.is_err(), "{url} was accepted");
    }
    // An empty port is the default one (RFC 3986), and an ordinary one is fine.
    for url in ["http://127.0.0.1:/hooks", "http://127.0.0.1:65535/hooks"] {
        assert!(
            Webhooks::start(config(url.parse().unwrap())).is_ok(),
            "{url}"
        );
    }
}

/// `http://:PORT/hooks` (no host) was accepted at start, and every delivery then
/// failed to connect: refused at start like any URL without a host.
#[tokio::test]
async fn a_webhook_url_with_an_empty_host_is_refused() {
    let e = Webhooks::start(config("http://:9000/hooks".parse().unwrap()))
        .err()
        .expect("a URL without a host is refused");
    assert!(e.contains("http://host"), "{e}");
}

/// A URL with a query and no path (`http://host:port?source=api-keys`, whose path is
/// `/` by RFC 3986) was accepted at start, but each attempt built the request target `?...`,
/// which is no valid target: every message was given up without reaching the receiver.
#[tokio::test]
async fn a_webhook_url_with_a_query_and_no_path_is_delivered_to_slash() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/",
        post(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((uri, Delivery { headers, body }));
                    StatusCode::OK
                }
            },
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut c = config(format!("http://{addr}?source=api-keys").parse().unwrap());
    c.max_attempts = 1;
    let hooks = Webhooks::start(c).unwrap();
    assert!(hooks.enqueue("api_key.revoked", common::start(), serde_json::json!({})));
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    let Ok(Some((uri, d))) = got else {
        panic!(
            "no delivery: delivered {}, given up {}",
            hooks.delivered(),
            hooks.failed()
        );
    };
    assert_eq!(uri.path_and_query().unwrap().as_str(), "/?source=api-keys");
    assert!(verify(&d));
}

/// A receiver's token in the URL's query (`?token=...`) is a credential too: `Debug` (and the
/// server's start-up line, which shows the URL the same way) leaves the query out.
#[tokio::test]
async fn a_query_token_in_the_webhook_url_is_never_shown() {
    let url: axum::http::Uri = "http://127.0.0.1:9000/hooks?token=hook-query-secret"
        .parse()
        .unwrap();
    let shown = format!("{:?}", config(url.clone()));
    assert!(!shown.contains("hook-query-secret"), "{shown}");
    assert!(shown.contains("http://127.0.0.1:9000/hooks?..."), "{shown}");
    assert_eq!(webhooks::shown_url(&url), "http://127.0.0.1:9000/hooks?...");
}

/// A queue capacity past what a channel can hold is refused with a message, not a panic
/// inside tokio's channel at start.
#[tokio::test]
async fn a_huge_queue_capacity_is_refused_not_a_panic() {
    let mut c = config("http://127.0.0.1:9000/hooks".parse().unwrap());
    c.capacity = usize::MAX;
    let err = Webhooks::start(c).err().expect("refused");
    assert!(err.contains("queue"), "{err}");
    let mut c = config("http://127.0.0.1:9000/hooks".parse().unwrap());
    c.capacity = webhooks::MAX_CAPACITY;
    assert!(Webhooks::start(c).is_ok());
}

/// A change of a key's rate limits or credits is a management action (a manager's, through
/// the admin page's Limits dialog) like a revocation, and the webhooks deliver "every
/// management action"; but only generate, reveal, roll, revoke, delete and rewrap went out: a
/// receiver watching for changes never heard that a key's limits were lifted.
#[tokio::test]
async fn a_change_of_limits_or_credits_arrives_as_a_webhook() {
    let (manager, info, mut rx) = audited_key().await;
    let burst = api_keys::RateLimit::new("burst", 10, std::time::Duration::from_secs(1));
    manager
        .set_limits(&common::alice(), &info.id, vec![burst])
        .await
        .unwrap();
    manager
        .set_credits(&common::alice(), &info.id, Some(api_keys::Credits::new(10)))
        .await
        .unwrap();
    manager.revoke(&common::alice(), &info.id).await.unwrap();
    let mut types = Vec::new();
    for _ in 0..4 {
        let d = next(&mut rx).await;
        assert!(verify(&d));
        let v: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(v["data"]["key_id"], info.id.to_string());
        types.push(v["type"].as_str().unwrap().to_string());
        if types.last().unwrap() == "api_key.revoked" {
            break;
        }
    }
    assert_eq!(
        types,
        [
            "api_key.generated",
            "api_key.limits_changed",
            "api_key.credits_changed",
            "api_key.revoked"
        ]
    );
}

/// A roll's webhook named only the old key: the receiver (who must move the integration to
/// the new key) could not tell which key replaced it.
#[tokio::test]
async fn a_rolled_webhook_names_the_replacement_key() {
    let (manager, info, mut rx) = audited_key().await;
    let (new_key, new_info) = manager
        .roll(
            &common::alice(),
            &info.id,
            api_keys::time::Duration::hours(1),
        )
        .await
        .unwrap();
    loop {
        let d = next(&mut rx).await;
        assert!(verify(&d));
        let v: Value = serde_json::from_slice(&d.body).unwrap();
        if v["type"] == "api_key.rolled" {
            assert_eq!(v["data"]["key_id"], info.id.to_string());
            assert_eq!(v["data"]["replacement"], new_info.id.to_string());
            assert!(!String::from_utf8_lossy(&d.body).contains(new_key.expose_secret()));
            break;
        }
    }
}

/// At shutdown the server printed its delivered / given-up / dropped counts and exited:
/// messages still queued (a revocation's, made just before Ctrl-C) were lost silently and
/// counted nowhere. `drain` gives the queue a grace period and says how many it leaves.
#[tokio::test]
async fn a_drain_at_shutdown_delivers_the_queue_or_counts_what_is_left() {
    let (url, _rx) = receiver(&[500]).await;
    let hooks = Webhooks::start(config(url)).unwrap();
    for _ in 0..3 {
        assert!(hooks.enqueue("api_key.revoked", common::start(), serde_json::json!({})));
    }
    // A guard against a hang, not a timing assertion.
    assert_eq!(hooks.drain(Duration::from_secs(30)).await, 0);
    assert_eq!((hooks.delivered(), hooks.pending()), (3, 0));
    // A receiver that accepts connections and never answers: nothing can be delivered
    // within the grace, and what is left is said.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut c = config(format!("http://{addr}/hooks").parse().unwrap());
    c.timeout = Duration::from_secs(600);
    let hooks = Webhooks::start(c).unwrap();
    for _ in 0..2 {
        assert!(hooks.enqueue("api_key.revoked", common::start(), serde_json::json!({})));
    }
    assert_eq!(hooks.drain(Duration::from_millis(50)).await, 2);
    assert_eq!(hooks.pending(), 2);
    drop(listener);
}

/// A notification's key says whom to tell by "its organization, name, creator and owner",
/// but the webhook carried no `owner`: a receiver routing expiry warnings to the key's owner
/// (a team, a service) could not, and the creator alone may have left long ago.
#[tokio::test]
async fn an_automation_webhook_names_the_keys_owner() {
    let (url, mut rx) = receiver(&[]).await;
    let hooks = Webhooks::start(config(url)).unwrap();
    let clock = ManualClock::new(common::start());
    let manager = KeyManager::builder(MemoryStore::new(), common::keyring())
        .clock(clock.clone())
        .notifier(hooks.clone())
        .build()
        .unwrap();
    manager
        .generate(
            &common::alice(),
            GenerateRequest::new("ci")
                .scope(Scope::Prometheus)
                .owner("team-payments"),
        )
        .await
        .unwrap();
    clock.advance(common::days(61));
    manager.sweep().await.unwrap();
    let d = next(&mut rx).await;
    assert!(verify(&d));
    let v: Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(v["type"], "api_key.expiry_warning");
    assert_eq!(v["data"]["owner"], "team-payments", "{v}");
}
