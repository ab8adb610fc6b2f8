//! The backup pipeline and the read side of snapshots.
//!
//! Write side, data flowing one way: an entry source (walker or tar reader) →
//! [`archiver`] (tree building, chunking, parent reuse; chunk buffers from [`buffers`]) → [`dedup`] (hashing, dedup) → [`sink`] (compression,
//! encryption, pack assembly, concurrent upload, index flushing) → the repository.
//!
//! Read side: [`tree_walk`] visits a snapshot's trees, [`restore`] writes them to a directory (each pack read once per batch of files),
//! [`dump`] streams a file or a directory as tar, [`ls`] lists nodes.

pub mod archiver;
pub mod backup;
pub mod budget;
pub mod buffers;
mod children;
pub mod dedup;
pub mod dump;
pub mod error;
pub mod ls;
pub mod node;
pub mod restore;
pub mod seen;
pub mod sink;
pub mod tree_walk;
pub mod verify;

pub use backup::{backup, BackupOptions, BackupSummary};
pub use error::{Error, Result};
