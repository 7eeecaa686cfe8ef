//! Identifiers: content hashes, actors, repositories and hybrid logical clocks.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use ulid::Ulid;

macro_rules! hash_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        // The bytes are already uniform (blake3), so 8 of them make a good hash key;
        // equal values have equal prefixes, so this agrees with `Eq`. Hashing all 32
        // bytes showed up in the fold's profile.
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&self.0[..8]);
                state.write_u64(u64::from_le_bytes(prefix));
            }
        }

        impl $name {
            /// The blake3 hash of `bytes`.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }

            /// Lower-case hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex_encode(&self.0)
            }

            /// Parses 64 hex characters.
            pub fn from_hex(s: &str) -> Option<Self> {
                hex_decode32(s).map(Self)
            }

            /// The first 12 hex characters, for humans.
            pub fn short(&self) -> String {
                self.to_hex()[..12].to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::from_hex(s).ok_or_else(|| format!("not a 64-character hex hash: {s:?}"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_bytes(Hash32Visitor).map(Self)
            }
        }
    };
}

hash_type!(
    /// Identity of a change: blake3 of the change file's exact bytes.
    ChangeHash
);
hash_type!(
    /// Identity of a chunk blob: blake3 of its bytes.
    BlobHash
);
hash_type!(
    /// Identity of a snapshot object (metadata, chunk-manifest piece or coverage
    /// archive shard): blake3 of its exact bytes.
    ObjectHash
);

struct Hash32Visitor;

impl<'de> Visitor<'de> for Hash32Visitor {
    type Value = [u8; 32];
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("32 bytes")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        v.try_into()
            .map_err(|_| E::invalid_length(v.len(), &"32 bytes"))
    }
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn hex_decode32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

macro_rules! ulid_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(pub Ulid);

        impl $name {
            /// A fresh, random id.
            pub fn generate() -> Self {
                Self(Ulid::new())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Ulid::from_string(s)
                    .map(Self)
                    .map_err(|e| format!("not a ULID: {s:?} ({e})"))
            }
        }

        // 16 raw bytes on the wire: compact and with a single canonical form.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0.to_bytes())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_bytes(Ulid16Visitor).map(|b| Self(Ulid::from_bytes(b)))
            }
        }
    };
}

ulid_type!(
    /// A writer. Fresh for every writing handle; never shared by two writers at once.
    ActorId
);
ulid_type!(
    /// A repository, fixed at `init`. Changes of different repositories never merge.
    RepoId
);

struct Ulid16Visitor;

impl<'de> Visitor<'de> for Ulid16Visitor {
    type Value = [u8; 16];
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("16 bytes")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        v.try_into()
            .map_err(|_| E::invalid_length(v.len(), &"16 bytes"))
    }
}

/// Hybrid logical clock stamp: milliseconds since the Unix epoch in the high 48 bits,
/// a logical counter in the low 16. A change's stamp exceeds every dependency's, so
/// ordering by stamp extends the causal order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Hlc(pub u64);

impl Hlc {
    /// The smallest stamp strictly greater than every dependency's and not behind `now_ms`.
    pub fn next(now_ms: u64, deps: impl IntoIterator<Item = Hlc>) -> Hlc {
        let floor = deps
            .into_iter()
            .map(|h| h.0.saturating_add(1))
            .max()
            .unwrap_or(0);
        Hlc((now_ms << 16).max(floor))
    }

    /// The wall-clock part, in milliseconds since the Unix epoch.
    pub fn millis(self) -> u64 {
        self.0 >> 16
    }
}

/// Milliseconds since the Unix epoch from the local clock (0 if the clock is before 1970).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_hex_round_trip() {
        let h = ChangeHash::of(b"abc");
        assert_eq!(ChangeHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ChangeHash::from_hex("zz"), None);
        assert_eq!(ChangeHash::from_hex(&h.to_hex().to_uppercase()), None);
    }

    #[test]
    fn hlc_exceeds_deps_and_follows_clock() {
        assert_eq!(Hlc::next(5, []), Hlc(5 << 16));
        let dep = Hlc(100 << 16);
        assert_eq!(Hlc::next(5, [dep]), Hlc((100 << 16) + 1));
        assert_eq!(Hlc::next(200, [dep]), Hlc(200 << 16));
        assert_eq!(Hlc::next(0, [Hlc(u64::MAX)]), Hlc(u64::MAX));
    }
}
