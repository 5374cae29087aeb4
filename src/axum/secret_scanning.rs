//! GitHub's [secret-scanning partner program] endpoint: GitHub finds tokens of your prefix in
//! public code and posts them here; every genuine one is revoked at once.
//!
//! GitHub posts a JSON array `[{"token", "type", "url", "source"}, ...]`, signed with ECDSA
//! P-256 / SHA-256 over the *raw* request body: the `Github-Public-Key-Identifier` header names
//! the key, `Github-Public-Key-Signature` carries the base64 DER signature. The handler
//!
//! 1. caps the body at [`MAX_REPORT_BYTES`] (413 beyond; 400 for a body that fails to
//!    arrive) and reads it as bytes, never re-serialized;
//! 2. finds the named public key through the host's [`PublicKeySource`] (GitHub publishes
//!    them at `https://api.github.com/meta/public_keys/secret_scanning`; fetching and caching
//!    that document is the host's job — [`PublicKeys::from_github_json`] parses it);
//! 3. verifies the signature over the raw body (401 for an unknown key or a bad signature,
//!    400 for missing or unusable headers) — nothing is parsed before that;
//! 4. revokes every true positive with [`KeyManager::revoke_leaked_batch`], the report's `url`
//!    as the source (at most [`MAX_LEAK_BATCH`] tokens, 413 beyond);
//! 5. answers 200 with the feedback array GitHub expects:
//!    `[{"token_hash": "<hex SHA-256 of the token>", "token_type": "...", "label":
//!    "true_positive" | "false_positive"}]` — never the raw token. A token this node could not
//!    judge ([`LeakVerdict::Unverified`]: its key's record failed its integrity check here —
//!    tampered with, or sealed under a master key this keyring lacks) gets no entry, so GitHub
//!    keeps its alert open instead of dismissing it as a false positive; a warning (one per
//!    report, with the count, never a token) says alerts were left open, and the audit sink's
//!    `IntegrityFailure` events name the keys.
//!
//! A store failure answers 500 (GitHub retries; revoking is idempotent). Tokens are never
//! logged; refusals are logged (target `api_keys::secret_scanning`) by reason only, bounded
//! like failed verifications (their `suppressed=N` summaries on the same target).
//!
//! ```
//! use api_keys::{KeyManager, Keyring, MasterKey, MemoryStore};
//! use api_keys::axum::secret_scanning::{PublicKeys, endpoint};
//! use axum::Router;
//!
//! # fn main() -> Result<(), api_keys::Error> {
//! let manager = KeyManager::builder(MemoryStore::new(), Keyring::new(1, MasterKey::generate()))
//!     .build()?;
//! // In production: a source that fetches and caches GitHub's document.
//! let keys = PublicKeys::from_github_json(br#"{"public_keys": []}"#)?;
//! let app: Router = Router::new().route("/github/secret-scanning", endpoint(manager, keys));
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! [secret-scanning partner program]: https://docs.github.com/en/code-security/secret-scanning/secret-scanning-partnership-program/secret-scanning-partner-program

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use ::axum::body::{Body, to_bytes};
use ::axum::routing::{MethodRouter, post};
use base64ct::{Base64, Encoding};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::leaks::{LeakVerdict, MAX_LEAK_BATCH, MAX_LEAK_SOURCE_BYTES};
use crate::{BoxError, BoxFuture, Error, KeyManager, KeyStore};

/// Largest report body the endpoint reads, in bytes (1 MiB: a full batch of 1 000 reports
/// with long URLs fits).
pub const MAX_REPORT_BYTES: usize = 1 << 20;
/// The header naming GitHub's signing key.
pub const KEY_IDENTIFIER_HEADER: &str = "github-public-key-identifier";
/// The header carrying the base64 DER signature.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";
const LOG: &str = "api_keys::secret_scanning";

/// GitHub's secret-scanning signing keys, by key identifier. Cheap to clone.
#[derive(Clone, Default)]
pub struct PublicKeys {
    keys: Arc<HashMap<String, VerifyingKey>>,
}

impl fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeys")
            .field("key_identifiers", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct Document {
    public_keys: Vec<DocumentKey>,
}

#[derive(Deserialize)]
struct DocumentKey {
    key_identifier: String,
    key: String,
    #[serde(default)]
    #[allow(dead_code)]
    is_current: bool,
}

impl PublicKeys {
    /// Parses GitHub's public-key document,
    /// `{"public_keys": [{"key_identifier": "...", "key": "-----BEGIN PUBLIC KEY-----...",
    /// "is_current": true}]}`. Every listed key is accepted (GitHub may still sign with a key
    /// that is no longer current while it rotates).
    ///
    /// # Errors
    /// [`Error::Policy`] when the document is not that JSON or a key is not a PEM P-256
    /// public key.
    pub fn from_github_json(document: &[u8]) -> Result<PublicKeys, Error> {
        let doc: Document = serde_json::from_slice(document).map_err(|_| {
            Error::Policy(
                "not GitHub's public-key document ({\"public_keys\": [{\"key_identifier\", \"key\", \"is_current\"}]})".into(),
            )
        })?;
        let mut keys = HashMap::new();
        for k in doc.public_keys {
            let key = VerifyingKey::from_public_key_pem(&k.key).map_err(|_| {
                Error::Policy(format!(
                    "key {:?} of GitHub's public-key document is not a PEM P-256 public key",
                    k.key_identifier
                ))
            })?;
            keys.insert(k.key_identifier, key);
        }
        Ok(PublicKeys {
            keys: Arc::new(keys),
        })
    }

    /// Parses one PEM (SPKI) P-256 public key under `key_identifier` (e.g. for tests, or a
    /// key the host pins).
    ///
    /// # Errors
    /// [`Error::Policy`] when `pem` is not a PEM P-256 public key.
    pub fn single(key_identifier: impl Into<String>, pem: &str) -> Result<PublicKeys, Error> {
        let key = VerifyingKey::from_public_key_pem(pem)
            .map_err(|_| Error::Policy("not a PEM P-256 public key".into()))?;
        Ok(PublicKeys {
            keys: Arc::new(HashMap::from([(key_identifier.into(), key)])),
        })
    }

    /// The key identifiers known.
    pub fn identifiers(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Whether `signature` (DER, as GitHub sends it after base64 decoding) is a valid ECDSA
    /// P-256 / SHA-256 signature of `body` by the key `key_identifier`.
    pub fn verify(&self, key_identifier: &str, body: &[u8], signature: &[u8]) -> bool {
        let Some(key) = self.keys.get(key_identifier) else {
            return false;
        };
        let Ok(sig) = Signature::from_der(signature) else {
            return false;
        };
        key.verify(body, &sig).is_ok()
    }
}

/// Where the endpoint gets GitHub's public keys. The host fetches GitHub's document
/// (`GET https://api.github.com/meta/public_keys/secret_scanning`), caches it, and
/// refreshes it when asked for an identifier it does not know (GitHub rotates its keys).
/// [`PublicKeys`] itself is a fixed source.
///
/// The identifier comes from the request's header *before* any signature is checked: anyone
/// can send any identifier. Refresh at most once every few minutes whatever the identifiers
/// asked for, with one fetch shared by concurrent callers, and answer from the cache in
/// between — otherwise unauthenticated requests make the host call GitHub's API once each,
/// use up its rate limit, and a genuine key rotation can no longer be fetched.
pub trait PublicKeySource: Send + Sync + 'static {
    /// The keys to check a report signed by `key_identifier` against.
    ///
    /// # Errors
    /// Whatever kept the keys from being read; the endpoint answers 500 and GitHub retries.
    fn public_keys<'a>(
        &'a self,
        key_identifier: &'a str,
    ) -> BoxFuture<'a, Result<PublicKeys, BoxError>>;
}

impl PublicKeySource for PublicKeys {
    fn public_keys<'a>(
        &'a self,
        _key_identifier: &'a str,
    ) -> BoxFuture<'a, Result<PublicKeys, BoxError>> {
        let keys = self.clone();
        Box::pin(async move { Ok(keys) })
    }
}

impl<T: PublicKeySource> PublicKeySource for Arc<T> {
    fn public_keys<'a>(
        &'a self,
        key_identifier: &'a str,
    ) -> BoxFuture<'a, Result<PublicKeys, BoxError>> {
        (**self).public_keys(key_identifier)
    }
}

/// One report of GitHub's array. The token is wiped when the report is dropped.
#[derive(Deserialize)]
struct Report {
    token: String,
    #[serde(rename = "type", default)]
    token_type: String,
    #[serde(default)]
    url: String,
}

impl Drop for Report {
    fn drop(&mut self) {
        self.token.zeroize();
    }
}

/// One entry of the answer.
#[derive(Serialize)]
struct Feedback<'a> {
    token_hash: String,
    token_type: &'a str,
    label: &'static str,
}

fn sha256_hex(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// The report's URL as a leak source: control characters and bidirectional controls dropped
/// (a source may hold neither, and the report must still revoke), cut to
/// [`MAX_LEAK_SOURCE_BYTES`] at a character boundary.
fn source_of(url: &str) -> String {
    let mut s = String::with_capacity(url.len().min(MAX_LEAK_SOURCE_BYTES));
    for c in url
        .chars()
        .filter(|&c| !c.is_control() && !crate::policy::is_bidi_control(c))
    {
        if s.len() + c.len_utf8() > MAX_LEAK_SOURCE_BYTES {
            break;
        }
        s.push(c);
    }
    s
}

fn answer(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn refuse(status: StatusCode, error: &'static str) -> Response<Body> {
    // Anyone can post a report: the lines are bounded, so a flood cannot flood the log.
    if crate::audit::scan_refusal_logged(crate::Clock::now_unix(&crate::SystemClock)) {
        tracing::warn!(target: LOG, status = status.as_u16(), error, "secret-scanning report refused");
    }
    answer(status, format!("{{\"error\":\"{error}\"}}").into_bytes())
}

/// A header's value as visible ASCII of at most `max` bytes, exactly once.
fn header<'h>(headers: &'h HeaderMap, name: &str, max: usize) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let v = values.next()?;
    if values.next().is_some() || v.len() > max {
        return None;
    }
    v.to_str().ok().filter(|s| !s.is_empty())
}

/// Whether reading a body failed because it was over a length limit: ours, or one a layer of
/// the host put around the body (the limit's error is then deeper in the chain).
fn over_a_limit(e: &::axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The handler behind [`endpoint`]: verifies, revokes, answers.
pub struct SecretScanning<S, K> {
    manager: KeyManager<S>,
    keys: Arc<K>,
}

impl<S, K> Clone for SecretScanning<S, K> {
    fn clone(&self) -> Self {
        SecretScanning {
            manager: self.manager.clone(),
            keys: self.keys.clone(),
        }
    }
}

impl<S, K> fmt::Debug for SecretScanning<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretScanning").finish_non_exhaustive()
    }
}

impl<S: KeyStore + 'static, K: PublicKeySource> SecretScanning<S, K> {
    /// An endpoint revoking leaked keys of `manager`, checking signatures against `keys`.
    pub fn new(manager: KeyManager<S>, keys: K) -> Self {
        SecretScanning {
            manager,
            keys: Arc::new(keys),
        }
    }

    /// Handles one POST: headers and the raw body.
    pub async fn handle(&self, headers: &HeaderMap, body: Body) -> Response<Body> {
        let Some(key_id) = header(headers, KEY_IDENTIFIER_HEADER, 256) else {
            return refuse(StatusCode::BAD_REQUEST, "missing_key_identifier");
        };
        let Some(sig_b64) = header(headers, SIGNATURE_HEADER, 512) else {
            return refuse(StatusCode::BAD_REQUEST, "missing_signature");
        };
        let Ok(signature) = Base64::decode_vec(sig_b64.trim()) else {
            return refuse(StatusCode::BAD_REQUEST, "signature_not_base64");
        };
        let raw = match to_bytes(body, MAX_REPORT_BYTES).await {
            Ok(b) => b,
            Err(e) if over_a_limit(&e) => {
                return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
            }
            // The client went away mid-body, a proxy reset the stream, a malformed chunk.
            Err(_) => return refuse(StatusCode::BAD_REQUEST, "body_unreadable"),
        };
        let keys = match self.keys.public_keys(key_id).await {
            Ok(k) => k,
            Err(e) => {
                // Before any signature is checked: anyone can cause this line, so it is
                // bounded like the refusals (`suppressed=N` summaries), with a budget of its
                // own: a flood of refused reports must not hide the outage.
                let now = crate::Clock::now_unix(&crate::SystemClock);
                if crate::audit::scan_keys_unavailable_logged(now) {
                    tracing::error!(target: LOG, error = %e, "GitHub's public keys are unavailable");
                }
                return answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    b"{\"error\":\"public_keys_unavailable\"}".to_vec(),
                );
            }
        };
        if !keys.keys.contains_key(key_id) {
            return refuse(StatusCode::UNAUTHORIZED, "unknown_key_identifier");
        }
        // Over the raw bytes as received; nothing is parsed before this.
        if !keys.verify(key_id, &raw, &signature) {
            return refuse(StatusCode::UNAUTHORIZED, "bad_signature");
        }
        let Ok(reports) = serde_json::from_slice::<Vec<Report>>(&raw) else {
            return refuse(StatusCode::BAD_REQUEST, "not_a_report_array");
        };
        if reports.len() > MAX_LEAK_BATCH {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "too_many_reports");
        }
        let sources: Vec<String> = reports.iter().map(|r| source_of(&r.url)).collect();
        let pairs: Vec<(&str, &str)> = reports
            .iter()
            .zip(&sources)
            .map(|(r, s)| (r.token.as_str(), s.as_str()))
            .collect();
        let verdicts = match self.manager.revoke_leaked_batch(&pairs).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(target: LOG, error = %e, "leaked tokens could not be revoked");
                return answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    b"{\"error\":\"revocation_failed\"}".to_vec(),
                );
            }
        };
        let count = |verdict| verdicts.iter().filter(|v| **v == verdict).count();
        let revoked = count(LeakVerdict::TruePositive);
        tracing::info!(target: LOG, reports = reports.len(), true_positives = revoked, "secret-scanning report handled");
        let unverified = count(LeakVerdict::Unverified);
        if unverified > 0 {
            // Behind GitHub's signature: one line per report, never a token (the audit
            // sink's IntegrityFailure events name the keys).
            tracing::warn!(target: LOG, unverified, "secret-scanning alerts left open: their keys' records could not be verified on this node (tampered with, or sealed under a master key this keyring lacks)");
        }
        // GitHub's labels are true_positive and false_positive: a token not judged here gets
        // no entry, which keeps its alert open.
        let feedback: Vec<Feedback<'_>> = reports
            .iter()
            .zip(&verdicts)
            .filter_map(|(r, v)| {
                let label = match v {
                    LeakVerdict::TruePositive => "true_positive",
                    LeakVerdict::FalsePositive => "false_positive",
                    LeakVerdict::Unverified => return None,
                };
                Some(Feedback {
                    token_hash: sha256_hex(&r.token),
                    token_type: &r.token_type,
                    label,
                })
            })
            .collect();
        match serde_json::to_vec(&feedback) {
            Ok(body) => answer(StatusCode::OK, body),
            Err(_) => answer(StatusCode::INTERNAL_SERVER_ERROR, Vec::new()),
        }
    }
}

/// The `POST` route a host mounts at the URL it registers with GitHub, e.g.
/// `Router::new().route("/github/secret-scanning", endpoint(manager, keys))`.
pub fn endpoint<S, K, St>(manager: KeyManager<S>, keys: K) -> MethodRouter<St>
where
    S: KeyStore + 'static,
    K: PublicKeySource,
    St: Clone + Send + Sync + 'static,
{
    let this = SecretScanning::new(manager, keys);
    post(move |headers: HeaderMap, body: Body| {
        let this = this.clone();
        async move { this.handle(&headers, body).await }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_cut_at_a_character_boundary_without_controls() {
        let long = format!("https://x.example/{}", "é".repeat(400));
        let s = source_of(&long);
        assert!(s.len() <= MAX_LEAK_SOURCE_BYTES);
        assert!(long.starts_with(&s));
        assert_eq!(source_of("a\nb\u{7}c"), "abc");
        assert_eq!(
            source_of("https://x/\u{202e}gpj.exe\u{2066}"),
            "https://x/gpj.exe"
        );
    }

    #[test]
    fn token_hash_is_hex_sha256() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
