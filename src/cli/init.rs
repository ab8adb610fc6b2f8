//! `snapback init`: create a repository; as a Pod's initContainer also open an existing one,
//! write the warm key file and restore an empty data directory.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use snapback_repo::file::{Node, NodeType, SnapshotFile};
use snapback_repo::{BlobIndex, InitOptions, InitOutcome, Repository};
use snapback_restore::restore::{restore, RestoreOptions};
use snapback_restore::tree_walk::{find_node, root_node};

use super::GlobalArgs;

/// Left in the target while `--restore-if-empty` runs: its presence tells a rerun that the
/// directory holds an interrupted restore (it was empty when that began), not the Pod's data.
const RESTORE_MARKER: &str = ".snapback-restore-incomplete";

/// Arguments of `snapback init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Repository format version (2 compresses; 1 for restic < 0.14).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub repository_version: u32,
    /// Open the repository when it exists instead of failing; safe when several Pods race.
    /// Implied by --key-file and --restore-if-empty (an initContainer's use).
    #[arg(long)]
    pub if_missing: bool,
    /// When this directory is empty or missing, restore the latest snapshot of --host into it
    /// (the contents of the snapshot's backed-up path, or of its root for a stream).
    #[arg(long, value_name = "DIR")]
    pub restore_if_empty: Option<std::path::PathBuf>,
    /// Host whose latest snapshot --restore-if-empty restores (default: as for backup,
    /// POD_NAMESPACE/POD_NAME in a Pod, else the host name).
    #[arg(long, env = "SNAPBACK_HOST")]
    pub host: Option<String>,
}

/// Creates (or, for an initContainer, opens) the repository, then writes the warm key and
/// restores, as asked.
pub async fn run(global: &GlobalArgs, args: &InitArgs) -> anyhow::Result<ExitCode> {
    let backend = super::repo::backend(global)?;
    let key_file = global.warm.key_file.as_deref();
    // Before touching the repository: a missing POD_UID should not leave a half-done init.
    let secret = match key_file {
        Some(_) => Some(super::keyfile::pod_secret(&global.warm)?),
        None => None,
    };
    let pw = super::repo::password(global)?;
    // As restic does: a new repository in a bucket that does not exist yet creates it.
    if backend.create_bucket_if_missing().await? {
        if let snapback_repo::Location::S3 {
            bucket, endpoint, ..
        } = backend.location()
        {
            say(global, &format!("created bucket {bucket} at {endpoint}"));
        }
    }
    let opts = InitOptions {
        version: args.repository_version,
        ..InitOptions::default()
    };
    let init_container = args.if_missing || key_file.is_some() || args.restore_if_empty.is_some();
    let (repo, outcome) = if init_container {
        Repository::init_or_open(backend, &pw, opts).await?
    } else {
        (
            Repository::init(backend, &pw, opts).await?,
            InitOutcome::Created,
        )
    };
    drop(pw);
    let repo = repo.with_lock_retry(global.retry_lock.unwrap_or_default());
    let verb = match outcome {
        InitOutcome::Created => "created",
        InitOutcome::Opened => "opened",
    };
    say(
        global,
        &format!(
            "{verb} restic repository {} at {}",
            repo.config().id.short(),
            repo.backend().location()
        ),
    );
    if !init_container {
        return Ok(ExitCode::SUCCESS);
    }

    // What the first backup reads first: a broken index should fail the initContainer, not
    // the sidecar's first backup.
    let index = BlobIndex::load(&repo)
        .await
        .context("the repository's index is not readable")?;
    tracing::info!(blobs = index.len(), "index readable");

    if let (Some(path), Some(secret)) = (key_file, &secret) {
        super::keyfile::write(path, &repo, secret)?;
        say(
            global,
            &format!("wrote the warm key file {}", path.display()),
        );
    }
    if let Some(dir) = &args.restore_if_empty {
        let host = args
            .host
            .clone()
            .unwrap_or_else(super::backup::default_host);
        restore_if_empty(global, &repo, Arc::new(index), dir, &host).await?;
    }
    Ok(ExitCode::SUCCESS)
}

fn say(global: &GlobalArgs, line: &str) {
    if !global.quiet {
        println!("{line}");
    }
}

/// Restores the latest snapshot of `host` into `dir` when `dir` is empty; a no-op otherwise.
async fn restore_if_empty(
    global: &GlobalArgs,
    repo: &Repository,
    index: Arc<BlobIndex>,
    dir: &Path,
    host: &str,
) -> anyhow::Result<()> {
    match target_state(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        Target::HasData => {
            tracing::info!(dir = %dir.display(), "directory is not empty: nothing restored");
            say(
                global,
                &format!("{} is not empty: nothing restored", dir.display()),
            );
            return Ok(());
        }
        Target::Interrupted => {
            tracing::warn!(dir = %dir.display(), "an earlier restore was interrupted: starting it over");
            clear_interrupted(dir).with_context(|| {
                format!("cannot clear the interrupted restore in {}", dir.display())
            })?;
        }
        Target::Empty => {}
    }
    let Some((id, snap)) = repo.latest_snapshot(Some(host), &[]).await? else {
        say(
            global,
            &format!("no snapshot of host {host}: {} starts empty", dir.display()),
        );
        return Ok(());
    };
    let start = start_node(repo, &index, &snap).await?;

    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let marker = dir.join(RESTORE_MARKER);
    fs::write(&marker, b"").with_context(|| format!("cannot write {}", marker.display()))?;
    let lock = repo.lock(false).await?;
    let result = restore(repo, index, &start, &RestoreOptions::new(dir)).await;
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "cannot remove the repository lock");
    }
    let summary = result.with_context(|| {
        format!(
            "restoring snapshot {} into {} failed",
            id.short(),
            dir.display()
        )
    })?;
    for w in &summary.warnings {
        tracing::warn!(path = %w.path.display(), "{}", w.message);
    }
    if let Some(first) = summary.failed.first() {
        // The marker stays: the next attempt starts over rather than keep a partial tree.
        bail!(
            "{} paths of snapshot {} could not be restored into {} (first: {}: {})",
            summary.failed.len(),
            id.short(),
            dir.display(),
            first.path.display(),
            first.message
        );
    }
    // restore() fills the target but leaves the target itself alone; give it the backed-up
    // directory's permissions (PostgreSQL, for one, refuses a data directory that is not 0700).
    if start.node_type == NodeType::Dir && !start.name.is_empty() {
        fs::set_permissions(dir, fs::Permissions::from_mode(start.mode & 0o777))
            .with_context(|| format!("cannot set the permissions of {}", dir.display()))?;
    }
    fs::remove_file(&marker).with_context(|| format!("cannot remove {}", marker.display()))?;
    say(
        global,
        &format!(
            "restored snapshot {} of {host} ({}) into {}: {} files, {} directories, {} other nodes, {} bytes",
            id.short(),
            snap.paths.join(" "),
            dir.display(),
            summary.files,
            summary.dirs,
            summary.others,
            summary.bytes
        ),
    );
    Ok(())
}

/// The node whose contents go into the target: the snapshot's one backed-up path, or its root
/// (a stream's members, several paths).
async fn start_node(
    repo: &Repository,
    index: &BlobIndex,
    snap: &SnapshotFile,
) -> anyhow::Result<Node> {
    if let [path] = snap.paths.as_slice() {
        match find_node(repo, index, &snap.tree, std::path::Path::new(path)).await {
            Ok(node) => return Ok(node),
            // A tar stream's snapshot path (`/stdin`) is a name, its members sit at the root.
            Err(snapback_restore::Error::PathNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(root_node(snap.tree))
}

enum Target {
    Empty,
    HasData,
    Interrupted,
}

/// Missing and empty directories are empty; so is a fresh ext4 volume with only its empty
/// `lost+found`.
fn target_state(dir: &Path) -> io::Result<Target> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Target::Empty),
        Err(e) => return Err(e),
    };
    let mut state = Target::Empty;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name == RESTORE_MARKER {
            return Ok(Target::Interrupted);
        }
        if name == "lost+found" && entry.file_type()?.is_dir() && is_empty_dir(&entry.path())? {
            continue;
        }
        state = Target::HasData;
    }
    Ok(state)
}

fn is_empty_dir(dir: &Path) -> io::Result<bool> {
    Ok(fs::read_dir(dir)?.next().is_none())
}

/// Removes what an interrupted restore left (the directory was empty when it began), keeping
/// `lost+found` and the marker.
fn clear_interrupted(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == RESTORE_MARKER || name == "lost+found" {
            continue;
        }
        let path = entry.path();
        // Not following symlinks: a restored link must not lead the removal elsewhere.
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}
