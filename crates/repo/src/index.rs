//! The in-memory blob index: where every blob of the repository is stored.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};

use crate::backend::FileType;
use crate::file::{IndexBlob, IndexFile, IndexPack};
use crate::pack::{BlobType, PackedBlob};
use crate::repository::Repository;
use crate::{Id, Result};

/// Where one blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Pack file id.
    pub pack: Id,
    /// Data or tree.
    pub ty: BlobType,
    /// Offset in the pack.
    pub offset: u32,
    /// Encrypted length.
    pub length: u32,
    /// Plaintext length when compressed.
    pub uncompressed_length: Option<u32>,
}

impl BlobLocation {
    /// Plaintext length (the encrypted length minus IV and MAC when not compressed).
    pub fn plain_length(&self) -> u64 {
        match self.uncompressed_length {
            Some(u) => u64::from(u),
            None => u64::from(self.length).saturating_sub(crate::crypto::OVERHEAD as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    pack: u32,
    ty: BlobType,
    offset: u32,
    length: u32,
    uncompressed_length: Option<u32>,
}

/// All blobs of the repository (as far as its index files tell) plus packs added in this run.
#[derive(Debug, Default)]
pub struct BlobIndex {
    packs: Vec<Id>,
    blobs: HashMap<Id, Entry>,
}

impl BlobIndex {
    /// Loads every index file of `repo` (concurrently).
    pub async fn load(repo: &Repository) -> Result<Self> {
        let files = repo.backend().list(FileType::Index).await?;
        let mut index = BlobIndex::default();
        let mut loads = futures::stream::iter(files)
            .map(|f| async move { repo.load_json::<IndexFile>(FileType::Index, &f.id).await })
            .buffer_unordered(8);
        while let Some(file) = loads.try_next().await? {
            for pack in file.packs {
                index.add_index_pack(&pack);
            }
        }
        Ok(index)
    }

    fn add_index_pack(&mut self, pack: &IndexPack) {
        let p = self.pack_slot(pack.id);
        for b in &pack.blobs {
            self.blobs.entry(b.id).or_insert(Entry {
                pack: p,
                ty: b.ty,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            });
        }
    }

    fn pack_slot(&mut self, id: Id) -> u32 {
        self.packs.push(id);
        (self.packs.len() - 1) as u32
    }

    /// Records the blobs of a pack uploaded in this run.
    pub fn add_pack(&mut self, pack: Id, blobs: &[PackedBlob]) {
        let p = self.pack_slot(pack);
        for b in blobs {
            self.blobs.entry(b.id).or_insert(Entry {
                pack: p,
                ty: b.ty,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            });
        }
    }

    /// Where blob `id` is stored.
    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.blobs.get(id).map(|e| BlobLocation {
            pack: self.packs[e.pack as usize],
            ty: e.ty,
            offset: e.offset,
            length: e.length,
            uncompressed_length: e.uncompressed_length,
        })
    }

    /// Whether blob `id` is stored.
    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// No blobs.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Every blob id of type `ty`.
    pub fn ids(&self, ty: BlobType) -> impl Iterator<Item = Id> + '_ {
        self.blobs
            .iter()
            .filter(move |(_, e)| e.ty == ty)
            .map(|(id, _)| *id)
    }
}

/// Index entries for packs written in this run, flushed to `index/` files as they grow.
#[derive(Debug, Default)]
pub struct IndexWriter {
    pending: IndexFile,
    blobs: usize,
}

impl IndexWriter {
    /// restic starts a new index file at about this many blobs.
    pub const FLUSH_BLOBS: usize = 50_000;

    /// Adds a finished, uploaded pack.
    pub fn add(&mut self, pack: Id, blobs: &[PackedBlob]) {
        self.blobs += blobs.len();
        self.pending.packs.push(IndexPack {
            id: pack,
            blobs: blobs
                .iter()
                .map(|b| IndexBlob {
                    id: b.id,
                    ty: b.ty,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                })
                .collect(),
        });
    }

    /// Whether an index file is due.
    pub fn is_full(&self) -> bool {
        self.blobs >= Self::FLUSH_BLOBS
    }

    /// Packs waiting to be written into an index file.
    pub fn pending_packs(&self) -> usize {
        self.pending.packs.len()
    }

    /// Writes the pending entries as one index file (nothing when empty).
    pub async fn flush(&mut self, repo: &Repository) -> Result<Option<Id>> {
        if self.pending.packs.is_empty() {
            return Ok(None);
        }
        let file = std::mem::take(&mut self.pending);
        self.blobs = 0;
        repo.save_json(FileType::Index, &file).await.map(Some)
    }
}
