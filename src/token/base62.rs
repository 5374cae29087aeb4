//! Fixed-width base62 over the ASCII-ordered alphabet `0-9A-Za-z` (the token's digits).

/// Encodes `v` as exactly `N` digits (the caller guarantees it fits). Secrets pass through
/// here (a cold verification spells the stored secret to fingerprint it): no branch and no
/// table look-up on a digit.
fn encode<const N: usize>(mut v: u64) -> [u8; N] {
    let mut out = [b'0'; N];
    for slot in out.iter_mut().rev() {
        // Division by a constant: no data-dependent branch.
        *slot = char_of(v % 62);
        v /= 62;
    }
    out
}

/// The character of a digit below 62: `'0' + d`, 7 more above 9, 6 more above 35 (each
/// "above" is the top bit of a wrapping subtraction, so no compare is branched on).
#[inline(always)]
fn char_of(d: u64) -> u8 {
    let above_9 = 9u64.wrapping_sub(d) >> 63;
    let above_35 = 35u64.wrapping_sub(d) >> 63;
    (u64::from(b'0') + d + 7 * above_9 + 6 * above_35) as u8
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The alphabet as the format names it, written out here independently of the encoder's.
    pub(in crate::token) const ALPHABET: &[u8; 62] =
        b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

    /// A base62 text's value in 128 bits (no overflow for up to 21 characters).
    pub(in crate::token) fn reference(text: &[u8]) -> u128 {
        text.iter().fold(0u128, |acc, &c| {
            let d = ALPHABET.iter().position(|&a| a == c).unwrap();
            acc * 62 + d as u128
        })
    }

    #[test]
    fn digit_table_matches_alphabet() {
        for (i, c) in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
            .iter()
            .enumerate()
        {
            assert_eq!(decode_u64(&[*c]), Some(i as u64));
        }
    }

    #[test]
    fn digit_is_exact_over_every_byte() {
        for c in 0..=255u8 {
            let (d, ok) = digit(c);
            assert_eq!(ok, c.is_ascii_alphanumeric(), "byte {c}");
            assert_eq!(all_alnum(&[c]), ok, "byte {c}");
            assert_eq!(all_alnum(&[b'a', c, b'0']), ok, "byte {c}");
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
                assert_eq!(value(&d), of_digits(&d), "{d:?}");
                let text: Vec<u8> = d.iter().map(|&x| ALPHABET[usize::from(x)]).collect();
                assert_eq!(decode_u64(&text), of_digits(&d), "{d:?}");
                if let Ok(t) = <&[u8; 11]>::try_from(&text[..]) {
                    let (v, overflow) = word11(t);
                    assert_eq!((!overflow).then_some(v), of_digits(&d), "{d:?}");
                }
            }
            let top = vec![61u8; len];
            assert_eq!(value(&top), of_digits(&top));
            assert_eq!(decode_u64(&vec![b'z'; len]), of_digits(&top));
        }
        for v in [0, 1, 61, 62, u64::MAX - 1, u64::MAX] {
            assert_eq!(decode_u64(&encode_u64(v)), Some(v));
        }
        assert_eq!(decode_u64(b"zzzzzzzzzzz"), None);
        assert_eq!(decode_u64(b"0000000000-"), None);
        assert_eq!(decode_u64(b"000000000000"), None);
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
                    let (v, overflow) = word11(&t);
                    assert_eq!(overflow, want > u128::from(u64::MAX), "{t:?}");
                    assert_eq!(v, want as u64, "{t:?}");
                }
            }
        }
        // Around the largest value that fits.
        assert_eq!(word11(b"LygHa16AHYF"), (u64::MAX, false));
        assert!(word11(b"LygHa16AHYG").1);
        assert_eq!(word11(b"LygHa16AHYE"), (u64::MAX - 1, false));
        assert!(word11(b"zzzzzzzzzzz").1);
    }

    #[test]
    fn character_set_window_checks_exactly_the_body() {
        let mut window = [b'a'; 64];
        window[64 - crate::token::BODY_LEN - 1] = b'_';
        for pos in 0..64 {
            for c in 0..=255u8 {
                let mut w = window;
                w[pos] = c;
                let in_body = pos >= 64 - crate::token::BODY_LEN;
                let want = !in_body || c.is_ascii_alphanumeric();
                assert_eq!(all_alnum_window(&w), want, "byte {c} at {pos}");
            }
        }
    }

    #[test]
    fn every_digit_is_spelled_by_its_alphabet_character() {
        for (d, &c) in ALPHABET.iter().enumerate() {
            let d = d as u64;
            assert_eq!(encode_u64(d)[10], c, "digit {d}");
            assert_eq!(encode_u64(d * 62)[9], c, "digit {d}");
            assert_eq!(encode_u32(d as u32)[5], c, "digit {d}");
        }
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
            assert_eq!(above_u64(w), above, "{}", std::str::from_utf8(w).unwrap());
            assert_eq!(word11(w).1, above);
        }
        assert_eq!(word11(b"LygHa16AHYF").0, u64::MAX);
    }

    proptest::proptest! {
        #[test]
        fn base62_words_round_trip(v: u64) {
            proptest::prop_assert_eq!(decode_u64(&encode_u64(v)), Some(v));
        }
    }
}
