//! Read-back drills: a share of a snapshot's packs, downloaded and verified as `check
//! --read-data` verifies every pack (the pack's SHA-256 against its name, its header against the
//! index, every blob's MAC and hash), a few at a time so that every pack is read over time.
//!
//! The packs are taken in id order from a cursor, wrapping around: successive drills with the
//! same cursor read disjoint runs of packs until all have been read. One pack is in memory at a
//! time, as in a backup's upload.

use snapback_repo::file::IndexBlob;
use snapback_repo::{BlobIndex, FileType, Id, Repository};

use crate::check::{read_pack, Workspace};
use crate::index_set::IndexedPack;
use crate::CheckError;

/// How much to read per drill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadShare {
    /// This percentage (0 < p <= 100) of the bytes of the snapshot's packs.
    Percent(f64),
    /// About this many bytes (at least one pack).
    Bytes(u64),
}

impl ReadShare {
    /// Parses `5%`, `0.5%`, or a size such as `512M`, `2GiB`, `1048576`.
    pub fn parse(text: &str) -> Option<ReadShare> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().ok()?;
            return (p > 0.0 && p <= 100.0).then_some(ReadShare::Percent(p));
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return None,
        };
        let bytes = n.checked_mul(mult)?;
        (bytes > 0).then_some(ReadShare::Bytes(bytes))
    }

    /// The byte budget out of `total` bytes.
    pub fn budget(&self, total: u64) -> u64 {
        match *self {
            ReadShare::Percent(p) => ((total as f64) * p / 100.0).ceil() as u64,
            ReadShare::Bytes(b) => b,
        }
    }
}

/// What one pack drill did.
#[derive(Debug, Clone, Default)]
pub struct PackDrillReport {
    /// Packs downloaded and verified.
    pub packs_read: usize,
    /// Bytes downloaded and verified.
    pub bytes_read: u64,
    /// Problems found: each names the pack.
    pub errors: Vec<CheckError>,
    /// The last pack read: the next drill continues after it.
    pub cursor: Option<Id>,
}

/// Reads back packs of `packs` (id and size, any order), starting after `cursor` in id order and
/// wrapping, until `share` of their bytes (at least one pack) has been read. Each pack's blobs
/// come from its own header, cross-checked against `index`: a blob the index places elsewhere
/// (or lacks) is reported, as is any blob that fails to authenticate or hash to its id.
///
/// Never fails as a whole: a pack that cannot be read is a reported problem. `stop` is asked
/// before each pack; once it answers true the drill ends early (shutdown).
pub async fn read_back(
    repo: &Repository,
    index: &BlobIndex,
    packs: &[(Id, u64)],
    share: ReadShare,
    cursor: Option<Id>,
    stop: &(dyn Fn() -> bool + Sync),
) -> PackDrillReport {
    let mut report = PackDrillReport {
        cursor,
        ..PackDrillReport::default()
    };
    if packs.is_empty() {
        return report;
    }
    let mut sorted: Vec<(Id, u64)> = packs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let total: u64 = sorted.iter().map(|p| p.1).sum();
    let budget = share.budget(total).max(1);
    let start = match cursor {
        Some(c) => sorted.partition_point(|(id, _)| *id <= c),
        None => 0,
    };
    let mut ws = Some(Workspace::default());
    for i in 0..sorted.len() {
        if report.bytes_read >= budget || stop() {
            break;
        }
        let (id, size) = sorted[(start + i) % sorted.len()];
        let file = FileType::Pack.path(&id);
        let mut problem = |message: String| {
            report.errors.push(CheckError {
                file: file.clone(),
                message,
            })
        };
        let pack = match indexed_from_header(repo, index, &id, size).await {
            Ok((pack, mismatches)) => {
                mismatches.into_iter().for_each(&mut problem);
                pack
            }
            Err(message) => {
                problem(message);
                report.packs_read += 1;
                report.cursor = Some(id);
                continue;
            }
        };
        let (problems, back) =
            read_pack(repo, &id, size, &pack, ws.take().unwrap_or_default()).await;
        ws = back;
        problems.into_iter().for_each(&mut problem);
        report.packs_read += 1;
        report.bytes_read += size;
        report.cursor = Some(id);
    }
    report
}

/// The pack's blob list as its header gives it, and how the index disagrees with it.
async fn indexed_from_header(
    repo: &Repository,
    index: &BlobIndex,
    id: &Id,
    size: u64,
) -> Result<(IndexedPack, Vec<String>), String> {
    let header = repo
        .pack_header(id, size)
        .await
        .map_err(|e| format!("cannot read the pack header: {e}"))?;
    let mut mismatches = Vec::new();
    let blobs = header
        .into_iter()
        .map(|b| {
            match index.get(&b.id) {
                // A blob may also be stored in another pack (duplicates before a prune):
                // only an entry naming this pack must agree with the header.
                Some(loc) if loc.pack == *id => {
                    if loc.offset != b.offset || loc.length != b.length || loc.ty != b.ty {
                        mismatches.push(format!(
                            "blob {} is at offset {} length {} in the header, the index says {} {}",
                            b.id, b.offset, b.length, loc.offset, loc.length
                        ));
                    }
                }
                Some(_) => {}
                None => mismatches.push(format!("blob {} is in no index", b.id)),
            }
            IndexBlob::from(b)
        })
        .collect();
    Ok((
        IndexedPack {
            index: Id::default(),
            blobs,
        },
        mismatches,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse() {
        assert_eq!(ReadShare::parse("5%"), Some(ReadShare::Percent(5.0)));
        assert_eq!(ReadShare::parse("0.5 %"), Some(ReadShare::Percent(0.5)));
        assert_eq!(ReadShare::parse("512M"), Some(ReadShare::Bytes(512 << 20)));
        assert_eq!(ReadShare::parse("2GiB"), Some(ReadShare::Bytes(2 << 30)));
        assert_eq!(ReadShare::parse("100"), Some(ReadShare::Bytes(100)));
        for bad in [
            "0%",
            "101%",
            "-1%",
            "x",
            "",
            "0",
            "5X",
            "99999999999999999999T",
        ] {
            assert_eq!(ReadShare::parse(bad), None, "{bad}");
        }
        assert_eq!(ReadShare::Percent(10.0).budget(1001), 101);
    }
}
