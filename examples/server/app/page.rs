//! The "Settings → API Keys" admin page: one HTML file, two stylesheets and a few plain scripts
//! (one per capability, loaded in order, the scripts with `defer`), embedded in the binary with
//! `include_str!` (no build step, no CDN, nothing fetched from elsewhere).
//!
//! The page talks to the JSON management routes with `fetch`, sending the demo session in the
//! `X-Demo-Session` header (no cookies, so no CSRF surface). Every response of this module carries
//! a strict Content-Security-Policy: only this server's own scripts and stylesheets run, no inline
//! script or style, no frames, no form submissions, no connections elsewhere.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

/// Where the page lives.
pub const PAGE_PATH: &str = "/settings/api-keys";
/// The page's scripts, in the order the page loads them: the path each is served at, and its
/// text. `core.js` makes the namespace the others share; `main.js` wires the controls and starts.
pub const SCRIPTS: [(&str, &str); 9] = [
    ("/settings/api-keys/core.js", include_str!("assets/core.js")),
    (
        "/settings/api-keys/format.js",
        include_str!("assets/format.js"),
    ),
    (
        "/settings/api-keys/session.js",
        include_str!("assets/session.js"),
    ),
    ("/settings/api-keys/keys.js", include_str!("assets/keys.js")),
    (
        "/settings/api-keys/limits.js",
        include_str!("assets/limits.js"),
    ),
    (
        "/settings/api-keys/new-key.js",
        include_str!("assets/new-key.js"),
    ),
    (
        "/settings/api-keys/generate.js",
        include_str!("assets/generate.js"),
    ),
    (
        "/settings/api-keys/confirm.js",
        include_str!("assets/confirm.js"),
    ),
    ("/settings/api-keys/main.js", include_str!("assets/main.js")),
];
/// The page's stylesheets, in the order the page loads them: the path each is served at, and its
/// text. `style.css` is the page, its forms and dialogs; `keys.css` the key list, and each key as
/// a card in a narrow window.
pub const STYLESHEETS: [(&str, &str); 2] = [
    (
        "/settings/api-keys/style.css",
        include_str!("assets/style.css"),
    ),
    (
        "/settings/api-keys/keys.css",
        include_str!("assets/keys.css"),
    ),
];

/// The policy sent with every response of the page: nothing but this origin's own files, no
/// inline script or style, no plugins, no frames around it, no form submissions.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// The icon (also answered at `/favicon.ico`, which browsers ask for on their own).
pub const FAVICON_PATH: &str = "/favicon.svg";

/// The page's routes: the HTML at [`PAGE_PATH`], its scripts, stylesheets and icon, and `/`
/// and `/settings` redirecting to the page.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/", get(settings))
        .route("/settings", get(settings))
        .route(FAVICON_PATH, get(favicon))
        .route("/favicon.ico", get(favicon))
        .route(PAGE_PATH, get(index));
    for (path, text) in STYLESHEETS {
        router = router.route(path, get(move || style(text)));
    }
    for (path, text) in SCRIPTS {
        router = router.route(path, get(move || script(text)));
    }
    router
}

async fn settings() -> Response {
    let mut res = asset(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    res.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(PAGE_PATH));
    res
}

async fn index() -> Response {
    asset(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML)
}

async fn script(text: &'static str) -> Response {
    asset(StatusCode::OK, "text/javascript; charset=utf-8", text)
}

async fn favicon() -> Response {
    asset(StatusCode::OK, "image/svg+xml", FAVICON_SVG)
}

async fn style(text: &'static str) -> Response {
    asset(StatusCode::OK, "text/css; charset=utf-8", text)
}

/// A static response with the page's security headers.
fn asset(status: StatusCode, content_type: &'static str, body: &'static str) -> Response {
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    // The files are embedded in the binary: revalidate so a rebuilt server is picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
