//! `keys list | show | expiring | revoke`.

use clap::Subcommand;

use api_keys::time::Duration;
use api_keys::{Actor, AnyStore, Error, KeyId, KeyManager, KeyStore, LeakVerdict, OrgId};

use crate::config::{operator, parse_duration};
use crate::output::{print_json, print_key, print_table, text};
use crate::{Failure, Global};

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// An organization's keys, newest first.
    List {
        /// The organization.
        #[arg(long)]
        org: String,
    },
    /// One key's metadata (never its secret).
    Show {
        /// The key's id (the 11 characters after the prefix).
        id: String,
    },
    /// Every organization's active keys that expire within a window, soonest first.
    Expiring {
        /// The window: e.g. 14d, 12h, 2w.
        #[arg(long, default_value = "14d", value_parser = parse_duration)]
        within: Duration,
    },
    /// Revoke a key now (it stops working at once; it stays listed as revoked).
    Revoke {
        /// The key's id.
        id: String,
    },
    /// Revoke leaked keys by possession: whole tokens on standard input, one per line (never
    /// as arguments: other users can read those). Genuine tokens' keys are revoked with the
    /// reason "leaked" and the source; anything else is a false positive. Tokens are never
    /// printed: lines are named by number.
    RevokeLeaked {
        /// Where the tokens were found (e.g. a URL), recorded with each revocation.
        #[arg(long, default_value = "reported to an operator")]
        source: String,
    },
}

pub(crate) async fn run(
    m: &KeyManager<AnyStore>,
    global: &Global,
    cmd: KeysCommand,
) -> Result<u8, Failure> {
    match cmd {
        KeysCommand::List { org } => {
            let org =
                OrgId::try_new(&org).map_err(|_| Failure::usage("--org must be 1 to 128 bytes"))?;
            let actor = Actor::manager(org.clone(), operator(global)?);
            let infos = m
                .list(&actor)
                .await
                .map_err(|e| Failure::from_error(e, &format!("listing the keys of {org}")))?;
            if global.json {
                print_json(&infos);
            } else if infos.is_empty() {
                eprintln!(
                    "no keys of the prefix `{}` in organization {}",
                    m.prefix(),
                    text(org.as_str())
                );
            } else {
                print_table(&infos, false, m.now());
            }
            left_out()?;
        }
        KeysCommand::Show { id } => {
            let id = parse_id(&id)?;
            let (actor, _) = as_operator(m, global, &id).await?;
            let info = m
                .get(&actor, &id)
                .await
                .map_err(|e| Failure::from_error(e, &format!("key {id}")))?;
            if global.json {
                print_json(&info);
            } else {
                print_key(&info, m.now());
            }
        }
        KeysCommand::Expiring { within } => {
            let infos = m
                .expiring_all(within)
                .await
                .map_err(|e| Failure::from_error(e, "finding expiring keys"))?;
            if global.json {
                print_json(&infos);
            } else if infos.is_empty() {
                eprintln!("no active key expires within {}", human(within));
            } else {
                print_table(&infos, true, m.now());
            }
            left_out()?;
        }
        KeysCommand::Revoke { id } => {
            let id = parse_id(&id)?;
            let (actor, was_revoked) = as_operator(m, global, &id).await?;
            let info = m
                .revoke(&actor, &id)
                .await
                .map_err(|e| Failure::from_error(e, &format!("revoking key {id}")))?;
            if global.json {
                print_json(&info);
            } else {
                if was_revoked {
                    out!("key {id} was already revoked");
                } else {
                    out!("key {id} revoked: it no longer verifies");
                }
                print_key(&info, m.now());
            }
        }
        KeysCommand::RevokeLeaked { source } => return revoke_leaked(m, global, &source).await,
    }
    Ok(0)
}

/// `keys revoke-leaked`: tokens from standard input, each held in zeroizing memory. A line
/// that is not UTF-8 is a false positive like any other non-token: the batch goes on. When a
/// line fails (the store), what was done before it is still reported.
async fn revoke_leaked(
    m: &KeyManager<AnyStore>,
    global: &Global,
    source: &str,
) -> Result<u8, Failure> {
    use std::io::{BufRead, Read as _};
    use zeroize::Zeroizing;
    // A usage error before anything is read (the library checks it again per token).
    // The library's rule: no control characters, no bidirectional controls.
    let reorders = |c: char| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if source.len() > api_keys::MAX_LEAK_SOURCE_BYTES
        || source.chars().any(|c| c.is_control() || reorders(c))
    {
        return Err(Failure::usage(format!(
            "--source must be at most {} bytes with no control characters and no \
             bidirectional controls (U+202A–U+202E, U+2066–U+2069)",
            api_keys::MAX_LEAK_SOURCE_BYTES
        )));
    }
    let mut genuine = Vec::new();
    let mut false_positives = Vec::new();
    // Lines whose record failed its integrity check (the wrong master key, a previous key
    // missing, a tampered row): not judged, so neither genuine nor false positives.
    let mut unjudged = Vec::new();
    let stdin = std::io::stdin();
    let mut line = Zeroizing::new(Vec::new());
    let mut number = 0usize;
    let mut failed = None;
    loop {
        line.clear();
        // At most MAX_LINE bytes of a line are kept: no token is that long, and a file
        // without line breaks piped in by mistake must not grow the process without end.
        let mut input = stdin.lock();
        let n = match (&mut input).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(n) => n,
            Err(e) => {
                failed = Some(Failure::usage(format!("cannot read standard input: {e}")));
                break;
            }
        };
        if n == 0 {
            break;
        }
        number += 1;
        if n as u64 == MAX_LINE && line.last() != Some(&b'\n') {
            // Longer than any token: a false positive, the rest of it read past unkept.
            if let Err(e) = skip_line(&mut input) {
                failed = Some(Failure::usage(format!("cannot read standard input: {e}")));
                break;
            }
            false_positives.push(number);
            continue;
        }
        drop(input);
        let Ok(text) = std::str::from_utf8(&line) else {
            false_positives.push(number);
            continue;
        };
        let token = text.trim();
        if token.is_empty() {
            continue;
        }
        match m.revoke_leaked(token, source).await {
            Ok(LeakVerdict::TruePositive) => genuine.push(number),
            Ok(LeakVerdict::Unverified) => unjudged.push(number),
            Ok(LeakVerdict::FalsePositive) => false_positives.push(number),
            Err(e) => {
                failed = Some(Failure::from_error(e, &format!("line {number}")));
                break;
            }
        }
    }
    if global.json {
        print_json(&serde_json::json!({
            "true_positive_lines": genuine,
            "false_positive_lines": false_positives,
            "integrity_failed_lines": unjudged,
            "stopped_at_line": failed.as_ref().map(|_| number),
        }));
    } else {
        out!(
            "{} genuine token(s) revoked (lines {:?}); {} false positive(s) (lines {:?})",
            genuine.len(),
            genuine,
            false_positives.len(),
            false_positives
        );
        if !unjudged.is_empty() {
            out!(
                "{} line(s) not judged: their key's record failed its integrity check (lines {:?})",
                unjudged.len(),
                unjudged
            );
        }
        if failed.is_some() {
            out!("stopped at line {number}: the lines after it were not read");
        }
    }
    match failed {
        Some(f) => Err(f),
        None if !unjudged.is_empty() => Err(Failure::new(
            crate::EXIT_INTEGRITY,
            format!(
                "lines {unjudged:?} were not judged: their key's record failed its integrity \
                 check — sealed under a master key this keyring lacks ({}) or tampered with; \
                 those keys were not revoked: run it again for them with the right keyring",
                crate::config::add_previous_key()
            ),
        )),
        None => Ok(0),
    }
}

/// The longest line of `keys revoke-leaked` that is kept and judged: far longer than any
/// token (with room for surrounding blanks).
const MAX_LINE: u64 = 4096;

/// Reads past the rest of a line (through its `\n`, or to the end of the input) without
/// keeping it.
fn skip_line(input: &mut impl std::io::BufRead) -> std::io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(at) => {
                input.consume(at + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                input.consume(len);
            }
        }
    }
}

/// A listing that left records out for failing their integrity check is not the whole
/// answer: exit 5, after what did verify was printed.
fn left_out() -> Result<(), Failure> {
    match crate::integrity_failures() {
        0 => Ok(()),
        n => Err(Failure::new(
            crate::EXIT_INTEGRITY,
            format!(
                "{n} record(s) were left out: they failed their integrity check — tampered, or \
                 sealed under a master key this keyring lacks ({}); their ids are in the log \
                 lines above",
                crate::config::add_previous_key()
            ),
        )),
    }
}

fn parse_id(s: &str) -> Result<KeyId, Failure> {
    KeyId::parse(s.trim()).map_err(|_| {
        // The input is not repeated: it may be a whole token, and stderr may be logged.
        Failure::usage(
            "that is not a key id: give the 11 characters after the prefix and `_` \
             (as `keys list` shows them), never the whole token",
        )
    })
}

/// An operator acting as a manager of the key's own organization: the record is read once to
/// learn which organization that is (the library's management operations are scoped to an
/// organization's managers). Also returns whether the key was already revoked.
async fn as_operator(
    m: &KeyManager<AnyStore>,
    global: &Global,
    id: &KeyId,
) -> Result<(Actor, bool), Failure> {
    let rec = m
        .store()
        .get(id)
        .await
        .map_err(|e| Failure::from_error(Error::from(e), &format!("key {id}")))?
        .ok_or_else(|| Failure::from_error(Error::NotFound, &format!("key {id}")))?;
    let revoked = rec.revoked_at.is_some();
    Ok((Actor::manager(rec.org.clone(), operator(global)?), revoked))
}

/// `14d`, `12h`, or seconds.
pub(crate) fn human(d: Duration) -> String {
    let s = d.whole_seconds();
    if s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s % 3_600 == 0 {
        format!("{}h", s / 3_600)
    } else {
        format!("{s}s")
    }
}
