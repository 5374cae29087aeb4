//! Rows edited by someone with write access to the database but not the master key: every
//! field that decides acceptance fails closed (`Integrity`, audited), the unauthenticated ones
//! grant nothing.

use super::*;

use api_keys::{Credits, RateLimit};

/// A key with every optional field set, and a revoked one, in a fresh file.
struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    live: (String, KeyId),
    revoked: (String, KeyId),
}

async fn fixture(tag: &str) -> Fixture {
    let dir = TempDir::new(tag);
    let path = dir.path("keys.db");
    let m = manager(SqliteStore::open(&path).unwrap());
    let a = alice();
    let full = || {
        GenerateRequest::new("k")
            .scope(Scope::Prometheus)
            .rate_limit(RateLimit::new("burst", 10, Duration::from_secs(1)))
            .credits(Credits::new(100))
            .owner("team-a")
            .meta("env", "prod")
    };
    let (live_key, live) = m.generate(&a, full()).await.unwrap();
    let (revoked_key, revoked) = m.generate(&a, full()).await.unwrap();
    m.revoke(&a, &revoked.id).await.unwrap();
    Fixture {
        _dir: dir,
        path,
        live: (live_key.expose_secret().to_string(), live.id),
        revoked: (revoked_key.expose_secret().to_string(), revoked.id),
    }
}

fn exec(path: &Path, sql: &str, live: &KeyId, revoked: &KeyId) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        &sql.replace("{live}", &live.to_string())
            .replace("{revoked}", &revoked.to_string()),
    )
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Each edit of a field under the tag makes the edited key fail closed: `verify` (fresh
/// manager) is `Integrity` and audited, `get` is `Integrity` for whichever org the row names,
/// `list` leaves it out, `sweep` and `rewrap` count it as failed.
#[tokio::test]
async fn every_field_under_the_tag_fails_closed_when_edited() {
    let live_edits: &[(&str, &str)] = &[
        (
            "move to another org (column and JSON)",
            "UPDATE api_keys SET org = 'evil', record = json_set(record, '$.org', 'evil') WHERE id = '{live}'",
        ),
        (
            "extend expiry",
            "UPDATE api_keys SET expires_at = expires_at + 86400000, record = json_set(record, '$.expires_at', json_extract(record, '$.expires_at') + 86400000) WHERE id = '{live}'",
        ),
        (
            "never expire",
            "UPDATE api_keys SET expires_at = NULL, record = json_set(record, '$.expires_at', json('null')) WHERE id = '{live}'",
        ),
        (
            "add a scope",
            "UPDATE api_keys SET record = json_set(record, '$.scopes', json('[\"prometheus\",\"scim\"]')) WHERE id = '{live}'",
        ),
        (
            "drop every scope",
            "UPDATE api_keys SET record = json_set(record, '$.scopes', json('[]')) WHERE id = '{live}'",
        ),
        (
            "raise a limit",
            "UPDATE api_keys SET record = json_set(record, '$.rate_limits[0].limit', 1000000) WHERE id = '{live}'",
        ),
        (
            "remove the limits",
            "UPDATE api_keys SET record = json_set(record, '$.rate_limits', json('[]')) WHERE id = '{live}'",
        ),
        (
            "raise the credits",
            "UPDATE api_keys SET record = json_set(record, '$.credits.initial', 1000000) WHERE id = '{live}'",
        ),
        (
            "remove the credits",
            "UPDATE api_keys SET record = json_set(record, '$.credits', json('null')) WHERE id = '{live}'",
        ),
        (
            "change the owner",
            "UPDATE api_keys SET record = json_set(record, '$.owner', 'team-b') WHERE id = '{live}'",
        ),
        (
            "change the metadata",
            "UPDATE api_keys SET record = json_set(record, '$.meta.env', 'dev') WHERE id = '{live}'",
        ),
        (
            "change the creator",
            "UPDATE api_keys SET record = json_set(record, '$.created_by', 'bob') WHERE id = '{live}'",
        ),
        (
            "change the creation time",
            "UPDATE api_keys SET record = json_set(record, '$.created_at', json_extract(record, '$.created_at') + 1) WHERE id = '{live}'",
        ),
        (
            "another class",
            "UPDATE api_keys SET record = json_set(record, '$.class', 'sap') WHERE id = '{live}'",
        ),
        (
            "format 1",
            "UPDATE api_keys SET record = json_set(record, '$.format', 1) WHERE id = '{live}'",
        ),
        (
            "format 3",
            "UPDATE api_keys SET record = json_set(record, '$.format', 3) WHERE id = '{live}'",
        ),
        (
            "unknown key version",
            "UPDATE api_keys SET record = json_set(record, '$.sealed.key_version', 2) WHERE id = '{live}'",
        ),
        (
            "another IV",
            "UPDATE api_keys SET record = json_set(record, '$.sealed.iv', '00000000000000000000000000000000') WHERE id = '{live}'",
        ),
        (
            "another tag",
            "UPDATE api_keys SET record = json_set(record, '$.sealed.tag', '00000000000000000000000000000000') WHERE id = '{live}'",
        ),
        (
            "another details tag",
            "UPDATE api_keys SET record = json_set(record, '$.sealed.details_tag', '00000000000000000000000000000000') WHERE id = '{live}'",
        ),
        (
            "the revoked key's ciphertext",
            "UPDATE api_keys SET record = json_set(record, '$.sealed.ciphertext', (SELECT json_extract(record, '$.sealed.ciphertext') FROM api_keys WHERE id = '{revoked}')) WHERE id = '{live}'",
        ),
        (
            "the revoked key's seal",
            "UPDATE api_keys SET record = json_set(record, '$.sealed', (SELECT json_extract(record, '$.sealed') FROM api_keys WHERE id = '{revoked}')) WHERE id = '{live}'",
        ),
        (
            "the revoked key's record under the live id",
            "UPDATE api_keys SET record = (SELECT record FROM api_keys WHERE id = '{revoked}') WHERE id = '{live}'",
        ),
        (
            "the revoked key's record with the live id inside",
            "UPDATE api_keys SET record = json_set((SELECT record FROM api_keys WHERE id = '{revoked}'), '$.id', '{live}', '$.revision', json_extract(record, '$.revision')) WHERE id = '{live}'",
        ),
        (
            "a replacement link",
            "UPDATE api_keys SET record = json_set(record, '$.replaced_by', '{revoked}') WHERE id = '{live}'",
        ),
        (
            "revoked by a forged revoker",
            "UPDATE api_keys SET record = json_set(record, '$.revoked_at', json_extract(record, '$.created_at'), '$.revoked_by', 'mallory') WHERE id = '{live}'",
        ),
    ];
    for (what, sql) in live_edits {
        let f = fixture("tamper").await;
        exec(&f.path, sql, &f.live.1, &f.revoked.1);
        let events = Recorder::default();
        let m = KeyManager::builder(SqliteStore::open(&f.path).unwrap(), keyring())
            .audit(events.clone())
            .build()
            .unwrap();
        let got = m.verify(&f.live.0, &Scope::Prometheus).await;
        assert!(
            matches!(got, Err(Error::Integrity)),
            "{what}: verify {got:?}"
        );
        let got = m.verify(&f.live.0, &Scope::Scim).await;
        assert!(
            matches!(got, Err(Error::Integrity)),
            "{what}: verify scim {got:?}"
        );
        assert!(
            events
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.key_id == Some(f.live.1)
                    && matches!(
                        e.action,
                        AuditAction::VerificationFailed(api_keys::FailureClass::Integrity)
                    )),
            "{what}: not audited"
        );
        // `get` for the organization the row names now.
        let org: String = rusqlite::Connection::open(&f.path)
            .unwrap()
            .query_row(
                "SELECT org FROM api_keys WHERE id = ?1",
                [f.live.1.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        let owner = Actor::manager(OrgId::new(org.clone()), UserId::new("alice"));
        let got = m.get(&owner, &f.live.1).await;
        // Another class's record is as absent as another organization's.
        if *what == "another class" {
            assert!(matches!(got, Err(Error::NotFound)), "{what}: get {got:?}");
        } else {
            assert!(matches!(got, Err(Error::Integrity)), "{what}: get {got:?}");
        }
        let listed: Vec<KeyId> = m.list(&owner).await.unwrap().iter().map(|k| k.id).collect();
        assert!(!listed.contains(&f.live.1), "{what}: listed");
        let got = m.revoke(&owner, &f.live.1).await;
        assert!(
            matches!(got, Err(Error::Integrity | Error::NotFound)),
            "{what}: revoke {got:?}"
        );
        let swept = m.sweep().await.unwrap();
        if *what == "another class" {
            assert_eq!(swept.other_class, 1, "{what}: {swept:?}");
        } else {
            assert_eq!(swept.failed, 1, "{what}: {swept:?}");
        }
        let m2 = KeyManager::builder(
            SqliteStore::open(&f.path).unwrap(),
            Keyring::new(2, MasterKey::from_bytes(*b"sqlite-test-key2"))
                .with_previous(1, MasterKey::from_bytes(MASTER)),
        )
        .build()
        .unwrap();
        let report = m2.rewrap().await;
        if *what == "unknown key version" {
            // The only record under the rewrap's current version, and it fails with the
            // current key: a tampered row cannot be told from a wrong key, so nothing is
            // re-sealed (the README's rotation step 4).
            assert!(
                matches!(report, Err(Error::Integrity)),
                "{what}: {report:?}"
            );
        } else if *what == "another class" {
            assert_eq!(report.unwrap().other_class, 1, "{what}");
        } else {
            assert_eq!(report.unwrap().failed, 1, "{what}");
        }
        // The other key is untouched.
        assert!(matches!(
            m2.verify(&f.revoked.0, &Scope::Prometheus).await,
            Err(Error::Revoked)
        ));
        // A tampered row can still be deleted.
        if *what != "another class" {
            m.delete(&owner, &f.live.1)
                .await
                .unwrap_or_else(|e| panic!("{what}: delete {e:?}"));
        }
    }
}

/// A revoked key stays revoked whatever is edited: clearing the revocation fails its tag;
/// editing only the revocation details (revoker, reason) leaves it refused as revoked, and
/// management calls report them (`Integrity`).
#[tokio::test]
async fn a_revoked_key_stays_refused_when_its_row_is_edited() {
    let edits: &[(&str, &str, bool)] = &[
        (
            "clear revoked_at",
            "UPDATE api_keys SET record = json_set(record, '$.revoked_at', json('null')) WHERE id = '{revoked}'",
            true,
        ),
        (
            "clear every revocation field",
            "UPDATE api_keys SET record = json_set(record, '$.revoked_at', json('null'), '$.revoked_by', json('null'), '$.revocation', json('null')) WHERE id = '{revoked}'",
            true,
        ),
        (
            "the live key's seal on the revoked row",
            "UPDATE api_keys SET record = json_set(record, '$.sealed', (SELECT json_extract(record, '$.sealed') FROM api_keys WHERE id = '{live}')) WHERE id = '{revoked}'",
            true,
        ),
        (
            "another revoker",
            "UPDATE api_keys SET record = json_set(record, '$.revoked_by', 'bob') WHERE id = '{revoked}'",
            false,
        ),
        (
            "another reason",
            "UPDATE api_keys SET record = json_set(record, '$.revocation', json('{\"kind\":\"unused\"}')) WHERE id = '{revoked}'",
            false,
        ),
    ];
    for (what, sql, main_tag) in edits {
        let f = fixture("tamper-revoked").await;
        exec(&f.path, sql, &f.live.1, &f.revoked.1);
        let m = manager(SqliteStore::open(&f.path).unwrap());
        let got = m.verify(&f.revoked.0, &Scope::Prometheus).await;
        if *main_tag {
            assert!(
                matches!(got, Err(Error::Integrity)),
                "{what}: verify {got:?}"
            );
        } else {
            // `verify` reads no revocation details (SECURITY.md): still revoked.
            assert!(matches!(got, Err(Error::Revoked)), "{what}: verify {got:?}");
        }
        let got = m.get(&alice(), &f.revoked.1).await;
        assert!(matches!(got, Err(Error::Integrity)), "{what}: get {got:?}");
        let listed: Vec<KeyId> = m
            .list(&alice())
            .await
            .unwrap()
            .iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(listed, vec![f.live.1], "{what}");
        assert_eq!(m.sweep().await.unwrap().failed, 1, "{what}");
        m.verify(&f.live.0, &Scope::Prometheus).await.unwrap();
    }
}

/// `name`, `last_used_at`, `revision`, the notices and the `expires_at` index column are not
/// under the tag (SECURITY.md): editing them grants nothing and breaks nothing the key does.
#[tokio::test]
async fn unauthenticated_fields_grant_nothing() {
    let edits: &[(&str, &str)] = &[
        (
            "name",
            "UPDATE api_keys SET record = json_set(record, '$.name', 'renamed') WHERE id = '{live}'",
        ),
        (
            "last use",
            "UPDATE api_keys SET last_used_at = 4102444800 WHERE id = '{live}'",
        ),
        (
            "revision",
            "UPDATE api_keys SET revision = 7, record = json_set(record, '$.revision', 7) WHERE id = '{live}'",
        ),
        (
            "notices",
            "UPDATE api_keys SET record = json_set(record, '$.notices', json('{\"expiry_warned\":[86400],\"expired\":true,\"unused_warned\":true}')) WHERE id = '{live}'",
        ),
        (
            "expires_at index column",
            "UPDATE api_keys SET expires_at = NULL WHERE id = '{live}'",
        ),
        (
            "expires_at index column on the revoked key",
            "UPDATE api_keys SET expires_at = 1 WHERE id = '{revoked}'",
        ),
    ];
    for (what, sql) in edits {
        let f = fixture("tamper-harmless").await;
        let before = manager(SqliteStore::open(&f.path).unwrap())
            .get(&alice(), &f.live.1)
            .await
            .unwrap();
        exec(&f.path, sql, &f.live.1, &f.revoked.1);
        let m = manager(SqliteStore::open(&f.path).unwrap());
        let v = m
            .verify(&f.live.0, &Scope::Prometheus)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(v.expires_at(), before.expires_at, "{what}");
        assert_eq!(v.scopes(), &before.scopes[..], "{what}");
        assert!(matches!(
            m.verify(&f.live.0, &Scope::Scim).await,
            Err(Error::ScopeNotAllowed)
        ));
        assert!(matches!(
            m.verify(&f.revoked.0, &Scope::Prometheus).await,
            Err(Error::Revoked)
        ));
        let after = m.get(&alice(), &f.live.1).await.unwrap();
        assert_eq!(after.expires_at, before.expires_at, "{what}");
        assert_eq!(after.rate_limits, before.rate_limits, "{what}");
        assert_eq!(after.credits, before.credits, "{what}");
        let swept = m.sweep().await.unwrap();
        assert_eq!(swept.failed, 0, "{what}: {swept:?}");
        m.revoke(&alice(), &f.live.1)
            .await
            .unwrap_or_else(|e| panic!("{what}: revoke {e:?}"));
        assert!(matches!(
            m.verify(&f.live.0, &Scope::Prometheus).await,
            Err(Error::Revoked)
        ));
    }
}
/// Forged revocation details on a live key (a revoker and a reason, no revocation time):
/// `verify` reads no revocation details and keeps accepting the key (SECURITY.md), so every
/// way of revoking it must still work — a manager's `revoke`, a leak report (the token is
/// genuine: `TruePositive`, not a false positive that leaves the leaked key working) and the
/// departed-user offboarding — and the forged details are replaced, never shown as genuine.
#[tokio::test]
async fn forged_revocation_details_never_make_a_working_key_unrevocable() {
    const FORGE: &str = "UPDATE api_keys SET record = json_set(record, '$.revoked_by', 'mallory', '$.revocation', json('{\"kind\":\"manual\"}')) WHERE id = '{live}'";
    for how in ["revoke", "leak", "departed"] {
        let f = fixture("tamper-details").await;
        exec(&f.path, FORGE, &f.live.1, &f.revoked.1);
        let events = Recorder::default();
        let m = KeyManager::builder(SqliteStore::open(&f.path).unwrap(), keyring())
            .audit(events.clone())
            .build()
            .unwrap();
        m.verify(&f.live.0, &Scope::Prometheus).await.unwrap();
        assert!(matches!(
            m.get(&alice(), &f.live.1).await,
            Err(Error::Integrity)
        ));
        match how {
            "revoke" => {
                let info = m
                    .revoke(&alice(), &f.live.1)
                    .await
                    .unwrap_or_else(|e| panic!("revoke: {e:?}"));
                assert_eq!(info.status, KeyStatus::Revoked);
            }
            "leak" => assert_eq!(
                m.revoke_leaked(&f.live.0, "https://example.com/leak")
                    .await
                    .unwrap(),
                api_keys::LeakVerdict::TruePositive,
                "a genuine, working token was judged a false positive"
            ),
            _ => assert_eq!(
                m.revoke_created_by(&alice(), &UserId::new("alice"))
                    .await
                    .unwrap(),
                1,
                "the departed user's working key was left active"
            ),
        }
        assert!(
            events.integrity_failures() >= 1,
            "{how}: the forgery was not reported"
        );
        // Refused on this node and on a fresh one; the record is authentic again, and says
        // who really revoked it.
        assert!(matches!(
            m.verify(&f.live.0, &Scope::Prometheus).await,
            Err(Error::Revoked)
        ));
        let fresh = manager(SqliteStore::open(&f.path).unwrap());
        assert!(matches!(
            fresh.verify(&f.live.0, &Scope::Prometheus).await,
            Err(Error::Revoked)
        ));
        let info = fresh.get(&alice(), &f.live.1).await.unwrap();
        assert_eq!(info.status, KeyStatus::Revoked, "{how}");
        assert!(
            !matches!(info.revocation, Some(api_keys::RevocationReason::Manual)) || how == "revoke",
            "{how}: {:?}",
            info.revocation
        );
    }
}

/// Forged revocation details on a revoked key: it stays refused as revoked, and no
/// management call shows the forged revoker as genuine.
#[tokio::test]
async fn forged_revocation_details_of_a_revoked_key_are_never_shown() {
    let f = fixture("tamper-details-revoked").await;
    exec(
        &f.path,
        "UPDATE api_keys SET record = json_set(record, '$.revoked_by', 'mallory') WHERE id = '{revoked}'",
        &f.live.1,
        &f.revoked.1,
    );
    let m = manager(SqliteStore::open(&f.path).unwrap());
    assert!(matches!(
        m.verify(&f.revoked.0, &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
    let got = m.revoke(&alice(), &f.revoked.1).await;
    assert!(matches!(got, Err(Error::Integrity)), "revoke: {got:?}");
    let got = m
        .revoke_leaked(&f.revoked.0, "https://example.com/leak")
        .await;
    assert!(
        matches!(got, Ok(api_keys::LeakVerdict::TruePositive)),
        "leak: {got:?}"
    );
    assert!(matches!(
        m.get(&alice(), &f.revoked.1).await,
        Err(Error::Integrity)
    ));
}

/// `revision` is not under the tag, and a record at the largest revision can never be
/// changed again (`revoke` would need the next one): a row edited to it must not verify,
/// or it would be a working key that no call but `delete` can stop.
#[tokio::test]
async fn a_revision_at_its_limit_fails_closed() {
    let f = fixture("tamper-revision").await;
    exec(
        &f.path,
        "UPDATE api_keys SET revision = 9223372036854775807, record = json_set(record, '$.revision', 9223372036854775807) WHERE id = '{live}'",
        &f.live.1,
        &f.revoked.1,
    );
    let m = manager(SqliteStore::open(&f.path).unwrap());
    let got = m.verify(&f.live.0, &Scope::Prometheus).await;
    assert!(
        matches!(got, Err(Error::Integrity)),
        "a key that cannot be revoked verifies: {:?}",
        got.map(|v| *v.key_id())
    );
    assert!(matches!(
        m.revoke(&alice(), &f.live.1).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        m.get(&alice(), &f.live.1).await,
        Err(Error::Integrity)
    ));
    assert_eq!(
        m.revoke_leaked(&f.live.0, "https://example.com/leak")
            .await
            .unwrap(),
        api_keys::LeakVerdict::Unverified
    );
    m.delete(&alice(), &f.live.1).await.unwrap();
    // One below the limit still takes its revocation.
    let f = fixture("tamper-revision-below").await;
    exec(
        &f.path,
        "UPDATE api_keys SET revision = 9223372036854775806, record = json_set(record, '$.revision', 9223372036854775806) WHERE id = '{live}'",
        &f.live.1,
        &f.revoked.1,
    );
    let m = manager(SqliteStore::open(&f.path).unwrap());
    m.verify(&f.live.0, &Scope::Prometheus).await.unwrap();
    m.revoke(&alice(), &f.live.1).await.unwrap();
    assert!(matches!(
        m.verify(&f.live.0, &Scope::Prometheus).await,
        Err(Error::Revoked)
    ));
}
