//! `snapback sidecar`: the long-running daemon of a Pod. It opens the repository once (with the
//! warm key file when given, so it never needs the password), then backs up the Pod's data on a
//! schedule or on `POST /backup`, behind an optional consistency gate, applies the retention
//! policy after each scheduled success, and shuts down within a grace period on SIGTERM.
//!
//! The scheduling, gate, HTTP API and metrics live in `snapback-sidecar`; the backup job, the
//! retention rule for on-demand snapshots and the verification drill in
//! `snapback_podinit::jobs`. This module turns the command line into their options.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use snapback_archive::backup::ParentChoice;
use snapback_archive::BackupOptions;
use snapback_maintenance::drill::ReadShare;
use snapback_maintenance::ExpirePolicy;
use snapback_podinit::jobs::{self, BackupJob, DrillJob, JobConfig, JobSource, ON_DEMAND_TAG};
use snapback_sidecar::gate::ReadyUrl;
use snapback_sidecar::{
    ApiToken, Daemon, DaemonOptions, Gate, HttpOptions, Outcome, Schedule, Shared,
};
use snapback_stream::WalkOptions;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::args::{stream_mode, ExcludeArgs, TuningArgs};
use super::GlobalArgs;

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
    /// Paths to leave out.
    #[command(flatten)]
    pub exclude: ExcludeArgs,
    /// Stay on the filesystem of each path.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Compression, pack size and upload concurrency.
    #[command(flatten)]
    pub tuning: TuningArgs,
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
    let sink = args.tuning.sink_options()?;
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
    let (excludes, iexcludes) = args.exclude.patterns()?;

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

    // Storage errors are retried (the object store may be unreachable while the Pod starts);
    // others (wrong password, unusable key file, no repository) are final.
    let transient = |err: &anyhow::Error| {
        err.chain().any(|c| {
            matches!(
                c.downcast_ref::<snapback_repo::Error>(),
                Some(snapback_repo::Error::Backend(_))
            )
        })
    };
    let opened = jobs::open_with_retry(
        || super::repo::open(global),
        transient,
        super::error_chain,
        &shutdown,
        &shared.metrics,
    )
    .await
    .map_err(|e| e.context("cannot open the repository"))?;
    let Some(repo) = opened else {
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
    let (source, snapshot_paths, is_path_backup) = if args.stdin_from_command {
        (
            JobSource::Command {
                argv: args.paths.clone(),
                mode: stream_mode(args.stdin_tar, args.stdin_raw),
                name: args.stdin_filename.clone(),
            },
            vec![format!("/{}", args.stdin_filename)],
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
        let walk = WalkOptions {
            one_file_system: args.one_file_system,
            excludes: excludes.clone(),
            iexcludes,
            ..WalkOptions::default()
        };
        (JobSource::Paths { roots, walk }, paths, true)
    };
    let mut template = BackupOptions::new(host.clone(), snapshot_paths.clone());
    template.tags = args.tags.clone();
    template.excludes = excludes;
    template.reuse_unchanged = is_path_backup;
    template.stat_implicit_dirs = is_path_backup;
    template.parent = ParentChoice::Latest;
    template.sink = sink;
    template.max_listing_bytes = args.tuning.listing_bytes();
    let policy = ExpirePolicy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        ..ExpirePolicy::default()
    };
    // Only this sidecar's own snapshots (its host and paths) are subject to its policy.
    let retention = jobs::retention(policy, &host, &snapshot_paths);
    jobs::refresh_latest(&repo, &host, &snapshot_paths, &shared.metrics).await;
    let config = Arc::new(JobConfig {
        repo,
        source,
        template,
        retention,
    });
    let drill = DrillJob::new(config.clone(), share, args.verify_files);
    let job = BackupJob::new(config, shared.clone());

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

/// Reads the API token file.
fn api_token(path: &std::path::Path) -> anyhow::Result<ApiToken> {
    let contents = zeroize::Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read the API token file {}", path.display()))?,
    );
    ApiToken::new(&contents).with_context(|| format!("API token file {}", path.display()))
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
