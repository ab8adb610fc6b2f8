//! 32-byte identifiers: SHA-256 of a blob's plaintext or of a stored file's bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A restic id: 32 bytes, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// SHA-256 of `data`.
    pub fn hash(data: &[u8]) -> Self {
        Id(Sha256::digest(data).into())
    }

    /// A fresh random id (repository ids, lock names).
    pub fn random() -> Self {
        Id(rand::random())
    }

    /// The full hex form.
    pub fn to_hex(&self) -> String {
        let mut text = String::with_capacity(64);
        text.extend(self.hex_digits().iter().map(|&b| char::from(b)));
        text
    }

    /// The 64 hex digits, on the stack: index files and trees write an id per blob, and a
    /// `String` per id (built a char at a time, as `hex::encode` does) showed in profiles.
    pub fn hex_digits(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (pair, b) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        out
    }

    /// The 8-digit short form restic prints.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

/// An [`Id`] computed piece by piece, for a blob produced as a stream (a tree merged from
/// sorted runs) that is never whole in memory as plaintext.
#[derive(Clone, Default)]
pub struct IdHasher(Sha256);

impl IdHasher {
    /// A hasher of nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The id of all bytes added.
    pub fn finish(self) -> Id {
        Id(self.0.finalize().into())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// The text was not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid id {0:?}: expected 64 hex digits")]
pub struct ParseIdError(pub String);

impl FromStr for Id {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_hex(s.as_bytes())
            .map(Id)
            .ok_or_else(|| ParseIdError(s.to_string()))
    }
}

/// Lower-case hex digits, as restic writes ids and Go writes escapes.
pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";

/// Nibble of each ASCII hex digit (either case); [`NOT_HEX`] for every other byte.
const HEX_DIGITS: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
const NOT_HEX: u8 = 0xff;

/// 64 hex digits to 32 bytes, by table: ids are most of what loading an index parses, and
/// this is several times faster than a general decoder.
fn decode_hex(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_DIGITS[usize::from(pair[0])],
            HEX_DIGITS[usize::from(pair[1])],
        );
        // A bad digit sets the high bit of one of them; checked once at the end.
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(out)
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let digits = self.hex_digits();
        // Hex digits are ASCII: this cannot fail.
        let text = std::str::from_utf8(&digits).map_err(serde::ser::Error::custom)?;
        s.serialize_str(text)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(IdVisitor)
    }
}

/// Parses the hex text where the deserializer holds it: no `String` per id when it reads
/// from a stream (an index of a million blobs is decoded from one).
struct IdVisitor;

impl serde::de::Visitor<'_> for IdVisitor {
    type Value = Id;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("64 hex digits")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Id, E> {
        s.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_hashed_in_pieces_is_the_id_of_the_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let mut h = IdHasher::new();
        for piece in data.chunks(777) {
            h.update(piece);
        }
        assert_eq!(h.finish(), Id::hash(&data));
        assert_eq!(IdHasher::new().finish(), Id::hash(b""));
    }

    #[test]
    fn hex_round_trip_and_sha256_of_empty_input() {
        let id = Id::hash(b"");
        assert_eq!(
            id.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(id.to_hex().parse::<Id>().unwrap(), id);
        assert!("abc".parse::<Id>().is_err());
        let upper = id.to_hex().to_uppercase();
        assert_eq!(upper.parse::<Id>().unwrap(), id);
        // Every non-digit byte in every place is refused.
        let hex = id.to_hex();
        for i in [0, 1, 31, 62, 63] {
            for c in ['g', 'G', '/', ':', '@', '`', ' ', 'é'] {
                let mut bad = hex.clone();
                bad.replace_range(i..i + 1, &c.to_string());
                assert!(bad.parse::<Id>().is_err(), "{bad}");
            }
        }
        assert!(format!("{hex}0").parse::<Id>().is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{hex}\""));
        assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
        // Every byte value, against the general encoder.
        for k in 0..8 {
            let some = Id(std::array::from_fn(|i| (k * 32 + i) as u8));
            assert_eq!(some.to_hex(), hex::encode(some.0));
            assert_eq!(some.to_string(), hex::encode(some.0));
        }
    }
}
