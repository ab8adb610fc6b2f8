//! The archiver: turns an entry stream into restic trees and data blobs.
//!
//! Runs on one blocking thread, because every source is a synchronous lending iterator. It
//! reads and chunks (and hashes small blobs, which are not worth a hand-off); hashing and dedup
//! of data blobs happen in [`dedup`](crate::dedup), and
//! compression, encryption, pack assembly and all I/O to the repository in the
//! [`sink`](crate::sink), on other threads.
//!
//! Trees are built with a stack of open directories: a source yields a directory before its
//! children and groups each directory's members (the walker sorts them; `tar -c` groups them),
//! so when an entry lies outside the top directory, that directory is complete and is written
//! as a tree blob right away. Memory grows with the depth of the tree and the width of the open
//! directories, never with the size of the data. The width term is inherent to restic's format
//! (a tree blob is one sorted document): an open directory holds its entries already encoded
//! ([`Children`]), about the size of the tree blob it becomes. Finished listings are cached
//! (bounded) only for sources that may return to a directory or link into it
//! ([`EntrySource::may_revisit`]); past the cache, the saved tree blob is read back.
//!
//! Hard links: a path backup knows each file's link count, so a file with more links is kept
//! (its content ids) only until its last link was seen. A tar member has no count, so nothing
//! is kept per member: a link names an earlier member, which is looked up in what was already
//! built: the open directories, the cached listings of finished ones, and else the tree blobs
//! saved for them, read back from the sink's packs (see [`TreeFinder`]), walking down from the
//! deepest open directory on the target's path.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use snapback_chunker::{Chunker, Tables};
use snapback_repo::budget::ByteBudget;
use snapback_repo::buffers::BufferPool;
use snapback_repo::file::quote::quote;
use snapback_repo::file::tree_nodes::StoredTree;
use snapback_repo::file::{Node, NodeType};
use snapback_repo::{BlobIndex, BlobType, Id, Repository};
use snapback_stream::entry::{Entry, EntryKind, EntrySource, Metadata};
use snapback_stream::pending_links::{PendingLinks, PENDING_LINKS_MAX};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::children::Children;
use crate::dedup::{Dedup, Pending, INLINE_BELOW};
use crate::node::{implicit_dir, node_from_entry, unchanged};
use crate::parent_dir::ParentDir;
use crate::parent_trees::ParentTrees;
use crate::progress::Progress;
use crate::sink::{BlobJob, TreeFinder};
use crate::{Error, Result};

/// Bytes read from a file per read call.
const READ_SIZE: usize = 512 * 1024;
/// Encoded size of finished directory listings kept for streams that return to a directory.
const CLOSED_CACHE_BYTES: usize = 2 * 1024 * 1024;
/// Capacity of the read window: the longest chunk plus one read.
const CHUNK_BUF: usize = snapback_chunker::MAX_SIZE + READ_SIZE;

/// How the archiver treats its source.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// Root tree of the parent snapshot, whose unchanged files are reused without reading.
    pub parent_tree: Option<Id>,
    /// When the parent snapshot was taken (seconds since the epoch): the source need not read
    /// ahead files unchanged since ([`EntrySource::read_ahead_since`]).
    pub parent_time: Option<i64>,
    /// Reuse unchanged files from the parent (path backups only: a stream is always re-read).
    pub reuse_unchanged: bool,
    /// Fill directories the source did not describe from the local filesystem (`/` + path).
    pub stat_implicit_dirs: bool,
    /// Time for directories nobody described.
    pub time: DateTime<FixedOffset>,
    /// Stops the archiver between reads.
    pub cancel: CancellationToken,
    /// Live counters.
    pub progress: Arc<Progress>,
    /// zstd level of the sink (`None`: trees are stored uncompressed), for the tree blobs of
    /// wide directories, which are compressed as they are merged (see [`Children`]).
    pub tree_zstd_level: Option<i32>,
    /// Memory the listings of all open directories may hold together
    /// ([`Children::held_bytes`]); past it the backup fails ([`Error::ListingTooLarge`]).
    pub max_listing_bytes: usize,
}

/// Default of [`ArchiveOptions::max_listing_bytes`]: about 3,000,000 entries in one directory
/// (its compressed runs take ~40 B per entry), far past what real volumes hold, and short of
/// what a stream could make a sidecar hold before it is killed for its memory.
pub const MAX_LISTING_BYTES: usize = 128 << 20;

/// What the archiver saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Files not in the parent.
    pub files_new: u64,
    /// Files in the parent but changed (read again).
    pub files_changed: u64,
    /// Files reused from the parent without reading.
    pub files_unchanged: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, devices, fifos, sockets.
    pub others: u64,
    /// Content bytes read.
    pub bytes_read: u64,
    /// Content bytes of unchanged files (not read).
    pub bytes_reused: u64,
    /// Plaintext bytes of blobs new to the repository.
    pub bytes_new: u64,
    /// Entries that could not be represented (e.g. a hard link to an unknown member).
    pub warnings: Vec<String>,
    /// Trees of the parent snapshot that were read ahead of the walk and used.
    pub parent_trees_read_ahead: u64,
}

struct OpenDir {
    /// Path components from the snapshot root (raw name bytes).
    path: Vec<Vec<u8>>,
    /// The directory's own node (without subtree); `None` for the root.
    node: Option<Node>,
    /// Encoded, not as `Node`s: see [`Children`].
    children: Children,
    /// The same directory in the parent snapshot.
    parent: Option<ParentDir>,
}

/// Builds trees and data blobs from an entry stream; see the module docs.
pub struct Archiver {
    repo: Repository,
    handle: Handle,
    index: Arc<BlobIndex>,
    dedup: Dedup,
    tables: Arc<Tables>,
    stack: Vec<OpenDir>,
    /// Content of files with more than one link (path backups), by path, while links to them
    /// are still to come (bounded; a forgotten one is looked up in what was built). Tar
    /// members (`nlink == 0`) are never kept: see the module docs.
    links: PendingLinks<PathBuf, LinkTarget>,
    /// Where the sink put this run's tree blobs, to read one back for a hard link.
    trees: TreeFinder,
    /// Listings of recently finished directories, for streams that return to them.
    closed: ClosedDirs,
    /// The last finished directory too big for `closed`, read back for a hard link into it
    /// (kept in compressed runs, ~40 B per entry): more links into it do not read it again.
    wide: Option<(Vec<Vec<u8>>, Children)>,
    /// The parent snapshot's trees, read ahead of the walk.
    parent_trees: ParentTrees,
    opts: ArchiveOptions,
    stats: ArchiveStats,
    /// Read window of `chunk_file`, reused for every file: its pages are faulted in once, not
    /// once per chunk.
    window: Vec<u8>,
    /// Recycled buffers, shared with the dedup stage and the sink.
    pool: Arc<BufferPool>,
    /// [`Children::held_bytes`] of every open directory but the top one: only the top one's
    /// listing changes, so the sum is kept as directories are opened and closed.
    held_below_top: usize,
}

impl Archiver {
    /// An archiver sending new blobs to `tx`, taking chunk buffers from `buffers` and a share
    /// of `budget` for each chunk. `handle` runs the async repository reads of parent trees;
    /// the archiver itself must run on a blocking thread. `trees` is the finder of the sink
    /// that `tx` feeds.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        repo: Repository,
        handle: Handle,
        index: Arc<BlobIndex>,
        tx: mpsc::Sender<Vec<BlobJob>>,
        trees: TreeFinder,
        buffers: Arc<BufferPool>,
        budget: ByteBudget,
        opts: ArchiveOptions,
    ) -> Result<Self> {
        let tables = Arc::new(Tables::new(snapback_chunker::Pol(
            repo.config().chunker_polynomial,
        )));
        let dedup = Dedup::new(
            handle.clone(),
            index.clone(),
            tx,
            opts.progress.clone(),
            buffers.clone(),
            budget,
        );
        let parent_trees = ParentTrees::new(repo.clone(), index.clone(), handle.clone());
        let mut me = Archiver {
            repo,
            handle,
            index,
            dedup,
            tables,
            stack: Vec::new(),
            links: PendingLinks::new(PENDING_LINKS_MAX),
            trees,
            closed: ClosedDirs::new(CLOSED_CACHE_BYTES),
            wide: None,
            parent_trees,
            opts,
            stats: ArchiveStats::default(),
            window: Vec::new(),
            pool: buffers,
            held_below_top: 0,
        };
        let parent = match me.opts.parent_tree {
            Some(id) => Some(me.parent_trees.take(&id)?),
            None => None,
        };
        me.open_dir(OpenDir {
            path: Vec::new(),
            node: None,
            children: Children::new(),
            parent,
        });
        Ok(me)
    }

    /// Consumes the whole source; returns the root tree id.
    pub fn run(mut self, source: &mut dyn EntrySource) -> Result<(Id, ArchiveStats)> {
        // `parent_time` is set exactly when there is a parent.
        if let (true, Some(secs)) = (self.opts.reuse_unchanged, self.opts.parent_time) {
            source.read_ahead_since(snapback_stream::Timestamp { secs, nanos: 0 });
        }
        if !source.may_revisit() {
            // Nothing would read the cache: a walk's links are counted, its directories final.
            self.closed = ClosedDirs::new(0);
        }
        while let Some(entry) = source.next_entry()? {
            if self.opts.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            self.entry(entry)?;
            self.opts
                .progress
                .entries_done
                .fetch_add(1, Ordering::Relaxed);
        }
        while self.stack.len() > 1 {
            self.close_top()?;
        }
        let root = self
            .stack
            .pop()
            .ok_or_else(|| Error::Pipeline("no root directory".into()))?;
        let (id, _, _) = self.write_tree(root.children)?;
        // Last: the root tree too may wait in the batch.
        self.dedup.finish()?;
        self.stats.parent_trees_read_ahead = self.parent_trees.hits();
        self.stats.warnings.extend(
            source
                .warnings()
                .iter()
                .map(|w| format!("{}: {}", w.path.display(), w.message)),
        );
        Ok((id, self.stats))
    }

    fn entry(&mut self, entry: Entry<'_>) -> Result<()> {
        // Names are kept as the bytes they are: two names differing in one invalid UTF-8 byte
        // are two nodes.
        let comps: Vec<Vec<u8>> = entry
            .path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(s.as_bytes().to_vec()),
                _ => None,
            })
            .collect();
        let Some((name, parents)) = comps.split_last() else {
            // The stream's root itself (`./`): restic's root tree has no node of its own.
            return Ok(());
        };
        self.enter(parents)?;
        let Entry {
            kind,
            meta,
            data,
            path,
        } = entry;
        let mut node = node_from_entry(name, &kind, &meta);
        match &kind {
            EntryKind::Dir => {
                self.stats.dirs += 1;
                // A directory listed again after we left it: reopen it, newest metadata wins.
                let children = match self.take_closed(&comps)? {
                    Some((_, children)) => children,
                    None => Children::new(),
                };
                let parent = self.parent_subtree(name)?;
                self.open_dir(OpenDir {
                    path: comps.clone(),
                    node: Some(node),
                    children,
                    parent,
                });
                return Ok(());
            }
            EntryKind::File => {
                let old = match &mut self.top_mut().parent {
                    Some(p) => p.find(name, |_| true)?,
                    None => None,
                };
                let reusable = old
                    .as_ref()
                    .filter(|o| self.opts.reuse_unchanged && unchanged(o, &meta))
                    .and_then(|o| o.content.clone())
                    .filter(|ids| ids.iter().all(|id| self.index.contains(id)));
                let content = match reusable {
                    Some(ids) => {
                        self.stats.files_unchanged += 1;
                        self.stats.bytes_reused += meta.size;
                        self.opts
                            .progress
                            .bytes_done
                            .fetch_add(meta.size, Ordering::Relaxed);
                        ids
                    }
                    None => {
                        let (ids, size) = match data {
                            Some(reader) => self.chunk_file(reader)?,
                            None => (Vec::new(), 0),
                        };
                        // A re-read stream member with the same content counts as unchanged.
                        match old
                            .as_ref()
                            .map(|o| o.content.as_deref() == Some(ids.as_slice()))
                        {
                            Some(true) => self.stats.files_unchanged += 1,
                            Some(false) => self.stats.files_changed += 1,
                            None => self.stats.files_new += 1,
                        }
                        node.size = size;
                        ids
                    }
                };
                // Only a known count (a path backup) says when the last link has come.
                if meta.nlink > 1 {
                    self.links.insert(
                        path.clone(),
                        LinkTarget {
                            content: content.clone(),
                            size: node.size,
                        },
                        meta.nlink - 1,
                    );
                }
                node.content = Some(content);
            }
            EntryKind::HardLink { target } => {
                self.stats.files_new += 1;
                match self.link_target(&normalize(target))? {
                    Some((ids, size)) => {
                        node.content = Some(ids);
                        node.size = size;
                    }
                    None => {
                        self.stats.warnings.push(format!(
                            "{}: hard link to {} which is not an earlier regular file; stored empty",
                            path.display(),
                            target.display()
                        ));
                        node.content = Some(Vec::new());
                        node.size = 0;
                    }
                }
            }
            _ => self.stats.others += 1,
        }
        self.push_child(&node)
    }

    /// Makes the directory at `parents` the top of the stack, closing finished directories and
    /// opening ones the stream did not describe.
    fn enter(&mut self, parents: &[Vec<u8>]) -> Result<()> {
        while self.stack.len() > 1 && !parents.starts_with(&self.top().path) {
            self.close_top()?;
        }
        while self.top().path.len() < parents.len() {
            let depth = self.top().path.len();
            let name = parents[depth].clone();
            let path = parents[..=depth].to_vec();
            let (node, children) = match self.take_closed(&path)? {
                Some(reopened) => reopened,
                None => (self.implicit_node(&path), Children::new()),
            };
            let parent = self.parent_subtree(&name)?;
            self.open_dir(OpenDir {
                path,
                node: Some(node),
                children,
                parent,
            });
        }
        Ok(())
    }

    /// Content ids and size of the earlier regular file `target`, for a hard link to it. A
    /// file with a known link count is forgotten after its last link; any other is looked up
    /// in what was built.
    fn link_target(&mut self, target: &Path) -> Result<Option<(Vec<Id>, u64)>> {
        if let Some(found) = self
            .links
            .next_link(target, |link| (link.content.clone(), link.size))
        {
            return Ok(Some(found));
        }
        let comps: Vec<Vec<u8>> = target.iter().map(|c| c.as_bytes().to_vec()).collect();
        self.built_file(&comps)
    }

    /// Content ids and size of the regular file at `target` (path components from the root),
    /// from what was already built; see the module docs. Listings read back from the
    /// repository go into the cache of finished listings (a wide one into [`Self::wide`]), so
    /// that more links into the same directory do not read it again. A saved tree is read a
    /// node at a time from its stored form, never decoded whole.
    fn built_file(&mut self, target: &[Vec<u8>]) -> Result<Option<(Vec<Id>, u64)>> {
        let Some((name, dir)) = target.split_last() else {
            return Ok(None);
        };
        // The stack's paths are nested, from the root (whose path is empty) up.
        let Some(open) = self.stack.iter().rposition(|d| dir.starts_with(&d.path)) else {
            return Ok(None);
        };
        let mut at = Listing::Open(open);
        for depth in self.stack[open].path.len()..dir.len() {
            let path = &dir[..=depth];
            if self.closed.get(path).is_some() {
                at = Listing::Cached(path.to_vec());
                continue;
            }
            if self.wide.as_ref().is_some_and(|(p, _)| p == path) {
                at = Listing::Wide;
                continue;
            }
            let sub = self
                .find_node(&at, &dir[depth])?
                .filter(|n| n.node_type == NodeType::Dir)
                .and_then(|n| n.subtree);
            let Some(sub) = sub else {
                return Ok(None);
            };
            let stored = self.load_saved_tree(&sub)?;
            let len = stored.plain_len();
            let children = Children::from_stored(&stored)?;
            drop(stored);
            at = if len <= self.closed.limit {
                if let Some(copy) = children.clone_small() {
                    self.closed.insert(path.to_vec(), copy, len);
                }
                Listing::Loaded(children)
            } else {
                self.wide = Some((path.to_vec(), children));
                Listing::Wide
            };
        }
        Ok(self
            .find_node(&at, name)?
            .filter(|n| n.node_type == NodeType::File)
            .map(|n| (n.content.unwrap_or_default(), n.size)))
    }

    /// The node called `name` in a listing (the last one: a name given twice keeps its last
    /// entry, as in [`Self::write_tree`]).
    fn find_node(&self, at: &Listing, name: &[u8]) -> Result<Option<Node>> {
        let children = match at {
            Listing::Open(i) => &self.stack[*i].children,
            Listing::Cached(path) => match self.closed.get(path) {
                Some(c) => c,
                None => return Ok(None),
            },
            Listing::Loaded(children) => children,
            Listing::Wide => match &self.wide {
                Some((_, c)) => c,
                None => return Ok(None),
            },
        };
        Ok(children.find_last(name, |_| true)?.map(|(_, n)| n))
    }

    /// A tree blob this run or an earlier one saved, as stored (decrypted, still compressed).
    fn load_saved_tree(&mut self, id: &Id) -> Result<StoredTree> {
        let loc = match self.index.get(id) {
            Some(loc) => loc,
            None => {
                // The tree may still wait in the batch of small blobs for the sink.
                self.dedup.flush()?;
                self.handle.block_on(self.trees.locate(*id))?
            }
        };
        Ok(self.handle.block_on(self.repo.load_tree_stored(id, &loc))?)
    }

    fn implicit_node(&self, comps: &[Vec<u8>]) -> Node {
        let name = comps.last().map(Vec::as_slice).unwrap_or_default();
        if self.opts.stat_implicit_dirs {
            let mut path = PathBuf::from("/");
            path.extend(comps.iter().map(|c| OsStr::from_bytes(c)));
            if let Ok(md) = std::fs::symlink_metadata(&path) {
                if md.is_dir() {
                    return node_from_entry(name, &EntryKind::Dir, &dir_meta(&md));
                }
            }
        }
        implicit_dir(name, self.opts.time)
    }

    /// If the top directory already holds a finished directory `path`, removes its node and
    /// returns it with its children, so the stream can add to it (a tar stream that returns to
    /// a directory it left). Its first tree blob stays unreferenced; `prune` removes it.
    fn take_closed(&mut self, path: &[Vec<u8>]) -> Result<Option<(Node, Children)>> {
        let Some(name) = path.last() else {
            return Ok(None);
        };
        let Some((pos, mut node)) = self
            .top()
            .children
            .find_last(name, |c| c.node_type == NodeType::Dir)?
        else {
            return Ok(None);
        };
        let wide = match &self.wide {
            Some((p, _)) if p == path => self.wide.take().map(|(_, children)| children),
            _ => None,
        };
        let children = match wide.or_else(|| self.closed.take(path)) {
            Some(children) => children,
            // Evicted from the cache: its tree blob was saved, read it back.
            None => match node.subtree {
                Some(sub) => Children::from_stored(&self.load_saved_tree(&sub)?)?,
                None => {
                    return Err(Error::Pipeline(format!(
                        "finished directory /{} has no tree",
                        String::from_utf8_lossy(&path.join(&b'/'))
                    )))
                }
            },
        };
        self.top_mut().children.remove(pos);
        node.subtree = None;
        Ok(Some((node, children)))
    }

    /// Pushes a directory onto the stack and asks for its subdirectories' parent trees.
    fn open_dir(&mut self, dir: OpenDir) {
        if let Some(parent) = &dir.parent {
            self.parent_trees.want_children(parent);
        }
        if let Some(top) = self.stack.last() {
            self.held_below_top += top.children.held_bytes();
        }
        self.stack.push(dir);
    }

    fn parent_subtree(&mut self, name: &[u8]) -> Result<Option<ParentDir>> {
        let sub = match &mut self.top_mut().parent {
            Some(p) => p
                .find(name, |n| n.node_type == NodeType::Dir)?
                .and_then(|n| n.subtree),
            None => None,
        };
        match sub {
            Some(id) => Ok(Some(self.parent_trees.take(&id)?)),
            None => Ok(None),
        }
    }

    fn close_top(&mut self) -> Result<()> {
        let dir = self
            .stack
            .pop()
            .ok_or_else(|| Error::Pipeline("directory stack empty".into()))?;
        // The new top's listing is what it was when `dir` was opened on it.
        let below = self.stack.last().map_or(0, |d| d.children.held_bytes());
        self.held_below_top = self.held_below_top.saturating_sub(below);
        if let Some(parent) = &dir.parent {
            self.parent_trees.forget_children(parent);
        }
        let (id, children, len) = self.write_tree(dir.children)?;
        if let Some(children) = children {
            self.closed.insert(dir.path, children, len);
        }
        let mut node = dir
            .node
            .unwrap_or_else(|| implicit_dir(b"", self.opts.time));
        node.subtree = Some(id);
        node.content = None;
        self.push_child(&node)
    }

    /// Adds `node` to the top directory's listing, within [`ArchiveOptions::max_listing_bytes`]
    /// for all open listings together: a stream can describe a directory of any number of
    /// entries, or wide directories nested as deep as its names allow, and each open listing
    /// stays in memory until its directory closes (restic's tree blob is one sorted document).
    fn push_child(&mut self, node: &Node) -> Result<()> {
        self.top_mut().children.push(node)?;
        let top = self.top();
        let held = self.held_below_top + top.children.held_bytes();
        if held > self.opts.max_listing_bytes {
            let path: Vec<String> = top.path.iter().map(|c| quote(c)).collect();
            return Err(Error::ListingTooLarge {
                dir: format!("/{}", path.join("/")),
                entries: top.children.entries(),
                held_mib: (held as f64 / f64::from(1 << 20) * 10.0).ceil() / 10.0,
                limit_mib: self.opts.max_listing_bytes >> 20,
            });
        }
        Ok(())
    }

    /// Writes a tree blob; returns its id, its sorted listing (unless it is too big for the
    /// cache of finished listings: then the listing's buffer became the blob) and its encoded
    /// size.
    fn write_tree(&mut self, children: Children) -> Result<(Id, Option<Children>, usize)> {
        if children.has_runs() {
            // A wide directory: merged from its runs straight into the compressed blob.
            let merged = children.into_merged(self.opts.tree_zstd_level)?;
            let compressed_from =
                match merged.compressed {
                    true => Some(u32::try_from(merged.plain_len).map_err(|_| {
                        Error::Stream("a directory's tree blob exceeds 4 GiB".into())
                    })?),
                    false => None,
                };
            let added = self.dedup.submit_hashed(
                BlobType::Tree,
                merged.id,
                merged.bytes,
                compressed_from,
            )?;
            self.stats.bytes_new += added;
            return Ok((merged.id, None, merged.plain_len));
        }
        // Sorted by name bytes (as restic, which sorts Go strings), and a name given twice in a
        // stream keeps its last entry.
        // Directory listings of a few hundred KiB each would fault in fresh pages for every
        // directory (a stream of small files: a sixth of all page faults): their buffers come
        // from the pool and go back to it.
        let children = if children.is_sorted() {
            children
        } else {
            let spare = self.pool.take(children.encoded_len());
            let (children, unused) = children.into_sorted_in(spare)?;
            self.pool.give_back(unused);
            children
        };
        let len = children.encoded_len();
        let (bytes, kept) = if len <= self.closed.limit {
            let out = self.pool.take(len + snapback_repo::crypto::OVERHEAD);
            (children.tree_bytes_in(out), Some(children))
        } else {
            (children.into_tree_bytes(), None)
        };
        Ok((self.submit(BlobType::Tree, bytes)?, kept, len))
    }

    fn submit(&mut self, ty: BlobType, data: Vec<u8>) -> Result<Id> {
        let (id, added) = self.dedup.submit(ty, data)?;
        self.stats.bytes_new += added;
        Ok(id)
    }

    /// Reads a file, cutting it with restic's chunker; returns its blob ids and size.
    fn chunk_file(&mut self, reader: &mut dyn Read) -> Result<(Vec<Id>, u64)> {
        let mut window = std::mem::take(&mut self.window);
        let result = self.chunk_into(reader, &mut window);
        self.window = window;
        result
    }

    /// Reads into `window` a read at a time, cuts what was read ([`Chunker::cuts`]) and
    /// submits each chunk, copied into a buffer of its own (which the sink then seals in place
    /// and packs).
    ///
    /// `window[..filled]` is the open chunk's bytes, already scanned, then the new ones. The
    /// window only grows (zero-filled once, as far as it was ever needed), so its pages are
    /// faulted in once per archiver, not once per file or chunk.
    fn chunk_into(
        &mut self,
        reader: &mut dyn Read,
        window: &mut Vec<u8>,
    ) -> Result<(Vec<Id>, u64)> {
        let mut chunker = Chunker::new(self.tables.clone());
        let mut pending = Vec::new();
        let mut cuts = Vec::new();
        let mut total = 0u64;
        let mut filled = 0;
        loop {
            if self.opts.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let want = (filled + READ_SIZE).min(CHUNK_BUF);
            if window.len() < want {
                window.resize(want, 0);
            }
            let n = read_some(reader, &mut window[filled..want])?;
            // Reads come up short only at the end of the file.
            let eof = n < want - filled;
            let scanned = filled;
            filled += n;
            total += n as u64;
            self.stats.bytes_read += n as u64;
            self.opts
                .progress
                .bytes_done
                .fetch_add(n as u64, Ordering::Relaxed);
            cuts.clear();
            chunker.cuts(&window[scanned..filled], &mut cuts);
            let mut start = 0;
            for &cut in &cuts {
                let end = scanned + cut;
                pending.push(self.submit_chunk(&window[start..end])?);
                start = end;
            }
            if start > 0 {
                window.copy_within(start..filled, 0);
                filled -= start;
            }
            if eof {
                break;
            }
        }
        if filled > 0 {
            // The file's last chunk: its id is waited for right below, so hashing it here
            // costs less than handing it to another thread and waiting for that thread to be
            // scheduled (on two cores, behind the sink's compression).
            pending.push(self.dedup.submit_small(&window[..filled])?);
        }
        let (ids, added) = self.dedup.resolve(pending)?;
        self.stats.bytes_new += added;
        Ok((ids, total))
    }

    /// Submits one chunk: a small one is hashed here, a bigger one copied out and hashed in
    /// the background (see [`dedup`](crate::dedup)).
    fn submit_chunk(&mut self, chunk: &[u8]) -> Result<Pending> {
        if chunk.len() < INLINE_BELOW {
            return self.dedup.submit_small(chunk);
        }
        let chunk = self.dedup.chunk_buffer(chunk)?;
        self.dedup.submit_later(chunk)
    }

    fn top(&self) -> &OpenDir {
        // The root is pushed in `new` and popped only at the very end of `run`.
        &self.stack[self.stack.len() - 1]
    }

    fn top_mut(&mut self) -> &mut OpenDir {
        let n = self.stack.len() - 1;
        &mut self.stack[n]
    }
}

/// A file that later hard links may point at.
struct LinkTarget {
    content: Vec<Id>,
    size: u64,
}

/// Where [`Archiver::built_file`] looks for a name.
enum Listing {
    /// The children of the open directory at this stack position.
    Open(usize),
    /// The cached listing of this finished directory.
    Cached(Vec<Vec<u8>>),
    /// A listing read back from its tree blob.
    Loaded(Children),
    /// The listing in [`Archiver::wide`].
    Wide,
}

/// Finished directories' nodes, oldest evicted first once their encoded size passes a limit.
struct ClosedDirs {
    map: HashMap<Vec<Vec<u8>>, (Children, usize)>,
    order: std::collections::VecDeque<Vec<Vec<u8>>>,
    bytes: usize,
    limit: usize,
}

impl ClosedDirs {
    fn new(limit: usize) -> Self {
        ClosedDirs {
            map: HashMap::new(),
            order: std::collections::VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    fn insert(&mut self, path: Vec<Vec<u8>>, nodes: Children, size: usize) {
        self.bytes += size;
        if let Some((_, old)) = self.map.insert(path.clone(), (nodes, size)) {
            self.bytes -= old;
        }
        self.order.push_back(path);
        while self.bytes > self.limit {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            // Stale order entries (taken or re-inserted paths) are skipped.
            if let Some((_, size)) = self.map.remove(&oldest) {
                self.bytes -= size;
            }
        }
    }

    fn get(&self, path: &[Vec<u8>]) -> Option<&Children> {
        self.map.get(path).map(|(nodes, _)| nodes)
    }

    fn take(&mut self, path: &[Vec<u8>]) -> Option<Children> {
        let (nodes, size) = self.map.remove(path)?;
        self.bytes -= size;
        Some(nodes)
    }
}

/// A chunk's own buffer: exactly its size plus room for the sink to seal it in place.
fn read_some(reader: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Source(snapback_stream::Error::ReadTar(e))),
        }
    }
    Ok(filled)
}

fn normalize(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect()
}

fn dir_meta(md: &std::fs::Metadata) -> Metadata {
    use std::os::unix::fs::MetadataExt;
    let ts = |secs: i64, nanos: i64| snapback_stream::entry::Timestamp {
        secs,
        nanos: u32::try_from(nanos).unwrap_or(0),
    };
    Metadata {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: ts(md.mtime(), md.mtime_nsec()),
        atime: Some(ts(md.atime(), md.atime_nsec())),
        ctime: Some(ts(md.ctime(), md.ctime_nsec())),
        inode: md.ino(),
        dev: md.dev(),
        nlink: md.nlink(),
        ..Metadata::default()
    }
}
