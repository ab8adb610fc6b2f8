//! The backend's error type, and opendal's errors mapped onto it.

use opendal::ErrorKind;

use crate::backend::problem::StorageProblem;
use crate::backend::tls::TlsError;

/// The repository location or storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The repository string is not a form we know.
    #[error("unsupported repository location {0:?} (use /path, local:/path, s3:http(s)://host:port/bucket/prefix, azure:container:/path, gs:bucket:/path or rest:http(s)://host:port/path)")]
    Location(String),
    /// The repository's kind of storage was left out of this build.
    #[error("this snapback was built without the {scheme}: backend (cargo feature `{feature}`)")]
    NotBuiltIn {
        /// The URL scheme (`azure`, `gs`, `rest`).
        scheme: &'static str,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// The storage's settings (from the environment) are missing or invalid.
    #[error("{location}: {reason}")]
    Settings {
        /// The repository location, without secrets.
        location: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The file does not exist.
    #[error("{path} not found in the repository")]
    NotFound {
        /// Repository-relative path.
        path: String,
    },
    /// Any other storage error (after retries).
    #[error("{}", storage_message(.path, .source, .problem.as_deref()))]
    Storage {
        /// Repository-relative path.
        path: String,
        /// What opendal reported.
        #[source]
        source: opendal::Error,
        /// What it means, when it is one of the problems a person can act on.
        problem: Option<Box<StorageProblem>>,
    },
    /// The TLS settings (`--cacert`) cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The bucket could not be created.
    #[error("cannot create bucket `{bucket}` at {endpoint}: {reason}")]
    CreateBucket {
        /// Bucket name.
        bucket: String,
        /// Server.
        endpoint: String,
        /// What the server said.
        reason: String,
    },
    /// A streamed read failed part way (after retries).
    #[error("storage error reading {path}: {source}")]
    Read {
        /// Repository-relative path.
        path: String,
        /// What the stream reported.
        #[source]
        source: std::io::Error,
    },
    /// Writing a file of a local repository failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Repository-relative path.
        path: String,
        /// What the file system reported.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than any file of its kind can be; it was not read (it is read
    /// before anything authenticates it).
    #[error(
        "{path} is larger than {limit} bytes, more than such a file can be: refusing to read it"
    )]
    TooLarge {
        /// Repository-relative path.
        path: String,
        /// The bound.
        limit: u64,
    },
    /// The storage did not answer in time, retries included.
    #[error("{server} did not answer within {} s ({path})", .secs)]
    Timeout {
        /// "S3 server at `<endpoint>`" or the local directory.
        server: String,
        /// Repository-relative path of the operation.
        path: String,
        /// Seconds waited.
        secs: u64,
    },
    /// A streamed read ended before the range it asked for (the file is shorter).
    #[error("{path} ended {missing} bytes before the range read from it")]
    ShortRead {
        /// Repository-relative path.
        path: String,
        /// Bytes of the range that never came.
        missing: u64,
    },
}

/// [`BackendError::Storage`]'s message: the problem when it is known, else opendal's error.
fn storage_message(
    path: &str,
    source: &opendal::Error,
    problem: Option<&StorageProblem>,
) -> String {
    match problem {
        Some(p) => p.to_string(),
        None => format!("storage error on {path}: {source}"),
    }
}

/// Whether `e` is the detail under a [`BackendError::Storage`] (opendal's error with its
/// context dump): a one-line report stops before it; `-v` shows it.
pub fn is_storage_detail(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<opendal::Error>()
}

pub(crate) fn storage(path: &str, source: opendal::Error) -> BackendError {
    BackendError::Storage {
        path: path.to_string(),
        source,
        problem: None,
    }
}

pub(crate) fn map_err(path: &str, e: opendal::Error) -> BackendError {
    // A missing bucket is a 404 too, but not a missing file.
    if e.kind() == ErrorKind::NotFound && !crate::backend::problem::is_no_such_bucket(&e) {
        BackendError::NotFound {
            path: path.to_string(),
        }
    } else {
        storage(path, e)
    }
}

/// [`map_err`] for a read of `length` bytes of a range: a range the file cannot fill (it
/// starts past the end, or opendal received fewer bytes than the range) is a
/// [`BackendError::ShortRead`].
pub(crate) fn map_range_err(path: &str, length: u64, e: opendal::Error) -> BackendError {
    let short = match e.kind() {
        ErrorKind::RangeNotSatisfied => Some(length),
        // A range that starts at or past the end: HTTP 416, which opendal's services report
        // as unexpected (S3 and Azure name it `InvalidRange`).
        ErrorKind::Unexpected if is_range_not_satisfiable(&e.to_string()) => Some(length),
        // opendal's check of a response's length ("reader got too little data", with the
        // expected and actual sizes in its context).
        ErrorKind::Unexpected if e.to_string().contains("got too little data") => {
            let text = e.to_string();
            let actual = text
                .split_once("actual: ")
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok());
            Some(actual.map_or(length, |a| length.saturating_sub(a)))
        }
        _ => None,
    };
    match short {
        Some(missing) => BackendError::ShortRead {
            path: path.to_string(),
            missing,
        },
        None => map_err(path, e),
    }
}

/// Whether opendal's error text is a 416 answer (in its context or message).
fn is_range_not_satisfiable(text: &str) -> bool {
    text.contains("status: 416")
        || text.contains("416 Range Not Satisfiable")
        || text.contains("\"InvalidRange\"")
}

/// An error a streamed read of `length` bytes reported. A stream reports the request's own
/// failure (a missing object, a refused connection, a range past the end) only when it is
/// first polled, as opendal's error inside an `io::Error`: that is mapped as the request's
/// error would be; anything else is a [`BackendError::Read`].
pub(crate) fn stream_error(path: &str, length: u64, source: std::io::Error) -> BackendError {
    if source.get_ref().is_some_and(|e| e.is::<opendal::Error>()) {
        if let Some(Ok(e)) = source.into_inner().map(|e| e.downcast::<opendal::Error>()) {
            return map_range_err(path, length, *e);
        }
        return BackendError::NotFound {
            path: path.to_string(),
        };
    }
    BackendError::Read {
        path: path.to_string(),
        source,
    }
}
