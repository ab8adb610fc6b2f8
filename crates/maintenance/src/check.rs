//! `check`: verifies that the repository is complete and intact, as `restic check` does.
//!
//! 1. Index files load; a pack listed twice with different blobs is an error, twice the same a
//!    hint.
//! 2. Every indexed pack exists with the size its index entries imply; packs in no index are
//!    "orphaned" hints (prune deletes them), not errors.
//! 3. Every pack's header matches the index (one ranged read per pack).
//! 4. Every snapshot loads and every tree it reaches loads and parses, and every referenced blob
//!    is in the index.
//! 5. With [`ReadData::All`], every pack is downloaded whole: its SHA-256 must equal its name
//!    and every blob must authenticate, decompress and hash to its id. A [`ReadData`] subset
//!    reads some packs so (chosen as restic's `--read-data-subset` chooses them) and checks
//!    the header of the others.
//!
//! A few packs are checked at a time, one pack in memory per worker; blobs are decrypted where
//! they lie in it. Each worker's buffers (the pack, a decompressed blob) are kept for its next
//! pack: fresh buffers of this size are fresh mappings, a page fault per 4 KiB read.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use futures::StreamExt;
use snapback_repo::file::SnapshotFile;
use snapback_repo::pack::{parse_header, PackedBlob};
use snapback_repo::{BlobLocation, FileType, Id, Repository};

use crate::index_set::{IndexProblem, IndexSet, IndexedPack};
use crate::walk::walk;
use crate::{Error, Result};

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
    /// Bytes of the packs downloaded and verified in full.
    pub bytes_read: u64,
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

/// Which packs a check downloads and verifies in full; the others get their header checked.
/// The subsets are restic's `check --read-data-subset` (0.14 and later, unchanged since).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ReadData {
    /// No pack is read in full.
    #[default]
    None,
    /// Every pack (`--read-data`).
    All,
    /// Group `n` of `m` (`n/m`, 1 <= n <= m <= 256): the packs whose id's first byte modulo
    /// `m` is `n - 1`. The groups are fixed by the ids, so running `1/m` to `m/m` (say one a
    /// day) reads every pack once, and restic given the same `n/m` reads the same packs.
    Group {
        /// Which group, from 1.
        n: u16,
        /// How many groups.
        m: u16,
    },
    /// `x%` (0 < x <= 100): that share of the packs, rounded down but at least one, chosen
    /// at random on every run.
    Percent(f64),
    /// A size (`500M`): random packs, as many as the size's share of all pack bytes (the
    /// size capped at the total) is of the pack count, as restic counts it.
    Bytes(u64),
}

/// Groups at most: the group is taken from the first byte of the pack id.
pub const MAX_GROUPS: u16 = 256;

impl FromStr for ReadData {
    type Err = Error;

    /// Parses restic's `--read-data-subset` argument: `n/m`, `x%` or a size with an optional
    /// `K`, `M`, `G` or `T` suffix (powers of 1024).
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidOption {
            what: "--read-data-subset",
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if let Some((n, m)) = s.split_once('/') {
            if !digits(n) || !digits(m) {
                return Err(bad("n/m takes two whole numbers, e.g. 1/5"));
            }
            let (n, m) = match (n.parse::<u64>(), m.parse::<u64>()) {
                (Ok(n), Ok(m)) => (n, m),
                _ => return Err(bad("n/m takes two whole numbers, e.g. 1/5")),
            };
            if m > u64::from(MAX_GROUPS) {
                return Err(bad(&format!(
                    "at most {MAX_GROUPS} groups (m), one per first byte of a pack id"
                )));
            }
            if n == 0 || m == 0 || n > m {
                return Err(bad("n/m selects group n of m, so 1 <= n <= m, e.g. 1/5"));
            }
            // Both at most 256 here.
            return Ok(ReadData::Group {
                n: n as u16,
                m: m as u16,
            });
        }
        if let Some(p) = s.strip_suffix('%') {
            let valid = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            return match p.parse::<f64>() {
                Ok(x) if valid && x > 0.0 && x <= 100.0 => Ok(ReadData::Percent(x)),
                Ok(_) if valid => Err(bad("x% needs 0 < x <= 100")),
                _ => Err(bad("x% takes a number, e.g. 10%")),
            };
        }
        let (number, unit) = match s.as_bytes().last() {
            Some(b'k' | b'K') => (&s[..s.len() - 1], 1u64 << 10),
            Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
            Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
            Some(b't' | b'T') => (&s[..s.len() - 1], 1 << 40),
            _ => (s, 1),
        };
        if !digits(number) {
            return Err(bad(
                "expected n/m (a group, e.g. 1/5), x% (a share, e.g. 10%) or a size (e.g. 500M)",
            ));
        }
        match number.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)) {
            Some(0) => Err(bad("the size must be above zero")),
            Some(bytes) => Ok(ReadData::Bytes(bytes)),
            None => Err(bad("the size is too large")),
        }
    }
}

impl fmt::Display for ReadData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadData::None => write!(f, "no data"),
            ReadData::All => write!(f, "all data"),
            ReadData::Group { n, m } => write!(f, "group {n} of {m}"),
            ReadData::Percent(x) => write!(f, "{x}% of the packs"),
            ReadData::Bytes(b) => write!(f, "{b} bytes of packs"),
        }
    }
}

impl ReadData {
    /// The packs to read in full out of `packs` (id and size), in their given order.
    pub fn select(&self, packs: &[(Id, u64)]) -> Vec<Id> {
        let share = match *self {
            ReadData::None => return Vec::new(),
            ReadData::All => return packs.iter().map(|(id, _)| *id).collect(),
            ReadData::Group { n, m } => {
                return packs
                    .iter()
                    .filter(|(id, _)| n >= 1 && u16::from(id.0[0]) % m.max(1) == n - 1)
                    .map(|(id, _)| *id)
                    .collect();
            }
            ReadData::Percent(x) => x / 100.0,
            ReadData::Bytes(b) => {
                let total: u64 = packs.iter().map(|(_, size)| size).sum();
                if total == 0 {
                    return Vec::new();
                }
                b.min(total) as f64 / total as f64
            }
        };
        // restic rounds the count down and reads at least one pack.
        let count = ((packs.len() as f64 * share) as usize).clamp(1, packs.len().max(1));
        let mut chosen: Vec<Id> = packs.iter().map(|(id, _)| *id).collect();
        let (picked, _) = rand::seq::SliceRandom::partial_shuffle(
            &mut chosen[..],
            &mut rand::thread_rng(),
            count,
        );
        picked.to_vec()
    }
}

/// Checks the repository under a shared lock; `read` says which packs are also read and
/// verified in full. Fails only when the check itself cannot run (storage unreachable,
/// repository locked).
pub async fn check(repo: &Repository, read: ReadData) -> Result<CheckReport> {
    let lock = repo.lock(false).await?;
    let result = run(repo, read).await;
    lock.release().await?;
    result
}

async fn run(repo: &Repository, read: ReadData) -> Result<CheckReport> {
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

    let selected: std::collections::HashSet<Id> = read.select(&to_check).into_iter().collect();
    let workspaces = std::sync::Mutex::new(Vec::<Workspace>::new());
    let mut checks = futures::stream::iter(to_check)
        .map(|(id, size)| {
            let pack = &index.packs[&id];
            let workspaces = &workspaces;
            let read_data = selected.contains(&id);
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
                (id, size, read_data, problems)
            }
        })
        .buffer_unordered(WORKERS);
    while let Some((id, size, read_data, problems)) = checks.next().await {
        if read_data {
            report.packs_read += 1;
            report.bytes_read += size;
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
    let mut from_index: Vec<PackedBlob> = pack.blobs.iter().map(|b| PackedBlob::from(*b)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_as_restic_reads_them() {
        let ok = |s: &str| s.parse::<ReadData>().unwrap();
        assert_eq!(ok("1/5"), ReadData::Group { n: 1, m: 5 });
        assert_eq!(ok("256/256"), ReadData::Group { n: 256, m: 256 });
        assert_eq!(ok("2.5%"), ReadData::Percent(2.5));
        assert_eq!(ok("100%"), ReadData::Percent(100.0));
        assert_eq!(ok("500M"), ReadData::Bytes(500 << 20));
        assert_eq!(ok("2g"), ReadData::Bytes(2 << 30));
        assert_eq!(ok("4096"), ReadData::Bytes(4096));
        for bad in [
            "0/3",
            "4/3",
            "1/0",
            "1/257",
            "-1/3",
            "1/3/4",
            "1.5/3",
            "/3",
            "0%",
            "150%",
            "-5%",
            "%",
            "x%",
            "abc",
            "0",
            "10MB",
            "",
            "99999999999T",
        ] {
            assert!(bad.parse::<ReadData>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn groups_split_by_the_first_byte_and_shares_read_at_least_one_pack() {
        let packs: Vec<(Id, u64)> = (0..=255u8)
            .map(|b| {
                let mut id = [0u8; 32];
                id[0] = b;
                id[31] = 7;
                (Id(id), 10)
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for n in 1..=3 {
            for id in (ReadData::Group { n, m: 3 }).select(&packs) {
                assert_eq!(u16::from(id.0[0]) % 3, n - 1);
                assert!(seen.insert(id));
            }
        }
        assert_eq!(seen.len(), packs.len());
        assert_eq!(ReadData::Percent(10.0).select(&packs).len(), 25);
        assert_eq!(ReadData::Percent(0.01).select(&packs).len(), 1);
        assert_eq!(ReadData::Bytes(100).select(&packs).len(), 10);
        assert_eq!(ReadData::Bytes(1 << 40).select(&packs).len(), 256);
        assert!(ReadData::Percent(50.0).select(&[]).is_empty());
        assert!(ReadData::Bytes(5).select(&[]).is_empty());
    }
}
