//! The demo stand-in for the host's login session: signed `X-Demo-Session` values, the
//! [`Session`] extractor and the demo-session routes.

use aes::Aes128;
use api_keys::{Actor, Error, OrgId, UserId};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use cmac::{Cmac, Mac};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AppState;
use super::errors::no_store;

/// Name of the demo session header.
pub const SESSION_HEADER: &str = "x-demo-session";

impl AppState {
    /// A signed `X-Demo-Session` value for `user` with `role` (`manager` or `member`) in `org`.
    /// Org and user must match `[A-Za-z0-9_-]{1,64}`; anything else is `None`.
    pub fn session(&self, org: &str, user: &str, role: &str) -> Option<String> {
        if !valid_name(org) || !valid_name(user) || !matches!(role, "manager" | "member") {
            return None;
        }
        let payload = format!("{org}.{user}.{role}");
        let sig = hex::encode(self.sessions.sign(&payload));
        Some(format!("{payload}.{sig}"))
    }

    /// The demo sessions the server prints at start and serves at `GET /demo/sessions`.
    pub fn demo_sessions(&self) -> Vec<DemoSession> {
        [
            ("alice — manager of acme", "acme", "alice", "manager"),
            ("bob — member of acme", "acme", "bob", "member"),
        ]
        .into_iter()
        .filter_map(|(label, org, user, role)| {
            Some(DemoSession {
                label: label.to_string(),
                session: self.session(org, user, role)?,
            })
        })
        .collect()
    }

    /// Reads and checks an `X-Demo-Session` value.
    fn actor(&self, value: &str) -> Option<Actor> {
        if value.len() > 256 {
            return None;
        }
        let mut parts = value.split('.');
        let (org, user, role, sig) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !valid_name(org) || !valid_name(user) {
            return None;
        }
        let mut presented = [0u8; 16];
        if sig.len() != 32 || sig.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        hex::decode_to_slice(sig, &mut presented).ok()?;
        let expected = self.sessions.sign(&format!("{org}.{user}.{role}"));
        if !bool::from(expected.ct_eq(&presented)) {
            return None;
        }
        let org = OrgId::try_new(org).ok()?;
        let user = UserId::try_new(user).ok()?;
        match role {
            "manager" => Some(Actor::manager(org, user)),
            "member" => Some(Actor::member(org, user)),
            _ => None,
        }
    }
}

/// One entry of `GET /demo/sessions`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoSession {
    /// Who this session is, for a picker.
    pub label: String,
    /// The `X-Demo-Session` header value.
    pub session: String,
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Signs demo sessions with AES-CMAC under a random per-process key.
pub(crate) struct SessionSigner {
    mac: Cmac<Aes128>,
}

impl SessionSigner {
    pub(crate) fn generate() -> Result<Self, Error> {
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        getrandom::getrandom(&mut *key).map_err(|_| Error::Random)?;
        let mac = <Cmac<Aes128> as cmac::digest::KeyInit>::new_from_slice(&*key)
            .map_err(|_| Error::Random)?;
        Ok(SessionSigner { mac })
    }

    fn sign(&self, payload: &str) -> [u8; 16] {
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The demo stand-in for the host's own session: the caller as an [`Actor`], from a valid
/// `X-Demo-Session` header. A real host builds the `Actor` from its own login session.
pub struct Session(pub Actor);

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| state.actor(v))
            .map(Session)
            .ok_or_else(|| {
                no_store(
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "unauthenticated"})),
                )
            })
    }
}

pub(crate) async fn demo_sessions(State(state): State<AppState>) -> Response {
    no_store(StatusCode::OK, Json(state.demo_sessions()))
}

pub(crate) async fn whoami(Session(actor): Session) -> Response {
    no_store(
        StatusCode::OK,
        Json(json!({
            "org": actor.org(),
            "user": actor.user(),
            "role": if actor.is_manager() { "manager" } else { "member" },
        })),
    )
}
