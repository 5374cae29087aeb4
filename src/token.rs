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

    /// The text of `u64::MAX`: the largest canonical word.
    const MAX_WORD: &[u8; 11] = b"LygHa16AHYF";
    const MAX_HEAD: u64 = u64::from_be_bytes([
        MAX_WORD[0],
        MAX_WORD[1],
        MAX_WORD[2],
        MAX_WORD[3],
        MAX_WORD[4],
        MAX_WORD[5],
        MAX_WORD[6],
        MAX_WORD[7],
    ]);
    const MAX_TAIL: u32 = u32::from_be_bytes([0, MAX_WORD[8], MAX_WORD[9], MAX_WORD[10]]);

    /// Whether eleven digits (already checked to be base62 digits) stand for more than
    /// `u64::MAX`. Fixed-width digits compare like their values, and ASCII orders `0-9A-Za-z`
    /// as base62 does, so this compares the text with [`MAX_WORD`]'s as two big-endian
    /// numbers: no branch, no table look-up on a digit.
    #[inline]
    pub(crate) fn above_u64(w: &[u8; 11]) -> bool {
        let mut head = [0u8; 8];
        head.copy_from_slice(&w[..8]);
        let head = u64::from_be_bytes(head);
        let tail = u32::from_be_bytes([0, w[8], w[9], w[10]]);
        (head > MAX_HEAD) | ((head == MAX_HEAD) & (tail > MAX_TAIL))
    }

    pub(crate) fn encode_u32(v: u32) -> [u8; 6] {
        encode::<6>(u64::from(v))
    }

    /// The digit of an ASCII byte and whether it is alphanumeric, without branches or table
    /// look-ups (secrets pass through here): the three ranges are selected by masks.
    #[inline(always)]
    pub(crate) fn digit(c: u8) -> (u8, bool) {
        let is_digit = c.wrapping_sub(b'0') < 10;
        let is_upper = c.wrapping_sub(b'A') < 26;
        let is_lower = c.wrapping_sub(b'a') < 26;
        let m_digit = 0u8.wrapping_sub(u8::from(is_digit));
        let m_upper = 0u8.wrapping_sub(u8::from(is_upper));
        let m_lower = 0u8.wrapping_sub(u8::from(is_lower));
        let d = (m_digit & c.wrapping_sub(b'0'))
            | (m_upper & c.wrapping_sub(b'A' - 10))
            | (m_lower & c.wrapping_sub(b'a' - 36));
        (d, is_digit | is_upper | is_lower)
    }

    /// Whether every byte is ASCII alphanumeric: no early exit, so it compiles to a few
    /// vector instructions.
    #[inline(always)]
    pub(crate) fn all_alnum<const N: usize>(b: &[u8; N]) -> bool {
        let mut bad = 0u8;
        for &c in b {
            bad |= not_alnum(c);
        }
        bad == 0
    }

    /// 1 when `c` is not ASCII alphanumeric, else 0 (compares only).
    #[inline(always)]
    fn not_alnum(c: u8) -> u8 {
        let digit = c.wrapping_sub(b'0') < 10;
        let alpha = (c | 0x20).wrapping_sub(b'a') < 26;
        u8::from(!(digit | alpha))
    }

    /// Whether the last `BODY_LEN` bytes of a 64-byte window are all ASCII alphanumeric:
    /// [`all_alnum`] over whole 16-byte vectors (the window's first bytes, the end of the
    /// prefix and its separator, are masked out instead of handled one by one).
    #[inline(always)]
    pub(crate) fn all_alnum_window(w: &[u8; 64]) -> bool {
        let mut bad = 0u8;
        for (i, &c) in w.iter().enumerate() {
            bad |= not_alnum(c) & u8::from(i >= 64 - super::BODY_LEN);
        }
        bad == 0
    }

    /// Digits (0..62 each, at most 11) to a value, most significant first; `None` when the
    /// value does not fit a `u64` (which would make a second spelling of the same value
    /// possible). Off the hot path since tokens decode through [`word11`]: one Horner chain
    /// in 128 bits (62^11 < 2^66).
    pub(crate) fn value(d: &[u8]) -> Option<u64> {
        debug_assert!(d.len() <= 11);
        u64::try_from(d.iter().fold(0u128, |acc, &x| acc * 62 + u128::from(x))).ok()
    }

    /// The digits of eight ASCII alphanumerics loaded little-endian (the first character in
    /// the low byte), one a byte: `c - '0'`, less 7 above `'9'`, less 6 more above `'Z'`.
    /// Every byte is below 0x80, so adding 0x46 (or 0x25) carries into no other byte and sets
    /// a byte's top bit exactly when it is above `'9'` (or `'Z'`); no byte's subtraction
    /// borrows. (Wrapping operations: other bytes give garbage, never a panic.)
    #[inline(always)]
    pub(crate) fn digits8(x: u64) -> u64 {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const TOP: u64 = 0x8080_8080_8080_8080;
        let above_9 = (x.wrapping_add(0x46 * ONES) & TOP) >> 7;
        let above_z = (x.wrapping_add(0x25 * ONES) & TOP) >> 7;
        x.wrapping_sub(0x30 * ONES)
            .wrapping_sub(7 * above_9)
            .wrapping_sub(6 * above_z)
    }

    /// Eight digits (one a byte, the most significant in the low byte) to their value:
    /// neighbouring digits, then pairs, then quads are joined inside the word. No lane
    /// carries into the next: 61·62 + 61 < 2^16, 3843·62² + 3843 < 2^32.
    #[inline(always)]
    pub(crate) fn value8(d: u64) -> u64 {
        const BYTES: u64 = 0x00FF_00FF_00FF_00FF;
        const PAIRS: u64 = 0x0000_FFFF_0000_FFFF;
        let t = (d & BYTES).wrapping_mul(62).wrapping_add((d >> 8) & BYTES);
        let u = (t & PAIRS)
            .wrapping_mul(62 * 62)
            .wrapping_add((t >> 16) & PAIRS);
        (u & 0xFFFF_FFFF)
            .wrapping_mul(14_776_336)
            .wrapping_add(u >> 32)
    }

    /// Decodes exactly 11 characters already checked to be alphanumeric, without branches
    /// or table look-ups (secrets pass through here): characters 0..8 and 3..11 are read as
    /// two words, the first eight digits joined inside one, the last three taken from the
    /// other, and the two parts joined in 128 bits. Returns the value's low 64 bits and
    /// whether it overflowed a `u64` (a second spelling of a smaller value: malformed).
    #[inline(always)]
    pub(crate) fn word11(b: &[u8; 11]) -> (u64, bool) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&b[..8]);
        let mut tail = [0u8; 8];
        tail.copy_from_slice(&b[3..]);
        let v = value8(digits8(u64::from_le_bytes(head)));
        // Digits 8, 9, 10 are bytes 5, 6, 7 of the second word.
        let t = digits8(u64::from_le_bytes(tail)) >> 40;
        let last = (t & 0xFF) * (62 * 62) + ((t >> 8) & 0xFF) * 62 + ((t >> 16) & 0xFF);
        // 62^3 = 238_328.
        let wide = u128::from(v) * 238_328 + u128::from(last);
        (wide as u64, (wide >> 64) != 0)
    }

    /// Decodes alphanumeric digits into a `u64`; `None` for any other byte, more than 11
    /// digits, or a value that overflows.
    pub(crate) fn decode_u64(b: &[u8]) -> Option<u64> {
        if b.len() > 11 {
            return None;
        }
        let mut d = [0u8; 11];
        let mut ok = true;
        for (slot, &c) in d.iter_mut().zip(b) {
            let (v, good) = digit(c);
            *slot = v;
            ok &= good;
        }
        if ok { value(&d[..b.len()]) } else { None }
    }
}

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
    buf.extend_from_slice(&*secret_text_of(secret));
    let crc = crate::checksum::crc32(&buf);
    buf.extend_from_slice(&base62::encode_u32(crc));
    // Every byte pushed is ASCII.
    let s = String::from_utf8(std::mem::take(&mut *buf)).unwrap_or_default();
    Zeroizing::new(s)
}

/// The text a token spells `secret` with: four words of eleven base62 digits.
pub(crate) fn secret_text_of(secret: &[u8; SECRET_LEN]) -> Zeroizing<[u8; SECRET_CHARS]> {
    let mut text = Zeroizing::new([0u8; SECRET_CHARS]);
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
    text
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

    /// The alphabet as the format names it, written out here independently of the encoder's.
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

    /// A base62 text's value in 128 bits (no overflow for up to 21 characters).
    fn reference(text: &[u8]) -> u128 {
        text.iter().fold(0u128, |acc, &c| {
            let d = ALPHABET.iter().position(|&a| a == c).unwrap();
            acc * 62 + d as u128
        })
    }

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
    fn digit_is_exact_over_every_byte() {
        for c in 0..=255u8 {
            let (d, ok) = base62::digit(c);
            assert_eq!(ok, c.is_ascii_alphanumeric(), "byte {c}");
            assert_eq!(base62::all_alnum(&[c]), ok, "byte {c}");
            assert_eq!(base62::all_alnum(&[b'a', c, b'0']), ok, "byte {c}");
            if ok {
                assert_eq!(ALPHABET[usize::from(d)], c, "byte {c}");
            }
        }
    }

    #[test]
    fn value_matches_wide_of_digits() {
        let of_digits = |d: &[u8]| -> Option<u64> {
            let v = d.iter().fold(0u128, |acc, &x| acc * 62 + u128::from(x));
            u64::try_from(v).ok()
        };
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..=11 {
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let d: Vec<u8> = (0..len).map(|k| ((x >> (k * 5)) % 62) as u8).collect();
                assert_eq!(base62::value(&d), of_digits(&d), "{d:?}");
                let text: Vec<u8> = d.iter().map(|&x| ALPHABET[usize::from(x)]).collect();
                assert_eq!(base62::decode_u64(&text), of_digits(&d), "{d:?}");
                if let Ok(t) = <&[u8; 11]>::try_from(&text[..]) {
                    let (v, overflow) = base62::word11(t);
                    assert_eq!((!overflow).then_some(v), of_digits(&d), "{d:?}");
                }
            }
            let top = vec![61u8; len];
            assert_eq!(base62::value(&top), of_digits(&top));
            assert_eq!(base62::decode_u64(&vec![b'z'; len]), of_digits(&top));
        }
        for v in [0, 1, 61, 62, u64::MAX - 1, u64::MAX] {
            assert_eq!(base62::decode_u64(&base62::encode_u64(v)), Some(v));
        }
        assert_eq!(base62::decode_u64(b"zzzzzzzzzzz"), None);
        assert_eq!(base62::decode_u64(b"0000000000-"), None);
        assert_eq!(base62::decode_u64(b"000000000000"), None);
    }

    #[test]
    fn eleven_character_words_match_the_reference_in_every_position() {
        // Every character in every position, over backgrounds of the smallest and largest
        // digits and the edges of the three ranges (the per-byte carries and borrows of the
        // word-at-once decoding).
        for background in [b'0', b'z', b'9', b'A', b'Z', b'a'] {
            for pos in 0..11 {
                for &c in ALPHABET {
                    let mut t = [background; 11];
                    t[pos] = c;
                    let want = reference(&t);
                    let (v, overflow) = base62::word11(&t);
                    assert_eq!(overflow, want > u128::from(u64::MAX), "{t:?}");
                    assert_eq!(v, want as u64, "{t:?}");
                }
            }
        }
        // Around the largest value that fits.
        assert_eq!(base62::word11(b"LygHa16AHYF"), (u64::MAX, false));
        assert!(base62::word11(b"LygHa16AHYG").1);
        assert_eq!(base62::word11(b"LygHa16AHYE"), (u64::MAX - 1, false));
        assert!(base62::word11(b"zzzzzzzzzzz").1);
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
    fn character_set_window_checks_exactly_the_body() {
        let mut window = [b'a'; 64];
        window[64 - BODY_LEN - 1] = b'_';
        for pos in 0..64 {
            for c in 0..=255u8 {
                let mut w = window;
                w[pos] = c;
                let in_body = pos >= 64 - BODY_LEN;
                let want = !in_body || c.is_ascii_alphanumeric();
                assert_eq!(base62::all_alnum_window(&w), want, "byte {c} at {pos}");
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
    fn the_largest_word_is_the_text_of_u64_max() {
        for (w, above) in [
            (b"LygHa16AHYF", false),
            (b"LygHa16AHYG", true),
            (b"LygHa16AHZ0", true),
            (b"LygHa16AHYE", false),
            (b"LygHa17AHYF", true),
            (b"LygHa15zzzz", false),
            (b"00000000000", false),
            (b"zzzzzzzzzzz", true),
        ] {
            assert_eq!(
                base62::above_u64(w),
                above,
                "{}",
                std::str::from_utf8(w).unwrap()
            );
            assert_eq!(base62::word11(w).1, above);
        }
        assert_eq!(base62::word11(b"LygHa16AHYF").0, u64::MAX);
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
                proptest::prop_assert_eq!(text, &*secret_text_of(p.secret()));
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
