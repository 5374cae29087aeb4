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

/// DEMO ONLY: the master key kept in a file next to the database (32 hex digits), created on
/// the first run. A file that is there but unreadable or malformed is an error, never replaced.
fn demo_master_key(path: &Path) -> Result<MasterKey> {
    match std::fs::read(path) {
        Ok(text) => match parse_hex_key(text.trim_ascii()) {
            Some(bytes) => Ok(MasterKey::from_bytes(bytes)),
            None => Err(format!("{} does not hold 32 hex digits", path.display()).into()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 16];
            getrandom::getrandom(&mut bytes).map_err(|e| e.to_string())?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(path, hex + "\n")?;
            Ok(MasterKey::from_bytes(bytes))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display()).into()),
    }
}

/// 16 bytes from exactly 32 hex digits, read byte by byte (the file may hold anything).
fn parse_hex_key(text: &[u8]) -> Option<[u8; 16]> {
    fn nibble(c: u8) -> Option<u8> {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    if text.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (b, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *b = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(bytes)
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
    // Last uses are buffered and written in batches; write them before the process ends, so
    // that the CLI's listing of this database shows the key's last use.
    manager.flush_last_use().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_hex_key;

    #[test]
    fn a_key_file_is_read_as_bytes() {
        assert_eq!(
            parse_hex_key(b"000102030405060708090a0b0c0d0eFF"),
            Some([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 255])
        );
        // 32 bytes that are not 32 hex digits: refused, never a panic (after one ASCII digit,
        // every two-byte letter straddles a pair).
        let shifted = format!("0{}0", "ü".repeat(15));
        assert_eq!(shifted.len(), 32);
        for bad in [
            shifted.as_bytes(),
            b"+a+b+c+d+e+f+0+1+2+3+4+5+6+7+8+9",
            &[0xff; 32],
            b"0011",
        ] {
            assert_eq!(parse_hex_key(bad), None, "{bad:?}");
        }
    }
}
