//! `snapback tar`: write directory trees as a tar stream to stdout (a drop-in for
//! `tar -cf - DIR` that skips what a Pod's runtime manages).

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use snapback_stream::{write_tar, WalkOptions, Walker};

use super::args::ExcludeArgs;

/// Output buffer in front of stdout.
const STDOUT_BUF: usize = 1 << 20;

/// Arguments of `snapback tar`.
#[derive(Debug, clap::Args)]
pub struct TarArgs {
    /// Files and directories to archive (member names are their absolute paths without the
    /// leading `/`, as GNU tar does).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Do not descend into directories on other filesystems.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Paths to leave out.
    #[command(flatten)]
    pub exclude: ExcludeArgs,
    /// Mountinfo file to read instead of /proc/self/mountinfo (for tests).
    #[arg(long, hide = true)]
    pub mountinfo: Option<PathBuf>,
}

/// Writes the tar stream to stdout. Returns exit code 0 when complete, 3
/// ([`super::EXIT_PARTIAL`]) when some entries were skipped or altered (each warning is logged
/// on stderr), and `Err` (exit 1 in `main`) when the stream could not be produced.
pub fn run(args: &TarArgs) -> anyhow::Result<ExitCode> {
    let (excludes, iexcludes) = args.exclude.patterns()?;
    let options = WalkOptions {
        one_file_system: args.one_file_system,
        excludes,
        iexcludes,
        mountinfo: args.mountinfo.clone(),
        ..WalkOptions::default()
    };
    let mut walker = Walker::new(&args.paths, options)?;
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::with_capacity(STDOUT_BUF, stdout);
    let summary = write_tar(&mut walker, &mut out).context("tar stream aborted")?;
    out.flush().context("writing tar stream")?;
    for w in &summary.warnings {
        tracing::warn!(path = %w.path.display(), "{}", w.message);
    }
    tracing::info!(
        entries = summary.entries,
        bytes = summary.bytes,
        warnings = summary.warnings.len(),
        "tar stream written"
    );
    Ok(if summary.is_partial() {
        ExitCode::from(super::EXIT_PARTIAL)
    } else {
        ExitCode::SUCCESS
    })
}
