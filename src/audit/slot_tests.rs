//! The log bound's slots and summaries.

use super::*;

/// The former unkeyed mix put the failures of class `a` about id `x` and those of class
/// `b` about `x ^ G·a ^ G·b` in one slot, for every `x`: anyone could hide a key's lines.
#[test]
fn no_sender_can_choose_ids_that_share_a_slot() {
    const G: u64 = 0x9e37_79b9_7f4a_7c15;
    let key = foldhash::fast::FixedState::with_seed(0x5eed);
    let (revoked, invalid) = (3usize, 1usize);
    let shared = (0..4096u64)
        .map(|i| i.wrapping_mul(0x2545_f491_4f6c_dd1d))
        .filter(|&x| {
            let decoy = x ^ G.wrapping_mul(revoked as u64) ^ G.wrapping_mul(invalid as u64);
            slot_of(&key, revoked, Some(KeyId(x))) == slot_of(&key, invalid, Some(KeyId(decoy)))
        })
        .count();
    // About 4 096 / 1 024 by chance.
    assert!(shared < 32, "{shared} of 4096");
    // And which slot is the key's: another key, other slots.
    let other = foldhash::fast::FixedState::with_seed(0x0dd);
    let moved = (0..64u64)
        .filter(|&x| slot_of(&key, 1, Some(KeyId(x))) != slot_of(&other, 1, Some(KeyId(x))))
        .count();
    assert!(moved > 48, "{moved} of 64");
}

/// A flood of failed verifications under many key ids (anyone can send tokens with
/// random ids) fills every hashed slot; the lines logged without a key id (a refused
/// secret-scanning report, the axum layer's 503 warning, a sink's failure) must keep
/// their own budget, not lose every line to it.
#[test]
fn a_flood_of_failures_leaves_the_other_kinds_their_lines() {
    let at = 7_777_777_770;
    for i in 0..200_000u64 {
        let id = KeyId(i.wrapping_mul(0x2545_f491_4f6c_dd1d));
        TracingAudit::admit(Bounded::Failed(FailureClass::ALL[0]), Some(id), at);
    }
    for kind in [
        Bounded::SinkFailed,
        Bounded::ScanRefused,
        Bounded::HttpUnavailable,
    ] {
        assert!(
            TracingAudit::admit(kind, None, at),
            "{} lost its lines",
            kind.action()
        );
    }
}

/// The `suppressed=N` summary of a kind is on the target of that kind's own lines: a host
/// that keeps `api_keys::http` or `api_keys::secret_scanning` (and filters out
/// `api_keys::audit`, its own sink recording the events) saw the first lines of each
/// window and never the count of those left out.
#[test]
fn each_summary_is_on_the_target_of_its_lines() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let at = 8_888_888_880;
    for (kind, target) in [
        (Bounded::ScanRefused, "api_keys::secret_scanning"),
        (Bounded::HttpUnavailable, "api_keys::http"),
    ] {
        for _ in 0..=LOG_FULL_PER_WINDOW {
            TracingAudit::admit(kind, None, at);
        }
        buf.0.lock().unwrap().clear();
        TracingAudit::admit(kind, None, at + LOG_WINDOW_SECS);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("suppressed=1"))
            .unwrap_or_else(|| panic!("no summary: {text}"));
        assert!(line.contains(&format!(" {target}: ")), "{line}");
    }
}
