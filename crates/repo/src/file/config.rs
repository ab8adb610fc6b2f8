//! The `config` file: repository format version, id and chunker polynomial.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Id;

/// The decrypted `config` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Repository format version: 1 (no compression) or 2 (zstd-compressed blobs and files).
    pub version: u32,
    /// Random repository id.
    pub id: Id,
    /// Irreducible polynomial of degree 53 used by the content-defined chunker.
    #[serde(serialize_with = "ser_pol", deserialize_with = "de_pol")]
    pub chunker_polynomial: u64,
}

fn ser_pol<S: Serializer>(pol: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{pol:x}"))
}

fn de_pol<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_is_a_hex_string() {
        let c = ConfigFile {
            version: 2,
            id: Id::hash(b"x"),
            chunker_polynomial: 0x3DA3358B4DC173,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains("\"chunker_polynomial\":\"3da3358b4dc173\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ConfigFile>(&json).unwrap(), c);
    }
}
