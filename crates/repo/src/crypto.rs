//! restic's authenticated encryption: AES-256-CTR with a random 16-byte IV, MAC'd with
//! Poly1305-AES over the ciphertext. Layout on disk: `IV || ciphertext || MAC`.
//!
//! The MAC is verified before a single byte is decrypted (the AEAD implementation checks the tag
//! first), so tampered data never reaches a parser.

use aes256ctr_poly1305aes::aead::AeadInPlace;
use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use zeroize::Zeroize;

/// Bytes added to every encrypted message: IV and MAC.
pub const OVERHEAD: usize = IV_LEN + MAC_LEN;
const IV_LEN: usize = 16;
const MAC_LEN: usize = 16;

/// Decryption failed: the data is too short or its MAC does not match (tampering, corruption or
/// the wrong key).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Shorter than IV + MAC.
    #[error("ciphertext too short ({0} bytes)")]
    TooShort(usize),
    /// The Poly1305 tag does not authenticate the ciphertext.
    #[error("MAC check failed (data corrupted or wrong key)")]
    Mac,
}

/// A 64-byte restic key: 32 bytes AES-256 key, 16 bytes Poly1305 `k`, 16 bytes Poly1305 `r`.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; 64],
    aead: Aes256CtrPoly1305Aes,
}

impl Key {
    /// Builds a key from its three parts.
    pub fn from_parts(encrypt: &[u8; 32], mac_k: &[u8; 16], mac_r: &[u8; 16]) -> Self {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(encrypt);
        bytes[32..48].copy_from_slice(mac_k);
        bytes[48..].copy_from_slice(mac_r);
        Self::from_bytes(bytes)
    }

    /// Builds a key from the 64 raw bytes (`encrypt || k || r`).
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        let aead = Aes256CtrPoly1305Aes::new((&bytes).into());
        Key { bytes, aead }
    }

    /// A fresh random key (a new master key).
    pub fn random() -> Self {
        Self::from_bytes(rand_bytes())
    }

    /// The raw 64 bytes; handle with care (sealing, key files).
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.bytes
    }

    /// AES key part.
    pub fn encrypt_part(&self) -> &[u8] {
        &self.bytes[..32]
    }

    /// Poly1305 `k` part.
    pub fn mac_k(&self) -> &[u8] {
        &self.bytes[32..48]
    }

    /// Poly1305 `r` part.
    pub fn mac_r(&self) -> &[u8] {
        &self.bytes[48..]
    }

    /// Encrypts `plaintext` under a fresh random IV: `IV || ciphertext || MAC`.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.encrypt_into(plaintext, &mut out);
        out
    }

    /// Appends the encryption of `plaintext` to `out` (lets the packer write in place).
    pub fn encrypt_into(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&[0; IV_LEN]);
        out.extend_from_slice(plaintext);
        self.seal_from(out, start);
    }

    /// Encrypts `buf` in place: on return it holds `IV || ciphertext || MAC`. The plaintext is
    /// moved up by the IV's 16 bytes (a memmove, cheap next to the cipher); with [`OVERHEAD`]
    /// spare capacity nothing is reallocated, so a blob is sealed in the buffer it was read
    /// into instead of a fresh allocation per blob.
    pub fn seal_in_place(&self, buf: &mut Vec<u8>) {
        let len = buf.len();
        buf.reserve(OVERHEAD);
        buf.resize(len + IV_LEN, 0);
        buf.copy_within(0..len, IV_LEN);
        self.seal_from(buf, 0);
    }

    /// Seals `buf[start..]`, which is `IV_LEN` bytes of room for the IV and the plaintext:
    /// writes a fresh IV there, encrypts the rest in place and appends the MAC.
    fn seal_from(&self, buf: &mut Vec<u8>, start: usize) {
        let iv: [u8; IV_LEN] = rand::random();
        buf[start..start + IV_LEN].copy_from_slice(&iv);
        // Encryption with a 16-byte nonce and no associated data cannot fail for this AEAD.
        let tag =
            match self
                .aead
                .encrypt_in_place_detached((&iv).into(), &[], &mut buf[start + IV_LEN..])
            {
                Ok(tag) => tag,
                Err(_) => unreachable!("AES-256-CTR-Poly1305 encryption has no failure mode"),
            };
        buf.extend_from_slice(&tag);
    }

    /// Verifies the MAC of `data` (`IV || ciphertext || MAC`) and returns the plaintext.
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = bytes::BytesMut::from(data);
        self.open_in_place(&mut buf)?;
        Ok(Vec::from(buf))
    }
}

impl Key {
    /// Verifies the MAC of `buf` (`IV || ciphertext || MAC`) and decrypts it where it lies: on
    /// return `buf` is the plaintext (its IV and MAC cut off, nothing copied). A restore opens
    /// every blob this way instead of into a fresh allocation per blob.
    pub fn open_in_place(&self, buf: &mut bytes::BytesMut) -> Result<(), CryptoError> {
        let plain = self.open_slice(buf)?;
        buf.truncate(plain.end);
        bytes::Buf::advance(buf, plain.start);
        Ok(())
    }

    /// Like [`Key::open_in_place`] for a plain slice: returns where in `buf` the plaintext
    /// lies.
    pub fn open_slice(&self, buf: &mut [u8]) -> Result<std::ops::Range<usize>, CryptoError> {
        let len = buf.len();
        if len < OVERHEAD {
            return Err(CryptoError::TooShort(len));
        }
        let (iv, rest) = buf.split_at_mut(IV_LEN);
        let (ct, tag) = rest.split_at_mut(len - IV_LEN - MAC_LEN);
        let iv: [u8; IV_LEN] = iv.try_into().map_err(|_| CryptoError::TooShort(len))?;
        let tag: [u8; MAC_LEN] = (&*tag).try_into().map_err(|_| CryptoError::TooShort(len))?;
        self.aead
            .decrypt_in_place_detached((&iv).into(), &[], ct, (&tag).into())
            .map_err(|_| CryptoError::Mac)?;
        Ok(IV_LEN..len - MAC_LEN)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_byte_is_rejected() {
        let key = Key::random();
        let msg = b"restic compatible message";
        let ct = key.encrypt(msg);
        assert_eq!(ct.len(), msg.len() + OVERHEAD);
        assert_eq!(key.decrypt(&ct).unwrap(), msg);
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert_eq!(key.decrypt(&bad), Err(CryptoError::Mac), "byte {i}");
        }
        assert_eq!(key.decrypt(&ct[..10]), Err(CryptoError::TooShort(10)));
        assert_eq!(Key::random().decrypt(&ct), Err(CryptoError::Mac));
    }

    #[test]
    fn seal_in_place_round_trips_without_reallocating() {
        let key = Key::random();
        let msg: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut buf = Vec::with_capacity(msg.len() + OVERHEAD);
        buf.extend_from_slice(&msg);
        let before = buf.as_ptr();
        key.seal_in_place(&mut buf);
        assert_eq!(
            buf.as_ptr(),
            before,
            "reallocated despite OVERHEAD spare capacity"
        );
        assert_eq!(buf.len(), msg.len() + OVERHEAD);
        assert_ne!(&buf[16..116], &msg[..100], "not encrypted");
        assert_eq!(key.decrypt(&buf).unwrap(), msg);
        let mut empty = Vec::new();
        key.seal_in_place(&mut empty);
        assert_eq!(key.decrypt(&empty).unwrap(), b"");
    }

    #[test]
    fn open_in_place_decrypts_where_it_lies_and_rejects_tampering() {
        let key = Key::random();
        let msg: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let sealed = key.encrypt(&msg);
        let mut buf = bytes::BytesMut::from(&sealed[..]);
        let at = buf.as_ptr() as usize;
        key.open_in_place(&mut buf).unwrap();
        assert_eq!(&buf[..], &msg[..]);
        assert_eq!(
            buf.as_ptr() as usize,
            at + IV_LEN,
            "copied instead of opened in place"
        );
        for i in [0, IV_LEN, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = bytes::BytesMut::from(&sealed[..]);
            bad[i] ^= 0x80;
            assert_eq!(
                key.open_in_place(&mut bad),
                Err(CryptoError::Mac),
                "byte {i}"
            );
        }
        let mut short = bytes::BytesMut::from(&sealed[..OVERHEAD - 1]);
        assert_eq!(
            key.open_in_place(&mut short),
            Err(CryptoError::TooShort(OVERHEAD - 1))
        );
    }

    #[test]
    fn same_plaintext_encrypts_differently() {
        let key = Key::random();
        assert_ne!(key.encrypt(b"x"), key.encrypt(b"x"));
    }
}
