//! Tables for people, JSON for scripts.

use std::borrow::Cow;
use std::fmt::Write as _;

use api_keys::time::OffsetDateTime;
use api_keys::{KeyInfo, KeyStatus, RevocationReason};
use serde::Serialize;

pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => out!("{s}"),
        // Our own types always serialize; never a panic over output.
        Err(e) => eprintln!("api-keys: cannot write JSON: {e}"),
    }
}

/// Text for a terminal. Values in the text output come from the store (a key's name is not
/// under the record's tag) or from the host (organization and user ids may hold any
/// character), and a terminal obeys what it is sent: an escape sequence could move the cursor
/// and rewrite earlier lines, a bidi override could reorder a line. So control characters
/// (C0, DEL, C1) and the invisible format characters that reorder, hide or break text are
/// written as escapes — `\t`, `\n`, `\r`, otherwise `\u{1b}` style — and everything else
/// prints as it is, `Zürich` or `東京` alike. (A backslash is left alone: it cannot move the
/// cursor, so a literal `\u{1b}` in a name only looks like an escape. JSON output has its
/// own escaping.)
pub(crate) fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let _ = write!(out, "{}", c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters, and the format characters that reorder (bidi marks, embeddings,
/// overrides and isolates), hide (zero-width space, word joiner and invisible operators,
/// byte order mark, interlinear annotations, tag characters) or break (line and paragraph
/// separators) text. Joiners (U+200C, U+200D) stay: scripts and emoji need them.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// `2026-12-02 18:35:00Z`.
pub(crate) fn when(t: OffsetDateTime) -> String {
    let t = t.to_offset(api_keys::time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn opt_when(t: Option<OffsetDateTime>, none: &str) -> String {
    t.map(when).unwrap_or_else(|| none.to_string())
}

/// `in 3d 4h`, `2h ago`.
fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (t - now).whole_seconds();
    let a = secs.unsigned_abs();
    let (d, h, m) = (a / 86_400, a % 86_400 / 3_600, a % 3_600 / 60);
    let span = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m")
    };
    if secs >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

pub(crate) fn status(info: &KeyInfo) -> String {
    match info.status {
        KeyStatus::Active => "active".into(),
        KeyStatus::Expired => "expired".into(),
        KeyStatus::Revoked => match &info.revocation {
            Some(reason) => format!("revoked ({})", reason_text(reason)),
            None => "revoked".into(),
        },
        #[allow(unreachable_patterns)]
        _ => "unknown".into(),
    }
}

fn reason_text(r: &RevocationReason) -> String {
    match r {
        RevocationReason::Manual => "manual".into(),
        RevocationReason::Leaked { source } => format!("leaked: {source}"),
        RevocationReason::Unused => "unused".into(),
        RevocationReason::DepartedUser => "departed user".into(),
        RevocationReason::Rolled => "rolled".into(),
        #[allow(unreachable_patterns)]
        _ => "other".into(),
    }
}

/// One row per key; `with_org` for the cross-organization listings.
pub(crate) fn print_table(infos: &[KeyInfo], with_org: bool, now: OffsetDateTime) {
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(infos.len() + 1);
    let mut head = vec!["ID"];
    if with_org {
        head.push("ORG");
    }
    head.extend(["NAME", "STATUS", "EXPIRES", "", "LAST USED", "SCOPES"]);
    rows.push(head.into_iter().map(String::from).collect());
    for i in infos {
        let mut row = vec![i.id.to_string()];
        if with_org {
            row.push(i.org.to_string());
        }
        row.push(i.name.clone());
        row.push(status(i));
        row.push(opt_when(i.expires_at, "never"));
        row.push(i.expires_at.map(|e| relative(e, now)).unwrap_or_default());
        row.push(opt_when(i.last_used_at, "never"));
        row.push(
            i.scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        rows.push(row.iter().map(|cell| text(cell).into_owned()).collect());
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out!("{}", line.join("  ").trim_end());
    }
}

/// One key, `field: value` per line.
pub(crate) fn print_key(i: &KeyInfo, now: OffsetDateTime) {
    let mut lines: Vec<(&str, String)> = vec![
        ("id", i.id.to_string()),
        ("hint", i.hint.clone()),
        ("org", i.org.to_string()),
        ("name", i.name.clone()),
        ("status", status(i)),
        (
            "scopes",
            i.scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "created",
            format!("{} by {}", when(i.created_at), i.created_by),
        ),
        (
            "expires",
            match i.expires_at {
                Some(e) => format!("{} ({})", when(e), relative(e, now)),
                None => "never".into(),
            },
        ),
        ("last used", opt_when(i.last_used_at, "never")),
    ];
    if let Some(r) = i.revoked_at {
        lines.push(("revoked", when(r)));
    }
    if let Some(r) = i.replaces {
        lines.push(("replaces", r.to_string()));
    }
    if let Some(r) = i.replaced_by {
        lines.push(("replaced by", r.to_string()));
    }
    if let Some(o) = &i.owner {
        lines.push(("owner", o.clone()));
    }
    for (k, v) in lines {
        out!("{:<12} {}", format!("{k}:"), text(&v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_and_bidi_controls_are_escaped() {
        assert_eq!(
            text("ok\u{1b}[1A\u{1b}[2K\u{202e}gro.evil"),
            "ok\\u{1b}[1A\\u{1b}[2K\\u{202e}gro.evil"
        );
        assert_eq!(
            text("a\tb\nc\rd\u{0}e\u{7f}f\u{85}g\u{9b}"),
            "a\\tb\\nc\\rd\\u{0}e\\u{7f}f\\u{85}g\\u{9b}"
        );
        for c in [
            '\u{061c}',
            '\u{200b}',
            '\u{200e}',
            '\u{200f}',
            '\u{2028}',
            '\u{2029}',
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{202e}',
            '\u{2060}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{feff}',
            '\u{fff9}',
            '\u{e0041}',
        ] {
            assert_eq!(text(&format!("x{c}y")), format!("x{}y", c.escape_unicode()));
        }
    }

    #[test]
    fn printable_text_is_unchanged() {
        for plain in [
            "deploy-bot",
            "Zürich",
            "東京 ops",
            "Ørsted – grafana",
            "مفتاح",
            "می‌خواهم",
            "family 👨‍👩‍👧",
            "C:\\keys \"prod\"",
            "",
        ] {
            assert!(
                matches!(text(plain), Cow::Borrowed(p) if p == plain),
                "{plain}"
            );
        }
    }
}
