//! Which counter a lease is of, owned (the lease map's key) and borrowed from a request (to
//! find a lease without formatting or allocating).

use std::hash::{Hash, Hasher};

use crate::limits::engine::{UsageRequest, window_of};
use crate::{LimitScope, MAX_RATE_LIMITS, RateLimit};

/// Which counter a lease is of: one limit (name and window length) of a key or of an
/// organization, in one window (its index since the epoch). Its Redis key is kept in the
/// [`Lease`], formatted once when the lease is first needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LeaseId {
    name: Box<str>,
    window_ms: u64,
    idx: i64,
    key: u64,
    org: Option<Box<str>>,
}

/// A [`LeaseId`] borrowed from a request: a verification finds its leases without formatting
/// or allocating anything.
#[derive(Clone, Copy, Debug)]
pub(super) struct LeaseRef<'a> {
    name: &'a str,
    window_ms: u64,
    idx: i64,
    /// The key's id for a key's limit (0 for an organization's).
    key: u64,
    /// The organization for an org-wide limit.
    org: Option<&'a str>,
}

impl<'a> LeaseRef<'a> {
    const NONE: LeaseRef<'static> = LeaseRef {
        name: "",
        window_ms: 0,
        idx: 0,
        key: 0,
        org: None,
    };

    /// The counter of limit `l` of `req`'s key in the window containing `now_ms`.
    pub(super) fn of(l: &'a RateLimit, req: &UsageRequest<'a>, now_ms: i64) -> Self {
        let (key, org) = match l.scope() {
            LimitScope::Key => (req.key.value(), None),
            LimitScope::Org => (0, Some(req.org.as_str())),
        };
        LeaseRef {
            name: l.name(),
            window_ms: l.window_ms(),
            idx: window_of(l, now_ms).0,
            key,
            org,
        }
    }

    pub(super) fn to_id(self) -> LeaseId {
        LeaseId {
            name: self.name.into(),
            window_ms: self.window_ms,
            idx: self.idx,
            key: self.key,
            org: self.org.map(Into::into),
        }
    }
}

/// The counters of a request's limits, in its order.
#[derive(Clone, Copy)]
pub(super) struct Ids<'a> {
    ids: [LeaseRef<'a>; MAX_RATE_LIMITS],
    len: usize,
}

impl<'a> Ids<'a> {
    pub(super) fn of(req: &UsageRequest<'a>) -> Self {
        let mut ids = [LeaseRef::NONE; MAX_RATE_LIMITS];
        for (id, l) in ids.iter_mut().zip(req.limits) {
            *id = LeaseRef::of(l, req, req.now_ms);
        }
        Ids {
            ids,
            len: req.limits.len().min(MAX_RATE_LIMITS),
        }
    }

    pub(super) fn as_slice(&self) -> &[LeaseRef<'a>] {
        &self.ids[..self.len]
    }
}

// One hash for a `LeaseId` and the `LeaseRef` naming the same counter.
fn hash_parts<H: Hasher>(
    h: &mut H,
    name: &str,
    window_ms: u64,
    idx: i64,
    key: u64,
    org: Option<&str>,
) {
    name.hash(h);
    window_ms.hash(h);
    idx.hash(h);
    key.hash(h);
    org.hash(h);
}

impl Hash for LeaseId {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(
            h,
            &self.name,
            self.window_ms,
            self.idx,
            self.key,
            self.org.as_deref(),
        );
    }
}

impl Hash for LeaseRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(h, self.name, self.window_ms, self.idx, self.key, self.org);
    }
}

impl hashbrown::Equivalent<LeaseId> for LeaseRef<'_> {
    fn equivalent(&self, id: &LeaseId) -> bool {
        self.key == id.key
            && self.idx == id.idx
            && self.window_ms == id.window_ms
            && *self.name == *id.name
            && self.org == id.org.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;
    use std::time::Duration;

    use super::*;
    use crate::limits::redis::lease::{Lease, Leases};
    use crate::{KeyId, OrgId};

    #[test]
    fn a_borrowed_counter_name_finds_exactly_its_own_lease() {
        let org = OrgId::try_new("acme").unwrap();
        let other_org = OrgId::try_new("acmf").unwrap();
        let limits = [
            RateLimit::new("minute", 10, Duration::from_secs(60)),
            RateLimit::new("minute", 10, Duration::from_secs(60)).per_org(),
            RateLimit::new("minute", 10, Duration::from_secs(3600)),
        ];
        fn req(key: u64, org: &OrgId) -> UsageRequest<'_> {
            UsageRequest {
                key: KeyId(key),
                org,
                limits: &[],
                credits: None,
                cost: 1,
                now_ms: 0,
            }
        }
        let ids = [
            LeaseRef::of(&limits[0], &req(7, &org), 0),
            LeaseRef::of(&limits[0], &req(8, &org), 0),
            LeaseRef::of(&limits[0], &req(7, &org), 60_000),
            LeaseRef::of(&limits[1], &req(7, &org), 0),
            LeaseRef::of(&limits[1], &req(8, &org), 0),
            LeaseRef::of(&limits[1], &req(7, &other_org), 0),
            LeaseRef::of(&limits[2], &req(7, &org), 0),
        ];
        let mut map = Leases::default();
        for (i, id) in ids.iter().enumerate() {
            let l = &limits[0];
            map.entry(id.to_id())
                .or_insert_with(|| Lease::new(l, 0, format!("k{i}")));
        }
        // Two keys of one organization share the org-wide counter (ids 3 and 4); every other
        // pair differs by key, window, scope, organization or window length.
        assert_eq!(map.len(), ids.len() - 1);
        let hasher = *map.hasher();
        for (i, id) in ids.iter().enumerate() {
            let owned = id.to_id();
            assert_eq!(hasher.hash_one(id), hasher.hash_one(&owned));
            let found = &map.get(id).unwrap().redis_key;
            let expected = if i == 4 {
                "k3".to_owned()
            } else {
                format!("k{i}")
            };
            assert_eq!(found, &expected);
        }
    }
}
