//! The demo stand-in for the host's login session: signed `X-Demo-Session` values, the
//! [`Session`] extractor and the demo-session routes.

use std::sync::PoisonError;

use aes::Aes128;
use api_keys::time::{Duration, OffsetDateTime};
use api_keys::{Actor, Error, OrgId, UserId};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use cmac::{Cmac, Mac};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AppState;
use super::errors::{ApiError, Body, no_store, parse_json};
#[allow(unused_imports)] // named by the `utoipa::path` annotations
use super::openapi::{Problem, WhoAmI};

/// Name of the demo session header.
pub const SESSION_HEADER: &str = "x-demo-session";

/// How long a demo session stays valid unless the state says otherwise.
pub const SESSION_TTL: Duration = Duration::hours(12);
/// How long a login link stays usable (once).
pub const LOGIN_TTL: Duration = Duration::hours(1);
/// Most login links waiting to be used at once (the oldest goes first).
const MAX_PENDING_LOGINS: usize = 16;

impl AppState {
    /// A signed `X-Demo-Session` value for `user` with `role` (`manager` or `member`) in `org`,
    /// valid for the state's session lifetime from now (at most until the calendar's end: the
    /// lifetime is the host's setting, and a sum past the end must not panic). Org and user
    /// must match `[A-Za-z0-9_-]{1,64}`; anything else is `None`.
    pub fn session(&self, org: &str, user: &str, role: &str) -> Option<String> {
        let until = self.manager.now().saturating_add(self.session_ttl);
        self.session_until(org, user, role, until)
    }

    /// [`AppState::session`] ending at `expires_at` instead.
    pub fn session_until(
        &self,
        org: &str,
        user: &str,
        role: &str,
        expires_at: OffsetDateTime,
    ) -> Option<String> {
        if !valid_name(org) || !valid_name(user) || !matches!(role, "manager" | "member") {
            return None;
        }
        let payload = format!("{org}.{user}.{role}.{}", expires_at.unix_timestamp());
        let sig = hex::encode(self.sessions.sign(&payload));
        Some(format!("{payload}.{sig}"))
    }

    /// Fresh demo sessions (alice, a manager of acme; bob, a member), printed at start and
    /// handed out once per login link.
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

    /// A new one-time login nonce, usable for [`LOGIN_TTL`]: the page's login link is
    /// `/settings/api-keys#login=<nonce>` (a URL fragment never leaves the browser), and the
    /// page trades it for the demo sessions with `POST /demo/login`.
    ///
    /// # Errors
    /// [`Error::Random`] if the OS generator fails.
    pub fn login_nonce(&self) -> Result<String, Error> {
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).map_err(|_| Error::Random)?;
        // Saturating: the manager's clock is the host's (a test clock may be near the end).
        let expires = self.manager.now().saturating_add(LOGIN_TTL);
        let mut pending = self.logins.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING_LOGINS {
            pending.remove(0);
        }
        pending.push((nonce, expires));
        Ok(hex::encode(nonce))
    }

    /// Uses up a login nonce: true when it was pending and unexpired. Every pending nonce is
    /// compared in constant time.
    fn redeem_login(&self, presented: &str) -> bool {
        let mut bytes = [0u8; 16];
        if presented.len() != 32 || hex::decode_to_slice(presented, &mut bytes).is_err() {
            return false;
        }
        let now = self.manager.now();
        let mut pending = self.logins.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|(_, expires)| *expires > now);
        let mut found = None;
        for (i, (nonce, _)) in pending.iter().enumerate() {
            if bool::from(nonce.ct_eq(&bytes)) {
                found = Some(i);
            }
        }
        match found {
            Some(i) => {
                pending.remove(i);
                true
            }
            None => false,
        }
    }

    /// Reads and checks an `X-Demo-Session` value.
    fn actor(&self, value: &str) -> Result<Actor, SessionProblem> {
        use SessionProblem::Invalid;
        if value.len() > 256 {
            return Err(Invalid);
        }
        let mut parts = value.split('.');
        let mut next = || parts.next().ok_or(Invalid);
        let (org, user, role, expires, sig) = (next()?, next()?, next()?, next()?, next()?);
        if next().is_ok() || !valid_name(org) || !valid_name(user) {
            return Err(Invalid);
        }
        let mut presented = [0u8; 16];
        if sig.len() != 32 || sig.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Invalid);
        }
        hex::decode_to_slice(sig, &mut presented).map_err(|_| Invalid)?;
        let expected = self
            .sessions
            .sign(&format!("{org}.{user}.{role}.{expires}"));
        if !bool::from(expected.ct_eq(&presented)) {
            return Err(Invalid);
        }
        let expires: i64 = expires.parse().map_err(|_| Invalid)?;
        if self.manager.now().unix_timestamp() >= expires {
            return Err(SessionProblem::Expired);
        }
        let org = OrgId::try_new(org).map_err(|_| Invalid)?;
        let user = UserId::try_new(user).map_err(|_| Invalid)?;
        match role {
            "manager" => Ok(Actor::manager(org, user)),
            "member" => Ok(Actor::member(org, user)),
            _ => Err(Invalid),
        }
    }
}

/// Why a session header was refused.
enum SessionProblem {
    Invalid,
    Expired,
}

/// One demo session: what `POST /demo/login` answers with, and what the server prints.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
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
        let value = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok());
        let message = match value.map(|v| state.actor(v)) {
            Some(Ok(actor)) => return Ok(Session(actor)),
            None => "send a demo session in the X-Demo-Session header",
            Some(Err(SessionProblem::Invalid)) => {
                "the X-Demo-Session header is not a session of this server (it may have restarted); open a new login link"
            }
            Some(Err(SessionProblem::Expired)) => "the session has expired; open a new login link",
        };
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message).into_response())
    }
}

/// `POST /demo/login` body.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    /// The 32 hex digits after `#login=` in the login link.
    nonce: String,
}

/// Trades a one-time login nonce for the demo sessions. Only the page on this origin can read
/// the answer: a cross-origin page can send the request (a `text/plain` body needs no CORS
/// preflight) but never read what comes back (this server grants no CORS), it cannot guess
/// the nonce, and the Host check refuses rebound names.
#[utoipa::path(post, path = "/demo/login", tag = "session",
    request_body(content = LoginBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The demo sessions.", body = Vec<DemoSession>),
        (status = 401, description = "The nonce was used, has expired, or never existed (`unauthenticated`).", content_type = "application/problem+json", body = Problem),
    ))]
pub(crate) async fn login(
    State(state): State<AppState>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let body: LoginBody = parse_json(&body)?;
    if !state.redeem_login(&body.nonce) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this login link was already used or has expired; the server prints a new one at start",
        ));
    }
    Ok(no_store(StatusCode::OK, Json(state.demo_sessions())))
}

#[utoipa::path(get, path = "/api/whoami", tag = "session", security(("demo_session" = [])),
    responses((status = 200, description = "Who the session is.", body = WhoAmI)))]
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
