//! A runnable server guarding `/metrics` (Prometheus) and `/scim/v2/Users` (SCIM) with API
//! keys, with a JSON management API for an organization's managers.
//!
//! ```text
//! cargo run --example server --features axum -- [PORT] [--allow-reveal] [--db PATH] \
//!     [--webhook-url URL] [--github-keys FILE]
//! cargo run --example server --features axum,postgres,redis -- [PORT] --postgres URL --redis URL
//! ```
//!
//! With `--features axum,postgres,redis`, `--postgres URL` and `--redis URL` make this node one
//! of many sharing one database and one Redis (see `backends.rs` and README "Many nodes").
//!
//! The port comes from the first argument, else `PORT`, else 8080; the server binds
//! 127.0.0.1. Without the `sqlite` feature keys live in memory (they vanish with the process)
//! and the master key comes from `API_KEYS_MASTER_KEY` (32 hex digits) or is generated at
//! random for this run. With `--features axum,sqlite` keys live in a SQLite file (`--db PATH`,
//! `API_KEYS_DB`, default `api-keys-example.db`) and, unless `API_KEYS_MASTER_KEY` is set, the
//! master key is kept in `<db>.master-key` next to it — a demo convenience only: a real host
//! keeps its master key in a secret manager, never beside the database.
//!
//! Who the caller of the management API is comes from a *demo* stand-in for the host's own
//! login session: a signed, expiring `X-Demo-Session` header. The server prints, at start, a
//! one-time login link for the admin page and two sessions for scripts (alice, a manager of
//! acme; bob, a member); no route hands sessions out. It answers only requests whose `Host` is
//! its own address (against DNS rebinding), with header and body read timeouts and a
//! connection limit. A real host builds the `Actor` from its own session instead.
//!
//! The automations run hourly (`manager.sweep()`: expiry warnings, unused keys, retention).
//! With `--webhook-url` (or `API_KEYS_WEBHOOK_URL`) and the signing secret in
//! `API_KEYS_WEBHOOK_SECRET` (the environment only: a flag would show in `ps`), every
//! management action and every automation event is delivered there as a Standard Webhooks
//! message. With `--github-keys FILE` (or `API_KEYS_GITHUB_KEYS_FILE`: GitHub's secret-scanning
//! public-key document) the partner endpoint `POST /github/secret-scanning` revokes the leaked
//! keys GitHub reports.

mod app;
mod backends;
mod config;

use std::net::Ipv4Addr;
use std::process::ExitCode;

use api_keys::Policy;
use app::webhooks::{self, WebhookConfig, Webhooks};
use config::{github_keys, keyring, parse_config, store};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(true)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let env = |k: &str| std::env::var(k).ok();
    let (shared, args) = backends::take_backends(std::env::args().skip(1), env)
        .map_err(|e| format!("{e}\n{}", backends::USAGE))?;
    let config = parse_config(args, env)?;
    let policy = Policy::default().allow_reveal(config.allow_reveal);
    let github_keys = config.github_keys.as_deref().map(github_keys).transpose()?;
    let (store, key_file) = match backends::postgres_store(&shared).await? {
        Some(pg) => (pg, None),
        None => store(&config)?,
    };
    let keyring = keyring(key_file.as_deref())?;
    let webhooks = match &config.webhook {
        Some(target) => Some(Webhooks::start(WebhookConfig::new(
            target.url.clone(),
            target.secret.expose(),
        ))?),
        None => None,
    };
    let integrations = app::Integrations {
        policy,
        webhooks: webhooks.clone(),
        github_keys,
        clock: None,
    };
    let partner = integrations.github_keys.is_some();
    let state = app::AppState::with_integrations_and(
        store,
        keyring,
        integrations,
        backends::counters(&shared)?,
    )
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, config.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", config.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The crate's own metrics (feature `metrics`: every organization together) on an
    // operator-only listener, e.g. API_KEYS_OPS_METRICS_ADDR=127.0.0.1:9464.
    #[cfg(feature = "metrics")]
    if let Ok(ops) = std::env::var("API_KEYS_OPS_METRICS_ADDR") {
        let handle = app::metrics::install_crate_recorder()?;
        let ops = tokio::net::TcpListener::bind(&ops)
            .await
            .map_err(|e| format!("cannot listen on {ops} (API_KEYS_OPS_METRICS_ADDR): {e}"))?;
        let at = ops.local_addr().map_err(|e| e.to_string())?;
        println!("crate metrics for operators: http://{at}/metrics");
        tokio::spawn(async move {
            if let Err(e) = app::metrics::serve_crate_metrics(ops, handle).await {
                eprintln!("crate metrics listener stopped: {e}");
            }
        });
    }
    // The automations (expiry warnings, unused keys, retention): hourly, safe on every node.
    tokio::spawn(webhooks::sweep_every(
        state.manager.clone(),
        std::time::Duration::from_secs(3600),
    ));
    let nonce = state.login_nonce().map_err(|e| e.to_string())?;
    println!("api-keys example server on http://{addr}");
    if let Some(target) = &config.webhook {
        println!(
            "webhooks: every management action and automation event is POSTed to {}",
            webhooks::shown_url(&target.url)
        );
    }
    if partner {
        println!(
            "GitHub secret scanning: POST http://{addr}{} revokes the leaked keys GitHub reports; \
             register https://<your public name>{} with the pattern \\b{}_[0-9A-Za-z]{{61}}\\b",
            app::SECRET_SCANNING_PATH,
            app::SECRET_SCANNING_PATH,
            state.manager.prefix()
        );
    }
    println!(
        "admin page (a one-time login link, valid for an hour; the part after # never leaves your browser):"
    );
    println!("  http://{addr}/settings/api-keys#login={nonce}");
    println!(
        "demo sessions for scripts (send as the X-Demo-Session header; valid for {} hours; a real host uses its own login):",
        app::SESSION_TTL.whole_hours()
    );
    let sessions = state.demo_sessions();
    for s in &sessions {
        println!("  {:<26} {}", s.label, s.session);
    }
    println!("try:");
    if let Some(alice) = sessions.first() {
        println!(
            "  curl -s -H 'X-Demo-Session: {}' -H 'Content-Type: application/json' \\\n    -d '{{\"name\":\"prometheus\",\"scopes\":[\"prometheus\"],\"expiry\":{{\"days\":30}}}}' http://{addr}/api/keys",
            alice.session
        );
    }
    println!("  curl -s -H 'Authorization: Bearer <key>' http://{addr}/metrics");
    let limits = app::Limits::default();
    let manager = state.manager.clone();
    let router = app::guard(app::router(state), addr, limits);
    app::serve(listener, router, limits, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Some(hooks) = &webhooks {
        // What is still queued when the process exits is lost: give it a moment, and say
        // how many were left.
        let unsent = hooks.drain(std::time::Duration::from_secs(10)).await;
        println!(
            "webhooks: {} delivered, {} given up, {} dropped (queue full), {unsent} unsent at exit",
            hooks.delivered(),
            hooks.failed(),
            hooks.dropped()
        );
    }
    // Keys' last uses are buffered: write them before leaving.
    manager.flush_last_use().await.map_err(|e| e.to_string())
}
