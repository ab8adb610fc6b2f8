//! Tree blobs read ahead of a depth-first walk.
//!
//! A walk of a snapshot (a restore, `ls`, `dump`, or a backup comparing with its parent) needs
//! one tree per directory. Read one at a time, when the walk gets there, each costs a storage
//! round trip: on S3 that is most of the time of a walk over thousands of directories. So a
//! walker that enters a directory asks for its subdirectories' trees at once, and they are read
//! concurrently in the background while the walk goes on.
//!
//! The walk is depth first, so the trees asked for last are needed soonest: they go to the
//! front of the queue. A bounded number of reads is under way, and a bounded number of trees
//! and bytes is read and waiting to be taken; a tree larger than that bound, or one whose read
//! had not started, is read when it is taken. Reads a walker will not take (a directory it
//! skipped, or one that is done) are dropped when it says so. Only the encrypted blob is read
//! in the background: it is opened (authenticated, decompressed, hash-checked) when taken.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::file::tree::{NodeType, Tree};
use crate::file::tree_nodes::StoredTree;
use crate::pack::BlobLocation;
use crate::{BlobIndex, FileType, Id, Repository, Result};

/// Tree reads under way at once, at most.
pub const MAX_IN_FLIGHT: usize = 16;
/// Tree reads under way or done and not yet taken, at most.
const MAX_HELD: usize = 128;
/// Encrypted bytes of those reads, at most (a tree bigger than this is read when taken).
const MAX_BYTES: u64 = 4 << 20;
/// Trees asked for and not yet started, at most (the ones needed last are dropped first).
pub const MAX_WANTED: usize = 16_384;

/// A tree read started ahead of time.
struct Reading {
    task: JoinHandle<Result<Bytes>>,
    loc: BlobLocation,
}

/// Reads tree blobs ahead of a walk; see the module docs.
pub struct TreeReadAhead {
    repo: Repository,
    index: Arc<BlobIndex>,
    handle: Handle,
    reading: HashMap<Id, Reading>,
    /// Encrypted bytes of `reading`.
    bytes: u64,
    /// Trees to read next, soonest needed first; an id no longer in `wanted_ids` was taken or
    /// dropped meanwhile and is skipped.
    wanted: VecDeque<Id>,
    wanted_ids: HashSet<Id>,
    /// Trees taken that had been read ahead.
    hits: u64,
}

impl TreeReadAhead {
    /// Reads trees from `repo`, finding them through `index`, on `handle`'s runtime (so a
    /// walker on a blocking thread can use it too).
    pub fn new(repo: Repository, index: Arc<BlobIndex>, handle: Handle) -> Self {
        TreeReadAhead {
            repo,
            index,
            handle,
            reading: HashMap::new(),
            bytes: 0,
            wanted: VecDeque::new(),
            wanted_ids: HashSet::new(),
            hits: 0,
        }
    }

    /// Trees taken that had been read ahead.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Reads started and not yet taken, and trees asked for and not yet started.
    pub fn queued(&self) -> (usize, usize) {
        (self.reading.len(), self.wanted_ids.len())
    }

    /// Asks for the trees `ids`, in their order, ahead of the ones asked for before (a
    /// depth-first walk needs them first).
    pub fn want(&mut self, ids: impl IntoIterator<Item = Id>) {
        // More than the queue holds: only the first ones.
        let ids: Vec<Id> = ids.into_iter().take(MAX_WANTED).collect();
        for id in ids.into_iter().rev() {
            if self.reading.contains_key(&id) || !self.wanted_ids.insert(id) {
                continue;
            }
            self.wanted.push_front(id);
        }
        while self.wanted.len() > MAX_WANTED {
            if let Some(id) = self.wanted.pop_back() {
                self.wanted_ids.remove(&id);
            }
        }
        self.start_reads();
    }

    /// Drops what was asked for `ids` and not taken: the walk will not need them.
    pub fn forget(&mut self, ids: impl IntoIterator<Item = Id>) {
        for id in ids {
            self.wanted_ids.remove(&id);
            if let Some(r) = self.reading.remove(&id) {
                r.task.abort();
                self.bytes -= u64::from(r.loc.length);
            }
        }
        self.start_reads();
    }

    /// The plaintext of tree blob `id`: read ahead if it was, else read now.
    pub async fn take(&mut self, id: &Id) -> Result<Bytes> {
        match self.take_read(id).await? {
            (loc, Some(raw)) => self.repo.open_blob_owned(id, &loc, raw),
            (loc, None) => self.repo.load_blob(id, &loc).await,
        }
    }

    /// Like [`TreeReadAhead::take`], leaving the tree as stored, to be read a node at a time
    /// (a wide directory: see [`StoredTree`]).
    pub async fn take_stored(&mut self, id: &Id) -> Result<StoredTree> {
        match self.take_read(id).await? {
            (loc, Some(raw)) => self.repo.open_tree_stored(id, &loc, raw),
            (loc, None) => self.repo.load_tree_stored(id, &loc).await,
        }
    }

    /// Where tree `id` is, and its encrypted bytes if they were read ahead.
    async fn take_read(&mut self, id: &Id) -> Result<(BlobLocation, Option<Bytes>)> {
        self.wanted_ids.remove(id);
        if let Some(r) = self.reading.remove(id) {
            self.bytes -= u64::from(r.loc.length);
            self.start_reads();
            match r.task.await {
                Ok(raw) => {
                    self.hits += 1;
                    return Ok((r.loc, Some(raw?)));
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled with its runtime: read it here, as if it had not been started.
                Err(_) => {}
            }
        }
        let loc = self.index.get(id).ok_or(crate::Error::BlobNotFound(*id))?;
        Ok((loc, None))
    }

    /// Starts reads from the front of the queue while the bounds allow.
    fn start_reads(&mut self) {
        let mut in_flight = self
            .reading
            .values()
            .filter(|r| !r.task.is_finished())
            .count();
        while in_flight < MAX_IN_FLIGHT && self.reading.len() < MAX_HELD {
            let Some(id) = self.wanted.pop_front() else {
                return;
            };
            if !self.wanted_ids.remove(&id) || self.reading.contains_key(&id) {
                continue;
            }
            // Not in the index: `take` reports it, when and if the tree is needed.
            let Some(loc) = self.index.get(&id) else {
                continue;
            };
            let len = u64::from(loc.length);
            if len > MAX_BYTES {
                continue;
            }
            if self.bytes + len > MAX_BYTES {
                // Room comes back as reads are taken; this one is still the next.
                self.wanted.push_front(id);
                self.wanted_ids.insert(id);
                return;
            }
            let repo = self.repo.clone();
            let task = self.handle.spawn(async move {
                let range = (u64::from(loc.offset), u64::from(loc.length));
                Ok(repo
                    .backend()
                    .read_range(FileType::Pack, &loc.pack, range.0, range.1)
                    .await?)
            });
            self.bytes += len;
            self.reading.insert(id, Reading { task, loc });
            in_flight += 1;
        }
    }
}

impl Drop for TreeReadAhead {
    fn drop(&mut self) {
        for r in self.reading.values() {
            r.task.abort();
        }
    }
}

/// The subtree ids of `tree`'s directories, in order: what a walk entering it asks for.
pub fn subtree_ids(tree: &Tree) -> impl Iterator<Item = Id> + '_ {
    tree.nodes
        .iter()
        .filter(|n| n.node_type == NodeType::Dir)
        .filter_map(|n| n.subtree)
}
