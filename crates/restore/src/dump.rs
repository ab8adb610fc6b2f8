//! `dump`: one file's bytes, or a directory as a tar stream, written to any writer.
//!
//! Tar member names follow `restic dump` (0.14): the snapshot path without its leading `/`,
//! and the dumped directory itself is not a member. `dump latest /data/x` yields `data/x/a`,
//! `data/x/sub/`, ...; `dump latest /` yields `data/`, `data/x/`, .... Unlike restic 0.14,
//! hard links become tar hard-link members, and fifos and device nodes are stored with their
//! own type at every depth (restic drops them below the top level and writes top-level ones as
//! empty regular files).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use snapback_repo::file::NodeType;
use snapback_repo::{BlobIndex, Id, Repository};
use snapback_stream::tar_write::{write_tar, Summary};
use tokio::runtime::Handle;

use crate::tree_walk::{clean_path, find_node, SnapshotSource, SourceOptions};
use crate::{Error, Result};

/// What a dump wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpOutcome {
    /// A file's content.
    File {
        /// Bytes written.
        bytes: u64,
    },
    /// A directory as a tar stream.
    Tar(Summary),
}

fn node_type_name(t: NodeType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{t:?}"))
}

/// Writes the file or directory at snapshot path `path` (`/` is the whole snapshot) of the tree
/// `root_tree` to `out`, which is flushed at the end. A file is written blob by blob (one blob
/// in memory); a directory as tar (see the module docs for member names).
///
/// Blocks on `handle`: call it from a blocking thread (`spawn_blocking`), never from inside an
/// async task. See [`dump`] for the async wrapper.
pub fn dump_blocking<W: Write>(
    handle: &Handle,
    repo: &Repository,
    index: Arc<BlobIndex>,
    root_tree: Id,
    path: &Path,
    mut out: W,
) -> Result<DumpOutcome> {
    let clean = clean_path(path);
    let node = handle.block_on(find_node(repo, &index, &root_tree, &clean))?;
    match node.node_type {
        NodeType::Dir => {
            let mut source = SnapshotSource::new(
                handle.clone(),
                repo.clone(),
                index,
                &node,
                &clean,
                SourceOptions::default(),
            )?;
            let summary = write_tar(&mut source, out)?;
            Ok(DumpOutcome::Tar(summary))
        }
        NodeType::File => {
            let output = || PathBuf::from("<output>");
            let mut bytes = 0u64;
            for id in node.content.as_deref().unwrap_or_default() {
                let loc = index
                    .get(id)
                    .ok_or(snapback_repo::Error::BlobNotFound(*id))?;
                let data = handle.block_on(repo.load_blob(id, &loc))?;
                out.write_all(&data).map_err(|e| Error::io(output(), e))?;
                bytes += data.len() as u64;
            }
            out.flush().map_err(|e| Error::io(output(), e))?;
            Ok(DumpOutcome::File { bytes })
        }
        other => Err(Error::WrongType {
            path: clean.display().to_string(),
            expected: "file",
            found: node_type_name(other),
        }),
    }
}

/// [`dump_blocking`] on a blocking thread of the current runtime.
pub async fn dump<W: Write + Send + 'static>(
    repo: Repository,
    index: Arc<BlobIndex>,
    root_tree: Id,
    path: PathBuf,
    out: W,
) -> Result<DumpOutcome> {
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || dump_blocking(&handle, &repo, index, root_tree, &path, out))
        .await
        .map_err(|e| Error::Task(format!("dump task failed: {e}")))?
}

/// Whether `err` comes from writing to a closed pipe (`snapback dump ... | head`), which ends a
/// dump quietly.
pub fn is_broken_pipe(err: &Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return true;
            }
        }
        cur = e.source();
    }
    false
}
