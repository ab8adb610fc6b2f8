//! `snapback tar`: write directory trees as a tar stream to stdout (a drop-in for
//! `tar -cf - DIR` that skips what a Pod's runtime manages).

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use snapback_stream::{read_exclude_file, write_tar, WalkOptions, Walker};

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
    /// Exclude paths matching this glob (repeatable; restic's `--exclude` semantics).
    #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
    pub excludes: Vec<String>,
    /// Read exclude patterns from this file (one per line, `#` comments; repeatable).
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub exclude_files: Vec<PathBuf>,
    /// Like `--exclude`, ignoring case (repeatable).
    #[arg(long = "iexclude", value_name = "PATTERN")]
    pub iexcludes: Vec<String>,
    /// Like `--exclude-file`, ignoring case (repeatable).
    #[arg(long = "iexclude-file", value_name = "FILE")]
    pub iexclude_files: Vec<PathBuf>,
    /// Mountinfo file to read instead of /proc/self/mountinfo (for tests).
    #[arg(long, hide = true)]
    pub mountinfo: Option<PathBuf>,
}

/// Writes the tar stream to stdout. Returns exit code 0 when complete, 3
/// ([`super::EXIT_PARTIAL`]) when some entries were skipped or altered (each warning is logged
/// on stderr), and `Err` (exit 1 in `main`) when the stream could not be produced.
pub fn run(args: &TarArgs) -> anyhow::Result<ExitCode> {
    let mut excludes = args.excludes.clone();
    for file in &args.exclude_files {
        excludes.extend(read_exclude_file(file)?);
    }
    let mut iexcludes = args.iexcludes.clone();
    for file in &args.iexclude_files {
        iexcludes.extend(read_exclude_file(file)?);
    }
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
