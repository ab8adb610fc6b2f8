//! The backup pipeline: turns a stream of entries into a restic snapshot.
//!
//! Data flows one way: an entry source (`snapback_stream`'s walker or tar reader) →
//! [`archiver`] (tree building, chunking, parent reuse with the parent's trees read ahead,
//! node metadata from [`node`]) →
//! [`dedup`] (hashing; drops blobs the repository or this run, see [`seen`], already has) →
//! [`sink`] (compression, encryption, pack assembly, concurrent upload, index flushing) → the
//! repository; [`backup`](mod@backup) runs the stages side by side under a lock and writes
//! the snapshot last. Blobs in memory are bounded by `snapback_repo`'s byte budget and live
//! in its recycled buffers; [`progress`] counts what the stages did. Reading snapshots back
//! (ls, restore, dump, drills) is `snapback_restore`'s job.

pub mod archiver;
pub mod backup;
mod children;
pub mod dedup;
pub mod error;
pub mod node;
mod parent_dir;
mod parent_trees;
pub mod progress;
mod runs;
pub mod seen;
pub mod sink;

pub use backup::{backup, BackupOptions, BackupSummary};
pub use error::{Error, Result};
