//! Tables for people, JSON for scripts.

use api_keys::time::OffsetDateTime;
use api_keys::{KeyInfo, KeyStatus, RevocationReason};
use serde::Serialize;

pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        // Our own types always serialize; never a panic over output.
        Err(e) => eprintln!("api-keys: cannot write JSON: {e}"),
    }
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
        rows.push(row);
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
        println!("{}", line.join("  ").trim_end());
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
        println!("{:<12} {v}", format!("{k}:"));
    }
}
