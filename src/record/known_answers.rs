//! Vectors derived independently (Python `cryptography`, see tests/vectors/generate.py):
//! a change that would break stored records or issued tokens fails here.
use super::*;
use crate::MasterKey;
use crate::crypto::{LABEL_ENC, LABEL_MAC, kdf};
use crate::token::{UntrustedToken, format_token};
use std::time::Duration as StdDuration;

fn v() -> serde_json::Value {
    serde_json::from_str(include_str!("../../tests/vectors/record_v2.json")).unwrap()
}

fn hex16(s: &serde_json::Value) -> [u8; 16] {
    hex::decode(s.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn hex32(s: &serde_json::Value) -> [u8; 32] {
    hex::decode(s.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn ts(s: &serde_json::Value) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(s.as_i64().unwrap()).unwrap()
}

fn open(rec: &KeyRecord, keyring: &Keyring, class: &str, id: KeyId) -> Result<[u8; 32], Error> {
    let mut out = Zeroizing::new([0u8; 32]);
    rec.open_into(keyring, class, id, &mut out)?;
    Ok(*out)
}

fn record(v: &serde_json::Value) -> (Keyring, KeyRecord, [u8; 32]) {
    let master = hex16(&v["master_key"]);
    let keyring = Keyring::new(
        v["key_version"].as_u64().unwrap() as u32,
        MasterKey::from_bytes(master),
    );
    let secret = hex32(&v["secret"]);
    let draft = Draft {
        class: v["class"].as_str().unwrap().into(),
        id: KeyId::parse(v["id"].as_str().unwrap()).unwrap(),
        org: OrgId::new(v["org"].as_str().unwrap()),
        name: v["name"].as_str().unwrap().into(),
        scopes: vec![Scope::custom("billing.read").unwrap(), Scope::Prometheus],
        created_at: ts(&v["created_at"]),
        created_by: UserId::new(v["created_by"].as_str().unwrap()),
        expires_at: Some(ts(&v["expires_at"])),
        replaces: Some(KeyId::parse(v["replaces"].as_str().unwrap()).unwrap()),
        owner: Some(v["owner"].as_str().unwrap().into()),
        meta: [("region", "eu"), ("plan", "pro")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        rate_limits: vec![
            RateLimit::new("burst", 10, StdDuration::from_secs(1)),
            RateLimit::new("daily", 10_000, StdDuration::from_secs(86_400)).per_org(),
        ],
        credits: Some(Credits::new(500).refill(Refill::monthly(1, 500))),
    };
    let mut rec = KeyRecord::seal_new(&keyring, draft, &secret).unwrap();
    rec.revoked_at = Some(ts(&v["revoked_at"]));
    rec.revocation = Some(RevocationReason::Leaked {
        source: v["leak_source"].as_str().unwrap().into(),
    });
    rec.reseal_with_iv(&keyring, &secret, hex16(&v["iv"]));
    (keyring, rec, secret)
}

#[test]
fn subkeys() {
    let v = v();
    let master = hex16(&v["master_key"]);
    assert_eq!(*kdf(&master, LABEL_ENC, b"api-keys/v1"), hex16(&v["k_enc"]));
    assert_eq!(*kdf(&master, LABEL_MAC, b"api-keys/v1"), hex16(&v["k_mac"]));
}

#[test]
fn canonical_encoding_ciphertext_and_tag() {
    let v = v();
    let (keyring, rec, secret) = record(&v);
    let mut canon = Vec::new();
    rec.canonical(&mut |b: &[u8]| canon.extend_from_slice(b));
    assert_eq!(hex::encode(&canon), v["canonical"].as_str().unwrap());
    let mut details = Vec::new();
    rec.canonical_details(&mut |b: &[u8]| details.extend_from_slice(b));
    assert_eq!(hex::encode(&details), v["details"].as_str().unwrap());
    assert_eq!(rec.sealed.details_tag, hex16(&v["details_tag"]));
    assert_eq!(rec.sealed.ciphertext, hex32(&v["ciphertext"]));
    assert_eq!(rec.sealed.tag, hex16(&v["tag"]));
    assert_eq!(open(&rec, &keyring, "sak", rec.id).unwrap(), secret);
}

#[test]
fn the_state_never_changes_the_length_verification_authenticates() {
    let v = v();
    let (keyring, rec, secret) = record(&v);
    let len = |r: &KeyRecord| {
        let mut n = 0;
        r.canonical(&mut |b: &[u8]| n += b.len());
        n
    };
    let mut active = rec.clone();
    active.revoked_at = None;
    active.revocation = None;
    active.replaced_by = None;
    active.reseal(&keyring, &secret).unwrap();
    let mut revoked = active.clone();
    revoked.revoked_at = Some(ts(&v["revoked_at"]));
    revoked.revoked_by = Some(UserId::new("a-manager-with-a-long-name"));
    revoked.revocation = Some(RevocationReason::Leaked {
        source: "https://example.com/a/long/path/where/it/was/found".into(),
    });
    revoked.reseal(&keyring, &secret).unwrap();
    let mut rolled = active.clone();
    rolled.replaced_by = Some(KeyId(99));
    rolled.expires_at = Some(ts(&v["revoked_at"]));
    rolled.reseal(&keyring, &secret).unwrap();
    let mut never = active.clone();
    never.expires_at = None;
    never.reseal(&keyring, &secret).unwrap();
    for other in [&revoked, &rolled, &never] {
        assert_eq!(len(other), len(&active));
    }
}

#[test]
fn revocation_details_are_authenticated_by_their_own_tag() {
    let v = v();
    let (keyring, rec, _) = record(&v);
    let mut out = Zeroizing::new([0u8; 32]);
    let changes: [fn(&mut KeyRecord); 3] = [
        |r| r.revoked_by = Some(UserId::new("mallory")),
        |r| r.revocation = Some(RevocationReason::Unused),
        |r| r.sealed.details_tag[3] ^= 1,
    ];
    for change in changes {
        let mut bad = rec.clone();
        change(&mut bad);
        // Management calls refuse the record...
        assert!(matches!(
            bad.open_into(&keyring, "sak", rec.id, &mut out),
            Err(Error::Integrity)
        ));
        assert!(bad.authenticate(&keyring, "sak").is_err());
    }
    // ...while verification, which reads none of the details, checks the main tag, which
    // covers the details tag: only a changed details tag fails there.
    let mut renamed = rec.clone();
    renamed.revoked_by = Some(UserId::new("mallory"));
    assert!(
        renamed
            .open_to_verify(&keyring, "sak", rec.id, &mut out)
            .is_ok()
    );
    let mut forged = rec.clone();
    forged.sealed.details_tag[0] ^= 1;
    assert!(matches!(
        forged.open_to_verify(&keyring, "sak", rec.id, &mut out),
        Err(Error::Integrity)
    ));
}

/// The format number fixes the layout: a record of any other format fails closed, even one
/// whose tags were computed over this layout (a record written by another version of the
/// crate is never read as this format).
#[test]
fn an_unknown_format_fails_closed_even_with_matching_tags() {
    let v = v();
    let (keyring, rec, _) = record(&v);
    let keys = keyring.get(rec.sealed.key_version).unwrap();
    let mut out = Zeroizing::new([0u8; 32]);
    for format in [RECORD_FORMAT - 1, RECORD_FORMAT + 1] {
        let mut other = rec.clone();
        other.format = format;
        other.sealed.details_tag = other.compute_details_tag(keys);
        other.sealed.tag = other.compute_tag(keys);
        assert!(matches!(
            open(&other, &keyring, "sak", rec.id),
            Err(Error::Integrity)
        ));
        assert!(matches!(
            other.open_to_verify(&keyring, "sak", rec.id, &mut out),
            Err(Error::Integrity)
        ));
    }
}

#[test]
fn another_class_fails_closed() {
    let v = v();
    let (keyring, rec, _) = record(&v);
    // The same record opened by a manager of another prefix: refused.
    assert!(matches!(
        open(&rec, &keyring, "sap", rec.id),
        Err(Error::Integrity)
    ));
    // Relabelled as the other class: the tag no longer matches.
    let mut moved = rec.clone();
    moved.class = "sap".into();
    assert!(matches!(
        open(&moved, &keyring, "sap", rec.id),
        Err(Error::Integrity)
    ));
    let mut out = Zeroizing::new([0u8; 32]);
    assert!(matches!(
        moved.open_to_verify(&keyring, "sap", rec.id, &mut out),
        Err(Error::Integrity)
    ));
}

#[test]
fn verification_treats_an_authentic_record_of_another_class_as_absent() {
    let v = v();
    let (keyring, rec, _) = record(&v);
    // Authentic, but another manager's key: `InvalidKey` (as an unknown id), never decrypted.
    let mut out = Zeroizing::new([0u8; 32]);
    assert!(matches!(
        rec.open_to_verify(&keyring, "sap", rec.id, &mut out),
        Err(Error::InvalidKey)
    ));
    assert_eq!(*out, [0u8; 32]);
    // A tag that fails stays an integrity failure, whatever the class.
    let mut tampered = rec.clone();
    tampered.sealed.tag[0] ^= 1;
    for class in ["sak", "sap"] {
        assert!(matches!(
            tampered.open_to_verify(&keyring, class, rec.id, &mut out),
            Err(Error::Integrity)
        ));
    }
    let wrong_master = Keyring::new(rec.sealed.key_version, MasterKey::from_bytes([0; 16]));
    assert!(matches!(
        rec.open_to_verify(&wrong_master, "sap", rec.id, &mut out),
        Err(Error::Integrity)
    ));
    // A record served under another id stays an integrity failure too.
    assert!(matches!(
        rec.open_to_verify(&keyring, "sap", KeyId(rec.id.0 ^ 1), &mut out),
        Err(Error::Integrity)
    ));
    assert_eq!(*out, [0u8; 32]);
}

#[test]
fn every_field_under_the_tag_is_authenticated() {
    let v = v();
    let (keyring, rec, _) = record(&v);
    type Tamper = Box<dyn Fn(&mut KeyRecord)>;
    let tampered: Vec<(&str, Tamper)> = vec![
        ("owner", Box::new(|r| r.owner = Some("team-8".into()))),
        (
            "meta",
            Box::new(|r| {
                r.meta.insert("plan".into(), "enterprise".into());
            }),
        ),
        (
            "rate limit",
            Box::new(|r| {
                r.rate_limits[0] = RateLimit::new("burst", 1_000, StdDuration::from_secs(1));
            }),
        ),
        (
            "limit scope",
            Box::new(|r| r.rate_limits[0] = r.rate_limits[0].clone().per_org()),
        ),
        (
            "credits",
            Box::new(|r| r.credits = Some(Credits::new(1_000_000))),
        ),
        (
            "refill",
            Box::new(|r| r.credits = Some(Credits::new(500).refill(Refill::daily(500)))),
        ),
        (
            "revocation",
            Box::new(|r| r.revocation = Some(RevocationReason::Manual)),
        ),
        ("replaces", Box::new(|r| r.replaces = None)),
        ("replaced_by", Box::new(|r| r.replaced_by = Some(KeyId(5)))),
        ("revoked_at", Box::new(|r| r.revoked_at = None)),
    ];
    for (what, change) in tampered {
        let mut bad = rec.clone();
        change(&mut bad);
        assert!(
            matches!(open(&bad, &keyring, "sak", rec.id), Err(Error::Integrity)),
            "{what} is not under the tag"
        );
    }
    // Not under the tag: usage state and display fields.
    let mut fine = rec.clone();
    fine.name = "renamed".into();
    fine.notices.expired = true;
    fine.notices.expiry_warned.push(86_400);
    fine.revision = 9;
    assert!(open(&fine, &keyring, "sak", rec.id).is_ok());
}

#[test]
fn format_1_records_are_refused() {
    // A pre-release (format 1) record, exactly as it was stored: it decodes, and fails
    // closed under every manager (it names no key class).
    let v1: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/vectors/record_v1.json")).unwrap();
    let json = serde_json::json!({
        "format": 1, "id": v1["id"], "org": "acme", "name": "prometheus",
        "scopes": ["prometheus", "billing.read"], "created_at": 1_700_000_000,
        "created_by": "alice", "expires_at": 1_707_776_000, "revoked_at": null,
        "revoked_by": null, "last_used_at": null, "revision": 1,
        "sealed": {"key_version": 7, "iv": v1["iv"], "ciphertext": v1["ciphertext"], "tag": v1["tag"]}
    });
    let rec: KeyRecord = serde_json::from_value(json).unwrap();
    let keyring = Keyring::new(7, MasterKey::from_bytes(hex16(&v1["master_key"])));
    assert_eq!(rec.format, 1);
    for class in ["sak", ""] {
        assert!(matches!(
            open(&rec, &keyring, class, rec.id),
            Err(Error::Integrity)
        ));
    }
}

#[test]
fn undecodable_placeholders_never_open() {
    let keyring = Keyring::new(0, MasterKey::from_bytes([0; 16]));
    let rec = KeyRecord::undecodable(KeyId(42), OrgId::new("acme"));
    assert!(rec.is_undecodable());
    assert!(matches!(
        open(&rec, &keyring, "", KeyId(42)),
        Err(Error::Integrity)
    ));
    assert!(matches!(
        open(&rec, &keyring, "sak", KeyId(42)),
        Err(Error::Integrity)
    ));
}

#[test]
fn token() {
    let v = v();
    let (_, rec, secret) = record(&v);
    let token = format_token("sak", rec.id, &secret);
    assert_eq!(token.as_str(), v["token"].as_str().unwrap());
    let parsed = UntrustedToken::parse("sak", &token).unwrap();
    assert_eq!(parsed.id(), rec.id);
}

#[test]
fn serialized_form_is_stable() {
    let v = v();
    let (_, rec, _) = record(&v);
    let json = serde_json::to_value(&rec).unwrap();
    let expected = serde_json::json!({
        "format": 2,
        "class": "sak",
        "id": v["id"],
        "org": "acme",
        "name": "prometheus",
        "scopes": ["prometheus", "billing.read"],
        "created_at": 1_700_000_000,
        "created_by": "alice",
        "expires_at": 1_707_776_000,
        "revoked_at": 1_700_086_400,
        "revoked_by": null,
        "revocation": {"kind": "leaked", "source": "https://example.com/paste/1"},
        "replaces": v["replaces"],
        "replaced_by": null,
        "owner": "team-7",
        "meta": {"plan": "pro", "region": "eu"},
        "rate_limits": [
            {"name": "burst", "limit": 10, "window_ms": 1000, "scope": "key"},
            {"name": "daily", "limit": 10000, "window_ms": 86_400_000, "scope": "org"}
        ],
        "credits": {"initial": 500, "refill": {"every": "monthly", "day": 1, "amount": 500}},
        "notices": {"expiry_warned": [], "expired": false, "unused_warned": false},
        "last_used_at": null,
        "revision": 1,
        "sealed": {
            "key_version": 7,
            "iv": v["iv"],
            "ciphertext": v["ciphertext"],
            "details_tag": v["details_tag"],
            "tag": v["tag"],
        }
    });
    assert_eq!(json, expected);
    let back: KeyRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back, rec);
}

proptest::proptest! {
    #[test]
    fn seal_then_open_round_trips(
        id: u64,
        secret: [u8; 32],
        master: [u8; 16],
        version: u32,
        org in "[a-zA-Z0-9 é-]{1,40}",
        created in 0i64..4_000_000_000,
        life in proptest::option::of(1i64..400 * 86_400),
        custom in proptest::option::of("[a-z][a-z0-9._:-]{0,31}"),
        owner in proptest::option::of("[a-zA-Z0-9 é-]{1,20}"),
        limit in 1u64..1_000_000,
    ) {
        let keyring = Keyring::new(version, MasterKey::from_bytes(master));
        let mut scopes = vec![Scope::Scim];
        if let Some(c) = custom.and_then(|c| Scope::custom(c).ok()) {
            scopes.push(c);
        }
        let created_at = OffsetDateTime::from_unix_timestamp(created).unwrap();
        let draft = Draft {
            id: KeyId(id),
            org: OrgId::new(&org),
            name: "n".into(),
            scopes,
            created_at,
            created_by: UserId::new("u"),
            expires_at: life.map(|l| created_at + time::Duration::seconds(l)),
            owner,
            rate_limits: vec![RateLimit::new("l", limit, StdDuration::from_secs(60))],
            ..Draft::new("sak")
        };
        let rec = KeyRecord::seal_new(&keyring, draft, &secret).unwrap();
        proptest::prop_assert_eq!(open(&rec, &keyring, "sak", KeyId(id)).unwrap(), secret);
        // The JSON form round-trips to an identical, still-openable record.
        let back: KeyRecord = serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        proptest::prop_assert_eq!(&back, &rec);
        proptest::prop_assert_eq!(open(&back, &keyring, "sak", KeyId(id)).unwrap(), secret);
        // Any other id, or a flipped tag bit, fails.
        proptest::prop_assert!(open(&rec, &keyring, "sak", KeyId(id ^ 1)).is_err());
        let mut bad = rec.clone();
        bad.sealed.tag[(id % 16) as usize] ^= 1;
        proptest::prop_assert!(matches!(open(&bad, &keyring, "sak", KeyId(id)), Err(Error::Integrity)));
    }
}
