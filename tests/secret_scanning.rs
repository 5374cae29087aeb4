//! The GitHub secret-scanning partner endpoint over real HTTP (loopback), with reports signed
//! by a locally generated ECDSA P-256 key pair published in GitHub's document format.

mod common;

use std::net::SocketAddr;

use api_keys::axum::secret_scanning::{MAX_REPORT_BYTES, PublicKeys, endpoint};
use api_keys::{
    GenerateRequest, KeyManager, KeyStatus, ManualClock, MemoryStore, RevocationReason, Scope,
};
use axum::Router;
use axum::body::Bytes;
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{Method, Request, StatusCode};
use base64ct::{Base64, Encoding};
use common::{alice, keyring, start, with_id, wrong_secret};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};

const PATH: &str = "/github/secret-scanning";
const KEY_ID: &str = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a";

fn signing_key() -> SigningKey {
    loop {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b).unwrap();
        if let Ok(k) = SigningKey::from_slice(&b) {
            return k;
        }
    }
}

fn pem(k: &SigningKey) -> String {
    k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap()
}

fn sign(k: &SigningKey, body: &[u8]) -> String {
    let sig: Signature = k.sign(body);
    Base64::encode_string(sig.to_der().as_bytes())
}

struct Partner {
    addr: SocketAddr,
    manager: KeyManager<MemoryStore>,
    github: SigningKey,
}

/// The endpoint serving GitHub's document with two keys: an old one and the current one
/// (`KEY_ID`), both accepted.
async fn start_partner() -> Partner {
    start_partner_on(MemoryStore::new()).await
}

async fn start_partner_on(store: MemoryStore) -> Partner {
    let github = signing_key();
    let old = signing_key();
    let doc = json!({"public_keys": [
        {"key_identifier": "old-key", "key": pem(&old), "is_current": false},
        {"key_identifier": KEY_ID, "key": pem(&github), "is_current": true},
    ]});
    let keys = PublicKeys::from_github_json(doc.to_string().as_bytes()).unwrap();
    let mut ids: Vec<&str> = keys.identifiers().collect();
    ids.sort();
    assert_eq!(ids, vec![KEY_ID, "old-key"]);
    let manager = KeyManager::builder(store, keyring())
        .clock(ManualClock::new(start()))
        .build()
        .unwrap();
    let app: Router = Router::new().route(PATH, endpoint(manager.clone(), keys));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Partner {
        addr,
        manager,
        github,
    }
}

async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(PATH)
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, "application/json");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

async fn post_signed(
    p: &Partner,
    key_id: &str,
    signature: &str,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    post(
        p.addr,
        &[
            ("Github-Public-Key-Identifier", key_id),
            ("Github-Public-Key-Signature", signature),
        ],
        body,
    )
    .await
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn report(tokens: &[&str]) -> Vec<u8> {
    let items: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"token": t, "type": "acme_api_key", "url": format!("https://github.com/o/r/blob/main/f{i}"), "source": "content"})
        })
        .collect();
    // Deliberately not serde's compact form: the signature covers these exact bytes.
    serde_json::to_vec_pretty(&items).unwrap()
}

async fn works(p: &Partner, token: &str) -> bool {
    p.manager.verify(token, &Scope::Prometheus).await.is_ok()
}

async fn key(p: &Partner) -> api_keys::ApiKey {
    p.manager
        .generate(
            &alice(),
            GenerateRequest::new("ci").scope(Scope::Prometheus),
        )
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn a_signed_report_revokes_true_positives_and_answers_by_hash() {
    let p = start_partner().await;
    let genuine = key(&p).await;
    let bystander = key(&p).await;
    let wrong = wrong_secret(bystander.expose_secret());
    let unknown = with_id(bystander.expose_secret(), "0000000000A");
    let tokens = [genuine.expose_secret(), &wrong, &unknown, "sak_garbage"];
    let body = report(&tokens);
    let sig = sign(&p.github, &body);
    let (status, answer) = post_signed(&p, KEY_ID, &sig, body).await;
    assert_eq!(status, StatusCode::OK);
    let text = std::str::from_utf8(&answer).unwrap();
    for t in &tokens {
        assert!(!text.contains(t), "the answer echoes a token");
    }
    let v: Value = serde_json::from_slice(&answer).unwrap();
    let expected: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"token_hash": hash(t), "token_type": "acme_api_key",
                   "label": if i == 0 { "true_positive" } else { "false_positive" }})
        })
        .collect();
    assert_eq!(v, Value::Array(expected));
    let info = p.manager.get(&alice(), genuine.id()).await.unwrap();
    assert_eq!(info.status, KeyStatus::Revoked);
    assert_eq!(
        info.revocation,
        Some(RevocationReason::Leaked {
            source: "https://github.com/o/r/blob/main/f0".into()
        })
    );
    assert!(works(&p, bystander.expose_secret()).await);
}

/// A token whose record this node cannot open — sealed under a master key its keyring lacks
/// (mid-rotation), or tampered with — is not judged: no `false_positive` label for it (that
/// would close GitHub's alert while the key still works on the nodes that have the key), so
/// it is left out of the feedback and the alert stays open; a line says so, without the token.
#[tokio::test(flavor = "current_thread")]
async fn a_token_this_node_cannot_judge_gets_no_false_positive_label() {
    use api_keys::{KeyStore, Keyring, MasterKey};

    let (buffer, _guard) = common::capture_thread_logs();
    let store = MemoryStore::new();
    let p = start_partner_on(store.clone()).await;
    let rotated = KeyManager::builder(
        store.clone(),
        Keyring::new(2, MasterKey::from_bytes([0x5a; 16]))
            .with_previous(1, MasterKey::from_bytes(common::MASTER)),
    )
    .clock(ManualClock::new(start()))
    .build()
    .unwrap();
    let (sealed_v2, _) = rotated
        .generate(
            &alice(),
            GenerateRequest::new("v2").scope(Scope::Prometheus),
        )
        .await
        .unwrap();
    let tampered = key(&p).await;
    let mut rec = store.get(tampered.id()).await.unwrap().unwrap();
    rec.expires_at = Some(start() + api_keys::time::Duration::days(3650));
    store.overwrite_unchecked(rec);
    let genuine = key(&p).await;
    let wrong = wrong_secret(genuine.expose_secret());
    let tokens = [
        sealed_v2.expose_secret(),
        genuine.expose_secret(),
        tampered.expose_secret(),
        &wrong,
    ];
    let body = report(&tokens);
    let sig = sign(&p.github, &body);
    let (status, answer) = post_signed(&p, KEY_ID, &sig, body).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        v,
        json!([
            {"token_hash": hash(genuine.expose_secret()), "token_type": "acme_api_key",
             "label": "true_positive"},
            {"token_hash": hash(&wrong), "token_type": "acme_api_key",
             "label": "false_positive"},
        ])
    );
    // Nothing was done to them: the rotated key still works where the keyring has its key.
    rotated
        .verify(sealed_v2.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    let logs = buffer.text();
    assert!(
        logs.lines()
            .any(|l| l.contains("left open") && l.contains("unverified=2")),
        "{logs}"
    );
    for t in &tokens {
        assert!(!logs.contains(t), "a token was logged");
    }
}

#[tokio::test]
async fn forged_unknown_truncated_and_altered_reports_are_refused_and_revoke_nothing() {
    let p = start_partner().await;
    let k = key(&p).await;
    let body = report(&[k.expose_secret()]);
    let good = sign(&p.github, &body);

    // Signed by another key pair, under GitHub's key identifier.
    let forger = signing_key();
    let forged = sign(&forger, &body);
    let (s, _) = post_signed(&p, KEY_ID, &forged, body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A genuine signature, under a key identifier nobody published.
    let (s, _) = post_signed(&p, "not-a-github-key", &good, body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The right signature under the other (old) published key.
    let (s, _) = post_signed(&p, "old-key", &good, body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Truncated body.
    let (s, _) = post_signed(&p, KEY_ID, &good, body[..body.len() - 3].to_vec()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Replayed with one changed byte (a URL character).
    let mut altered = body.clone();
    let i = altered.len() - 30;
    altered[i] ^= 0x01;
    let (s, _) = post_signed(&p, KEY_ID, &good, altered).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Missing headers, a non-base64 signature, a signature that is not DER.
    let (s, _) = post(p.addr, &[], body.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = post(
        p.addr,
        &[("Github-Public-Key-Identifier", KEY_ID)],
        body.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = post_signed(&p, KEY_ID, "***", body.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = post_signed(&p, KEY_ID, &Base64::encode_string(b"not der"), body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    assert!(
        works(&p, k.expose_secret()).await,
        "a refused report revoked a key"
    );

    // The genuine report still works afterwards.
    let (s, _) = post_signed(&p, KEY_ID, &good, body).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!works(&p, k.expose_secret()).await);
}

#[tokio::test]
async fn oversized_and_non_report_bodies_are_refused() {
    let p = start_partner().await;
    let k = key(&p).await;
    let mut big = report(&[k.expose_secret()]);
    big.resize(MAX_REPORT_BYTES + 1, b' ');
    let sig = sign(&p.github, &big);
    let (s, _) = post_signed(&p, KEY_ID, &sig, big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    let not_array = br#"{"token": "x"}"#.to_vec();
    let sig = sign(&p.github, &not_array);
    let (s, _) = post_signed(&p, KEY_ID, &sig, not_array).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let items: Vec<Value> = (0..1001)
        .map(|_| json!({"token": "sak_x", "type": "t", "url": "u"}))
        .collect();
    let many = serde_json::to_vec(&items).unwrap();
    let sig = sign(&p.github, &many);
    let (s, _) = post_signed(&p, KEY_ID, &sig, many).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(works(&p, k.expose_secret()).await);
}

#[test]
fn a_document_with_a_bad_key_is_refused() {
    let doc = json!({"public_keys": [{"key_identifier": "x", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "is_current": true}]});
    assert!(PublicKeys::from_github_json(doc.to_string().as_bytes()).is_err());
    assert!(PublicKeys::from_github_json(b"[]").is_err());
}

/// A body that fails while it is read (the client went away mid-upload, a proxy reset the
/// stream) is a 400, not a 413: only a body over `MAX_REPORT_BYTES` is too large — also when
/// it comes chunked, with no length announced.
#[tokio::test]
async fn a_body_that_fails_to_arrive_is_a_bad_request_not_too_large() {
    use axum::body::Body;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tower::ServiceExt;

    let p = start_partner().await;
    let k = key(&p).await;
    let body = report(&[k.expose_secret()]);
    let sig = sign(&p.github, &body);
    let keys = PublicKeys::single(KEY_ID, &pem(&p.github)).unwrap();
    let app: Router = Router::new().route(PATH, endpoint(p.manager.clone(), keys));
    let send = |chunks: Vec<Result<Frame<Bytes>, std::io::Error>>| {
        let req = Request::builder()
            .method(Method::POST)
            .uri(PATH)
            .header("Github-Public-Key-Identifier", KEY_ID)
            .header("Github-Public-Key-Signature", sig.as_str())
            .body(Body::new(StreamBody::new(futures_util::stream::iter(
                chunks,
            ))))
            .unwrap();
        app.clone().oneshot(req)
    };

    let cut = send(vec![
        Ok(Frame::data(Bytes::copy_from_slice(&body[..10]))),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )),
    ])
    .await
    .unwrap();
    assert_eq!(cut.status(), StatusCode::BAD_REQUEST);
    let text = cut.into_body().collect().await.unwrap().to_bytes();
    assert!(!text.is_empty() && !String::from_utf8_lossy(&text).contains("too_large"));

    // Over the cap in chunks, no length announced: still 413.
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let over = (0..=MAX_REPORT_BYTES / chunk.len())
        .map(|_| Ok(Frame::data(chunk.clone())))
        .collect();
    let r = send(over).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Over a smaller limit the host put around the body: 413 too.
    let req = Request::builder()
        .method(Method::POST)
        .uri(PATH)
        .header("Github-Public-Key-Identifier", KEY_ID)
        .header("Github-Public-Key-Signature", sig.as_str())
        .body(Body::new(http_body_util::Limited::new(
            Body::from(vec![b' '; 2048]),
            1024,
        )))
        .unwrap();
    let r = app.clone().oneshot(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert!(works(&p, k.expose_secret()).await);
}

/// Anyone can post to the endpoint: a flood of refused reports (here, forged signatures) logs
/// a bounded number of lines per window (with a `suppressed=N` summary later), not one each.
#[tokio::test(flavor = "current_thread")]
async fn a_flood_of_refused_reports_does_not_flood_the_log() {
    let (buffer, _guard) = common::capture_thread_logs();
    let p = start_partner().await;
    let body = report(&["sak_not_a_real_token"]);
    let forged = sign(&signing_key(), &body);
    for _ in 0..60 {
        let (s, _) = post_signed(&p, KEY_ID, &forged, body.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let lines = buffer
        .text()
        .lines()
        .filter(|l| l.contains("secret-scanning report refused"))
        .count();
    // One window's budget, or two if the flood straddled a window's end (the budget is the
    // process's: the other tests of this binary may have used some of it).
    let most = 2 * api_keys::LOG_FULL_PER_WINDOW as usize;
    assert!(lines <= most, "{lines} lines for 60 refusals");
}

/// GitHub's public keys that cannot be read (GitHub's API rate limit hit, a network fault):
/// every report is refused with 500 before it is read — and anyone can post one, so the
/// error lines are bounded like the other refusals, not one per request.
#[tokio::test(flavor = "current_thread")]
async fn a_flood_while_the_public_keys_are_unavailable_does_not_flood_the_log() {
    use api_keys::axum::secret_scanning::PublicKeySource;
    use api_keys::{BoxError, BoxFuture};

    struct Down;
    impl PublicKeySource for Down {
        fn public_keys<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<PublicKeys, BoxError>> {
            Box::pin(async { Err("GitHub's API answered 403: rate limit exceeded".into()) })
        }
    }

    let (buffer, _guard) = common::capture_thread_logs();
    let p = start_partner().await;
    let app: Router = Router::new().route(PATH, endpoint(p.manager.clone(), Down));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let body = report(&["sak_not_a_real_token"]);
    let forged = sign(&signing_key(), &body);
    let headers = [
        ("Github-Public-Key-Identifier", "any-identifier"),
        ("Github-Public-Key-Signature", forged.as_str()),
    ];
    for _ in 0..60 {
        let (s, _) = post(addr, &headers, body.clone()).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let lines = buffer
        .text()
        .lines()
        .filter(|l| l.contains("public keys are unavailable"))
        .count();
    assert!(lines >= 1, "the outage is logged");
    let most = 2 * api_keys::LOG_FULL_PER_WINDOW as usize;
    assert!(lines <= most, "{lines} lines for 60 refusals");
}
