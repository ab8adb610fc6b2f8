//! The restore crate's error type.

use std::path::PathBuf;

/// What can go wrong in a restore, dump, listing or drill scan.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository failed (storage, authentication, format).
    #[error(transparent)]
    Repo(#[from] snapback_repo::Error),
    /// Writing a tar stream failed, or reading the snapshot for it (`dump` of a directory).
    #[error("reading the source: {0}")]
    Source(#[from] snapback_stream::Error),
    /// Local I/O failed (restore target, stdout).
    #[error("{path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A path is not in the snapshot.
    #[error("{0} not found in the snapshot")]
    PathNotFound(String),
    /// A tree of the snapshot is unusable (a node name that would escape its directory, a
    /// directory without subtree).
    #[error("invalid tree {tree}: {reason}")]
    InvalidTree {
        /// Tree id (short) or snapshot path concerned.
        tree: String,
        /// What is wrong.
        reason: String,
    },
    /// An include or exclude pattern is malformed.
    #[error(transparent)]
    InvalidPattern(#[from] snapback_pattern::Error),
    /// A snapshot path names a node of the wrong type for the operation (`dump` of a symlink).
    #[error("{path:?} should be a {expected}, but is a {found}")]
    WrongType {
        /// Snapshot path.
        path: String,
        /// What the operation needs.
        expected: &'static str,
        /// The node's type.
        found: String,
    },
    /// The operation was cancelled (SIGTERM, shutdown).
    #[error("cancelled")]
    Cancelled,
    /// A task the operation ran on stopped unexpectedly (it panicked).
    #[error("{0}")]
    Task(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
