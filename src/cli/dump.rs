//! `snapback dump`: a file of a snapshot to stdout, or a directory as a tar stream.

use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

use snapback_restore::dump::{dump, DumpOutcome};

use super::ls::{is_broken_pipe, open_snapshot, SnapshotFilter};
use super::GlobalArgs;

/// Arguments of `snapback dump`.
#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// Snapshot: `latest`, an id or a unique id prefix.
    pub snapshot: String,
    /// Absolute path inside the snapshot: a file (its bytes) or a directory (`/` included;
    /// a tar stream with members named like restic's: `dir/sub/file`). Taken as raw bytes.
    pub path: PathBuf,
    /// Take no (non-exclusive) repository lock, e.g. for read-only storage credentials.
    #[arg(long)]
    pub no_lock: bool,
    /// Snapshot selection for `latest`.
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

/// Writes the file or tar stream to stdout; a closed pipe ends it quietly.
pub async fn run(global: &GlobalArgs, args: &DumpArgs) -> anyhow::Result<ExitCode> {
    let opened = open_snapshot(global, &args.snapshot, &args.filter).await?;
    let lock = if args.no_lock {
        None
    } else {
        Some(opened.repo.lock(false).await?)
    };
    let out = BufWriter::with_capacity(1 << 20, std::io::stdout());
    let result = dump(
        opened.repo.clone(),
        opened.index.clone(),
        opened.snapshot.tree,
        args.path.clone(),
        out,
    )
    .await;
    if let Some(lock) = lock {
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "cannot remove the repository lock");
        }
    }
    match result.map_err(anyhow::Error::from) {
        Ok(DumpOutcome::Tar(summary)) => {
            for w in &summary.warnings {
                eprintln!("warning: {}: {}", w.path.display(), w.message);
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(DumpOutcome::File { .. }) => Ok(ExitCode::SUCCESS),
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
    }
}
