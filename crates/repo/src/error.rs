//! The library's error type.

use crate::backend::BackendError;
use crate::crypto::CryptoError;
use crate::file::key::KeyError;
use crate::pack::PackError;
use crate::Id;

/// Everything that can go wrong reading or writing a repository.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Storage failed (after retries) or a file is missing.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A file's MAC does not verify: corrupted, tampered with, or not written with this key.
    #[error(
        "{file}: authentication failed, the file is corrupted or was tampered with ({source})"
    )]
    Auth {
        /// Repository-relative path (plus the blob id for a blob inside a pack).
        file: String,
        /// The crypto failure.
        #[source]
        source: CryptoError,
    },
    /// No key file opens with the given password.
    #[error("wrong password: no key in the repository could be opened with it")]
    WrongPassword,
    /// A key file is unusable.
    #[error("key file {file}: {source}")]
    Key {
        /// Repository-relative path.
        file: String,
        /// What is wrong.
        #[source]
        source: KeyError,
    },
    /// The password opened a key, but the `config` file does not authenticate with it.
    #[error("the config file of the repository at {0} is damaged: a key opened with the password but the config does not authenticate with it (MAC check failed)")]
    ConfigDamaged(String),
    /// A local repository's directory does not exist.
    #[error("repository does not exist at {0}")]
    RepositoryMissing(String),
    /// There is no `config` file at the location.
    #[error("there is no repository at {0} (config file not found)")]
    NotARepository(String),
    /// `init` found an existing repository.
    #[error("a repository already exists at {0}")]
    AlreadyExists(String),
    /// The config names a format version we cannot handle.
    #[error("unsupported repository format version {0} (supported: 1, 2)")]
    UnsupportedVersion(u32),
    /// A decrypted file is not what its type promises.
    #[error("{file}: {message}")]
    Format {
        /// Repository-relative path.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A pack header cannot be read.
    #[error("{file}: {source}")]
    Pack {
        /// Repository-relative path.
        file: String,
        /// What is wrong.
        #[source]
        source: PackError,
    },
    /// A blob is not in the index.
    #[error("blob {0} is not in the repository index")]
    BlobNotFound(Id),
    /// The repository is locked by someone else.
    #[error("repository is locked: {0}")]
    Locked(String),
    /// Our own lock could not be kept (refresh failed, lock file removed by someone else, not
    /// refreshed in time): others may take it for stale, so we must not write or delete.
    #[error("repository lock lost ({0}): stopped before writing a snapshot or deleting anything")]
    LockLost(String),
}

impl Error {
    pub(crate) fn format(file: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Format {
            file: file.into(),
            message: message.to_string(),
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
