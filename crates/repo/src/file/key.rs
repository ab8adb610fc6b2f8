//! Key files (`keys/<id>`): the master key encrypted under a key derived from a password.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, Key};

/// scrypt cost parameters (restic's defaults when it cannot calibrate: N=2^15, r=8, p=1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// CPU/memory cost, a power of two.
    pub n: u64,
    /// Block size.
    pub r: u32,
    /// Parallelism.
    pub p: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            n: 1 << 15,
            r: 8,
            p: 1,
        }
    }
}

/// A key file as stored (plain JSON, not encrypted as a whole).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// Creation time.
    #[serde(default)]
    pub created: Option<DateTime<chrono::FixedOffset>>,
    /// User who created the key.
    #[serde(default)]
    pub username: String,
    /// Host the key was created on.
    #[serde(default)]
    pub hostname: String,
    /// Key derivation function; only `scrypt` exists.
    pub kdf: String,
    /// scrypt N.
    #[serde(rename = "N")]
    pub n: u64,
    /// scrypt r.
    pub r: u32,
    /// scrypt p.
    pub p: u32,
    /// Salt, base64.
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    /// The encrypted master key JSON, base64.
    #[serde(with = "b64")]
    pub data: Vec<u8>,
}

/// The decrypted content of a key file's `data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasterKeyJson {
    /// The Poly1305-AES MAC key.
    pub mac: MacJson,
    /// The AES-256 key, base64.
    #[serde(with = "b64")]
    pub encrypt: Vec<u8>,
}

/// The MAC part of [`MasterKeyJson`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MacJson {
    /// Poly1305-AES `k`, base64.
    #[serde(with = "b64")]
    pub k: Vec<u8>,
    /// Poly1305-AES `r`, base64.
    #[serde(with = "b64")]
    pub r: Vec<u8>,
}

/// Why a key could not be derived or unwrapped.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not scrypt or bad parameters.
    #[error("unsupported key derivation {kdf} (N={n}, r={r}, p={p})")]
    Kdf {
        /// kdf name
        kdf: String,
        /// N
        n: u64,
        /// r
        r: u32,
        /// p
        p: u32,
    },
    /// The password does not open this key file.
    #[error("wrong password for this key file")]
    WrongPassword,
    /// The decrypted master key is malformed.
    #[error("malformed master key: {0}")]
    Malformed(String),
}

impl KeyFile {
    /// Derives the user key from `password` with this file's scrypt parameters.
    pub fn user_key(&self, password: &[u8]) -> Result<Key, KeyError> {
        derive(password, &self.salt, self.kdf_params()?)
    }

    fn kdf_params(&self) -> Result<KdfParams, KeyError> {
        let bad = || KeyError::Kdf {
            kdf: self.kdf.clone(),
            n: self.n,
            r: self.r,
            p: self.p,
        };
        if self.kdf != "scrypt" || !self.n.is_power_of_two() || self.n < 2 {
            return Err(bad());
        }
        Ok(KdfParams {
            n: self.n,
            r: self.r,
            p: self.p,
        })
    }

    /// Opens the master key with `password` (slow: runs scrypt).
    pub fn open(&self, password: &[u8]) -> Result<Key, KeyError> {
        self.open_with_user_key(&self.user_key(password)?)
    }

    /// Opens the master key with an already derived user key.
    pub fn open_with_user_key(&self, user_key: &Key) -> Result<Key, KeyError> {
        let plain = user_key.decrypt(&self.data).map_err(|e| match e {
            CryptoError::Mac | CryptoError::TooShort(_) => KeyError::WrongPassword,
        })?;
        let mk: MasterKeyJson =
            serde_json::from_slice(&plain).map_err(|e| KeyError::Malformed(e.to_string()))?;
        let (Ok(enc), Ok(k), Ok(r)) = (
            <[u8; 32]>::try_from(mk.encrypt.as_slice()),
            <[u8; 16]>::try_from(mk.mac.k.as_slice()),
            <[u8; 16]>::try_from(mk.mac.r.as_slice()),
        ) else {
            return Err(KeyError::Malformed("wrong key lengths".into()));
        };
        Ok(Key::from_parts(&enc, &k, &r))
    }

    /// Wraps `master` under `password` into a new key file.
    pub fn create(
        master: &Key,
        password: &[u8],
        params: KdfParams,
        username: &str,
        hostname: &str,
    ) -> Result<Self, KeyError> {
        let salt: [u8; 64] = {
            let mut s = [0u8; 64];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
            s
        };
        let user_key = derive(password, &salt, params)?;
        let mk = MasterKeyJson {
            mac: MacJson {
                k: master.mac_k().to_vec(),
                r: master.mac_r().to_vec(),
            },
            encrypt: master.encrypt_part().to_vec(),
        };
        let mut plain = serde_json::to_vec(&mk).map_err(|e| KeyError::Malformed(e.to_string()))?;
        let data = user_key.encrypt(&plain);
        zeroize::Zeroize::zeroize(&mut plain);
        Ok(KeyFile {
            created: Some(Local::now().fixed_offset()),
            username: username.to_string(),
            hostname: hostname.to_string(),
            kdf: "scrypt".into(),
            n: params.n,
            r: params.r,
            p: params.p,
            salt: salt.to_vec(),
            data,
        })
    }
}

fn derive(password: &[u8], salt: &[u8], params: KdfParams) -> Result<Key, KeyError> {
    let bad = || KeyError::Kdf {
        kdf: "scrypt".into(),
        n: params.n,
        r: params.r,
        p: params.p,
    };
    let log_n = u8::try_from(params.n.trailing_zeros()).map_err(|_| bad())?;
    let sp = scrypt::Params::new(log_n, params.r, params.p, 64).map_err(|_| bad())?;
    let mut out = [0u8; 64];
    scrypt::scrypt(password, salt, &sp, &mut out).map_err(|_| bad())?;
    let key = Key::from_bytes(out);
    zeroize::Zeroize::zeroize(&mut out);
    Ok(key)
}

pub(crate) mod b64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        n: 1 << 10,
        r: 8,
        p: 1,
    };

    #[test]
    fn wraps_and_unwraps_the_master_key() {
        let master = Key::random();
        let kf = KeyFile::create(&master, b"secret", FAST, "u", "h").unwrap();
        let json = serde_json::to_string(&kf).unwrap();
        assert!(json.contains("\"N\":1024"));
        let kf: KeyFile = serde_json::from_str(&json).unwrap();
        let opened = kf.open(b"secret").unwrap();
        assert_eq!(opened.as_bytes(), master.as_bytes());
        assert!(matches!(kf.open(b"wrong"), Err(KeyError::WrongPassword)));
    }
}
