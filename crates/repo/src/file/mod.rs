//! The JSON files of a restic repository, as serde types.
//!
//! Field names, optional fields and encodings follow restic 0.14 so that what we write is read by
//! restic and what restic writes is read by us.

pub mod config;
pub mod index;
pub mod key;
pub mod lock;
pub mod quote;
pub mod snapshot;
pub mod tree;
pub mod tree_nodes;

pub use config::ConfigFile;
pub use index::{IndexBlob, IndexFile, IndexPack};
pub use key::{KeyFile, MasterKeyJson};
pub use lock::LockFile;
pub use snapshot::SnapshotFile;
pub use tree::{ExtendedAttribute, Node, NodeType, Tree};
