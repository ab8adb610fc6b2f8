//! The tree half of a verification drill: one walk over a snapshot that
//!
//! - collects the packs the snapshot uses (its trees' and its files' blobs), for the pack
//!   read-back (`snapback_maintenance::drill`);
//! - for a stream snapshot (stdin, a tar stream), reads every member back: every blob is
//!   downloaded, authenticated and hash-checked, and the members' blob lengths must add up to
//!   their sizes (one blob in memory at a time);
//! - for a snapshot of paths, compares a sample of its files with the live volume where the file
//!   looks unchanged since the backup (same size, mtime, ctime and inode): the live content is
//!   read in the snapshot's chunk boundaries and each chunk must hash to the blob id the snapshot
//!   lists. The blob id is the SHA-256 of the chunk's plaintext, so this compares content without
//!   downloading it (the pack read-back checks that the stored blobs match their ids). A mismatch
//!   on an unchanged file is silent corruption on one side, reported with the path.

use std::collections::{BTreeSet, BinaryHeap};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use snapback_repo::file::{Node, NodeType};
use snapback_repo::{BlobIndex, Id, Repository};
use tokio_util::sync::CancellationToken;

use crate::tree_walk::{TreeWalker, WalkItem};
use crate::{Error, Result};

/// What the walk does besides collecting packs.
#[derive(Debug, Clone, Copy)]
pub enum ScanMode {
    /// Read every file's content back from the repository (stream snapshots).
    Stream,
    /// Compare up to this many files, chosen with `seed`, with the live volume.
    Live {
        /// Files compared at most.
        sample: usize,
        /// Chooses the sample: a different seed, different files.
        seed: u64,
    },
}

/// Which check found a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A tree could not be loaded or is invalid.
    Tree,
    /// A stream member is unreadable or inconsistent.
    Stream,
    /// A live file's content differs from the snapshot.
    Live,
}

impl ProblemKind {
    /// The `kind` label of `snapback_verify_failures_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Tree => "tree",
            ProblemKind::Stream => "stream",
            ProblemKind::Live => "live",
        }
    }
}

/// One problem, with the snapshot path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanProblem {
    /// Which check.
    pub kind: ProblemKind,
    /// Snapshot path (for live files also the path on the volume).
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// What the walk found.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    /// Packs holding the snapshot's blobs.
    pub packs: BTreeSet<Id>,
    /// Stream members read back, or live files compared.
    pub files_verified: u64,
    /// Content bytes read back (stream) or compared (live).
    pub bytes_verified: u64,
    /// Sampled live files left out because they changed since the backup.
    pub files_changed: u64,
    /// Problems found.
    pub problems: Vec<ScanProblem>,
}

/// A sampled file: its sampling key (smallest keys win), path and node.
struct Sampled(Id, PathBuf, Node);

impl PartialEq for Sampled {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Sampled {}
impl PartialOrd for Sampled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Sampled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Walks snapshot tree `root` (see the module docs). Fails only when the root tree cannot be
/// loaded or `cancel` fires; other problems are in the report.
pub async fn scan_snapshot(
    repo: &Repository,
    index: Arc<BlobIndex>,
    root: Id,
    mode: ScanMode,
    cancel: &CancellationToken,
) -> Result<ScanReport> {
    let mut report = ScanReport::default();
    let add_pack = |report: &mut ScanReport, id: &Id| {
        if let Some(loc) = index.get(id) {
            report.packs.insert(loc.pack);
        }
    };
    add_pack(&mut report, &root);
    // Bottom-k sampling: a uniform sample of k files without knowing the count in advance, in
    // memory for k nodes only.
    let mut sample: BinaryHeap<Sampled> = BinaryHeap::new();
    let mut walker = TreeWalker::new(repo.clone(), index.clone(), root, std::path::Path::new("/"));
    let mut first = true;
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let item = match walker.next().await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(e) if first => return Err(e),
            Err(e) => {
                report.problems.push(ScanProblem {
                    kind: ProblemKind::Tree,
                    path: PathBuf::new(),
                    message: e.to_string(),
                });
                continue;
            }
        };
        first = false;
        let WalkItem::Node { path, node } = item else {
            continue;
        };
        if let Some(sub) = &node.subtree {
            add_pack(&mut report, sub);
        }
        if node.node_type != NodeType::File {
            continue;
        }
        for id in node.content.iter().flatten() {
            add_pack(&mut report, id);
        }
        match mode {
            ScanMode::Stream => {
                read_member(repo, &index, &path, &node, &mut report, cancel).await?;
            }
            ScanMode::Live { sample: k, seed } if k > 0 && node.size > 0 => {
                let mut key = seed.to_le_bytes().to_vec();
                key.extend_from_slice(path.as_os_str().as_encoded_bytes());
                let key = Id::hash(&key);
                if sample.len() < k {
                    sample.push(Sampled(key, path, node));
                } else if sample.peek().is_some_and(|top| key < top.0) {
                    sample.pop();
                    sample.push(Sampled(key, path, node));
                }
            }
            ScanMode::Live { .. } => {}
        }
    }
    for Sampled(_, path, node) in sample.into_sorted_vec() {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let lengths: Option<Vec<(Id, u64)>> = node
            .content
            .iter()
            .flatten()
            .map(|id| index.get(id).map(|l| (*id, l.plain_length())))
            .collect();
        let Some(chunks) = lengths else {
            // A blob missing from the index is the pack read-back's and check's business.
            continue;
        };
        let p = path.clone();
        let compared = tokio::task::spawn_blocking(move || compare_live(&p, &node, &chunks)).await;
        match compared {
            Ok(Live::Same(bytes)) => {
                report.files_verified += 1;
                report.bytes_verified += bytes;
            }
            Ok(Live::Changed) => report.files_changed += 1,
            Ok(Live::Differs(message)) => {
                tracing::error!(path = %path.display(), problem = %message, "live file differs from the snapshot");
                report.problems.push(ScanProblem {
                    kind: ProblemKind::Live,
                    path,
                    message,
                });
            }
            Err(e) => report.problems.push(ScanProblem {
                kind: ProblemKind::Live,
                path,
                message: format!("comparison task failed: {e}"),
            }),
        }
    }
    Ok(report)
}

/// Reads one stream member back, blob by blob.
async fn read_member(
    repo: &Repository,
    index: &BlobIndex,
    path: &std::path::Path,
    node: &Node,
    report: &mut ScanReport,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut total = 0u64;
    for id in node.content.iter().flatten() {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let problem = match index.get(id) {
            None => format!("blob {id} is in no index"),
            Some(loc) => match repo.load_blob(id, &loc).await {
                Ok(data) => {
                    total += data.len() as u64;
                    continue;
                }
                Err(e) => format!("blob {id}: {e}"),
            },
        };
        report.problems.push(ScanProblem {
            kind: ProblemKind::Stream,
            path: path.to_path_buf(),
            message: problem,
        });
        return Ok(());
    }
    if total != node.size {
        report.problems.push(ScanProblem {
            kind: ProblemKind::Stream,
            path: path.to_path_buf(),
            message: format!("size {} but its blobs hold {total} bytes", node.size),
        });
        return Ok(());
    }
    report.files_verified += 1;
    report.bytes_verified += total;
    Ok(())
}

enum Live {
    /// Same content; bytes compared.
    Same(u64),
    /// Not comparable: gone, or changed since the backup (or during the comparison).
    Changed,
    /// Unchanged by its metadata, yet different content.
    Differs(String),
}

/// Whether the live file matches its snapshot node by metadata (size, mtime, ctime, inode).
fn unchanged(md: &std::fs::Metadata, node: &Node) -> bool {
    md.is_file()
        && md.len() == node.size
        && md.ino() == node.inode
        && md.mtime() == node.mtime.timestamp()
        && md.mtime_nsec() == i64::from(node.mtime.timestamp_subsec_nanos())
        && md.ctime() == node.ctime.timestamp()
        && md.ctime_nsec() == i64::from(node.ctime.timestamp_subsec_nanos())
}

fn compare_live(path: &std::path::Path, node: &Node, chunks: &[(Id, u64)]) -> Live {
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return Live::Changed;
    };
    if !unchanged(&md, node) {
        return Live::Changed;
    }
    let Ok(mut f) = File::open(path) else {
        return Live::Changed;
    };
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut first_bad = None;
    for (id, len) in chunks {
        buf.clear();
        match (&mut f).take(*len).read_to_end(&mut buf) {
            Ok(n) if n as u64 == *len => {}
            _ => return Live::Changed,
        }
        if first_bad.is_none() && Id::hash(&buf) != *id {
            first_bad = Some(offset);
        }
        offset += len;
    }
    // Written to during the comparison: a difference proves nothing.
    match std::fs::symlink_metadata(path) {
        Ok(after) if unchanged(&after, node) => {}
        _ => return Live::Changed,
    }
    match first_bad {
        None if offset == node.size => Live::Same(offset),
        None => Live::Differs(format!(
            "the snapshot's chunks hold {offset} bytes, the file has {}",
            node.size
        )),
        Some(at) => Live::Differs(format!(
            "content differs from the snapshot in the chunk at byte {at}, although size, mtime, \
             ctime and inode are unchanged: silent corruption of the volume or of the backup"
        )),
    }
}
