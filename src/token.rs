//! The token format: `{prefix}_{id}{secret}{checksum}`.
//!
//! - `prefix`: `[a-z][a-z0-9]{1,15}`, default `sak`;
//! - `id`: 64 random bits, 11 base62 characters;
//! - `secret`: 256 random bits from the OS, as four 64-bit big-endian words of 11 base62
//!   characters each (44 characters);
//! - `checksum`: CRC32 (IEEE) of every byte before it, 6 base62 characters.
//!
//! After `prefix_` there are exactly 61 characters of `[0-9A-Za-z]`; the whole token is at most
//! 78 characters. Base62 uses the ASCII-ordered alphabet `0-9A-Za-z`, most significant digit
//! first; a field whose value does not fit its width (e.g. an 11-character word above
//! `u64::MAX`) is non-canonical and rejected, so every key has exactly one spelling.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use crate::{Error, KeyId};

/// Default token prefix ("system API key").
pub const DEFAULT_PREFIX: &str = "sak";
/// Number of secret bytes.
pub(crate) const SECRET_LEN: usize = 32;
const SECRET_CHARS: usize = 44;
const CHECK_CHARS: usize = 6;
/// Characters after `prefix_`.
pub const BODY_LEN: usize = KeyId::LEN + SECRET_CHARS + CHECK_CHARS;
/// Longest prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// Longest possible token.
pub const MAX_TOKEN_LEN: usize = MAX_PREFIX_LEN + 1 + BODY_LEN;

/// Fixed-width base62 over the ASCII-ordered alphabet `0-9A-Za-z`.
pub(crate) mod base62 {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

    /// Encodes `v` as exactly `N` digits (the caller guarantees it fits).
    fn encode<const N: usize>(mut v: u64) -> [u8; N] {
        let mut out = [b'0'; N];
        for slot in out.iter_mut().rev() {
            // Division by a constant: no data-dependent branch.
            *slot = ALPHABET[(v % 62) as usize];
            v /= 62;
        }
        out
    }

    pub(crate) fn encode_u64(v: u64) -> [u8; 11] {
        encode::<11>(v)
    }

    pub(crate) fn encode_u32(v: u32) -> [u8; 6] {
        encode::<6>(u64::from(v))
    }

    /// The digit of an alphanumeric ASCII byte, without branches or table look-ups (secrets
    /// pass through here). The caller has already checked `c.is_ascii_alphanumeric()`.
    #[inline]
    fn digit(c: u8) -> u128 {
        let c = i32::from(c);
        let above_9 = (57 - c) >> 31; // all ones when c > '9'
        let above_z = (90 - c) >> 31; // all ones when c > 'Z'
        let mut d = c - 48;
        d = (d & !above_9) | ((c - 55) & above_9);
        d = (d & !above_z) | ((c - 61) & above_z);
        d as u128
    }

    /// Decodes alphanumeric digits into a `u64`; `None` when the value overflows (which would
    /// make a second spelling of the same value possible).
    pub(crate) fn decode_u64(b: &[u8]) -> Option<u64> {
        if b.len() > 11 || !b.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        let mut acc: u128 = 0;
        for &c in b {
            acc = acc * 62 + digit(c);
        }
        u64::try_from(acc).ok()
    }
}

/// The 32 secret bytes of a token, zeroized on drop.
pub(crate) type Secret = Zeroizing<[u8; SECRET_LEN]>;

/// A token that has passed the format and checksum checks but has not been verified against a
/// store. It holds the secret in zeroizing memory and never shows it.
pub struct UntrustedToken {
    id: KeyId,
    secret: Secret,
}

impl fmt::Debug for UntrustedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UntrustedToken")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl UntrustedToken {
    /// Parses `token` for the given prefix: length and character set first, then the CRC32
    /// checksum, then canonical decoding. Does no I/O.
    ///
    /// # Errors
    /// [`Error::Malformed`] for anything that is not a token of this prefix; the error never
    /// echoes its input.
    pub fn parse(prefix: &str, token: &str) -> Result<Self, Error> {
        let b = token.as_bytes();
        let p = prefix.len();
        if b.len() != p + 1 + BODY_LEN || !b.starts_with(prefix.as_bytes()) || b[p] != b'_' {
            return Err(Error::Malformed);
        }
        let body = &b[p + 1..];
        if !body.iter().all(u8::is_ascii_alphanumeric) {
            return Err(Error::Malformed);
        }
        let (before_check, check) = b.split_at(b.len() - CHECK_CHARS);
        let expected = base62::decode_u64(check).ok_or(Error::Malformed)?;
        if u64::from(crc32fast::hash(before_check)) != expected {
            return Err(Error::Malformed);
        }
        let id = base62::decode_u64(&body[..KeyId::LEN]).ok_or(Error::Malformed)?;
        let mut secret: Secret = Zeroizing::new([0u8; SECRET_LEN]);
        let mut overflow = false;
        for (i, chunk) in body[KeyId::LEN..KeyId::LEN + SECRET_CHARS]
            .chunks_exact(11)
            .enumerate()
        {
            match base62::decode_u64(chunk) {
                Some(mut w) => {
                    secret[i * 8..i * 8 + 8].copy_from_slice(&w.to_be_bytes());
                    w.zeroize();
                }
                None => overflow = true,
            }
        }
        if overflow {
            return Err(Error::Malformed);
        }
        Ok(UntrustedToken {
            id: KeyId(id),
            secret,
        })
    }

    /// The key id the token claims (public).
    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }
}

/// Formats a token from its parts into zeroizing memory.
pub(crate) fn format_token(
    prefix: &str,
    id: KeyId,
    secret: &[u8; SECRET_LEN],
) -> Zeroizing<String> {
    let mut buf: Zeroizing<Vec<u8>> =
        Zeroizing::new(Vec::with_capacity(prefix.len() + 1 + BODY_LEN));
    buf.extend_from_slice(prefix.as_bytes());
    buf.push(b'_');
    buf.extend_from_slice(&id.encode());
    for chunk in secret.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let mut v = u64::from_be_bytes(w);
        let mut enc = base62::encode_u64(v);
        buf.extend_from_slice(&enc);
        v.zeroize();
        w.zeroize();
        enc.zeroize();
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&base62::encode_u32(crc));
    // Every byte pushed is ASCII.
    let s = String::from_utf8(std::mem::take(&mut *buf)).unwrap_or_default();
    Zeroizing::new(s)
}

/// Checks a configured prefix against `[a-z][a-z0-9]{1,15}`.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    let b = prefix.as_bytes();
    (2..=MAX_PREFIX_LEN).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The masked hint shown in listings: the prefix and the last four characters of the id,
/// e.g. `sak_…x7Qa`. Built from public parts only.
pub(crate) fn hint(prefix: &str, id: KeyId) -> String {
    let enc = id.encode();
    let tail = std::str::from_utf8(&enc[KeyId::LEN - 4..]).unwrap_or_default();
    format!("{prefix}_…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_extremes() {
        for (id, fill) in [(0u64, 0u8), (u64::MAX, 0xff), (42, 0x5a)] {
            let secret = [fill; SECRET_LEN];
            let t = format_token("sak", KeyId(id), &secret);
            assert_eq!(t.len(), 3 + 1 + BODY_LEN);
            let p = UntrustedToken::parse("sak", &t).unwrap();
            assert_eq!(p.id(), KeyId(id));
            assert_eq!(p.secret(), &secret);
        }
    }

    #[test]
    fn digit_table_matches_alphabet() {
        for (i, c) in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
            .iter()
            .enumerate()
        {
            assert_eq!(base62::decode_u64(&[*c]), Some(i as u64));
        }
    }

    #[test]
    fn overflowing_word_is_malformed_even_with_valid_checksum() {
        // "LygHa16AHYG" is u64::MAX; "LygHa16AHYH" is one more.
        assert_eq!(base62::decode_u64(b"LygHa16AHYF"), Some(u64::MAX));
        assert_eq!(base62::decode_u64(b"LygHa16AHYG"), None);
        let t = format_token("sak", KeyId(7), &[0xff; SECRET_LEN]);
        let mut s = t[..t.len() - CHECK_CHARS].to_string();
        assert!(s.ends_with("LygHa16AHYF"));
        s.replace_range(s.len() - 11.., "zzzzzzzzzzz");
        let crc = crc32fast::hash(s.as_bytes());
        s.push_str(std::str::from_utf8(&base62::encode_u32(crc)).unwrap());
        assert!(matches!(
            UntrustedToken::parse("sak", &s),
            Err(Error::Malformed)
        ));
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("sak"));
        assert!(valid_prefix("ab"));
        assert!(valid_prefix("a123456789012345"));
        assert!(!valid_prefix("a"));
        assert!(!valid_prefix("a1234567890123456"));
        assert!(!valid_prefix("Sak"));
        assert!(!valid_prefix("1ak"));
        assert!(!valid_prefix("s_k"));
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_round_trips(id: u64, secret: [u8; 32], prefix in "[a-z][a-z0-9]{1,15}") {
            let t = format_token(&prefix, KeyId(id), &secret);
            proptest::prop_assert!(t.len() <= MAX_TOKEN_LEN && t.len() <= 80);
            proptest::prop_assert!(t[prefix.len() + 1..].bytes().all(|c| c.is_ascii_alphanumeric()));
            let p = UntrustedToken::parse(&prefix, &t).unwrap();
            proptest::prop_assert_eq!(p.id(), KeyId(id));
            proptest::prop_assert_eq!(p.secret(), &secret);
        }

        #[test]
        fn parse_never_panics_and_accepts_only_canonical_tokens(input in "\\PC{0,100}") {
            if let Ok(p) = UntrustedToken::parse("sak", &input) {
                // Whatever parses is exactly the canonical spelling of its parts.
                let again = format_token("sak", p.id(), p.secret());
                proptest::prop_assert_eq!(again.as_str(), input.as_str());
            }
        }

        #[test]
        fn base62_words_round_trip(v: u64) {
            proptest::prop_assert_eq!(base62::decode_u64(&base62::encode_u64(v)), Some(v));
        }
    }
}
