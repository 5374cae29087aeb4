//! Identifiers, scopes and actors.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::token::base62;

/// Longest accepted [`OrgId`] or [`UserId`], in bytes.
pub const MAX_ID_BYTES: usize = 128;

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Creates the identifier.
            ///
            /// # Panics
            /// If `id` is empty or longer than 128 bytes; use `try_new` for untrusted input.
            pub fn new(id: impl AsRef<str>) -> Self {
                match Self::try_new(id) {
                    Ok(v) => v,
                    Err(e) => panic!("{e}"),
                }
            }

            /// Creates the identifier, checking its length (1–128 bytes).
            ///
            /// # Errors
            /// [`Error::Policy`] if `id` is empty or longer than 128 bytes.
            pub fn try_new(id: impl AsRef<str>) -> Result<Self, Error> {
                let id = id.as_ref();
                if id.is_empty() || id.len() > MAX_ID_BYTES {
                    return Err(Error::Policy(format!(
                        "{} must be 1 to {MAX_ID_BYTES} bytes long",
                        $what
                    )));
                }
                Ok(Self(Arc::from(id)))
            }

            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&&*self.0).finish()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// An organization (tenant). Keys of one organization never authenticate another's.
    OrgId,
    "an organization id"
);
impl OrgId {
    /// The organization of a stored row whose org column is no organization's (empty, too
    /// long, not text): empty, which `new`, `try_new` and deserialization all refuse, so no
    /// actor belongs to it.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn nobody() -> Self {
        Self(Arc::from(""))
    }
}

name_id!(
    /// A user of the host product (the manager who created or revoked a key).
    UserId,
    "a user id"
);

/// The public identifier of a key: 64 random bits, shown in listings, logs and audit events,
/// and used as the store's lookup key.
///
/// Its text form is 11 base62 characters (`0-9A-Za-z`), fixed width, so that byte order of the
/// text equals numeric order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub(crate) u64);

impl KeyId {
    /// Length of the text form.
    pub const LEN: usize = 11;

    /// Parses the 11-character text form.
    ///
    /// # Errors
    /// [`Error::Malformed`] for any other input.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let b = s.as_bytes();
        if b.len() != Self::LEN {
            return Err(Error::Malformed);
        }
        base62::decode_u64(b).map(KeyId).ok_or(Error::Malformed)
    }

    /// The id's text form written into `out`.
    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        base62::encode_u64(self.0)
    }

    /// The id as a `String` (same as `to_string`).
    pub fn as_string(&self) -> String {
        self.to_string()
    }

    /// The raw 64-bit value.
    pub(crate) fn value(&self) -> u64 {
        self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.encode();
        // base62 output is ASCII.
        f.write_str(std::str::from_utf8(&b).unwrap_or_default())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl std::str::FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KeyId::parse(&s).map_err(|_| serde::de::Error::custom("invalid key id"))
    }
}

/// What a key may be used for.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// SCIM provisioning (`scim`).
    Scim,
    /// Prometheus scraping (`prometheus`).
    Prometheus,
    /// A host-defined scope matching `[a-z][a-z0-9._:-]{0,31}`, never a built-in name.
    Custom(Arc<str>),
}

/// Whether `name` matches `[a-z][a-z0-9._:-]{0,31}`, the spelling of every scope (the
/// built-in names included).
pub(crate) fn is_scope_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b[1..].iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b':' | b'-')
        })
}

impl Scope {
    /// A custom scope.
    ///
    /// # Errors
    /// [`Error::Policy`] unless `name` matches `[a-z][a-z0-9._:-]{0,31}` and is not a built-in
    /// scope name.
    pub fn custom(name: impl AsRef<str>) -> Result<Self, Error> {
        let name = name.as_ref();
        if !is_scope_name(name) {
            return Err(Error::Policy(
                "a custom scope must match [a-z][a-z0-9._:-]{0,31}".into(),
            ));
        }
        if name == "scim" || name == "prometheus" {
            return Err(Error::Policy(format!(
                "`{name}` is a built-in scope; use Scope::Scim or Scope::Prometheus"
            )));
        }
        Ok(Scope::Custom(Arc::from(name)))
    }

    /// Parses a scope's text form: `scim`, `prometheus` or a custom name.
    ///
    /// # Errors
    /// [`Error::Policy`] for an invalid custom name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "scim" => Ok(Scope::Scim),
            "prometheus" => Ok(Scope::Prometheus),
            other => Scope::custom(other),
        }
    }

    /// The scope's text form.
    pub fn as_str(&self) -> &str {
        match self {
            Scope::Scim => "scim",
            Scope::Prometheus => "prometheus",
            Scope::Custom(s) => s,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Scim => f.write_str("Scim"),
            Scope::Prometheus => f.write_str("Prometheus"),
            Scope::Custom(s) => write!(f, "Custom({s:?})"),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The role of an [`Actor`] in its organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// May generate, list, inspect, reveal, roll, revoke and delete the organization's keys.
    Manager,
    /// May not manage keys.
    Member,
}

/// The host's trusted assertion about its logged-in user: who they are, in which organization,
/// with which role. Build it from the host's own session; it is deliberately not
/// `Deserialize`, so it can never come from request data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    org: OrgId,
    user: UserId,
    role: Role,
}

impl Actor {
    /// A manager of `org`.
    pub fn manager(org: OrgId, user: UserId) -> Self {
        Actor {
            org,
            user,
            role: Role::Manager,
        }
    }

    /// A member (non-manager) of `org`.
    pub fn member(org: OrgId, user: UserId) -> Self {
        Actor {
            org,
            user,
            role: Role::Member,
        }
    }

    /// The actor's organization.
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// The actor's user id.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The actor's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the actor is a manager.
    pub fn is_manager(&self) -> bool {
        self.role == Role::Manager
    }
}
