//! Every index file as loaded, with the packs and blobs they describe. Unlike
//! [`snapback_repo::BlobIndex`] it keeps which file lists which pack, every pack's full blob
//! list and the duplicates, which check reports and prune resolves.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use futures::StreamExt;
use snapback_repo::file::{IndexBlob, IndexFile};
use snapback_repo::{BlobLocation, FileType, Id, Repository};

/// A pack as the index describes it.
#[derive(Debug, Clone)]
pub struct IndexedPack {
    /// The first index file listing it.
    pub index: Id,
    /// Its blobs, as that file lists them.
    pub blobs: Vec<IndexBlob>,
}

impl IndexedPack {
    /// The pack file size these entries imply: blobs, encrypted header, header length.
    pub fn expected_size(&self) -> u64 {
        let data: u64 = self.blobs.iter().map(|b| u64::from(b.length)).sum();
        let header: u64 = self
            .blobs
            .iter()
            .map(|b| {
                if b.uncompressed_length.is_some() {
                    41
                } else {
                    37
                }
            })
            .sum();
        data + header + snapback_repo::crypto::OVERHEAD as u64 + 4
    }
}

/// Something wrong or odd in the index files.
#[derive(Debug, Clone)]
pub enum IndexProblem {
    /// An index file cannot be read, authenticated or parsed.
    Unreadable {
        /// The index file.
        index: Id,
        /// Why.
        message: String,
    },
    /// Two index files list the same pack with the same blobs (harmless; restic: a hint).
    DuplicatePack {
        /// The pack.
        pack: Id,
        /// The index files listing it.
        indexes: Vec<Id>,
    },
    /// Two index files list the same pack with different blobs.
    InconsistentPack {
        /// The pack.
        pack: Id,
        /// The first and the disagreeing index file.
        indexes: [Id; 2],
    },
}

/// All index files of a repository.
#[derive(Debug, Default)]
pub struct IndexSet {
    /// Every index file that was listed (readable or not).
    pub files: Vec<Id>,
    /// Packs by id.
    pub packs: HashMap<Id, IndexedPack>,
    /// Blob locations; for a blob stored more than once, the first one seen.
    pub blobs: HashMap<Id, BlobLocation>,
    /// Blobs stored more than once.
    pub duplicate_blobs: usize,
    /// What is wrong with the files.
    pub problems: Vec<IndexProblem>,
}

impl IndexSet {
    /// Loads every index file (a few at a time). Unreadable files are recorded, not fatal.
    pub async fn load(repo: &Repository) -> crate::Result<Self> {
        let listed = repo.backend().list(FileType::Index).await?;
        let mut set = IndexSet {
            files: listed.iter().map(|l| l.id).collect(),
            ..Default::default()
        };
        set.files.sort();
        let mut loads = futures::stream::iter(set.files.clone())
            .map(|id| async move { (id, repo.load_json::<IndexFile>(FileType::Index, &id).await) })
            .buffered(4);
        let mut duplicates: HashMap<Id, Vec<Id>> = HashMap::new();
        while let Some((index, loaded)) = loads.next().await {
            match loaded {
                Ok(file) => set.add_file(index, file, &mut duplicates),
                Err(e) => set.problems.push(IndexProblem::Unreadable {
                    index,
                    message: e.to_string(),
                }),
            }
        }
        let mut dups: Vec<_> = duplicates.into_iter().collect();
        dups.sort();
        for (pack, indexes) in dups {
            set.problems
                .push(IndexProblem::DuplicatePack { pack, indexes });
        }
        Ok(set)
    }

    fn add_file(&mut self, index: Id, file: IndexFile, duplicates: &mut HashMap<Id, Vec<Id>>) {
        for pack in file.packs {
            if let Some(existing) = self.packs.get(&pack.id) {
                if existing.blobs != pack.blobs {
                    self.problems.push(IndexProblem::InconsistentPack {
                        pack: pack.id,
                        indexes: [existing.index, index],
                    });
                } else {
                    duplicates
                        .entry(pack.id)
                        .or_insert_with(|| vec![existing.index])
                        .push(index);
                }
                continue;
            }
            for b in &pack.blobs {
                let loc = BlobLocation {
                    pack: pack.id,
                    ty: b.ty,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                };
                match self.blobs.entry(b.id) {
                    Entry::Occupied(_) => self.duplicate_blobs += 1,
                    Entry::Vacant(v) => {
                        v.insert(loc);
                    }
                }
            }
            self.packs.insert(
                pack.id,
                IndexedPack {
                    index,
                    blobs: pack.blobs,
                },
            );
        }
    }
}
