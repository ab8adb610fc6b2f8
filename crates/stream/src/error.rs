//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Why an entry stream could not go on. Problems with a single entry of a walk are
/// [`crate::Warning`]s instead; an `Error` ends the stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a filesystem path (a walked root, an exclude file, the mountinfo file).
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the tar input stream failed.
    #[error("reading tar stream: {0}")]
    ReadTar(#[source] io::Error),
    /// Reading the start of an input stream (standard input or a producer's output) failed.
    #[error("reading the stream: {0}")]
    ReadStream(#[source] io::Error),
    /// A producer command was asked for but none was given.
    #[error("no command given")]
    NoCommand,
    /// A producer command could not be started.
    #[error("cannot start {program}: {source}")]
    StartCommand {
        /// The program as given.
        program: String,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// Reading the rest of a producer command's output or waiting for it failed.
    #[error("command {program}: {source}")]
    CommandOutput {
        /// The program as given.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A producer command exited unsuccessfully, so its output is not a complete backup.
    #[error("command {program} failed ({status})")]
    CommandFailed {
        /// The program as given.
        program: String,
        /// How it ended.
        status: std::process::ExitStatus,
    },
    /// Writing the tar output stream failed.
    #[error("writing tar stream: {0}")]
    WriteTar(#[source] io::Error),
    /// The tar stream ended in the middle of a header or member, or without its end marker.
    #[error("tar stream truncated at byte {offset}: {what}")]
    Truncated {
        /// Byte offset in the input where the stream ended.
        offset: u64,
        /// What was being read.
        what: String,
    },
    /// The tar stream holds something that is not a valid header or record.
    #[error("malformed tar stream at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset of the offending header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The tar stream uses a feature this reader does not implement (e.g. GNU sparse members).
    #[error("unsupported tar member {path:?}: {reason}")]
    Unsupported {
        /// The member's name.
        path: String,
        /// What is unsupported.
        reason: String,
    },
    /// An exclude pattern is malformed, or an exclude file unreadable.
    #[error("exclude pattern: {0}")]
    Pattern(#[from] snapback_pattern::Error),
    /// A walk root is not usable (e.g. empty path).
    #[error("invalid root {}: {reason}", path.display())]
    InvalidRoot {
        /// The root as given.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
