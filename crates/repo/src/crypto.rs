//! restic's authenticated encryption: AES-256-CTR with a random 16-byte IV, MAC'd with
//! Poly1305-AES over the ciphertext. Layout on disk: `IV || ciphertext || MAC`.
//!
//! The MAC is verified before a single byte is decrypted, so tampered data never reaches a
//! parser.
//!
//! Built from the RustCrypto primitives (`aes`, `ctr`, `poly1305`) rather than through an AEAD
//! wrapper, because a backup seals hundreds of thousands of small blobs and a wrapper sets up
//! every message from scratch: both AES key schedules and Poly1305's key powers. Here they are
//! set up once per key. Poly1305-AES's per-message part is only `s = AES-128_k(IV)`, which the
//! MAC adds at its very end (`tag = (h + s) mod 2^128`, RFC 8439 §2.5), so the Poly1305 state
//! keyed with `r` and a zero `s` is cloned per message and `s` added to its output.
//! `tests::matches_the_aead_crate` checks every length class against `aes256ctr_poly1305aes`.

use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher};
use aes::{Aes128, Aes256};
use poly1305::universal_hash::UniversalHash;
use poly1305::Poly1305;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// AES-256 in counter mode with the whole 16-byte IV as a big-endian counter, as Go's
/// `cipher.NewCTR` counts.
type Aes256Ctr = ctr::Ctr128BE<Aes256>;

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
    /// The encryption key, expanded.
    encrypt: Aes256,
    /// Poly1305-AES's `k`, expanded: `s = AES-128_k(IV)`.
    mac_aes: Aes128,
    /// Poly1305 keyed with `r` and `s = 0`, cloned for each message.
    mac_r: Poly1305,
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
        let mut poly_key = poly1305::Key::default();
        poly_key[..16].copy_from_slice(&bytes[48..]);
        let mac_r = Poly1305::new(&poly_key);
        poly_key.zeroize();
        Key {
            encrypt: Aes256::new((&bytes[..32]).into()),
            mac_aes: Aes128::new((&bytes[32..48]).into()),
            mac_r,
            bytes,
        }
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
        self.seal_from_with(buf, start, rand::random());
    }

    /// [`Key::seal_from`] with a given IV.
    fn seal_from_with(&self, buf: &mut Vec<u8>, start: usize, iv: [u8; IV_LEN]) {
        buf[start..start + IV_LEN].copy_from_slice(&iv);
        self.keystream(&iv, &mut buf[start + IV_LEN..]);
        let tag = self.mac(&iv, &buf[start + IV_LEN..]);
        buf.extend_from_slice(&tag);
    }

    /// XORs the AES-256-CTR keystream starting at `iv` into `data`.
    fn keystream(&self, iv: &[u8; IV_LEN], data: &mut [u8]) {
        let core = ctr::CtrCore::<Aes256, ctr::flavors::Ctr128BE>::inner_iv_init(
            self.encrypt.clone(),
            iv.into(),
        );
        Aes256Ctr::from_core(core).apply_keystream(data);
    }

    /// Poly1305-AES of `ciphertext` with the nonce `iv`.
    fn mac(&self, iv: &[u8; IV_LEN], ciphertext: &[u8]) -> [u8; MAC_LEN] {
        let mut s = aes::Block::from(*iv);
        self.mac_aes.encrypt_block(&mut s);
        // Whole blocks through the multi-block API (the AVX2 backend's four-block path, faster
        // than `compute_unpadded`'s one block at a time), the partial tail block last.
        let whole = ciphertext.len() / 16 * 16;
        let mut poly = self.mac_r.clone();
        poly.update_padded(&ciphertext[..whole]);
        let h: [u8; MAC_LEN] = poly.compute_unpadded(&ciphertext[whole..]).into();
        let sum = u128::from_le_bytes(h).wrapping_add(u128::from_le_bytes(s.into()));
        // `s` is this message's one-time key.
        s.as_mut_slice().zeroize();
        sum.to_le_bytes()
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
        let iv: [u8; IV_LEN] = (&*iv).try_into().map_err(|_| CryptoError::TooShort(len))?;
        if !bool::from(self.mac(&iv, ct).ct_eq(&*tag)) {
            return Err(CryptoError::Mac);
        }
        self.keystream(&iv, ct);
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
    fn matches_the_aead_crate() {
        use aes256ctr_poly1305aes::aead::AeadInPlace;
        use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
        // Every length up to a few blocks (partial and whole Poly1305 blocks, the AVX2 path's
        // four-block batches), then longer ones.
        let lengths = (0..300).chain([1024, 4095, 4096, 65_536 + 17, 1 << 20]);
        for (n, len) in lengths.enumerate() {
            let key = Key::random();
            let reference = Aes256CtrPoly1305Aes::new(key.as_bytes().into());
            let iv: [u8; IV_LEN] = rand::random();
            let msg: Vec<u8> = (0..len).map(|i| (i * 31 + n) as u8).collect();
            let mut ours = vec![0; IV_LEN];
            ours.extend_from_slice(&msg);
            key.seal_from_with(&mut ours, 0, iv);
            let mut theirs = msg.clone();
            let tag = reference
                .encrypt_in_place_detached((&iv).into(), &[], &mut theirs)
                .unwrap();
            assert_eq!(&ours[..IV_LEN], &iv);
            assert_eq!(
                &ours[IV_LEN..IV_LEN + len],
                &theirs[..],
                "ciphertext, {len} B"
            );
            assert_eq!(&ours[IV_LEN + len..], &tag[..], "MAC, {len} B");
            assert_eq!(key.decrypt(&ours).unwrap(), msg);
        }
    }

    #[test]
    fn the_counter_carries_across_all_16_bytes_as_go_counts() {
        // An IV whose low 64 bits are about to wrap: the counter after it carries into the
        // high half (the AEAD crate above counts in the low 64 bits only; restic is Go).
        let key = Key::random();
        let iv = 0x0102_0304_0506_0708_ffff_ffff_ffff_fffe_u128;
        let mut buf = vec![0u8; IV_LEN + 48];
        key.seal_from_with(&mut buf, 0, iv.to_be_bytes());
        let aes = Aes256::new((&key.as_bytes()[..32]).into());
        for i in 0..3u128 {
            let mut block = (iv.wrapping_add(i)).to_be_bytes().into();
            aes.encrypt_block(&mut block);
            let at = IV_LEN + 16 * i as usize;
            assert_eq!(&buf[at..at + 16], &block[..], "block {i}");
        }
    }

    #[test]
    fn same_plaintext_encrypts_differently() {
        let key = Key::random();
        assert_ne!(key.encrypt(b"x"), key.encrypt(b"x"));
    }
}
