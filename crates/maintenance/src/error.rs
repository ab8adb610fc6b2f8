//! The maintenance crate's error type.

use snapback_repo::BackendError;

/// What can stop forget, prune or check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository failed (storage, authentication, format, lock held by someone else).
    #[error(transparent)]
    Repo(#[from] snapback_repo::Error),
    /// A keep policy or option is malformed.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidOption {
        /// Which option.
        what: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The repository is damaged in a way that makes pruning unsafe; nothing was deleted.
    #[error("refusing to prune, the repository is damaged (run `snapback check`): {0}")]
    Damaged(String),
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        Error::Repo(e.into())
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
