//! The whole life of a system API key on the embedded in-memory store:
//! generate → verify → list → revoke → verify fails.
//!
//! Run: `cargo run --example quickstart`

use api_keys::{
    Actor, Error, Expiry, GenerateRequest, KeyManager, Keyring, MasterKey, MemoryStore, OrgId,
    Policy, Scope, SystemClock, UserId,
};

// The crate itself needs no async runtime; a host drives its futures with its own (tokio here).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // In production the master key comes from your secret manager (16 bytes, AES-128).
    let keyring = Keyring::new(1, MasterKey::generate());
    let manager = KeyManager::builder(MemoryStore::new(), keyring)
        .prefix("sak")
        .clock(SystemClock)
        .policy(Policy::default())
        .build()?;

    // Your host application asserts who is logged in (from its own session).
    let alice = Actor::manager(OrgId::new("acme"), UserId::new("alice"));

    println!("1. Alice, a manager of org \"acme\", generates a key for Prometheus (30 days).");
    let (key, info) = manager
        .generate(
            &alice,
            GenerateRequest::new("prometheus scraper")
                .scope(Scope::Prometheus)
                .expiry(Expiry::Days(30)),
        )
        .await?;
    println!("   Key id:   {}", info.id);
    println!(
        "   Expires:  {}",
        info.expires_at
            .map_or("never".into(), |t| t.date().to_string())
    );
    println!("   Token (shown once — copy it into the scrape config now):");
    println!("   {}", key.expose_secret());

    println!(
        "\n2. Prometheus presents the token; the server verifies it for the prometheus scope."
    );
    let verified = manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await?;
    println!(
        "   Verified: key {} of org {}",
        verified.key_id(),
        verified.org()
    );

    println!("\n   The same token is refused for SCIM (wrong scope):");
    match manager.verify(key.expose_secret(), &Scope::Scim).await {
        Err(e) => println!("   → {e}"),
        Ok(_) => println!("   → unexpectedly accepted"),
    }

    println!("\n3. Alice lists the organization's keys (the secret is never shown again):");
    for k in manager.list(&alice).await? {
        println!(
            "   {:<20} {:<12} {:<10} scopes: {}",
            k.name,
            k.hint,
            format!("{:?}", k.status),
            k.scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    println!("\n4. Alice revokes the key.");
    let revoked = manager.revoke(&alice, &info.id).await?;
    println!("   Status is now {:?}.", revoked.status);

    println!("\n5. Prometheus tries again with the same token:");
    match manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
    {
        Err(e) => println!("   → refused: {e}"),
        Ok(_) => println!("   → unexpectedly accepted"),
    }
    Ok(())
}
