//! The archive crate's error type.

/// What can go wrong in a backup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository failed (storage, authentication, format).
    #[error(transparent)]
    Repo(#[from] snapback_repo::Error),
    /// The entry source failed (unreadable root, malformed or truncated tar stream).
    #[error("reading the source: {0}")]
    Source(#[from] snapback_stream::Error),
    /// The backup was cancelled (SIGTERM, shutdown); nothing was saved.
    #[error("cancelled")]
    Cancelled,
    /// A stage of the pipeline stopped unexpectedly.
    #[error("backup pipeline failed: {0}")]
    Pipeline(String),
    /// The listings of the open directories grew over their memory limit (a directory of
    /// millions of entries, or many wide directories inside each other).
    #[error(
        "directory {dir}: {entries} entries so far; with the directories open around it their \
         listings hold {held_mib:.1} MiB, over the limit of {limit_mib} MiB (raise it with \
         --listing-memory)"
    )]
    ListingTooLarge {
        /// The directory whose listing was growing, as restic quotes names.
        dir: String,
        /// Its entries so far.
        entries: usize,
        /// MiB held by all open listings (rounded up to a tenth).
        held_mib: f64,
        /// The limit, in MiB.
        limit_mib: usize,
    },
    /// The stream is not in a shape we can turn into trees.
    #[error("{0}")]
    Stream(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
