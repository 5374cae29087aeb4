//! Reading the bearer token out of a request's `Authorization` header (RFC 6750, RFC 9110
//! field values): one value of at most [`MAX_AUTHORIZATION_LEN`] bytes, the `Bearer` scheme
//! and a `b64token`; anything else is the [`Rejection`] the module's table names.

use std::ops::Range;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};

use super::{MAX_AUTHORIZATION_LEN, Rejection};

/// Removes the request's `Authorization` values and returns the only one, with the range of
/// its bearer token, checking size and shape before anything else.
pub(super) fn take_authorization(
    headers: &mut HeaderMap,
) -> Result<(HeaderValue, Range<usize>), Rejection> {
    // `try_entry`: a map too full to grow is refused, never a panic.
    let entry = match headers.try_entry(AUTHORIZATION) {
        Ok(http::header::Entry::Occupied(entry)) => entry,
        Ok(http::header::Entry::Vacant(_)) => return Err(Rejection::Missing),
        Err(_) => return Err(Rejection::InvalidRequest),
    };
    let (_, mut values) = entry.remove_entry_mult();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Rejection::InvalidRequest);
    };
    drop(values);
    let token = bearer_in(&value)?;
    Ok((value, token))
}

/// Where the bearer token is in one `Authorization` value.
fn bearer_in(value: &HeaderValue) -> Result<Range<usize>, Rejection> {
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(Rejection::InvalidRequest);
    }
    let bytes = value.as_bytes();
    // The usual shape, `Bearer <b64token without padding>`, in one pass: exactly what the
    // general rules accept for such a value.
    if let [scheme @ .., b' '] = bytes.get(..7).unwrap_or_default()
        && scheme.eq_ignore_ascii_case(b"bearer")
        && bytes.len() > 7
        && all_b64(&bytes[7..])
    {
        return Ok(7..bytes.len());
    }
    locate_token(bytes)
}

/// Whether every byte is a `b64token` body character (class [`B64`]), without an early exit,
/// so it runs over whole vectors.
fn all_b64(t: &[u8]) -> bool {
    let mut bad = 0u8;
    for &c in t {
        bad |= u8::from(!is_b64(c));
    }
    bad == 0
}

/// Whether `c` is a `b64token` body character: ALPHA / DIGIT / `-` `.` `_` `~` `+` `/`.
/// Compared, never looked up in a table: the token's characters are the secret's.
#[inline(always)]
fn is_b64(c: u8) -> bool {
    let alnum = (c.wrapping_sub(b'0') < 10) | ((c | 0x20).wrapping_sub(b'a') < 26);
    let mark = (c == b'-') | (c == b'.') | (c == b'_') | (c == b'~') | (c == b'+') | (c == b'/');
    alnum | mark
}

/// The general rules: where the bearer token is in an `Authorization` value of at most
/// [`MAX_AUTHORIZATION_LEN`] bytes.
fn locate_token(bytes: &[u8]) -> Result<Range<usize>, Rejection> {
    // Visible ASCII, space and tab only (RFC 9110 field values as credentials use them).
    if bytes.iter().any(|&b| class(b) == OTHER) {
        return Err(Rejection::InvalidRequest);
    }
    let (start, end) = trim_ows(bytes, 0, bytes.len());
    if start == end {
        return Err(Rejection::Missing);
    }
    let scheme_end = bytes[start..end]
        .iter()
        .position(|&b| class(b) == OWS)
        .map_or(end, |p| start + p);
    if !bytes[start..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Err(Rejection::Missing);
    }
    let (start, end) = trim_ows(bytes, scheme_end, end);
    if start == end || !is_b64token(&bytes[start..end]) {
        return Err(Rejection::InvalidRequest);
    }
    Ok(start..end)
}

/// `bytes[start..end]` without optional whitespace (space, tab) at either end.
fn trim_ows(bytes: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    while start < end && class(bytes[start]) == OWS {
        start += 1;
    }
    while end > start && class(bytes[end - 1]) == OWS {
        end -= 1;
    }
    (start, end)
}

/// A byte's class in an `Authorization` value: [`B64`] (the body characters of a b64token),
/// [`OWS`] (space, tab), [`VISIBLE`] (other visible ASCII) or [`OTHER`]. Computed without a
/// table or a branch (the general rules also read the token, whose characters are secret):
/// every `b64token` character is visible, and [`B64`] is [`VISIBLE`] + [`OWS`].
fn class(b: u8) -> u8 {
    let visible = u8::from(b.wrapping_sub(0x21) < 0x5e);
    let ows = (b == b' ') | (b == b'\t');
    VISIBLE * visible + OWS * u8::from(is_b64(b) | ows)
}

const OTHER: u8 = 0;
const VISIBLE: u8 = 1;
const OWS: u8 = 2;
const B64: u8 = 3;
const _: () = assert!(B64 == VISIBLE + OWS);

/// RFC 6750 `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &[u8]) -> bool {
    let body_end = t.iter().position(|&b| b == b'=').unwrap_or(t.len());
    body_end > 0
        && t[..body_end].iter().all(|&b| class(b) == B64)
        && t[body_end..].iter().all(|&b| b == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the layer reads from `h`: the token's range (the map itself is left as it was).
    fn bearer_token(h: &HeaderMap) -> Result<Range<usize>, Rejection> {
        take_authorization(&mut h.clone()).map(|(_, range)| range)
    }

    /// The token `bearer_token` finds, as text.
    fn token_of(h: &HeaderMap) -> Result<String, Rejection> {
        let range = bearer_token(h)?;
        let value = h.get(AUTHORIZATION).expect("one value");
        Ok(std::str::from_utf8(&value.as_bytes()[range])
            .expect("ASCII")
            .to_owned())
    }

    fn header_map(value: &[u8]) -> Option<HeaderMap> {
        let v = HeaderValue::from_bytes(value).ok()?;
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v);
        Some(h)
    }

    proptest::proptest! {
        /// Any header value: no panic, the cap holds, and whatever is accepted is a bearer
        /// b64token no longer than the header.
        #[test]
        fn bearer_parsing_is_total_and_strict(
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700),
            prefix in proptest::sample::select(vec!["", "Bearer ", "bearer\t", "BEARER  "]),
        ) {
            let mut bytes = prefix.as_bytes().to_vec();
            bytes.extend_from_slice(&value);
            if let Some(h) = header_map(&bytes) {
                match token_of(&h) {
                    Ok(t) => {
                        proptest::prop_assert!(bytes.len() <= MAX_AUTHORIZATION_LEN);
                        proptest::prop_assert!(is_b64token(t.as_bytes()));
                        proptest::prop_assert!(t.len() < bytes.len());
                    }
                    Err(r) => {
                        if bytes.len() > MAX_AUTHORIZATION_LEN {
                            proptest::prop_assert_eq!(r, Rejection::InvalidRequest);
                        }
                    }
                }
            }
        }

        /// The one-pass reading of the usual `Bearer <token>` shape answers exactly what the
        /// general rules answer, for any value.
        #[test]
        fn the_usual_shape_is_read_as_the_general_rules_read_it(
            value in r"[A-Za-z0-9._~+/= \t-]{0,80}|[\x00-\xff]{0,80}",
            prefix in proptest::sample::select(vec!["", "Bearer ", "bearer ", "BEARER\t", "Bearer  ", "Bearer"]),
        ) {
            let mut bytes = prefix.as_bytes().to_vec();
            bytes.extend_from_slice(value.as_bytes());
            if let Some(h) = header_map(&bytes) {
                proptest::prop_assert_eq!(bearer_token(&h), locate_token(&bytes));
            }
        }

        /// Taking the header out answers by the number of its values (none, one, two) and
        /// leaves no `Authorization` value behind, and every other header in place.
        #[test]
        fn taking_the_header_answers_by_the_number_of_values(
            values in proptest::collection::vec(
                r"(Bearer |bearer\t|Basic )?[A-Za-z0-9._~+/= \t-]{0,60}",
                0..3,
            ),
        ) {
            let mut h = HeaderMap::new();
            for v in &values {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.append(AUTHORIZATION, v);
                }
            }
            h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
            // None: no credentials; several: unusable; one: what that value holds.
            let all: Vec<&HeaderValue> = h.get_all(AUTHORIZATION).iter().collect();
            let read = match all[..] {
                [] => Err(Rejection::Missing),
                [one] => bearer_in(one),
                _ => Err(Rejection::InvalidRequest),
            };
            let mut taken = h.clone();
            let got = take_authorization(&mut taken);
            proptest::prop_assert_eq!(got.as_ref().map(|(_, r)| r.clone()).map_err(|e| *e), read.clone());
            if let Ok((value, _)) = &got {
                proptest::prop_assert_eq!(Some(value), h.get(AUTHORIZATION));
            }
            proptest::prop_assert!(taken.get(AUTHORIZATION).is_none());
            proptest::prop_assert!(taken.get(http::header::ACCEPT).is_some());
        }

        /// Every token of the b64token grammar gets through unchanged.
        #[test]
        fn b64tokens_pass_unchanged(t in "[A-Za-z0-9._~+/-]{1,200}={0,3}") {
            let h = header_map(format!("Bearer {t}").as_bytes()).unwrap();
            let got = token_of(&h).unwrap();
            proptest::prop_assert_eq!(got.as_str(), t.as_str());
        }
    }

    /// Each byte's class as RFC 6750 and RFC 9110 name it, written out plainly.
    fn spec_class(c: u8) -> u8 {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/') {
            B64
        } else if c == b' ' || c == b'\t' {
            OWS
        } else if c.is_ascii_graphic() {
            VISIBLE
        } else {
            OTHER
        }
    }

    /// The computed classes and the compared character set are the grammar's, byte by byte.
    #[test]
    fn computed_classes_are_the_grammar() {
        for b in 0..=255u8 {
            assert_eq!(class(b), spec_class(b), "byte {b}");
            assert_eq!(all_b64(&[b]), spec_class(b) == B64, "byte {b}");
            assert_eq!(all_b64(&[b; 40]), spec_class(b) == B64, "byte {b}");
            let mut long = [b'A'; 37];
            long[36] = b;
            assert_eq!(all_b64(&long), spec_class(b) == B64, "byte {b} last of 37");
        }
        assert!(all_b64(b""));
    }

    /// A header map too full to grow is refused, not a panic (`entry` would panic there).
    #[test]
    fn a_full_header_map_is_refused_without_a_panic() {
        let mut h = HeaderMap::new();
        let mut i = 0u32;
        loop {
            let name = http::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap();
            if h.try_insert(name, HeaderValue::from_static("v")).is_err() {
                break;
            }
            i += 1;
        }
        assert!(i > 1000, "filled after {i} names");
        assert_eq!(
            take_authorization(&mut h).map(|(_, r)| r),
            Err(Rejection::InvalidRequest)
        );
    }
}
