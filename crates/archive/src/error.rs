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
    /// The stream is not in a shape we can turn into trees.
    #[error("{0}")]
    Stream(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
