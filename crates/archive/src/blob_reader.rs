//! Reads blobs for a restore. On S3 every read is a request, and a restore of many small files
//! is bound by requests, not bytes; so a small blob is read together with what follows it in its
//! pack (one ranged read of up to [`SPAN`] bytes), and the next small blobs, written next to it
//! by the same backup, come from that span. Large blobs are read on their own.
//!
//! Memory: at most [`SPANS`] spans are kept (the oldest is dropped first).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use snapback_repo::{BlobIndex, FileType, Id, Repository};
use tokio::sync::OnceCell;

use crate::Result;

/// Blobs shorter than this (stored length) are read as part of a span.
const SMALL: u32 = 512 * 1024;
/// Bytes read for a span: the small blob asked for and what follows it in the pack.
const SPAN: u64 = 2 * 1024 * 1024;
/// Spans kept.
const SPANS: usize = 8;

/// A pack range, read once by whoever needs it first.
struct Span {
    pack: Id,
    start: u64,
    end: u64,
    data: Arc<OnceCell<Bytes>>,
}

/// Reads, authenticates and hash-checks blobs; see the module docs.
pub struct BlobReader {
    repo: Repository,
    index: Arc<BlobIndex>,
    /// Size of every pack (spans end at the pack's end).
    pack_sizes: HashMap<Id, u64>,
    spans: Mutex<VecDeque<Span>>,
}

impl BlobReader {
    /// A reader of the blobs in `index`; lists the packs once for their sizes.
    pub async fn new(repo: Repository, index: Arc<BlobIndex>) -> Result<Self> {
        let packs = repo
            .backend()
            .list(FileType::Pack)
            .await
            .map_err(snapback_repo::Error::from)?;
        Ok(BlobReader {
            pack_sizes: packs.into_iter().map(|p| (p.id, p.size)).collect(),
            repo,
            index,
            spans: Mutex::new(VecDeque::new()),
        })
    }

    /// The plaintext of blob `id`.
    pub async fn load(&self, id: &Id) -> Result<Bytes> {
        let loc = self
            .index
            .get(id)
            .ok_or(snapback_repo::Error::BlobNotFound(*id))?;
        let (offset, length) = (u64::from(loc.offset), u64::from(loc.length));
        let pack_size = self.pack_sizes.get(&loc.pack).copied().unwrap_or(0);
        if loc.length >= SMALL || pack_size < offset + length {
            // Large, or a pack the listing did not show: read exactly what the index says.
            return Ok(self.repo.load_blob(id, &loc).await?);
        }
        let (start, end, cell) = self.span_for(loc.pack, offset, length, pack_size);
        let data = cell
            .get_or_try_init(|| async {
                self.repo
                    .backend()
                    .read_range(FileType::Pack, &loc.pack, start, end - start)
                    .await
                    .map_err(snapback_repo::Error::from)
            })
            .await?;
        let at = usize::try_from(offset - start).unwrap_or(usize::MAX);
        let range = at..at.saturating_add(loc.length as usize);
        match data.get(range.clone()) {
            Some(_) => Ok(self.repo.open_blob_owned(id, &loc, data.slice(range))?),
            // A short read (the pack changed under us): let the exact read report it.
            None => Ok(self.repo.load_blob(id, &loc).await?),
        }
    }

    /// Bytes that loading blob `id` holds in memory until its plaintext is written: the
    /// encrypted blob, plus the plaintext when it is compressed (else it is decrypted in
    /// place). 0 for a blob the index does not know (its load fails at once).
    pub fn held_bytes(&self, id: &Id) -> u64 {
        self.index.get(id).map_or(0, |loc| {
            u64::from(loc.length) + loc.uncompressed_length.map_or(0, u64::from)
        })
    }

    /// The span holding `offset..offset + length` of `pack`, a new one if none does.
    fn span_for(
        &self,
        pack: Id,
        offset: u64,
        length: u64,
        pack_size: u64,
    ) -> (u64, u64, Arc<OnceCell<Bytes>>) {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = spans
            .iter()
            .find(|s| s.pack == pack && s.start <= offset && offset + length <= s.end)
        {
            return (s.start, s.end, s.data.clone());
        }
        let data = Arc::new(OnceCell::new());
        let end = (offset + SPAN).min(pack_size);
        spans.push_back(Span {
            pack,
            start: offset,
            end,
            data: data.clone(),
        });
        if spans.len() > SPANS {
            spans.pop_front();
        }
        (offset, end, data)
    }
}
