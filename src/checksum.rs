//! The token's CRC-32 (IEEE), computed without a table indexed by the token's bytes.
//!
//! The checksum runs over the whole token before it, secret characters included, on every
//! verification. A table-driven CRC reads a table entry chosen by each byte, which leaks
//! through the cache which entries — and so which secret characters — were used. `crc32fast`
//! uses tables only where the CPU has no carry-less-multiply or CRC instructions: in 1.5.5
//! (the oldest release the crate accepts, whose code was read for this), x86 / x86_64 with
//! SSE2, PCLMULQDQ, SSE4.1 and SSSE3 and aarch64 with the CRC extension compute it in
//! registers, for inputs from 16 bytes up to well past a token's 72.
//! There it is used; on every other CPU (and for other lengths, which tokens never have) a
//! bitwise CRC whose steps depend on the data only through masks computes the same value, at
//! about 40 instructions a byte.

use std::sync::atomic::{AtomicU8, Ordering};

/// The reflected IEEE polynomial.
const POLY: u32 = 0xEDB8_8320;

/// The longest input given to `crc32fast`: its aarch64 code merges streams through tables
/// indexed by the CRC state from 1 536 bytes on. A token's checked part is at most 72 bytes.
const MAX_REGISTER_INPUT: usize = 1024;

/// CRC-32 (IEEE) of `bytes`, with no memory access or branch chosen by their values.
#[inline]
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    if (16..=MAX_REGISTER_INPUT).contains(&bytes.len()) && crc32fast_is_table_free() {
        crc32fast::hash(bytes)
    } else {
        portable(bytes)
    }
}

/// Whether this CPU gives `crc32fast` its table-free path: detected once, then one load.
#[inline]
fn crc32fast_is_table_free() -> bool {
    // 0: not detected yet; 1: table-free; 2: not.
    static DETECTED: AtomicU8 = AtomicU8::new(0);
    match DETECTED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let free = detect();
            DETECTED.store(if free { 1 } else { 2 }, Ordering::Relaxed);
            free
        }
    }
}

/// The CPU features `crc32fast` itself checks before it takes its table-free path.
#[cold]
fn detect() -> bool {
    #[cfg(all(
        any(target_arch = "x86", target_arch = "x86_64"),
        target_feature = "sse2"
    ))]
    {
        std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("crc")
    }
    #[cfg(not(any(
        all(
            any(target_arch = "x86", target_arch = "x86_64"),
            target_feature = "sse2"
        ),
        target_arch = "aarch64"
    )))]
    {
        false
    }
}

/// The bitwise CRC: per bit, the polynomial is XORed in under a mask made from the low bit.
///
/// The polynomial goes through `black_box`: LLVM (21 and later) recognises a bitwise CRC loop
/// over a constant polynomial and may rewrite it into the 256-entry table lookup this function
/// exists to avoid.
fn portable(bytes: &[u8]) -> u32 {
    let poly = std::hint::black_box(POLY);
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (poly & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // The standard check value, and the empty input.
        assert_eq!(portable(b"123456789"), 0xCBF4_3926);
        assert_eq!(portable(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let token = b"sak_0000000000100000000002000000000030000000000400000000005";
        assert_eq!(crc32(token), crc32fast::hash(token));
    }

    #[test]
    fn portable_equals_crc32fast_on_every_length_and_byte() {
        // Every length up to past crc32fast's 128-byte fold-by-4 threshold, over bytes that
        // cover all 256 values, and every single byte value at every position of a token-sized
        // input.
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(167).wrapping_add(i >> 3)) as u8)
            .collect();
        for len in 0..=data.len() {
            assert_eq!(
                portable(&data[..len]),
                crc32fast::hash(&data[..len]),
                "{len}"
            );
            assert_eq!(crc32(&data[..len]), crc32fast::hash(&data[..len]), "{len}");
        }
        let mut token = [b'a'; 78];
        for pos in 0..token.len() {
            for v in 0..=255u8 {
                token[pos] = v;
                assert_eq!(portable(&token), crc32fast::hash(&token), "{pos} {v}");
            }
            token[pos] = b'a';
        }
    }
}
