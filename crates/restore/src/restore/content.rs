//! Writes the content of a batch of files, reading each pack once.
//!
//! A blob-by-blob restore makes one request per blob; on S3 that is hundreds of requests for
//! a gigabyte, and a server answers each range by reading its object. So, like restic, a batch
//! of files is planned by pack: every blob the batch needs is listed under its pack (once,
//! with every place it goes), the blobs of a pack are read as one range (split where a gap
//! of unneeded blobs is long), and each range is streamed front to back. A blob is copied out
//! of the stream into a recycled buffer, opened (MAC, decryption, decompression and hash
//! check) on its own task, and written at every offset of every file it belongs to.
//!
//! Memory: the plan of one batch (bounded by the caller), a byte budget over the blobs being
//! received or written, and a pool of idle buffers.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use futures::StreamExt;
use snapback_repo::budget::{ByteBudget, Share};
use snapback_repo::buffers::BufferPool;
use snapback_repo::{BlobLocation, FileType, Id, RangeReader, Repository};
use tokio::sync::mpsc;

/// Unneeded bytes between two needed blobs of a pack that are read rather than starting a
/// new range: a request costs more than this much transfer.
const MAX_GAP: u64 = 2 << 20;
/// Idle buffers kept for reuse (on top of the byte budget for blobs in flight).
const POOL_BYTES: usize = 8 << 20;

/// A blob of a file, located: its id, where it is stored and the file offset it starts at.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placed {
    /// The blob.
    pub id: Id,
    /// Where the index says it is.
    pub loc: BlobLocation,
    /// Offset of its plaintext in the file.
    pub offset: u64,
}

/// Writes batches of files' content; see the module docs.
pub(super) struct ContentWriter {
    shared: Arc<Shared>,
    pack_reads: usize,
    /// The batch: each file (open since it was created) and its blobs.
    files: Vec<(Arc<File>, Vec<Placed>)>,
    refs: usize,
}

/// What every range reader and blob task uses.
struct Shared {
    repo: Repository,
    budget: ByteBudget,
    pool: BufferPool,
}

/// A blob to read, and every place it goes.
struct Need {
    id: Id,
    loc: BlobLocation,
    /// (file in the batch, offset).
    targets: Vec<(usize, u64)>,
}

/// One read: a range of a pack and the blobs in it, in pack order.
struct Range {
    pack: Id,
    start: u64,
    end: u64,
    needs: Vec<Need>,
}

/// What happened to one place a blob goes: (file in the batch, bytes written or why not).
type TargetResult = (usize, Result<u64, String>);

impl ContentWriter {
    /// A writer reading at most `pack_reads` ranges at once and holding at most about
    /// `blob_bytes` of blobs.
    pub fn new(repo: Repository, pack_reads: usize, blob_bytes: usize) -> Self {
        ContentWriter {
            shared: Arc::new(Shared {
                repo,
                budget: ByteBudget::new(blob_bytes),
                pool: BufferPool::new(POOL_BYTES),
            }),
            pack_reads: pack_reads.max(1),
            files: Vec::new(),
            refs: 0,
        }
    }

    /// Adds a file (created empty by the restore, still open) and its blobs to the batch.
    pub fn add(&mut self, file: Arc<File>, blobs: Vec<Placed>) {
        self.refs += blobs.len();
        self.files.push((file, blobs));
    }

    /// Files in the batch.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Blob references in the batch.
    pub fn refs(&self) -> usize {
        self.refs
    }

    /// Writes the batch and empties it. Returns, per file in the order added, the bytes
    /// written or the first reason one of its blobs could not be.
    pub async fn flush(&mut self) -> Vec<Result<u64, String>> {
        let files = std::mem::take(&mut self.files);
        self.refs = 0;
        let mut outcome: Vec<Result<u64, String>> = vec![Ok(0); files.len()];
        if files.is_empty() {
            return outcome;
        }
        let ranges = plan(&files);
        let dests: Arc<Vec<Arc<File>>> = Arc::new(files.into_iter().map(|(f, _)| f).collect());

        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<TargetResult>>();
        let shared = self.shared.clone();
        let pack_reads = self.pack_reads;
        let reading = async move {
            futures::stream::iter(ranges)
                .for_each_concurrent(pack_reads, |range| {
                    read_range(shared.clone(), dests.clone(), range, tx.clone())
                })
                .await;
            // The blob tasks still running hold the other senders.
            drop(tx);
        };
        let collecting = async {
            while let Some(results) = rx.recv().await {
                for (file, result) in results {
                    match (&mut outcome[file], result) {
                        (Ok(total), Ok(n)) => *total += n,
                        (slot @ Ok(_), Err(e)) => *slot = Err(e),
                        (Err(_), _) => {}
                    }
                }
            }
        };
        tokio::join!(reading, collecting);
        outcome
    }
}

/// Lists the batch's blobs by pack (each blob once, packs in the order the files first need
/// them) and cuts each pack's blobs into ranges.
fn plan<F>(files: &[(F, Vec<Placed>)]) -> Vec<Range> {
    let mut packs: Vec<(Id, Vec<Need>)> = Vec::new();
    let mut pack_slot: HashMap<Id, usize> = HashMap::new();
    let mut blob_slot: HashMap<Id, (usize, usize)> = HashMap::new();
    for (file, (_, blobs)) in files.iter().enumerate() {
        for b in blobs {
            if let Some(&(p, n)) = blob_slot.get(&b.id) {
                packs[p].1[n].targets.push((file, b.offset));
                continue;
            }
            let p = *pack_slot.entry(b.loc.pack).or_insert_with(|| {
                packs.push((b.loc.pack, Vec::new()));
                packs.len() - 1
            });
            let needs = &mut packs[p].1;
            blob_slot.insert(b.id, (p, needs.len()));
            needs.push(Need {
                id: b.id,
                loc: b.loc,
                targets: vec![(file, b.offset)],
            });
        }
    }
    let mut ranges = Vec::new();
    for (pack, mut needs) in packs {
        needs.sort_by_key(|n| n.loc.offset);
        let mut current: Option<Range> = None;
        for need in needs {
            let (start, end) = (
                u64::from(need.loc.offset),
                u64::from(need.loc.offset) + u64::from(need.loc.length),
            );
            match &mut current {
                // Blobs never overlap in a sound pack; if the index says otherwise, a new
                // range keeps every read going forward.
                Some(r) if start >= r.end && start - r.end <= MAX_GAP => {
                    r.end = end;
                    r.needs.push(need);
                }
                _ => {
                    ranges.extend(current.take());
                    current = Some(Range {
                        pack,
                        start,
                        end,
                        needs: vec![need],
                    });
                }
            }
        }
        ranges.extend(current);
    }
    ranges
}

/// Streams one range, handing each needed blob to a task of its own. When the read fails,
/// every blob not yet received fails with it.
async fn read_range(
    shared: Arc<Shared>,
    dests: Arc<Vec<Arc<File>>>,
    range: Range,
    tx: mpsc::UnboundedSender<Vec<TargetResult>>,
) {
    let fail_rest = |needs: &mut dyn Iterator<Item = Need>, message: String| {
        let results: Vec<TargetResult> = needs
            .flat_map(|n| n.targets)
            .map(|(file, _)| (file, Err(message.clone())))
            .collect();
        // The receiver only goes away once every sender has.
        let _ = tx.send(results);
    };
    let mut needs = range.needs.into_iter();
    let mut reader = match shared
        .repo
        .backend()
        .read_range_stream(
            FileType::Pack,
            &range.pack,
            range.start,
            range.end - range.start,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return fail_rest(&mut needs, format!("cannot read file content: {e}")),
    };
    let mut pos = range.start;
    while let Some(need) = needs.next() {
        match receive(&shared, &mut reader, &mut pos, &need).await {
            Ok((share, buf)) => {
                let (shared, dests, tx) = (shared.clone(), dests.clone(), tx.clone());
                tokio::spawn(async move {
                    let results = open_and_write(&shared, &dests, &need, buf);
                    drop(share);
                    let _ = tx.send(results);
                });
            }
            Err(message) => {
                return fail_rest(&mut std::iter::once(need).chain(needs), message);
            }
        }
    }
}

/// Receives the next needed blob of a range into a pooled buffer, holding its bytes'
/// share of the budget.
async fn receive(
    shared: &Shared,
    reader: &mut RangeReader,
    pos: &mut u64,
    need: &Need,
) -> Result<(Share, Vec<u8>), String> {
    let offset = u64::from(need.loc.offset);
    let length = need.loc.length as usize;
    let held = length as u64 + need.loc.uncompressed_length.map_or(0, u64::from);
    let share = shared
        .budget
        .take(held)
        .await
        .map_err(|e| format!("cannot read file content: {e}"))?;
    let mut buf = shared.pool.take(length);
    let read = async {
        reader.skip(offset - *pos).await?;
        reader.read_into(length, &mut buf).await
    };
    read.await
        .map_err(|e| format!("cannot read file content: {e}"))?;
    *pos = offset + length as u64;
    Ok((share, buf))
}

/// Opens a received blob and writes it wherever it goes; gives its buffers back.
fn open_and_write(
    shared: &Shared,
    dests: &[Arc<File>],
    need: &Need,
    mut buf: Vec<u8>,
) -> Vec<TargetResult> {
    let mut scratch = match need.loc.uncompressed_length {
        Some(n) => shared.pool.take(n as usize),
        None => Vec::new(),
    };
    let results = match shared
        .repo
        .open_blob_into(&need.id, &need.loc, &mut buf, &mut scratch)
    {
        Ok(plain) => need
            .targets
            .iter()
            .map(|&(file, offset)| {
                let written = snapback_repo::local_write::write_all_at(&dests[file], plain, offset)
                    .map(|()| plain.len() as u64)
                    .map_err(|e| format!("cannot write: {e}"));
                (file, written)
            })
            .collect(),
        Err(e) => {
            let message = format!("cannot read file content: {e}");
            need.targets
                .iter()
                .map(|&(file, _)| (file, Err(message.clone())))
                .collect()
        }
    };
    shared.pool.give_back(buf);
    shared.pool.give_back(scratch);
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn placed(pack: u8, offset: u32, length: u32, id: u8, at: u64) -> Placed {
        Placed {
            id: Id::hash(&[id]),
            loc: BlobLocation {
                pack: Id::hash(&[pack, 0xff]),
                ty: snapback_repo::BlobType::Data,
                offset,
                length,
                uncompressed_length: None,
            },
            offset: at,
        }
    }

    #[test]
    fn the_plan_reads_each_blob_once_and_each_pack_in_few_ranges() {
        let mib = 1u32 << 20;
        let files = vec![
            (
                PathBuf::from("a"),
                vec![
                    placed(1, 0, mib, 1, 0),
                    placed(2, 0, 100, 2, 1 << 20),
                    // Pack 1 again, after a gap small enough to read through.
                    placed(1, 2 * mib, mib, 3, (1 << 20) + 100),
                ],
            ),
            (
                PathBuf::from("b"),
                vec![
                    // The same blob as a's first: read once, written twice.
                    placed(1, 0, mib, 1, 0),
                    // Far behind the others in pack 1: a range of its own.
                    placed(1, 10 * mib, 50, 4, 1 << 20),
                ],
            ),
        ];
        let ranges = plan(&files);
        let pack1 = Id::hash(&[1, 0xff]);
        let summary: Vec<(bool, u64, u64, usize)> = ranges
            .iter()
            .map(|r| (r.pack == pack1, r.start, r.end, r.needs.len()))
            .collect();
        let m = u64::from(mib);
        assert_eq!(
            summary,
            vec![
                (true, 0, 3 * m, 2),
                (true, 10 * m, 10 * m + 50, 1),
                (false, 0, 100, 1),
            ]
        );
        assert_eq!(ranges[0].needs[0].targets, vec![(0, 0), (1, 0)]);
        assert_eq!(ranges[0].needs[1].targets, vec![(0, (1 << 20) + 100)]);
    }
}
