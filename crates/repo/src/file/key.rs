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

/// Most memory scrypt may need for a key file (`128 * r * N` bytes). The parameters come from
/// a key file nobody has authenticated yet, so anyone who can write to the bucket could
/// otherwise make every command allocate what N says. restic calibrates within 60 MiB and
/// rustic defaults to 128 MiB; 1 GiB leaves room for deliberately slow keys.
pub const MAX_KDF_MEMORY: u64 = 1 << 30;
/// Most scrypt work a key file may ask for, in bytes of memory touched (`128 * r * N * p`):
/// time grows with p at constant memory. restic's calibration raises p until a derivation
/// takes 0.5 s (p of a few at N=2^15, r=8); this allows p up to 128 there, about ten
/// seconds of CPU.
pub const MAX_KDF_WORK: u64 = 4 << 30;

impl KdfParams {
    /// Refuses parameters scrypt cannot use or that exceed [`MAX_KDF_MEMORY`] or
    /// [`MAX_KDF_WORK`], before anything is allocated.
    pub fn check(&self) -> Result<(), KeyError> {
        let refuse = |reason: String| {
            Err(KeyError::KdfLimit {
                n: self.n,
                r: self.r,
                p: self.p,
                reason,
            })
        };
        if self.n < 2 || !self.n.is_power_of_two() {
            return refuse("N must be a power of two of at least 2".into());
        }
        if self.r == 0 || self.p == 0 {
            return refuse("r and p must be at least 1".into());
        }
        let memory = 128u64
            .checked_mul(u64::from(self.r))
            .and_then(|m| m.checked_mul(self.n));
        match memory {
            Some(m) if m <= MAX_KDF_MEMORY => {}
            _ => {
                return refuse(format!(
                    "they need {} of memory, more than the limit of {}",
                    mib(memory),
                    mib(Some(MAX_KDF_MEMORY))
                ))
            }
        }
        match memory.and_then(|m| m.checked_mul(u64::from(self.p))) {
            Some(w) if w <= MAX_KDF_WORK => Ok(()),
            _ => refuse(format!(
                "p={} asks for {} of scrypt work (128*r*N*p), more than the limit of {}",
                self.p,
                mib(memory.and_then(|m| m.checked_mul(u64::from(self.p)))),
                mib(Some(MAX_KDF_WORK))
            )),
        }
    }
}

fn mib(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{} MiB", b >> 20),
        None => "more than 2^64 bytes".into(),
    }
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
    /// scrypt parameters out of bounds (see [`KdfParams::check`]).
    #[error("refusing scrypt parameters N={n}, r={r}, p={p}: {reason}")]
    KdfLimit {
        /// N
        n: u64,
        /// r
        r: u32,
        /// p
        p: u32,
        /// Which bound is exceeded.
        reason: String,
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
        if self.kdf != "scrypt" {
            return Err(bad());
        }
        let params = KdfParams {
            n: self.n,
            r: self.r,
            p: self.p,
        };
        params.check()?;
        Ok(params)
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
    params.check()?;
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

    #[test]
    fn absurd_scrypt_parameters_are_refused_before_any_work() {
        let master = Key::random();
        let good = KeyFile::create(&master, b"secret", FAST, "u", "h").unwrap();
        let started = std::time::Instant::now();
        for (n, r, p) in [
            (1u64 << 40, 8, 1),    // 128 TiB
            (1 << 20, 8, 1),       // 1 GiB: the limit itself is fine, 2^21 is not
            (1 << 15, 1 << 20, 1), // r blows memory up
            (1 << 15, 8, 1 << 20), // p blows the time up
            (1 << 15, u32::MAX, u32::MAX),
            (u64::MAX, 8, 1), // not a power of two
            (0, 8, 1),
            (1 << 15, 0, 1),
            (1 << 15, 8, 0),
        ] {
            let mut kf = good.clone();
            (kf.n, kf.r, kf.p) = (n, r, p);
            if n == 1 << 20 {
                kf.n = 1 << 21;
            }
            match kf.open(b"secret") {
                Err(e @ KeyError::KdfLimit { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("refusing scrypt parameters"), "{msg}");
                }
                other => panic!("N={n} r={r} p={p}: {other:?}"),
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "refusing took {:?}",
            started.elapsed()
        );
        // What restic and rustic write is accepted.
        for (n, r, p) in [
            (1u64 << 15, 8, 1),
            (1 << 17, 8, 1),
            (1 << 15, 8, 9),
            (1 << 20, 8, 1),
        ] {
            KdfParams { n, r, p }.check().unwrap();
        }
        assert!(KdfParams {
            n: 1 << 15,
            r: 8,
            p: 128
        }
        .check()
        .is_ok());
        assert!(KdfParams {
            n: 1 << 15,
            r: 8,
            p: 129
        }
        .check()
        .is_err());
    }
}
