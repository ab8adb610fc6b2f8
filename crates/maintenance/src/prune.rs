//! `prune`: deletes data no snapshot uses, under an exclusive lock.
//!
//! Packs whose blobs are all used stay; packs with no used blob are deleted; partly used packs
//! are repacked (their used blobs copied, still encrypted, into new packs) following restic's
//! rule: tree packs always, data packs with the largest unused share first, until the unused
//! bytes left are below `max_unused_percent` of the used bytes. Packs in no index are deleted.
//!
//! Order of the changes, so that an interruption never loses data: new packs, then new index
//! files (superseding all old ones), then deletion of the old index files, then of the packs.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use snapback_repo::file::{IndexBlob, IndexFile, IndexPack};
use snapback_repo::locking::RepoLock;
use snapback_repo::pack::{PackBuilder, PackedBlob};
use snapback_repo::{BlobLocation, BlobType, FileType, Id, IndexWriter, Repository};

use crate::index_set::{IndexProblem, IndexSet};
use crate::walk::walk;
use crate::{Error, Result};

/// How to prune.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// Plan and report, change nothing.
    pub dry_run: bool,
    /// Unused space tolerated after pruning, in percent of the used space (restic's
    /// `--max-unused`, default 5). 0 repacks every partly used pack.
    pub max_unused_percent: f64,
    /// New packs are closed at this many bytes of blobs.
    pub pack_size: usize,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            max_unused_percent: 5.0,
            pack_size: 8 * 1024 * 1024,
        }
    }
}

/// What prune found and did (or, in a dry run, would do). Sizes are stored (encrypted) bytes.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// Snapshots whose trees were walked.
    pub snapshots: usize,
    /// Blobs in use (each counted once).
    pub used_blobs: u64,
    /// Their bytes.
    pub used_bytes: u64,
    /// Blobs not in use, including extra copies of used blobs.
    pub unused_blobs: u64,
    /// Their bytes.
    pub unused_bytes: u64,
    /// Packs in the index.
    pub packs: usize,
    /// Packs with no used blob: deleted.
    pub deleted_packs: Vec<Id>,
    /// Partly used packs: their used blobs copied to new packs, then deleted.
    pub repacked_packs: Vec<Id>,
    /// Packs in no index: deleted.
    pub orphaned_packs: Vec<Id>,
    /// Used blobs copied into new packs.
    pub repacked_blobs: u64,
    /// Their bytes.
    pub repacked_bytes: u64,
    /// Unused blobs removed.
    pub removed_blobs: u64,
    /// Bytes freed (unused blobs of deleted and repacked packs, orphaned packs).
    pub removed_bytes: u64,
    /// Unused bytes that stay (in partly used packs not worth repacking).
    pub remaining_unused_bytes: u64,
    /// New packs written.
    pub new_packs: usize,
    /// New index files written.
    pub new_index_files: usize,
    /// Old index files deleted.
    pub removed_index_files: usize,
    /// Whether changes were made.
    pub applied: bool,
}

/// Prunes the repository (under an exclusive lock unless a dry run).
pub async fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let lock = if opts.dry_run {
        None
    } else {
        Some(repo.lock(true).await?)
    };
    let result = run(repo, opts, lock.as_ref()).await;
    if let Some(lock) = lock {
        lock.release().await?;
    }
    result
}

/// Per-pack accounting.
#[derive(Debug, Clone, Copy, Default)]
struct PackUse {
    ty: Option<BlobType>,
    used_blobs: u64,
    used_bytes: u64,
    unused_blobs: u64,
    unused_bytes: u64,
}

/// `Err` once the lock is lost: deleting without it could remove what a backup that took our
/// lock for stale has just written.
fn check_lock(lock: Option<&RepoLock>) -> Result<()> {
    match lock {
        Some(lock) => Ok(lock.check()?),
        None => Ok(()),
    }
}

async fn run(
    repo: &Repository,
    opts: &PruneOptions,
    lock: Option<&RepoLock>,
) -> Result<PruneReport> {
    let index = IndexSet::load(repo).await?;
    if let Some(p) = index.problems.iter().find_map(|p| match p {
        IndexProblem::Unreadable { index, message } => {
            Some(format!("index {index} cannot be read: {message}"))
        }
        IndexProblem::InconsistentPack { pack, indexes } => Some(format!(
            "indexes {} and {} disagree about pack {pack}",
            indexes[0], indexes[1]
        )),
        IndexProblem::DuplicatePack { .. } => None,
    }) {
        return Err(Error::Damaged(p));
    }
    let stored: HashMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)
        .await?
        .into_iter()
        .map(|l| (l.id, l.size))
        .collect();
    let mut pack_ids: Vec<Id> = index.packs.keys().copied().collect();
    pack_ids.sort();
    if let Some(missing) = pack_ids.iter().find(|id| !stored.contains_key(id)) {
        return Err(Error::Damaged(format!(
            "pack {missing} is in the index but missing from storage"
        )));
    }

    let snapshots = repo.snapshots().await?;
    let roots: Vec<(Id, Id)> = snapshots.iter().map(|(id, s)| (*id, s.tree)).collect();
    let (used, problems) = walk(repo, &index.blobs, &roots, 4).await;
    if let Some(p) = problems.first() {
        return Err(Error::Damaged(format!(
            "snapshot {}: tree {}: {} ({} problems in all)",
            p.snapshot.short(),
            p.tree,
            p.message,
            problems.len()
        )));
    }

    // Every used blob gets one home pack; packs whose blobs are all used are preferred, so
    // extra copies end up in packs that are repacked or deleted anyway.
    let fully_used = |id: &Id| index.packs[id].blobs.iter().all(|b| used.contains(&b.id));
    let mut order = pack_ids.clone();
    order.sort_by_key(|id| (!fully_used(id), *id));
    let mut home: HashMap<Id, Id> = HashMap::new();
    for pack in &order {
        for b in &index.packs[pack].blobs {
            if used.contains(&b.id) {
                home.entry(b.id).or_insert(*pack);
            }
        }
    }

    let mut report = PruneReport {
        snapshots: snapshots.len(),
        packs: pack_ids.len(),
        ..Default::default()
    };
    let mut uses: HashMap<Id, PackUse> = HashMap::new();
    for pack in &pack_ids {
        let mut u = PackUse::default();
        for b in &index.packs[pack].blobs {
            u.ty.get_or_insert(b.ty);
            if home.get(&b.id) == Some(pack) {
                u.used_blobs += 1;
                u.used_bytes += u64::from(b.length);
            } else {
                u.unused_blobs += 1;
                u.unused_bytes += u64::from(b.length);
            }
        }
        report.used_blobs += u.used_blobs;
        report.used_bytes += u.used_bytes;
        report.unused_blobs += u.unused_blobs;
        report.unused_bytes += u.unused_bytes;
        uses.insert(*pack, u);
    }

    let mut candidates = Vec::new();
    let mut unused_after = report.unused_bytes;
    for pack in &pack_ids {
        let u = uses[pack];
        if u.used_blobs == 0 {
            report.deleted_packs.push(*pack);
            report.removed_blobs += u.unused_blobs;
            report.removed_bytes += u.unused_bytes;
            unused_after -= u.unused_bytes;
        } else if u.unused_blobs > 0 {
            candidates.push(*pack);
        }
    }
    // Tree packs first, then the largest unused share first (restic's order).
    candidates.sort_by(|a, b| {
        let (ua, ub) = (uses[a], uses[b]);
        let tree_first = (ua.ty != Some(BlobType::Tree)).cmp(&(ub.ty != Some(BlobType::Tree)));
        let share = (u128::from(ub.unused_bytes) * u128::from(ua.used_bytes))
            .cmp(&(u128::from(ua.unused_bytes) * u128::from(ub.used_bytes)));
        tree_first.then(share).then(a.cmp(b))
    });
    let max_unused_after = max_unused_bytes(opts.max_unused_percent, report.used_bytes);
    for pack in candidates {
        let u = uses[&pack];
        if u.ty == Some(BlobType::Tree) || unused_after >= max_unused_after {
            report.repacked_packs.push(pack);
            report.repacked_blobs += u.used_blobs;
            report.repacked_bytes += u.used_bytes;
            report.removed_blobs += u.unused_blobs;
            report.removed_bytes += u.unused_bytes;
            unused_after -= u.unused_bytes;
        }
    }
    report.remaining_unused_bytes = unused_after;
    let mut orphans: Vec<(Id, u64)> = stored
        .iter()
        .filter(|(id, _)| !index.packs.contains_key(id))
        .map(|(id, size)| (*id, *size))
        .collect();
    orphans.sort();
    report.removed_bytes += orphans.iter().map(|(_, s)| s).sum::<u64>();
    report.orphaned_packs = orphans.into_iter().map(|(id, _)| id).collect();

    if opts.dry_run {
        return Ok(report);
    }
    let rewrite_index = !report.deleted_packs.is_empty() || !report.repacked_packs.is_empty();
    if rewrite_index {
        let new_packs = repack(repo, &index, &home, &report.repacked_packs, opts.pack_size).await?;
        report.new_packs = new_packs.len();
        let gone: HashSet<Id> = report
            .deleted_packs
            .iter()
            .chain(&report.repacked_packs)
            .copied()
            .collect();
        report.new_index_files = write_index(repo, &index, &gone, new_packs).await?;
        for id in &index.files {
            check_lock(lock)?;
            repo.backend().remove(FileType::Index, id).await?;
        }
        report.removed_index_files = index.files.len();
    }
    for id in report
        .deleted_packs
        .iter()
        .chain(&report.repacked_packs)
        .chain(&report.orphaned_packs)
    {
        check_lock(lock)?;
        repo.backend().remove(FileType::Pack, id).await?;
    }
    report.applied = true;
    Ok(report)
}

/// restic: unused bytes allowed after pruning for a limit of `percent` of the total.
fn max_unused_bytes(percent: f64, used: u64) -> u64 {
    if percent >= 100.0 {
        return u64::MAX;
    }
    (percent.max(0.0) / (100.0 - percent.max(0.0)) * used as f64) as u64
}

/// Copies the used blobs whose home is one of `packs` into new packs; returns them.
async fn repack(
    repo: &Repository,
    index: &IndexSet,
    home: &HashMap<Id, Id>,
    packs: &[Id],
    pack_size: usize,
) -> Result<Vec<(Id, Vec<PackedBlob>)>> {
    let mut open = [PackBuilder::default(), PackBuilder::default()];
    let mut written = Vec::new();
    for pack in packs {
        // One old pack in memory at a time.
        let data = repo.backend().read(FileType::Pack, pack).await?;
        let keep: Vec<IndexBlob> = index.packs[pack]
            .blobs
            .iter()
            .filter(|b| home.get(&b.id) == Some(pack))
            .copied()
            .collect();
        let data = verify_blobs(repo, *pack, data, keep.clone()).await?;
        for b in &keep {
            let start = b.offset as usize;
            // In range: verify_blobs checked every blob against the pack's length.
            let bytes = &data[start..start + b.length as usize];
            let slot = usize::from(b.ty == BlobType::Tree);
            open[slot]
                .add(b.id, b.ty, bytes, b.uncompressed_length)
                .map_err(|e| Error::Damaged(e.to_string()))?;
            if open[slot].len() >= pack_size || open[slot].header_full() {
                let full = std::mem::take(&mut open[slot]);
                written.push(upload(repo, full).await?);
            }
        }
    }
    for builder in open {
        if !builder.is_empty() {
            written.push(upload(repo, builder).await?);
        }
    }
    Ok(written)
}

/// Authenticates, decompresses and hashes `blobs` of pack `pack` (on the blocking pool: CPU
/// work), so that corrupted data is never carried into a new pack while the old one is deleted.
async fn verify_blobs(
    repo: &Repository,
    pack: Id,
    data: Bytes,
    blobs: Vec<IndexBlob>,
) -> Result<Bytes> {
    let repo = repo.clone();
    tokio::task::spawn_blocking(move || {
        for b in &blobs {
            let loc = BlobLocation {
                pack,
                ty: b.ty,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            };
            let start = b.offset as usize;
            let bytes = data.get(start..start + b.length as usize).ok_or_else(|| {
                Error::Damaged(format!("pack {pack}: blob {} lies beyond its end", b.id))
            })?;
            repo.open_blob(&b.id, &loc, bytes)
                .map_err(|e| Error::Damaged(e.to_string()))?;
        }
        Ok(data)
    })
    .await
    .map_err(|e| Error::Damaged(format!("pack {pack}: verification task failed: {e}")))?
}

async fn upload(repo: &Repository, builder: PackBuilder) -> Result<(Id, Vec<PackedBlob>)> {
    let pack = builder
        .finish(repo.key())
        .map_err(|e| Error::Damaged(e.to_string()))?;
    repo.backend()
        .write(FileType::Pack, &pack.id, Bytes::from(pack.bytes))
        .await?;
    tracing::debug!(pack = %pack.id.short(), blobs = pack.blobs.len(), "wrote repacked pack");
    Ok((pack.id, pack.blobs))
}

/// Writes index files for every pack that stays plus the new ones, each superseding all old
/// index files. Returns how many were written.
async fn write_index(
    repo: &Repository,
    index: &IndexSet,
    gone: &HashSet<Id>,
    new_packs: Vec<(Id, Vec<PackedBlob>)>,
) -> Result<usize> {
    let mut kept: Vec<&Id> = index.packs.keys().filter(|id| !gone.contains(id)).collect();
    kept.sort();
    let mut packs: Vec<IndexPack> = kept
        .into_iter()
        .map(|id| IndexPack {
            id: *id,
            blobs: index.packs[id].blobs.clone(),
        })
        .collect();
    packs.extend(new_packs.into_iter().map(|(id, blobs)| IndexPack {
        id,
        blobs: blobs.iter().map(|b| IndexBlob::from(*b)).collect(),
    }));
    let mut written = 0;
    let mut file = IndexFile {
        supersedes: index.files.clone(),
        packs: Vec::new(),
    };
    let mut blobs = 0;
    for pack in packs {
        blobs += pack.blobs.len();
        file.packs.push(pack);
        if blobs >= IndexWriter::FLUSH_BLOBS {
            repo.save_json(FileType::Index, &file).await?;
            written += 1;
            file.packs.clear();
            blobs = 0;
        }
    }
    if !file.packs.is_empty() {
        repo.save_json(FileType::Index, &file).await?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unused_follows_restics_formula() {
        // restic: p / (100 - p) * used, so that unused / (used + unused) <= p%.
        assert_eq!(max_unused_bytes(5.0, 950), 50);
        assert_eq!(max_unused_bytes(0.0, 1000), 0);
        assert_eq!(max_unused_bytes(50.0, 1000), 1000);
        assert_eq!(max_unused_bytes(100.0, 1000), u64::MAX);
    }
}
