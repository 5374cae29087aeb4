//! What the record's tags cover: the canonical encodings of a record (format 2) and their
//! AES-CMAC. Each field has one encoding (fixed-width integers, length-prefixed strings,
//! presence bytes), and only records in the one form the encoding assumes are accepted, so two
//! different records never share a tag.

use cmac::Mac;
use time::OffsetDateTime;

use super::{KeyRecord, LimitScope, Refill, RevocationReason};
use crate::crypto::Subkeys;
use crate::{KeyId, Scope};

const DOMAIN: &[u8] = b"api-keys/record";
const DETAILS_DOMAIN: &[u8] = b"api-keys/record-details";

/// A string with a `u32` big-endian length prefix (canonical encodings).
fn string(out: &mut (impl FnMut(&[u8]) + ?Sized), s: &str) {
    out(&(s.len() as u32).to_be_bytes());
    out(s.as_bytes());
}

/// Feeds an encoding to the MAC through a stack buffer: one `update` per [`MacFeed::CAP`]
/// bytes instead of one per field. The encoding streams ~40 pieces of 1 to 16 bytes for a
/// typical record, and the MAC's block-buffer bookkeeping per call cost more than its AES
/// work. Nothing secret passes through (the encoding holds the ciphertext, not the secret).
/// It borrows the MAC state, which borrows the cipher (see [`Subkeys::mac`]): nothing large
/// is copied or moved.
struct MacFeed<'m, 'k> {
    mac: &'m mut cmac::Cmac<&'k aes::Aes128>,
    buf: [u8; MacFeed::CAP],
    len: usize,
}

impl MacFeed<'_, '_> {
    const CAP: usize = 256;

    /// The tag of what `encode` streams, under `keys`.
    fn tag(keys: &Subkeys, encode: impl FnOnce(&mut MacFeed<'_, '_>)) -> [u8; 16] {
        let mut mac = keys.mac();
        let mut feed = MacFeed {
            mac: &mut mac,
            buf: [0; MacFeed::CAP],
            len: 0,
        };
        encode(&mut feed);
        feed.mac.update(&feed.buf[..feed.len]);
        let mut out = [0u8; 16];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    #[inline]
    fn push(&mut self, b: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + b.len()) {
            room.copy_from_slice(b);
            self.len += b.len();
        } else {
            self.mac.update(&self.buf[..self.len]);
            self.len = 0;
            if b.len() <= Self::CAP {
                self.buf[..b.len()].copy_from_slice(b);
                self.len = b.len();
            } else {
                self.mac.update(b);
            }
        }
    }
}

impl KeyRecord {
    /// Whether the typed values are in the one form the encoding assumes: scopes strictly
    /// sorted (so unique) with valid custom names, timestamps in whole seconds. Anything else
    /// would let two different records share one tag.
    pub(super) fn is_canonical(&self) -> bool {
        let whole = |t: &OffsetDateTime| t.nanosecond() == 0;
        self.scopes.windows(2).all(|w| w[0] < w[1])
            && self.scopes.iter().all(|s| match s {
                Scope::Custom(c) => Scope::custom(&**c).is_ok(),
                _ => true,
            })
            && whole(&self.created_at)
            && self.expires_at.iter().all(whole)
            && self.revoked_at.iter().all(whole)
            && crate::limits::check_limits(&self.rate_limits, self.credits.as_ref()).is_ok()
    }

    pub(super) fn compute_tag(&self, keys: &Subkeys) -> [u8; 16] {
        MacFeed::tag(keys, |feed| self.canonical(&mut |b: &[u8]| feed.push(b)))
    }

    pub(super) fn compute_details_tag(&self, keys: &Subkeys) -> [u8; 16] {
        MacFeed::tag(keys, |feed| {
            self.canonical_details(&mut |b: &[u8]| feed.push(b))
        })
    }

    /// Streams the canonical encoding of the revocation details (under `details_tag`): the
    /// domain label `api-keys/record-details`, format, key version, class, id, revoked_by
    /// (`Option` of a string), revocation (`Option`: a tag byte, 1 manual, 2 leaked + source,
    /// 3 unused, 4 departed user, 5 rolled).
    pub(crate) fn canonical_details(&self, out: &mut (impl FnMut(&[u8]) + ?Sized)) {
        string(out, std::str::from_utf8(DETAILS_DOMAIN).unwrap_or_default());
        out(&self.format.to_be_bytes());
        out(&self.sealed.key_version.to_be_bytes());
        string(out, &self.class);
        out(&self.id.value().to_be_bytes());
        match &self.revoked_by {
            Some(u) => {
                out(&[1]);
                string(out, u.as_str());
            }
            None => out(&[0]),
        }
        match &self.revocation {
            None => out(&[0]),
            Some(r) => {
                out(&[1]);
                match r {
                    RevocationReason::Manual => out(&[1]),
                    RevocationReason::Leaked { source } => {
                        out(&[2]);
                        string(out, source);
                    }
                    RevocationReason::Unused => out(&[3]),
                    RevocationReason::DepartedUser => out(&[4]),
                    RevocationReason::Rolled => out(&[5]),
                }
            }
        }
    }

    /// Streams the canonical encoding of every field under the tag (format 2): domain label,
    /// format, key version, class, id, org, scopes, created_at, created_by, expires_at,
    /// revoked_at, the details tag (16 bytes: it stands for revoked_by and the revocation
    /// reason, see [`KeyRecord::canonical_details`]), replaces, replaced_by, owner, meta,
    /// rate_limits, credits, iv, ciphertext. Integers fixed-width big-endian, strings with a
    /// `u32` length prefix, lists and maps with a `u32` count; optional timestamps and ids
    /// fixed-width (presence byte + 8 bytes, zero when absent), other `Option`s with a
    /// presence byte; scopes sorted and de-duplicated with a tag byte per variant (1 scim,
    /// 2 prometheus, 3 custom + string); meta entries in key order (key, value); each rate
    /// limit as name, limit (`u64`), window in ms (`u64`), scope byte (0 key, 1 org); credits
    /// as initial (`u64`) and an optional refill (1 daily + amount, 2 monthly + day byte +
    /// amount). What a revoke, a roll or an expiry change writes never changes the length, so
    /// verifying costs the same in every state.
    pub(crate) fn canonical(&self, out: &mut (impl FnMut(&[u8]) + ?Sized)) {
        // Fixed width whether present or not (presence byte + 8 bytes, zero when absent): a
        // revoke, a roll or an expiry change never changes the encoding's length.
        fn opt_time(out: &mut (impl FnMut(&[u8]) + ?Sized), t: Option<OffsetDateTime>) {
            // The same conversion either way (the time's state must not show in the timing).
            let v = std::hint::black_box(t.unwrap_or(OffsetDateTime::UNIX_EPOCH)).unix_timestamp();
            let present = u8::from(t.is_some());
            out(&[present]);
            out(&(v * i64::from(present)).to_be_bytes());
        }
        fn opt_id(out: &mut (impl FnMut(&[u8]) + ?Sized), id: Option<KeyId>) {
            let (present, v) = match id {
                Some(id) => (1u8, id.value()),
                None => (0, 0),
            };
            out(&[present]);
            out(&v.to_be_bytes());
        }
        string(out, std::str::from_utf8(DOMAIN).unwrap_or_default());
        out(&self.format.to_be_bytes());
        out(&self.sealed.key_version.to_be_bytes());
        string(out, &self.class);
        out(&self.id.value().to_be_bytes());
        string(out, self.org.as_str());
        out(&(self.scopes.len() as u32).to_be_bytes());
        for s in &self.scopes {
            match s {
                Scope::Scim => out(&[1]),
                Scope::Prometheus => out(&[2]),
                Scope::Custom(c) => {
                    out(&[3]);
                    string(out, c);
                }
            }
        }
        out(&self.created_at.unix_timestamp().to_be_bytes());
        string(out, self.created_by.as_str());
        opt_time(out, self.expires_at);
        opt_time(out, self.revoked_at);
        out(&self.sealed.details_tag);
        opt_id(out, self.replaces);
        opt_id(out, self.replaced_by);
        match &self.owner {
            Some(o) => {
                out(&[1]);
                string(out, o);
            }
            None => out(&[0]),
        }
        out(&(self.meta.len() as u32).to_be_bytes());
        for (k, v) in &self.meta {
            string(out, k);
            string(out, v);
        }
        out(&(self.rate_limits.len() as u32).to_be_bytes());
        for l in &self.rate_limits {
            string(out, l.name());
            out(&l.limit().to_be_bytes());
            out(&l.window_ms().to_be_bytes());
            out(&[match l.scope() {
                LimitScope::Key => 0,
                LimitScope::Org => 1,
            }]);
        }
        match &self.credits {
            None => out(&[0]),
            Some(c) => {
                out(&[1]);
                out(&c.initial().to_be_bytes());
                match c.refill_schedule() {
                    None => out(&[0]),
                    Some(Refill::Daily { amount }) => {
                        out(&[1]);
                        out(&amount.to_be_bytes());
                    }
                    Some(Refill::Monthly { day, amount }) => {
                        out(&[2, day]);
                        out(&amount.to_be_bytes());
                    }
                }
            }
        }
        out(&self.sealed.iv);
        out(&self.sealed.ciphertext);
    }
}
