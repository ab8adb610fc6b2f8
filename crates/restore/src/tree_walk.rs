//! Reading a snapshot's trees: loading one tree, resolving a path, a depth-first walk that keeps
//! only the trees of the current path in memory (and reads the next ones ahead), and
//! [`SnapshotSource`], which presents a (sub)tree of a snapshot as an [`EntrySource`] (for
//! `dump` as tar).
//!
//! Paths inside a snapshot are absolute with the snapshot root as `/`, as restic prints them
//! (`/home/user/file`).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};
use snapback_repo::file::tree::{go_mode, zero_time};
use snapback_repo::file::tree_nodes::{NodeReader, StoredTree, STREAM_FROM};
use snapback_repo::file::{Node, NodeType, Tree};
use snapback_repo::tree_read_ahead::{subtree_ids, TreeReadAhead, MAX_WANTED};
use snapback_repo::{BlobIndex, Id, Repository};
use snapback_stream::entry::{Entry, EntryKind, EntrySource, Metadata, Timestamp, Warning, Xattr};
use tokio::runtime::Handle;

use crate::{Error, Result};

/// Loads and parses the tree blob `id` (authenticated and hash-checked by the repository).
pub async fn load_tree(repo: &Repository, index: &BlobIndex, id: &Id) -> Result<Tree> {
    let loc = index
        .get(id)
        .ok_or(snapback_repo::Error::BlobNotFound(*id))?;
    parse_tree(id, &repo.load_blob(id, &loc).await?)
}

/// Parses tree blob `id`'s plaintext, refusing names that would escape their directory.
fn parse_tree(id: &Id, data: &[u8]) -> Result<Tree> {
    let tree: Tree = serde_json::from_slice(data).map_err(|e| snapback_repo::Error::Format {
        file: format!("tree {}", id.short()),
        message: format!("invalid JSON: {e}"),
    })?;
    for node in &tree.nodes {
        check_name(&node.name).map_err(|reason| Error::InvalidTree {
            tree: id.short(),
            reason,
        })?;
    }
    Ok(tree)
}

/// Refuses node names that would escape their directory when joined to a path.
pub(crate) fn check_name(name: &[u8]) -> std::result::Result<(), String> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(format!(
            "invalid node name \"{}\"",
            snapback_repo::file::quote::quote(name)
        ));
    }
    Ok(())
}

/// The components of a snapshot path (raw bytes, as unix paths are), cleaned like Go's
/// `path.Clean` (`.` dropped, `..` pops).
pub fn path_components<P: AsRef<OsStr> + ?Sized>(path: &P) -> Vec<&OsStr> {
    let mut out: Vec<&OsStr> = Vec::new();
    for part in path.as_ref().as_bytes().split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            p => out.push(OsStr::from_bytes(p)),
        }
    }
    out
}

/// The cleaned absolute form of a snapshot path (`/` + its [`path_components`]).
pub fn clean_path<P: AsRef<OsStr> + ?Sized>(path: &P) -> PathBuf {
    let mut out = PathBuf::from("/");
    out.extend(path_components(path));
    out
}

/// A directory node standing for the snapshot root (which has no node of its own).
pub fn root_node(tree: Id) -> Node {
    let mut node = Node::new("", NodeType::Dir);
    node.mode = go_mode::DIR | 0o755;
    node.subtree = Some(tree);
    node
}

/// Resolves an absolute snapshot path (`/data/x/y`; `/` is the root) to its node, loading one
/// tree per component. The root resolves to [`root_node`].
pub async fn find_node(
    repo: &Repository,
    index: &BlobIndex,
    root_tree: &Id,
    path: &Path,
) -> Result<Node> {
    let parts = path_components(path);
    let mut node = root_node(*root_tree);
    let mut walked = PathBuf::from("/");
    for part in parts {
        walked.push(part);
        let Some(subtree) = node.subtree.filter(|_| node.node_type == NodeType::Dir) else {
            return Err(Error::PathNotFound(walked.display().to_string()));
        };
        let tree = load_tree(repo, index, &subtree).await?;
        node = tree
            .nodes
            .into_iter()
            .find(|n| n.name == part.as_bytes())
            .ok_or_else(|| Error::PathNotFound(walked.display().to_string()))?;
    }
    Ok(node)
}

/// Joins a snapshot directory path and a raw name (`/` + `a` = `/a`, `/a` + `b` = `/a/b`).
pub fn join_path(dir: &Path, name: &[u8]) -> PathBuf {
    let dir = dir.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(dir.len() + 1 + name.len());
    out.extend_from_slice(dir);
    if !dir.ends_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    PathBuf::from(OsString::from_vec(out))
}

/// One step of a [`TreeWalker`].
#[derive(Debug, Clone)]
pub enum WalkItem {
    /// A node, in depth-first name order; a directory comes before its contents.
    Node {
        /// Absolute snapshot path of the node.
        path: PathBuf,
        /// The node.
        node: Node,
    },
    /// All contents of a directory that was descended into have been visited.
    DirEnd {
        /// Absolute snapshot path of the directory.
        path: PathBuf,
        /// The directory's node.
        node: Node,
    },
}

/// A directory being visited: its remaining nodes.
struct Frame {
    /// `None` for the walk's root (no node, no [`WalkItem::DirEnd`]).
    dir: Option<(PathBuf, Node)>,
    path: PathBuf,
    nodes: Nodes,
    /// Its subdirectories' trees, asked for ahead of the walk when it was entered.
    subdirs: Vec<Id>,
}

/// A directory's remaining nodes.
enum Nodes {
    /// Decoded whole (sorted, each name once).
    Whole(std::vec::IntoIter<Node>),
    /// A wide tree (past [`STREAM_FROM`]), read a node at a time from its stored, compressed
    /// form: checked when it was loaded (id, names, order), so it comes sorted; of a repeated
    /// name the first node is kept, as for a decoded one.
    Streamed(Box<StreamedNodes>),
}

/// See [`Nodes::Streamed`].
struct StreamedNodes {
    id: Id,
    reader: NodeReader,
    /// The name of the node returned last.
    last: Option<Vec<u8>>,
}

impl Nodes {
    /// The next node; a name repeated is recorded in `skipped` and left out.
    fn next(&mut self, path: &Path, skipped: &mut Vec<(PathBuf, String)>) -> Result<Option<Node>> {
        let (id, reader, last) = match self {
            Nodes::Whole(nodes) => return Ok(nodes.next()),
            Nodes::Streamed(s) => (&s.id, &mut s.reader, &mut s.last),
        };
        while let Some(raw) = reader.next_node()? {
            let node = parse_node(id, raw)?;
            if last.as_ref() == Some(&node.name) {
                repeated(path, &node.name, skipped);
                continue;
            }
            *last = Some(node.name.clone());
            return Ok(Some(node));
        }
        Ok(None)
    }
}

/// Records that a tree repeats `name` below `path`.
fn repeated(path: &Path, name: &[u8], skipped: &mut Vec<(PathBuf, String)>) {
    let p = join_path(path, name);
    tracing::warn!(path = %p.display(), "tree repeats a name: only its first node is used");
    skipped.push((
        p,
        "the tree repeats this name: only its first node is used".into(),
    ));
}

/// A tree as loaded for a walk.
enum Loaded {
    Whole(Tree),
    Streamed(StoredTree, Vec<Id>),
}

/// Depth-first walk of a tree in name order. Only the trees on the path from the root to the
/// current node are held in memory, and the trees of their subdirectories read ahead (bounded:
/// [`TreeReadAhead`]), so that a walk of a remote repository does not wait for one round trip
/// per directory.
pub struct TreeWalker {
    repo: Repository,
    index: Arc<BlobIndex>,
    /// Made on the first call, inside the runtime that runs its reads.
    ahead: Option<TreeReadAhead>,
    /// The root tree, until the first call loads it.
    root: Option<(Id, PathBuf)>,
    stack: Vec<Frame>,
    /// The directory yielded last, entered on the next call unless [`TreeWalker::skip_subtree`].
    pending: Option<(PathBuf, Node)>,
    /// Nodes left out of the walk so far (see [`TreeWalker::take_skipped`]).
    skipped: Vec<(PathBuf, String)>,
}

impl TreeWalker {
    /// A walk of tree `root`; node paths are `base` joined with the names below it (`base` is
    /// `/` for a whole snapshot).
    pub fn new(repo: Repository, index: Arc<BlobIndex>, root: Id, base: &Path) -> Self {
        TreeWalker {
            repo,
            index,
            root: Some((root, base.to_path_buf())),
            ahead: None,
            stack: Vec::new(),
            pending: None,
            skipped: Vec::new(),
        }
    }

    /// Trees the walk took that had been read ahead of it.
    pub fn trees_read_ahead(&self) -> u64 {
        self.ahead.as_ref().map_or(0, TreeReadAhead::hits)
    }

    /// Do not descend into the directory returned by the last call.
    pub fn skip_subtree(&mut self) {
        let skipped = self.pending.take().and_then(|(_, node)| node.subtree);
        if let Some(ahead) = &mut self.ahead {
            ahead.forget(skipped);
        }
    }

    /// The nodes the walk left out since the last call, as (path, reason): a name that a tree
    /// repeats is walked once, for its first node (two nodes under one path would let the
    /// second, say a symlink, redirect what is done for the first).
    pub fn take_skipped(&mut self) -> Vec<(PathBuf, String)> {
        std::mem::take(&mut self.skipped)
    }

    /// The next item, or `None` at the end. A tree that cannot be loaded is reported as an
    /// error once and then treated as empty, so the walk can go on with the next call (its
    /// [`WalkItem::DirEnd`] still comes).
    pub async fn next(&mut self) -> Result<Option<WalkItem>> {
        if let Some((id, base)) = self.root.take() {
            let tree = self.load(&id).await?;
            self.enter(None, base, tree)?;
        }
        if let Some((path, node)) = self.pending.take() {
            let loaded = match node.subtree {
                Some(id) => self.load(&id).await,
                None => Err(Error::InvalidTree {
                    tree: path.display().to_string(),
                    reason: "directory without subtree".into(),
                }),
            };
            let (tree, err) = match loaded {
                Ok(t) => (t, None),
                Err(e) => (Loaded::Whole(Tree::default()), Some(e)),
            };
            self.enter(Some((path.clone(), node)), path, tree)?;
            if let Some(e) = err {
                return Err(e);
            }
        }
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            let next = match top.nodes.next(&top.path, &mut self.skipped) {
                Ok(next) => next,
                Err(e) => {
                    // Reported once; the rest of the directory is left out.
                    top.nodes = Nodes::Whole(Vec::new().into_iter());
                    return Err(e);
                }
            };
            match next {
                Some(node) => {
                    let path = join_path(&top.path, &node.name);
                    if node.node_type == NodeType::Dir {
                        // Clones only directory nodes (no content list); entered lazily.
                        self.pending = Some((path.clone(), node.clone()));
                    }
                    return Ok(Some(WalkItem::Node { path, node }));
                }
                None => {
                    let Some(done) = self.stack.pop() else {
                        continue;
                    };
                    if let Some(ahead) = &mut self.ahead {
                        // What the walk skipped below it is not needed any more.
                        ahead.forget(done.subdirs);
                    }
                    if let Some((path, node)) = done.dir {
                        return Ok(Some(WalkItem::DirEnd { path, node }));
                    }
                }
            }
        }
    }

    /// Tree `id`, read ahead if it was; a wide one is left as stored, once checked.
    async fn load(&mut self, id: &Id) -> Result<Loaded> {
        let ahead = self.ahead.get_or_insert_with(|| {
            TreeReadAhead::new(self.repo.clone(), self.index.clone(), Handle::current())
        });
        let wide = self
            .index
            .get(id)
            .is_some_and(|loc| loc.plain_length() > STREAM_FROM);
        if !wide {
            return Ok(Loaded::Whole(parse_tree(id, &ahead.take(id).await?)?));
        }
        let stored = ahead.take_stored(id).await?;
        let mut bad = None;
        let survey = stored.survey(MAX_WANTED, |n| {
            if bad.is_none() {
                bad = check_name(&n.name).err();
            }
        })?;
        if let Some(reason) = bad {
            return Err(Error::InvalidTree {
                tree: id.short(),
                reason,
            });
        }
        if survey.sorted {
            return Ok(Loaded::Streamed(stored, survey.subdirs));
        }
        // Out of order (not restic's): decoded whole and sorted, as a small one.
        let mut nodes = Vec::new();
        let mut reader = stored.nodes()?;
        while let Some(raw) = reader.next_node()? {
            nodes.push(parse_node(id, raw)?);
        }
        Ok(Loaded::Whole(Tree { nodes }))
    }

    /// Pushes a directory's frame and asks for its subdirectories' trees.
    fn enter(&mut self, dir: Option<(PathBuf, Node)>, path: PathBuf, tree: Loaded) -> Result<()> {
        let f = match tree {
            Loaded::Whole(tree) => frame(dir, path, tree, &mut self.skipped),
            Loaded::Streamed(stored, subdirs) => Frame {
                dir,
                path,
                nodes: Nodes::Streamed(Box::new(StreamedNodes {
                    id: stored.id,
                    reader: stored.nodes()?,
                    last: None,
                })),
                subdirs,
            },
        };
        if let Some(ahead) = &mut self.ahead {
            ahead.want(f.subdirs.iter().copied());
        }
        self.stack.push(f);
        Ok(())
    }
}

/// One node's JSON of tree `id`.
fn parse_node(id: &Id, raw: &[u8]) -> Result<Node> {
    Ok(
        serde_json::from_slice(raw).map_err(|e| snapback_repo::Error::Format {
            file: format!("tree {}", id.short()),
            message: format!("invalid JSON: {e}"),
        })?,
    )
}

fn frame(
    dir: Option<(PathBuf, Node)>,
    path: PathBuf,
    mut tree: Tree,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Frame {
    // restic writes trees sorted; an unsorted one is tolerated and sorted here (byte order, as
    // Go). The sort is stable, so of nodes repeating a name the tree's first comes first, and
    // repeats end up next to each other: found without a set, kept out of the walk.
    tree.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    tree.nodes.dedup_by(|later, first| {
        let repeat = later.name == first.name;
        if repeat {
            repeated(&path, &later.name, skipped);
        }
        repeat
    });
    // The walk asks for no more than the read-ahead queue holds.
    let subdirs = subtree_ids(&tree).take(MAX_WANTED).collect();
    Frame {
        dir,
        path,
        nodes: Nodes::Whole(tree.nodes.into_iter()),
        subdirs,
    }
}

/// A restic time as an entry timestamp.
pub fn to_timestamp(t: &DateTime<FixedOffset>) -> Timestamp {
    Timestamp {
        secs: t.timestamp(),
        nanos: t.timestamp_subsec_nanos().min(999_999_999),
    }
}

fn known_time(t: &DateTime<FixedOffset>) -> Option<Timestamp> {
    (*t != zero_time()).then(|| to_timestamp(t))
}

/// Entry metadata of a restic node.
pub fn node_metadata(node: &Node) -> Metadata {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Metadata {
        mode: go_mode::to_unix_perm(node.mode),
        uid: node.uid,
        gid: node.gid,
        user: non_empty(&node.user),
        group: non_empty(&node.group),
        mtime: to_timestamp(&node.mtime),
        atime: known_time(&node.atime),
        ctime: known_time(&node.ctime),
        size: if node.node_type == NodeType::File {
            node.size
        } else {
            0
        },
        inode: node.inode,
        dev: node.device_id,
        nlink: node.links,
        xattrs: node
            .extended_attributes
            .iter()
            .map(|x| Xattr {
                // restic stores attribute names as (UTF-8) strings.
                name: OsString::from(&x.name),
                value: x.value.clone(),
            })
            .collect(),
    }
}

/// Reads a file's content blob by blob; at most one blob is in memory. Blocks on the runtime
/// handle, so it must only be read from a blocking thread.
pub struct BlobReader {
    handle: Handle,
    repo: Repository,
    index: Arc<BlobIndex>,
    blobs: std::vec::IntoIter<Id>,
    current: Bytes,
    pos: usize,
}

impl BlobReader {
    /// A reader over the content blobs `blobs` (in order).
    pub fn new(handle: Handle, repo: Repository, index: Arc<BlobIndex>, blobs: Vec<Id>) -> Self {
        BlobReader {
            handle,
            repo,
            index,
            blobs: blobs.into_iter(),
            current: Bytes::new(),
            pos: 0,
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.current.len() {
            let Some(id) = self.blobs.next() else {
                return Ok(0);
            };
            // Free the previous blob before fetching the next one.
            self.current = Bytes::new();
            self.pos = 0;
            let loc = self
                .index
                .get(&id)
                .ok_or_else(|| io::Error::other(snapback_repo::Error::BlobNotFound(id)))?;
            self.current = self
                .handle
                .block_on(self.repo.load_blob(&id, &loc))
                .map_err(io::Error::other)?;
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Options of a [`SnapshotSource`].
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Turn the second and later nodes of a hard-link group (`links > 1`, same device and
    /// inode) into [`EntryKind::HardLink`] entries instead of repeating the content.
    pub hard_links: bool,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions { hard_links: true }
    }
}

/// The nodes below one directory of a snapshot as an [`EntrySource`]. The directory itself is
/// not an entry; every node below it is, named by its snapshot path without the leading `/`
/// (dumping `/data/x` yields `data/x/file`, as `restic dump` names tar members).
///
/// The trait is synchronous and the repository async: the source blocks on a tokio runtime
/// [`Handle`]. Drive it only from a blocking thread (`tokio::task::spawn_blocking` or a plain
/// thread), never from inside an async task: `Handle::block_on` panics there.
pub struct SnapshotSource {
    handle: Handle,
    repo: Repository,
    index: Arc<BlobIndex>,
    walker: TreeWalker,
    options: SourceOptions,
    /// First member path of each hard-link group seen so far.
    links: HashMap<(u64, u64), PathBuf>,
    reader: Option<BlobReader>,
    warnings: Vec<Warning>,
}

impl SnapshotSource {
    /// A source over the contents of the directory `dir` (a node whose `subtree` is set, e.g.
    /// from [`find_node`]) located at snapshot path `dir_path`.
    pub fn new(
        handle: Handle,
        repo: Repository,
        index: Arc<BlobIndex>,
        dir: &Node,
        dir_path: &Path,
        options: SourceOptions,
    ) -> Result<Self> {
        let subtree = match (dir.node_type, dir.subtree) {
            (NodeType::Dir, Some(id)) => id,
            _ => {
                return Err(Error::InvalidTree {
                    tree: dir_path.display().to_string(),
                    reason: "not a directory".into(),
                })
            }
        };
        let walker = TreeWalker::new(repo.clone(), index.clone(), subtree, dir_path);
        Ok(SnapshotSource {
            handle,
            repo,
            index,
            walker,
            options,
            links: HashMap::new(),
            reader: None,
            warnings: Vec::new(),
        })
    }
}

impl EntrySource for SnapshotSource {
    fn next_entry(&mut self) -> std::result::Result<Option<Entry<'_>>, snapback_stream::Error> {
        self.reader = None;
        loop {
            let item = self.handle.block_on(self.walker.next()).map_err(|e| {
                snapback_stream::Error::Io {
                    path: PathBuf::from("<repository>"),
                    source: io::Error::other(e),
                }
            })?;
            for (path, message) in self.walker.take_skipped() {
                self.warnings.push(Warning {
                    path: PathBuf::from(OsStr::from_bytes(trim_slashes(&path))),
                    message,
                });
            }
            let (path, node) = match item {
                None => return Ok(None),
                Some(WalkItem::DirEnd { .. }) => continue,
                Some(WalkItem::Node { path, node }) => (path, node),
            };
            let member = PathBuf::from(OsStr::from_bytes(trim_slashes(&path)));
            let meta = node_metadata(&node);
            let kind = match node.node_type {
                NodeType::File => EntryKind::File,
                NodeType::Dir => EntryKind::Dir,
                NodeType::Symlink => EntryKind::Symlink {
                    target: PathBuf::from(OsStr::from_bytes(&node.linktarget)),
                },
                NodeType::Fifo => EntryKind::Fifo,
                NodeType::Chardev => EntryKind::CharDevice { rdev: node.device },
                NodeType::Dev => EntryKind::BlockDevice { rdev: node.device },
                NodeType::Socket => EntryKind::Socket,
                NodeType::Unknown => {
                    self.warnings.push(Warning {
                        path: member,
                        message: "node of unknown type skipped".into(),
                    });
                    continue;
                }
            };
            if kind == EntryKind::File
                && self.options.hard_links
                && node.links > 1
                && node.inode != 0
            {
                let key = (node.device_id, node.inode);
                if let Some(first) = self.links.get(&key) {
                    return Ok(Some(Entry {
                        path: member,
                        kind: EntryKind::HardLink {
                            target: first.clone(),
                        },
                        meta,
                        data: None,
                    }));
                }
                self.links.insert(key, member.clone());
            }
            if kind != EntryKind::File {
                return Ok(Some(Entry {
                    path: member,
                    kind,
                    meta,
                    data: None,
                }));
            }
            let blobs = node.content.unwrap_or_default();
            let reader = self.reader.insert(BlobReader::new(
                self.handle.clone(),
                self.repo.clone(),
                self.index.clone(),
                blobs,
            ));
            return Ok(Some(Entry {
                path: member,
                kind,
                meta,
                data: Some(reader as &mut dyn Read),
            }));
        }
    }

    fn warnings(&self) -> &[Warning] {
        &self.warnings
    }
}

/// A snapshot path's bytes without its leading `/`s (a tar member name).
fn trim_slashes(path: &Path) -> &[u8] {
    let b = path.as_os_str().as_bytes();
    let start = b.iter().position(|&c| c != b'/').unwrap_or(b.len());
    &b[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapback_archive::{backup, BackupOptions};
    use snapback_repo::file::SnapshotFile;
    use snapback_repo::test_util::{local_repo, write_dirs_of_dirs};
    use snapback_repo::FileType;
    use snapback_stream::walk::{WalkOptions, Walker};

    /// A repository in `repo_dir` holding one snapshot of `data/dNN/eN/file` (40 directories
    /// of 3); returns it, its index and the path of `data` in the snapshot.
    async fn snapshot_of_dirs(
        repo_dir: &Path,
        data: &Path,
    ) -> (Repository, Arc<BlobIndex>, Id, PathBuf) {
        write_dirs_of_dirs(data).unwrap();
        let (repo, index, root) = snapshot_of(repo_dir, data).await;
        (repo, index, root, clean_path(data))
    }

    /// A repository in `repo_dir` holding one snapshot of `data`; returns it, its index and
    /// the snapshot's root tree.
    async fn snapshot_of(repo_dir: &Path, data: &Path) -> (Repository, Arc<BlobIndex>, Id) {
        let repo = local_repo(repo_dir).await.unwrap();
        let walker = Walker::new([data], WalkOptions::default()).unwrap();
        let paths = vec![data.to_string_lossy().into_owned()];
        let summary = backup(&repo, Box::new(walker), BackupOptions::new("t", paths))
            .await
            .unwrap();
        let snapshot: SnapshotFile = repo
            .load_json(FileType::Snapshot, &summary.snapshot_id)
            .await
            .unwrap();
        let index = Arc::new(BlobIndex::load(&repo).await.unwrap());
        (repo, index, snapshot.tree)
    }

    /// A walk of a snapshot made by [`snapshot_of_dirs`] (whose directories it holds), and the
    /// snapshot path of `data`.
    async fn walker_over_dirs() -> ([tempfile::TempDir; 2], TreeWalker, PathBuf) {
        let (repo_dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (repo, index, root, data_path) = snapshot_of_dirs(repo_dir.path(), data.path()).await;
        let walker = TreeWalker::new(repo, index, root, Path::new("/"));
        ([repo_dir, data], walker, data_path)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_walk_reads_subdirectories_ahead_and_sees_every_node_in_order() {
        let (_dirs, mut walker, data_path) = walker_over_dirs().await;
        let mut files = Vec::new();
        let mut dir_ends = 0;
        while let Some(item) = walker.next().await.unwrap() {
            match item {
                WalkItem::Node { path, node } if node.node_type == NodeType::File => {
                    files.push(path)
                }
                WalkItem::Node { .. } => {}
                WalkItem::DirEnd { .. } => dir_ends += 1,
            }
        }
        let want: Vec<PathBuf> = (0..40)
            .flat_map(|d| (0..3).map(move |e| (d, e)))
            .map(|(d, e)| data_path.join(format!("d{d:02}/e{e}/file")))
            .collect();
        assert_eq!(files, want);
        let depth = data_path.components().count() as u64 - 1;
        assert_eq!(dir_ends, 160 + depth);
        // Directories below `data` were read ahead: on an idle machine all 160. How many later
        // reads start before the walk needs them depends on how soon the earlier ones finish;
        // the first 16 of the 40 start as `data` is entered, whatever the timing.
        let read_ahead = walker.trees_read_ahead();
        let least = snapback_repo::tree_read_ahead::MAX_IN_FLIGHT as u64;
        assert!((least..=160 + depth).contains(&read_ahead), "{read_ahead}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wide_directory_is_walked_a_node_at_a_time_in_order() {
        let (repo_dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let wide = data.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        // Past STREAM_FROM of tree JSON (some 230 B per file), and a subdirectory at its end.
        let names: Vec<String> = (0..24_000).map(|i| format!("file-{i:06}")).collect();
        for n in &names {
            std::fs::write(wide.join(n), b"").unwrap();
        }
        std::fs::create_dir_all(wide.join("zz-sub")).unwrap();
        std::fs::write(wide.join("zz-sub/inner"), b"x").unwrap();
        let (repo, index, root) = snapshot_of(repo_dir.path(), data.path()).await;
        let wide_path = clean_path(&wide);
        let mut walker = TreeWalker::new(repo, index, root, Path::new("/"));
        let (mut seen, mut streamed) = (Vec::new(), false);
        while let Some(item) = walker.next().await.unwrap() {
            if let WalkItem::Node { path, .. } = item {
                let rel = path.strip_prefix(&wide_path).ok();
                if let Some(rel) = rel.filter(|r| !r.as_os_str().is_empty()) {
                    seen.push(rel.to_string_lossy().into_owned());
                    let top = walker.stack.last().map(|f| &f.nodes);
                    streamed |= matches!(top, Some(Nodes::Streamed(_)));
                }
            }
        }
        assert!(streamed, "the wide directory was read a node at a time");
        let mut want = names;
        want.extend(["zz-sub".to_string(), "zz-sub/inner".to_string()]);
        assert_eq!(seen.len(), want.len());
        assert!(seen == want, "every node once, in order");
        assert!(walker.take_skipped().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn skipped_and_finished_directories_drop_their_reads_ahead() {
        let (_dirs, mut walker, data_path) = walker_over_dirs().await;
        let mut entered = Vec::new();
        while let Some(item) = walker.next().await.unwrap() {
            if let WalkItem::Node { path, node } = item {
                // Enter the way down to `data` and every fourth directory below it.
                let below = path.strip_prefix(&data_path).ok();
                let keep = match below.and_then(|b| b.to_str()) {
                    None => data_path.starts_with(&path),
                    Some(b) => b.is_empty() || b[1..3].parse::<u32>().unwrap() % 4 == 0,
                };
                if node.node_type == NodeType::Dir && !keep {
                    // Its tree was asked for when `data` was entered: the read is dropped now.
                    let queued =
                        |w: &TreeWalker| w.ahead.as_ref().map(|a| a.queued().0 + a.queued().1);
                    let before = queued(&walker);
                    walker.skip_subtree();
                    assert_eq!(queued(&walker), before.map(|n| n - 1), "{}", path.display());
                } else if node.node_type == NodeType::File {
                    entered.push(path);
                }
            }
            // Nothing skipped is held or queued once the walk has left its directory.
            if let Some(ahead) = &walker.ahead {
                let (reading, wanted) = ahead.queued();
                assert!(reading <= 128 && wanted <= 40, "{reading} {wanted}");
            }
        }
        assert_eq!(entered.len(), 10 * 3);
        let ahead = walker.ahead.as_ref().unwrap();
        assert_eq!(ahead.queued(), (0, 0));
    }

    #[test]
    fn components_are_cleaned_like_go_path_clean() {
        assert_eq!(path_components("/"), Vec::<&OsStr>::new());
        assert_eq!(path_components("/data/./x//y/"), ["data", "x", "y"]);
        assert_eq!(path_components("data/x/../z"), ["data", "z"]);
        assert_eq!(path_components("/../a"), ["a"]);
        let raw = OsStr::from_bytes(b"/a\xff/./b\\c");
        assert_eq!(
            path_components(raw),
            [OsStr::from_bytes(b"a\xff"), OsStr::new("b\\c")]
        );
        assert_eq!(clean_path("a//b/../c"), Path::new("/a/c"));
    }

    #[test]
    fn join_handles_the_root() {
        assert_eq!(join_path(Path::new("/"), b"a"), Path::new("/a"));
        assert_eq!(join_path(Path::new("/a"), b"b"), Path::new("/a/b"));
        assert_eq!(
            join_path(Path::new("/a"), b"\xff").as_os_str().as_bytes(),
            b"/a/\xff"
        );
    }

    #[test]
    fn a_repeated_name_is_walked_once_for_its_first_node() {
        let mut link = Node::new("a", NodeType::Symlink);
        link.linktarget = b"/etc/shadow".to_vec();
        let tree = Tree {
            nodes: vec![
                Node::new("b", NodeType::File),
                Node::new("a", NodeType::File),
                link,
                Node::new("b", NodeType::Dir),
            ],
        };
        let mut skipped = Vec::new();
        let f = frame(None, "/d".into(), tree, &mut skipped);
        let Nodes::Whole(nodes) = f.nodes else {
            panic!("a small tree is decoded whole")
        };
        let kept: Vec<(Vec<u8>, NodeType)> = nodes.map(|n| (n.name, n.node_type)).collect();
        assert_eq!(
            kept,
            vec![
                (b"a".to_vec(), NodeType::File),
                (b"b".to_vec(), NodeType::File)
            ]
        );
        let paths: Vec<&Path> = skipped.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(paths, vec![Path::new("/d/a"), Path::new("/d/b")]);
    }

    #[test]
    fn escaping_names_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(check_name(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(check_name(b"..a").is_ok());
        assert!(check_name(b"a\xff").is_ok());
    }

    #[test]
    fn node_metadata_converts_go_mode_and_times() {
        let mut node = Node::new("f", NodeType::File);
        node.mode = go_mode::from_unix(NodeType::File, 0o4755);
        node.size = 9;
        node.user = "u".into();
        node.mtime = DateTime::parse_from_rfc3339("2020-09-13T12:26:40.5+02:00").unwrap();
        let m = node_metadata(&node);
        assert_eq!(m.mode, 0o4755);
        assert_eq!(m.size, 9);
        assert_eq!(m.user.as_deref(), Some("u"));
        assert_eq!(m.group, None);
        assert_eq!(
            m.mtime,
            Timestamp {
                secs: 1_599_992_800,
                nanos: 500_000_000
            }
        );
        assert_eq!(m.atime, None, "restic's zero time means unknown");
    }
}
