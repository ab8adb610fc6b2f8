//! `restore`: writes a snapshot (or the subtree at one path) into a local directory.
//!
//! Nodes are visited depth-first with [`TreeWalker`], so memory holds only the trees of the
//! current path. Directories, links and empty files are made as they are visited; files with
//! content join a batch, and a full batch is written pack by pack (`content`: each pack is
//! read once, however many files need it). Every blob is authenticated and hash-checked by the
//! repository; a file whose data cannot be read (damaged or missing blob) is removed, recorded
//! as failed, and the restore goes on. A file's metadata is applied once its content is
//! written, and a directory's after everything in it, so their times stick.
//!
//! Trees are hostile input: anyone holding the repository key can write one. Every node is
//! made relative to its parent directory's descriptor and nothing is done through a symlink
//! (see `fsops`); a node whose name is not a plain name is not restored (listed as failed, as
//! is every node after the first of a name that a tree repeats), so the restore exits 1 and
//! names them, the rest is restored.

mod content;
mod fsops;

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags};
use snapback_repo::file::{Node, NodeType};
use snapback_repo::{BlobIndex, Id, Repository};

use crate::tree_walk::{join_path, TreeWalker, WalkItem};
use crate::{Error, Result};
use content::{ContentWriter, Placed};
pub use fsops::raise_open_file_limit;
use fsops::LinkSource;
use snapback_pattern::Filter;
use snapback_stream::pending_links::PendingLinks;

/// Directories whose metadata waits for a batch.
const BATCH_DIRS: usize = 4096;

/// Hard-link groups remembered at most (about 130 bytes each: ~4 MiB). A group whose other
/// links lie outside the snapshot (a hard-link farm, a mail store linking messages between
/// folders) is never completed, so an unbounded map grew with every such file (184 MiB for
/// 300,000). Past the bound the oldest group is forgotten: a later link of it is restored as a
/// separate copy with the same content (counted in [`RestoreSummary::link_groups_forgotten`]).
/// Four times the backup side's bound because forgetting here costs a link, not a re-read.
pub const LINK_GROUPS_MAX: usize = 32_768;

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Directory the nodes are written into (created if missing). A node at snapshot path
    /// `/a/b` is written to `target/a/b`.
    pub target: PathBuf,
    /// Only nodes matching one of these patterns (and, for directories, everything below them)
    /// are restored; their parent directories are created. Empty: everything. Raw bytes, so
    /// a pattern can name a file whose name is not UTF-8.
    pub include: Vec<OsString>,
    /// Nodes matching one of these patterns (and everything below them) are skipped.
    pub exclude: Vec<OsString>,
    /// Like `include`, ignoring case (restic's `--iinclude`).
    pub iinclude: Vec<OsString>,
    /// Like `exclude`, ignoring case (restic's `--iexclude`).
    pub iexclude: Vec<OsString>,
    /// Pack ranges read concurrently (each one request on S3).
    pub pack_reads: usize,
    /// Bytes of blobs in memory at once, over all files (a blob counts its encrypted and its
    /// plaintext size from being received until it is written). One blob larger than this is
    /// still read, alone.
    pub blob_bytes: usize,
    /// Files whose content is written together (planned by pack); their nodes wait in memory
    /// meanwhile.
    pub batch_files: usize,
    /// Blob references written together; a file with more is written in parts.
    pub batch_blobs: usize,
}

impl RestoreOptions {
    /// Restore everything into `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            target: target.into(),
            include: Vec::new(),
            exclude: Vec::new(),
            iinclude: Vec::new(),
            iexclude: Vec::new(),
            pack_reads: 8,
            blob_bytes: 24 << 20,
            batch_files: 2048,
            batch_blobs: 16384,
        }
    }
}

/// A node that could not be restored (or restored only partly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreProblem {
    /// Snapshot path of the node (relative to the restored tree's root), raw bytes.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// The outcome of a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Regular files restored (hard links included).
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Symlinks, fifos and devices restored.
    pub others: u64,
    /// File content bytes written.
    pub bytes: u64,
    /// Nodes that were not restored (a damaged blob, a local I/O error). A failed file is
    /// removed, never left partial.
    pub failed: Vec<RestoreProblem>,
    /// Nodes restored without some of their metadata, or skipped for lack of permission
    /// (device nodes when not root).
    pub warnings: Vec<RestoreProblem>,
    /// Hard-link groups forgotten before all their links came (more than
    /// [`LINK_GROUPS_MAX`] open at once); a later link of one was restored as a separate copy.
    /// Usual when the files' other links lie outside the snapshot, as they then never come.
    pub link_groups_forgotten: u64,
}

/// Restores `start` (a directory node such as [`crate::tree_walk::root_node`] or one found with
/// [`crate::tree_walk::find_node`], or a single non-directory node) into `opts.target`. For a
/// directory its contents land in the target (the directory itself is not recreated) and the
/// include/exclude patterns see paths relative to it, starting with `/`; any other node is
/// written as `target/<name>`.
///
/// Trees are untrusted input (see `fsops`): a node whose name could leave its directory, or
/// the later nodes of a name a tree repeats, are not restored and are reported in
/// [`RestoreSummary::failed`]; nothing is written through a symlink, from the snapshot or
/// already in the target. Raises the process's soft limit of open files to its hard limit
/// (files wait open for their content), and writes smaller batches when that stays low.
///
/// Runs file I/O on the calling task (short, local writes); call it from a multi-threaded
/// runtime.
pub async fn restore(
    repo: &Repository,
    index: Arc<BlobIndex>,
    start: &Node,
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
    let include = Filter::new(&opts.include, &opts.iinclude)?;
    let exclude = Filter::new(&opts.exclude, &opts.iexclude)?;
    // The target itself is the caller's choice: created and opened as named, links and all.
    fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    let root = rustix::fs::open(
        &opts.target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(&opts.target, e.into()))?;
    // Descriptors: the queued files, the directories waiting for metadata, the current path.
    let fds = fsops::raise_open_file_limit().saturating_sub(FDS_RESERVED);
    let mut r = Restorer {
        index: index.clone(),
        content: ContentWriter::new(repo.clone(), opts.pack_reads, opts.blob_bytes),
        batch_files: opts.batch_files.max(1).min(fd_share(fds, 2)),
        batch_dirs: BATCH_DIRS.min(fd_share(fds, 4)),
        batch_blobs: opts.batch_blobs.max(1),
        queued: Vec::new(),
        carried: 0,
        abandoned: false,
        dirs: Vec::new(),
        root: Arc::new(root),
        levels: Vec::new(),
        is_root: fsops::is_root(),
        links: PendingLinks::new(LINK_GROUPS_MAX),
        queued_links: HashSet::new(),
        summary: RestoreSummary::default(),
    };

    let subtree = match start_subtree(start)? {
        Some(id) => id,
        None => {
            let path = join_path(Path::new("/"), &start.name);
            let (selected, _) = select(&include, &exclude, &path, start);
            if selected {
                match node_name(start) {
                    Ok(name) => {
                        r.restore_node(&path, name, start).await;
                    }
                    Err(message) => r.fail(&path, message),
                }
            }
            r.flush().await;
            return Ok(r.summary);
        }
    };

    let mut walker = TreeWalker::new(repo.clone(), index, subtree, Path::new("/"));
    let mut first = true;
    let mut last_dir = PathBuf::from("/");
    loop {
        let next = walker.next().await;
        for (path, message) in walker.take_skipped() {
            r.fail(&path, message);
        }
        let item = match next {
            Ok(Some(item)) => item,
            Ok(None) => break,
            // Without the root tree there is nothing to restore.
            Err(e) if first => return Err(e),
            Err(e) => {
                r.fail(&last_dir, format!("cannot read directory contents: {e}"));
                continue;
            }
        };
        first = false;
        match item {
            WalkItem::Node { path, node } => {
                let is_dir = node.node_type == NodeType::Dir;
                let name = match node_name(&node) {
                    Ok(name) => name.to_owned(),
                    Err(message) => {
                        r.fail(&path, message);
                        if is_dir {
                            walker.skip_subtree();
                        }
                        continue;
                    }
                };
                let (selected, mut descend) = select(&include, &exclude, &path, &node);
                let mut fd = None;
                if selected {
                    fd = r.restore_node(&path, &name, &node).await;
                    // A directory that could not be made has nothing to restore into.
                    descend &= fd.is_some();
                }
                if is_dir {
                    if descend {
                        last_dir = path.clone();
                        r.levels.push(Level {
                            name,
                            fd,
                            restored: selected.then_some((path, node)),
                        });
                    } else {
                        walker.skip_subtree();
                        if let Some(fd) = fd {
                            r.finish_dir(path, node, fd).await;
                        }
                    }
                }
            }
            WalkItem::DirEnd { .. } => {
                if let Some(level) = r.levels.pop() {
                    if let (Some((path, node)), Some(fd)) = (level.restored, level.fd) {
                        r.finish_dir(path, node, fd).await;
                    }
                }
            }
        }
    }
    r.flush().await;
    r.summary.link_groups_forgotten = r.links.forgotten();
    tracing::info!(
        files = r.summary.files,
        dirs = r.summary.dirs,
        bytes = r.summary.bytes,
        failed = r.summary.failed.len(),
        "restore finished"
    );
    Ok(r.summary)
}

/// Descriptors kept free of the restore's own use (repository connections, logs, the runtime).
const FDS_RESERVED: u64 = 256;

/// `1/part` of `fds` descriptors, at least a few.
fn fd_share(fds: u64, part: u64) -> usize {
    usize::try_from(fds / part).unwrap_or(usize::MAX).max(8)
}

/// The tree under `start` (a directory), or `None` when `start` is a single node to restore
/// on its own.
pub(crate) fn start_subtree(start: &Node) -> Result<Option<Id>> {
    match (start.node_type, start.subtree) {
        (NodeType::Dir, Some(id)) => Ok(Some(id)),
        (NodeType::Dir, None) => Err(Error::InvalidTree {
            tree: start.name_lossy().into_owned(),
            reason: "directory without subtree".into(),
        }),
        _ => Ok(None),
    }
}

/// The name of a node, checked: the one place restore reads a name from a tree. A name that
/// is empty, `.` or `..`, or holds `/` or NUL would leave its directory (or fail half way); the
/// node is not restored, like restic refuses it.
pub(crate) fn node_name(node: &Node) -> Result<&OsStr, String> {
    crate::tree_walk::check_name(&node.name)?;
    Ok(OsStr::from_bytes(&node.name))
}

/// restic's selection: (restore this node, descend into it).
pub(crate) fn select(include: &Filter, exclude: &Filter, path: &Path, node: &Node) -> (bool, bool) {
    let is_dir = node.node_type == NodeType::Dir;
    let (mut selected, mut descend) = if include.is_empty() {
        (true, is_dir)
    } else {
        let (m, child) = include.matches_with_child(path);
        (m, child && is_dir)
    };
    if !exclude.is_empty() && exclude.matches(path) {
        selected = false;
        descend = false;
    }
    (selected, descend)
}

/// Why one node could not be restored.
struct NodeFailure(String);

impl From<io::Error> for NodeFailure {
    fn from(e: io::Error) -> Self {
        NodeFailure(e.to_string())
    }
}

/// A directory on the current path of the walk.
struct Level {
    name: OsString,
    /// Its descriptor, once made: at once when it is restored itself, when a node inside
    /// needs it otherwise (a parent of an included node).
    fd: Option<Arc<OwnedFd>>,
    /// Its path and node when it is restored itself (metadata at its end).
    restored: Option<(PathBuf, Node)>,
}

struct Restorer {
    index: Arc<BlobIndex>,
    /// Writes the content of the queued files.
    content: ContentWriter,
    batch_files: usize,
    /// Directories whose metadata waits for a batch, at most.
    batch_dirs: usize,
    batch_blobs: usize,
    /// The files (or parts of one) in `content`'s batch, in the same order.
    queued: Vec<Queued>,
    /// Bytes written by the earlier parts of a file written in parts.
    carried: u64,
    /// An earlier part of the file being queued failed (it is removed; skip the rest).
    abandoned: bool,
    /// Directories whose metadata waits for the queued files (applied in order).
    dirs: Vec<(PathBuf, Node, Arc<OwnedFd>)>,
    /// The target directory.
    root: Arc<OwnedFd>,
    /// The directories from the target down to the current node's parent.
    levels: Vec<Level>,
    is_root: bool,
    /// First restored file of each hard-link group, by (device id, inode), until the group's
    /// last link came ([`PendingLinks`] counts them). Bounded: a group whose other links lie
    /// outside the snapshot never sees its last.
    links: PendingLinks<(u64, u64), LinkSource>,
    /// Hard-link groups whose first file is queued.
    queued_links: HashSet<(u64, u64)>,
    summary: RestoreSummary,
}

/// A file queued for its content to be written.
struct Queued {
    path: PathBuf,
    /// Its directory and name (to remove it if its content fails).
    parent: Arc<OwnedFd>,
    name: OsString,
    /// The file, open since it was created; its content and metadata go through this.
    file: Arc<fs::File>,
    /// Its node without content; metadata is applied from it when `last`.
    node: Node,
    /// Its hard-link group and where later members link to.
    link: Option<((u64, u64), LinkSource)>,
    /// The last (or only) part of the file.
    last: bool,
}

impl Restorer {
    fn fail(&mut self, path: &Path, message: String) {
        tracing::warn!(path = %path.display(), error = %message, "not restored");
        self.summary.failed.push(RestoreProblem {
            path: path.to_path_buf(),
            message,
        });
    }

    fn warn(&mut self, path: &Path, message: String) {
        tracing::warn!(path = %path.display(), warning = %message, "restore warning");
        self.summary.warnings.push(RestoreProblem {
            path: path.to_path_buf(),
            message,
        });
    }

    /// Restores one node; a directory's descriptor when it is one and could be made.
    async fn restore_node(
        &mut self,
        path: &Path,
        name: &OsStr,
        node: &Node,
    ) -> Option<Arc<OwnedFd>> {
        match self.create(path, name, node).await {
            Ok(fd) => fd,
            Err(NodeFailure(message)) => {
                self.fail(path, message);
                None
            }
        }
    }

    /// The current node's parent directory, making the ones not restored themselves (parents
    /// of an included node) on the way.
    fn parent(&mut self) -> Result<Arc<OwnedFd>, NodeFailure> {
        let made = self
            .levels
            .iter()
            .rposition(|l| l.fd.is_some())
            .map_or(0, |i| i + 1);
        let mut fd = match made {
            0 => self.root.clone(),
            i => self.levels[i - 1]
                .fd
                .clone()
                .unwrap_or_else(|| self.root.clone()),
        };
        for level in &mut self.levels[made..] {
            let dir = Arc::new(fsops::make_plain_dir(fd.as_fd(), &level.name)?);
            level.fd = Some(dir.clone());
            fd = dir;
        }
        Ok(fd)
    }

    /// Creates one node (a directory only gets its entry; its metadata comes in `finish_dir`).
    async fn create(
        &mut self,
        path: &Path,
        name: &OsStr,
        node: &Node,
    ) -> Result<Option<Arc<OwnedFd>>, NodeFailure> {
        let parent = self.parent()?;
        let dir = parent.as_fd();
        match node.node_type {
            NodeType::Dir => {
                let fd = fsops::make_node_dir(dir, name)?;
                self.summary.dirs += 1;
                return Ok(Some(Arc::new(fd)));
            }
            NodeType::File => {
                let key =
                    (node.links > 1 && node.inode != 0).then_some((node.device_id, node.inode));
                if key.is_some_and(|k| self.queued_links.contains(&k)) {
                    // The group's first file is not written yet: write it before linking to
                    // it (a link never shares a file that turns out damaged).
                    self.flush().await;
                }
                if let Some(k) = key {
                    let root = self.root.as_fd();
                    let linked = self
                        .links
                        .next_link(&k, |first| fsops::hard_link(root, first, dir, name));
                    if let Some(linked) = linked {
                        linked?;
                        self.summary.files += 1;
                        return Ok(None);
                    }
                }
                // The first of its group (or its first failed): written like any other file.
                let file = fsops::create_file(dir, name)?;
                let blobs = match self.locate(node.content.as_deref().unwrap_or_default()) {
                    Ok(b) => b,
                    Err(message) => {
                        drop(file);
                        discard(path, dir, name);
                        return Err(NodeFailure(message));
                    }
                };
                let link = match key {
                    Some(k) => {
                        let dirs = self.levels.iter().map(|l| l.name.as_os_str());
                        Some((k, LinkSource::of(&file, dirs, name)?))
                    }
                    None => None,
                };
                // Content, then metadata, when the batch is written.
                let file = Arc::new(file);
                self.queue(path, &parent, name, file, node, link, blobs)
                    .await;
                return Ok(None);
            }
            NodeType::Symlink => {
                fsops::make_symlink(dir, name, OsStr::from_bytes(&node.linktarget))?;
                self.summary.others += 1;
            }
            NodeType::Fifo => {
                fsops::make_special(dir, name, FileType::Fifo, 0)?;
                self.summary.others += 1;
            }
            NodeType::Dev | NodeType::Chardev => {
                let kind = if node.node_type == NodeType::Dev {
                    FileType::BlockDevice
                } else {
                    FileType::CharacterDevice
                };
                if let Err(e) = fsops::make_special(dir, name, kind, node.device) {
                    if e.kind() == io::ErrorKind::PermissionDenied {
                        self.warn(path, format!("device node not created: {e}"));
                        return Ok(None);
                    }
                    return Err(e.into());
                }
                self.summary.others += 1;
            }
            NodeType::Socket => {
                // A socket only exists while a process listens on it; restic skips them too.
                tracing::debug!(path = %path.display(), "socket not restored");
                return Ok(None);
            }
            NodeType::Unknown => {
                self.warn(path, "node of unknown type skipped".into());
                return Ok(None);
            }
        }
        for w in fsops::apply_at_metadata(dir, name, node, self.is_root) {
            self.warn(path, w);
        }
        Ok(None)
    }

    /// Each blob of a file with where it is stored and its offset in the file.
    fn locate(&self, blobs: &[Id]) -> Result<Vec<Placed>, String> {
        let mut offset = 0;
        blobs
            .iter()
            .map(|id| {
                let loc = self.index.get(id).ok_or_else(|| {
                    format!(
                        "cannot read file content: {}",
                        snapback_repo::Error::BlobNotFound(*id)
                    )
                })?;
                let placed = Placed {
                    id: *id,
                    loc,
                    offset,
                };
                offset += loc.plain_length();
                Ok(placed)
            })
            .collect()
    }

    /// Queues a created file's content (in parts if it does not fit in one batch), writing
    /// the batch whenever it is full.
    #[allow(clippy::too_many_arguments)]
    async fn queue(
        &mut self,
        path: &Path,
        parent: &Arc<OwnedFd>,
        name: &OsStr,
        file: Arc<fs::File>,
        node: &Node,
        link: Option<((u64, u64), LinkSource)>,
        blobs: Vec<Placed>,
    ) {
        let node = Node {
            content: None,
            ..node.clone()
        };
        let key = link.as_ref().map(|(k, _)| *k);
        let mut rest = blobs.into_iter().peekable();
        loop {
            let room = self.batch_blobs.saturating_sub(self.content.refs());
            if self.content.files() >= self.batch_files || (room == 0 && rest.peek().is_some()) {
                self.flush().await;
                if std::mem::take(&mut self.abandoned) {
                    return;
                }
                continue;
            }
            let part: Vec<Placed> = rest.by_ref().take(room).collect();
            let last = rest.peek().is_none();
            self.content.add(file.clone(), part);
            self.queued.push(Queued {
                path: path.to_path_buf(),
                parent: parent.clone(),
                name: name.to_owned(),
                file: file.clone(),
                node: node.clone(),
                link: if last { link.clone() } else { None },
                last,
            });
            if last {
                break;
            }
        }
        if let Some(k) = key {
            self.queued_links.insert(k);
        }
    }

    /// Writes the queued files' content, applies their metadata (or removes the failed
    /// ones), then the waiting directories' metadata.
    async fn flush(&mut self) {
        let outcomes = self.content.flush().await;
        for (q, outcome) in std::mem::take(&mut self.queued).into_iter().zip(outcomes) {
            match outcome {
                Ok(n) if !q.last => self.carried += n,
                Ok(n) => {
                    let written = std::mem::take(&mut self.carried) + n;
                    self.check_size(&q.path, written, q.node.size);
                    self.summary.bytes += written;
                    self.summary.files += 1;
                    for w in fsops::apply_fd_metadata(q.file.as_fd(), &q.node, self.is_root) {
                        self.warn(&q.path, w);
                    }
                    if let Some((k, source)) = q.link {
                        self.links.insert(k, source, q.node.links.saturating_sub(1));
                    }
                }
                Err(message) => {
                    self.carried = 0;
                    self.abandoned = !q.last;
                    discard(&q.path, q.parent.as_fd(), &q.name);
                    self.fail(&q.path, message);
                }
            }
        }
        self.queued_links.clear();
        for (path, node, fd) in std::mem::take(&mut self.dirs) {
            self.apply_dir(&path, &node, &fd);
        }
    }

    /// Warns when a file's content is not the size its node records.
    fn check_size(&mut self, path: &Path, written: u64, recorded: u64) {
        if written != recorded {
            self.warn(
                path,
                format!("content is {written} bytes, the snapshot records {recorded}"),
            );
        }
    }

    /// Applies a directory's metadata once everything inside it is written: now, or after
    /// the queued files (and the directories already waiting, which are inside it).
    async fn finish_dir(&mut self, path: PathBuf, node: Node, fd: Arc<OwnedFd>) {
        if self.queued.is_empty() && self.dirs.is_empty() {
            self.apply_dir(&path, &node, &fd);
            return;
        }
        self.dirs.push((path, node, fd));
        if self.dirs.len() >= self.batch_dirs {
            self.flush().await;
        }
    }

    fn apply_dir(&mut self, path: &Path, node: &Node, fd: &OwnedFd) {
        for w in fsops::apply_fd_metadata(fd.as_fd(), node, self.is_root) {
            self.warn(path, w);
        }
    }
}

/// Removes a file whose content could not be written (never leave it partial).
fn discard(path: &Path, parent: BorrowedFd<'_>, name: &OsStr) {
    if let Err(e) = fsops::remove_file(parent, name) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove partial file");
    }
}
