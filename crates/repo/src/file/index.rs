//! Index files (`index/<id>`): which blobs live in which pack, at which offset.

use serde::{Deserialize, Serialize};

use crate::pack::{BlobType, PackedBlob};
use crate::Id;

/// A decrypted index file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    /// Index files this one replaces (written by prune/rebuild-index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
    /// The packs described by this file.
    pub packs: Vec<IndexPack>,
}

/// One pack in an index file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPack {
    /// Pack id (SHA-256 of the pack file).
    pub id: Id,
    /// The blobs in the pack.
    pub blobs: Vec<IndexBlob>,
}

/// One blob in an index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBlob {
    /// Blob id (SHA-256 of the plaintext).
    pub id: Id,
    /// Data or tree.
    #[serde(rename = "type")]
    pub ty: BlobType,
    /// Offset of the encrypted blob in the pack.
    pub offset: u32,
    /// Length of the encrypted blob in the pack.
    pub length: u32,
    /// Plaintext length when the blob is compressed (format version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

/// A pack header's entry, as an index file lists it (the same fields).
impl From<PackedBlob> for IndexBlob {
    fn from(b: PackedBlob) -> Self {
        IndexBlob {
            id: b.id,
            ty: b.ty,
            offset: b.offset,
            length: b.length,
            uncompressed_length: b.uncompressed_length,
        }
    }
}

/// An index file's entry, as a pack header lists it (the same fields).
impl From<IndexBlob> for PackedBlob {
    fn from(b: IndexBlob) -> Self {
        PackedBlob {
            id: b.id,
            ty: b.ty,
            offset: b.offset,
            length: b.length,
            uncompressed_length: b.uncompressed_length,
        }
    }
}
