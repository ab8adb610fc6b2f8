//! One backup: lock, load the index, find the parent, run archiver and sink side by side, and
//! write the snapshot last, only when everything before it succeeded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Local};
use snapback_repo::budget::ByteBudget;
use snapback_repo::buffers::{BufferPool, POOL_BYTES};
use snapback_repo::file::SnapshotFile;
use snapback_repo::locking::RepoLock;
use snapback_repo::{BlobIndex, FileType, Id, Repository};
use snapback_stream::entry::EntrySource;
use tokio_util::sync::CancellationToken;

use crate::archiver::{ArchiveOptions, ArchiveStats, Archiver};
use crate::progress::Progress;
use crate::sink::{SinkOptions, SinkStats};
use crate::{Error, Result};

/// Which snapshot is the parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ParentChoice {
    /// The latest snapshot with the same host and paths.
    #[default]
    Latest,
    /// This snapshot (id or prefix).
    Snapshot(String),
    /// None: read everything.
    None,
}

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Host recorded in the snapshot and used to find the parent.
    pub host: String,
    /// Paths recorded in the snapshot (absolute paths, or `/<stdin-filename>`).
    pub paths: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Exclude patterns to record.
    pub excludes: Vec<String>,
    /// Parent selection.
    pub parent: ParentChoice,
    /// Skip reading unchanged files (path backups; streams are always read).
    pub reuse_unchanged: bool,
    /// Fill undescribed parent directories from the local filesystem (path backups).
    pub stat_implicit_dirs: bool,
    /// Snapshot time (default: now).
    pub time: Option<DateTime<FixedOffset>>,
    /// Sink tuning.
    pub sink: SinkOptions,
    /// Cancels the backup: no snapshot is written.
    pub cancel: CancellationToken,
    /// Live counters for a progress display.
    pub progress: Arc<Progress>,
    /// Take no lock (tests of lock handling only).
    pub no_lock: bool,
    /// Memory the listings of the open directories may hold together (see
    /// [`ArchiveOptions::max_listing_bytes`]).
    pub max_listing_bytes: usize,
}

impl BackupOptions {
    /// Defaults for a backup of `paths` from `host`.
    pub fn new(host: impl Into<String>, paths: Vec<String>) -> Self {
        BackupOptions {
            host: host.into(),
            paths,
            tags: Vec::new(),
            excludes: Vec::new(),
            parent: ParentChoice::Latest,
            reuse_unchanged: true,
            stat_implicit_dirs: false,
            time: None,
            sink: SinkOptions::default(),
            cancel: CancellationToken::new(),
            progress: Arc::new(Progress::default()),
            no_lock: false,
            max_listing_bytes: crate::archiver::MAX_LISTING_BYTES,
        }
    }
}

/// The result of a backup.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    /// The new snapshot.
    pub snapshot_id: Id,
    /// Its parent, if any.
    pub parent: Option<Id>,
    /// What the archiver saw.
    pub archive: ArchiveStats,
    /// What was stored.
    pub stored: SinkStats,
    /// Wall time.
    pub duration: Duration,
}

/// Backs up everything `source` yields into `repo` as one snapshot.
pub async fn backup(
    repo: &Repository,
    source: Box<dyn EntrySource + Send>,
    opts: BackupOptions,
) -> Result<BackupSummary> {
    let lock = if opts.no_lock {
        None
    } else {
        Some(repo.lock(false).await?)
    };
    let result = run(repo, source, &opts, lock.as_ref()).await;
    if let Some(lock) = lock {
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "could not remove the repository lock");
        }
    }
    result
}

/// Aborts the spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run(
    repo: &Repository,
    mut source: Box<dyn EntrySource + Send>,
    opts: &BackupOptions,
    lock: Option<&RepoLock>,
) -> Result<BackupSummary> {
    let started = Instant::now();
    // A lost lock stops the pipeline early: others may already take our packs for garbage.
    let cancel = opts.cancel.child_token();
    let _watchdog = lock.map(|lock| {
        let lost = lock.lost();
        let cancel = cancel.clone();
        AbortOnDrop(tokio::spawn(async move {
            let e = lost.await;
            tracing::error!(error = %e, "stopping the backup");
            cancel.cancel();
        }))
    });
    let time = opts.time.unwrap_or_else(|| Local::now().fixed_offset());
    let index = Arc::new(BlobIndex::load(repo).await?);
    let parent = find_parent(repo, opts).await?;
    if let Some((id, _)) = &parent {
        tracing::info!(parent = %id.short(), "using parent snapshot");
    }

    let buffers = Arc::new(BufferPool::new(POOL_BYTES));
    let budget = ByteBudget::new(opts.sink.budget_bytes());
    let (tx, trees, sink) =
        crate::sink::start_with_finder(repo.clone(), opts.sink, buffers.clone());
    let archive_opts = ArchiveOptions {
        parent_tree: parent.as_ref().map(|(_, s)| s.tree),
        parent_time: parent.as_ref().map(|(_, s)| s.time.timestamp()),
        reuse_unchanged: opts.reuse_unchanged,
        stat_implicit_dirs: opts.stat_implicit_dirs,
        time,
        cancel: cancel.clone(),
        progress: opts.progress.clone(),
        tree_zstd_level: opts.sink.zstd_level.filter(|_| repo.compression()),
        max_listing_bytes: opts.max_listing_bytes,
    };
    let handle = tokio::runtime::Handle::current();
    let repo2 = repo.clone();
    let archived = tokio::task::spawn_blocking(move || {
        let archiver = Archiver::new(
            repo2,
            handle,
            index,
            tx,
            trees,
            buffers,
            budget,
            archive_opts,
        )?;
        archiver.run(source.as_mut())
    })
    .await
    .map_err(|e| Error::Pipeline(format!("archiver: {e}")));
    // The archiver dropped its sender: the sink drains, uploads the last packs, writes the index.
    let stored = sink
        .await
        .map_err(|e| Error::Pipeline(format!("sink: {e}")))?;
    // A lost lock explains a cancelled or failed pipeline, so report it first.
    check_lock(lock)?;
    // A sink failure explains an archiver's "upload stage stopped", so report it first.
    let stored = stored?;
    let (tree, archive) = archived??;
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }

    let snapshot = SnapshotFile {
        time,
        parent: parent.as_ref().map(|(id, _)| *id),
        tree,
        paths: opts.paths.clone(),
        hostname: opts.host.clone(),
        username: snapback_repo::host::username(),
        uid: snapback_repo::host::ids().0,
        gid: snapback_repo::host::ids().1,
        excludes: opts.excludes.clone(),
        tags: opts.tags.clone(),
        original: None,
        program_version: Some(format!("snapback {}", env!("CARGO_PKG_VERSION"))),
    };
    // The last moment to find the lock lost: after this the snapshot is there.
    check_lock(lock)?;
    let snapshot_id = repo.save_json(FileType::Snapshot, &snapshot).await?;
    Ok(BackupSummary {
        snapshot_id,
        parent: parent.map(|(id, _)| id),
        archive,
        stored,
        duration: started.elapsed(),
    })
}

fn check_lock(lock: Option<&RepoLock>) -> Result<()> {
    match lock {
        Some(lock) => Ok(lock.check()?),
        None => Ok(()),
    }
}

async fn find_parent(
    repo: &Repository,
    opts: &BackupOptions,
) -> Result<Option<(Id, SnapshotFile)>> {
    match &opts.parent {
        ParentChoice::None => Ok(None),
        ParentChoice::Snapshot(spec) => Ok(Some(repo.find_snapshot(spec, None, &[]).await?)),
        ParentChoice::Latest => Ok(repo.latest_snapshot(Some(&opts.host), &opts.paths).await?),
    }
}
