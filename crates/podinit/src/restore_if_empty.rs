//! `--restore-if-empty`: an initContainer restores the latest snapshot of its host into the
//! data directory when that is empty, so that a Pod rescheduled onto a fresh volume starts
//! with its data.
//!
//! States of the target directory: missing or empty (restore), holding data (leave it alone),
//! or holding [`RESTORE_MARKER`] (an earlier restore was interrupted: it was empty when that
//! began, so clear it and start over). The marker is written before the restore and removed
//! only after a complete one, so a crash at any point leads the next attempt to start over
//! rather than to keep a partial tree.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use snapback_repo::file::{Node, NodeType, SnapshotFile};
use snapback_repo::{BlobIndex, Id, Repository};
use snapback_restore::restore::{restore, RestoreOptions, RestoreSummary};
use snapback_restore::tree_walk::{find_node, root_node};

/// Left in the target while a restore runs: its presence tells a rerun that the directory
/// holds an interrupted restore (it was empty when that began), not the Pod's data.
pub const RESTORE_MARKER: &str = ".snapback-restore-incomplete";

/// Why the directory could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreIfEmptyError {
    /// A local file operation on the target failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "create", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The repository could not be read (snapshots, trees) or locked.
    #[error(transparent)]
    Repository(#[from] snapback_repo::Error),
    /// The snapshot's backed-up path could not be looked up in its trees.
    #[error(transparent)]
    Tree(#[from] snapback_restore::Error),
    /// The restore itself failed.
    #[error("restoring snapshot {} into {} failed: {source}", snapshot.short(), dir.display())]
    Restore {
        /// The snapshot restored.
        snapshot: Id,
        /// The target directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: snapback_restore::Error,
    },
    /// Some paths were not restored; the marker stays, so the next attempt starts over.
    #[error(
        "{failed} paths of snapshot {} could not be restored into {} (first: {}: {message})",
        snapshot.short(), dir.display(), first.display()
    )]
    Incomplete {
        /// The snapshot restored.
        snapshot: Id,
        /// The target directory.
        dir: PathBuf,
        /// How many paths failed.
        failed: usize,
        /// The first path that failed.
        first: PathBuf,
        /// Why it failed.
        message: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RestoreIfEmptyError {
    let path = path.to_path_buf();
    move |source| RestoreIfEmptyError::Io {
        action,
        path,
        source,
    }
}

/// What [`restore_if_empty`] did.
#[derive(Debug)]
pub enum RestoreOutcome {
    /// The directory holds data: nothing was restored.
    NotEmpty,
    /// The host has no snapshot yet: the directory starts empty.
    NoSnapshot,
    /// The latest snapshot was restored.
    Restored {
        /// Its id.
        snapshot: Id,
        /// Its backed-up paths.
        paths: Vec<String>,
        /// What was restored.
        summary: RestoreSummary,
    },
}

/// Restores the latest snapshot of `host` into `dir` when `dir` is empty (or missing, or holds
/// an interrupted restore); a no-op otherwise. The restore runs under a shared lock.
pub async fn restore_if_empty(
    repo: &Repository,
    index: Arc<BlobIndex>,
    dir: &Path,
    host: &str,
) -> Result<RestoreOutcome, RestoreIfEmptyError> {
    match target_state(dir).map_err(io_err("read", dir))? {
        Target::HasData => {
            tracing::info!(dir = %dir.display(), "directory is not empty: nothing restored");
            return Ok(RestoreOutcome::NotEmpty);
        }
        Target::Interrupted => {
            tracing::warn!(dir = %dir.display(), "an earlier restore was interrupted: starting it over");
            clear_interrupted(dir).map_err(io_err("clear the interrupted restore in", dir))?;
        }
        Target::Empty => {}
    }
    let Some((id, snap)) = repo.latest_snapshot(Some(host), &[]).await? else {
        return Ok(RestoreOutcome::NoSnapshot);
    };
    let start = start_node(repo, &index, &snap).await?;

    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let marker = dir.join(RESTORE_MARKER);
    fs::write(&marker, b"").map_err(io_err("write", &marker))?;
    let lock = repo.lock(false).await?;
    let result = restore(repo, index, &start, &RestoreOptions::new(dir)).await;
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "cannot remove the repository lock");
    }
    let summary = result.map_err(|source| RestoreIfEmptyError::Restore {
        snapshot: id,
        dir: dir.to_path_buf(),
        source,
    })?;
    for w in &summary.warnings {
        tracing::warn!(path = %w.path.display(), "{}", w.message);
    }
    if let Some(first) = summary.failed.first() {
        // The marker stays: the next attempt starts over rather than keep a partial tree.
        return Err(RestoreIfEmptyError::Incomplete {
            snapshot: id,
            dir: dir.to_path_buf(),
            failed: summary.failed.len(),
            first: first.path.clone(),
            message: first.message.clone(),
        });
    }
    // restore() fills the target but leaves the target itself alone; give it the backed-up
    // directory's permissions (PostgreSQL, for one, refuses a data directory that is not 0700).
    if start.node_type == NodeType::Dir && !start.name.is_empty() {
        fs::set_permissions(dir, fs::Permissions::from_mode(start.mode & 0o777))
            .map_err(io_err("set the permissions of", dir))?;
    }
    fs::remove_file(&marker).map_err(io_err("remove", &marker))?;
    Ok(RestoreOutcome::Restored {
        snapshot: id,
        paths: snap.paths,
        summary,
    })
}

/// The node whose contents go into the target: the snapshot's one backed-up path, or its root
/// (a stream's members, several paths).
async fn start_node(
    repo: &Repository,
    index: &BlobIndex,
    snap: &SnapshotFile,
) -> Result<Node, snapback_restore::Error> {
    if let [path] = snap.paths.as_slice() {
        match find_node(repo, index, &snap.tree, Path::new(path)).await {
            Ok(node) => return Ok(node),
            // A tar stream's snapshot path (`/stdin`) is a name, its members sit at the root.
            Err(snapback_restore::Error::PathNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(root_node(snap.tree))
}

#[derive(Debug, PartialEq, Eq)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_states() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        assert_eq!(target_state(&dir).unwrap(), Target::Empty);
        fs::create_dir_all(dir.join("lost+found")).unwrap();
        assert_eq!(target_state(&dir).unwrap(), Target::Empty);
        fs::write(dir.join("lost+found/x"), b"x").unwrap();
        assert_eq!(target_state(&dir).unwrap(), Target::HasData);
        fs::remove_file(dir.join("lost+found/x")).unwrap();
        fs::create_dir(dir.join("partial")).unwrap();
        fs::write(dir.join("partial/f"), b"f").unwrap();
        fs::write(dir.join(RESTORE_MARKER), b"").unwrap();
        assert_eq!(target_state(&dir).unwrap(), Target::Interrupted);
        clear_interrupted(&dir).unwrap();
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![RESTORE_MARKER.to_string(), "lost+found".to_string()]
        );
    }
}
