//! `restore`: writes a snapshot (or the subtree at one path) into a local directory.
//!
//! Nodes are visited depth-first with [`TreeWalker`], so memory holds only the trees of the
//! current path plus the blobs being written. Several files are written at once (on S3 every
//! blob is a request, so one file at a time is latency-bound), each file's blobs fetched
//! concurrently and written at their offsets; a semaphore bounds the blobs in memory overall.
//! Every blob is authenticated and hash-checked by the repository; a file whose data cannot be
//! read (damaged or missing blob) is removed, recorded as failed, and the restore goes on.
//! Directory metadata is applied after the directory's contents, so their times stick.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use futures::StreamExt;
use snapback_repo::file::tree::{go_mode, zero_time};
use snapback_repo::file::{Node, NodeType};
use snapback_repo::{BlobIndex, Id, Repository};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::blob_reader::BlobReader;
use crate::budget::ByteBudget;
use crate::tree_walk::{path_components, TreeWalker, WalkItem};
use crate::{Error, Result};

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Directory the nodes are written into (created if missing). A node at snapshot path
    /// `/a/b` is written to `target/a/b`.
    pub target: PathBuf,
    /// Only nodes matching one of these patterns (and, for directories, everything below them)
    /// are restored; their parent directories are created. Empty: everything.
    pub include: Vec<String>,
    /// Nodes matching one of these patterns (and everything below them) are skipped.
    pub exclude: Vec<String>,
    /// Blobs fetched concurrently, over all files.
    pub blob_reads: usize,
    /// Bytes of blobs in memory at once, over all files (a blob counts its encrypted and its
    /// plaintext size from being fetched until it is written). One blob larger than this is
    /// still read, alone.
    pub blob_bytes: usize,
    /// Files written concurrently.
    pub file_writes: usize,
}

impl RestoreOptions {
    /// Restore everything into `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            target: target.into(),
            include: Vec::new(),
            exclude: Vec::new(),
            blob_reads: 8,
            blob_bytes: 24 << 20,
            file_writes: 8,
        }
    }
}

/// A node that could not be restored (or restored only partly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreProblem {
    /// Snapshot path of the node (relative to the restored tree's root).
    pub path: String,
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
    let reader = Arc::new(BlobReader::new(repo.clone(), index.clone()).await?);
    let mut r = Restorer {
        reader,
        target: opts.target.clone(),
        blob_reads: opts.blob_reads.max(1),
        blob_permits: Arc::new(Semaphore::new(opts.blob_reads.max(1))),
        byte_budget: ByteBudget::new(opts.blob_bytes),
        file_writes: opts.file_writes.max(1),
        writing: JoinSet::new(),
        is_root: is_root(),
        links: HashMap::new(),
        summary: RestoreSummary::default(),
    };

    let subtree = match (start.node_type, start.subtree) {
        (NodeType::Dir, Some(id)) => id,
        (NodeType::Dir, None) => {
            return Err(Error::InvalidTree {
                tree: start.name.clone(),
                reason: "directory without subtree".into(),
            })
        }
        _ => {
            let path = format!("/{}", start.name);
            let (selected, _) = select(&include, &exclude, &path, start);
            if selected {
                r.restore_node(&path, start).await;
            }
            r.drain().await;
            return Ok(r.summary);
        }
    };

    let mut walker = TreeWalker::new(repo.clone(), index, subtree, "/");
    // For each directory descended into: whether it was selected (its metadata is applied
    // at its end).
    let mut descended: Vec<Option<(String, Node)>> = Vec::new();
    let mut first = true;
    let mut last_dir = String::from("/");
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
                            r.finish_dir(&path, &node);
                        }
                    }
                }
            }
            WalkItem::DirEnd { .. } => {
                if let Some(Some((path, node))) = descended.pop() {
                    r.finish_dir(&path, &node);
                }
            }
        }
    }
    r.drain().await;
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
fn select(include: &PatternList, exclude: &PatternList, path: &str, node: &Node) -> (bool, bool) {
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
    reader: Arc<BlobReader>,
    target: PathBuf,
    blob_reads: usize,
    /// Blobs being fetched or waiting to be written, over all files.
    blob_permits: Arc<Semaphore>,
    /// Their bytes.
    byte_budget: ByteBudget,
    file_writes: usize,
    /// Files whose content is being written.
    writing: JoinSet<FileWritten>,
    is_root: bool,
    /// First restored path of each hard-link group, by (device id, inode).
    links: HashMap<(u64, u64), PathBuf>,
    summary: RestoreSummary,
}

impl Restorer {
    fn dest(&self, path: &str) -> PathBuf {
        let mut p = self.target.clone();
        p.extend(path_components(path));
        p
    }

    fn fail(&mut self, path: &str, message: String) {
        tracing::warn!(path, error = %message, "not restored");
        self.summary.failed.push(RestoreProblem {
            path: path.to_string(),
            message,
        });
    }

    fn warn(&mut self, path: &str, message: String) {
        tracing::warn!(path, warning = %message, "restore warning");
        self.summary.warnings.push(RestoreProblem {
            path: path.to_string(),
            message,
        });
    }

    async fn restore_node(&mut self, path: &str, node: &Node) {
        let dest = self.dest(path);
        if let Err(NodeFailure(message)) = self.create(path, node, &dest).await {
            self.fail(path, message);
        }
    }

    /// Creates one node (a directory only gets its entry; its metadata comes in `finish_dir`).
    async fn create(&mut self, path: &str, node: &Node, dest: &Path) -> Result<(), NodeFailure> {
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
                if let Some(first) = key.and_then(|k| self.links.get(&k)).cloned() {
                    remove_existing(dest)?;
                    fs::hard_link(&first, dest)?;
                    self.summary.files += 1;
                    return Ok(());
                }
                let file = create_file(dest)?;
                if key.is_none() {
                    // Content and then metadata in the background; see `collect`.
                    self.spawn_write(path, node, dest, file).await;
                    return Ok(());
                }
                // The first of a hard-link group is written before its links are made, so
                // a link never shares a file that turns out damaged.
                let job = self.write_job(path, node, dest, file);
                let written = job.run().await?;
                self.check_size(path, written, node.size);
                self.summary.bytes += written;
                self.summary.files += 1;
                if let Some(k) = key {
                    self.links.insert(k, dest.to_path_buf());
                }
            }
            NodeType::Symlink => {
                remove_existing(dest)?;
                std::os::unix::fs::symlink(&node.linktarget, dest)?;
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
                tracing::debug!(path, "socket not restored");
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

    fn write_job(&self, path: &str, node: &Node, dest: &Path, file: fs::File) -> WriteJob {
        WriteJob {
            reader: self.reader.clone(),
            permits: self.blob_permits.clone(),
            budget: self.byte_budget.clone(),
            blob_reads: self.blob_reads,
            blobs: node.content.clone().unwrap_or_default(),
            file,
            dest: dest.to_path_buf(),
            path: path.to_string(),
        }
    }

    /// Starts writing a file's content (then its metadata) once fewer than `file_writes` are
    /// under way.
    async fn spawn_write(&mut self, path: &str, node: &Node, dest: &Path, file: fs::File) {
        while self.writing.len() >= self.file_writes {
            self.collect_one().await;
        }
        let job = self.write_job(path, node, dest, file);
        let node = node.clone();
        let is_root = self.is_root;
        self.writing.spawn(async move {
            let path = job.path.clone();
            let dest = job.dest.clone();
            let result = job.run().await;
            let warnings = match &result {
                Ok(_) => apply_metadata(&dest, &node, is_root),
                Err(_) => Vec::new(),
            };
            FileWritten {
                path,
                size: node.size,
                result,
                warnings,
            }
        });
    }

    /// Records the outcome of one finished file write.
    async fn collect_one(&mut self) {
        let Some(done) = self.writing.join_next().await else {
            return;
        };
        match done {
            Ok(w) => match w.result {
                Ok(written) => {
                    self.check_size(&w.path, written, w.size);
                    self.summary.bytes += written;
                    self.summary.files += 1;
                    for warning in w.warnings {
                        self.warn(&w.path, warning);
                    }
                }
                Err(NodeFailure(message)) => self.fail(&w.path, message),
            },
            Err(e) => self.fail("(unknown file)", format!("a file writer task failed: {e}")),
        }
    }

    /// Waits for every file still being written.
    async fn drain(&mut self) {
        while !self.writing.is_empty() {
            self.collect_one().await;
        }
    }

    /// Warns when a file's content is not the size its node records.
    fn check_size(&mut self, path: &str, written: u64, recorded: u64) {
        if written != recorded {
            self.warn(
                path,
                format!("content is {written} bytes, the snapshot records {recorded}"),
            );
        }
    }

    /// Applies a directory's metadata once everything inside it is written.
    fn finish_dir(&mut self, path: &str, node: &Node) {
        let dest = self.dest(path);
        if !dest.is_dir() {
            return;
        }
        for w in apply_metadata(&dest, node, self.is_root) {
            self.warn(path, w);
        }
    }
}

/// A file's finished write, reported back to the restorer.
struct FileWritten {
    path: String,
    /// Size the snapshot records.
    size: u64,
    result: Result<u64, NodeFailure>,
    warnings: Vec<String>,
}

/// Everything writing one file's content needs, owned, so it can run as its own task.
struct WriteJob {
    reader: Arc<BlobReader>,
    permits: Arc<Semaphore>,
    budget: ByteBudget,
    blob_reads: usize,
    blobs: Vec<Id>,
    file: fs::File,
    dest: PathBuf,
    path: String,
}

impl WriteJob {
    /// Writes the content blob by blob (a bounded number fetched concurrently, each holding a
    /// permit until written); on a data error the partial file is removed.
    async fn run(self) -> Result<u64, NodeFailure> {
        let WriteJob {
            reader,
            permits,
            budget,
            blob_reads,
            blobs,
            file,
            dest,
            path,
        } = self;
        let mut loads = futures::stream::iter(blobs.iter().copied())
            .map(|id| {
                let (reader, permits, budget) = (reader.clone(), permits.clone(), budget.clone());
                async move {
                    // Bytes first, then a read slot: every file takes them in this order, and
                    // the semaphores are fair, so a file's blobs get them in file order.
                    let bytes = budget
                        .take(reader.held_bytes(&id))
                        .await
                        .map_err(|e| NodeFailure(e.to_string()))?;
                    let permit = permits
                        .acquire_owned()
                        .await
                        .map_err(|e| NodeFailure(e.to_string()))?;
                    // Opening a blob (MAC, zstd, SHA-256) is most of a restore's CPU: as a
                    // task of its own, a large file's blobs are opened on every core, not
                    // only on the one running this file's task.
                    let data = tokio::spawn(async move { reader.load(&id).await })
                        .await
                        .map_err(|e| NodeFailure(format!("a blob reader task failed: {e}")))?
                        .map_err(|e| NodeFailure(format!("cannot read file content: {e}")))?;
                    Ok::<_, NodeFailure>(((bytes, permit), data))
                }
            })
            .buffered(blob_reads);
        let mut offset = 0u64;
        let result: Result<(), NodeFailure> = async {
            while let Some(blob) = loads.next().await {
                let (_permit, data) = blob?;
                file.write_all_at(&data, offset)?;
                offset += data.len() as u64;
            }
            Ok(())
        }
        .await;
        drop(loads);
        if let Err(e) = result {
            drop(file);
            if let Err(re) = fs::remove_file(&dest) {
                tracing::warn!(path, dest = %dest.display(), error = %re, "cannot remove partial file");
            }
            return Err(e);
        }
        Ok(offset)
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

/// Include/exclude patterns with restic's semantics: a pattern is split at `/` into
/// components matched with Go's `filepath.Match` rules (`*`, `?`, `[...]`, `\` escapes) plus
/// `**` for any number of components. A pattern starting with `/` is anchored at the root;
/// any other matches at any depth. A pattern matching a directory matches everything below it.
#[derive(Debug, Clone, Default)]
pub struct PatternList {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Root,
    DoubleStar,
    Glob(Vec<char>),
}

#[derive(Debug, Clone)]
struct Pattern {
    parts: Vec<Part>,
}

impl PatternList {
    /// Parses the patterns; empty ones are ignored.
    pub fn parse(patterns: &[String]) -> Result<Self> {
        let mut out = Vec::new();
        for p in patterns {
            let mut parts = Vec::new();
            if p.starts_with('/') {
                parts.push(Part::Root);
            }
            for c in path_components(p) {
                if c == "**" {
                    parts.push(Part::DoubleStar);
                } else {
                    let chars: Vec<char> = c.chars().collect();
                    if !glob_valid(&chars) {
                        return Err(Error::InvalidPattern {
                            pattern: p.clone(),
                            reason: "malformed pattern (unclosed [ or trailing \\)".into(),
                        });
                    }
                    parts.push(Part::Glob(chars));
                }
            }
            if parts.iter().any(|p| *p != Part::Root) {
                out.push(Pattern { parts });
            }
        }
        Ok(PatternList { patterns: out })
    }

    /// No patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether an absolute snapshot path (or one of its ancestors) matches a pattern.
    pub fn matches(&self, path: &str) -> bool {
        let strs = split_abs(path);
        self.patterns.iter().any(|p| match_parts(&p.parts, &strs))
    }

    /// (the path matches, something below it may match) for an absolute snapshot path.
    pub fn select(&self, path: &str) -> (bool, bool) {
        let strs = split_abs(path);
        let mut matched = false;
        let mut child = false;
        for p in &self.patterns {
            matched = matched || match_parts(&p.parts, &strs);
            child = child || child_may_match(&p.parts, &strs);
            if matched && child {
                break;
            }
        }
        (matched, child)
    }
}

/// `/a/b` → `["/", "a", "b"]`.
fn split_abs(path: &str) -> Vec<&str> {
    let mut v = vec!["/"];
    v.extend(path_components(path));
    v
}

fn part_matches(part: &Part, s: &str) -> bool {
    match part {
        Part::Root => s == "/",
        // Expanded before matching.
        Part::DoubleStar => false,
        Part::Glob(g) => s != "/" && glob_match(g, &s.chars().collect::<Vec<_>>()),
    }
}

/// Whether the pattern matches a contiguous run of the path's components (anchored at the
/// root for rooted patterns): so it matches a node or any of its ancestors.
fn match_parts(parts: &[Part], strs: &[&str]) -> bool {
    if let Some(pos) = parts.iter().position(|p| *p == Part::DoubleStar) {
        // `**` stands for 0..n components: try each number of single-component wildcards.
        let fixed = parts.len() - 1;
        for k in 0..=strs.len().saturating_sub(fixed) {
            let mut expanded = parts[..pos].to_vec();
            expanded.extend(std::iter::repeat_n(Part::Glob(vec!['*']), k));
            expanded.extend_from_slice(&parts[pos + 1..]);
            if match_parts(&expanded, strs) {
                return true;
            }
        }
        return false;
    }
    if parts.is_empty() || strs.is_empty() || parts.len() > strs.len() {
        return false;
    }
    let max = strs.len() - parts.len();
    let (min, max) = if parts[0] == Part::Root {
        (0, 0)
    } else if strs[0] == "/" {
        (1, max)
    } else {
        (0, max)
    };
    (min..=max).rev().any(|off| {
        parts
            .iter()
            .enumerate()
            .all(|(i, p)| part_matches(p, strs[off + i]))
    })
}

/// Whether a node below the path may still match (relative patterns always may).
fn child_may_match(parts: &[Part], strs: &[&str]) -> bool {
    if parts.first() != Some(&Part::Root) {
        return true;
    }
    let mut strs = strs;
    if let Some(pos) = parts.iter().position(|p| *p == Part::DoubleStar) {
        if strs.len() >= pos {
            strs = &strs[..pos];
        }
    }
    let l = strs.len().min(parts.len());
    match_parts(&parts[..l], strs)
}

fn glob_valid(p: &[char]) -> bool {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return false;
                }
                i += 2;
            }
            '[' => match class_match(p, i, 'a') {
                Some((_, next)) => i = next,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

/// Matches the character class starting at `p[start] == '['` against `c`: (matched, index
/// after the class), or `None` when malformed.
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let lo = read_class_char(p, &mut i)?;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&n| n != ']') {
            i += 1;
            read_class_char(p, &mut i)?
        } else {
            lo
        };
        if lo <= c && c <= hi {
            matched = true;
        }
    }
}

fn read_class_char(p: &[char], i: &mut usize) -> Option<char> {
    let mut c = *p.get(*i)?;
    if c == '\\' {
        *i += 1;
        c = *p.get(*i)?;
    } else if c == '-' || c == ']' {
        return None;
    }
    *i += 1;
    Some(c)
}

/// Go `filepath.Match` on one path component (no `/` inside).
fn glob_match(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, string index it covers up to).
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, si));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match class_match(p, pi, s[si]) {
                Some((true, next)) => Some(next),
                _ => None,
            },
            Some('\\') => (p.get(pi + 1) == Some(&s[si])).then_some(pi + 2),
            Some(c) => (*c == s[si]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                si += 1;
            }
            None => match star {
                Some((sp, ss)) => {
                    star = Some((sp, ss + 1));
                    pi = sp;
                    si = ss + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(p: &[&str]) -> PatternList {
        PatternList::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn glob_follows_go_filepath_match() {
        let m = |p: &str, s: &str| {
            glob_match(
                &p.chars().collect::<Vec<_>>(),
                &s.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("*.txt", "a.txt"));
        assert!(!m("*.txt", "a.txt.bak"));
        assert!(m("a?c", "abc"));
        assert!(m("a?c", "aüc"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[^a-c]x", "bx"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("*a*b", "xxaxxb"));
        assert!(!m("*a*b", "xxaxxc"));
        assert!(m("*", ""));
        assert!(!glob_valid(&"[ab".chars().collect::<Vec<_>>()));
        assert!(!glob_valid(&"a\\".chars().collect::<Vec<_>>()));
    }

    #[test]
    fn rooted_patterns_match_a_node_and_everything_below() {
        let l = list(&["/data/x"]);
        assert!(l.matches("/data/x"));
        assert!(l.matches("/data/x/y/z"));
        assert!(!l.matches("/data"));
        assert!(!l.matches("/other/data/x"));
        assert_eq!(l.select("/data"), (false, true), "parent: descend");
        assert_eq!(l.select("/other"), (false, false), "elsewhere: skip");
        assert_eq!(l.select("/data/x/y"), (true, true));
    }

    #[test]
    fn relative_patterns_match_at_any_depth() {
        let l = list(&["*.log"]);
        assert!(l.matches("/var/app.log"));
        assert!(l.matches("/a.log/inner"));
        assert!(!l.matches("/var/app.txt"));
        assert_eq!(l.select("/var"), (false, true));
    }

    #[test]
    fn double_star_spans_components() {
        let l = list(&["/home/**/secret"]);
        assert!(l.matches("/home/secret"));
        assert!(l.matches("/home/u/a/b/secret"));
        assert!(l.matches("/home/u/secret/file"));
        assert!(!l.matches("/etc/secret"));
        assert!(l.select("/home/u/deep").1);
        assert!(!l.select("/etc").1);
    }

    #[test]
    fn bad_patterns_are_refused_and_empty_ones_ignored() {
        assert!(PatternList::parse(&["/a/[b".to_string()]).is_err());
        assert!(list(&["", "/"]).is_empty());
    }
}
