//! `snapback sidecar`: the long-running daemon of a Pod. It opens the repository once (with the
//! warm key file when given, so it never needs the password), then backs up the Pod's data on a
//! schedule or on `POST /backup`, behind an optional consistency gate, applies the retention
//! policy after each scheduled success, and shuts down within a grace period on SIGTERM.
//!
//! Retention rule: whoever can call `POST /backup` must not be able to rotate good snapshots
//! out faster than the schedule would. So snapshots taken on request are tagged
//! [`ON_DEMAND_TAG`], the policy runs only after scheduled (and shutdown) backups, and it
//! neither counts nor removes on-demand snapshots.
//!
//! Verification drills (`--verify-schedule`, `--verify-every`, `--verify-after-backup`) check
//! that the latest snapshot of this sidecar's host and paths can be restored: a rotating share
//! of its packs is downloaded and verified, a sample of its files is compared with the live
//! volume (or, for a stream, every member is read back). See [`one_drill`].
//!
//! The scheduling, gate, HTTP API and metrics live in `snapback-sidecar`; this module supplies
//! the backup job and the drill and turns the command line into daemon options.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use snapback_archive::archiver::Progress;
use snapback_archive::backup::ParentChoice;
use snapback_archive::sink::SinkOptions;
use snapback_archive::verify::{scan_snapshot, ScanMode};
use snapback_archive::BackupOptions;
use snapback_maintenance::drill::{read_back, ReadShare};
use snapback_maintenance::{ExpirePolicy, ForgetOptions, SnapshotFilter};
use snapback_repo::{BlobIndex, FileType, Id, Repository};
use snapback_sidecar::gate::ReadyUrl;
use snapback_sidecar::{
    ApiToken, Daemon, DaemonOptions, DrillFuture, DrillOutcome, DrillReport, Gate, HttpOptions,
    JobFuture, Metrics, Outcome, Report, RunKind, Schedule, Shared,
};
use snapback_stream::entry::EntrySource;
use snapback_stream::{read_exclude_file, WalkOptions, Walker};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::stdin::{CommandGate, CommandPipe, StdinMode};
use super::GlobalArgs;

/// Longest wait between two attempts to reach the repository at startup.
const OPEN_RETRY_MAX: Duration = Duration::from_secs(60);

/// The tag of snapshots taken on request (`POST /backup`). The retention policy neither counts
/// nor removes them, so requests cannot rotate scheduled snapshots out; remove them with
/// `snapback forget --tag on-demand ...` when they are no longer wanted.
pub const ON_DEMAND_TAG: &str = "on-demand";

fn duration(text: &str) -> Result<Duration, String> {
    snapback_sidecar::parse_duration(text).map_err(|e| e.to_string())
}

/// Arguments of `snapback sidecar`.
#[derive(Debug, clap::Args)]
pub struct SidecarArgs {
    /// Files and directories to back up (or, with --stdin-from-command, the command and its
    /// arguments).
    pub paths: Vec<String>,
    /// Run this command (the positional arguments) for each backup and back up its standard
    /// output; a command that fails means no snapshot.
    #[arg(long)]
    pub stdin_from_command: bool,
    /// File name for a raw stream, and the snapshot path (`/NAME`).
    #[arg(long, default_value = "stdin")]
    pub stdin_filename: String,
    /// Treat the command's output as a tar archive (else detected from its first header).
    #[arg(long, conflicts_with = "stdin_raw")]
    pub stdin_tar: bool,
    /// Store the command's output as one file even if it is a tar archive.
    #[arg(long)]
    pub stdin_raw: bool,

    /// Back up on this cron schedule (5 fields, local time; e.g. "0 */6 * * *").
    #[arg(long, conflicts_with = "every", value_name = "CRON")]
    pub schedule: Option<String>,
    /// Back up at this interval (e.g. 1h, 30m), the first one interval after start.
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub every: Option<Duration>,
    /// Wait up to this much longer, at random, before each scheduled backup (e.g. 5m).
    #[arg(long, value_parser = duration, default_value = "0s", value_name = "DURATION")]
    pub jitter: Duration,
    /// Address of the HTTP API. /healthz, /readyz and /metrics are open to all (probes and
    /// Prometheus come from outside the Pod); POST /backup needs the --api-token-file token,
    /// or, without one, is accepted only from loopback (containers of this Pod).
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR:PORT")]
    pub listen: String,
    /// File holding the bearer token POST /backup requires (`Authorization: Bearer TOKEN`,
    /// from every peer); at least 16 visible characters, e.g. from a Kubernetes Secret.
    #[arg(long, env = "SNAPBACK_API_TOKEN_FILE", value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,
    /// HTTP connections served at once; further ones are closed at once.
    #[arg(long, default_value_t = snapback_sidecar::http::DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,

    /// Before each backup, run this with `sh -c`; the backup runs only if it exits 0.
    #[arg(long, value_name = "CMD")]
    pub pre_command: Option<String>,
    /// Before each backup, GET this http:// URL; the backup runs only on a 2xx answer.
    #[arg(long, value_name = "URL")]
    pub ready_url: Option<String>,
    /// After each backup that passed the gate, run this with `sh -c`, whatever the result.
    #[arg(long, value_name = "CMD")]
    pub post_command: Option<String>,
    /// Time limit of the pre- and post-command and the readiness probe.
    #[arg(long, value_parser = duration, default_value = "5m", value_name = "DURATION")]
    pub hook_timeout: Duration,

    /// After a successful scheduled or shutdown backup, keep the last N snapshots of this host
    /// and paths (the --keep-* options combine as in `forget`). Backups requested with
    /// POST /backup are tagged "on-demand", are not followed by retention, and are neither
    /// counted nor removed by it: requests cannot rotate snapshots out faster than the
    /// schedule would.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_last: u32,
    /// ... and the newest snapshot of each of the last N hours.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_hourly: u32,
    /// ... of each of the last N days.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_daily: u32,
    /// ... of each of the last N weeks.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_weekly: u32,
    /// ... of each of the last N months.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep_monthly: u32,

    /// Run verification drills on this cron schedule (5 fields, local time): read back a share
    /// of the latest snapshot's packs (--verify-read) and compare a sample of its files with
    /// the live volume (--verify-files); for a stream, read every member back. Drills never run
    /// alongside a backup.
    #[arg(
        long,
        env = "SNAPBACK_VERIFY_SCHEDULE",
        conflicts_with = "verify_every",
        value_name = "CRON"
    )]
    pub verify_schedule: Option<String>,
    /// Run verification drills at this interval (e.g. 6h), the first one interval after start.
    #[arg(long, env = "SNAPBACK_VERIFY_EVERY", value_parser = duration, value_name = "DURATION")]
    pub verify_every: Option<Duration>,
    /// Run a verification drill after each successful backup.
    #[arg(long)]
    pub verify_after_backup: bool,
    /// Share of the latest snapshot's packs each drill downloads and verifies: a percentage
    /// (5%) or a size (512MiB); at least one pack. Successive drills continue where the last
    /// one stopped, in pack id order, so every pack is read over time.
    #[arg(long, default_value = "5%", value_name = "PERCENT|SIZE")]
    pub verify_read: String,
    /// Files of the latest snapshot each drill compares with the live volume (those unchanged
    /// since the backup by size, mtime, ctime and inode); 0 disables the comparison.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub verify_files: usize,

    /// On SIGTERM, how long a running backup may still take before it is cancelled (no
    /// snapshot). Keep it below the Pod's terminationGracePeriodSeconds.
    #[arg(long, value_parser = duration, default_value = "25s", value_name = "DURATION")]
    pub grace: Duration,
    /// On SIGTERM, run one last backup within the grace period.
    #[arg(long)]
    pub backup_on_shutdown: bool,

    /// Host name for the snapshots (default: POD_NAMESPACE/POD_NAME in a Pod, else the host
    /// name).
    #[arg(long, env = "SNAPBACK_HOST")]
    pub host: Option<String>,
    /// Tag the snapshots (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Exclude paths matching this pattern (repeatable; restic's rules).
    #[arg(short = 'e', long = "exclude")]
    pub excludes: Vec<String>,
    /// Read exclude patterns from a file (repeatable; `#` comments, `$VAR` expanded).
    #[arg(long = "exclude-file")]
    pub exclude_files: Vec<PathBuf>,
    /// Like `--exclude`, ignoring case (repeatable).
    #[arg(long = "iexclude")]
    pub iexcludes: Vec<String>,
    /// Like `--exclude-file`, ignoring case (repeatable).
    #[arg(long = "iexclude-file")]
    pub iexclude_files: Vec<PathBuf>,
    /// Stay on the filesystem of each path.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Compression: auto, off, max, or a zstd level 1-22.
    #[arg(long, default_value = "auto")]
    pub compression: String,
    /// Pack size in MiB.
    #[arg(long, default_value_t = 8)]
    pub pack_size: usize,
    /// Packs uploading at once.
    #[arg(long, default_value_t = 2)]
    pub uploads: usize,
    /// MiB of file data in memory at once, from being read to the end of its pack's upload
    /// (raised to at least pack size + 8).
    #[arg(long, default_value_t = 24)]
    pub blob_memory: usize,
}

/// Sidecar defaults for the global options, applied before logging starts: JSON lines (for the
/// cluster's log collector) at info level, so every backup leaves a record.
pub fn adjust_global(cli: &mut super::Cli) {
    if matches!(cli.command, super::Command::Sidecar(_)) {
        cli.global.log_json = true;
        if !cli.global.quiet {
            cli.global.verbose = cli.global.verbose.max(1);
        }
    }
}

/// What every backup run needs, prepared once.
struct JobConfig {
    repo: Repository,
    /// Walk roots, exact (the snapshot's path list is JSON text, lossy where not UTF-8).
    roots: Vec<PathBuf>,
    command: Option<(Vec<String>, StdinMode, String)>,
    walk: WalkOptions,
    template: BackupOptions,
    retention: Option<ForgetOptions>,
}

/// What every drill needs, and the rotation state between drills.
struct DrillConfig {
    job: Arc<JobConfig>,
    share: ReadShare,
    files: usize,
    /// The last pack read. Kept in memory only: after a restart the first drill starts at a
    /// random pack id (ids are SHA-256 hashes, so a random start is a uniform one), which keeps
    /// a Pod that restarts often from reading the same first packs again and again.
    cursor: Mutex<Id>,
}

/// Runs the daemon until SIGTERM/SIGINT; exit 0, or 1 when the backup running at (or started
/// for) shutdown did not save a snapshot.
pub async fn run(global: &GlobalArgs, args: &SidecarArgs) -> anyhow::Result<ExitCode> {
    if args.paths.is_empty() {
        bail!("nothing to back up: give paths, or --stdin-from-command and a command");
    }
    // Fail on a bad command line now, not at the first backup.
    let schedule = match (&args.schedule, args.every) {
        (Some(expr), _) => Schedule::cron(expr)?,
        (None, Some(every)) => Schedule::every(every)?,
        (None, None) => Schedule::Manual,
    };
    let ready_url = args.ready_url.as_deref().map(ReadyUrl::parse).transpose()?;
    if args.tags.iter().any(|t| t == ON_DEMAND_TAG) {
        bail!("the tag {ON_DEMAND_TAG:?} is reserved for backups requested with POST /backup");
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let token = match &args.api_token_file {
        Some(path) => Some(api_token(path)?),
        None => None,
    };
    let zstd_level = zstd_level(&args.compression)?;
    let verify_schedule = match (&args.verify_schedule, args.verify_every) {
        (Some(expr), _) => Schedule::cron(expr)?,
        (None, Some(every)) => Schedule::every(every)?,
        (None, None) => Schedule::Manual,
    };
    let verify =
        args.verify_schedule.is_some() || args.verify_every.is_some() || args.verify_after_backup;
    let Some(share) = ReadShare::parse(&args.verify_read) else {
        bail!(
            "--verify-read must be a percentage (0-100%, e.g. 5%) or a size (e.g. 512MiB), not {:?}",
            args.verify_read
        );
    };
    super::repo::location(global)?;
    let mut excludes = args.excludes.clone();
    for f in &args.exclude_files {
        excludes.extend(read_exclude_file(f)?);
    }
    let mut iexcludes = args.iexcludes.clone();
    for f in &args.iexclude_files {
        iexcludes.extend(read_exclude_file(f)?);
    }

    // Signals first: a SIGTERM while the repository is still being reached must stop us.
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(install_signals()?, shutdown.clone()));

    let shared = Shared::new();
    let listener = snapback_sidecar::http::bind(&args.listen).await?;
    let addr = listener
        .local_addr()
        .map_or_else(|_| args.listen.clone(), |a| a.to_string());
    let http_stop = CancellationToken::new();
    let authenticated = token.is_some();
    let http = tokio::spawn(snapback_sidecar::http::serve(
        listener,
        shared.clone(),
        HttpOptions {
            token,
            max_connections: args.max_connections,
            ..HttpOptions::default()
        },
        http_stop.clone(),
    ));
    tracing::info!(
        listen = %addr,
        backup_trigger = if authenticated { "bearer token" } else { "loopback peers only" },
        max_connections = args.max_connections,
        "HTTP API listening"
    );

    let Some(repo) = open_with_retry(global, &shutdown, &shared.metrics).await? else {
        tracing::info!("shutdown before the repository was opened");
        http_stop.cancel();
        let _ = http.await;
        return Ok(ExitCode::SUCCESS);
    };
    match repo.remove_stale_locks().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed stale repository locks"),
        Err(e) => tracing::warn!(error = %e, "could not check for stale locks"),
    }
    tracing::info!(
        repository = %repo.backend().location(),
        id = %repo.config().id.short(),
        "repository opened"
    );

    let host = args
        .host
        .clone()
        .unwrap_or_else(super::backup::default_host);
    let (command, snapshot_paths, roots, is_path_backup) = if args.stdin_from_command {
        let mode = match (args.stdin_tar, args.stdin_raw) {
            (true, _) => StdinMode::Tar,
            (_, true) => StdinMode::Raw,
            _ => StdinMode::Auto,
        };
        (
            Some((args.paths.clone(), mode, args.stdin_filename.clone())),
            vec![format!("/{}", args.stdin_filename)],
            Vec::new(),
            false,
        )
    } else {
        let mut roots = Vec::new();
        for p in &args.paths {
            // Not checked for existence: the application may create its data directory later.
            roots.push(std::path::absolute(p).with_context(|| format!("bad path {p}"))?);
        }
        let paths = roots
            .iter()
            .map(|r| r.to_string_lossy().into_owned())
            .collect();
        (None, paths, roots, true)
    };
    let mut template = BackupOptions::new(host.clone(), snapshot_paths.clone());
    template.tags = args.tags.clone();
    template.excludes = excludes.clone();
    template.reuse_unchanged = is_path_backup;
    template.stat_implicit_dirs = is_path_backup;
    template.parent = ParentChoice::Latest;
    template.sink = SinkOptions {
        pack_size: args.pack_size.clamp(1, 128) * 1024 * 1024,
        max_uploads: args.uploads.max(1),
        blob_bytes: args.blob_memory.saturating_mul(1024 * 1024),
        zstd_level,
        ..SinkOptions::default()
    };
    let policy = ExpirePolicy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        ..ExpirePolicy::default()
    };
    // Only this sidecar's own snapshots (its host and paths) are subject to its policy.
    let retention = (!policy.is_empty()).then(|| ForgetOptions {
        policy,
        filter: SnapshotFilter {
            hosts: vec![host.clone()],
            paths: snapshot_paths.clone(),
            exclude_tags: vec![ON_DEMAND_TAG.to_string()],
            ..SnapshotFilter::default()
        },
        ..ForgetOptions::default()
    });
    refresh_latest(&repo, &host, &snapshot_paths, &shared.metrics).await;
    let config = Arc::new(JobConfig {
        repo,
        roots,
        command,
        walk: WalkOptions {
            one_file_system: args.one_file_system,
            excludes,
            iexcludes,
            ..WalkOptions::default()
        },
        template,
        retention,
    });
    let drill_config = Arc::new(DrillConfig {
        job: config.clone(),
        share,
        files: args.verify_files,
        cursor: Mutex::new(Id::random()),
    });
    let job = {
        let shared = shared.clone();
        move |kind: RunKind, cancel: CancellationToken| -> JobFuture {
            let config = config.clone();
            let shared = shared.clone();
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
    };
    let drill = move |cancel: CancellationToken| -> DrillFuture {
        let config = drill_config.clone();
        Box::pin(async move {
            let outcome = one_drill(&config, cancel).await;
            release_memory();
            outcome
        })
    };

    let gate = Gate {
        ready_url,
        pre_command: args.pre_command.clone(),
        post_command: args.post_command.clone(),
        timeout: args.hook_timeout,
    };
    let daemon = Daemon::new(
        DaemonOptions {
            schedule,
            jitter: args.jitter,
            grace: args.grace,
            backup_on_shutdown: args.backup_on_shutdown,
            gate,
            verify_schedule,
            verify_after_backup: args.verify_after_backup,
        },
        shared.clone(),
        Arc::new(job),
    );
    let daemon = if verify {
        daemon.with_drill(Arc::new(drill))
    } else {
        daemon
    };
    shared.set_ready();
    tracing::info!(host = %host, "ready");
    let last = daemon.run(shutdown).await;
    signals.abort();
    http_stop.cancel();
    let _ = http.await;
    Ok(match last {
        None | Some(Outcome::Success(_)) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Some(other) => {
            tracing::warn!(
                result = other.label(),
                "stopped; the last backup saved no snapshot"
            );
            ExitCode::from(1)
        }
    })
}

/// Opens the repository, retrying storage errors (the object store may be unreachable while
/// the Pod starts) with a growing pause; `None` when shut down meanwhile. Other errors (wrong
/// password, unusable key file, no repository) are final.
async fn open_with_retry(
    global: &GlobalArgs,
    shutdown: &CancellationToken,
    metrics: &Metrics,
) -> anyhow::Result<Option<Repository>> {
    let mut pause = Duration::from_secs(1);
    loop {
        let err = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = super::repo::open(global) => match r {
                Ok(repo) => {
                    metrics.set_repository_up(true);
                    return Ok(Some(repo));
                }
                Err(e) => e,
            },
        };
        metrics.set_repository_up(false);
        let transient = err.chain().any(|c| {
            matches!(
                c.downcast_ref::<snapback_repo::Error>(),
                Some(snapback_repo::Error::Backend(_))
            )
        });
        if !transient {
            return Err(err.context("cannot open the repository"));
        }
        tracing::warn!(
            error = %super::error_chain(&err),
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
async fn refresh_latest(repo: &Repository, host: &str, paths: &[String], metrics: &Metrics) {
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

/// One verification drill over the latest snapshot of this sidecar's host and paths, under a
/// shared lock (so that a prune cannot delete packs under it):
///
/// 1. one walk over its trees collects the packs it uses and either reads every stream member
///    back or compares a sample of files with the live volume (`snapback_archive::verify`);
/// 2. the next share of those packs, after the cursor, is downloaded and verified whole
///    (`snapback_maintenance::drill`), one pack in memory at a time.
async fn one_drill(config: &DrillConfig, cancel: CancellationToken) -> DrillOutcome {
    let repo = &config.job.repo;
    let lock = match repo.lock(false).await {
        Ok(l) => l,
        Err(e) => return DrillOutcome::Failed(format!("cannot lock the repository: {e}")),
    };
    let outcome = drill_locked(config, &cancel).await;
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "drill: cannot remove the repository lock");
    }
    match outcome {
        Ok(report) => DrillOutcome::Done(report),
        Err(_) if cancel.is_cancelled() => DrillOutcome::Cancelled,
        Err(e) => DrillOutcome::Failed(super::error_chain(&e)),
    }
}

async fn drill_locked(
    config: &DrillConfig,
    cancel: &CancellationToken,
) -> anyhow::Result<DrillReport> {
    let repo = &config.job.repo;
    let t = &config.job.template;
    let Some((snapshot_id, snapshot)) = repo.latest_snapshot(Some(&t.host), &t.paths).await? else {
        tracing::info!("verification drill: no snapshot of this host and paths yet");
        return Ok(DrillReport::default());
    };
    let index = Arc::new(BlobIndex::load(repo).await?);
    let mode = if config.job.command.is_some() {
        ScanMode::Stream
    } else {
        ScanMode::Live {
            sample: config.files,
            // A different sample each drill.
            seed: Id::random()
                .0
                .iter()
                .fold(0u64, |a, b| a << 8 | u64::from(*b)),
        }
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
        anyhow::bail!("cancelled");
    }
    let stored: std::collections::HashMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)
        .await?
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
    let cursor = config.cursor.lock().map(|c| *c).unwrap_or_default();
    let stop = || cancel.is_cancelled();
    let read = read_back(repo, &index, &packs, config.share, Some(cursor), &stop).await;
    if cancel.is_cancelled() {
        anyhow::bail!("cancelled");
    }
    if let (Some(c), Ok(mut slot)) = (read.cursor, config.cursor.lock()) {
        *slot = c;
    }
    report.packs_read = read.packs_read as u64;
    report.bytes_verified += read.bytes_read;
    for e in read.errors {
        report.problems.push(("pack", e.to_string()));
    }
    Ok(report)
}

/// Reads the API token file.
fn api_token(path: &std::path::Path) -> anyhow::Result<ApiToken> {
    let contents = zeroize::Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read the API token file {}", path.display()))?,
    );
    ApiToken::new(&contents).with_context(|| format!("API token file {}", path.display()))
}

/// One backup and, after a scheduled or shutdown success, the retention policy.
async fn one_backup(config: Arc<JobConfig>, kind: RunKind, cancel: CancellationToken) -> Outcome {
    let source = {
        let config = config.clone();
        // Walker setup stats the roots and a producer's output is sniffed: blocking work.
        tokio::task::spawn_blocking(move || build_source(&config)).await
    };
    let source = match source {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Outcome::Failure(super::error_chain(&e)),
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
        Err(e) => return Outcome::Failure(super::error_chain(&anyhow::Error::new(e))),
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

fn build_source(config: &JobConfig) -> anyhow::Result<Box<dyn EntrySource + Send>> {
    match &config.command {
        Some((argv, mode, name)) => {
            let pipe = CommandPipe::spawn(argv)?;
            let (inner, _) = super::stdin::source(Box::new(pipe.clone()), *mode, name)?;
            Ok(Box::new(CommandGate::new(inner, pipe)))
        }
        None => {
            for p in &config.roots {
                std::fs::symlink_metadata(p)
                    .with_context(|| format!("cannot back up {}", p.display()))?;
            }
            Ok(Box::new(Walker::new(&config.roots, config.walk.clone())?))
        }
    }
}

/// `--compression` as `snapback backup` reads it.
fn zstd_level(spec: &str) -> anyhow::Result<Option<i32>> {
    Ok(match spec {
        "auto" => Some(snapback_repo::repository::DEFAULT_ZSTD_LEVEL),
        "off" => None,
        "max" => Some(19),
        n => match n.parse::<i32>() {
            Ok(l) if (1..=22).contains(&l) => Some(l),
            _ => bail!("--compression must be auto, off, max or 1-22, not {n:?}"),
        },
    })
}

/// Registered now, before anything slow, so that an early SIGTERM is not fatal.
fn install_signals() -> anyhow::Result<(Signal, Signal)> {
    Ok((
        signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
    ))
}

async fn cancel_on_signal((mut term, mut int): (Signal, Signal), shutdown: CancellationToken) {
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
    shutdown.cancel();
}
