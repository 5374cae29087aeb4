//! Record integrity: transplanted fields, other ids, other master keys, misdirected rows, non-canonical records.

use super::*;

/// Transplants one field from another record and verifies through a fresh manager.
#[tokio::test]
async fn transplanting_any_deciding_field_fails_integrity() {
    type Transplant = fn(&mut api_keys::KeyRecord, &api_keys::KeyRecord);
    let cases: Vec<(&str, Transplant)> = vec![
        ("expires_at", |a, b| a.expires_at = b.expires_at),
        ("scopes", |a, b| a.scopes = b.scopes.clone()),
        ("org", |a, b| a.org = b.org.clone()),
        ("revoked_at (un-revoke)", |a, b| {
            a.revoked_at = b.revoked_at;
            a.revoked_by = b.revoked_by.clone();
        }),
        ("sealed", |a, b| a.sealed = b.sealed.clone()),
        ("created_at", |a, b| a.created_at = b.created_at),
        ("created_by", |a, b| a.created_by = b.created_by.clone()),
        ("ciphertext", |a, b| {
            a.sealed.ciphertext = b.sealed.ciphertext
        }),
        ("iv", |a, b| a.sealed.iv = b.sealed.iv),
        ("tag", |a, b| a.sealed.tag = b.sealed.tag),
    ];
    for (field, transplant) in cases {
        let store = MemoryStore::new();
        let s = setup_with(store.clone(), Policy::default());
        let (key, info) = s
            .manager
            .generate(
                &alice(),
                GenerateRequest::new("victim")
                    .scope(Scope::Prometheus)
                    .expiry(Expiry::Days(7)),
            )
            .await
            .unwrap();
        s.clock.advance(Duration::seconds(5));
        let (_, donor) = s
            .manager
            .generate(
                &mallory_other_org(),
                GenerateRequest::new("donor")
                    .scope(Scope::Scim)
                    .scope(Scope::Prometheus)
                    .expiry(Expiry::Days(365)),
            )
            .await
            .unwrap();
        // The victim is revoked, so "un-revoking" it by copying the donor's None is a tamper too.
        if field.starts_with("revoked") {
            s.manager.revoke(&alice(), &info.id).await.unwrap();
        }
        let donor = store.get(&donor.id).await.unwrap().unwrap();
        let mut victim = store.get(&info.id).await.unwrap().unwrap();
        let before = victim.clone();
        transplant(&mut victim, &donor);
        assert_ne!(victim, before, "{field}: the transplant changed nothing");
        store.overwrite_unchecked(victim);
        let fresh = setup_with(store.clone(), Policy::default());
        let r = fresh
            .manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await;
        assert!(
            matches!(r, Err(Error::Integrity)),
            "{field}: expected Integrity, got {r:?}"
        );
        // Management refuses to re-seal it (a moved org reads as another org's key), and it is
        // reported, not listed.
        let revoke = fresh.manager.revoke(&alice(), &info.id).await;
        assert!(
            matches!(revoke, Err(Error::Integrity | Error::NotFound)),
            "{field}: {revoke:?}"
        );
        let listed = fresh.manager.list(&alice()).await.unwrap();
        assert!(listed.iter().all(|i| i.id != info.id), "{field}");
    }
}

#[tokio::test]
async fn a_record_stored_under_another_id_fails_integrity() {
    // A row copied under a different id (its sealed fields name the original id).
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default());
    let (key_a, a) = s.manager.generate(&alice(), prom("a")).await.unwrap();
    let (_, b) = s.manager.generate(&alice(), prom("b")).await.unwrap();
    let mut rec_b = store.get(&b.id).await.unwrap().unwrap();
    rec_b.id = a.id;
    store.overwrite_unchecked(rec_b);
    let fresh = setup_with(store, Policy::default());
    assert!(matches!(
        fresh
            .manager
            .verify(key_a.expose_secret(), &Scope::Prometheus)
            .await,
        Err(Error::Integrity)
    ));
}

#[tokio::test]
async fn a_different_master_key_under_the_same_version_fails_integrity() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default());
    let (key, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let other = KeyManager::builder(store.clone(), Keyring::new(1, MasterKey::generate()))
        .build()
        .unwrap();
    assert!(matches!(
        other.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        other.get(&alice(), &info.id).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        other.revoke(&alice(), &info.id).await,
        Err(Error::Integrity)
    ));
    // An unknown version is the same failure.
    let v2 = KeyManager::builder(store, Keyring::new(2, MasterKey::from_bytes(MASTER)))
        .build()
        .unwrap();
    assert!(matches!(
        v2.verify(key.expose_secret(), &Scope::Prometheus).await,
        Err(Error::Integrity)
    ));
}

/// A store whose row for `alias` holds the authentic record of `target` (id field and all),
/// as a database row overwritten by copying another row would.
#[derive(Clone)]
struct Misdirecting {
    inner: MemoryStore,
    alias: KeyId,
    target: KeyId,
}

impl KeyStore for Misdirecting {
    async fn insert(&self, r: api_keys::KeyRecord) -> Result<(), api_keys::StoreError> {
        self.inner.insert(r).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<api_keys::KeyRecord>, api_keys::StoreError> {
        let id = if *id == self.alias { self.target } else { *id };
        self.inner.get(&id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.list(org).await
    }
    async fn update(&self, r: api_keys::KeyRecord, e: u64) -> Result<(), api_keys::StoreError> {
        self.inner.update(r, e).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, api_keys::StoreError> {
        self.inner.delete(id).await
    }
    async fn scan(
        &self,
        a: Option<&KeyId>,
        l: usize,
    ) -> Result<Vec<api_keys::KeyRecord>, api_keys::StoreError> {
        self.inner.scan(a, l).await
    }
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), api_keys::StoreError> {
        self.inner.touch(id, at).await
    }
}

#[tokio::test]
async fn a_row_holding_another_keys_record_is_never_acted_on() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default().allow_reveal(true));
    let (key_x, x) = s.manager.generate(&alice(), prom("x")).await.unwrap();
    let (_, y) = s.manager.generate(&alice(), prom("y")).await.unwrap();
    let bad = setup_with(
        Misdirecting {
            inner: store.clone(),
            alias: y.id,
            target: x.id,
        },
        Policy::default().allow_reveal(true),
    );
    let m = &bad.manager;
    assert!(matches!(
        m.get(&alice(), &y.id).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        m.revoke(&alice(), &y.id).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        m.reveal(&alice(), &y.id).await,
        Err(Error::Integrity)
    ));
    assert!(matches!(
        m.roll(&alice(), &y.id, Duration::ZERO).await,
        Err(Error::Integrity)
    ));
    // x was not touched by any of it.
    m.verify(key_x.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
    let rec_x = store.get(&x.id).await.unwrap().unwrap();
    assert_eq!(
        (rec_x.revision, rec_x.revoked_at, rec_x.expires_at),
        (1, None, x.expires_at)
    );
}

#[tokio::test]
async fn non_canonical_records_fail_integrity() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default());
    let (key, info) = s
        .manager
        .generate(
            &alice(),
            GenerateRequest::new("k")
                .scope(Scope::Scim)
                .scope(Scope::Prometheus),
        )
        .await
        .unwrap();
    let good = store.get(&info.id).await.unwrap().unwrap();
    let variants: Vec<api_keys::KeyRecord> = vec![
        api_keys::KeyRecord {
            scopes: vec![Scope::Prometheus, Scope::Scim],
            ..good.clone()
        },
        api_keys::KeyRecord {
            scopes: vec![Scope::Scim, Scope::Scim, Scope::Prometheus],
            ..good.clone()
        },
        api_keys::KeyRecord {
            created_at: good.created_at + Duration::milliseconds(1),
            ..good.clone()
        },
    ];
    for bad in variants {
        store.overwrite_unchecked(bad.clone());
        let fresh = setup_with(store.clone(), Policy::default());
        let r = fresh
            .manager
            .verify(key.expose_secret(), &Scope::Prometheus)
            .await;
        assert!(matches!(r, Err(Error::Integrity)), "{bad:?}: {r:?}");
    }
    store.overwrite_unchecked(good);
    let fresh = setup_with(store, Policy::default());
    fresh
        .manager
        .verify(key.expose_secret(), &Scope::Prometheus)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_revision_at_the_i64_limit_is_refused_not_wrapped() {
    let store = MemoryStore::new();
    let s = setup_with(store.clone(), Policy::default());
    let (_, info) = s.manager.generate(&alice(), prom("k")).await.unwrap();
    let mut rec = store.get(&info.id).await.unwrap().unwrap();
    rec.revision = i64::MAX as u64;
    store.overwrite_unchecked(rec);
    assert!(matches!(
        s.manager.revoke(&alice(), &info.id).await,
        Err(Error::Integrity)
    ));
    let mut rec = store.get(&info.id).await.unwrap().unwrap();
    rec.revision = u64::MAX;
    store.overwrite_unchecked(rec);
    assert!(matches!(
        s.manager.revoke(&alice(), &info.id).await,
        Err(Error::Integrity)
    ));
}
