//! Properties of the verification hot path that the benchmarks rely on: what never reaches
//! the store, and what a failed verification leaves behind.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use api_keys::time::OffsetDateTime;
use api_keys::{
    Actor, Error, GenerateRequest, KeyId, KeyManager, KeyRecord, KeyStore, Keyring, MasterKey,
    MemoryStore, OrgId, Scope, StoreError, UserId,
};

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Counts `get` calls, forwards everything to a `MemoryStore`.
#[derive(Clone, Default)]
struct Counting {
    inner: MemoryStore,
    gets: Arc<AtomicUsize>,
}

impl KeyStore for Counting {
    fn insert(&self, r: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.insert(r)
    }
    fn get(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(id)
    }
    fn list(&self, org: &OrgId) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        self.inner.list(org)
    }
    fn update(
        &self,
        r: KeyRecord,
        rev: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.update(r, rev)
    }
    fn delete(&self, id: &KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner.delete(id)
    }
    fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        self.inner.scan(after, limit)
    }
    fn touch(
        &self,
        id: &KeyId,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.touch(id, at)
    }
}

fn setup() -> (KeyManager<Counting>, Arc<AtomicUsize>, String, Actor) {
    let store = Counting::default();
    let gets = store.gets.clone();
    let m = KeyManager::builder(store, Keyring::new(1, MasterKey::from_bytes([5; 16])))
        .build()
        .unwrap();
    let admin = Actor::manager(OrgId::new("acme"), UserId::new("alice"));
    let (key, _) =
        block_on(m.generate(&admin, GenerateRequest::new("k").scope(Scope::Scim))).unwrap();
    (m, gets, key.expose_secret().to_string(), admin)
}

/// The CRC32 the format uses, spelled as its 6 base62 characters.
fn checksum(s: &str) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut v = u64::from(crc32(s.as_bytes()));
    let mut out = [b'0'; 6];
    for c in out.iter_mut().rev() {
        *c = A[(v % 62) as usize];
        v /= 62;
    }
    String::from_utf8(out.to_vec()).unwrap()
}

fn crc32(b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &x in b {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn rejected_formats_never_reach_the_store() {
    let (m, gets, token, _) = setup();
    // The key is cached: a token of its id is looked up while its secret is decoded, and a
    // secret that does not decode must still be Malformed.
    assert!(block_on(m.verify(&token, &Scope::Scim)).is_ok());
    let before = gets.load(Ordering::SeqCst);
    let body = &token[..token.len() - 6];
    let prefix_len = token.find('_').unwrap() + 1;
    let id_overflow = format!(
        "{}zzzzzzzzzzz{}",
        &body[..prefix_len],
        &body[prefix_len + 11..]
    );
    let id_overflow = format!("{id_overflow}{}", checksum(&id_overflow));
    // Typos, garbage, other prefixes, a non-canonical word with a valid checksum.
    let mut broken_check = token.clone();
    broken_check.pop();
    broken_check.push(if token.ends_with('0') { '1' } else { '0' });
    let mut typo = token.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let overflow = format!("{}zzzzzzzzzzz", &body[..body.len() - 11]);
    let overflow = format!("{overflow}{}", checksum(&overflow));
    let cases = [
        broken_check,
        String::from_utf8(typo).unwrap(),
        overflow,
        id_overflow,
        format!("pak{}", &token[3..]),
        token.replace('_', "-"),
        format!("{token}x"),
        String::new(),
        "sak_".into(),
        "é".repeat(40),
    ];
    for t in &cases {
        assert!(
            matches!(block_on(m.verify(t, &Scope::Scim)), Err(Error::Malformed)),
            "{t:?}"
        );
    }
    assert_eq!(
        gets.load(Ordering::SeqCst),
        before,
        "a malformed token reached the store"
    );
    assert!(block_on(m.verify(&token, &Scope::Scim)).is_ok());
    // The checksum helper above matches the format (sanity check of the test itself).
    assert_eq!(checksum(body), token[token.len() - 6..]);
}

#[test]
fn wrong_secret_with_valid_checksum_is_invalid_and_leaves_the_key_working() {
    let (m, _, token, admin) = setup();
    // Same id, another secret (change one secret character), fresh valid checksum.
    let body = &token[..token.len() - 6];
    let mut b = body.as_bytes().to_vec();
    let last = b.len() - 1;
    b[last] = if b[last] == b'0' { b'1' } else { b'0' };
    let body = String::from_utf8(b).unwrap();
    let wrong = format!("{body}{}", checksum(&body));
    for _ in 0..3 {
        assert!(matches!(
            block_on(m.verify(&wrong, &Scope::Scim)),
            Err(Error::InvalidKey)
        ));
        assert!(block_on(m.verify(&token, &Scope::Scim)).is_ok());
    }
    // After revocation a wrong secret is still InvalidKey (the state is not revealed),
    // the right one is Revoked.
    let id = block_on(m.verify(&token, &Scope::Scim))
        .unwrap()
        .key_id()
        .to_owned();
    block_on(m.revoke(&admin, &id)).unwrap();
    assert!(matches!(
        block_on(m.verify(&wrong, &Scope::Scim)),
        Err(Error::InvalidKey)
    ));
    assert!(matches!(
        block_on(m.verify(&token, &Scope::Scim)),
        Err(Error::Revoked)
    ));
}

#[test]
fn warm_hits_do_not_read_the_store_and_scopes_are_checked() {
    let (m, gets, token, _) = setup();
    assert!(block_on(m.verify(&token, &Scope::Scim)).is_ok());
    let before = gets.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert!(block_on(m.verify(&token, &Scope::Scim)).is_ok());
        assert!(matches!(
            block_on(m.verify(&token, &Scope::Prometheus)),
            Err(Error::ScopeNotAllowed)
        ));
        assert!(matches!(
            block_on(m.verify(&token, &Scope::custom("billing").unwrap())),
            Err(Error::ScopeNotAllowed)
        ));
    }
    assert_eq!(gets.load(Ordering::SeqCst), before);
}

#[test]
fn custom_and_multiple_scopes_are_granted_exactly() {
    let (m, _, _, admin) = setup();
    let billing = Scope::custom("billing:read").unwrap();
    let (key, _) = block_on(
        m.generate(
            &admin,
            GenerateRequest::new("multi")
                .scope(billing.clone())
                .scope(Scope::Prometheus),
        ),
    )
    .unwrap();
    let t = key.expose_secret();
    for _ in 0..2 {
        // Cold the first time, cached the second.
        assert!(block_on(m.verify(t, &billing)).is_ok());
        assert!(block_on(m.verify(t, &Scope::Prometheus)).is_ok());
        assert!(matches!(
            block_on(m.verify(t, &Scope::Scim)),
            Err(Error::ScopeNotAllowed)
        ));
        assert!(matches!(
            block_on(m.verify(t, &Scope::custom("billing:write").unwrap())),
            Err(Error::ScopeNotAllowed)
        ));
    }
}
