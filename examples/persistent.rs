//! The quickstart on a SQLite file: keys survive a restart.
//!
//! ```text
//! cargo run --example persistent --features sqlite -- /tmp/keys.db   # 1st run: generates a key
//! cargo run --example persistent --features sqlite -- /tmp/keys.db   # 2nd run: lists, verifies, revokes
//! ```
//!
//! DEMO ONLY: so that the second run has a token to present, the first run writes the token
//! to `<path>.token` next to the database (and the master key to `<path>.master-key`). A real
//! host shows a token once and never stores it; its master key comes from a secret manager.

use std::path::{Path, PathBuf};

use api_keys::{
    Actor, Expiry, GenerateRequest, KeyManager, KeyStatus, Keyring, MasterKey, OrgId, Scope,
    SqliteStore, UserId,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn side_file(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// DEMO ONLY: the master key kept in a file next to the database (hex).
fn demo_master_key(path: &Path) -> Result<MasterKey> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = text.trim();
        let mut bytes = [0u8; 16];
        if text.len() != 32 {
            return Err(format!("{} does not hold 32 hex digits", path.display()).into());
        }
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("{} does not hold 32 hex digits", path.display()))?;
        }
        return Ok(MasterKey::from_bytes(bytes));
    }
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| e.to_string())?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, hex + "\n")?;
    Ok(MasterKey::from_bytes(bytes))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let Some(db) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: persistent <path/to/keys.db>");
        std::process::exit(2);
    };
    let token_file = side_file(&db, ".token");
    let key_file = side_file(&db, ".master-key");

    let store = SqliteStore::open(&db)?;
    let keyring = Keyring::new(1, demo_master_key(&key_file)?);
    let manager = KeyManager::builder(store, keyring).build()?;
    let alice = Actor::manager(OrgId::new("acme"), UserId::new("alice"));

    let saved = std::fs::read_to_string(&token_file).ok();
    match saved {
        None => {
            println!("First run on {}: generating a key.", db.display());
            let (key, info) = manager
                .generate(
                    &alice,
                    GenerateRequest::new("prometheus scraper")
                        .scope(Scope::Prometheus)
                        .expiry(Expiry::Days(30)),
                )
                .await?;
            println!("  Key id: {}", info.id);
            println!("  Token (shown once): {}", key.expose_secret());
            manager
                .verify(key.expose_secret(), &Scope::Prometheus)
                .await?;
            println!("  Verified.");
            std::fs::write(&token_file, format!("{}\n", key.expose_secret()))?;
            println!(
                "  DEMO ONLY: token saved to {} for the next run. Run again with the same path.",
                token_file.display()
            );
        }
        Some(token) => {
            let token = token.trim();
            println!(
                "Another run on {}: the keys survived the restart.",
                db.display()
            );
            for k in manager.list(&alice).await? {
                println!("  {:<20} {:<14} {:?}", k.name, k.hint, k.status);
            }
            match manager.verify(token, &Scope::Prometheus).await {
                Ok(v) => {
                    println!("  The saved token verifies: key {}.", v.key_id());
                    let info = manager.revoke(&alice, v.key_id()).await?;
                    assert_eq!(info.status, KeyStatus::Revoked);
                    println!("  Revoked it.");
                    match manager.verify(token, &Scope::Prometheus).await {
                        Err(e) => println!("  Presented again: refused ({e})."),
                        Ok(_) => return Err("a revoked key was accepted".into()),
                    }
                    println!("  Run a third time to see it listed as revoked and refused.");
                }
                Err(e) => println!("  The saved token is refused: {e}."),
            }
        }
    }
    Ok(())
}
