//! The read side of snapshots: everything that reads a snapshot back out of a repository.
//!
//! Data flows from the repository out: a snapshot's root tree → [`tree_walk`] (loads trees one
//! path at a time, checks every node name, resolves snapshot paths) → one consumer: [`ls`]
//! prints nodes as `restic ls` does, [`restore`] writes them into a directory (file content
//! read pack by pack, nothing through a symlink), [`dump`] streams a file or a directory as
//! tar, [`verify_restore`] reads restored files back against the snapshot (`restore
//! --verify`), and [`drill_scan`] is the tree half of a verification drill (the packs a
//! snapshot uses, stream members read back, live files compared with the snapshot). Nothing
//! here writes to the repository; the write pipeline is `snapback_archive`.

pub mod drill_scan;
pub mod dump;
pub mod error;
pub mod ls;
pub mod restore;
pub mod tree_walk;
pub mod verify_restore;

pub use error::{Error, Result};
