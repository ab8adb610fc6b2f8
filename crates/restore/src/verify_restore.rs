//! `restore --verify`: reads every restored regular file back and checks it against the
//! snapshot, as restic's `restore --verify` does: each stretch of the file must hash to the
//! id of the blob the snapshot lists for it (blob ids are the SHA-256 of their plaintext), and
//! the file must end where its last blob ends.
//!
//! The snapshot is walked again with the restore's own selection (subtree, include and
//! exclude patterns), so exactly the files restore wrote are read. Nothing is downloaded
//! except trees: blob lengths come from the index. Memory is one walk path of trees plus one
//! read buffer per file being read, however many files there are; only problems are kept.
//!
//! A file restic would not verify either (one the restore reported as failed) is skipped. A
//! file is opened without following a symlink in its last component, so a link put in its
//! place is reported, not followed.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use snapback_repo::file::{Node, NodeType};
use snapback_repo::{BlobIndex, Id, Repository};

use snapback_pattern::Filter;

use crate::restore::{node_name, select, start_subtree, RestoreOptions, RestoreProblem};
use crate::tree_walk::{join_path, TreeWalker, WalkItem};
use crate::Result;

/// Bytes read from a restored file at a time.
const READ_BUF: usize = 1 << 20;

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifySummary {
    /// Regular files read back whole and found equal to the snapshot.
    pub files: u64,
    /// Bytes read back.
    pub bytes: u64,
    /// Files whose content differs from the snapshot, or that cannot be read: snapshot path
    /// (relative to the restored tree's root) and what is wrong.
    pub mismatches: Vec<RestoreProblem>,
}

/// Reads back the regular files that [`restore`](crate::restore::restore) wrote for `start`
/// with `opts` into `opts.target` and compares them with the snapshot's blobs. `skip` holds
/// snapshot paths the restore reported as failed (not written, so not verified).
///
/// Fails only when the walk cannot start (the root tree cannot be read, a pattern is
/// invalid); a file that differs or cannot be read is a [`VerifySummary::mismatches`] entry.
/// File reading and hashing run on blocking threads, one file at a time.
pub async fn verify(
    repo: &Repository,
    index: Arc<BlobIndex>,
    start: &Node,
    opts: &RestoreOptions,
    skip: &HashSet<PathBuf>,
) -> Result<VerifySummary> {
    let include = Filter::new(&opts.include, &opts.iinclude)?;
    let exclude = Filter::new(&opts.exclude, &opts.iexclude)?;
    let mut summary = VerifySummary::default();
    let subtree = match start_subtree(start)? {
        Some(id) => id,
        None => {
            let path = join_path(Path::new("/"), &start.name);
            let (selected, _) = select(&include, &exclude, &path, start);
            if selected && node_name(start).is_ok() && !skip.contains(&path) {
                verify_node(&index, &opts.target, &path, start, &mut summary).await;
            }
            return Ok(summary);
        }
    };

    let mut walker = TreeWalker::new(repo.clone(), index.clone(), subtree, Path::new("/"));
    let mut first = true;
    loop {
        let next = walker.next().await;
        let item = match next {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(e) if first => return Err(e),
            // A tree the restore could not read either: its files were reported as failed.
            Err(_) => continue,
        };
        first = false;
        // Nodes the walk leaves out were not restored: nothing to verify.
        walker.take_skipped();
        let WalkItem::Node { path, node } = item else {
            continue;
        };
        let is_dir = node.node_type == NodeType::Dir;
        if node_name(&node).is_err() || skip.contains(&path) {
            if is_dir {
                walker.skip_subtree();
            }
            continue;
        }
        let (selected, descend) = select(&include, &exclude, &path, &node);
        if is_dir && !descend {
            walker.skip_subtree();
        }
        if selected && node.node_type == NodeType::File {
            verify_node(&index, &opts.target, &path, &node, &mut summary).await;
        }
    }
    tracing::info!(
        files = summary.files,
        bytes = summary.bytes,
        mismatches = summary.mismatches.len(),
        "verification finished"
    );
    Ok(summary)
}

/// Where a restore writes the node at snapshot path `path`.
fn local_path(target: &Path, path: &Path) -> PathBuf {
    target.join(path.strip_prefix("/").unwrap_or(path))
}

/// Checks one restored regular file, recording the outcome in `summary`.
async fn verify_node(
    index: &BlobIndex,
    target: &Path,
    path: &Path,
    node: &Node,
    summary: &mut VerifySummary,
) {
    let content = node.content.as_deref().unwrap_or_default();
    let mut blobs = Vec::with_capacity(content.len());
    for id in content {
        match index.get(id) {
            Some(loc) => blobs.push((*id, loc.plain_length())),
            None => {
                // The restore could not write it either (and reported it).
                return;
            }
        }
    }
    let local = local_path(target, path);
    let checked = tokio::task::spawn_blocking(move || compare_file(&local, &blobs))
        .await
        .unwrap_or_else(|e| Err(format!("verification task failed: {e}")));
    match checked {
        Ok(bytes) => {
            summary.files += 1;
            summary.bytes += bytes;
        }
        Err(message) => summary.mismatches.push(RestoreProblem {
            path: path.to_path_buf(),
            message,
        }),
    }
}

/// Reads `local` through, hashing each blob's stretch; the bytes read, or what differs.
fn compare_file(local: &Path, blobs: &[(Id, u64)]) -> std::result::Result<u64, String> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(local)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "a symbolic link is where the restored file should be".into(),
            _ => format!("cannot open the restored file: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the restored file: {e}"))?;
    if !meta.is_file() {
        return Err("the restored file is not a regular file".into());
    }
    let expected: u64 = blobs.iter().map(|(_, len)| len).sum();
    let mut buf = vec![0u8; READ_BUF];
    let mut offset = 0u64;
    for (i, (id, len)) in blobs.iter().enumerate() {
        let mut hasher = Sha256::new();
        let mut left = *len;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = read_some(&mut file, &mut buf[..want])
                .map_err(|e| format!("cannot read the restored file at offset {offset}: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "the file ends at {offset} bytes, the snapshot has {expected}"
                ));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
            offset += n as u64;
        }
        if Id(hasher.finalize().into()) != *id {
            return Err(format!(
                "content differs from the snapshot at bytes {}..{} (blob {} of {}, {})",
                offset - len,
                offset,
                i + 1,
                blobs.len(),
                id.short()
            ));
        }
    }
    let n = read_some(&mut file, &mut buf[..1])
        .map_err(|e| format!("cannot read the restored file at offset {offset}: {e}"))?;
    if n != 0 {
        return Err(format!(
            "the file goes on past the snapshot's {expected} bytes ({} bytes when opened)",
            meta.len()
        ));
    }
    Ok(offset)
}

fn read_some(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
