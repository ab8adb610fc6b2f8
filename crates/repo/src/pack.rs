//! Pack files: encrypted blobs back to back, then the encrypted header, then the header's length.
//!
//! ```text
//! blob_1 .. blob_n | encrypted header | header length (u32 LE)
//! header entry: type (u8) | length (u32 LE) | [uncompressed length (u32 LE)] | id (32 bytes)
//! ```
//! Types 0/1 are plain data/tree blobs, 2/3 the zstd-compressed ones of format version 2.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{CryptoError, Key, OVERHEAD};
use crate::Id;

/// Data or tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    /// File content.
    Data,
    /// A directory (tree JSON).
    Tree,
}

/// A blob's place in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedBlob {
    /// Blob id (SHA-256 of the plaintext).
    pub id: Id,
    /// Data or tree.
    pub ty: BlobType,
    /// Offset of the encrypted blob in the pack.
    pub offset: u32,
    /// Length of the encrypted blob.
    pub length: u32,
    /// Plaintext length when compressed.
    pub uncompressed_length: Option<u32>,
}

/// Where one blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Pack file id.
    pub pack: Id,
    /// Data or tree.
    pub ty: BlobType,
    /// Offset in the pack.
    pub offset: u32,
    /// Encrypted length.
    pub length: u32,
    /// Plaintext length when compressed.
    pub uncompressed_length: Option<u32>,
}

impl BlobLocation {
    /// Plaintext length (the encrypted length minus IV and MAC when not compressed).
    pub fn plain_length(&self) -> u64 {
        match self.uncompressed_length {
            Some(u) => u64::from(u),
            None => u64::from(self.length).saturating_sub(OVERHEAD as u64),
        }
    }
}

const ENTRY_PLAIN: usize = 1 + 4 + 32;
const ENTRY_COMPRESSED: usize = 1 + 4 + 4 + 32;

/// The pack header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The header does not authenticate.
    #[error("pack header: {0}")]
    Crypto(#[from] CryptoError),
    /// The decrypted header or the trailer is malformed.
    #[error("malformed pack header: {0}")]
    Malformed(String),
}

/// Assembles one pack in memory (packs never touch local disk). Large encrypted blobs are kept
/// as they arrive, not copied: the upload sends the parts back to back. Small ones are copied
/// into runs of up to [`SMALL_RUN`] bytes: thousands of small allocations living as long as a
/// pack would fragment the heap, and the allocator would keep that memory after the upload.
#[derive(Debug, Default)]
pub struct PackBuilder {
    parts: Vec<Bytes>,
    /// Small blobs not yet in `parts`, back to back.
    run: Vec<u8>,
    len: usize,
    blobs: Vec<PackedBlob>,
}

/// Encrypted blobs shorter than this are copied into a run.
const SMALL_BLOB: usize = 64 * 1024;
/// Capacity of a run of small blobs: one allocation, freed as a whole after the upload.
const SMALL_RUN: usize = 1024 * 1024;

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an already encrypted blob (copied).
    pub fn add(
        &mut self,
        id: Id,
        ty: BlobType,
        encrypted: &[u8],
        uncompressed_length: Option<u32>,
    ) -> Result<(), PackError> {
        if encrypted.len() < SMALL_BLOB {
            self.add_small(encrypted);
        } else {
            self.flush_run();
            self.parts.push(Bytes::copy_from_slice(encrypted));
        }
        self.record(id, ty, encrypted.len(), uncompressed_length)
    }

    /// Appends an already encrypted blob; a large one without copying it.
    pub fn add_sealed(
        &mut self,
        id: Id,
        ty: BlobType,
        encrypted: Bytes,
        uncompressed_length: Option<u32>,
    ) -> Result<(), PackError> {
        let length = encrypted.len();
        if length < SMALL_BLOB {
            self.add_small(&encrypted);
        } else {
            self.flush_run();
            self.parts.push(encrypted);
        }
        self.record(id, ty, length, uncompressed_length)
    }

    fn add_small(&mut self, encrypted: &[u8]) {
        if self.run.capacity() - self.run.len() < encrypted.len() {
            self.flush_run();
        }
        if self.run.capacity() == 0 {
            self.run.reserve_exact(SMALL_RUN);
        }
        self.run.extend_from_slice(encrypted);
    }

    fn flush_run(&mut self) {
        if !self.run.is_empty() {
            self.parts.push(Bytes::from(std::mem::take(&mut self.run)));
        }
    }

    /// Records a blob just appended at the end of the pack.
    fn record(
        &mut self,
        id: Id,
        ty: BlobType,
        length: usize,
        uncompressed_length: Option<u32>,
    ) -> Result<(), PackError> {
        let too_big = || PackError::Malformed("pack larger than 4 GiB".into());
        let offset = u32::try_from(self.len).map_err(|_| too_big())?;
        let length_u32 = u32::try_from(length).map_err(|_| too_big())?;
        self.len += length;
        self.blobs.push(PackedBlob {
            id,
            ty,
            offset,
            length: length_u32,
            uncompressed_length,
        });
        Ok(())
    }

    /// True when one more blob could take the encrypted header past [`MAX_HEADER_LEN`]: the
    /// pack must be finished now, whatever its size (packs of tiny blobs).
    pub fn header_full(&self) -> bool {
        (self.blobs.len() + 1) * ENTRY_COMPRESSED + OVERHEAD > MAX_HEADER_LEN
    }

    /// Bytes of blob data so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No blob yet.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Number of blobs.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Appends the encrypted header and its length; returns the pack as parts, its id (SHA-256
    /// over all parts) and its blobs.
    pub fn finish_parts(mut self, key: &Key) -> Result<PackParts, PackError> {
        self.flush_run();
        let header = encode_header(&self.blobs);
        let mut tail = key.encrypt(&header);
        let header_len = u32::try_from(tail.len())
            .map_err(|_| PackError::Malformed("header too large".into()))?;
        tail.extend_from_slice(&header_len.to_le_bytes());
        self.len += tail.len();
        self.parts.push(Bytes::from(tail));
        let mut hasher = Sha256::new();
        for part in &self.parts {
            hasher.update(part);
        }
        Ok(PackParts {
            id: Id(hasher.finalize().into()),
            parts: self.parts,
            len: self.len,
            blobs: self.blobs,
        })
    }

    /// Like [`PackBuilder::finish_parts`], as one contiguous buffer.
    pub fn finish(self, key: &Key) -> Result<FinishedPack, PackError> {
        let p = self.finish_parts(key)?;
        let mut bytes = Vec::with_capacity(p.len);
        for part in &p.parts {
            bytes.extend_from_slice(part);
        }
        Ok(FinishedPack {
            id: p.id,
            bytes,
            blobs: p.blobs,
        })
    }
}

/// A complete pack as the parts it was assembled from, ready for upload without a copy.
#[derive(Debug)]
pub struct PackParts {
    /// SHA-256 of the concatenated parts: the pack's file name.
    pub id: Id,
    /// Encrypted blobs, then the encrypted header with its length.
    pub parts: Vec<Bytes>,
    /// Total length.
    pub len: usize,
    /// Its blobs, for the index.
    pub blobs: Vec<PackedBlob>,
}

/// A complete pack ready for upload.
#[derive(Debug)]
pub struct FinishedPack {
    /// SHA-256 of `bytes`: the pack's file name.
    pub id: Id,
    /// The whole pack file.
    pub bytes: Vec<u8>,
    /// Its blobs, for the index.
    pub blobs: Vec<PackedBlob>,
}

fn encode_header(blobs: &[PackedBlob]) -> Vec<u8> {
    let mut h = Vec::with_capacity(blobs.len() * ENTRY_COMPRESSED);
    for b in blobs {
        let ty: u8 = match (b.ty, b.uncompressed_length.is_some()) {
            (BlobType::Data, false) => 0,
            (BlobType::Tree, false) => 1,
            (BlobType::Data, true) => 2,
            (BlobType::Tree, true) => 3,
        };
        h.push(ty);
        h.extend_from_slice(&b.length.to_le_bytes());
        if let Some(u) = b.uncompressed_length {
            h.extend_from_slice(&u.to_le_bytes());
        }
        h.extend_from_slice(&b.id.0);
    }
    h
}

/// Largest encrypted pack header read, as restic's `maxHeaderSize`: the length comes from the
/// pack's last four bytes, before anything is authenticated, and restic refuses larger headers
/// too. [`PackBuilder::header_full`] keeps the packs written below it.
pub const MAX_HEADER_LEN: usize = 16 * 1024 * 1024;

/// How many bytes from the end of a pack to read to get the header in one request: large enough
/// for most packs' headers; [`header_length`] tells when more is needed.
pub const TAIL_GUESS: usize = 16 * 1024;

/// The encrypted header length stored in the last four bytes of `tail`.
pub fn header_length(tail: &[u8]) -> Result<usize, PackError> {
    let n = tail.len();
    let last: [u8; 4] = tail
        .get(n.saturating_sub(4)..)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| PackError::Malformed("pack shorter than 4 bytes".into()))?;
    let hlen = u32::from_le_bytes(last) as usize;
    if hlen > MAX_HEADER_LEN {
        return Err(PackError::Malformed(format!(
            "header length {hlen} is larger than the limit of {MAX_HEADER_LEN}"
        )));
    }
    Ok(hlen)
}

/// Parses the header from the pack's tail (which must include the header and its length).
pub fn parse_header(key: &Key, tail: &[u8], pack_size: u64) -> Result<Vec<PackedBlob>, PackError> {
    let hlen = header_length(tail)?;
    if hlen < OVERHEAD || (hlen as u64) + 4 > pack_size || hlen + 4 > tail.len() {
        return Err(PackError::Malformed(format!(
            "header length {hlen} does not fit a pack of {pack_size} bytes"
        )));
    }
    let enc = &tail[tail.len() - 4 - hlen..tail.len() - 4];
    let plain = key.decrypt(enc)?;
    let data_end = pack_size - 4 - hlen as u64;
    let mut blobs = Vec::new();
    let mut offset: u64 = 0;
    let mut rest = plain.as_slice();
    while !rest.is_empty() {
        let (ty, compressed) = match rest[0] {
            0 => (BlobType::Data, false),
            1 => (BlobType::Tree, false),
            2 => (BlobType::Data, true),
            3 => (BlobType::Tree, true),
            t => return Err(PackError::Malformed(format!("unknown blob type {t}"))),
        };
        let entry_len = if compressed {
            ENTRY_COMPRESSED
        } else {
            ENTRY_PLAIN
        };
        if rest.len() < entry_len {
            return Err(PackError::Malformed("truncated header entry".into()));
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let length = u32_at(1);
        let (uncompressed_length, id_at) = if compressed {
            (Some(u32_at(5)), 9)
        } else {
            (None, 5)
        };
        let mut id = [0u8; 32];
        id.copy_from_slice(&rest[id_at..id_at + 32]);
        if offset + u64::from(length) > data_end {
            return Err(PackError::Malformed("blob extends past the header".into()));
        }
        blobs.push(PackedBlob {
            id: Id(id),
            ty,
            offset: offset as u32,
            length,
            uncompressed_length,
        });
        offset += u64::from(length);
        rest = &rest[entry_len..];
    }
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_with_plain_and_compressed_blobs() {
        let key = Key::random();
        let mut p = PackBuilder::default();
        let a = key.encrypt(b"hello");
        let b = key.encrypt(b"compressed-bytes");
        p.add(Id::hash(b"hello"), BlobType::Data, &a, None).unwrap();
        p.add(Id::hash(b"tree"), BlobType::Tree, &b, Some(100))
            .unwrap();
        let f = p.finish(&key).unwrap();
        assert_eq!(f.id, Id::hash(&f.bytes));
        let parsed = parse_header(&key, &f.bytes, f.bytes.len() as u64).unwrap();
        assert_eq!(parsed, f.blobs);
        assert_eq!(parsed[1].offset as usize, a.len());
        let blob = &f.bytes[parsed[0].offset as usize..][..parsed[0].length as usize];
        assert_eq!(key.decrypt(blob).unwrap(), b"hello");
    }

    #[test]
    fn small_blobs_share_runs_and_every_blob_reads_back() {
        let key = Key::random();
        let mut p = PackBuilder::default();
        // Small blobs filling more than one run, with large ones (kept as their own parts)
        // in between; both entry points.
        let plains: Vec<Vec<u8>> = (0..60u32)
            .map(|i| {
                let len = if i % 20 == 19 {
                    200_000
                } else {
                    1_000 + (i as usize * 997) % 60_000
                };
                vec![i as u8; len]
            })
            .collect();
        for (i, plain) in plains.iter().enumerate() {
            let sealed = key.encrypt(plain);
            let id = Id::hash(plain);
            if i % 2 == 0 {
                p.add(id, BlobType::Data, &sealed, None).unwrap();
            } else {
                p.add_sealed(id, BlobType::Data, Bytes::from(sealed), None)
                    .unwrap();
            }
        }
        let total: usize = plains.iter().map(|b| b.len() + OVERHEAD).sum();
        assert_eq!(p.len(), total);
        let parts = p.finish_parts(&key).unwrap();
        assert!(
            parts.parts.len() < plains.len() / 2,
            "small blobs were not gathered: {} parts",
            parts.parts.len()
        );
        let bytes: Vec<u8> = parts.parts.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(bytes.len(), parts.len);
        assert_eq!(parts.id, Id::hash(&bytes));
        let parsed = parse_header(&key, &bytes, bytes.len() as u64).unwrap();
        assert_eq!(parsed, parts.blobs);
        for (entry, plain) in parsed.iter().zip(&plains) {
            let blob = &bytes[entry.offset as usize..][..entry.length as usize];
            assert_eq!(&key.decrypt(blob).unwrap(), plain);
            assert_eq!(entry.id, Id::hash(plain));
        }
    }

    #[test]
    fn tampered_or_truncated_header_is_an_error_not_a_panic() {
        let key = Key::random();
        let mut p = PackBuilder::default();
        p.add(Id::hash(b"x"), BlobType::Data, &key.encrypt(b"x"), None)
            .unwrap();
        let f = p.finish(&key).unwrap();
        let mut bad = f.bytes.clone();
        let n = bad.len();
        bad[n - 10] ^= 0xff;
        assert!(matches!(
            parse_header(&key, &bad, n as u64),
            Err(PackError::Crypto(_))
        ));
        for cut in 0..8 {
            let t = &f.bytes[..cut];
            assert!(parse_header(&key, t, t.len() as u64).is_err());
        }
        let mut huge = f.bytes.clone();
        huge[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_header(&key, &huge, n as u64).is_err());
    }

    #[test]
    fn header_length_beyond_the_limit_is_refused_before_reading_it() {
        let mut tail = vec![0u8; 8];
        tail[4..].copy_from_slice(&((MAX_HEADER_LEN + 1) as u32).to_le_bytes());
        let err = header_length(&tail).unwrap_err().to_string();
        assert!(err.contains("larger than the limit"), "{err}");
        tail[4..].copy_from_slice(&(MAX_HEADER_LEN as u32).to_le_bytes());
        assert_eq!(header_length(&tail).unwrap(), MAX_HEADER_LEN);
    }

    #[test]
    fn header_full_keeps_a_pack_of_tiny_blobs_below_the_limit() {
        let key = Key::random();
        let mut p = PackBuilder::default();
        let sealed = key.encrypt(b"");
        let mut n = 0u32;
        while !p.header_full() {
            p.add(Id::hash(&n.to_le_bytes()), BlobType::Data, &sealed, Some(0))
                .unwrap();
            n += 1;
        }
        let f = p.finish(&key).unwrap();
        let hlen = header_length(&f.bytes).unwrap();
        assert!(hlen <= MAX_HEADER_LEN && hlen + ENTRY_COMPRESSED > MAX_HEADER_LEN - OVERHEAD);
        assert_eq!(
            parse_header(&key, &f.bytes, f.bytes.len() as u64)
                .unwrap()
                .len(),
            n as usize
        );
    }
}
