//! The sidecar's jobs: one backup (and, after a scheduled success, the retention policy) and
//! one verification drill, as the [`Job`] and [`Drill`] the `snapback-sidecar` daemon
//! schedules. That crate knows nothing of repositories; this module supplies them.
//!
//! Retention rule: whoever can call `POST /backup` must not be able to rotate good snapshots
//! out faster than the schedule would. So snapshots taken on request are tagged
//! [`ON_DEMAND_TAG`], the policy runs only after scheduled (and shutdown) backups, and it
//! neither counts nor removes on-demand snapshots.
//!
//! A drill checks that the latest snapshot of this sidecar's host and paths can be restored:
//! a rotating share of its packs is downloaded and verified, a sample of its files is compared
//! with the live volume (or, for a stream, every member is read back).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use snapback_archive::progress::Progress;
use snapback_archive::BackupOptions;
use snapback_maintenance::drill::{read_back, ReadShare};
use snapback_maintenance::{ExpirePolicy, ForgetOptions, SnapshotFilter};
use snapback_repo::{BlobIndex, FileType, Id, Repository};
use snapback_restore::drill_scan::{scan_snapshot, ScanMode};
use snapback_sidecar::{
    Drill, DrillFuture, DrillOutcome, DrillReport, Job, JobFuture, Metrics, Outcome, Report,
    RunKind, Shared,
};
use snapback_stream::entry::EntrySource;
use snapback_stream::{stream_source, CommandGate, CommandPipe, StreamMode, WalkOptions, Walker};
use tokio_util::sync::CancellationToken;

/// The tag of snapshots taken on request (`POST /backup`). The retention policy neither counts
/// nor removes them, so requests cannot rotate scheduled snapshots out; remove them with
/// `snapback forget --tag on-demand ...` when they are no longer wanted.
pub const ON_DEMAND_TAG: &str = "on-demand";

/// Why a backup's source could not be prepared or a drill could not finish.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A walk root is not there (or not readable).
    #[error("cannot back up {}: {source}", path.display())]
    Root {
        /// The root.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The walker or the producer command could not start.
    #[error(transparent)]
    Source(#[from] snapback_stream::Error),
    /// Reading the repository failed.
    #[error(transparent)]
    Repository(#[from] snapback_repo::Error),
    /// Walking the snapshot's trees failed.
    #[error(transparent)]
    Scan(#[from] snapback_restore::Error),
    /// Stopped on request.
    #[error("cancelled")]
    Cancelled,
}

/// What a backup reads: paths walked from the filesystem, or a producer command's output.
#[derive(Debug, Clone)]
pub enum JobSource {
    /// Walk these roots (exact paths; the snapshot's path list is JSON text, lossy where not
    /// UTF-8).
    Paths {
        /// The roots, absolute.
        roots: Vec<PathBuf>,
        /// How to walk them.
        walk: WalkOptions,
    },
    /// Run this command for each backup and back up its standard output.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
        /// Tar, one file, or detected.
        mode: StreamMode,
        /// The file name of a raw stream.
        name: String,
    },
}

/// What every backup run needs, prepared once.
pub struct JobConfig {
    /// The repository, open for the daemon's lifetime.
    pub repo: Repository,
    /// Where entries come from.
    pub source: JobSource,
    /// The options of each backup; tags, cancellation and progress are set per run.
    pub template: BackupOptions,
    /// The policy applied after scheduled and shutdown successes, if any.
    pub retention: Option<ForgetOptions>,
}

/// The retention options for `policy` over this sidecar's own snapshots (its host and paths,
/// on-demand ones excepted); `None` for an empty policy.
pub fn retention(policy: ExpirePolicy, host: &str, paths: &[String]) -> Option<ForgetOptions> {
    (!policy.is_empty()).then(|| ForgetOptions {
        policy,
        filter: SnapshotFilter {
            hosts: vec![host.to_string()],
            paths: paths.to_vec(),
            exclude_tags: vec![ON_DEMAND_TAG.to_string()],
            ..SnapshotFilter::default()
        },
        ..ForgetOptions::default()
    })
}

/// The backup job: each run backs up, frees memory, and refreshes the latest-snapshot metric.
pub struct BackupJob {
    config: Arc<JobConfig>,
    shared: Arc<Shared>,
}

impl BackupJob {
    /// A job over `config`, reporting into `shared`'s metrics.
    pub fn new(config: Arc<JobConfig>, shared: Arc<Shared>) -> Self {
        BackupJob { config, shared }
    }
}

impl Job for BackupJob {
    fn run(&self, kind: RunKind, cancel: CancellationToken) -> JobFuture {
        let config = self.config.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            let outcome = one_backup(config.clone(), kind, cancel).await;
            release_memory();
            // After failures too: whether the repository answers is what tells a failing
            // source from an unreachable store.
            let t = &config.template;
            refresh_latest(&config.repo, &t.host, &t.paths, &shared.metrics).await;
            outcome
        })
    }
}

/// The verification drill, and the rotation state between drills.
pub struct DrillJob {
    state: Arc<DrillState>,
}

struct DrillState {
    job: Arc<JobConfig>,
    share: ReadShare,
    files: usize,
    /// The last pack read. Kept in memory only: after a restart the first drill starts at a
    /// random pack id (ids are SHA-256 hashes, so a random start is a uniform one), which keeps
    /// a Pod that restarts often from reading the same first packs again and again.
    cursor: Mutex<Id>,
}

impl DrillJob {
    /// Drills over the latest snapshot of `job`'s host and paths: `share` of its packs read
    /// back each time, `files` files compared with the live volume.
    pub fn new(job: Arc<JobConfig>, share: ReadShare, files: usize) -> Self {
        DrillJob {
            state: Arc::new(DrillState {
                job,
                share,
                files,
                cursor: Mutex::new(Id::random()),
            }),
        }
    }
}

impl Drill for DrillJob {
    fn run(&self, cancel: CancellationToken) -> DrillFuture {
        let state = self.state.clone();
        Box::pin(async move {
            let outcome = one_drill(&state, cancel).await;
            release_memory();
            outcome
        })
    }
}

/// Longest wait between two attempts to reach the repository at startup.
const OPEN_RETRY_MAX: Duration = Duration::from_secs(60);

/// Opens the repository with `open`, retrying the errors `transient` accepts (the object
/// store may be unreachable while the Pod starts) with a pause that starts at 1 s and doubles
/// up to a minute, each logged with `describe`; other errors are returned at once. `None` when
/// `shutdown` fires meanwhile. Keeps the repository-up metric current.
pub async fn open_with_retry<E, Fut>(
    mut open: impl FnMut() -> Fut,
    transient: impl Fn(&E) -> bool,
    describe: impl Fn(&E) -> String,
    shutdown: &CancellationToken,
    metrics: &Metrics,
) -> Result<Option<Repository>, E>
where
    Fut: Future<Output = Result<Repository, E>>,
{
    let mut pause = Duration::from_secs(1);
    loop {
        let err = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = open() => match r {
                Ok(repo) => {
                    metrics.set_repository_up(true);
                    return Ok(Some(repo));
                }
                Err(e) => e,
            },
        };
        metrics.set_repository_up(false);
        if !transient(&err) {
            return Err(err);
        }
        tracing::warn!(
            error = %describe(&err),
            retry_in_s = pause.as_secs(),
            "cannot reach the repository, retrying"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(OPEN_RETRY_MAX);
    }
}

/// Reads the time of the newest snapshot of `host` and `paths` into the metrics, and whether
/// the repository answered. Any snapshot counts, on-demand ones too: each is a restore point.
pub async fn refresh_latest(repo: &Repository, host: &str, paths: &[String], metrics: &Metrics) {
    match repo.latest_snapshot(Some(host), paths).await {
        Ok(latest) => {
            metrics.set_repository_up(true);
            let ms = latest.map_or(0, |(_, s)| {
                u64::try_from(s.time.timestamp_millis()).unwrap_or(0)
            });
            metrics.set_latest_snapshot(ms);
        }
        Err(e) => {
            metrics.set_repository_up(false);
            tracing::warn!(error = %e, "cannot read the latest snapshot from the repository");
        }
    }
}

/// The error and its causes on one line, without opendal's request details (the repository
/// crate already said what and where): the text of a failed run in the status and metrics.
pub fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(err);
    while let Some(c) = cause {
        if snapback_repo::backend::is_storage_detail(c) {
            break;
        }
        let s = c.to_string();
        // Typed errors often repeat their source in their own message.
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cause = c.source();
    }
    parts.join(": ")
}

/// One verification drill over the latest snapshot of this sidecar's host and paths, under a
/// shared lock (so that a prune cannot delete packs under it):
///
/// 1. one walk over its trees collects the packs it uses and either reads every stream member
///    back or compares a sample of files with the live volume (`snapback_restore::drill_scan`);
/// 2. the next share of those packs, after the cursor, is downloaded and verified whole
///    (`snapback_maintenance::drill`), one pack in memory at a time.
async fn one_drill(state: &DrillState, cancel: CancellationToken) -> DrillOutcome {
    let repo = &state.job.repo;
    let lock = match repo.lock(false).await {
        Ok(l) => l,
        Err(e) => return DrillOutcome::Failed(format!("cannot lock the repository: {e}")),
    };
    let outcome = drill_locked(state, &cancel).await;
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "drill: cannot remove the repository lock");
    }
    match outcome {
        Ok(report) => DrillOutcome::Done(report),
        Err(_) if cancel.is_cancelled() => DrillOutcome::Cancelled,
        Err(e) => DrillOutcome::Failed(error_text(&e)),
    }
}

async fn drill_locked(
    state: &DrillState,
    cancel: &CancellationToken,
) -> Result<DrillReport, JobError> {
    let repo = &state.job.repo;
    let t = &state.job.template;
    let Some((snapshot_id, snapshot)) = repo.latest_snapshot(Some(&t.host), &t.paths).await? else {
        tracing::info!("verification drill: no snapshot of this host and paths yet");
        return Ok(DrillReport::default());
    };
    let index = Arc::new(BlobIndex::load(repo).await?);
    let mode = match state.job.source {
        JobSource::Command { .. } => ScanMode::Stream,
        JobSource::Paths { .. } => ScanMode::Live {
            sample: state.files,
            // A different sample each drill.
            seed: Id::random()
                .0
                .iter()
                .fold(0u64, |a, b| a << 8 | u64::from(*b)),
        },
    };
    let scan = scan_snapshot(repo, index.clone(), snapshot.tree, mode, cancel).await?;
    let mut report = DrillReport {
        snapshot: Some(snapshot_id.to_string()),
        files_verified: scan.files_verified,
        bytes_verified: scan.bytes_verified,
        ..DrillReport::default()
    };
    for p in scan.problems {
        let message = if p.path.as_os_str().is_empty() {
            p.message
        } else {
            format!("{}: {}", p.path.display(), p.message)
        };
        report.problems.push((p.kind.as_str(), message));
    }
    if scan.files_changed > 0 {
        tracing::info!(
            files = scan.files_changed,
            "drill: sampled files changed since the backup were not compared"
        );
    }
    if cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    let stored: HashMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)
        .await
        .map_err(snapback_repo::Error::from)?
        .into_iter()
        .map(|l| (l.id, l.size))
        .collect();
    let mut packs = Vec::with_capacity(scan.packs.len());
    for id in &scan.packs {
        match stored.get(id) {
            Some(&size) => packs.push((*id, size)),
            None => report.problems.push((
                "pack",
                format!("{}: missing from storage", FileType::Pack.path(id)),
            )),
        }
    }
    let cursor = state.cursor.lock().map(|c| *c).unwrap_or_default();
    let stop = || cancel.is_cancelled();
    let read = read_back(repo, &index, &packs, state.share, Some(cursor), &stop).await;
    if cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    if let (Some(c), Ok(mut slot)) = (read.cursor, state.cursor.lock()) {
        *slot = c;
    }
    report.packs_read = read.packs_read as u64;
    report.bytes_verified += read.bytes_read;
    for e in read.errors {
        report.problems.push(("pack", e.to_string()));
    }
    Ok(report)
}

/// One backup and, after a scheduled or shutdown success, the retention policy.
async fn one_backup(config: Arc<JobConfig>, kind: RunKind, cancel: CancellationToken) -> Outcome {
    let source = {
        let config = config.clone();
        // Walker setup stats the roots and a producer's output is sniffed: blocking work.
        tokio::task::spawn_blocking(move || build_source(&config.source)).await
    };
    let source = match source {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Outcome::Failure(error_text(&e)),
        Err(e) => return Outcome::Failure(format!("preparing the source: {e}")),
    };
    let mut opts = config.template.clone();
    if kind == RunKind::Requested {
        opts.tags.push(ON_DEMAND_TAG.to_string());
    }
    opts.cancel = cancel.clone();
    opts.progress = Arc::new(Progress::default());
    let result = snapback_archive::backup(&config.repo, source, opts).await;
    if cancel.is_cancelled() {
        return Outcome::Cancelled;
    }
    let summary = match result {
        Ok(s) => s,
        Err(snapback_archive::Error::Cancelled) => return Outcome::Cancelled,
        Err(e) => return Outcome::Failure(error_text(&e)),
    };
    for w in &summary.archive.warnings {
        tracing::warn!(warning = %w, "entry not read completely");
    }
    match (&config.retention, kind) {
        (Some(forget), RunKind::Scheduled | RunKind::Shutdown) => {
            apply_retention(&config.repo, forget).await;
        }
        (Some(_), RunKind::Requested) => {
            tracing::info!("requested backup: retention runs after scheduled backups only");
        }
        (None, _) => {}
    }
    let a = &summary.archive;
    Outcome::Success(Report {
        snapshot: summary.snapshot_id.to_string(),
        files_new: a.files_new,
        files_changed: a.files_changed,
        files_unchanged: a.files_unchanged,
        bytes_read: a.bytes_read,
        bytes_added: a.bytes_new,
        warnings: a.warnings.len() as u64,
    })
}

/// After a run: the index, buffers and pools of the backup are dropped by now; free the
/// process-wide caches too and hand the allocator's free memory back to the OS, so that the
/// sidecar waits for its next backup at its start-up size.
fn release_memory() {
    snapback_archive::sink::release_idle_contexts();
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only returns free pages of glibc's arenas; safe from any thread.
        // No safe wrapper in the dependency tree offers it.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released = released != 0, "returned free memory to the OS");
    }
}

/// Forgets this sidecar's snapshots outside the policy; the policy's filter leaves on-demand
/// snapshots alone. A failure is logged, not fatal: the new snapshot is saved, and the next
/// success tries again. Data is freed by `prune`, run elsewhere (it needs an exclusive lock for
/// longer than a sidecar should hold one).
async fn apply_retention(repo: &Repository, forget: &ForgetOptions) {
    match snapback_maintenance::forget(repo, forget).await {
        Ok(report) => tracing::info!(
            removed = report.removed.len(),
            snapshots = ?report.removed.iter().map(|id| id.short()).collect::<Vec<_>>(),
            "retention policy applied"
        ),
        Err(e) => tracing::error!(error = %e, "retention policy not applied"),
    }
}

fn build_source(source: &JobSource) -> Result<Box<dyn EntrySource + Send>, JobError> {
    match source {
        JobSource::Command { argv, mode, name } => {
            // The producer needs none of our secrets.
            let pipe = CommandPipe::spawn(argv, &snapback_sidecar::gate::SECRET_VARS)?;
            let (inner, _) = stream_source(Box::new(pipe.clone()), *mode, name)?;
            Ok(Box::new(CommandGate::new(inner, pipe)))
        }
        JobSource::Paths { roots, walk } => {
            for p in roots {
                std::fs::symlink_metadata(p).map_err(|source| JobError::Root {
                    path: p.clone(),
                    source,
                })?;
            }
            Ok(Box::new(Walker::new(roots, walk.clone())?))
        }
    }
}
