//! `check`: verifies that the repository is complete and intact, as `restic check` does.
//!
//! 1. Index files load; a pack listed twice with different blobs is an error, twice the same a
//!    hint.
//! 2. Every indexed pack exists with the size its index entries imply; packs in no index are
//!    "orphaned" hints (prune deletes them), not errors.
//! 3. Every pack's header matches the index (one ranged read per pack).
//! 4. Every snapshot loads and every tree it reaches loads and parses, and every referenced blob
//!    is in the index.
//! 5. With `read_data`, every pack is downloaded whole: its SHA-256 must equal its name and
//!    every blob must authenticate, decompress and hash to its id.
//!
//! A few packs are checked at a time, one pack in memory per worker; blobs are decrypted where
//! they lie in it. Each worker's buffers (the pack, a decompressed blob) are kept for its next
//! pack: fresh buffers of this size are fresh mappings, a page fault per 4 KiB read.

use std::collections::HashMap;
use std::fmt;

use futures::StreamExt;
use snapback_repo::file::SnapshotFile;
use snapback_repo::pack::{parse_header, PackedBlob};
use snapback_repo::{BlobLocation, FileType, Id, Repository};

use crate::index_set::{IndexProblem, IndexSet, IndexedPack};
use crate::walk::walk;
use crate::Result;

/// Packs checked at once.
pub const WORKERS: usize = 3;

/// One problem, naming the file it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError {
    /// Repository-relative path: `data/ab/<pack>`, `index/<id>`, `snapshots/<id>`.
    pub file: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Errors: the repository is damaged.
    pub errors: Vec<CheckError>,
    /// Remarks that are not errors (duplicate index entries, orphaned packs, unused blobs).
    pub hints: Vec<String>,
    /// Index files loaded.
    pub index_files: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Packs in storage but in no index.
    pub orphaned_packs: Vec<Id>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Trees reached from the snapshots.
    pub trees: usize,
    /// Data blobs referenced by the snapshots.
    pub data_blobs: usize,
    /// Packs downloaded and verified in full (`read_data`).
    pub packs_read: usize,
}

impl CheckReport {
    /// No errors were found.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    fn error(&mut self, file: String, message: impl Into<String>) {
        self.errors.push(CheckError {
            file,
            message: message.into(),
        });
    }
}

/// Checks the repository under a shared lock; `read_data` also reads and verifies all data.
/// Fails only when the check itself cannot run (storage unreachable, repository locked).
pub async fn check(repo: &Repository, read_data: bool) -> Result<CheckReport> {
    let lock = repo.lock(false).await?;
    let result = run(repo, read_data).await;
    lock.release().await?;
    result
}

async fn run(repo: &Repository, read_data: bool) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let index = IndexSet::load(repo).await?;
    report.index_files = index.files.len();
    report.packs = index.packs.len();
    for p in &index.problems {
        match p {
            IndexProblem::Unreadable { index, message } => {
                report.error(FileType::Index.path(index), message.clone())
            }
            IndexProblem::InconsistentPack { pack, indexes } => report.error(
                FileType::Index.path(&indexes[1]),
                format!(
                    "lists pack {pack} with other blobs than index {}",
                    indexes[0]
                ),
            ),
            IndexProblem::DuplicatePack { pack, indexes } => report.hints.push(format!(
                "pack {} is listed in {} index files",
                pack.short(),
                indexes.len()
            )),
        }
    }

    let stored: HashMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)
        .await?
        .into_iter()
        .map(|l| (l.id, l.size))
        .collect();
    let mut to_check: Vec<(Id, u64)> = Vec::new();
    let mut indexed: Vec<(&Id, &IndexedPack)> = index.packs.iter().collect();
    indexed.sort_by_key(|(id, _)| **id);
    for (id, pack) in indexed {
        match stored.get(id) {
            None => report.error(
                FileType::Pack.path(id),
                format!(
                    "listed in index {} but missing from storage",
                    pack.index.short()
                ),
            ),
            Some(&size) if size != pack.expected_size() => report.error(
                FileType::Pack.path(id),
                format!(
                    "size {size} bytes, but the index implies {} bytes",
                    pack.expected_size()
                ),
            ),
            Some(&size) => to_check.push((*id, size)),
        }
    }
    let mut orphans: Vec<Id> = stored
        .keys()
        .filter(|id| !index.packs.contains_key(id))
        .copied()
        .collect();
    orphans.sort();
    for id in &orphans {
        report.hints.push(format!(
            "pack {id} is not referenced in any index (orphaned)"
        ));
    }
    report.orphaned_packs = orphans;

    let workspaces = std::sync::Mutex::new(Vec::<Workspace>::new());
    let mut checks = futures::stream::iter(to_check)
        .map(|(id, size)| {
            let pack = &index.packs[&id];
            let workspaces = &workspaces;
            async move {
                let problems = if read_data {
                    let lock = || workspaces.lock().unwrap_or_else(|e| e.into_inner());
                    let ws = lock().pop().unwrap_or_default();
                    let (problems, ws) = read_pack(repo, &id, size, pack, ws).await;
                    lock().extend(ws);
                    problems
                } else {
                    check_header(repo, &id, size, pack).await
                };
                (id, problems)
            }
        })
        .buffer_unordered(WORKERS);
    while let Some((id, problems)) = checks.next().await {
        if read_data {
            report.packs_read += 1;
        }
        for message in problems {
            report.error(FileType::Pack.path(&id), message);
        }
    }
    drop(checks);

    check_snapshots(repo, &index.blobs, &mut report).await?;
    Ok(report)
}

async fn check_snapshots(
    repo: &Repository,
    blobs: &HashMap<Id, BlobLocation>,
    report: &mut CheckReport,
) -> Result<()> {
    let listed = repo.backend().list(FileType::Snapshot).await?;
    let mut roots = Vec::with_capacity(listed.len());
    let mut loads = futures::stream::iter(listed)
        .map(|l| async move {
            (
                l.id,
                repo.load_json::<SnapshotFile>(FileType::Snapshot, &l.id)
                    .await,
            )
        })
        .buffer_unordered(8);
    while let Some((id, loaded)) = loads.next().await {
        match loaded {
            Ok(s) => roots.push((id, s.tree)),
            Err(e) => report.error(FileType::Snapshot.path(&id), e.to_string()),
        }
    }
    drop(loads);
    roots.sort();
    report.snapshots = roots.len();
    let (used, problems) = walk(repo, blobs, &roots, WORKERS + 1).await;
    for p in problems {
        report.error(
            FileType::Snapshot.path(&p.snapshot),
            format!("tree {}: {}", p.tree, p.message),
        );
    }
    report.trees = used.trees.len();
    report.data_blobs = used.data.len();
    let unused = blobs.keys().filter(|id| !used.contains(id)).count();
    if unused > 0 {
        report.hints.push(format!(
            "{unused} blobs are not used by any snapshot (prune removes them)"
        ));
    }
    Ok(())
}

/// Header of the pack against its index entries (no data read).
async fn check_header(repo: &Repository, id: &Id, size: u64, pack: &IndexedPack) -> Vec<String> {
    match repo.pack_header(id, size).await {
        Ok(header) => compare_with_index(&header, pack).into_iter().collect(),
        Err(e) => vec![format!("cannot read the pack header: {}", error_text(&e))],
    }
}

/// Decompression buffers up to this size are kept for the next pack.
const SCRATCH_KEEP: usize = 2 << 20;

/// One worker's buffers, reused from pack to pack.
#[derive(Default)]
pub(crate) struct Workspace {
    pack: Vec<u8>,
    /// Decompressed blob content.
    scratch: Vec<u8>,
}

/// The whole pack: its hash, its header, every blob. Gives the workspace back unless the
/// verification task died with it.
pub(crate) async fn read_pack(
    repo: &Repository,
    id: &Id,
    size: u64,
    pack: &IndexedPack,
    mut ws: Workspace,
) -> (Vec<String>, Option<Workspace>) {
    ws.pack.clear();
    let read = async {
        let mut reader = repo
            .backend()
            .read_range_stream(FileType::Pack, id, 0, size)
            .await?;
        let n = usize::try_from(size).unwrap_or(usize::MAX);
        reader.read_into(n, &mut ws.pack).await
    };
    if let Err(e) = read.await {
        return (vec![format!("cannot download: {e}")], Some(ws));
    }
    let repo = repo.clone();
    let id = *id;
    let pack = pack.clone();
    // Hashing and decrypting a whole pack is CPU work: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let problems = verify_pack_bytes(&repo, &id, &pack, &mut ws);
        if ws.scratch.capacity() > SCRATCH_KEEP {
            // A rare large compressed blob (a run of zeros): not worth holding per worker.
            ws.scratch = Vec::new();
        }
        (problems, Some(ws))
    })
    .await
    .unwrap_or_else(|e| (vec![format!("verification task failed: {e}")], None))
}

fn verify_pack_bytes(
    repo: &Repository,
    id: &Id,
    pack: &IndexedPack,
    ws: &mut Workspace,
) -> Vec<String> {
    let data = &mut ws.pack;
    let mut problems = Vec::new();
    let actual = Id::hash(data);
    if actual != *id {
        problems.push(format!(
            "content hash {actual} does not match the pack's name: the pack is corrupted"
        ));
    }
    match parse_header(repo.key(), data, data.len() as u64) {
        Ok(header) => problems.extend(compare_with_index(&header, pack)),
        Err(e) => problems.push(format!("pack header: {e}")),
    }
    // Hashed and its header read: the blobs can now be decrypted where they lie, in pack
    // order, so one overlapping another (a broken index) is reported rather than opened
    // from bytes already decrypted.
    let mut in_order: Vec<_> = pack.blobs.iter().collect();
    in_order.sort_by_key(|b| b.offset);
    let mut opened_to = 0usize;
    for b in in_order {
        let loc = BlobLocation {
            pack: *id,
            ty: b.ty,
            offset: b.offset,
            length: b.length,
            uncompressed_length: b.uncompressed_length,
        };
        let start = b.offset as usize;
        if start < opened_to {
            problems.push(format!("blob {} overlaps the blob before it", b.id));
            continue;
        }
        opened_to = start + b.length as usize;
        let Some(bytes) = data.get_mut(start..start + b.length as usize) else {
            problems.push(format!("blob {} lies beyond the end of the pack", b.id));
            continue;
        };
        if let Err(e) = repo.open_blob_into(&b.id, &loc, bytes, &mut ws.scratch) {
            problems.push(format!("blob {}: {}", b.id, error_text(&e)));
        }
    }
    problems
}

/// The error without the file name it starts with (the report names the file).
fn error_text(e: &snapback_repo::Error) -> String {
    match e {
        snapback_repo::Error::Auth { source, .. } => {
            format!("authentication failed, the data is corrupted ({source})")
        }
        snapback_repo::Error::Format { message, .. } => message.clone(),
        snapback_repo::Error::Pack { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

fn compare_with_index(header: &[PackedBlob], pack: &IndexedPack) -> Option<String> {
    let mut from_index: Vec<PackedBlob> = pack
        .blobs
        .iter()
        .map(|b| PackedBlob {
            id: b.id,
            ty: b.ty,
            offset: b.offset,
            length: b.length,
            uncompressed_length: b.uncompressed_length,
        })
        .collect();
    from_index.sort_by_key(|b| b.offset);
    if from_index == header {
        return None;
    }
    let first = header
        .iter()
        .zip(&from_index)
        .find(|(h, i)| h != i)
        .map(|(h, _)| format!(" (first difference at blob {})", h.id))
        .unwrap_or_default();
    Some(format!(
        "pack header lists {} blobs, the index {}; they differ{first}",
        header.len(),
        from_index.len()
    ))
}
