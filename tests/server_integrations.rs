//! The example server's integrations, end to end over real HTTP against its router (guarded as
//! `main.rs` serves it): webhooks for every management action and sweep event, checked by an
//! independent Standard Webhooks verifier on a loopback receiver; and GitHub's secret-scanning
//! partner endpoint, with reports signed by a locally generated ECDSA P-256 key published in
//! GitHub's document format.

#[allow(dead_code)]
#[path = "../examples/server/app.rs"]
mod app;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use api_keys::axum::secret_scanning::{MAX_REPORT_BYTES, PublicKeys};
use api_keys::time::{Duration, OffsetDateTime};
use api_keys::{AnyStore, Keyring, ManualClock, MasterKey, MemoryStore};
use app::webhooks::{WebhookConfig, Webhooks};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64ct::{Base64, Encoding};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

// ---- the server and a plain HTTP/1.1 client ---------------------------------------------------

struct Server {
    addr: SocketAddr,
    state: app::AppState,
}

async fn serve(state: app::AppState) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = app::Limits::default();
    let router = app::guard(app::router(state.clone()), addr, limits);
    tokio::spawn(app::serve(
        listener,
        router,
        limits,
        std::future::pending::<()>(),
    ));
    Server { addr, state }
}

struct Reply {
    status: StatusCode,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Server {
    /// One request on a fresh connection, naming `host` (this server's own address if `None`).
    async fn send(
        &self,
        method: Method,
        path: &str,
        host: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let own = self.addr.to_string();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host.unwrap_or(&own));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply { status, body }
    }

    fn alice(&self) -> String {
        self.state.session("acme", "alice", "manager").unwrap()
    }

    /// A key made through the management API as alice: (token, info).
    async fn create(&self, body: Value) -> (String, Value) {
        let session = self.alice();
        let r = self
            .send(
                Method::POST,
                "/api/keys",
                None,
                &[
                    ("x-demo-session", &session),
                    ("content-type", "application/json"),
                ],
                body.to_string().into_bytes(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let v = r.json();
        (v["key"].as_str().unwrap().to_string(), v["info"].clone())
    }

    async fn manage(&self, method: Method, path: &str) -> Reply {
        let session = self.alice();
        self.send(
            method,
            path,
            None,
            &[("x-demo-session", &session)],
            Vec::new(),
        )
        .await
    }

    async fn scrape(&self, token: &str) -> StatusCode {
        let auth = format!("Bearer {token}");
        self.send(
            Method::GET,
            "/metrics",
            None,
            &[("authorization", &auth)],
            Vec::new(),
        )
        .await
        .status
    }
}

fn state(integrations: app::Integrations) -> app::AppState {
    app::AppState::with_integrations(
        AnyStore::new(MemoryStore::new()),
        Keyring::new(1, MasterKey::generate()),
        integrations,
    )
    .expect("state")
}

// ---- webhooks ---------------------------------------------------------------------------------

const SECRET_BYTES: &[u8; 32] = b"the example server's hook secret";

struct Delivery {
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver accepting everything, reporting each delivery.
async fn receiver() -> (axum::http::Uri, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Delivery { headers, body });
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hooks").parse().unwrap(), rx)
}

/// Standard Webhooks verification, from the specification: HMAC-SHA256 of
/// `{webhook-id}.{webhook-timestamp}.{body}`, base64, after `v1,`.
fn verify(d: &Delivery) -> bool {
    let h = |n: &str| d.headers.get(n).and_then(|v| v.to_str().ok());
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
        let Some(sig) = s
            .strip_prefix("v1,")
            .and_then(|b| Base64::decode_vec(b).ok())
        else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET_BYTES).unwrap();
        mac.update(&content);
        mac.verify_slice(&sig).is_ok()
    })
}

/// The next delivery's `type` and `data`, after checking its signature.
async fn next(rx: &mut mpsc::UnboundedReceiver<Delivery>, tokens: &[&str]) -> (String, Value) {
    // A guard against a hang, not a timing assertion.
    let d = tokio::time::timeout(StdDuration::from_secs(30), rx.recv())
        .await
        .expect("no delivery")
        .expect("receiver gone");
    assert!(verify(&d), "a delivery fails the signature check");
    let text = String::from_utf8_lossy(&d.body);
    for t in tokens {
        assert!(!text.contains(t), "a webhook carries a token: {text}");
    }
    let v: Value = serde_json::from_slice(&d.body).unwrap();
    (v["type"].as_str().unwrap().to_string(), v["data"].clone())
}

/// Management actions through the API, a leak report, and the sweep's events all reach the
/// configured receiver, signed, in order, without a token.
#[tokio::test]
async fn management_actions_and_sweep_events_arrive_as_signed_webhooks() {
    let (url, mut rx) = receiver().await;
    let secret = format!("whsec_{}", Base64::encode_string(SECRET_BYTES));
    let hooks = Webhooks::start(WebhookConfig::new(url, secret)).unwrap();
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let clock = ManualClock::new(t0);
    let srv = serve(state(app::Integrations {
        webhooks: Some(hooks.clone()),
        clock: Some(Arc::new(clock.clone())),
        ..app::Integrations::default()
    }))
    .await;

    let (kept, kept_info) = srv
        .create(json!({"name": "scraper", "scopes": ["prometheus"], "expiry": {"days": 30}}))
        .await;
    let (gone, gone_info) = srv
        .create(json!({"name": "old", "scopes": ["prometheus"]}))
        .await;
    let tokens = [kept.as_str(), gone.as_str()];
    for info in [&kept_info, &gone_info] {
        let (kind, data) = next(&mut rx, &tokens).await;
        assert_eq!(kind, "api_key.generated");
        assert_eq!(data["key_id"], info["id"]);
        assert_eq!(
            (&data["org"], &data["actor"]),
            (&json!("acme"), &json!("alice"))
        );
    }
    let path = format!("/api/keys/{}/revoke", gone_info["id"].as_str().unwrap());
    assert_eq!(srv.manage(Method::POST, &path).await.status, StatusCode::OK);
    let (kind, data) = next(&mut rx, &tokens).await;
    assert_eq!(kind, "api_key.revoked");
    assert_eq!(data["key_id"], gone_info["id"]);

    // A leak report (as the partner endpoint makes it) is an automation event.
    let (leaked, leaked_info) = srv
        .create(json!({"name": "leaky", "scopes": ["prometheus"]}))
        .await;
    let tokens = [kept.as_str(), gone.as_str(), leaked.as_str()];
    assert_eq!(next(&mut rx, &tokens).await.0, "api_key.generated");
    let source = "https://github.com/acme/app/blob/main/.env";
    srv.state
        .manager
        .revoke_leaked(&leaked, source)
        .await
        .unwrap();
    let (kind, data) = next(&mut rx, &tokens).await;
    assert_eq!(kind, "api_key.leaked");
    assert_eq!(
        (&data["key_id"], &data["source"]),
        (&leaked_info["id"], &json!(source))
    );

    // 25 days on, 5 are left: the 7-day warning (the 30-day one does not fit a 30-day key).
    clock.set(t0 + Duration::days(25));
    let report = srv.state.manager.sweep().await.unwrap();
    assert_eq!(report.expiry_warnings, 1, "{report:?}");
    let (kind, data) = next(&mut rx, &tokens).await;
    assert_eq!(kind, "api_key.expiry_warning");
    assert_eq!(data["key_id"], kept_info["id"]);
    assert_eq!(data["lead_seconds"], 7 * 86_400);
    clock.set(t0 + Duration::days(31));
    srv.state.manager.sweep().await.unwrap();
    let (kind, data) = next(&mut rx, &tokens).await;
    assert_eq!(kind, "api_key.expired");
    assert_eq!(data["key_id"], kept_info["id"]);
    assert_eq!(hooks.dropped(), 0);
}

/// Without webhooks configured the server works as before (the fan-out has one branch).
#[tokio::test]
async fn without_webhooks_actions_still_work() {
    let srv = serve(state(app::Integrations::default())).await;
    let (token, _) = srv
        .create(json!({"name": "p", "scopes": ["prometheus"]}))
        .await;
    assert_eq!(srv.scrape(&token).await, StatusCode::OK);
}

// ---- the GitHub secret-scanning partner endpoint ----------------------------------------------

const KEY_ID: &str = "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c";
const PUBLIC_HOST: &str = "api.example.com";

fn signing_key() -> SigningKey {
    loop {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b).unwrap();
        if let Ok(k) = SigningKey::from_slice(&b) {
            return k;
        }
    }
}

fn sign(k: &SigningKey, body: &[u8]) -> String {
    let sig: Signature = k.sign(body);
    Base64::encode_string(sig.to_der().as_bytes())
}

/// The server with the partner endpoint, trusting `github`'s key as GitHub's document lists it.
async fn partner(github: &SigningKey) -> Server {
    let pem = github
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let doc = json!({"public_keys": [{"key_identifier": KEY_ID, "key": pem, "is_current": true}]});
    let keys = PublicKeys::from_github_json(doc.to_string().as_bytes()).unwrap();
    serve(state(app::Integrations {
        github_keys: Some(keys),
        ..app::Integrations::default()
    }))
    .await
}

/// GitHub's call: through the host's public name, signed by `signer`.
async fn report(srv: &Server, signer: &SigningKey, body: &[u8]) -> Reply {
    let sig = sign(signer, body);
    srv.send(
        Method::POST,
        app::SECRET_SCANNING_PATH,
        Some(PUBLIC_HOST),
        &[
            ("content-type", "application/json"),
            ("github-public-key-identifier", KEY_ID),
            ("github-public-key-signature", &sig),
        ],
        body.to_vec(),
    )
    .await
}

async fn key_json(srv: &Server, info: &Value) -> Value {
    let path = format!("/api/keys/{}", info["id"].as_str().unwrap());
    let r = srv.manage(Method::GET, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

/// A genuine leaked token reported by GitHub is revoked, with the reason and the URL where it
/// was found in the management API's key JSON; the feedback names it by hash only.
#[tokio::test]
async fn a_leaked_token_reported_by_github_is_revoked_with_its_source() {
    let github = signing_key();
    let srv = partner(&github).await;
    let (token, info) = srv
        .create(json!({"name": "ci", "scopes": ["prometheus"]}))
        .await;
    let (_, bystander) = srv
        .create(json!({"name": "other", "scopes": ["prometheus"]}))
        .await;
    let url = "https://github.com/acme/app/blob/abc123/config.yml";
    let body = json!([
        {"token": token, "type": "example_api_key", "url": url, "source": "content"},
        {"token": "sak_not_a_real_token", "type": "example_api_key", "url": url, "source": "content"},
    ])
    .to_string();
    let r = report(&srv, &github, body.as_bytes()).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let feedback = r.json();
    assert_eq!(feedback[0]["token_hash"], hash);
    assert_eq!(feedback[0]["label"], "true_positive");
    assert_eq!(feedback[1]["label"], "false_positive");
    assert!(!String::from_utf8_lossy(&r.body).contains(&token));

    let k = key_json(&srv, &info).await;
    assert_eq!(k["status"], "revoked");
    assert_eq!(k["revocation"], json!({"kind": "leaked", "source": url}));
    assert_eq!(srv.scrape(&token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(key_json(&srv, &bystander).await["status"], "active");
    // Reported again (GitHub retries): still a true positive, still the first source.
    let again = json!([{"token": token, "type": "t", "url": "https://elsewhere.example/x", "source": "content"}])
        .to_string();
    let r = report(&srv, &github, again.as_bytes()).await;
    assert_eq!(r.json()[0]["label"], "true_positive");
    assert_eq!(key_json(&srv, &info).await["revocation"]["source"], url);
}

/// A report that is not GitHub's — signed by another key, or altered after signing — is
/// refused and revokes nothing; the rest of the server still answers only its own Host, and
/// the endpoint keeps its body cap.
#[tokio::test]
async fn a_report_with_a_wrong_signature_revokes_nothing() {
    let github = signing_key();
    let srv = partner(&github).await;
    let (token, info) = srv
        .create(json!({"name": "ci", "scopes": ["prometheus"]}))
        .await;
    let body =
        json!([{"token": token, "type": "t", "url": "https://x.example/", "source": "content"}])
            .to_string();

    let impostor = signing_key();
    let r = report(&srv, &impostor, body.as_bytes()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Signed by GitHub's key, then one byte changed.
    let sig = sign(&github, body.as_bytes());
    let mut altered = body.clone().into_bytes();
    let last = altered.len() - 2;
    altered[last] = b' ';
    let r = srv
        .send(
            Method::POST,
            app::SECRET_SCANNING_PATH,
            Some(PUBLIC_HOST),
            &[
                ("github-public-key-identifier", KEY_ID),
                ("github-public-key-signature", &sig),
            ],
            altered,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // No signature at all.
    let r = srv
        .send(
            Method::POST,
            app::SECRET_SCANNING_PATH,
            Some(PUBLIC_HOST),
            &[],
            body.clone().into_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let k = key_json(&srv, &info).await;
    assert_eq!(
        (&k["status"], &k["revocation"]),
        (&json!("active"), &Value::Null)
    );
    assert_eq!(srv.scrape(&token).await, StatusCode::OK);

    // Only the partner endpoint is exempt from the Host check.
    let session = srv.alice();
    let r = srv
        .send(
            Method::GET,
            "/api/keys",
            Some(PUBLIC_HOST),
            &[("x-demo-session", &session)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    // The body cap holds through the public name too.
    let r = report(&srv, &github, &vec![b' '; MAX_REPORT_BYTES + 1]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// Without GitHub's keys the endpoint is not mounted.
#[tokio::test]
async fn without_github_keys_there_is_no_partner_endpoint() {
    let srv = serve(state(app::Integrations::default())).await;
    let r = srv
        .send(
            Method::POST,
            app::SECRET_SCANNING_PATH,
            None,
            &[],
            b"[]".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
