//! Storage of repository files through opendal: the local filesystem, S3, and (behind cargo
//! features) Azure Blob Storage, Google Cloud Storage and restic's REST server.
//!
//! Knows restic's repository URL forms and file layout, nothing about file contents. One
//! concern per module:
//!
//! - [`location`]: repository strings ([`Location`]) and the file layout ([`FileType`]);
//! - [`retry`]: the retry and timeout policy, with overrides from the environment;
//! - [`services`]: one module per storage service, each building its opendal operator from a
//!   location and the service's environment variables (the S3 credential chain,
//!   [`S3Credentials`], lives with S3, in [`services::s3::credentials`]);
//!   **adding a service** touches one new file there plus its registration (see that
//!   module's docs);
//! - [`layers`]: the retry and timeout layers every service gets, the deadline of one
//!   operation, and timeouts mapped to [`BackendError::Timeout`];
//! - [`problem`]: error classification, what a failure means to a person ([`StorageProblem`]);
//! - [`tls`]: trusted certificates and the HTTP client;
//! - [`local`]: the local fast path, reads and writes past opendal;
//! - [`range`]: range reads received as they arrive ([`RangeReader`]);
//! - [`error`]: the error type, [`BackendError`];
//! - this module: [`Backend`], the operations the repository needs (read, write, list, delete,
//!   create-if-absent), the same on every service.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opendal::{EntryMode, ErrorKind, Operator};

use crate::Id;

pub mod error;
pub mod layers;
pub mod local;
pub mod location;
pub mod problem;
pub mod range;
pub mod retry;
pub mod services;
pub mod tls;

pub use error::{is_storage_detail, BackendError};
pub use location::RestUrl;
pub use location::{FileType, Location};
pub use problem::StorageProblem;
pub use range::RangeReader;
pub use retry::RetryPolicy;
pub use services::s3::credentials::S3Credentials;
pub use tls::{TlsError, TlsOptions};

use error::{map_err, map_range_err, stream_error};
use layers::map_timeout;

/// Files at least this large are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// Part size of a multipart upload (S3's minimum is 5 MiB).
const MULTIPART_CHUNK: usize = 8 * 1024 * 1024;

/// A repository's storage.
#[derive(Debug, Clone)]
pub struct Backend {
    op: Operator,
    location: Location,
    /// The repository's directory when it is local (streamed reads use it directly).
    local_root: Option<std::path::PathBuf>,
    /// What to put in front of a repository-relative path for `op`: the local repository's
    /// directory (without the leading `/`), empty for the others. See [`services`]' `local`.
    op_prefix: String,
    /// [`RetryPolicy::deadline`].
    deadline: Duration,
    /// S3 only: the access key in use (for error messages) and what creating the bucket needs.
    s3: Option<Arc<services::s3::S3State>>,
    /// The location with the server it talks to, for error messages.
    described: String,
}

/// Listing entry: id and size of a stored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// The file's id (its name).
    pub id: Id,
    /// Its size in bytes.
    pub size: u64,
}

impl Backend {
    /// Connects to `location` (no request is made yet).
    pub fn new(
        location: Location,
        creds: &S3Credentials,
        policy: RetryPolicy,
    ) -> Result<Self, BackendError> {
        Self::with_tls(location, creds, policy, &TlsOptions::default())
    }

    /// [`Backend::new`] trusting the extra certificates of `tls` (or none, `--insecure-tls`).
    pub fn with_tls(
        location: Location,
        creds: &S3Credentials,
        policy: RetryPolicy,
        tls: &TlsOptions,
    ) -> Result<Self, BackendError> {
        let built = services::build(&location, creds, &policy, tls)?;
        let described = services::describe(&location);
        Ok(Backend {
            op: layers::wrap(built.op, &policy),
            location,
            local_root: built.local_root,
            op_prefix: built.op_prefix,
            deadline: policy.deadline(),
            s3: built.s3,
            described,
        })
    }

    /// Parses `repo` and connects with credentials and retry overrides from the environment
    /// ([`RetryPolicy::from_env`]).
    pub fn from_url(repo: &str) -> Result<Self, BackendError> {
        Self::new(
            Location::parse(repo)?,
            &S3Credentials::from_env(),
            RetryPolicy::from_env(),
        )
    }

    /// Where this backend stores.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Whether this is a local repository whose directory does not exist.
    pub fn local_root_missing(&self) -> bool {
        self.local_root
            .as_ref()
            .is_some_and(|root| std::fs::symlink_metadata(root).is_err())
    }

    /// Creates the S3 bucket when it does not exist (as `restic init` does). Returns whether
    /// it was created; a local repository has no bucket (false).
    pub async fn create_bucket_if_missing(&self) -> Result<bool, BackendError> {
        let Some(maker) = self.s3.as_ref().map(|s| &s.bucket_maker) else {
            return Ok(false);
        };
        // A listing of the repository's root finds out whether the bucket is there.
        let probe = self
            .bounded("", async {
                use futures::TryStreamExt;
                let mut l = self.op.lister("").await.map_err(|e| map_err("", e))?;
                l.try_next().await.map_err(|e| map_err("", e))
            })
            .await;
        match probe {
            Err(BackendError::Storage {
                problem: Some(p), ..
            }) if matches!(*p, StorageProblem::NoSuchBucket { .. }) => {}
            Err(BackendError::NotFound { .. }) | Ok(_) => return Ok(false),
            Err(e) => return Err(e),
        }
        tokio::time::timeout(self.deadline, maker.create())
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Timeout {
                    server: self.server(),
                    path: String::new(),
                    secs: self.deadline.as_secs(),
                })
            })?;
        tracing::info!(bucket = %maker.bucket, endpoint = %maker.endpoint, "created bucket");
        Ok(true)
    }

    /// Who did not answer, for [`BackendError::Timeout`].
    fn server(&self) -> String {
        services::server(&self.location)
    }

    /// `path` as `op` names it.
    fn op_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if self.op_prefix.is_empty() {
            path.into()
        } else {
            format!("{}{path}", self.op_prefix).into()
        }
    }

    /// Reads a whole file.
    pub async fn read_path(&self, path: &str) -> Result<Bytes, BackendError> {
        self.bounded(path, async {
            match self.op.read(&self.op_path(path)).await {
                Ok(buf) => Ok(buf.to_bytes()),
                Err(e) => Err(map_err(path, e)),
            }
        })
        .await
    }

    /// Reads a whole file that may not be larger than `limit` bytes: fails with
    /// [`BackendError::TooLarge`] as soon as more arrive, so a file planted in the bucket
    /// cannot make a command hold more than `limit` bytes of it.
    pub async fn read_path_limited(&self, path: &str, limit: u64) -> Result<Bytes, BackendError> {
        use futures::StreamExt;
        let too_large = || BackendError::TooLarge {
            path: path.to_string(),
            limit,
        };
        if let Some(root) = &self.local_root {
            return local::read_limited(root, path, limit);
        }
        self.bounded(path, async {
            let mut stream = match self.op.reader(&self.op_path(path)).await {
                Ok(r) => r.into_bytes_stream(..).await,
                Err(e) => Err(e),
            }
            .map_err(|e| map_err(path, e))?;
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|source| stream_error(path, limit, source))?;
                if (out.len() + chunk.len()) as u64 > limit {
                    return Err(too_large());
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Bytes::from(out))
        })
        .await
    }

    /// Reads file `id` of type `ft`.
    pub async fn read(&self, ft: FileType, id: &Id) -> Result<Bytes, BackendError> {
        self.read_path(&ft.path(id)).await
    }

    /// Reads `length` bytes at `offset` of file `id`: all of them, or
    /// [`BackendError::ShortRead`] when the file ends before the range does.
    pub async fn read_range(
        &self,
        ft: FileType,
        id: &Id,
        offset: u64,
        length: u64,
    ) -> Result<Bytes, BackendError> {
        let path = ft.path(id);
        if length == 0 {
            // opendal would take an empty range for the whole file.
            return Ok(Bytes::new());
        }
        let got = self
            .bounded(&path, async {
                match self
                    .op
                    .read_with(&self.op_path(&path))
                    .range(offset..offset + length)
                    .await
                {
                    Ok(buf) => Ok(buf.to_bytes()),
                    Err(e) => Err(map_range_err(&path, length, e)),
                }
            })
            .await?;
        match length.checked_sub(got.len() as u64) {
            Some(0) => Ok(got),
            // Never more than asked, whatever the server sends.
            None => Ok(got.slice(..length as usize)),
            Some(missing) => Err(BackendError::ShortRead { path, missing }),
        }
    }

    /// Opens `length` bytes at `offset` of file `id` to be read front to back as they arrive:
    /// one request on S3, however many blobs the range holds, and only what is being
    /// consumed in memory.
    pub async fn read_range_stream(
        &self,
        ft: FileType,
        id: &Id,
        offset: u64,
        length: u64,
    ) -> Result<RangeReader, BackendError> {
        let path = ft.path(id);
        if let Some(root) = &self.local_root {
            // Read straight into the caller's buffers: opendal's local reads go through
            // fresh 2 MiB buffers (and a second copy in tokio's file reader).
            return local::open_range(root, path, offset, length);
        }
        if length == 0 {
            return Ok(RangeReader::empty(path));
        }
        let stream = self
            .bounded(&path, async {
                match self.op.reader(&self.op_path(&path)).await {
                    Ok(r) => r.into_bytes_stream(offset..offset + length).await,
                    Err(e) => Err(e),
                }
                .map_err(|e| map_range_err(&path, length, e))
            })
            .await?;
        Ok(RangeReader::stream(path, stream, length))
    }

    /// Size of file `id`.
    pub async fn size(&self, ft: FileType, id: &Id) -> Result<u64, BackendError> {
        let path = ft.path(id);
        self.bounded(&path, async {
            self.op
                .stat(&self.op_path(&path))
                .await
                .map(|m| m.content_length())
                .map_err(|e| map_err(&path, e))
        })
        .await
    }

    /// Writes a whole file (overwrites; ids are content hashes, so a rewrite is identical).
    pub async fn write_path(&self, path: &str, data: Bytes) -> Result<(), BackendError> {
        self.write_buffer(path, opendal::Buffer::from(data)).await
    }

    /// Writes `path` so that it appears complete or not at all. An S3 PUT is atomic; on the
    /// local filesystem the data goes to `<path>-tmp-<random>` first (a name no listing takes
    /// for an id, as restic does) and is renamed into place, so a process killed mid-write
    /// never leaves a truncated index or snapshot file; it is written past opendal, without
    /// filling the page cache ([`local_write`]).
    async fn write_buffer(&self, path: &str, data: opendal::Buffer) -> Result<(), BackendError> {
        if let Some(root) = &self.local_root {
            return local::write(root, path, data.collect()).await;
        }
        self.bounded(path, async {
            self.op
                .write(path, data)
                .await
                .map(|_| ())
                .map_err(|e| map_err(path, e))
        })
        .await
    }

    /// Writes file `id` of type `ft`.
    pub async fn write(&self, ft: FileType, id: &Id, data: Bytes) -> Result<(), BackendError> {
        self.write_path(&ft.path(id), data).await
    }

    /// Writes file `id` of type `ft` from parts sent back to back (no copy into one buffer).
    /// Files of [`MULTIPART_THRESHOLD`] bytes or more go up as a multipart upload with two
    /// parts in flight, so a large pack does not ride on a single request.
    pub async fn write_parts(
        &self,
        ft: FileType,
        id: &Id,
        parts: Vec<Bytes>,
    ) -> Result<(), BackendError> {
        let path = ft.path(id);
        if let Some(root) = &self.local_root {
            return local::write(root, &path, parts).await;
        }
        let len: usize = parts.iter().map(Bytes::len).sum();
        let buffer = opendal::Buffer::from(parts);
        if len >= MULTIPART_THRESHOLD && self.op.info().full_capability().write_can_multi {
            // Parts are timed one by one (the timeout layer); the whole upload may take as
            // long as its size needs.
            self.op
                .write_with(&path, buffer)
                .chunk(MULTIPART_CHUNK)
                .concurrent(2)
                .await
                .map(|_| ())
                .map_err(|e| map_timeout(self, &path, map_err(&path, e)))
        } else {
            self.write_buffer(&path, buffer).await
        }
    }

    /// Writes `path` only if it does not exist yet. Returns false when it existed. Where the
    /// store cannot do this atomically, falls back to a check before the write.
    pub async fn write_new(&self, path: &str, data: Bytes) -> Result<bool, BackendError> {
        if self.exists(path).await? {
            return Ok(false);
        }
        let cap = self.op.info().full_capability();
        let op_path = self.op_path(path);
        self.bounded(path, async {
            let res = if cap.write_with_if_not_exists {
                self.op.write_with(&op_path, data).if_not_exists(true).await
            } else {
                self.op.write(&op_path, data).await
            };
            match res {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == ErrorKind::ConditionNotMatch => Ok(false),
                Err(e) => Err(map_err(path, e)),
            }
        })
        .await
    }

    /// Whether [`Backend::write_new`] creates atomically here: of writers racing for one name
    /// exactly one wins. True where opendal's service can create only if absent: the local
    /// filesystem and the services that take a condition (S3's `If-None-Match: *`, Azure's, GCS's
    /// `ifGenerationMatch=0`); false on restic's REST protocol, which has none, where
    /// `write_new` checks and then writes. A server that ignores the condition (Garage,
    /// fake-gcs-server) cannot be told apart: there it is true and racing writers all win.
    pub fn creates_atomically(&self) -> bool {
        self.op.info().full_capability().write_with_if_not_exists
    }

    /// Whether `path` exists.
    pub async fn exists(&self, path: &str) -> Result<bool, BackendError> {
        self.bounded(path, async {
            self.op
                .exists(&self.op_path(path))
                .await
                .map_err(|e| map_err(path, e))
        })
        .await
    }

    /// Deletes file `id` (missing files are not an error).
    pub async fn remove(&self, ft: FileType, id: &Id) -> Result<(), BackendError> {
        let path = ft.path(id);
        self.bounded(&path, async {
            self.op
                .delete(&self.op_path(&path))
                .await
                .map_err(|e| map_err(&path, e))
        })
        .await
    }

    /// Lists all files of type `ft` with their sizes. Names that are not ids are ignored.
    pub async fn list(&self, ft: FileType) -> Result<Vec<Listed>, BackendError> {
        let dir = format!("{}/", ft.dir());
        // Bounded per page rather than as a whole: a large repository's listing takes many
        // requests, each of which must answer in time.
        let mut lister = match self
            .bounded(&dir, async {
                self.op
                    .lister_with(&self.op_path(&dir))
                    .recursive(true)
                    .await
                    .map_err(|e| map_err(&dir, e))
            })
            .await
        {
            Ok(l) => l,
            Err(BackendError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        loop {
            let next = self
                .bounded(&dir, async {
                    use futures::TryStreamExt;
                    match lister.try_next().await {
                        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                        other => other.map_err(|e| map_err(&dir, e)),
                    }
                })
                .await?;
            match next {
                Some(entry) => entries.push(entry),
                None => break,
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.metadata().mode() != EntryMode::FILE {
                continue;
            }
            let Ok(id) = entry.name().parse::<Id>() else {
                continue;
            };
            let mut size = entry.metadata().content_length();
            if size == 0 {
                // Some services (the local fs) do not report sizes while listing.
                size = self
                    .bounded(entry.path(), async {
                        self.op
                            .stat(entry.path())
                            .await
                            .map_err(|e| map_err(entry.path(), e))
                    })
                    .await?
                    .content_length();
            }
            out.push(Listed { id, size });
        }
        Ok(out)
    }
}
