//! What the axum layer costs a server (issue 15): the same trivial handler served without and
//! with [`ApiKeyLayer`] (a valid, warm key), measured with `wrk` (Debian's package) on
//! loopback, 2 threads, 32 connections, the two servers measured in turn.
//!
//! ```text
//! cargo run --release --features axum --example layer_throughput -- [SECONDS] [ROUNDS]
//! ```
//!
//! Each round runs `wrk -t2 -c32 -d<SECONDS>s` against the plain server, then against the
//! guarded one (with `Authorization: Bearer <key>`), and the median requests per second of the
//! rounds are compared, and so is the median of each round's own ratio (the pair of a round
//! runs back to back, so that ratio cancels what drifts between rounds). Without `wrk` on
//! `PATH` it prints the two addresses and the key for a manual run (a demo key of a throw-away
//! in-memory store, so printing it is harmless).

use std::net::SocketAddr;
use std::process::Command;

use api_keys::axum::ApiKeyLayer;
use api_keys::{
    Actor, GenerateRequest, KeyManager, Keyring, MasterKey, MemoryStore, OrgId, Scope, UserId,
};
use axum::Router;
use axum::routing::get;

async fn serve(router: Router) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("server stopped: {e}");
        }
    });
    Ok(addr)
}

/// Requests per second from `wrk`'s `Requests/sec:` line.
fn wrk(addr: SocketAddr, secs: u32, token: Option<&str>) -> Result<f64, String> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c32", &format!("-d{secs}s")]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("http://{addr}/"))
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        return Err(format!("wrk saw non-2xx answers:\n{text}"));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{text}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let secs: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);

    let manager = KeyManager::builder(MemoryStore::new(), Keyring::new(1, MasterKey::generate()))
        .build()
        .map_err(|e| e.to_string())?;
    let actor = Actor::manager(OrgId::new("acme"), UserId::new("bench"));
    let (key, _) = manager
        .generate(&actor, GenerateRequest::new("wrk").scope(Scope::Prometheus))
        .await
        .map_err(|e| e.to_string())?;
    let token = key.expose_secret().to_string();
    manager
        .verify(&token, &Scope::Prometheus)
        .await
        .map_err(|e| e.to_string())?;

    let plain = Router::new().route("/", get(|| async { "ok" }));
    let guarded = plain
        .clone()
        .route_layer(ApiKeyLayer::new(manager, Scope::Prometheus));
    let plain = serve(plain).await?;
    let guarded = serve(guarded).await?;

    if Command::new("wrk").arg("--version").output().is_err() {
        println!("wrk is not installed (apt-get install wrk); run it by hand:");
        println!("  wrk -t2 -c32 -d10s http://{plain}/");
        println!("  wrk -t2 -c32 -d10s -H 'Authorization: Bearer {token}' http://{guarded}/");
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        return Ok(());
    }
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        // wrk blocks: run it off the runtime's threads.
        let t = token.clone();
        let a = tokio::task::spawn_blocking(move || wrk(plain, secs, Some(&t)))
            .await
            .map_err(|e| e.to_string())??;
        let t = token.clone();
        let b = tokio::task::spawn_blocking(move || wrk(guarded, secs, Some(&t)))
            .await
            .map_err(|e| e.to_string())??;
        println!(
            "round {round}: without the layer {a:.0} req/s, with it {b:.0} req/s: {:.3}x",
            b / a
        );
        without.push(a);
        with.push(b);
        ratios.push(b / a);
    }
    let (a, b) = (median(without), median(with));
    println!(
        "median of {rounds}: without {a:.0} req/s, with {b:.0} req/s: {:.3}x (target >= 0.9x)",
        b / a
    );
    // Each round's pair ran back to back: its ratio cancels what drifts between rounds (the
    // other process on the same 2 cores, the VM's neighbours).
    println!(
        "median of the {rounds} rounds' own ratios: {:.3}x",
        median(ratios)
    );
    Ok(())
}
