//! Issue 15's yardstick, shared by `yardstick` (criterion) and `ratios` (CPU time): the lean
//! SHA-256 lookup and the model of the cold path's unavoidable work.
#![allow(dead_code)]

use std::collections::HashMap;

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecryptMut, InnerIvInit, KeyInit, KeyIvInit};
use cmac::{Cmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Rng;

/// Tokens back to back in one buffer, each `len` bytes.
pub struct Packed {
    buf: String,
    len: usize,
}

impl Packed {
    pub fn new<'a>(tokens: impl Iterator<Item = &'a str>) -> Packed {
        let mut buf = String::new();
        let mut len = 0;
        for t in tokens {
            len = t.len();
            buf.push_str(t);
        }
        Packed { buf, len }
    }

    pub fn count(&self) -> usize {
        self.buf.len() / self.len
    }

    pub fn get(&self, i: usize) -> &str {
        &self.buf[i * self.len..(i + 1) * self.len]
    }
}

/// Hex digit value, 0xFF for anything else (checked once per token, not per digit).
const HEX: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

const LEAN_LEN: usize = 3 + 80;

/// `sk_` + 80 lowercase hex digits → (id, secret); no branch on the digits.
#[inline(always)]
fn lean_parse(token: &str) -> Option<([u8; 8], [u8; 32])> {
    let b = token.as_bytes();
    if b.len() != LEAN_LEN || &b[..3] != b"sk_" {
        return None;
    }
    let mut out = [0u8; 40];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(b[3..].chunks_exact(2)) {
        let (h, l) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
        bad |= h | l;
        *o = (h << 4) | (l & 0x0F);
    }
    if bad & 0xF0 != 0 {
        return None;
    }
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    id.copy_from_slice(&out[..8]);
    secret.copy_from_slice(&out[8..]);
    Some((id, secret))
}

fn lean_token(id: &[u8; 8], secret: &[u8; 32]) -> String {
    let mut s = String::from("sk_");
    s.push_str(&hex::encode(id));
    s.push_str(&hex::encode(secret));
    s
}

/// A record as the cold path reads it: 112 authenticated bytes (ids, times, org, the IV and
/// the 32-byte ciphertext among them) and a 16-byte tag.
struct ModelRecord {
    authenticated: [u8; 112],
    tag: [u8; 16],
}

const IV_AT: usize = 48;
const CT_AT: usize = 64;

pub struct Worlds {
    pub n: usize,
    pub lean: HashMap<[u8; 8], [u8; 32]>,
    pub lean_tokens: Packed,
    model: HashMap<u64, ModelRecord>,
    mac: Cmac<Aes128>,
    enc: Aes128,
}

pub fn worlds(n: usize) -> Worlds {
    let mut rng = Rng(0x1EA4_0000 + n as u64);
    let mac_key = [9u8; 16];
    let enc_key = [10u8; 16];
    let mac = <Cmac<Aes128> as KeyInit>::new(GenericArray::from_slice(&mac_key));
    let enc = Aes128::new(GenericArray::from_slice(&enc_key));
    let mut lean = HashMap::with_capacity(n);
    let mut model = HashMap::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        let id = rng.next().to_le_bytes();
        let secret = rng.secret();
        lean.insert(id, Sha256::digest(secret).into());
        let mut authenticated = [0u8; 112];
        for c in authenticated.chunks_exact_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes());
        }
        let iv: [u8; 16] = authenticated[IV_AT..IV_AT + 16].try_into().unwrap();
        let mut ct = secret;
        let mut e = cbc::Encryptor::<Aes128>::new(
            GenericArray::from_slice(&enc_key),
            GenericArray::from_slice(&iv),
        );
        for block in ct.chunks_exact_mut(16) {
            aes::cipher::BlockEncryptMut::encrypt_block_mut(
                &mut e,
                GenericArray::from_mut_slice(block),
            );
        }
        authenticated[CT_AT..CT_AT + 32].copy_from_slice(&ct);
        let mut m = mac.clone();
        m.update(&authenticated);
        let tag = m.finalize().into_bytes().into();
        model.insert(u64::from_le_bytes(id), ModelRecord { authenticated, tag });
        tokens.push(lean_token(&id, &secret));
    }
    rng.shuffle(&mut tokens);
    Worlds {
        n,
        lean,
        lean_tokens: Packed::new(tokens.iter().map(String::as_str)),
        model,
        mac,
        enc,
    }
}

#[inline(never)]
pub fn lean_verify(w: &Worlds, token: &str) -> bool {
    let Some((id, secret)) = lean_parse(token) else {
        return false;
    };
    let Some(stored) = w.lean.get(&id) else {
        return false;
    };
    let presented: [u8; 32] = Sha256::digest(secret).into();
    bool::from(presented.ct_eq(stored))
}

#[inline(never)]
pub fn model_verify(w: &Worlds, token: &str) -> bool {
    let Some((id, secret)) = lean_parse(token) else {
        return false;
    };
    let Some(rec) = w.model.get(&u64::from_le_bytes(id)) else {
        return false;
    };
    let mut m = w.mac.clone();
    m.update(&rec.authenticated);
    let tag: [u8; 16] = m.finalize().into_bytes().into();
    if !bool::from(tag.ct_eq(&rec.tag)) {
        return false;
    }
    let iv = GenericArray::from_slice(&rec.authenticated[IV_AT..IV_AT + 16]);
    let mut d = cbc::Decryptor::<Aes128>::inner_iv_init(w.enc.clone(), iv);
    let mut plain = [0u8; 32];
    plain.copy_from_slice(&rec.authenticated[CT_AT..CT_AT + 32]);
    for block in plain.chunks_exact_mut(16) {
        d.decrypt_block_mut(GenericArray::from_mut_slice(block));
    }
    bool::from(plain.ct_eq(&secret))
}
