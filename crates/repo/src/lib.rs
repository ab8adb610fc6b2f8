//! Reads and writes restic-compatible repositories (format versions 1 and 2).
//!
//! Layers, bottom up: [`backend`] stores files (opendal: local filesystem, S3
//! and the optional [`backend::services`]), [`crypto`]
//! seals them (AES-256-CTR + Poly1305-AES), [`file`] gives the JSON files their types, [`pack`]
//! assembles and parses pack files, [`index`] knows where every blob is, and [`Repository`]
//! ties them together (init, open, load/save files and blobs, snapshots, locks);
//! [`tree_read_ahead`] reads a walk's trees before it needs them. Blobs held in
//! memory by a backup or a restore are bounded by a [`budget::ByteBudget`] and live in
//! recycled [`buffers::BufferPool`] buffers.

pub mod backend;
pub mod budget;
pub mod buffers;
pub mod crypto;
pub mod error;
pub mod file;
pub mod host;
pub mod id;
pub mod index;
pub mod local_write;
pub mod locking;
pub mod pack;
pub mod repository;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod tree_read_ahead;

pub use backend::{Backend, BackendError, FileType, Location, RangeReader};
pub use crypto::Key;
pub use error::{Error, Result};
pub use id::Id;
pub use index::{BlobIndex, IndexWriter};
pub use pack::{BlobLocation, BlobType};
pub use repository::{InitOptions, InitOutcome, Repository};
