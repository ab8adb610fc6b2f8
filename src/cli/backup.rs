//! `snapback backup`: paths, or a stream on stdin / from a command.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use snapback_archive::backup::ParentChoice;
use snapback_archive::progress::Progress;
use snapback_archive::{BackupOptions, BackupSummary};
use snapback_stream::entry::EntrySource;
use snapback_stream::{stream_source, widen_pipe, CommandGate, CommandPipe, WalkOptions, Walker};
use tokio_util::sync::CancellationToken;

use super::args::{stream_mode, ExcludeArgs, TuningArgs};
use super::GlobalArgs;

/// Arguments of `snapback backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Files and directories to back up (or, with --stdin-from-command, the command and its
    /// arguments). Taken as raw bytes.
    pub paths: Vec<std::ffi::OsString>,
    /// Read the data from standard input.
    #[arg(long)]
    pub stdin: bool,
    /// Run this command (the positional arguments) and back up its standard output; a command
    /// that fails means no snapshot.
    #[arg(long)]
    pub stdin_from_command: bool,
    /// File name for a raw stream, and the snapshot path (`/NAME`).
    #[arg(long, default_value = "stdin")]
    pub stdin_filename: String,
    /// Treat the stream as a tar archive (else detected from its first header).
    #[arg(long, conflicts_with = "stdin_raw")]
    pub stdin_tar: bool,
    /// Store the stream as one file even if it is a tar archive (restic's behaviour).
    #[arg(long)]
    pub stdin_raw: bool,
    /// Host name for the snapshot (default: POD_NAMESPACE/POD_NAME in a Pod, else the host name).
    #[arg(long, env = "SNAPBACK_HOST")]
    pub host: Option<String>,
    /// Parent snapshot (default: the latest with the same host and paths).
    #[arg(long)]
    pub parent: Option<String>,
    /// Read every file, ignoring the parent's metadata.
    #[arg(long)]
    pub force: bool,
    /// Tag the snapshot (repeatable).
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
    /// Mountinfo file to read instead of /proc/self/mountinfo (for tests).
    #[arg(long, hide = true)]
    pub mountinfo: Option<PathBuf>,
}

/// Default host: stable across restarts of a Pod of a StatefulSet, so the next backup finds its
/// parent and dead Pods' locks are recognised.
pub fn default_host() -> String {
    match (std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME")) {
        (Ok(ns), Ok(pod)) if !ns.is_empty() && !pod.is_empty() => format!("{ns}/{pod}"),
        _ => snapback_repo::host::hostname(),
    }
}

/// Runs a backup; exit 0, or 3 when some files could not be read.
pub async fn run(global: &GlobalArgs, args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let stdin_mode = args.stdin || args.stdin_from_command;
    if !stdin_mode && args.paths.is_empty() {
        bail!("nothing to back up: give paths, --stdin or --stdin-from-command");
    }
    if args.stdin && !args.paths.is_empty() {
        bail!("--stdin takes no paths");
    }
    let repo = super::repo::open(global).await?;
    let host = args.host.clone().unwrap_or_else(default_host);
    let (excludes, iexcludes) = args.exclude.patterns()?;

    let mode = stream_mode(args.stdin_tar, args.stdin_raw);
    let (source, snapshot_paths, scan): (Box<dyn EntrySource + Send>, Vec<String>, Option<Walker>) =
        if args.stdin_from_command {
            if args.paths.is_empty() {
                bail!("--stdin-from-command needs a command");
            }
            let pipe = CommandPipe::spawn(&args.paths, &snapback_sidecar::gate::SECRET_VARS)?;
            let (inner, _) = tokio::task::block_in_place(|| {
                stream_source(Box::new(pipe.clone()), mode, &args.stdin_filename)
            })?;
            (
                Box::new(CommandGate::new(inner, pipe)),
                vec![format!("/{}", args.stdin_filename)],
                None,
            )
        } else if args.stdin {
            let stdin = std::io::stdin();
            widen_pipe(&stdin);
            let input = Box::new(stdin);
            let (src, _) =
                tokio::task::block_in_place(|| stream_source(input, mode, &args.stdin_filename))?;
            (src, vec![format!("/{}", args.stdin_filename)], None)
        } else {
            let mut roots = Vec::new();
            for p in &args.paths {
                let abs = std::path::absolute(p)
                    .with_context(|| format!("bad path {}", Path::new(p).display()))?;
                std::fs::symlink_metadata(&abs)
                    .with_context(|| format!("cannot back up {}", abs.display()))?;
                roots.push(abs);
            }
            // The snapshot's path list is JSON text: lossy for a path that is not UTF-8, as
            // restic's. The walk itself uses the exact paths.
            let paths = roots
                .iter()
                .map(|r| r.to_string_lossy().into_owned())
                .collect();
            let walk = WalkOptions {
                one_file_system: args.one_file_system,
                excludes: excludes.clone(),
                iexcludes: iexcludes.clone(),
                mountinfo: args.mountinfo.clone(),
                ..WalkOptions::default()
            };
            let scan = Walker::new(&roots, walk.clone())?;
            (Box::new(Walker::new(&roots, walk)?), paths, Some(scan))
        };

    let is_path_backup = scan.is_some();
    let mut opts = BackupOptions::new(host, snapshot_paths);
    opts.tags = args.tags.clone();
    opts.excludes = excludes;
    opts.reuse_unchanged = is_path_backup;
    opts.stat_implicit_dirs = is_path_backup;
    opts.parent = match (&args.parent, args.force) {
        (_, true) => ParentChoice::None,
        (Some(p), _) => ParentChoice::Snapshot(p.clone()),
        (None, _) => ParentChoice::Latest,
    };
    opts.sink = args.tuning.sink_options()?;
    opts.max_listing_bytes = args.tuning.listing_bytes();
    let cancel = CancellationToken::new();
    opts.cancel = cancel.clone();
    let progress = opts.progress.clone();
    let signals = tokio::spawn(cancel_on_signal(cancel.clone()));
    let show = !global.quiet && std::io::stderr().is_terminal();
    if let (true, Some(scan)) = (show, scan) {
        // Count what there is to read beside the backup, like restic's scanner, for the ETA.
        let progress = progress.clone();
        std::thread::spawn(move || count_sizes(scan, &progress));
    }
    let bar = tokio::spawn(show_progress(progress.clone(), show));

    let result = snapback_archive::backup(&repo, source, opts).await;
    bar.abort();
    signals.abort();
    if show {
        eprint!("\r\x1b[2K");
    }
    match result {
        Ok(summary) => {
            report(&summary, global.quiet);
            if summary.archive.warnings.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                for w in &summary.archive.warnings {
                    tracing::warn!("{w}");
                }
                eprintln!(
                    "snapback: snapshot saved, but {} entries could not be read completely",
                    summary.archive.warnings.len()
                );
                Ok(ExitCode::from(super::EXIT_PARTIAL))
            }
        }
        Err(snapback_archive::Error::Cancelled) => {
            bail!("backup interrupted: no snapshot was saved")
        }
        Err(e) => Err(anyhow::Error::new(e).context("backup failed, no snapshot was saved")),
    }
}

async fn cancel_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("signal received: stopping the backup, no snapshot will be saved");
    cancel.cancel();
}

fn count_sizes(mut scan: Walker, progress: &Progress) {
    while let Ok(Some(entry)) = scan.next_entry() {
        if entry.kind == snapback_stream::EntryKind::File {
            progress
                .bytes_total
                .fetch_add(entry.meta.size, Ordering::Relaxed);
        }
    }
    progress.total_final.store(true, Ordering::Relaxed);
}

async fn show_progress(p: Arc<Progress>, show: bool) {
    if !show {
        return;
    }
    let start = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let done = p.bytes_done.load(Ordering::Relaxed);
        let total = p.bytes_total.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let share = if total > 0 {
            let pct = (done as f64 * 100.0 / total as f64).min(100.0);
            if p.total_final.load(Ordering::Relaxed) && rate > 0.0 {
                let eta = total.saturating_sub(done) as f64 / rate;
                format!(" of {} ({pct:.0}%, ETA {eta:.0}s)", human(total))
            } else {
                format!(" of {}+ (scanning)", human(total))
            }
        } else {
            String::new()
        };
        eprint!(
            "\r\x1b[2K{} entries, {} read{share}, {} new, {}/s, {:.0}s",
            p.entries_done.load(Ordering::Relaxed),
            human(done),
            human(p.bytes_new.load(Ordering::Relaxed)),
            human(rate as u64),
            secs
        );
    }
}

/// Bytes in binary units, as restic prints them.
pub fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn report(s: &BackupSummary, quiet: bool) {
    let a = &s.archive;
    let line = format!(
        "snapshot {} saved: files {} new, {} changed, {} unchanged; dirs {}; {} processed, {} added ({} stored in {} packs) in {:.1}s",
        s.snapshot_id.short(),
        a.files_new,
        a.files_changed,
        a.files_unchanged,
        a.dirs,
        human(a.bytes_read + a.bytes_reused),
        human(a.bytes_new),
        human(s.stored.packed_bytes),
        s.stored.packs,
        s.duration.as_secs_f64()
    );
    tracing::info!(
        snapshot = %s.snapshot_id,
        files_new = a.files_new,
        files_changed = a.files_changed,
        files_unchanged = a.files_unchanged,
        bytes_read = a.bytes_read,
        bytes_added = a.bytes_new,
        packs = s.stored.packs,
        duration_s = s.duration.as_secs_f64(),
        "backup finished"
    );
    if !quiet {
        println!("{line}");
    }
}
