//! Creating the repository from a Pod. Several Pods (replicas, or one restarted mid-way) may
//! start at once against a repository that does not exist yet: with `if_missing`, whoever
//! loses the race to write the config opens the winner's repository instead of failing
//! (`Repository::init_or_open` makes the creation itself safe). A bucket that does not exist
//! yet is created first, as restic does.

use snapback_repo::{Backend, BlobIndex, InitOptions, InitOutcome, Repository};

/// Why the repository could not be created, opened or read.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Creating the bucket, the repository, or opening it failed.
    #[error(transparent)]
    Repository(#[from] snapback_repo::Error),
    /// Creating the bucket failed.
    #[error(transparent)]
    Backend(#[from] snapback_repo::backend::BackendError),
    /// The repository opened but its index is not readable: the first backup would fail.
    #[error("the repository's index is not readable: {0}")]
    Index(#[source] snapback_repo::Error),
}

/// What [`create`] did.
pub struct Created {
    /// The repository, open.
    pub repo: Repository,
    /// Whether it was created now or opened.
    pub outcome: InitOutcome,
    /// Whether the bucket was created now.
    pub bucket_created: bool,
}

/// Creates the repository at `backend` (its bucket too when missing); with `if_missing` an
/// existing repository (or one another Pod creates meanwhile) is opened instead.
pub async fn create(
    backend: Backend,
    password: &[u8],
    opts: InitOptions,
    if_missing: bool,
) -> Result<Created, CreateError> {
    let bucket_created = backend.create_bucket_if_missing().await?;
    let (repo, outcome) = if if_missing {
        Repository::init_or_open(backend, password, opts).await?
    } else {
        (
            Repository::init(backend, password, opts).await?,
            InitOutcome::Created,
        )
    };
    Ok(Created {
        repo,
        outcome,
        bucket_created,
    })
}

/// Loads the index: what the first backup reads first, so that a broken index fails the
/// initContainer rather than the sidecar's first backup.
pub async fn check_index(repo: &Repository) -> Result<BlobIndex, CreateError> {
    let index = BlobIndex::load(repo).await.map_err(CreateError::Index)?;
    tracing::info!(blobs = index.len(), "index readable");
    Ok(index)
}
