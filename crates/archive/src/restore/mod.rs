//! `restore`: writes a snapshot (or the subtree at one path) into a local directory.
//!
//! Nodes are visited depth-first with [`TreeWalker`], so memory holds only the trees of the
//! current path. Directories, links and empty files are made as they are visited; files with
//! content join a batch, and a full batch is written pack by pack (`content`: each pack is
//! read once, however many files need it). Every blob is authenticated and hash-checked by the
//! repository; a file whose data cannot be read (damaged or missing blob) is removed, recorded
//! as failed, and the restore goes on. A file's metadata is applied once its content is
//! written, and a directory's after everything in it, so their times stick.

mod content;
mod patterns;

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use snapback_repo::file::tree::{go_mode, zero_time};
use snapback_repo::file::{Node, NodeType};
use snapback_repo::{BlobIndex, Id, Repository};

use crate::tree_walk::{join_path, path_components, TreeWalker, WalkItem};
use crate::{Error, Result};
use content::{ContentWriter, Placed};
pub use patterns::PatternList;

/// Directories whose metadata waits for a batch.
const BATCH_DIRS: usize = 4096;

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
}

/// Restores `start` (a directory node such as [`crate::tree_walk::root_node`] or one found with
/// [`crate::tree_walk::find_node`], or a single non-directory node) into `opts.target`. For a
/// directory its contents land in the target (the directory itself is not recreated) and the
/// include/exclude patterns see paths relative to it, starting with `/`; any other node is
/// written as `target/<name>`.
///
/// Runs file I/O on the calling task (short, local writes); call it from a multi-threaded
/// runtime.
pub async fn restore(
    repo: &Repository,
    index: Arc<BlobIndex>,
    start: &Node,
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
    let include = PatternList::parse(&opts.include)?;
    let exclude = PatternList::parse(&opts.exclude)?;
    fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    let mut r = Restorer {
        index: index.clone(),
        content: ContentWriter::new(repo.clone(), opts.pack_reads, opts.blob_bytes),
        batch_files: opts.batch_files.max(1),
        batch_blobs: opts.batch_blobs.max(1),
        queued: Vec::new(),
        carried: 0,
        abandoned: false,
        dirs: Vec::new(),
        target: opts.target.clone(),
        is_root: is_root(),
        links: HashMap::new(),
        queued_links: HashSet::new(),
        summary: RestoreSummary::default(),
    };

    let subtree = match (start.node_type, start.subtree) {
        (NodeType::Dir, Some(id)) => id,
        (NodeType::Dir, None) => {
            return Err(Error::InvalidTree {
                tree: start.name_lossy().into_owned(),
                reason: "directory without subtree".into(),
            })
        }
        _ => {
            let path = join_path(Path::new("/"), &start.name);
            let (selected, _) = select(&include, &exclude, &path, start);
            if selected {
                r.restore_node(&path, start).await;
            }
            r.flush().await;
            return Ok(r.summary);
        }
    };

    let mut walker = TreeWalker::new(repo.clone(), index, subtree, Path::new("/"));
    // For each directory descended into: whether it was selected (its metadata is applied
    // at its end).
    let mut descended: Vec<Option<(PathBuf, Node)>> = Vec::new();
    let mut first = true;
    let mut last_dir = PathBuf::from("/");
    loop {
        let item = match walker.next().await {
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
                let (selected, descend) = select(&include, &exclude, &path, &node);
                let is_dir = node.node_type == NodeType::Dir;
                if selected {
                    r.restore_node(&path, &node).await;
                }
                if is_dir {
                    if descend {
                        last_dir = path.clone();
                        descended.push(selected.then_some((path, node)));
                    } else {
                        walker.skip_subtree();
                        if selected {
                            r.finish_dir(path, node).await;
                        }
                    }
                }
            }
            WalkItem::DirEnd { .. } => {
                if let Some(Some((path, node))) = descended.pop() {
                    r.finish_dir(path, node).await;
                }
            }
        }
    }
    r.flush().await;
    tracing::info!(
        files = r.summary.files,
        dirs = r.summary.dirs,
        bytes = r.summary.bytes,
        failed = r.summary.failed.len(),
        "restore finished"
    );
    Ok(r.summary)
}

/// restic's selection: (restore this node, descend into it).
fn select(include: &PatternList, exclude: &PatternList, path: &Path, node: &Node) -> (bool, bool) {
    let is_dir = node.node_type == NodeType::Dir;
    let (mut selected, mut descend) = if include.is_empty() {
        (true, is_dir)
    } else {
        let (m, child) = include.select(path);
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

struct Restorer {
    index: Arc<BlobIndex>,
    /// Writes the content of the queued files.
    content: ContentWriter,
    batch_files: usize,
    batch_blobs: usize,
    /// The files (or parts of one) in `content`'s batch, in the same order.
    queued: Vec<Queued>,
    /// Bytes written by the earlier parts of a file written in parts.
    carried: u64,
    /// An earlier part of the file being queued failed (it is removed; skip the rest).
    abandoned: bool,
    /// Directories whose metadata waits for the queued files (applied in order).
    dirs: Vec<(PathBuf, Node)>,
    target: PathBuf,
    is_root: bool,
    /// First restored path of each hard-link group, by (device id, inode).
    links: HashMap<(u64, u64), PathBuf>,
    /// Hard-link groups whose first file is queued.
    queued_links: HashSet<(u64, u64)>,
    summary: RestoreSummary,
}

/// A file queued for its content to be written.
struct Queued {
    path: PathBuf,
    dest: PathBuf,
    /// Its node without content; metadata is applied from it when `last`.
    node: Node,
    /// Its hard-link group.
    link: Option<(u64, u64)>,
    /// The last (or only) part of the file.
    last: bool,
}

impl Restorer {
    fn dest(&self, path: &Path) -> PathBuf {
        let mut p = self.target.clone();
        p.extend(path_components(path));
        p
    }

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

    async fn restore_node(&mut self, path: &Path, node: &Node) {
        let dest = self.dest(path);
        if let Err(NodeFailure(message)) = self.create(path, node, &dest).await {
            self.fail(path, message);
        }
    }

    /// Creates one node (a directory only gets its entry; its metadata comes in `finish_dir`).
    async fn create(&mut self, path: &Path, node: &Node, dest: &Path) -> Result<(), NodeFailure> {
        if let Some(parent) = dest.parent() {
            // Parents of an included node that were not selected themselves.
            fs::create_dir_all(parent)?;
        }
        match node.node_type {
            NodeType::Dir => {
                match fs::symlink_metadata(dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(dest)?;
                        make_dir(dest)?;
                    }
                    Err(_) => make_dir(dest)?,
                }
                self.summary.dirs += 1;
                return Ok(());
            }
            NodeType::File => {
                let key =
                    (node.links > 1 && node.inode != 0).then_some((node.device_id, node.inode));
                if key.is_some_and(|k| self.queued_links.contains(&k)) {
                    // The group's first file is not written yet: write it before linking to
                    // it (a link never shares a file that turns out damaged).
                    self.flush().await;
                }
                if let Some(first) = key.and_then(|k| self.links.get(&k)).cloned() {
                    remove_existing(dest)?;
                    fs::hard_link(&first, dest)?;
                    self.summary.files += 1;
                    return Ok(());
                }
                // The first of its group (or its first failed): written like any other file.
                drop(create_file(dest)?);
                let blobs = match self.locate(node.content.as_deref().unwrap_or_default()) {
                    Ok(b) => b,
                    Err(message) => {
                        discard(path, dest);
                        return Err(NodeFailure(message));
                    }
                };
                // Content, then metadata, when the batch is written.
                self.queue(path, dest, node, key, blobs).await;
                return Ok(());
            }
            NodeType::Symlink => {
                remove_existing(dest)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&node.linktarget), dest)?;
                self.summary.others += 1;
            }
            NodeType::Fifo => {
                remove_existing(dest)?;
                let c = cpath(dest)?;
                // SAFETY: `c` is a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(io::Error::last_os_error().into());
                }
                self.summary.others += 1;
            }
            NodeType::Dev | NodeType::Chardev => {
                remove_existing(dest)?;
                let kind = if node.node_type == NodeType::Dev {
                    libc::S_IFBLK
                } else {
                    libc::S_IFCHR
                };
                let c = cpath(dest)?;
                // SAFETY: `c` is a valid NUL-terminated path.
                if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, node.device as libc::dev_t) } != 0
                {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::PermissionDenied {
                        self.warn(path, format!("device node not created: {e}"));
                        return Ok(());
                    }
                    return Err(e.into());
                }
                self.summary.others += 1;
            }
            NodeType::Socket => {
                // A socket only exists while a process listens on it; restic skips them too.
                tracing::debug!(path = %path.display(), "socket not restored");
                return Ok(());
            }
            NodeType::Unknown => {
                self.warn(path, "node of unknown type skipped".into());
                return Ok(());
            }
        }
        for w in apply_metadata(dest, node, self.is_root) {
            self.warn(path, w);
        }
        Ok(())
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
    async fn queue(
        &mut self,
        path: &Path,
        dest: &Path,
        node: &Node,
        link: Option<(u64, u64)>,
        blobs: Vec<Placed>,
    ) {
        let node = Node {
            content: None,
            ..node.clone()
        };
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
            self.content.add(dest.to_path_buf(), part);
            self.queued.push(Queued {
                path: path.to_path_buf(),
                dest: dest.to_path_buf(),
                node: node.clone(),
                link,
                last,
            });
            if last {
                break;
            }
        }
        if let Some(k) = link {
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
                    for w in apply_metadata(&q.dest, &q.node, self.is_root) {
                        self.warn(&q.path, w);
                    }
                    if let Some(k) = q.link {
                        self.links.insert(k, q.dest);
                    }
                }
                Err(message) => {
                    self.carried = 0;
                    self.abandoned = !q.last;
                    discard(&q.path, &q.dest);
                    self.fail(&q.path, message);
                }
            }
        }
        self.queued_links.clear();
        for (path, node) in std::mem::take(&mut self.dirs) {
            self.apply_dir(&path, &node);
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
    async fn finish_dir(&mut self, path: PathBuf, node: Node) {
        if self.queued.is_empty() && self.dirs.is_empty() {
            self.apply_dir(&path, &node);
            return;
        }
        self.dirs.push((path, node));
        if self.dirs.len() >= BATCH_DIRS {
            self.flush().await;
        }
    }

    fn apply_dir(&mut self, path: &Path, node: &Node) {
        let dest = self.dest(path);
        if !dest.is_dir() {
            return;
        }
        for w in apply_metadata(&dest, node, self.is_root) {
            self.warn(path, w);
        }
    }
}

/// Removes a file whose content could not be written (never leave it partial).
fn discard(path: &Path, dest: &Path) {
    if let Err(e) = fs::remove_file(dest) {
        tracing::warn!(path = %path.display(), dest = %dest.display(), error = %e, "cannot remove partial file");
    }
}

/// Creates a file for restoring into (replacing what is there; never following a symlink).
fn create_file(dest: &Path) -> Result<fs::File, NodeFailure> {
    remove_existing(dest)?;
    Ok(fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)?)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn make_dir(dest: &Path) -> io::Result<()> {
    // Owner-only until its metadata is applied after its contents.
    fs::DirBuilder::new().mode(0o700).create(dest)
}

/// Removes a non-directory left at `dest` (a previous restore) so it is replaced, not followed.
fn remove_existing(dest: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory is in the way",
        )),
        Ok(_) => fs::remove_file(dest),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Owner, mode, xattrs and times, in that order (chown clears setuid/setgid, so it goes before
/// chmod; times last). Returns what could not be applied.
fn apply_metadata(dest: &Path, node: &Node, is_root: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    let symlink = node.node_type == NodeType::Symlink;
    if let Err(e) = std::os::unix::fs::lchown(dest, Some(node.uid), Some(node.gid)) {
        // Like cp -a and restic: only root must be able to give files away.
        if is_root || e.kind() != io::ErrorKind::PermissionDenied {
            warnings.push(format!("cannot set owner {}:{}: {e}", node.uid, node.gid));
        }
    }
    if !symlink {
        let perm = go_mode::to_unix_perm(node.mode);
        if let Err(e) = fs::set_permissions(dest, fs::Permissions::from_mode(perm)) {
            warnings.push(format!("cannot set mode {perm:o}: {e}"));
        }
    }
    match cpath(dest) {
        Ok(c) => {
            for x in &node.extended_attributes {
                let Ok(name) = CString::new(x.name.as_bytes()) else {
                    warnings.push(format!("extended attribute {:?}: NUL in name", x.name));
                    continue;
                };
                // SAFETY: valid NUL-terminated strings; the value pointer and length match.
                let rc = unsafe {
                    libc::lsetxattr(
                        c.as_ptr(),
                        name.as_ptr(),
                        x.value.as_ptr().cast(),
                        x.value.len(),
                        0,
                    )
                };
                if rc != 0 {
                    warnings.push(format!(
                        "cannot set extended attribute {}: {}",
                        x.name,
                        io::Error::last_os_error()
                    ));
                }
            }
            let atime = if node.atime == zero_time() {
                &node.mtime
            } else {
                &node.atime
            };
            let times = [timespec(atime), timespec(&node.mtime)];
            // SAFETY: valid path and a two-element timespec array, as utimensat requires.
            let rc = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc != 0 {
                warnings.push(format!("cannot set times: {}", io::Error::last_os_error()));
            }
        }
        Err(e) => warnings.push(e.to_string()),
    }
    warnings
}

fn timespec(t: &DateTime<FixedOffset>) -> libc::timespec {
    libc::timespec {
        tv_sec: t.timestamp() as libc::time_t,
        tv_nsec: t.timestamp_subsec_nanos().min(999_999_999) as _,
    }
}
