//! The sweep: expiry warnings, expiries, unused keys and retention, across every organization;
//! and the [`Notifier`] trait through which the automations' events reach people.
//!
//! [`KeyManager::sweep`] is safe to run on every node at the same time: each notice is first
//! *claimed* by writing its mark into the record's [`Notices`](crate::Notices) with
//! compare-and-swap (the store's `update` with the expected revision), and only the sweep whose
//! write wins announces it. So each warning and each `Expired` event goes out exactly once per
//! key, however many nodes sweep. Delivery to the [`Notifier`] is at most once: a notifier that
//! fails after the claim is reported (logged, counted in [`SweepReport::notify_failed`]), not
//! retried — a host that needs guaranteed delivery enqueues durably in its notifier.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::audit::AuditAction;
use crate::error::BoxError;
use crate::manager::SCAN_PAGE;
use crate::record::whole_seconds;
use crate::{
    Actor, Error, KeyId, KeyInfo, KeyManager, KeyRecord, KeyStatus, KeyStore, Policy,
    RevocationReason,
};

/// The longest notice an unused key gets before the sweep revokes it: 7 days, or half of
/// [`Policy::revoke_unused_after`] when that is shorter (see [`KeyManager::sweep`]).
pub const UNUSED_NOTICE: Duration = Duration::days(7);

/// How long after a key expired the sweep still announces it ([`AutomationEvent::Expired`]):
/// a sweep turned on for the first time (or after a long pause) does not tell owners about
/// keys that expired long ago.
pub const EXPIRED_NOTICE_WINDOW: Duration = Duration::days(30);

/// What an automation did or announces about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AutomationEvent {
    /// The key expires within `lead` (one of [`Policy::warn_before`]'s lead times).
    ExpiryWarning {
        /// The warning's lead time.
        lead: Duration,
    },
    /// The key expired.
    Expired,
    /// The key has not been used for a long time and will be revoked at `revoke_at` unless
    /// it is used before.
    UnusedWarning {
        /// The earliest time the sweep revokes it.
        revoke_at: OffsetDateTime,
    },
    /// The key was revoked because it was not used for longer than
    /// [`Policy::revoke_unused_after`].
    RevokedUnused,
    /// The key was deleted, [`Policy::purge_after`] after it stopped working.
    Purged,
    /// The key was revoked because its whole token was reported leaked at `source`.
    Leaked {
        /// Where it was found, as reported.
        source: String,
    },
    /// The key was revoked because its creator left the organization.
    RevokedDepartedUser,
}

impl AutomationEvent {
    /// A short stable name (`expiry_warning`, `expired`, `unused_warning`, `revoked_unused`,
    /// `purged`, `leaked`, `revoked_departed_user`).
    pub fn name(&self) -> &'static str {
        match self {
            AutomationEvent::ExpiryWarning { .. } => "expiry_warning",
            AutomationEvent::Expired => "expired",
            AutomationEvent::UnusedWarning { .. } => "unused_warning",
            AutomationEvent::RevokedUnused => "revoked_unused",
            AutomationEvent::Purged => "purged",
            AutomationEvent::Leaked { .. } => "leaked",
            AutomationEvent::RevokedDepartedUser => "revoked_departed_user",
        }
    }
}

/// One event of an automation, about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// What happened.
    pub event: AutomationEvent,
    /// The key, as it is after the event (as it was, for [`AutomationEvent::Purged`]): its
    /// organization, name, creator and owner say whom to tell.
    pub key: KeyInfo,
    /// When it happened.
    pub at: OffsetDateTime,
}

/// Receives the automations' events (besides the audit sink): the host turns them into
/// e-mail, chat messages or webhooks. Called once per event, after the event was claimed in
/// the store (so never twice for one event, even with many nodes sweeping).
///
/// `notify` is called from the sweep's task: queue slow deliveries instead of doing them
/// here.
pub trait Notifier: Send + Sync + 'static {
    /// Delivers (or queues) one notification.
    ///
    /// # Errors
    /// Whatever kept it from being delivered or queued; the event is then logged and counted
    /// in [`SweepReport::notify_failed`], and not sent again. A panic counts as such a
    /// failure (it is caught: the sweep goes on).
    fn notify(&self, notification: &Notification) -> Result<(), BoxError>;
}

impl<T: Notifier> Notifier for Arc<T> {
    fn notify(&self, notification: &Notification) -> Result<(), BoxError> {
        (**self).notify(notification)
    }
}

/// Counts returned by [`KeyManager::sweep`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Records read.
    pub scanned: usize,
    /// Expiry warnings this sweep sent.
    pub expiry_warnings: usize,
    /// `Expired` events this sweep sent.
    pub expired: usize,
    /// Unused-key warnings this sweep sent.
    pub unused_warnings: usize,
    /// Keys this sweep revoked as unused.
    pub revoked_unused: usize,
    /// Keys this sweep deleted after their retention.
    pub purged: usize,
    /// Records that failed their integrity check (reported, never acted on) or could not be
    /// written after retries.
    pub failed: usize,
    /// Records of another key class (another manager sharing the store), left to it.
    pub other_class: usize,
    /// Events whose notifier call failed (they reached the audit sink).
    pub notify_failed: usize,
}

/// The notice an unused key gets before its revocation: [`UNUSED_NOTICE`], or half of the
/// unused period when that is shorter.
fn unused_notice(unused: Duration) -> Duration {
    UNUSED_NOTICE.min(unused / 2)
}

/// When a revoked or expired key stopped working (`None` while it works).
fn stopped_at(r: &KeyRecord, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let expired = r.expires_at.filter(|e| *e <= now);
    match (r.revoked_at, expired) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Decides what is due for `r` at `now` and applies its marks (and an unused revocation) to
/// `r`; returns the events to announce (empty: nothing to write).
pub(crate) fn plan(
    r: &mut KeyRecord,
    policy: &Policy,
    now: OffsetDateTime,
) -> Vec<AutomationEvent> {
    let mut events = Vec::new();
    // Revoked keys get nothing. A rolled key's old half gets no expiry notices (its
    // replacement carries on), but while it works (a manager chooses the overlap) it is
    // revoked when unused like any other key.
    let rolled = r.replaced_by.is_some();
    if r.revoked_at.is_some() {
        return events;
    }
    if KeyStatus::of(r, now) == KeyStatus::Expired {
        if rolled {
            return events;
        }
        let recent = r
            .expires_at
            .is_some_and(|e| now <= e.saturating_add(EXPIRED_NOTICE_WINDOW));
        if !r.notices.expired && recent {
            r.notices.expired = true;
            events.push(AutomationEvent::Expired);
        }
        return events;
    }
    if let Some(unused) = policy.unused_revocation() {
        let last = r.last_used_at.map_or(r.created_at, |t| t.max(r.created_at));
        let notice = unused_notice(unused);
        // A warning counts only for the idle period it was sent in: one sent before that
        // period was due for a warning (`U - N` after its last use) is stale, as a use after
        // it ended the idle period it announced. Comparing with the last use alone is not
        // enough: a node whose clock is a few seconds behind records a use right after the
        // warning as one before it.
        let warned = r
            .notices
            .unused_warned_at
            .filter(|w| r.notices.unused_warned && *w >= last.saturating_add(unused - notice));
        match warned {
            Some(w) if now >= last.saturating_add(unused) && now >= w.saturating_add(notice) => {
                r.revoked_at = Some(whole_seconds(now));
                r.revoked_by = None;
                r.revocation = Some(RevocationReason::Unused);
                events.push(AutomationEvent::RevokedUnused);
                return events;
            }
            None if now >= last.saturating_add(unused - notice) => {
                r.notices.unused_warned = true;
                r.notices.unused_warned_at = Some(whole_seconds(now));
                events.push(AutomationEvent::UnusedWarning {
                    revoke_at: whole_seconds(
                        last.saturating_add(unused).max(now.saturating_add(notice)),
                    ),
                });
            }
            _ => {}
        }
    }
    if rolled {
        return events;
    }
    // A key already announced expired (by a clock ahead of this one, or before this one
    // stepped back) is never told it expires within a lead time afterwards.
    if let Some(expires) = r.expires_at.filter(|_| !r.notices.expired) {
        let lifetime = expires - r.created_at;
        // A lead time the key's whole lifetime fits in is skipped: its creator chose the
        // expiry knowingly. Of the leads due at once, one warning (the shortest) is sent and
        // all are marked. A lead no shorter than one already warned (a lead time added to the
        // policy since) is past: a warning never follows a more pressing one.
        let sent = r.notices.expiry_warned.iter().copied().min();
        let due: Vec<Duration> = policy
            .warnings()
            .iter()
            .copied()
            .filter(|lead| {
                lifetime > *lead
                    && sent.is_none_or(|s| lead.whole_seconds() < s)
                    && now >= expires.saturating_sub(*lead)
                    && !r.notices.expiry_warned.contains(&lead.whole_seconds())
            })
            .collect();
        if let Some(shortest) = due.iter().min().copied() {
            r.notices
                .expiry_warned
                .extend(due.iter().map(|d| d.whole_seconds()));
            r.notices.expiry_warned.sort_unstable_by(|a, b| b.cmp(a));
            r.notices.expiry_warned.dedup();
            events.push(AutomationEvent::ExpiryWarning { lead: shortest });
        }
    }
    events
}

impl<S: KeyStore + 'static> KeyManager<S> {
    /// Applies the automations of the policy to every organization's keys of this manager's
    /// class, page by page over the store's `scan`:
    ///
    /// - **Expiry warnings** ([`Policy::warn_before`], default 30, 7 and 1 days): one
    ///   [`AutomationEvent::ExpiryWarning`] per key per lead time, once the key expires within
    ///   it. A lead time at least as long as the key's whole lifetime is skipped; when several
    ///   are due at once (the sweep did not run for a while), one warning — the shortest lead —
    ///   is sent and all are marked.
    /// - **Expiry**: one [`AutomationEvent::Expired`] when a key expired (not for a key that
    ///   expired more than [`EXPIRED_NOTICE_WINDOW`] ago, e.g. when the sweep first runs).
    /// - **Unused keys** ([`Policy::revoke_unused_after`] = `U`, off by default): a key whose
    ///   last use (or creation, if never used) is `U − N` ago gets an
    ///   [`AutomationEvent::UnusedWarning`], where the notice `N` is [`UNUSED_NOTICE`] (7 days)
    ///   or `U / 2` when that is shorter. A later sweep revokes it (reason
    ///   [`RevocationReason::Unused`], [`AutomationEvent::RevokedUnused`]) once it is unused
    ///   for `U` *and* its warning is at least `N` old — so a key always gets its warning at
    ///   least `N` before it is revoked, even when the policy is turned on for old keys. A use
    ///   after the warning cancels it (the next idle period gets its own warning).
    /// - **Retention** ([`Policy::purge_after`] = `P`, off by default): a revoked or expired
    ///   key is deleted ([`AutomationEvent::Purged`]) once it stopped working (the earlier of
    ///   revocation and expiry) `P` ago.
    ///
    /// Revoked keys and a rolled key's old half (its replacement carries on) get no expiry
    /// warnings and no `Expired` event; an old half still working in its overlap is warned
    /// and revoked when unused, like any active key. Each event goes to the audit sink and to the
    /// [notifier](crate::KeyManagerBuilder::notifier), exactly once per key even when several
    /// nodes sweep at the same moment: its mark is written into the record's
    /// [`Notices`](crate::Notices) with compare-and-swap first, and only the winner announces.
    /// A write whose reply is lost is read back: finding its claim one revision on, the sweep
    /// announces it (only if another node wrote the very same claim in the same second, its
    /// reply lost, would both announce).
    ///
    /// A record failing its integrity check (tampered, undecodable, unknown master key) is
    /// reported, counted in [`SweepReport::failed`], never acted on (a forged revocation time
    /// must never purge a key), and the sweep goes on; so it does after a record it could not
    /// write.
    ///
    /// Run it periodically on any number of nodes (hourly is plenty: warnings are days apart).
    /// It first writes this node's buffered last uses ([`KeyManager::flush_last_use`]).
    ///
    /// # Errors
    /// [`Error::Store`] when a page cannot be read (what was done before stays done; the next
    /// sweep continues where this one failed, as each notice is marked).
    pub async fn sweep(&self) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        // This node's buffered uses reach the store first, so that no key used here is
        // judged unused (other nodes' buffers hold seconds of uses; the periods are days).
        // Uses it could not write stay buffered, and each key's plan counts them.
        if let Err(e) = self.flush_last_use().await {
            tracing::warn!(target: "api_keys", error = %e, "sweep could not flush buffered last uses");
        }
        let now = whole_seconds(self.inner.clock.now());
        let policy = &self.inner.policy;
        let mut after: Option<KeyId> = None;
        loop {
            let page = self.inner.store.scan(after.as_ref(), SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for rec in &page {
                report.scanned += 1;
                if rec.is_undecodable() {
                    self.audit_best_effort(
                        AuditAction::IntegrityFailure,
                        None,
                        Some(&rec.org),
                        Some(rec.id),
                    );
                    report.failed += 1;
                    continue;
                }
                if rec.class != self.inner.prefix {
                    report.other_class += 1;
                    continue;
                }
                if !self.authentic(&self.keyring(), rec, None) {
                    report.failed += 1;
                    continue;
                }
                let mut current = rec.clone();
                if !plan(&mut self.with_buffered_use(current.clone()), policy, now).is_empty() {
                    current = match self.sweep_one(rec.id, now, &mut report).await {
                        Some(r) => r,
                        None => continue,
                    };
                }
                self.purge_if_due(&current, now, &mut report).await;
            }
            if page.len() < SCAN_PAGE {
                break;
            }
        }
        Ok(report)
    }

    /// `r` with this node's buffered use of it counted (a use its flush could not write yet).
    fn with_buffered_use(&self, mut r: KeyRecord) -> KeyRecord {
        self.count_buffered_use(&mut r);
        r
    }

    /// Raises `r.last_used_at` to this node's buffered use of it, if later.
    fn count_buffered_use(&self, r: &mut KeyRecord) {
        let buffered = self
            .buffered_use(&r.id)
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
        if let Some(at) = buffered
            && r.last_used_at.is_none_or(|l| l < at)
        {
            r.last_used_at = Some(at);
        }
    }

    /// Claims and announces what is due for one key; the record as it is afterwards (`None`
    /// when it is gone or could not be written).
    async fn sweep_one(
        &self,
        id: KeyId,
        now: OffsetDateTime,
        report: &mut SweepReport,
    ) -> Option<KeyRecord> {
        let policy = &self.inner.policy;
        let mut events = Vec::new();
        let result = self
            .modify(None, &id, |r| {
                self.count_buffered_use(r);
                events = plan(r, policy, now);
                Ok(!events.is_empty())
            })
            .await;
        match result {
            // Another node claimed it first (or nothing is due any more): not ours to send.
            Ok((rec, false)) => Some(rec),
            Ok((rec, true)) => {
                for event in events {
                    match &event {
                        AutomationEvent::ExpiryWarning { .. } => report.expiry_warnings += 1,
                        AutomationEvent::Expired => report.expired += 1,
                        AutomationEvent::UnusedWarning { .. } => report.unused_warnings += 1,
                        AutomationEvent::RevokedUnused => report.revoked_unused += 1,
                        _ => {}
                    }
                    if !self.announce(event, None, &rec, now) {
                        report.notify_failed += 1;
                    }
                }
                Some(rec)
            }
            Err(Error::NotFound) => None,
            Err(e) => {
                report.failed += 1;
                tracing::error!(target: "api_keys", key_id = %id, error = %e, "sweep could not update a record");
                None
            }
        }
    }

    async fn purge_if_due(&self, rec: &KeyRecord, now: OffsetDateTime, report: &mut SweepReport) {
        let Some(retention) = self.inner.policy.purge_period() else {
            return;
        };
        let Some(stopped) = stopped_at(rec, now) else {
            return;
        };
        if now < stopped.saturating_add(retention) {
            return;
        }
        // A key that stopped working never works again, so deleting the row (not a
        // compare-and-swap) is safe; of several sweeps, the one that removed it announces.
        let removed = {
            let _fence = self.inner.cache.fence(rec.id);
            self.inner.store.delete(&rec.id).await
        };
        // The delete may have committed with its reply lost: no later sweep would find the
        // row to announce it. A read showing it gone makes the purge ours to announce (only
        // if another node purged it in that instant, its own reply intact, would both
        // announce it: at least once rather than never).
        let removed = match removed {
            Err(e) => match self.inner.store.get(&rec.id).await {
                Ok(None) => Ok(true),
                _ => Err(e),
            },
            ok => ok,
        };
        match removed {
            Ok(true) => {
                report.purged += 1;
                // Its counters too, as `delete` does: a purged key never verifies again.
                self.forget_counters(rec.id).await;
                if !self.announce(AutomationEvent::Purged, None, rec, now) {
                    report.notify_failed += 1;
                }
            }
            Ok(false) => {}
            Err(e) => {
                report.failed += 1;
                crate::metrics::store_error(&e);
                tracing::error!(target: "api_keys", key_id = %rec.id, error = %e, "sweep could not purge a record");
            }
        }
    }

    /// Sends one automation event to the audit sink and the notifier; `false` when the
    /// notifier failed (logged).
    pub(crate) fn announce(
        &self,
        event: AutomationEvent,
        actor: Option<&Actor>,
        rec: &KeyRecord,
        now: OffsetDateTime,
    ) -> bool {
        let action = match &event {
            AutomationEvent::ExpiryWarning { lead } => AuditAction::ExpiryWarning { lead: *lead },
            AutomationEvent::Expired => AuditAction::Expired,
            AutomationEvent::UnusedWarning { .. } => AuditAction::UnusedWarning,
            AutomationEvent::RevokedUnused => AuditAction::RevokedUnused,
            AutomationEvent::Purged => AuditAction::Purged,
            AutomationEvent::Leaked { .. } => AuditAction::Leaked { revoked: true },
            AutomationEvent::RevokedDepartedUser => AuditAction::RevokedDepartedUser,
        };
        // A panicking audit sink (a host's bug), like a panicking notifier below, must not
        // unwind out of the sweep: the claim is written, and the other notices of the same
        // claim (and a host's later sweeps) would be lost.
        let audited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.audit_best_effort(action, actor, Some(&rec.org), Some(rec.id));
        }));
        if audited.is_err() {
            tracing::error!(target: "api_keys", key_id = %rec.id, event = event.name(), "audit sink panicked");
        }
        let Some(notifier) = &self.inner.notifier else {
            return true;
        };
        let notification = Notification {
            event,
            key: self.info(rec, now),
            at: now,
        };
        // A panicking notifier is a failed delivery like an error: the event's claim is
        // already written, and unwinding out of the sweep would lose the other notices of
        // the same claim (and stop a host's sweep loop).
        let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            notifier.notify(&notification)
        }));
        match delivered {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(target: "api_keys", key_id = %rec.id, event = notification.event.name(), error = %e, "notifier failed");
                false
            }
            Err(_) => {
                tracing::error!(target: "api_keys", key_id = %rec.id, event = notification.event.name(), "notifier panicked");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyId, OrgId};

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap()
    }

    proptest::proptest! {
        /// Whatever the sweep times, the uses and the policy: each lead time is warned at most
        /// once and never for a lifetime it fits in, `Expired` goes out at most once, and an
        /// unused revocation always follows its warning by at least the notice, with no use in
        /// between.
        #[test]
        fn plan_announces_each_notice_at_most_once(
            life_days in proptest::option::of(1i64..400),
            unused_days in proptest::option::of(2i64..400),
            mut sweeps in proptest::collection::vec(0i64..500 * 86_400, 1..40),
            mut uses in proptest::collection::vec(0i64..500 * 86_400, 0..5),
        ) {
            sweeps.sort_unstable();
            uses.sort_unstable();
            let mut policy = Policy::default();
            if let Some(u) = unused_days {
                policy = policy.revoke_unused_after(Duration::days(u));
            }
            let mut r = KeyRecord::undecodable(KeyId(1), OrgId::new("o"));
            r.created_at = t(0);
            r.expires_at = life_days.map(|d| t(d * 86_400));
            let mut seen: Vec<(i64, AutomationEvent)> = Vec::new();
            for now in sweeps {
                if r.revoked_at.is_none()
                    && let Some(u) = uses.iter().copied().filter(|u| *u <= now).max()
                {
                    r.last_used_at = Some(t(u));
                }
                for e in plan(&mut r, &policy, t(now)) {
                    seen.push((now, e));
                }
            }
            let leads: Vec<Duration> = seen.iter().filter_map(|(_, e)| match e {
                AutomationEvent::ExpiryWarning { lead } => Some(*lead),
                _ => None,
            }).collect();
            let mut unique = leads.clone();
            unique.sort();
            unique.dedup();
            proptest::prop_assert_eq!(unique.len(), leads.len());
            if let Some(d) = life_days {
                proptest::prop_assert!(leads.iter().all(|l| *l < Duration::days(d)));
            }
            let count = |f: &dyn Fn(&AutomationEvent) -> bool| seen.iter().filter(|(_, e)| f(e)).count();
            proptest::prop_assert!(count(&|e| *e == AutomationEvent::Expired) <= 1);
            proptest::prop_assert!(count(&|e| *e == AutomationEvent::RevokedUnused) <= 1);
            if let Some(pos) = seen.iter().position(|(_, e)| *e == AutomationEvent::RevokedUnused) {
                let revoked_at = seen[pos].0;
                // Nothing after a revocation.
                proptest::prop_assert_eq!(pos, seen.len() - 1);
                let u = Duration::days(unused_days.unwrap());
                let warned_at = seen[..pos].iter().rev().find_map(|(at, e)| {
                    matches!(e, AutomationEvent::UnusedWarning { .. }).then_some(*at)
                });
                let warned_at = warned_at.expect("revoked without a warning");
                proptest::prop_assert!(revoked_at - warned_at >= unused_notice(u).whole_seconds());
                proptest::prop_assert!(
                    !uses.iter().any(|x| warned_at < *x && *x <= revoked_at),
                    "revoked although used after its warning"
                );
                let last = uses.iter().copied().filter(|x| *x <= revoked_at).max().unwrap_or(0);
                proptest::prop_assert!(revoked_at - last >= u.whole_seconds());
            }
        }
    }
}
