//! The browser admin page lives here (served under the router's page routes).

use super::AppState;

/// The admin page's routes, merged into [`super::router`].
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
}
