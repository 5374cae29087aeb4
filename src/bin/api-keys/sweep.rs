//! `sweep`: the automations once, with the flags' policy. The tool is the only party that
//! sees the notices this run claims (claimed notices are never announced again), so it prints
//! each of them: a line per notice as it is claimed, or a `notices` array in the JSON answer.

use std::sync::{Arc, Mutex, PoisonError};

use api_keys::{AnyStore, AutomationEvent, BoxError, Keyring, Notification, Notifier};

use crate::output::{text, when};
use crate::{Failure, Global, SweepArgs, build_failure, builder};

/// `sweep`: the counts at the end; exit 1 when records failed (reported by id in the audit
/// log).
pub(crate) async fn sweep(
    store: AnyStore,
    keyring: Keyring,
    global: &Global,
    args: SweepArgs,
) -> Result<u8, Failure> {
    let mut policy = api_keys::Policy::default().warn_before(&args.warn_before.0);
    if let Some(d) = args.revoke_unused_after {
        policy = policy.revoke_unused_after(d);
    }
    if let Some(d) = args.purge_after {
        policy = policy.purge_after(d);
    }
    let notices = Printer {
        json: global.json,
        kept: Arc::default(),
    };
    let kept = notices.kept.clone();
    let m = builder(store, keyring, global)
        .policy(policy)
        .notifier(notices)
        .build()
        .map_err(build_failure)?;
    let taken = || std::mem::take(&mut *kept.lock().unwrap_or_else(PoisonError::into_inner));
    let r = match m.sweep().await {
        Ok(r) => r,
        Err(e) => {
            // The notices claimed before the failure are claimed for good: the JSON answer
            // still shows them (the text output printed each as it was claimed).
            if global.json {
                answer(serde_json::json!({ "stopped": true, "notices": taken() }));
            }
            return Err(Failure::from_error(e, "sweeping"));
        }
    };
    if global.json {
        let notices = taken();
        answer(serde_json::json!({
            "scanned": r.scanned, "expiry_warnings": r.expiry_warnings, "expired": r.expired,
            "unused_warnings": r.unused_warnings, "revoked_unused": r.revoked_unused,
            "purged": r.purged, "failed": r.failed, "other_class": r.other_class,
            "notify_failed": r.notify_failed, "notices": notices,
        }));
    } else {
        out!(
            "swept {} records: {} expiry warning(s), {} expired, {} unused-key warning(s), \
             {} revoked as unused, {} purged, {} failed",
            r.scanned,
            r.expiry_warnings,
            r.expired,
            r.unused_warnings,
            r.revoked_unused,
            r.purged,
            r.failed
        );
    }
    Ok(if r.failed > 0 {
        crate::EXIT_FAILED_RECORDS
    } else {
        0
    })
}

/// Writes the JSON answer. Its notices are claimed for good: when the answer cannot be written
/// (a full disk, a reader gone away), each is named on standard error — its event and key — as
/// the text output names a notice it could not print.
fn answer(v: serde_json::Value) {
    use std::io::Write as _;
    let written = serde_json::to_string_pretty(&v)
        .map_err(std::io::Error::other)
        .and_then(|s| writeln!(std::io::stdout(), "{s}"));
    let Err(e) = written else { return };
    let notices = v["notices"].as_array().map_or(&[][..], Vec::as_slice);
    // A closed pipe loses nothing when no notice was claimed (as for listings); with notices
    // it is a failed run, whatever the reader's reason for going away.
    if e.kind() != std::io::ErrorKind::BrokenPipe || !notices.is_empty() {
        crate::output_failed(&e);
    }
    for n in notices {
        eprintln!(
            "api-keys: notice {} of key {} was claimed but could not be shown: {e}",
            text(n["event"].as_str().unwrap_or("?")),
            text(n["key"]["id"].as_str().unwrap_or("?")),
        );
    }
}

/// The run's notifier: prints each notice (text), or keeps it for the JSON answer.
struct Printer {
    json: bool,
    kept: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Notifier for Printer {
    fn notify(&self, n: &Notification) -> Result<(), BoxError> {
        if self.json {
            let mut v = serde_json::json!({
                "event": n.event.name(),
                "at": n.at.unix_timestamp(),
                "key": n.key,
            });
            match &n.event {
                AutomationEvent::ExpiryWarning { lead } => {
                    v["lead_seconds"] = lead.whole_seconds().into();
                }
                AutomationEvent::UnusedWarning { revoke_at } => {
                    v["revoke_at"] = revoke_at.unix_timestamp().into();
                }
                _ => {}
            }
            self.kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(v);
        } else {
            // Not `out!`: exiting here would stop the sweep at its first notice, that notice
            // claimed and shown nowhere. A failed write is this notice's failure (the sweep
            // logs it with the key's id, counts it and goes on); the summary's `out!` then
            // reports the output failure once the run is done (exit 3). A closed pipe is a
            // failure too: unlike a listing cut short by `head`, the notice is claimed and its
            // reader is gone, so it is named on standard error and the run does not succeed.
            use std::io::Write as _;
            if let Err(e) = writeln!(std::io::stdout(), "{}", line(n)) {
                crate::output_failed(&e);
                return Err(format!("the notice could not be printed: {e}").into());
            }
        }
        Ok(())
    }
}

/// One notice for a person: what, which key, whom it concerns.
fn line(n: &Notification) -> String {
    let k = &n.key;
    let detail = match &n.event {
        AutomationEvent::ExpiryWarning { .. } | AutomationEvent::Expired => k
            .expires_at
            .map(|e| format!("; expires {}", when(e)))
            .unwrap_or_default(),
        AutomationEvent::UnusedWarning { revoke_at } => {
            format!("; revoked from {} unless used before", when(*revoke_at))
        }
        _ => String::new(),
    };
    let owner = k
        .owner
        .as_deref()
        .map(|o| format!(", owner {}", text(o)))
        .unwrap_or_default();
    format!(
        "notice {}: key {} ({}) of {}, created by {}{owner}{detail}",
        n.event.name(),
        k.id,
        text(&k.name),
        text(k.org.as_str()),
        text(k.created_by.as_str()),
    )
}
