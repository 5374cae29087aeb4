//! Master keys, the keyring, the subkey KDF and the AES primitives as this crate calls them.
//!
//! - KDF: NIST SP 800-108 counter mode with AES-CMAC as the PRF, one 128-bit block per
//!   subkey: `K = CMAC(master, [1]_32 || label || 0x00 || context || [128]_32)`, with the labels
//!   `api-keys/k_enc` and `api-keys/k_mac` and the context `api-keys/v1`.
//! - Encryption: AES-128-CBC under `k_enc`, random 16-byte IV, no padding (the secret is two
//!   blocks).
//! - Authentication: AES-CMAC under `k_mac` (see [`crate::KeyRecord`] for what it covers).

use std::fmt;

use aes::Aes128;
use aes::cipher::{
    BlockDecrypt, BlockEncryptMut, InnerIvInit, KeyInit, generic_array::GenericArray,
};
use cmac::{Cmac, Mac};
use zeroize::{Zeroize, Zeroizing};

use crate::Error;

/// An AES block.
pub(crate) type Block = GenericArray<u8, aes::cipher::consts::U16>;

/// A 16-byte (AES-128) master key. Zeroized on drop; its bytes are never shown by `Debug` and
/// it has no `Display`, `PartialEq` or `Serialize`.
pub struct MasterKey(Zeroizing<[u8; 16]>);

impl MasterKey {
    /// Wraps 16 key bytes (e.g. from the host's secret manager).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let mut bytes = bytes;
        let key = MasterKey(Zeroizing::new(bytes));
        bytes.zeroize();
        key
    }

    /// A new random master key from the operating system.
    ///
    /// # Panics
    /// If the operating system's random number generator fails; see
    /// [`MasterKey::try_generate`].
    pub fn generate() -> Self {
        match Self::try_generate() {
            Ok(k) => k,
            Err(_) => panic!("operating system randomness unavailable"),
        }
    }

    /// A new random master key from the operating system.
    ///
    /// # Errors
    /// [`Error::Random`] if the operating system's generator fails.
    pub fn try_generate() -> Result<Self, Error> {
        let mut k = Zeroizing::new([0u8; 16]);
        fill_random(&mut *k)?;
        Ok(MasterKey(k))
    }

    pub(crate) fn bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

/// Fills `buf` from the operating system's generator.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::getrandom(buf).map_err(|_| Error::Random)
}

const KDF_CONTEXT: &[u8] = b"api-keys/v1";
pub(crate) const LABEL_ENC: &[u8] = b"api-keys/k_enc";
pub(crate) const LABEL_MAC: &[u8] = b"api-keys/k_mac";

/// NIST SP 800-108 counter-mode KDF with AES-CMAC, producing one 128-bit key.
pub(crate) fn kdf(master: &[u8; 16], label: &[u8], context: &[u8]) -> Zeroizing<[u8; 16]> {
    let mut prf = <Cmac<Aes128> as KeyInit>::new(GenericArray::from_slice(master));
    prf.update(&1u32.to_be_bytes());
    prf.update(label);
    prf.update(&[0u8]);
    prf.update(context);
    prf.update(&128u32.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 16]);
    out.copy_from_slice(&prf.finalize().into_bytes());
    out
}

/// The two subkeys of one master key, derived once, as ready-to-use cipher states (zeroized
/// on drop by the `zeroize` feature of `aes`).
#[derive(Clone)]
pub(crate) struct Subkeys {
    enc: Aes128,
    /// AES under `k_mac`: CMAC states borrow it ([`Subkeys::mac`]).
    mac: Aes128,
}

impl Subkeys {
    pub(crate) fn derive(master: &MasterKey) -> Self {
        let k_enc = kdf(master.bytes(), LABEL_ENC, KDF_CONTEXT);
        let k_mac = kdf(master.bytes(), LABEL_MAC, KDF_CONTEXT);
        Subkeys {
            enc: Aes128::new(GenericArray::from_slice(&*k_enc)),
            mac: Aes128::new(GenericArray::from_slice(&*k_mac)),
        }
    }

    /// A fresh CMAC state under `k_mac`, borrowing the cipher: `cmac`'s own construction
    /// (RustCrypto's `CmacCore` over `&Aes128`, which `cipher` implements the block-cipher
    /// traits for), with a state of a few dozen bytes instead of a copy of the whole cipher
    /// (sized for the software fallback's fixsliced keys, ~1 KiB with the MAC state) cloned,
    /// moved through `finalize` and zeroized for every tag.
    pub(crate) fn mac(&self) -> Cmac<&Aes128> {
        use cmac::digest::{core_api::CoreWrapper, crypto_common::InnerInit};
        CoreWrapper::from_core(cmac::CmacCore::inner_init(&self.mac))
    }

    /// AES-128-CBC without padding over exactly two blocks.
    pub(crate) fn encrypt(&self, iv: &[u8; 16], plain: &[u8; 32]) -> [u8; 32] {
        cbc_encrypt(self.enc.clone(), iv, plain)
    }

    /// Inverse of [`Subkeys::encrypt`], into zeroizing memory the caller owns.
    pub(crate) fn decrypt_into(&self, iv: &[u8; 16], ct: &[u8; 32], out: &mut Zeroizing<[u8; 32]>) {
        cbc_decrypt_into(&self.enc, iv, ct, out)
    }
}

pub(crate) fn cbc_encrypt(cipher: Aes128, iv: &[u8; 16], plain: &[u8; 32]) -> [u8; 32] {
    let mut blocks = [
        Block::clone_from_slice(&plain[..16]),
        Block::clone_from_slice(&plain[16..]),
    ];
    let mut enc = cbc::Encryptor::<Aes128>::inner_iv_init(cipher, GenericArray::from_slice(iv));
    enc.encrypt_blocks_mut(&mut blocks);
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&blocks[0]);
    out[16..].copy_from_slice(&blocks[1]);
    out
}

/// CBC decryption of two blocks (P₁ = D(C₁) ⊕ IV, P₂ = D(C₂) ⊕ C₁) with the cipher borrowed:
/// `cbc::Decryptor` owns its cipher, and cloning an `Aes128` (whose state is sized for the
/// software fallback's fixsliced keys) and zeroizing the clone on drop cost more than the two
/// block decryptions on every cold verify. Checked against NIST SP 800-38A and against
/// `cbc::Decryptor` (tests below).
pub(crate) fn cbc_decrypt_into(
    cipher: &Aes128,
    iv: &[u8; 16],
    ct: &[u8; 32],
    out: &mut Zeroizing<[u8; 32]>,
) {
    let mut blocks = [
        Block::clone_from_slice(&ct[..16]),
        Block::clone_from_slice(&ct[16..]),
    ];
    cipher.decrypt_blocks(&mut blocks);
    for i in 0..16 {
        out[i] = blocks[0][i] ^ iv[i];
        out[16 + i] = blocks[1][i] ^ ct[i];
    }
    for b in &mut blocks {
        b.as_mut_slice().zeroize();
    }
}

/// Whether `a` and `b` are equal, in constant time: the bytes are XORed and ORed together as
/// 64-bit words (no branch, no early exit) and `subtle` decides once on the result.
///
/// `subtle`'s comparison of byte arrays makes one optimization-barrier decision per byte;
/// over the 16-byte tag and the 32-byte secret of every cold verification that was ~400
/// instructions. The accumulated difference is reduced to one bit without a branch
/// (`(d | -d) >> 63`) and only that bit passes the optimization barrier (`black_box`, then
/// `subtle`'s own): the compiler sees no comparison it could end early, and what a barrier
/// leaves on the stack is the answer alone, not the XOR of the secret with its guess.
pub(crate) fn ct_eq_bytes<const N: usize>(a: &[u8; N], b: &[u8; N]) -> subtle::Choice {
    let words = a.chunks_exact(8).zip(b.chunks_exact(8));
    let mut diff = words.fold(0u64, |d, (x, y)| {
        let (mut xw, mut yw) = ([0u8; 8], [0u8; 8]);
        xw.copy_from_slice(x);
        yw.copy_from_slice(y);
        d | (u64::from_ne_bytes(xw) ^ u64::from_ne_bytes(yw))
    });
    let tail = a.chunks_exact(8).remainder().iter();
    for (x, y) in tail.zip(b.chunks_exact(8).remainder()) {
        diff |= u64::from(x ^ y);
    }
    !differs(diff)
}

/// 1 when `d` is not zero, as a `subtle::Choice`, without a branch on `d`.
#[inline]
pub(crate) fn differs(d: u64) -> subtle::Choice {
    let bit = ((d | d.wrapping_neg()) >> 63) as u8;
    subtle::Choice::from(std::hint::black_box(bit))
}

/// The master keys a manager knows, by version: the current one (seals), previous ones
/// (open only, until `rewrap` moved their records), and next ones (open only, so a rolling
/// deploy of a new master key never meets `Integrity` on nodes that have not switched yet).
///
/// Subkeys are derived once here, never on the hot path.
#[derive(Clone)]
pub struct Keyring {
    current: u32,
    keys: Vec<(u32, Subkeys)>,
    /// Versions added with `with_next`: newer than current, never rewrapped down.
    next: Vec<u32>,
    duplicate: Option<u32>,
}

impl Keyring {
    /// A keyring whose current (sealing) key is `key` under `version`.
    pub fn new(version: u32, key: MasterKey) -> Self {
        Keyring {
            current: version,
            keys: vec![(version, Subkeys::derive(&key))],
            next: Vec::new(),
            duplicate: None,
        }
    }

    /// Adds an older version that can still open records sealed under it.
    pub fn with_previous(self, version: u32, key: MasterKey) -> Self {
        self.with_open_only(version, key)
    }

    /// Adds a newer version that can open records (sealed by nodes already deployed with it)
    /// but does not seal.
    pub fn with_next(mut self, version: u32, key: MasterKey) -> Self {
        self.next.push(version);
        self.with_open_only(version, key)
    }

    /// Whether `version` was added with [`Keyring::with_next`] (records sealed under it come
    /// from nodes already upgraded; `rewrap` leaves them alone).
    pub fn is_next(&self, version: u32) -> bool {
        self.next.contains(&version)
    }

    fn with_open_only(mut self, version: u32, key: MasterKey) -> Self {
        if self.keys.iter().any(|(v, _)| *v == version) {
            self.duplicate = Some(version);
        } else {
            self.keys.push((version, Subkeys::derive(&key)));
        }
        self
    }

    /// The version that seals new records.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// Every version this keyring can open, ascending.
    pub fn versions(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.keys.iter().map(|(v, _)| *v).collect();
        v.sort_unstable();
        v
    }

    /// Rejects a keyring that names one version twice (a configuration mistake that would
    /// make records unopenable).
    pub(crate) fn validate(&self) -> Result<(), Error> {
        match self.duplicate {
            Some(v) => Err(Error::Policy(format!(
                "keyring names master-key version {v} twice; each version needs exactly one key"
            ))),
            None => Ok(()),
        }
    }

    pub(crate) fn current(&self) -> (u32, &Subkeys) {
        (self.current, &self.keys[0].1)
    }

    pub(crate) fn get(&self, version: u32) -> Option<&Subkeys> {
        self.keys
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, k)| k)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("versions", &self.versions())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// Equal arrays compare equal; a difference in any single bit of any byte (in the whole
    /// words or in the tail of a length that is not a multiple of 8) does not.
    fn ct_eq_bytes_finds_every_difference<const N: usize>() {
        let mut a = [0u8; N];
        fill_random(&mut a).unwrap();
        let b = a;
        assert!(bool::from(ct_eq_bytes(&a, &b)));
        for i in 0..N {
            for bit in 0..8 {
                let mut c = a;
                c[i] ^= 1 << bit;
                assert!(
                    !bool::from(ct_eq_bytes(&a, &c)),
                    "byte {i} bit {bit} of {N}"
                );
                assert!(
                    !bool::from(ct_eq_bytes(&c, &a)),
                    "byte {i} bit {bit} of {N}"
                );
            }
        }
    }

    #[test]
    fn ct_eq_bytes_agrees_with_equality() {
        ct_eq_bytes_finds_every_difference::<0>();
        ct_eq_bytes_finds_every_difference::<1>();
        ct_eq_bytes_finds_every_difference::<8>();
        ct_eq_bytes_finds_every_difference::<13>();
        ct_eq_bytes_finds_every_difference::<16>();
        ct_eq_bytes_finds_every_difference::<32>();
        // Arrays that differ everywhere, and in every byte but one.
        assert!(!bool::from(ct_eq_bytes(&[0u8; 32], &[0xff; 32])));
        let mut x = [0xffu8; 32];
        x[31] = 0;
        assert!(!bool::from(ct_eq_bytes(&[0u8; 32], &x)));
    }

    // RFC 4493, section 4: AES-128 key 2b7e1516 28aed2a6 abf71588 09cf4f3c.
    #[test]
    fn rfc4493_cmac_vectors() {
        let key = h("2b7e151628aed2a6abf7158809cf4f3c");
        let msg = h(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        );
        let cases = [
            (0, "bb1d6929e95937287fa37d129b756746"),
            (16, "070a16b46b4d4144f79bdd9dd04a287c"),
            (40, "dfa66747de9ae63030ca32611497c827"),
            (64, "51f0bebf7e3b9d92fc49741779363cfe"),
        ];
        // The same vectors through `Subkeys::mac`'s construction (CMAC over a borrowed
        // cipher).
        let sub = Subkeys {
            enc: Aes128::new(GenericArray::from_slice(&key)),
            mac: Aes128::new(GenericArray::from_slice(&key)),
        };
        for (len, tag) in cases {
            let mut m = <Cmac<Aes128> as KeyInit>::new(GenericArray::from_slice(&key));
            m.update(&msg[..len]);
            assert_eq!(m.finalize().into_bytes().to_vec(), h(tag), "length {len}");
            let mut b = sub.mac();
            b.update(&msg[..len]);
            assert_eq!(
                b.finalize().into_bytes().to_vec(),
                h(tag),
                "borrowed, length {len}"
            );
        }
    }

    /// CMAC over the borrowed cipher agrees with `Cmac<Aes128>` on random keys and messages
    /// of every length from 0 to 300 bytes (partial, whole and several blocks), fed in
    /// random pieces.
    #[test]
    fn borrowed_cipher_cmac_agrees_with_the_owned_one() {
        for len in 0..=300 {
            let mut key = [0u8; 16];
            fill_random(&mut key).unwrap();
            let mut msg = vec![0u8; len];
            fill_random(&mut msg).unwrap();
            let cipher = Aes128::new(GenericArray::from_slice(&key));
            let sub = Subkeys {
                enc: cipher.clone(),
                mac: cipher,
            };
            let mut owned = <Cmac<Aes128> as KeyInit>::new(GenericArray::from_slice(&key));
            owned.update(&msg);
            let mut borrowed = sub.mac();
            let mut rest = &msg[..];
            let mut cut = [0u8; 1];
            while !rest.is_empty() {
                fill_random(&mut cut).unwrap();
                let (piece, tail) = rest.split_at(usize::from(cut[0] % 40).min(rest.len()));
                borrowed.update(piece);
                rest = tail;
            }
            assert_eq!(
                owned.finalize().into_bytes(),
                borrowed.finalize().into_bytes(),
                "length {len}"
            );
        }
    }

    // NIST SP 800-38A, F.2.1/F.2.2 (CBC-AES128), first two blocks, as `Subkeys` calls CBC.
    #[test]
    fn sp800_38a_cbc_vectors() {
        let key = h("2b7e151628aed2a6abf7158809cf4f3c");
        let iv: [u8; 16] = h("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let plain: [u8; 32] = h("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
            .try_into()
            .unwrap();
        let ct: [u8; 32] = h("7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2")
            .try_into()
            .unwrap();
        let aes = Aes128::new(GenericArray::from_slice(&key));
        assert_eq!(cbc_encrypt(aes.clone(), &iv, &plain), ct);
        let mut out = Zeroizing::new([0u8; 32]);
        cbc_decrypt_into(&aes, &iv, &ct, &mut out);
        assert_eq!(*out, plain);
    }

    /// The borrowed-cipher decryption answers what `cbc::Decryptor` does, for any key, IV
    /// and ciphertext.
    #[test]
    fn cbc_decryption_agrees_with_the_cbc_crate() {
        let mut bytes = [0u8; 64];
        for _ in 0..200 {
            fill_random(&mut bytes).unwrap();
            let key = GenericArray::from_slice(&bytes[..16]);
            let iv: [u8; 16] = bytes[16..32].try_into().unwrap();
            let ct: [u8; 32] = bytes[32..].try_into().unwrap();
            let mut expected = [
                Block::clone_from_slice(&ct[..16]),
                Block::clone_from_slice(&ct[16..]),
            ];
            use aes::cipher::{BlockDecryptMut, KeyIvInit};
            cbc::Decryptor::<Aes128>::new(key, GenericArray::from_slice(&iv))
                .decrypt_blocks_mut(&mut expected);
            let mut out = Zeroizing::new([0u8; 32]);
            cbc_decrypt_into(&Aes128::new(key), &iv, &ct, &mut out);
            assert_eq!(out[..16], expected[0][..]);
            assert_eq!(out[16..], expected[1][..]);
        }
    }

    /// `k_enc`/`k_mac` as RustCrypto's `kbkdf` derives them (NIST SP 800-108 counter mode,
    /// 32-bit counter, label, 0x00 separator, context, 32-bit L = 128), over its own CMAC and
    /// AES (cmac 0.8 / aes 0.9: kbkdf is built on digest 0.11).
    fn kbkdf_subkey(master: &[u8; 16], label: &[u8]) -> [u8; 16] {
        use kbkdf::{Counter, Kbkdf, Params};
        let kdf = Counter::<cmac08::Cmac<aes09::Aes128>, aes09::Aes128>::default();
        let params = Params::builder(master)
            .with_label(label)
            .with_context(KDF_CONTEXT)
            .use_l(true)
            .use_separator(true)
            .use_counter(true)
            .build();
        let out = kdf
            .derive(params)
            .expect("one block is within a 32-bit counter");
        out.as_slice().try_into().expect("16 bytes")
    }

    #[test]
    fn kdf_matches_rustcrypto_kbkdf() {
        let mut masters = vec![[0u8; 16], [0xFF; 16], {
            let mut k = [0u8; 16];
            k.copy_from_slice(&h("2b7e151628aed2a6abf7158809cf4f3c"));
            k
        }];
        for _ in 0..32 {
            let mut k = [0u8; 16];
            fill_random(&mut k).unwrap();
            masters.push(k);
        }
        for master in &masters {
            for label in [LABEL_ENC, LABEL_MAC] {
                assert_eq!(
                    *kdf(master, label, KDF_CONTEXT),
                    kbkdf_subkey(master, label),
                    "label {}",
                    String::from_utf8_lossy(label)
                );
            }
            // The two labels give different keys.
            assert_ne!(
                kbkdf_subkey(master, LABEL_ENC),
                kbkdf_subkey(master, LABEL_MAC)
            );
        }
    }

    /// `Subkeys::derive` wires each derived key to its use: CBC under k_enc, CMAC under k_mac,
    /// with the keys as kbkdf derives them.
    #[test]
    fn subkeys_use_the_kbkdf_keys() {
        let master = [0x42u8; 16];
        let sub = Subkeys::derive(&MasterKey::from_bytes(master));
        let k_enc = kbkdf_subkey(&master, LABEL_ENC);
        let k_mac = kbkdf_subkey(&master, LABEL_MAC);
        let iv = [7u8; 16];
        let plain = [9u8; 32];
        let expected = cbc_encrypt(Aes128::new(GenericArray::from_slice(&k_enc)), &iv, &plain);
        assert_eq!(sub.encrypt(&iv, &plain), expected);
        let mut mine = sub.mac();
        mine.update(b"record bytes");
        let mut theirs = <Cmac<Aes128> as KeyInit>::new(GenericArray::from_slice(&k_mac));
        theirs.update(b"record bytes");
        assert_eq!(mine.finalize().into_bytes(), theirs.finalize().into_bytes());
    }

    #[test]
    fn master_key_debug_is_redacted() {
        let k = MasterKey::from_bytes([0xAB; 16]);
        let d = format!("{k:?}");
        assert_eq!(d, "MasterKey([redacted])");
        let ring = Keyring::new(3, k).with_previous(2, MasterKey::from_bytes([1; 16]));
        let d = format!("{ring:?}");
        assert!(!d.to_lowercase().contains("ab"), "{d}");
        assert!(d.contains('3'));
    }

    #[test]
    fn duplicate_versions_are_rejected() {
        let ring = Keyring::new(1, MasterKey::from_bytes([1; 16]))
            .with_previous(1, MasterKey::from_bytes([2; 16]));
        assert!(matches!(ring.validate(), Err(Error::Policy(_))));
    }
}
