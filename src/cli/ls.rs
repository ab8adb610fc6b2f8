//! `snapback ls`: list the nodes of a snapshot as `restic ls` does. Also the snapshot selection
//! shared by `ls`, `restore` and `dump` (`latest` or an id prefix, narrowed by host and paths).

use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use snapback_repo::file::SnapshotFile;
use snapback_repo::{BlobIndex, Id, Repository};
use snapback_restore::ls::{format_long, list, snapshot_json, JsonNode, LsOptions};

use super::GlobalArgs;

/// How `latest` is narrowed (as restic's `--host` / `--path`).
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotFilter {
    /// With `latest`: only snapshots of this host.
    #[arg(short = 'H', long)]
    pub host: Option<String>,
    /// With `latest`: only snapshots of exactly these paths (repeatable).
    #[arg(long = "path")]
    pub paths: Vec<String>,
}

/// An open repository with its index and one resolved snapshot.
pub struct OpenedSnapshot {
    /// The repository.
    pub repo: Repository,
    /// Its blob index.
    pub index: Arc<BlobIndex>,
    /// Snapshot id.
    pub id: Id,
    /// The snapshot.
    pub snapshot: SnapshotFile,
}

/// Opens the repository, finds snapshot `spec` (`latest`, an id or an id prefix) and loads
/// the index.
pub async fn open_snapshot(
    global: &GlobalArgs,
    spec: &str,
    filter: &SnapshotFilter,
) -> anyhow::Result<OpenedSnapshot> {
    let repo = super::repo::open(global).await?;
    let (id, snapshot) = repo
        .find_snapshot(spec, filter.host.as_deref(), &filter.paths)
        .await?;
    let index = Arc::new(
        BlobIndex::load(&repo)
            .await
            .context("cannot load the index")?,
    );
    Ok(OpenedSnapshot {
        repo,
        index,
        id,
        snapshot,
    })
}

/// Arguments of `snapback ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Snapshot: `latest`, an id or a unique id prefix.
    pub snapshot: String,
    /// Only these absolute snapshot paths and their direct children (all below with
    /// `--recursive`). Taken as raw bytes.
    pub dirs: Vec<PathBuf>,
    /// Long listing: mode, uid, gid, size, mtime, path.
    #[arg(short = 'l', long)]
    pub long: bool,
    /// JSON lines (the same shape as `restic ls --json`).
    #[arg(long)]
    pub json: bool,
    /// With directory arguments, list everything below them.
    #[arg(long)]
    pub recursive: bool,
    /// Snapshot selection for `latest`.
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

/// Lists the snapshot's nodes on stdout.
pub async fn run(global: &GlobalArgs, args: &LsArgs) -> anyhow::Result<ExitCode> {
    let opened = open_snapshot(global, &args.snapshot, &args.filter).await?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let written = write_listing(&opened, args, global.quiet, &mut out).await;
    let flushed = written.and_then(|()| out.flush().map_err(anyhow::Error::from));
    match flushed {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `snapback ls ... | head` ends quietly.
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
    }
}

async fn write_listing(
    opened: &OpenedSnapshot,
    args: &LsArgs,
    quiet: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let snap = &opened.snapshot;
    if args.json {
        serde_json::to_writer(&mut *out, &snapshot_json(&opened.id, snap))?;
        out.write_all(b"\n")?;
    } else if !quiet {
        writeln!(
            out,
            "snapshot {} of [{}] filtered by [{}] at {}):",
            opened.id.short(),
            snap.paths.join(" "),
            args.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            snap.time.format("%Y-%m-%d %H:%M:%S%.f %z")
        )?;
    }
    let opts = LsOptions {
        paths: args.dirs.clone(),
        recursive: args.recursive,
    };
    let mut io_error: Option<std::io::Error> = None;
    // Paths are printed as their raw bytes, as restic prints them; JSON has to be UTF-8
    // text, so there they are lossy (as in restic's, U+FFFD for each invalid byte).
    let visit = |path: &Path, node: &snapback_repo::file::Node| {
        let line = if args.json {
            serde_json::to_vec(&JsonNode::new(path, node)).map_err(std::io::Error::other)
        } else if args.long {
            Ok(format_long(path, node))
        } else {
            Ok(path.as_os_str().as_bytes().to_vec())
        };
        let res = line.and_then(|mut l| {
            l.push(b'\n');
            out.write_all(&l)
        });
        res.map_err(|e| {
            let err = snapback_restore::Error::io(
                "<stdout>",
                std::io::Error::new(e.kind(), e.to_string()),
            );
            io_error = Some(e);
            err
        })
    };
    let listed = list(
        &opened.repo,
        opened.index.clone(),
        opened.snapshot.tree,
        &opts,
        visit,
    )
    .await;
    if let Some(e) = io_error {
        return Err(e.into());
    }
    listed?;
    Ok(())
}

/// Whether an error (or one of its causes) is a write to a closed pipe.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<snapback_restore::Error>()
                .is_some_and(snapback_restore::dump::is_broken_pipe)
    })
}
