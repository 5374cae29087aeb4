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
pub(crate) const SECRET_CHARS: usize = 44;
const CHECK_CHARS: usize = 6;
/// Characters after `prefix_`.
pub const BODY_LEN: usize = KeyId::LEN + SECRET_CHARS + CHECK_CHARS;
/// Longest prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// Longest possible token.
pub const MAX_TOKEN_LEN: usize = MAX_PREFIX_LEN + 1 + BODY_LEN;

pub(crate) mod base62;

/// The 32 secret bytes of a token, zeroized on drop.
pub(crate) type Secret = Zeroizing<[u8; SECRET_LEN]>;

/// A token that has passed the format and checksum checks but has not been verified against a
/// store. It holds the secret in zeroizing memory and never shows it.
pub struct UntrustedToken {
    id: KeyId,
    #[cfg_attr(not(test), allow(dead_code))]
    // Boxed: moving the token (out of `parse`'s `Result`, into a caller) moves a pointer and
    // leaves no copy of the secret behind.
    secret: Box<Secret>,
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
        let mut secret = Box::new(Zeroizing::new([0u8; SECRET_LEN]));
        let id = Self::parse_into(prefix, token.as_bytes(), &mut secret)?;
        Ok(UntrustedToken { id, secret })
    }

    /// [`UntrustedToken::parse`] into memory the caller owns: the secret is written straight
    /// into `secret` (the hot path keeps it in its own zeroizing buffer) and only the public id
    /// is returned by value.
    pub(crate) fn parse_into(prefix: &str, b: &[u8], secret: &mut Secret) -> Result<KeyId, Error> {
        let id = Self::check_id(prefix, b)?;
        Self::secret_into(b, secret)?;
        Ok(id)
    }

    /// The first half of [`UntrustedToken::parse_into`]: shape, character set and checksum,
    /// then the public id. A warm verification goes on with the secret's text
    /// ([`UntrustedToken::secret_text`]) and decodes it only when it must read the store.
    pub(crate) fn check_id(prefix: &str, b: &[u8]) -> Result<KeyId, Error> {
        let body = Self::body(prefix, b)?;
        // Character set first (branch-free, so it vectorizes: over the token's last 64
        // bytes when the prefix is long enough to fill them), then the checksum: noise and
        // typos are rejected before any decoding.
        let alnum = match b
            .len()
            .checked_sub(64)
            .map(|start| <&[u8; 64]>::try_from(&b[start..]))
        {
            Some(Ok(window)) => base62::all_alnum_window(window),
            _ => base62::all_alnum(body),
        };
        if !alnum {
            return Err(Error::Malformed);
        }
        let (before_check, _) = b.split_at(b.len() - CHECK_CHARS);
        // The check characters are the top of the token's last eight bytes (loaded
        // little-endian: the first of them above the two bytes before it); with those two
        // cleared, a word of eight digits whose first two are zero.
        let mut last = [0u8; 8];
        last.copy_from_slice(&b[b.len() - 8..]);
        let check = base62::value8(
            base62::digits8(u64::from_le_bytes(last)) & (u64::MAX << (8 * (8 - CHECK_CHARS))),
        );
        if check != u64::from(crate::checksum::crc32(before_check)) {
            return Err(Error::Malformed);
        }
        let (words, _check) = body.as_chunks::<11>();
        let Some(id_text) = words.first() else {
            return Err(Error::Malformed);
        };
        match base62::word11(id_text) {
            (id, false) => Ok(KeyId(id)),
            (_, true) => Err(Error::Malformed),
        }
    }

    /// The second half of [`UntrustedToken::parse_into`], for a token that passed
    /// [`UntrustedToken::check_id`]: the secret's four words, eleven characters each, decoded
    /// without branches, then one decision on whether any of them overflowed (`secret` is
    /// cleared if one did).
    pub(crate) fn secret_into(b: &[u8], secret: &mut Secret) -> Result<(), Error> {
        let Some(body) = b
            .len()
            .checked_sub(BODY_LEN)
            .and_then(|start| <&[u8; BODY_LEN]>::try_from(&b[start..]).ok())
        else {
            return Err(Error::Malformed);
        };
        let (words, _check) = body.as_chunks::<11>();
        let mut overflow = false;
        for (i, text) in words.iter().skip(1).take(SECRET_LEN / 8).enumerate() {
            let (mut w, over) = base62::word11(text);
            secret[i * 8..i * 8 + 8].copy_from_slice(&w.to_be_bytes());
            w.zeroize();
            overflow |= over;
        }
        if overflow {
            secret.zeroize();
            return Err(Error::Malformed);
        }
        Ok(())
    }

    /// The secret's 44 characters in a token that passed [`UntrustedToken::check_id`]. Words
    /// that are canonical (the text of a `u64`: [`UntrustedToken::canonical`]) and values
    /// correspond one to one, so the text stands for the secret: the cache fingerprints it
    /// without decoding it.
    pub(crate) fn secret_text(b: &[u8]) -> Result<&[u8; SECRET_CHARS], Error> {
        b.len()
            .checked_sub(SECRET_CHARS + CHECK_CHARS)
            .and_then(|start| {
                <&[u8; SECRET_CHARS]>::try_from(&b[start..b.len() - CHECK_CHARS]).ok()
            })
            .ok_or(Error::Malformed)
    }

    /// Whether each of a secret text's four words is canonical, i.e. at most the text of
    /// `u64::MAX` ([`UntrustedToken::secret_into`] refuses the same texts). Compared as
    /// numbers, without branches: the digits' ASCII order is their numeric order.
    pub(crate) fn canonical(text: &[u8; SECRET_CHARS]) -> bool {
        let (words, _) = text.as_chunks::<11>();
        let mut over = false;
        for w in words {
            over |= base62::above_u64(w);
        }
        !over
    }

    /// The token's body after `prefix` and `_`, if the length and prefix are right.
    fn body<'b>(prefix: &str, b: &'b [u8]) -> Result<&'b [u8; BODY_LEN], Error> {
        let p = prefix.len();
        if b.len() != p + 1 + BODY_LEN || !b.starts_with(prefix.as_bytes()) || b[p] != b'_' {
            return Err(Error::Malformed);
        }
        <&[u8; BODY_LEN]>::try_from(&b[p + 1..]).map_err(|_| Error::Malformed)
    }

    /// The key id the token claims (public).
    pub fn id(&self) -> KeyId {
        self.id
    }

    #[cfg(test)]
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
    let mut text = Zeroizing::new([0u8; SECRET_CHARS]);
    secret_text_into(secret, &mut text);
    buf.extend_from_slice(&*text);
    let crc = crate::checksum::crc32(&buf);
    buf.extend_from_slice(&base62::encode_u32(crc));
    // Every byte pushed is ASCII.
    let s = String::from_utf8(std::mem::take(&mut *buf)).unwrap_or_default();
    Zeroizing::new(s)
}

/// Writes the text a token spells `secret` with (four words of eleven base62 digits) into
/// `text`, memory the caller owns and clears: returned by value, the text would be built in
/// this function's frame and left there.
pub(crate) fn secret_text_into(secret: &[u8; SECRET_LEN], text: &mut [u8; SECRET_CHARS]) {
    for (chunk, out) in secret.chunks_exact(8).zip(text.chunks_exact_mut(11)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let mut v = u64::from_be_bytes(w);
        let mut enc = base62::encode_u64(v);
        out.copy_from_slice(&enc);
        v.zeroize();
        w.zeroize();
        enc.zeroize();
    }
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

    use base62::tests::{ALPHABET, reference};

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
    fn only_the_exact_checksum_spelling_parses() {
        let t = format_token("sak", KeyId(0x0123_4567_89ab_cdef), &[0x5a; SECRET_LEN]);
        assert!(UntrustedToken::parse("sak", &t).is_ok());
        for pos in t.len() - CHECK_CHARS..t.len() {
            for &c in ALPHABET {
                let mut other = t.as_bytes().to_vec();
                if other[pos] == c {
                    continue;
                }
                other[pos] = c;
                let other = String::from_utf8(other).unwrap();
                assert!(
                    matches!(UntrustedToken::parse("sak", &other), Err(Error::Malformed)),
                    "check character {pos} changed to {}",
                    char::from(c)
                );
            }
        }
    }

    #[test]
    fn overflowing_word_is_malformed_even_with_valid_checksum() {
        // "LygHa16AHYF" is u64::MAX; "LygHa16AHYG" is one more.
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


        /// Any alphanumeric body with its correct checksum: parsed exactly when all five
        /// words fit a `u64`, and then to the values a plain 128-bit decoder reads.
        #[test]
        fn checksummed_bodies_parse_to_the_reference_values(
            // Words that fit, words near `u64::MAX` ("LygHa16AHYF"), and any words.
            words in proptest::collection::vec(
                proptest::prop_oneof![
                    3 => "[0-9A-K][0-9A-Za-z]{10}",
                    1 => "Lyg[G-I][0-9A-Za-z]{7}",
                    1 => "[0-9A-Za-z]{11}",
                ],
                5,
            ),
            prefix in "[a-z][a-z0-9]{1,15}",
        ) {
            let body = words.concat();
            let mut t = format!("{prefix}_{body}");
            let crc = crc32fast::hash(t.as_bytes());
            t.push_str(std::str::from_utf8(&base62::encode_u32(crc)).unwrap());
            let words: Vec<u128> = body
                .as_bytes()
                .chunks(11)
                .map(reference)
                .collect();
            let fits = words.iter().all(|&w| w <= u128::from(u64::MAX));
            // The warm path's reading (id, then the secret's text without decoding it)
            // accepts exactly the same tokens, and the text it fingerprints is the one the
            // decoded secret is spelled with.
            let warm = UntrustedToken::check_id(&prefix, t.as_bytes())
                .and_then(|_| UntrustedToken::secret_text(t.as_bytes()))
                .and_then(|text| {
                    if UntrustedToken::canonical(text) { Ok(text) } else { Err(Error::Malformed) }
                });
            proptest::prop_assert_eq!(warm.is_ok(), fits);
            if let (Ok(text), Ok(p)) = (warm, UntrustedToken::parse(&prefix, &t)) {
                let mut spelled = [0u8; SECRET_CHARS];
                secret_text_into(p.secret(), &mut spelled);
                proptest::prop_assert_eq!(text, &spelled);
            }
            match UntrustedToken::parse(&prefix, &t) {
                Ok(p) => {
                    proptest::prop_assert!(fits);
                    proptest::prop_assert_eq!(u128::from(p.id().value()), words[0]);
                    for (i, w) in words[1..].iter().enumerate() {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&p.secret()[i * 8..i * 8 + 8]);
                        proptest::prop_assert_eq!(u128::from(u64::from_be_bytes(b)), *w);
                    }
                }
                Err(e) => {
                    proptest::prop_assert!(!fits, "{:?}", e);
                    proptest::prop_assert!(matches!(e, Error::Malformed));
                }
            }
        }
    }
}
