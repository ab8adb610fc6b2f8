//! Storage of repository files through opendal: the local filesystem, S3, and (behind cargo
//! features, see [`crate::services`]) Azure Blob Storage, Google Cloud Storage and restic's
//! REST server.
//!
//! Knows restic's repository URL forms and file layout, nothing about file contents.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opendal::layers::{HttpClientLayer, RetryLayer, TimeoutLayer};
use opendal::{services, EntryMode, ErrorKind, Operator};

use crate::s3::{self, ContainerCredentials, StorageProblem, TlsError, TlsOptions, WebIdentity};
use crate::{local_write, Id};

/// Files at least this large are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// Part size of a multipart upload (S3's minimum is 5 MiB).
const MULTIPART_CHUNK: usize = 8 * 1024 * 1024;

/// The kinds of files in a repository and the folder each lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// `keys/`
    Key,
    /// `locks/`
    Lock,
    /// `snapshots/`
    Snapshot,
    /// `index/`
    Index,
    /// `data/xx/`
    Pack,
}

impl FileType {
    /// The folder name.
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Key => "keys",
            FileType::Lock => "locks",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Pack => "data",
        }
    }

    /// The path of file `id` of this type, relative to the repository root.
    pub fn path(self, id: &Id) -> String {
        let hex = id.to_hex();
        match self {
            FileType::Pack => format!("data/{}/{hex}", &hex[..2]),
            _ => format!("{}/{hex}", self.dir()),
        }
    }
}

/// Where a repository lives, parsed from restic's URL forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `/path`, `local:/path` or a relative path.
    Local {
        /// Directory of the repository.
        path: String,
    },
    /// `s3:http(s)://host[:port]/bucket[/prefix]` or `s3:host/bucket[/prefix]` (https).
    S3 {
        /// `http(s)://host[:port]`.
        endpoint: String,
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (may be empty).
        prefix: String,
    },
    /// `azure:container:/path` (Azure Blob Storage).
    Azure {
        /// Container name.
        container: String,
        /// Blob name prefix inside the container (may be empty).
        prefix: String,
    },
    /// `gs:bucket:/path` (Google Cloud Storage).
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Object name prefix inside the bucket (may be empty).
        prefix: String,
    },
    /// `rest:http(s)://[user:password@]host[:port]/path` (restic's REST server protocol).
    Rest {
        /// The server URL, credentials included when the URL had them.
        url: crate::services::RestUrl,
    },
}

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
        /// "S3 server at <endpoint>" or the local directory.
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

impl Location {
    /// Parses restic's repository string.
    pub fn parse(repo: &str) -> Result<Self, BackendError> {
        let bad = || BackendError::Location(repo.to_string());
        if let Some(rest) = repo.strip_prefix("s3:") {
            let (scheme, rest) = if let Some(r) = rest.strip_prefix("http://") {
                ("http", r)
            } else if let Some(r) = rest.strip_prefix("https://") {
                ("https", r)
            } else {
                ("https", rest)
            };
            let mut parts = rest.splitn(3, '/');
            let host = parts.next().filter(|h| !h.is_empty()).ok_or_else(bad)?;
            let bucket = parts.next().filter(|b| !b.is_empty()).ok_or_else(bad)?;
            let prefix = parts.next().unwrap_or("").trim_matches('/').to_string();
            return Ok(Location::S3 {
                endpoint: format!("{scheme}://{host}"),
                bucket: bucket.to_string(),
                prefix,
            });
        }
        if let Some(loc) = crate::services::parse(repo) {
            return loc;
        }
        if let Some(path) = repo.strip_prefix("local:") {
            return Ok(Location::Local {
                path: path.to_string(),
            });
        }
        // Any other `scheme:` prefix is a backend we do not support (rest:, sftp:, b2:, ...).
        if let Some((scheme, _)) = repo.split_once(':') {
            if !scheme.contains('/') && scheme.len() > 1 {
                return Err(bad());
            }
        }
        if repo.is_empty() {
            return Err(bad());
        }
        Ok(Location::Local {
            path: repo.to_string(),
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local { path } => write!(f, "local:{path}"),
            Location::S3 {
                endpoint,
                bucket,
                prefix,
            } => write!(f, "s3:{endpoint}/{bucket}/{prefix}"),
            Location::Azure { container, prefix } => write!(f, "azure:{container}:/{prefix}"),
            Location::Gcs { bucket, prefix } => write!(f, "gs:{bucket}:/{prefix}"),
            Location::Rest { url } => write!(f, "rest:{url}"),
        }
    }
}

/// S3 credentials and settings, normally from restic's and the AWS SDKs' environment
/// variables; see [`crate::s3`] for the order they are tried in.
#[derive(Clone, Default)]
pub struct S3Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// `AWS_SESSION_TOKEN` (with the two above: temporary keys).
    pub session_token: Option<String>,
    /// `AWS_DEFAULT_REGION` or `AWS_REGION` (default `us-east-1`).
    pub region: Option<String>,
    /// `AWS_PROFILE`: read the shared config files (only when set).
    pub profile: Option<String>,
    /// `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` (EKS IRSA).
    pub web_identity: Option<WebIdentity>,
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI` (EKS Pod Identity, ECS).
    pub container: Option<ContainerCredentials>,
    /// `AWS_EC2_METADATA_DISABLED=false`: ask the EC2 instance metadata service.
    pub imds: bool,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("web_identity", &self.web_identity)
            .field("container", &self.container)
            .field("imds", &self.imds)
            .finish()
    }
}

impl S3Credentials {
    /// Reads the credential settings from the environment (see [`crate::s3`]).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let region = var("AWS_DEFAULT_REGION").or_else(|| var("AWS_REGION"));
        let (web_identity, container, imds) =
            s3::env_sources(&var, region.as_deref().unwrap_or("us-east-1"));
        S3Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
            region,
            profile: var("AWS_PROFILE"),
            web_identity,
            container,
            imds,
        }
    }
}

/// Retry and timeout policy for storage operations.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first one for a temporary failure.
    pub max_retries: usize,
    /// First backoff delay (doubles each retry, with jitter).
    pub min_delay: Duration,
    /// Longest backoff delay.
    pub max_delay: Duration,
    /// Timeout of one non-IO operation (stat, delete, list page).
    pub timeout: Duration,
    /// Timeout of one read/write chunk.
    pub io_timeout: Duration,
    /// Timeout of opening a TCP connection to an S3 endpoint.
    pub connect_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 6,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The default policy with overrides from the environment: `SNAPBACK_IO_TIMEOUT_SECS`
    /// (timeout of one operation and of one read/write chunk) and `SNAPBACK_RETRIES` (retries
    /// of a temporary failure). Values that do not parse are ignored with a warning.
    pub fn from_env() -> Self {
        let mut policy = RetryPolicy::default();
        if let Some(secs) = env_number("SNAPBACK_IO_TIMEOUT_SECS") {
            policy = policy.with_timeout(Duration::from_secs(secs));
        }
        if let Some(n) = env_number("SNAPBACK_RETRIES") {
            policy.max_retries = usize::try_from(n).unwrap_or(usize::MAX);
        }
        policy
    }
}

impl RetryPolicy {
    /// Sets the timeout of one request (and of one read/write chunk) to `t` (at least one
    /// second); the connect timeout is never longer.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        let t = t.max(Duration::from_secs(1));
        self.timeout = t;
        self.io_timeout = t;
        self.connect_timeout = self.connect_timeout.min(t);
        self
    }

    /// Longest one storage operation may take, retries included: two timed-out attempts plus
    /// the whole backoff schedule, so that a request that timed out once still has every retry
    /// for the quick transient faults (503, a dropped connection) that may follow it. Without
    /// this bound the retry layer would turn a server that accepts connections and never
    /// answers into `max_retries + 1` timeouts plus backoff (over seven minutes with the
    /// defaults; about two with it).
    pub fn deadline(&self) -> Duration {
        let attempt = self.timeout.max(self.io_timeout);
        let mut backoff = Duration::ZERO;
        let mut delay = self.min_delay;
        for _ in 0..self.max_retries {
            backoff += delay.min(self.max_delay);
            delay = delay.saturating_mul(2);
        }
        attempt * 2 + backoff
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(variable = name, value = %value, "ignoring a value that is not a whole number");
            None
        }
    }
}

/// A repository's storage.
#[derive(Debug, Clone)]
pub struct Backend {
    op: Operator,
    location: Location,
    /// The repository's directory when it is local (streamed reads use it directly).
    local_root: Option<std::path::PathBuf>,
    /// What to put in front of a repository-relative path for `op`: the local repository's
    /// directory (without the leading `/`), empty for S3. See [`Backend::new`].
    op_prefix: String,
    /// [`RetryPolicy::deadline`].
    deadline: Duration,
    /// S3 only: the access key id the requests are signed with (for error messages).
    key_id: Option<Arc<Mutex<Option<String>>>>,
    /// S3 only: what creating the bucket needs.
    bucket_maker: Option<Arc<s3::BucketMaker>>,
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
        let mut local_root = None;
        let mut key_id = None;
        let mut bucket_maker = None;
        let mut op_prefix = String::new();
        let op = match &location {
            Location::Local { path } => {
                let abs =
                    std::path::absolute(path).map_err(|_| BackendError::Location(path.clone()))?;
                // opendal's fs service creates its root when it is built; a read-only command
                // on a mistyped path must not leave directories behind. So the service is
                // rooted at `/` and every path carries the repository's directory: reads of a
                // missing repository find nothing, and only writes create directories.
                let rel = abs.to_string_lossy().trim_matches('/').to_string();
                if !rel.is_empty() {
                    op_prefix = format!("{rel}/");
                }
                local_root = Some(abs);
                Operator::new(services::Fs::default().root("/"))
                    .map_err(|e| storage("", e))?
                    .finish()
            }
            Location::S3 {
                endpoint,
                bucket,
                prefix,
            } => {
                // opendal's own loading is off (it would read ~/.aws unasked and ask the EC2
                // metadata service): our loader reads the sources the environment names, and
                // no address but the endpoint and those is ever contacted.
                let region = creds.region.as_deref().unwrap_or("us-east-1");
                let mut b = services::S3::default()
                    .endpoint(endpoint)
                    .bucket(bucket)
                    .root(&format!("/{prefix}"))
                    .region(region)
                    .disable_config_load()
                    .disable_ec2_metadata();
                // opendal's default client has no connect timeout: an address that drops
                // SYNs would hang for the kernel's minutes-long default.
                let client = s3::http_client(policy.connect_timeout, tls)?;
                let loader = Arc::new(s3::ChainLoader::new(s3::source_from(creds), client.clone()));
                if !loader.has_source() {
                    b = b.allow_anonymous();
                }
                key_id = Some(loader.key_id());
                bucket_maker = Some(Arc::new(s3::BucketMaker {
                    client: client.clone(),
                    loader: loader.clone(),
                    endpoint: endpoint.clone(),
                    bucket: bucket.clone(),
                    region: region.to_string(),
                }));
                b = b.customized_credential_load(Box::new(s3::SharedLoader(loader)));
                let client = opendal::raw::HttpClient::with(client);
                Operator::new(b)
                    .map_err(|e| storage("", e))?
                    .layer(HttpClientLayer::new(client))
                    .finish()
            }
            other => crate::services::operator(other, &policy, tls)?,
        };
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(policy.timeout)
                    .with_io_timeout(policy.io_timeout),
            )
            .layer(
                RetryLayer::new()
                    .with_max_times(policy.max_retries)
                    .with_min_delay(policy.min_delay)
                    .with_max_delay(policy.max_delay)
                    .with_jitter(),
            );
        Ok(Backend {
            op,
            location,
            local_root,
            op_prefix,
            deadline: policy.deadline(),
            key_id,
            bucket_maker,
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

    /// Runs one storage operation on `path` within [`RetryPolicy::deadline`]; a timeout (ours
    /// or one the retry layer gave up on) becomes [`BackendError::Timeout`].
    async fn bounded<T>(
        &self,
        path: &str,
        fut: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let timeout = |secs: u64| BackendError::Timeout {
            server: self.server(),
            path: path.to_string(),
            secs,
        };
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(Err(BackendError::Storage { source, .. })) if is_timeout(&source) => Err(timeout(
                timeout_secs(&source).unwrap_or(self.deadline.as_secs()),
            )),
            Ok(Err(e)) => Err(self.explain(e)),
            Ok(res) => res,
            Err(_) => Err(timeout(self.deadline.as_secs())),
        }
    }

    /// Attaches the [`StorageProblem`] to a remote storage error, for a one-line message.
    fn explain(&self, e: BackendError) -> BackendError {
        match (e, &self.location) {
            (
                BackendError::Storage {
                    path,
                    source,
                    problem: None,
                },
                Location::S3 {
                    endpoint, bucket, ..
                },
            ) => {
                let key = self
                    .key_id
                    .as_ref()
                    .and_then(|k| k.lock().ok().and_then(|k| k.clone()));
                let problem = s3::classify(&source, endpoint, bucket, key).map(Box::new);
                tracing::debug!(path = %path, error = ?source, "storage error");
                BackendError::Storage {
                    path,
                    source,
                    problem,
                }
            }
            (
                BackendError::Storage {
                    path,
                    source,
                    problem: None,
                },
                location @ (Location::Azure { .. } | Location::Gcs { .. } | Location::Rest { .. }),
            ) => {
                let service = match location {
                    Location::Azure { .. } => "Azure",
                    Location::Gcs { .. } => "GCS",
                    _ => "REST",
                };
                let problem =
                    s3::classify_service(&source, service, crate::services::describe(location))
                        .map(Box::new);
                tracing::debug!(path = %path, error = ?source, "storage error");
                BackendError::Storage {
                    path,
                    source,
                    problem,
                }
            }
            (e, _) => e,
        }
    }

    /// Creates the S3 bucket when it does not exist (as `restic init` does). Returns whether
    /// it was created; a local repository has no bucket (false).
    pub async fn create_bucket_if_missing(&self) -> Result<bool, BackendError> {
        let Some(maker) = &self.bucket_maker else {
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
        match &self.location {
            Location::S3 { endpoint, .. } => format!("S3 server at {endpoint}"),
            Location::Local { path } => format!("local storage at {path}"),
            other => crate::services::server(other),
        }
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
            let full = root.join(path);
            let read = || -> std::io::Result<Option<Vec<u8>>> {
                use std::io::Read;
                let file = std::fs::File::open(&full)?;
                let mut out = Vec::new();
                file.take(limit + 1).read_to_end(&mut out)?;
                Ok((out.len() as u64 <= limit).then_some(out))
            };
            return match read() {
                Ok(Some(data)) => Ok(Bytes::from(data)),
                Ok(None) => Err(too_large()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BackendError::NotFound {
                    path: path.to_string(),
                }),
                Err(source) => Err(BackendError::Read {
                    path: path.to_string(),
                    source,
                }),
            };
        }
        self.bounded(path, async {
            let mut stream = match self.op.reader(&self.op_path(path)).await {
                Ok(r) => r.into_bytes_stream(..).await,
                Err(e) => Err(e),
            }
            .map_err(|e| map_err(path, e))?;
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                // The stream reports request failures (a missing object, a refused
                // connection) only when it is first polled, as opendal errors in an io::Error.
                let chunk = chunk.map_err(|source| {
                    if source.get_ref().is_some_and(|e| e.is::<opendal::Error>()) {
                        if let Some(Ok(e)) =
                            source.into_inner().map(|e| e.downcast::<opendal::Error>())
                        {
                            return map_err(path, *e);
                        }
                        return BackendError::NotFound {
                            path: path.to_string(),
                        };
                    }
                    BackendError::Read {
                        path: path.to_string(),
                        source,
                    }
                })?;
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

    /// Reads `length` bytes at `offset` of file `id`.
    pub async fn read_range(
        &self,
        ft: FileType,
        id: &Id,
        offset: u64,
        length: u64,
    ) -> Result<Bytes, BackendError> {
        let path = ft.path(id);
        self.bounded(&path, async {
            match self
                .op
                .read_with(&self.op_path(&path))
                .range(offset..offset + length)
                .await
            {
                Ok(buf) => Ok(buf.to_bytes()),
                Err(e) => Err(map_err(&path, e)),
            }
        })
        .await
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
            let file = std::fs::File::open(root.join(&path)).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    BackendError::NotFound { path: path.clone() }
                } else {
                    BackendError::Read {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
            return Ok(RangeReader {
                path,
                source: RangeSource::File { file, pos: offset },
                left: length,
            });
        }
        let stream = self
            .bounded(&path, async {
                match self.op.reader(&self.op_path(&path)).await {
                    Ok(r) => r.into_bytes_stream(offset..offset + length).await,
                    Err(e) => Err(e),
                }
                .map_err(|e| map_err(&path, e))
            })
            .await?;
        Ok(RangeReader {
            path,
            source: RangeSource::Stream {
                stream: Box::new(stream),
                pending: Bytes::new(),
            },
            left: length,
        })
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
            return write_local(root, path, data.collect()).await;
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
            return write_local(root, &path, parts).await;
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

/// A byte range of a stored file being received; see [`Backend::read_range_stream`].
pub struct RangeReader {
    path: String,
    source: RangeSource,
    /// Bytes of the range not yet received.
    left: u64,
}

enum RangeSource {
    /// A local file, read where the range is up to.
    File { file: std::fs::File, pos: u64 },
    /// A response body, with what was received and not yet consumed.
    Stream {
        stream: Box<opendal::FuturesBytesStream>,
        pending: Bytes,
    },
}

impl RangeReader {
    /// Appends the next `n` bytes of the range to `out`.
    pub async fn read_into(&mut self, n: usize, out: &mut Vec<u8>) -> Result<(), BackendError> {
        // Exact: callers size reused buffers by what they read; doubling would waste memory.
        out.reserve_exact(n);
        if let RangeSource::File { file, pos } = &mut self.source {
            if (n as u64) > self.left {
                return Err(self.short(n as u64));
            }
            let got = read_at_into(file, *pos, n, out).map_err(|source| BackendError::Read {
                path: self.path.clone(),
                source,
            })?;
            *pos += got as u64;
            self.left -= got as u64;
            return match n - got {
                0 => Ok(()),
                missing => Err(self.short(missing as u64)),
            };
        }
        let mut want = n;
        while want > 0 {
            let pending = self.fill(want as u64).await?;
            let take = want.min(pending.len());
            out.extend_from_slice(&pending.split_to(take));
            want -= take;
        }
        Ok(())
    }

    /// Skips the next `n` bytes of the range.
    pub async fn skip(&mut self, n: u64) -> Result<(), BackendError> {
        if let RangeSource::File { pos, .. } = &mut self.source {
            if n > self.left {
                return Err(self.short(n));
            }
            *pos += n;
            self.left -= n;
            return Ok(());
        }
        let mut want = n;
        while want > 0 {
            let pending = self.fill(want).await?;
            let take = want.min(pending.len() as u64);
            bytes::Buf::advance(pending, take as usize);
            want -= take;
        }
        Ok(())
    }

    fn short(&self, missing: u64) -> BackendError {
        BackendError::ShortRead {
            path: self.path.clone(),
            missing,
        }
    }

    /// The received bytes not yet consumed (never empty), with `want` bytes still to consume
    /// from a stream.
    async fn fill(&mut self, want: u64) -> Result<&mut Bytes, BackendError> {
        use futures::StreamExt;
        let path = &self.path;
        let short = || BackendError::ShortRead {
            path: path.clone(),
            missing: want,
        };
        let RangeSource::Stream { stream, pending } = &mut self.source else {
            return Err(short());
        };
        while pending.is_empty() {
            if self.left == 0 {
                // Asked for more than the range holds.
                return Err(short());
            }
            match stream.next().await {
                Some(Ok(b)) => {
                    // Never more than the range, whatever the server sends.
                    let keep = b
                        .len()
                        .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                    self.left -= keep as u64;
                    *pending = b.slice(..keep);
                }
                Some(Err(source)) => {
                    return Err(BackendError::Read {
                        path: path.clone(),
                        source,
                    })
                }
                None => return Err(short()),
            }
        }
        Ok(pending)
    }
}

/// [`Backend::write_buffer`] on the local filesystem under `root`, from the parts as they are.
async fn write_local(
    root: &std::path::Path,
    path: &str,
    parts: Vec<Bytes>,
) -> Result<(), BackendError> {
    let (root, rel) = (root.to_path_buf(), path.to_string());
    tokio::task::spawn_blocking(move || local_write::write_atomically(&root, &rel, &parts))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| BackendError::Write {
            path: path.to_string(),
            source,
        })
}

/// Appends up to `n` bytes read at `pos` of `file` to `out`; fewer only at the end of the
/// file. Returns how many.
fn read_at_into(
    file: &std::fs::File,
    pos: u64,
    n: usize,
    out: &mut Vec<u8>,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let start = out.len();
    // Zeroing costs a memset; reading into uninitialised memory would need unsafe code.
    out.resize(start + n, 0);
    let mut got = 0;
    while got < n {
        match file.read_at(&mut out[start + got..], pos + got as u64) {
            Ok(0) => break,
            Ok(r) => got += r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.truncate(start + got);
                return Err(e);
            }
        }
    }
    out.truncate(start + got);
    Ok(got)
}

/// Whether opendal's timeout layer raised `e` (after the retry layer gave up on it).
fn is_timeout(e: &opendal::Error) -> bool {
    e.kind() == ErrorKind::Unexpected && e.to_string().contains("timeout reached")
}

/// The per-attempt timeout a timeout error carries, in whole seconds.
fn timeout_secs(e: &opendal::Error) -> Option<u64> {
    let text = e.to_string();
    let at = text.find("timeout: ")? + "timeout: ".len();
    let num: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse::<f64>().ok().map(|s| s.ceil() as u64)
}

/// [`BackendError::Timeout`] for a storage error that is a timeout; others explained.
fn map_timeout(backend: &Backend, path: &str, e: BackendError) -> BackendError {
    match e {
        BackendError::Storage { source, .. } if is_timeout(&source) => BackendError::Timeout {
            server: backend.server(),
            path: path.to_string(),
            secs: timeout_secs(&source).unwrap_or(backend.deadline.as_secs()),
        },
        other => backend.explain(other),
    }
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

fn storage(path: &str, source: opendal::Error) -> BackendError {
    BackendError::Storage {
        path: path.to_string(),
        source,
        problem: None,
    }
}

fn map_err(path: &str, e: opendal::Error) -> BackendError {
    // A missing bucket is a 404 too, but not a missing file.
    if e.kind() == ErrorKind::NotFound && !s3::is_no_such_bucket(&e) {
        BackendError::NotFound {
            path: path.to_string(),
        }
    } else {
        storage(path, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_gets_two_timeouts_and_the_backoff_schedule() {
        let p = RetryPolicy::default();
        // 6 retries: 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 6.4 s of backoff.
        assert_eq!(p.deadline(), Duration::from_millis(120_000 + 12_600));
        let short = p.with_timeout(Duration::from_secs(2));
        assert_eq!(short.deadline(), Duration::from_millis(4_000 + 12_600));
        let none = RetryPolicy {
            max_retries: 0,
            ..short
        };
        assert_eq!(none.deadline(), Duration::from_secs(4));
    }

    #[test]
    fn parses_restic_location_forms() {
        assert_eq!(
            Location::parse("/srv/repo").unwrap(),
            Location::Local {
                path: "/srv/repo".into()
            }
        );
        assert_eq!(
            Location::parse("local:/srv/r").unwrap(),
            Location::Local {
                path: "/srv/r".into()
            }
        );
        assert_eq!(
            Location::parse("s3:http://127.0.0.1:9000/bucket/some/prefix").unwrap(),
            Location::S3 {
                endpoint: "http://127.0.0.1:9000".into(),
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            Location::parse("s3:s3.amazonaws.com/b").unwrap(),
            Location::S3 {
                endpoint: "https://s3.amazonaws.com".into(),
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert!(Location::parse("sftp:host:/x").is_err());
        assert!(Location::parse("s3:http://host").is_err());
        assert!(Location::parse("").is_err());
    }

    #[test]
    fn pack_paths_use_two_hex_digit_folders() {
        let id = Id::hash(b"x");
        assert_eq!(
            FileType::Pack.path(&id),
            format!("data/{}/{}", &id.to_hex()[..2], id)
        );
        assert_eq!(FileType::Snapshot.path(&id), format!("snapshots/{id}"));
    }
}
