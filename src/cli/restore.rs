//! `snapback restore`: write a snapshot (or one of its subtrees) into a directory.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use snapback_restore::restore::{restore, RestoreOptions};
use snapback_restore::tree_walk::{find_node, root_node};
use snapback_restore::verify_restore::verify;

use super::ls::{open_snapshot, SnapshotFilter};
use super::GlobalArgs;

/// Arguments of `snapback restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Snapshot: `latest`, an id or a unique id prefix, optionally `SNAPSHOT:/sub/path` to
    /// restore only the contents of that directory (raw bytes).
    pub snapshot: OsString,
    /// Directory to restore into (created if missing).
    #[arg(short = 't', long)]
    pub target: PathBuf,
    /// Restore only paths matching this pattern (repeatable; restic's syntax, e.g.
    /// `/home/*/docs` or `*.conf`); a matching directory is restored with its contents.
    #[arg(short = 'i', long = "include")]
    pub include: Vec<OsString>,
    /// Do not restore paths matching this pattern (repeatable).
    #[arg(short = 'e', long = "exclude")]
    pub exclude: Vec<OsString>,
    /// Like `--include`, ignoring case (repeatable).
    #[arg(long = "iinclude")]
    pub iinclude: Vec<OsString>,
    /// Like `--exclude`, ignoring case (repeatable).
    #[arg(long = "iexclude")]
    pub iexclude: Vec<OsString>,
    /// Pack ranges read concurrently (each pack is read once, in as few ranges as it takes;
    /// one request each on S3).
    #[arg(long, default_value_t = 8)]
    pub pack_reads: usize,
    /// MiB of blobs held in memory at once, over all files (from read until written).
    #[arg(long, default_value_t = 24, value_name = "MIB")]
    pub blob_memory: usize,
    /// Files written per batch (tuning and tests).
    #[arg(long, default_value_t = 2048, hide = true)]
    pub batch_files: usize,
    /// Blob references written per batch (tuning and tests).
    #[arg(long, default_value_t = 16384, hide = true)]
    pub batch_blobs: usize,
    /// After restoring, read every restored file back and check its content against the
    /// snapshot (restic's `--verify`); files that differ are listed and the exit status is 1.
    #[arg(long)]
    pub verify: bool,
    /// Take no (non-exclusive) repository lock, e.g. for read-only storage credentials.
    #[arg(long)]
    pub no_lock: bool,
    /// Snapshot selection for `latest`.
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

/// Restores; exits 1 after listing the paths that could not be restored.
pub async fn run(global: &GlobalArgs, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    // A snapshot id never contains ':', so the first one separates the sub path (which may
    // name files whose names are not UTF-8; the snapshot part must be text).
    let raw = args.snapshot.as_bytes();
    let (spec, subpath) = match raw.iter().position(|&b| b == b':') {
        Some(i) => (&raw[..i], Some(Path::new(OsStr::from_bytes(&raw[i + 1..])))),
        None => (raw, None),
    };
    let spec = std::str::from_utf8(spec)
        .map_err(|_| anyhow::anyhow!("snapshot {:?} is not valid UTF-8", args.snapshot))?;
    let opened = open_snapshot(global, spec, &args.filter).await?;
    let lock = if args.no_lock {
        None
    } else {
        Some(opened.repo.lock(false).await?)
    };
    let start = match subpath {
        Some(p) => find_node(&opened.repo, &opened.index, &opened.snapshot.tree, p).await?,
        None => root_node(opened.snapshot.tree),
    };
    if !global.quiet {
        println!(
            "restoring snapshot {} of [{}] at {}{} to {}",
            opened.id.short(),
            opened.snapshot.paths.join(" "),
            opened.snapshot.time.format("%Y-%m-%d %H:%M:%S%.f %z"),
            subpath
                .map(|p| format!(" (subtree {})", p.display()))
                .unwrap_or_default(),
            args.target.display()
        );
    }
    let opts = RestoreOptions {
        target: args.target.clone(),
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        iinclude: args.iinclude.clone(),
        iexclude: args.iexclude.clone(),
        pack_reads: args.pack_reads,
        blob_bytes: args.blob_memory.saturating_mul(1 << 20),
        batch_files: args.batch_files,
        batch_blobs: args.batch_blobs,
    };
    let mut result = restore(&opened.repo, opened.index.clone(), &start, &opts)
        .await
        .map(|summary| (summary, None));
    if args.verify {
        // Still under the lock, which is released below whatever the outcome.
        result = match result {
            Ok((summary, _)) => {
                if !global.quiet {
                    println!("verifying files in {}", args.target.display());
                }
                // Files the restore reported as failed were not written: not read back.
                let failed = summary.failed.iter().map(|f| f.path.clone()).collect();
                verify(&opened.repo, opened.index.clone(), &start, &opts, &failed)
                    .await
                    .map(|checked| (summary, Some(checked)))
            }
            Err(e) => Err(e),
        };
    }
    if let Some(lock) = lock {
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "cannot remove the repository lock");
        }
    }
    let (summary, checked) = result?;
    for w in &summary.warnings {
        eprintln!("warning: {}: {}", w.path.display(), w.message);
    }
    if !global.quiet {
        println!(
            "restored {} files, {} directories, {} other nodes, {} bytes",
            summary.files, summary.dirs, summary.others, summary.bytes
        );
        if summary.link_groups_forgotten > 0 {
            println!(
                "note: {} hard-link groups were still open when forgotten (more than {} at once, \
                 or their other links are outside the snapshot); a later link of one, if any, \
                 was restored as a separate copy",
                summary.link_groups_forgotten,
                snapback_restore::restore::LINK_GROUPS_MAX
            );
        }
    }
    let mut ok = summary.failed.is_empty();
    if !ok {
        eprintln!("{} paths could not be restored:", summary.failed.len());
        for f in &summary.failed {
            eprintln!("failed: {}: {}", f.path.display(), f.message);
        }
    }
    if let Some(checked) = checked {
        if !global.quiet {
            println!("verified {} files, {} bytes", checked.files, checked.bytes);
        }
        if !checked.mismatches.is_empty() {
            ok = false;
            eprintln!(
                "{} restored files do not match the snapshot:",
                checked.mismatches.len()
            );
            for m in &checked.mismatches {
                eprintln!("verify: {}: {}", m.path.display(), m.message);
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
