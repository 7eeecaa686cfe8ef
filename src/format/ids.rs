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

/// Bits of an [`Hlc`] that hold the logical counter; the rest hold milliseconds.
pub const HLC_COUNTER_BITS: u32 = 16;

/// How far (in milliseconds) a change's clock may run ahead of the greatest stamp among
/// the changes it references (deps and node references): 30 days. A writer whose real
/// clock is right can work offline on top of old changes for a month; beyond that its
/// stamps are clamped to this lead and stay valid. A stamp further ahead is invalid
/// (spec/format.md §3.6), so a broken or hostile clock cannot drag every later change
/// (and every concurrent register) into the far future.
pub const MAX_CLOCK_LEAD_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Greatest stamp the wall-clock part may reach: 2^62 (milliseconds below 2^46, around
/// the year 4200). Changes with no references may carry up to this; writers never stamp
/// from the wall clock above it.
pub const CAP_HLC: u64 = 1 << 62;

/// No valid change carries a stamp above 2^63, whatever it references. Past
/// [`CAP_HLC`] a stamp grows by at most 2^16 per change, so reaching this takes 2^46
/// chained changes: it is never reached in practice, and `u64` arithmetic on valid
/// stamps never overflows.
pub const HARD_MAX_HLC: u64 = 1 << 63;

/// Hybrid logical clock stamp: milliseconds since the Unix epoch in the high 48 bits,
/// a logical counter in the low 16. A change's stamp exceeds every dependency's, so
/// ordering by stamp extends the causal order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Hlc(pub u64);

impl Hlc {
    /// The greatest stamp a change may carry, given the greatest stamp among the changes
    /// it references (`None`: it references none). Depends on nothing else, so every
    /// reader decides alike (spec/format.md §3.6):
    ///
    /// `max(r + 2^16, min(((r.ms + MAX_CLOCK_LEAD_MS) << 16) | 0xFFFF, CAP_HLC))`, never
    /// above [`HARD_MAX_HLC`]; [`CAP_HLC`] without references.
    pub fn bound(max_ref: Option<Hlc>) -> Hlc {
        let Some(r) = max_ref else {
            return Hlc(CAP_HLC);
        };
        // An overflow here means "above the cap": the cap then decides.
        let lead = r
            .millis()
            .checked_add(MAX_CLOCK_LEAD_MS)
            .and_then(Self::from_millis)
            .map_or(CAP_HLC, |h| (h.0 | Self::COUNTER_MASK).min(CAP_HLC));
        // Room for a writer whose references are at or past the cap to go on. An
        // overflow means far above the hard maximum, which then decides.
        let Some(step) = r.0.checked_add(1 << HLC_COUNTER_BITS) else {
            return Hlc(HARD_MAX_HLC);
        };
        Hlc(step.max(lead).min(HARD_MAX_HLC))
    }

    /// The stamp an honest writer gives a change whose references have greatest stamp
    /// `max_ref`, at wall-clock time `now_ms`:
    /// `max(r + 1, min(now_ms << 16, (r.ms + MAX_CLOCK_LEAD_MS) << 16, CAP_HLC))`.
    /// It follows the clock when it can, exceeds every reference, and is always within
    /// [`Hlc::bound`]. `None` when no valid stamp exists (a reference at
    /// [`HARD_MAX_HLC`]); never saturates or wraps.
    pub fn next(now_ms: u64, max_ref: Option<Hlc>) -> Option<Hlc> {
        // Overflowing shifts mean "later than the cap"; the cap then decides.
        let mut clock = Self::from_millis(now_ms).map_or(CAP_HLC, |h| h.0.min(CAP_HLC));
        let Some(r) = max_ref else {
            return Some(Hlc(clock));
        };
        if let Some(lead) = r
            .millis()
            .checked_add(MAX_CLOCK_LEAD_MS)
            .and_then(Self::from_millis)
        {
            clock = clock.min(lead.0);
        }
        let floor = r.0.checked_add(1)?;
        let hlc = Hlc(floor.max(clock));
        (hlc <= Self::bound(Some(r))).then_some(hlc)
    }

    /// The wall-clock part, in milliseconds since the Unix epoch.
    pub fn millis(self) -> u64 {
        self.0 >> HLC_COUNTER_BITS
    }

    /// The stamp `ms << 16` with counter 0, `None` if `ms` does not fit in 48 bits.
    pub fn from_millis(ms: u64) -> Option<Hlc> {
        (ms <= u64::MAX >> HLC_COUNTER_BITS).then_some(Hlc(ms << HLC_COUNTER_BITS))
    }

    const COUNTER_MASK: u64 = (1 << HLC_COUNTER_BITS) - 1;
}

/// Milliseconds since the Unix epoch from the local clock (0 if the clock is before
/// 1970, `u64::MAX` if it is beyond what a `u64` holds: never wraps).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
        assert_eq!(Hlc::next(5, None), Some(Hlc(5 << 16)));
        let dep = Hlc(100 << 16);
        assert_eq!(Hlc::next(5, Some(dep)), Some(Hlc((100 << 16) + 1)));
        assert_eq!(Hlc::next(200, Some(dep)), Some(Hlc(200 << 16)));
        // A clock far ahead of the references is clamped to the lead.
        assert_eq!(
            Hlc::next(u64::MAX, Some(dep)),
            Some(Hlc((100 + MAX_CLOCK_LEAD_MS) << 16))
        );
        assert_eq!(Hlc::next(u64::MAX, None), Some(Hlc(CAP_HLC)));
        // Past the cap a writer still steps by one, up to the hard maximum.
        assert_eq!(Hlc::next(0, Some(Hlc(CAP_HLC))), Some(Hlc(CAP_HLC + 1)));
        assert_eq!(
            Hlc::next(0, Some(Hlc(HARD_MAX_HLC - 1))),
            Some(Hlc(HARD_MAX_HLC))
        );
        // No valid stamp: an error for the caller, never a saturated stamp.
        assert_eq!(Hlc::next(0, Some(Hlc(HARD_MAX_HLC))), None);
        assert_eq!(Hlc::next(0, Some(Hlc(u64::MAX))), None);
    }

    #[test]
    fn hlc_bound() {
        assert_eq!(Hlc::bound(None), Hlc(CAP_HLC));
        let dep = Hlc(100 << 16);
        assert_eq!(
            Hlc::bound(Some(dep)),
            Hlc(((100 + MAX_CLOCK_LEAD_MS) << 16) | 0xFFFF)
        );
        assert_eq!(Hlc::bound(Some(Hlc(CAP_HLC))), Hlc(CAP_HLC + (1 << 16)));
        assert_eq!(Hlc::bound(Some(Hlc(u64::MAX))), Hlc(HARD_MAX_HLC));
        assert_eq!(
            Hlc::bound(Some(Hlc(CAP_HLC - 1))).0,
            CAP_HLC - 1 + (1 << 16)
        );
    }
}
