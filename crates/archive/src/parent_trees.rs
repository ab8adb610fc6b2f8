//! The parent snapshot's trees, read ahead of the walk.
//!
//! An incremental backup compares every directory with its tree in the parent snapshot. Read
//! one at a time, when the walk enters each directory, they cost a storage round trip each:
//! on S3 that is the whole time of a backup of an unchanged tree with thousands of
//! directories. So when a directory is opened, the trees of its subdirectories are asked for
//! at once, and read concurrently in the background while the walk goes on.
//!
//! The walk is depth first, so the children of the directory opened last are needed soonest:
//! they go to the front of the queue. A bounded number of reads is under way, and a bounded
//! number of trees and bytes is read and waiting to be taken; a tree larger than that bound, or
//! one whose read had not started, is read when it is needed, as before (the snapshot's root is
//! read that way too). Reads a finished directory did not use (a subdirectory deleted since
//! the parent, or excluded) are dropped when it closes.
//! Only the raw blob crosses threads: it is opened (authenticated, decompressed) and parsed
//! on the archiver's thread when taken, like a tree read on demand.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use snapback_repo::file::tree::{NodeType, Tree};
use snapback_repo::pack::BlobLocation;
use snapback_repo::{BlobIndex, FileType, Id, Repository};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// Tree reads under way at once, at most.
const MAX_IN_FLIGHT: usize = 16;
/// Tree reads under way or done and not yet taken, at most.
const MAX_HELD: usize = 128;
/// Encrypted bytes of those reads, at most (a tree bigger than this is read when needed).
const MAX_BYTES: u64 = 4 << 20;
/// Trees asked for and not yet started, at most (the ones needed last are dropped first).
const MAX_WANTED: usize = 16_384;

/// A tree read started ahead of time.
struct Reading {
    task: JoinHandle<Result<Bytes>>,
    loc: BlobLocation,
}

/// Reads the parent snapshot's trees ahead of the walk; see the module docs.
pub struct ParentTrees {
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
    /// Trees taken that had been read ahead (for tests and figures).
    hits: u64,
}

impl ParentTrees {
    /// Reads trees from `repo`, finding them through `index`, on `handle`'s runtime.
    pub fn new(repo: Repository, index: Arc<BlobIndex>, handle: Handle) -> Self {
        ParentTrees {
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

    /// Asks for the trees of `tree`'s subdirectories, in their order, ahead of the ones asked
    /// for before (a depth-first walk needs them first).
    pub fn want_children(&mut self, tree: &Tree) {
        // A directory with more subdirectories than the queue holds: only its first ones.
        let children: Vec<Id> = subtrees(tree).take(MAX_WANTED).collect();
        for id in children.into_iter().rev() {
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

    /// Drops what was asked for `tree`'s subdirectories and not taken: the directory is done.
    pub fn forget_children(&mut self, tree: &Tree) {
        for id in subtrees(tree) {
            self.wanted_ids.remove(&id);
            if let Some(r) = self.reading.remove(&id) {
                r.task.abort();
                self.bytes -= u64::from(r.loc.length);
            }
        }
        self.start_reads();
    }

    /// The tree `id`: read ahead if it was, else read now.
    pub fn take(&mut self, id: &Id) -> Result<Tree> {
        self.wanted_ids.remove(id);
        let data = match self.reading.remove(id) {
            Some(r) => {
                self.bytes -= u64::from(r.loc.length);
                self.start_reads();
                let raw = self
                    .handle
                    .block_on(r.task)
                    .map_err(|e| Error::Pipeline(format!("reading a parent tree: {e}")))??;
                self.hits += 1;
                self.repo.open_blob_owned(id, &r.loc, raw)?
            }
            None => {
                let loc = self
                    .index
                    .get(id)
                    .ok_or(snapback_repo::Error::BlobNotFound(*id))?;
                self.handle.block_on(self.repo.load_blob(id, &loc))?
            }
        };
        serde_json::from_slice(&data)
            .map_err(|e| Error::Stream(format!("parent tree {}: {e}", id.short())))
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
                let data = repo
                    .backend()
                    .read_range(
                        FileType::Pack,
                        &loc.pack,
                        u64::from(loc.offset),
                        u64::from(loc.length),
                    )
                    .await
                    .map_err(snapback_repo::Error::from)?;
                Ok(data)
            });
            self.bytes += len;
            self.reading.insert(id, Reading { task, loc });
            in_flight += 1;
        }
    }
}

impl Drop for ParentTrees {
    fn drop(&mut self) {
        for r in self.reading.values() {
            r.task.abort();
        }
    }
}

/// The subtree ids of `tree`'s directories, in order.
fn subtrees(tree: &Tree) -> impl Iterator<Item = Id> + '_ {
    tree.nodes
        .iter()
        .filter(|n| n.node_type == NodeType::Dir)
        .filter_map(|n| n.subtree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_repo::local_repo;
    use crate::{backup, BackupOptions};
    use snapback_repo::file::SnapshotFile;
    use snapback_stream::walk::{WalkOptions, Walker};

    /// `root/dNN/eNN/file`: 40 directories under the root, 3 under each of those.
    fn make_tree(root: &std::path::Path) -> usize {
        let mut files = 0;
        for d in 0..40 {
            for e in 0..3 {
                let dir = root.join(format!("d{d:02}")).join(format!("e{e}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("file"), format!("{d} {e}")).unwrap();
                files += 1;
            }
        }
        files
    }

    async fn back_up(repo: &Repository, root: &std::path::Path) -> crate::BackupSummary {
        let walker = Walker::new([root], WalkOptions::default()).unwrap();
        let paths = vec![root.to_string_lossy().into_owned()];
        backup(repo, Box::new(walker), BackupOptions::new("test", paths))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_incremental_backup_reads_the_parent_trees_ahead_and_builds_the_same_tree() {
        let repo_dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let files = make_tree(data.path());
        let repo = local_repo(repo_dir.path()).await;
        let first = back_up(&repo, data.path()).await;
        // The first backup's reads moved the files' access times (relatime), which are in
        // their nodes: from the second backup on, nothing changes.
        let second = back_up(&repo, data.path()).await;
        let third = back_up(&repo, data.path()).await;
        assert_eq!(second.parent, Some(first.snapshot_id));
        assert_eq!(third.parent, Some(second.snapshot_id));
        for run in [&second, &third] {
            assert_eq!(run.archive.files_unchanged, files as u64);
            assert_eq!(run.archive.files_new + run.archive.files_changed, 0);
            // Every directory below the backed-up one was read ahead: its 40 and their 120
            // (and the directories on the way down to it from the snapshot's root, mostly).
            let depth = data.path().components().count() as u64;
            let read_ahead = run.archive.parent_trees_read_ahead;
            assert!((160..160 + depth).contains(&read_ahead), "{read_ahead}");
        }
        // The directories above the backed-up one are described with each snapshot's time:
        // compare the backed-up directory's own tree.
        let index = BlobIndex::load(&repo).await.unwrap();
        let mut ids = Vec::new();
        for run in [&second, &third] {
            let snapshot: SnapshotFile = repo
                .load_json(FileType::Snapshot, &run.snapshot_id)
                .await
                .unwrap();
            let mut id = snapshot.tree;
            for name in data.path().iter().skip(1) {
                let blob = repo.load_blob(&id, &index.get(&id).unwrap()).await.unwrap();
                let tree: Tree = serde_json::from_slice(&blob).unwrap();
                let node = tree
                    .nodes
                    .iter()
                    .find(|n| n.name == name.as_encoded_bytes());
                id = node.unwrap().subtree.unwrap();
            }
            ids.push(id);
        }
        assert_eq!(ids[0], ids[1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_ahead_are_bounded_and_dropped_with_their_directory() {
        let repo_dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        make_tree(data.path());
        let repo = local_repo(repo_dir.path()).await;
        let first = back_up(&repo, data.path()).await;
        let index = Arc::new(BlobIndex::load(&repo).await.unwrap());
        let root = repo
            .load_json::<SnapshotFile>(FileType::Snapshot, &first.snapshot_id)
            .await
            .unwrap()
            .tree;
        tokio::task::spawn_blocking(move || {
            let mut trees = ParentTrees::new(repo, index, Handle::current());
            // Down to the backed-up directory, whose 40 subdirectories are more than the
            // reads allowed under way at once.
            let mut dir = trees.take(&root).unwrap();
            while dir.nodes.len() == 1 {
                let id = dir.nodes[0].subtree.unwrap();
                dir = trees.take(&id).unwrap();
            }
            assert_eq!(dir.nodes.len(), 40);
            trees.want_children(&dir);
            assert_eq!(trees.reading.len(), MAX_IN_FLIGHT);
            assert_eq!(trees.wanted_ids.len(), 40 - MAX_IN_FLIGHT);
            // Taking the first one starts the next ones, as far as reads have finished; none
            // is lost on the way.
            let first_child = dir.nodes[0].subtree.unwrap();
            let child = trees.take(&first_child).unwrap();
            assert_eq!(child.nodes.len(), 3);
            assert_eq!(trees.hits(), 1);
            assert!(trees.reading.len() >= MAX_IN_FLIGHT - 1);
            assert_eq!(trees.reading.len() + trees.wanted_ids.len(), 39);
            // The directory is done: what it did not take is dropped, and can still be read
            // on demand.
            trees.forget_children(&dir);
            assert!(trees.reading.is_empty() && trees.wanted_ids.is_empty());
            assert_eq!(trees.bytes, 0);
            let last = dir.nodes[39].subtree.unwrap();
            assert_eq!(trees.take(&last).unwrap().nodes.len(), 3);
            assert_eq!(trees.hits(), 1);
        })
        .await
        .unwrap();
    }
}
