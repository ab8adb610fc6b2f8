//! The parent snapshot's trees, read ahead of the walk.
//!
//! An incremental backup compares every directory with its tree in the parent snapshot. Read
//! one at a time, when the walk enters each directory, they cost a storage round trip each:
//! on S3 that is the whole time of a backup of an unchanged tree with thousands of
//! directories. So when a directory is opened, the trees of its subdirectories are asked for
//! at once ([`TreeReadAhead`], which bounds the reads and what they hold), and what a finished
//! directory did not use (a subdirectory deleted since the parent, or excluded) is dropped when
//! it closes. The snapshot's root is read on demand. A tree is opened and parsed on the
//! archiver's thread when taken, like a tree read on demand.

use std::sync::Arc;

use snapback_repo::file::tree::Tree;
use snapback_repo::tree_read_ahead::TreeReadAhead;
use snapback_repo::{BlobIndex, Id, Repository};
use tokio::runtime::Handle;

use snapback_repo::file::tree_nodes::STREAM_FROM;

use crate::parent_dir::ParentDir;
use crate::{Error, Result};

/// Reads the parent snapshot's trees ahead of the walk; see the module docs.
pub struct ParentTrees {
    ahead: TreeReadAhead,
    index: Arc<BlobIndex>,
    handle: Handle,
}

impl ParentTrees {
    /// Reads trees from `repo`, finding them through `index`, on `handle`'s runtime; the
    /// caller must be on a blocking thread ([`ParentTrees::take`] waits).
    pub fn new(repo: Repository, index: Arc<BlobIndex>, handle: Handle) -> Self {
        ParentTrees {
            ahead: TreeReadAhead::new(repo, index.clone(), handle.clone()),
            index,
            handle,
        }
    }

    /// Trees taken that had been read ahead.
    pub fn hits(&self) -> u64 {
        self.ahead.hits()
    }

    /// Asks for the trees of `dir`'s subdirectories: a directory was opened.
    pub fn want_children(&mut self, dir: &ParentDir) {
        self.ahead.want(dir.subtree_ids());
    }

    /// Drops what was asked for `dir`'s subdirectories and not taken: the directory is done.
    pub fn forget_children(&mut self, dir: &ParentDir) {
        self.ahead.forget(dir.subtree_ids());
    }

    /// The tree `id`: read ahead if it was, else read now; a wide one is kept as stored
    /// ([`ParentDir`]).
    pub fn take(&mut self, id: &Id) -> Result<ParentDir> {
        let wide = self
            .index
            .get(id)
            .is_some_and(|loc| loc.plain_length() > STREAM_FROM);
        if wide {
            let stored = self.handle.block_on(self.ahead.take_stored(id))?;
            return ParentDir::streamed(stored);
        }
        let data = self.handle.block_on(self.ahead.take(id))?;
        let tree: Tree = serde_json::from_slice(&data)
            .map_err(|e| Error::Stream(format!("parent tree {}: {e}", id.short())))?;
        Ok(ParentDir::new(tree))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backup, BackupOptions};
    use snapback_repo::file::SnapshotFile;
    use snapback_repo::test_util::{local_repo, write_dirs_of_dirs};
    use snapback_repo::tree_read_ahead::MAX_IN_FLIGHT;
    use snapback_repo::FileType;
    use snapback_stream::walk::{WalkOptions, Walker};

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
        let files = write_dirs_of_dirs(data.path()).unwrap();
        let repo = local_repo(repo_dir.path()).await.unwrap();
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
            // Directories below the backed-up one were read ahead: on an idle machine all of
            // its 40 and their 120. How many later reads start before the walk needs them
            // depends on how soon the earlier ones finish; the first 16 of the 40 start as the
            // backed-up directory opens, whatever the timing.
            let depth = data.path().components().count() as u64;
            let read_ahead = run.archive.parent_trees_read_ahead;
            let least = MAX_IN_FLIGHT as u64;
            assert!((least..160 + depth).contains(&read_ahead), "{read_ahead}");
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
        write_dirs_of_dirs(data.path()).unwrap();
        let repo = local_repo(repo_dir.path()).await.unwrap();
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
            while dir.subtree_ids().len() == 1 {
                let id = dir.subtree_ids()[0];
                dir = trees.take(&id).unwrap();
            }
            let subdirs = dir.subtree_ids();
            assert_eq!(subdirs.len(), 40);
            trees.want_children(&dir);
            assert_eq!(trees.ahead.queued(), (MAX_IN_FLIGHT, 40 - MAX_IN_FLIGHT));
            // Taking the first one starts the next ones, as far as reads have finished; none
            // is lost on the way.
            let child = trees.take(&subdirs[0]).unwrap();
            assert_eq!(child.subtree_ids().len(), 3);
            assert_eq!(trees.hits(), 1);
            let (reading, wanted) = trees.ahead.queued();
            assert!(reading >= MAX_IN_FLIGHT - 1);
            assert_eq!(reading + wanted, 39);
            // The directory is done: what it did not take is dropped, and can still be read
            // on demand.
            trees.forget_children(&dir);
            assert_eq!(trees.ahead.queued(), (0, 0));
            assert_eq!(trees.take(&subdirs[39]).unwrap().subtree_ids().len(), 3);
            assert_eq!(trees.hits(), 1);
        })
        .await
        .unwrap();
    }
}
