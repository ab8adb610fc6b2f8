//! The filesystem walker: an [`EntrySource`] over one or more root paths.
//!
//! Entries come lazily in a stable order: each directory before its children, children sorted
//! by name (byte order). Only one directory listing per level and one open file are held, so
//! memory does not grow with file sizes.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::listing::Listing;
use crate::names::NameCache;
use crate::pending_links::{PendingLinks, PENDING_LINKS_MAX};
use crate::skip::{pseudo_mounts, SkipReason, SkipRules};
use crate::{Entry, EntryKind, EntrySource, Error, Metadata, Timestamp, Warning, Xattr};

/// The mountinfo read when [`WalkOptions::mountinfo`] is not set.
const SYSTEM_MOUNTINFO: &str = "/proc/self/mountinfo";

/// How many of the next regular files of a listing are opened ahead of the one being read.
/// A cold file's read otherwise blocks the archiver on the disk one file at a time; with the
/// next few already asked for (`POSIX_FADV_WILLNEED`) their reads overlap this one's.
const READ_AHEAD_FILES: usize = 6;

/// Bytes asked for at the start of each file opened ahead: small files whole, a large file's
/// first part only (page cache, not our memory, but kept modest).
const READ_AHEAD_BYTES: u64 = 4 << 20;

/// How a [`Walker`] chooses what to leave out.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    /// Do not descend into directories on another filesystem than their root (the mount point
    /// directory itself is still emitted, as GNU tar does).
    pub one_file_system: bool,
    /// Exclude patterns with restic's `--exclude` rules (see `snapback-pattern`), matched
    /// against the absolute path.
    pub excludes: Vec<String>,
    /// Like `excludes`, ignoring case (restic's `--iexclude`).
    pub iexcludes: Vec<String>,
    /// Apply [`crate::walk::DEFAULT_SKIPS`] and skip pseudo filesystem mount points (default
    /// `true`). Both only apply strictly below a walked root.
    pub default_skips: bool,
    /// Mountinfo file to read instead of `/proc/self/mountinfo`.
    pub mountinfo: Option<PathBuf>,
    /// Mountinfo text to use as is (takes precedence over `mountinfo`); for tests.
    pub mountinfo_content: Option<String>,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions {
            one_file_system: false,
            excludes: Vec::new(),
            iexcludes: Vec::new(),
            default_skips: true,
            mountinfo: None,
            mountinfo_content: None,
        }
    }
}

pub use crate::skip::{DEFAULT_SKIPS, PSEUDO_FILESYSTEMS};

/// Reads an exclude file as restic does (see `snapback_pattern::read_pattern_file`: one
/// pattern per line, blank lines and `#` comments skipped, white space trimmed, `$VAR`
/// expanded). A pattern that is not UTF-8 is refused.
pub fn read_exclude_file(path: &Path) -> Result<Vec<String>, Error> {
    snapback_pattern::read_pattern_file(path)?
        .into_iter()
        .map(|p| {
            p.into_string().map_err(|p| {
                Error::Pattern(snapback_pattern::Error::Invalid {
                    pattern: p.to_string_lossy().into_owned(),
                    reason: "not UTF-8 (match such bytes with ? or *)",
                })
            })
        })
        .collect()
}

/// One directory being listed.
struct Frame {
    dir: PathBuf,
    /// Member names, and whether the listing (`d_type`) called each a regular file.
    names: Listing,
    next: usize,
    /// Members opened ahead (index into `names`, the open file, its fstat), in listing order;
    /// at most [`READ_AHEAD_FILES`], and only in the frame on top of the stack.
    ahead: VecDeque<(usize, File, fs::Metadata)>,
    /// The next index [`Walker::read_ahead`] considers.
    ahead_next: usize,
}

/// Walks filesystem roots and yields their entries (see the module docs).
///
/// ```no_run
/// use snapback_stream::{EntrySource, Walker, WalkOptions};
/// let mut walker = Walker::new(["/data"], WalkOptions::default())?;
/// while let Some(entry) = walker.next_entry()? {
///     println!("{}", entry.path.display());
/// }
/// # Ok::<(), snapback_stream::Error>(())
/// ```
pub struct Walker {
    roots: VecDeque<PathBuf>,
    stack: Vec<Frame>,
    /// `st_dev` of the root being walked, for `one_file_system`.
    root_dev: u64,
    one_file_system: bool,
    rules: SkipRules,
    /// First path seen for each (dev, inode) with nlink > 1, until its last link came: this
    /// holds only files whose links are not all seen yet (bounded: past it a later link is
    /// read as a file again).
    links: PendingLinks<(u64, u64), PathBuf>,
    names: NameCache,
    warnings: Vec<Warning>,
    file: Option<FileReader>,
    /// See [`EntrySource::read_ahead_since`]: files whose ctime is older are opened ahead but
    /// their reads are not asked for.
    ahead_since: Option<Timestamp>,
    /// Files whose reads were asked for ahead (for tests).
    advised: u64,
}

impl Walker {
    /// Prepares a walk of `roots` (walked in the given order). Relative roots are made absolute
    /// against the current directory. Fails on an invalid exclude pattern or an unreadable
    /// injected mountinfo; errors on the roots themselves surface from `next_entry`.
    pub fn new<I, P>(roots: I, options: WalkOptions) -> Result<Self, Error>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let roots = roots
            .into_iter()
            .map(|r| absolute_root(r.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let mountinfo = match (&options.mountinfo_content, &options.mountinfo) {
            (Some(text), _) => text.clone(),
            (None, Some(path)) => fs::read_to_string(path).map_err(|e| Error::io(path, e))?,
            (None, None) => fs::read_to_string(SYSTEM_MOUNTINFO).unwrap_or_else(|e| {
                // Not fatal: without it only the default path list applies.
                tracing::warn!("cannot read {SYSTEM_MOUNTINFO}: {e}; pseudo mounts not skipped");
                String::new()
            }),
        };
        let rules = SkipRules::new(
            &roots,
            &pseudo_mounts(&mountinfo),
            options.default_skips,
            &options.excludes,
            &options.iexcludes,
        )?;
        Ok(Walker {
            roots: roots.into(),
            stack: Vec::new(),
            root_dev: 0,
            one_file_system: options.one_file_system,
            rules,
            links: PendingLinks::new(PENDING_LINKS_MAX),
            names: NameCache::default(),
            warnings: Vec::new(),
            file: None,
            ahead_since: None,
            advised: 0,
        })
    }

    fn warn(&mut self, path: &Path, message: String) {
        tracing::debug!(path = %path.display(), "{message}");
        self.warnings.push(Warning {
            path: path.to_path_buf(),
            message,
        });
    }

    /// The next absolute path to visit, whether it is a root, and whether its directory
    /// listing called it a regular file.
    fn next_path(&mut self) -> Option<(PathBuf, bool, bool)> {
        while let Some(top) = self.stack.last_mut() {
            if let Some((name, is_file)) = top.names.get(top.next) {
                top.next += 1;
                return Some((top.dir.join(name), false, is_file));
            }
            self.stack.pop();
        }
        self.roots.pop_front().map(|r| (r, true, false))
    }

    /// Stats and classifies one path; `Ok(None)` means "skipped, go on".
    ///
    /// A member its listing called a regular file is opened straight away and stat'ed through
    /// the open descriptor: one stat per file, where an lstat, then an open and an fstat (to
    /// see what was opened) would take two. Anything unexpected on that path (a symlink or
    /// something else swapped in, gone, unreadable) falls back to the lstat path, which
    /// reports it.
    fn visit(
        &mut self,
        abs: &Path,
        is_root: bool,
        listed_file: bool,
    ) -> Result<Option<Prepared>, Error> {
        let rel = abs.strip_prefix("/").unwrap_or(abs).to_path_buf();
        // A member opened ahead passed the checks below when it was (`read_ahead`).
        let ahead = match listed_file && !is_root {
            true => self.take_ahead(),
            false => None,
        };
        // Like restic, a root the patterns exclude is left out too.
        if ahead.is_none() && self.rules.is_excluded(abs) {
            tracing::debug!(path = %abs.display(), "excluded");
            return Ok(None);
        }
        if !is_root && ahead.is_none() {
            match self.rules.skip_reason(abs) {
                Some(SkipReason::PseudoMount(fstype)) => {
                    tracing::info!(path = %abs.display(), fstype, "skipping pseudo filesystem mount");
                    return Ok(None);
                }
                Some(SkipReason::Default) => {
                    tracing::info!(path = %abs.display(), "skipping runtime-managed path");
                    return Ok(None);
                }
                None => {}
            }
        }
        let mut opened = match listed_file && !is_root {
            true => {
                let opened = ahead.or_else(|| open_regular(abs));
                self.read_ahead();
                opened
            }
            false => None,
        };
        let st = match opened.as_ref().map(|(_, st)| st.clone()) {
            Some(st) => Ok(st),
            None => fs::symlink_metadata(abs),
        };
        let st = match st {
            Ok(st) => st,
            Err(e) if is_root => return Err(Error::io(abs, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn(&rel, "vanished before it could be read".into());
                return Ok(None);
            }
            Err(e) => {
                self.warn(&rel, format!("cannot stat: {e}"));
                return Ok(None);
            }
        };
        if is_root {
            self.root_dev = st.dev();
        }
        let ft = st.file_type();
        let (kind, st) = if ft.is_dir() {
            self.enter_dir(abs, &rel, &st, is_root)?;
            (EntryKind::Dir, st)
        } else if ft.is_file() {
            if st.nlink() > 1 {
                let key = (st.dev(), st.ino());
                if let Some(target) = self.links.next_link(&key, PathBuf::clone) {
                    let file = opened.as_ref().map(|(f, _)| f);
                    let mut meta = self.metadata(abs, &rel, &st, file);
                    meta.size = 0;
                    return Ok(Some(Prepared {
                        rel,
                        kind: EntryKind::HardLink { target },
                        meta,
                    }));
                }
            }
            let opened = match opened.take() {
                Some(opened) => Some(opened),
                None => self.open_file(abs, &rel, is_root)?,
            };
            match opened {
                Some((file, st)) => {
                    if st.nlink() > 1 {
                        self.links
                            .insert((st.dev(), st.ino()), rel.clone(), st.nlink() - 1);
                    }
                    // Attributes through the descriptor: no second path lookup.
                    let meta = self.metadata(abs, &rel, &st, Some(&file));
                    self.file = Some(FileReader::new(file, rel.clone(), st.len()));
                    return Ok(Some(Prepared {
                        rel,
                        kind: EntryKind::File,
                        meta,
                    }));
                }
                None => return Ok(None),
            }
        } else if ft.is_symlink() {
            match fs::read_link(abs) {
                Ok(target) => (EntryKind::Symlink { target }, st),
                Err(e) if is_root => return Err(Error::io(abs, e)),
                Err(e) => {
                    self.warn(&rel, format!("cannot read symlink: {e}"));
                    return Ok(None);
                }
            }
        } else if ft.is_fifo() {
            (EntryKind::Fifo, st)
        } else if ft.is_char_device() {
            (EntryKind::CharDevice { rdev: st.rdev() }, st)
        } else if ft.is_block_device() {
            (EntryKind::BlockDevice { rdev: st.rdev() }, st)
        } else {
            (EntryKind::Socket, st)
        };
        let mut meta = self.metadata(abs, &rel, &st, None);
        meta.size = 0;
        Ok(Some(Prepared { rel, kind, meta }))
    }

    /// Lists a directory (sorted) and pushes it for its children to follow.
    fn enter_dir(
        &mut self,
        abs: &Path,
        rel: &Path,
        st: &fs::Metadata,
        is_root: bool,
    ) -> Result<(), Error> {
        if self.one_file_system && !is_root && st.dev() != self.root_dev {
            tracing::info!(path = %abs.display(), "not crossing into another filesystem");
            return Ok(());
        }
        // The type comes from the listing (`d_type`), without a stat on the filesystems
        // that fill it in.
        let listing = fs::read_dir(abs).and_then(|rd| {
            Listing::new(
                rd.map(|e| e.map(|e| (e.file_name(), e.file_type().is_ok_and(|t| t.is_file())))),
            )
        });
        match listing {
            Ok(names) => {
                // Descriptors are held for the directory on top only: the parent's are closed
                // (and opened again when the walk is back), so deep trees hold no more.
                if let Some(parent) = self.stack.last_mut() {
                    parent.ahead.clear();
                    parent.ahead_next = parent.next;
                }
                self.stack.push(Frame {
                    dir: abs.to_path_buf(),
                    names,
                    next: 0,
                    ahead: VecDeque::new(),
                    ahead_next: 0,
                });
                Ok(())
            }
            Err(e) if is_root => Err(Error::io(abs, e)),
            Err(e) => {
                self.warn(rel, format!("cannot list directory: {e}"));
                Ok(())
            }
        }
    }

    /// The member just returned by `next_path`, if it was opened ahead. Every member opened
    /// ahead reaches this point when its turn comes (only listed files that are not excluded
    /// or skipped are), so anything before it in the queue is stale and dropped.
    fn take_ahead(&mut self) -> Option<(File, fs::Metadata)> {
        let top = self.stack.last_mut()?;
        let current = top.next.checked_sub(1)?;
        while let Some((index, _, _)) = top.ahead.front() {
            if *index > current {
                return None;
            }
            let (index, file, st) = top.ahead.pop_front()?;
            if index == current {
                return Some((file, st));
            }
        }
        None
    }

    /// Opens the next few regular files of the listing being walked and asks the kernel to
    /// start reading them (see [`READ_AHEAD_FILES`]). Opened as [`open_regular`] does, so the
    /// descriptor and its fstat serve the member when its turn comes: still one open and one
    /// stat per file. Anything unexpected (not a regular file, gone, unreadable) is simply not
    /// read ahead; the member's own visit reports it.
    fn read_ahead(&mut self) {
        let Some(top) = self.stack.last_mut() else {
            return;
        };
        let mut index = top.ahead_next.max(top.next);
        while top.ahead.len() < READ_AHEAD_FILES && index < top.names.len() {
            let Some((name, is_file)) = top.names.get(index) else {
                break;
            };
            index += 1;
            if !is_file {
                continue;
            }
            let abs = top.dir.join(name);
            if self.rules.is_excluded(&abs) || self.rules.skip_reason(&abs).is_some() {
                continue;
            }
            let Some((file, st)) = open_regular(&abs) else {
                continue;
            };
            // A file not changed since the parent snapshot is reused unread: asking for its
            // reads would pull it from disk for nothing (ctime moves with every write and
            // cannot be set back).
            let unchanged = self
                .ahead_since
                .is_some_and(|since| st.ctime() < since.secs);
            if st.len() > 0 && !unchanged {
                self.advised += 1;
                // Only a hint: a failure costs nothing but the read-ahead.
                let len = std::num::NonZeroU64::new(st.len().min(READ_AHEAD_BYTES));
                let _ = rustix::fs::fadvise(&file, 0, len, rustix::fs::Advice::WillNeed);
            }
            top.ahead.push_back((index - 1, file, st));
        }
        top.ahead_next = index;
    }

    /// Opens a regular file without following a symlink swapped in since the stat, and returns
    /// it with its fresh metadata. `Ok(None)` after recording a warning.
    fn open_file(
        &mut self,
        abs: &Path,
        rel: &Path,
        is_root: bool,
    ) -> Result<Option<(File, fs::Metadata)>, Error> {
        // O_NONBLOCK: never hang if a fifo replaced the file between stat and open.
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(abs)
            .and_then(|f| f.metadata().map(|m| (f, m)));
        match opened {
            Ok((f, st)) if st.is_file() => Ok(Some((f, st))),
            Ok(_) => {
                self.warn(rel, "changed type while being read; skipped".into());
                Ok(None)
            }
            Err(e) if is_root => Err(Error::io(abs, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn(rel, "vanished before it could be read; skipped".into());
                Ok(None)
            }
            Err(e) => {
                self.warn(rel, format!("cannot open: {e}; skipped"));
                Ok(None)
            }
        }
    }

    /// `file` is the open file at `abs`, if any (its attributes are read through it).
    fn metadata(
        &mut self,
        abs: &Path,
        rel: &Path,
        st: &fs::Metadata,
        file: Option<&File>,
    ) -> Metadata {
        Metadata {
            mode: st.mode() & 0o7777,
            uid: st.uid(),
            gid: st.gid(),
            user: self.names.user(st.uid()),
            group: self.names.group(st.gid()),
            mtime: timestamp(st.mtime(), st.mtime_nsec()),
            atime: Some(timestamp(st.atime(), st.atime_nsec())),
            ctime: Some(timestamp(st.ctime(), st.ctime_nsec())),
            size: st.len(),
            inode: st.ino(),
            dev: st.dev(),
            nlink: st.nlink(),
            xattrs: self.xattrs(abs, rel, file),
        }
    }

    /// Extended attributes sorted by name; filesystems without xattr support yield none.
    fn xattrs(&mut self, abs: &Path, rel: &Path, file: Option<&File>) -> Vec<Xattr> {
        use xattr::FileExt;
        let listed = match file {
            Some(f) => f.list_xattr(),
            None => xattr::list(abs),
        };
        let names = match listed {
            Ok(names) => names,
            Err(e) if is_unsupported(&e) => return Vec::new(),
            Err(e) => {
                self.warn(rel, format!("cannot list extended attributes: {e}"));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for name in names {
            let value = match file {
                Some(f) => f.get_xattr(&name),
                None => xattr::get(abs, &name),
            };
            match value {
                Ok(Some(value)) => out.push(Xattr { name, value }),
                Ok(None) => {} // removed since listed
                Err(e) if is_unsupported(&e) => {}
                Err(e) => self.warn(rel, format!("cannot read extended attribute {name:?}: {e}")),
            }
        }
        out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        out
    }
}

/// Opens `abs` as [`Walker::open_file`] does and stats it through the descriptor; `None` unless
/// it is a regular file (the caller then takes the lstat path, which says what went wrong).
fn open_regular(abs: &Path) -> Option<(File, fs::Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(abs)
        .ok()?;
    let st = file.metadata().ok()?;
    st.is_file().then_some((file, st))
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
}

fn timestamp(secs: i64, nanos: i64) -> Timestamp {
    Timestamp {
        secs,
        nanos: u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0),
    }
}

/// Makes a root absolute and clean (no `.`, no trailing `/`); `..` is resolved through the
/// filesystem because it may cross a symlink.
fn absolute_root(root: &Path) -> Result<PathBuf, Error> {
    if root.as_os_str().is_empty() {
        return Err(Error::InvalidRoot {
            path: root.to_path_buf(),
            reason: "empty path".into(),
        });
    }
    let abs = std::path::absolute(root).map_err(|e| Error::io(root, e))?;
    let abs: PathBuf = abs.components().collect();
    if !abs.components().any(|c| c == Component::ParentDir) {
        return Ok(abs);
    }
    match (abs.parent(), abs.file_name()) {
        // Keep a final symlink as is; only its directory is resolved.
        (Some(parent), Some(name)) => Ok(fs::canonicalize(parent)
            .map_err(|e| Error::io(parent, e))?
            .join(name)),
        _ => fs::canonicalize(&abs).map_err(|e| Error::io(&abs, e)),
    }
}

/// A visited path ready to become an entry.
struct Prepared {
    rel: PathBuf,
    kind: EntryKind,
    meta: Metadata,
}

impl EntrySource for Walker {
    fn next_entry(&mut self) -> Result<Option<Entry<'_>>, Error> {
        if let Some(reader) = self.file.take() {
            self.warnings.extend(reader.warnings);
        }
        loop {
            let Some((abs, is_root, listed_file)) = self.next_path() else {
                return Ok(None);
            };
            let Some(p) = self.visit(&abs, is_root, listed_file)? else {
                continue;
            };
            if p.rel.as_os_str().is_empty() {
                // The root `/` itself has no member name; its children follow.
                continue;
            }
            let data = match p.kind {
                EntryKind::File => self.file.as_mut().map(|f| f as &mut dyn Read),
                _ => None,
            };
            return Ok(Some(Entry {
                path: p.rel,
                kind: p.kind,
                meta: p.meta,
                data,
            }));
        }
    }

    /// Warnings so far. Those of a file's content (shrank, grew, read error) are added when the
    /// next entry is requested, so they are complete once `next_entry` returned `None`.
    /// A walk finishes each directory once and resolves hard links by their link count.
    fn may_revisit(&self) -> bool {
        false
    }

    fn read_ahead_since(&mut self, since: Timestamp) {
        self.ahead_since = Some(since);
    }

    fn warnings(&self) -> &[Warning] {
        &self.warnings
    }
}

/// Reads an open file as exactly `size` bytes: stops at `size` if the file grew, pads with
/// zeros if it shrank or a read failed, and records why.
pub(crate) struct FileReader {
    file: File,
    path: PathBuf,
    size: u64,
    remaining: u64,
    /// Set once the file stopped delivering data; the rest is zeros.
    padding: bool,
    checked_growth: bool,
    warnings: Vec<Warning>,
}

impl FileReader {
    pub(crate) fn new(file: File, path: PathBuf, size: u64) -> Self {
        FileReader {
            file,
            path,
            size,
            remaining: size,
            padding: false,
            checked_growth: false,
            warnings: Vec::new(),
        }
    }

    fn note(&mut self, message: String) {
        tracing::debug!(path = %self.path.display(), "{message}");
        self.warnings.push(Warning {
            path: self.path.clone(),
            message,
        });
    }

    fn check_growth(&mut self) {
        if self.checked_growth || self.padding {
            return;
        }
        self.checked_growth = true;
        if let Ok(st) = self.file.metadata() {
            if st.len() > self.size {
                self.note(format!(
                    "grew while being read; truncated to its size at stat time ({} bytes)",
                    self.size
                ));
            }
        }
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            self.check_growth();
            return Ok(0);
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        // Asking for one byte more than is left, when there is room, sees growth in the same
        // read that reaches the end: no fstat afterwards (a file's last read is usually its
        // only one). The extra byte is not handed out.
        let ask = if !self.checked_growth && buf.len() as u64 > self.remaining {
            want + 1
        } else {
            want
        };
        while !self.padding {
            match self.file.read(&mut buf[..ask]) {
                Ok(n) if n > want => {
                    self.checked_growth = true;
                    self.remaining = 0;
                    self.note(format!(
                        "grew while being read; truncated to its size at stat time ({} bytes)",
                        self.size
                    ));
                    return Ok(want);
                }
                Ok(n) if ask > want && n == want => {
                    // A short read of a regular file is its end: it did not grow (so far).
                    self.checked_growth = true;
                    self.remaining = 0;
                    return Ok(n);
                }
                Ok(0) => {
                    self.padding = true;
                    self.note(format!(
                        "shrank while being read; padded with {} zero bytes",
                        self.remaining
                    ));
                }
                Ok(n) => {
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.check_growth();
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.padding = true;
                    let done = self.size - self.remaining;
                    self.note(format!(
                        "read error after {done} bytes: {e}; rest filled with zeros"
                    ));
                }
            }
        }
        buf[..want].fill(0);
        self.remaining -= want as u64;
        Ok(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::io::Write;

    fn collect(w: &mut Walker) -> Vec<(PathBuf, EntryKind, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(mut e) = w.next_entry().unwrap() {
            let mut data = Vec::new();
            if let Some(r) = e.data.as_mut() {
                r.read_to_end(&mut data).unwrap();
            }
            out.push((e.path, e.kind, data));
        }
        out
    }

    fn rel(p: &Path) -> PathBuf {
        p.strip_prefix("/").unwrap().to_path_buf()
    }

    #[test]
    fn walk_yields_dirs_before_children_sorted_by_bytes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        fs::create_dir_all(root.join("b/inner")).unwrap();
        fs::write(root.join("B"), "upper").unwrap();
        fs::write(root.join("a"), "x").unwrap();
        fs::write(root.join("b/inner/f"), "deep").unwrap();
        fs::write(root.join("c"), "").unwrap();
        let mut w = Walker::new([&root], WalkOptions::default()).unwrap();
        let got: Vec<PathBuf> = collect(&mut w).into_iter().map(|e| e.0).collect();
        let r = rel(&root);
        let want: Vec<PathBuf> = ["", "B", "a", "b", "b/inner", "b/inner/f", "c"]
            .iter()
            .map(|s| if s.is_empty() { r.clone() } else { r.join(s) })
            .collect();
        assert_eq!(got, want);
        assert!(w.warnings().is_empty());
    }

    #[test]
    fn walk_reports_metadata_and_content() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, b"hello").unwrap();
        fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o4751)).unwrap();
        xattr::set(&f, "user.b", b"2").unwrap();
        xattr::set(&f, "user.a", b"1").unwrap();
        std::os::unix::fs::symlink("../somewhere", t.path().join("l")).unwrap();
        let mut w = Walker::new([&f, &t.path().join("l")], WalkOptions::default()).unwrap();
        let mut e = w.next_entry().unwrap().unwrap();
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.meta.mode, 0o4751);
        assert_eq!(e.meta.size, 5);
        if e.meta.uid == 0 {
            assert_eq!(e.meta.user.as_deref(), Some("root"));
        }
        let names: Vec<_> = e.meta.xattrs.iter().map(|x| x.name.clone()).collect();
        assert_eq!(
            names,
            vec![OsString::from("user.a"), OsString::from("user.b")]
        );
        let mut s = String::new();
        e.data.take().unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        let e = w.next_entry().unwrap().unwrap();
        assert_eq!(
            e.kind,
            EntryKind::Symlink {
                target: "../somewhere".into()
            }
        );
        assert_eq!(e.meta.size, 0);
        assert!(w.next_entry().unwrap().is_none());
    }

    #[test]
    fn second_hard_link_is_a_link_entry_to_the_first() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), "shared").unwrap();
        fs::hard_link(t.path().join("a"), t.path().join("b")).unwrap();
        fs::hard_link(t.path().join("a"), t.path().join("c")).unwrap();
        let mut w = Walker::new([t.path()], WalkOptions::default()).unwrap();
        let got = collect(&mut w);
        let first = rel(&t.path().join("a"));
        assert_eq!(got[1], (first.clone(), EntryKind::File, b"shared".to_vec()));
        for (i, name) in [(2, "b"), (3, "c")] {
            assert_eq!(got[i].0, rel(&t.path().join(name)));
            assert_eq!(
                got[i].1,
                EntryKind::HardLink {
                    target: first.clone()
                }
            );
            assert!(got[i].2.is_empty());
        }
        // All three links seen: the walker holds nothing for the inode any more.
        assert!(
            w.links.is_empty(),
            "a fully linked inode is still remembered"
        );
    }

    #[test]
    fn fifo_is_metadata_only_and_never_opened() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("pipe");
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o640)).unwrap();
        let mut w = Walker::new([&p], WalkOptions::default()).unwrap();
        let e = w.next_entry().unwrap().unwrap();
        assert_eq!(e.kind, EntryKind::Fifo);
        assert_eq!(e.meta.mode, 0o640);
        assert!(e.data.is_none());
    }

    #[test]
    fn pseudo_mount_below_root_is_skipped_using_fixture_mountinfo() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir(root.join("shm")).unwrap();
        fs::write(root.join("shm/secret"), "x").unwrap();
        fs::create_dir(root.join("data")).unwrap();
        fs::write(root.join("data/keep"), "y").unwrap();
        let esc = |p: &Path| p.display().to_string().replace(' ', "\\040");
        let mountinfo = format!(
            "1 0 0:1 / {} rw - tmpfs tmpfs rw\n2 0 8:1 / {} rw - ext4 /dev/sda rw\n3 0 0:2 / {} rw - tmpfs tmpfs rw\n",
            esc(&root.join("shm")),
            esc(&root.join("data")),
            esc(root),
        );
        let opts = WalkOptions {
            mountinfo_content: Some(mountinfo),
            ..WalkOptions::default()
        };
        let mut w = Walker::new([root], opts).unwrap();
        let got: Vec<PathBuf> = collect(&mut w).into_iter().map(|e| e.0).collect();
        // The root itself is a tmpfs mount too, but an explicit root is always walked.
        assert_eq!(
            got,
            vec![
                rel(root),
                rel(&root.join("data")),
                rel(&root.join("data/keep"))
            ]
        );
    }

    #[test]
    fn injected_mountinfo_path_is_read_and_missing_one_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("p")).unwrap();
        let mi = t.path().join("mountinfo");
        fs::write(
            &mi,
            format!(
                "1 0 0:1 / {} rw - proc proc rw\n",
                t.path().join("p").display()
            ),
        )
        .unwrap();
        let opts = WalkOptions {
            mountinfo: Some(mi),
            ..WalkOptions::default()
        };
        let mut w = Walker::new([t.path()], opts).unwrap();
        let got: Vec<PathBuf> = collect(&mut w).into_iter().map(|e| e.0).collect();
        assert_eq!(got, vec![rel(t.path()), rel(&t.path().join("mountinfo"))]);

        let opts = WalkOptions {
            mountinfo: Some(t.path().join("nope")),
            ..WalkOptions::default()
        };
        assert!(matches!(
            Walker::new([t.path()], opts),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn excludes_and_exclude_file_leave_matching_paths_out() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir(root.join("logs")).unwrap();
        fs::write(root.join("logs/a.txt"), "").unwrap();
        fs::write(root.join("x.log"), "").unwrap();
        fs::write(root.join("keep"), "").unwrap();
        let ex = root.join("excludes");
        fs::write(&ex, "# comment\n\n  *.log  \nlogs\n").unwrap();
        let pats = read_exclude_file(&ex).unwrap();
        assert_eq!(pats, vec!["*.log".to_string(), "logs".to_string()]);
        let opts = WalkOptions {
            excludes: pats,
            ..WalkOptions::default()
        };
        let mut w = Walker::new([root], opts).unwrap();
        let got: Vec<PathBuf> = collect(&mut w).into_iter().map(|e| e.0).collect();
        assert_eq!(got, vec![rel(root), rel(&ex), rel(&root.join("keep"))]);
    }

    #[test]
    fn missing_root_is_an_error_not_a_warning() {
        let t = tempfile::tempdir().unwrap();
        let mut w = Walker::new([t.path().join("missing")], WalkOptions::default()).unwrap();
        assert!(matches!(w.next_entry(), Err(Error::Io { .. })));
    }

    #[test]
    fn relative_root_with_dots_becomes_clean_absolute_path() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        let odd = t.path().join("d/./../d/");
        let mut w = Walker::new([&odd], WalkOptions::default()).unwrap();
        assert_eq!(
            w.next_entry().unwrap().unwrap().path,
            rel(&t.path().join("d"))
        );
    }

    #[test]
    fn file_that_shrinks_while_read_is_zero_padded_with_warning() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, b"0123456789").unwrap();
        let mut w = Walker::new([&f], WalkOptions::default()).unwrap();
        let mut e = w.next_entry().unwrap().unwrap();
        assert_eq!(e.meta.size, 10);
        fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(4)
            .unwrap();
        let mut data = Vec::new();
        e.data.take().unwrap().read_to_end(&mut data).unwrap();
        assert_eq!(data, b"0123\0\0\0\0\0\0");
        assert!(w.next_entry().unwrap().is_none());
        assert_eq!(w.warnings().len(), 1);
        assert!(
            w.warnings()[0].message.contains("shrank"),
            "{:?}",
            w.warnings()
        );
    }

    #[test]
    fn file_that_grows_while_read_is_truncated_with_warning() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        fs::write(&f, b"0123456789").unwrap();
        let mut w = Walker::new([&f], WalkOptions::default()).unwrap();
        let mut e = w.next_entry().unwrap().unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .unwrap()
            .write_all(b"more")
            .unwrap();
        let mut data = Vec::new();
        e.data.take().unwrap().read_to_end(&mut data).unwrap();
        assert_eq!(data, b"0123456789");
        assert!(w.next_entry().unwrap().is_none());
        assert_eq!(w.warnings().len(), 1);
        assert!(
            w.warnings()[0].message.contains("grew"),
            "{:?}",
            w.warnings()
        );
    }

    #[test]
    fn files_swapped_for_other_kinds_after_listing_are_what_they_became() {
        // A member listed as a regular file is opened without an lstat first; a symlink or a
        // fifo swapped in since must still come out as itself (and the fifo must not hang).
        let t = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            fs::write(t.path().join(name), name).unwrap();
        }
        let mut w = Walker::new([t.path()], WalkOptions::default()).unwrap();
        assert_eq!(w.next_entry().unwrap().unwrap().kind, EntryKind::Dir);
        fs::remove_file(t.path().join("a")).unwrap();
        std::os::unix::fs::symlink("c", t.path().join("a")).unwrap();
        fs::remove_file(t.path().join("b")).unwrap();
        let fifo = t.path().join("b");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
        let got: Vec<(EntryKind, Vec<u8>)> =
            collect(&mut w).into_iter().map(|e| (e.1, e.2)).collect();
        assert_eq!(
            got,
            vec![
                (
                    EntryKind::Symlink {
                        target: PathBuf::from("c")
                    },
                    Vec::new()
                ),
                (EntryKind::Fifo, Vec::new()),
                (EntryKind::File, b"c".to_vec()),
            ]
        );
        assert!(w.warnings().is_empty(), "{:?}", w.warnings());
    }

    #[test]
    fn next_files_are_opened_ahead_and_at_most_a_few() {
        // Once the first file is yielded, the next READ_AHEAD_FILES are already open (and
        // their reads asked for): removing them now does not lose them, the one after is gone.
        let t = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..READ_AHEAD_FILES + 2)
            .map(|i| format!("f{i:02}"))
            .collect();
        for name in &names {
            fs::write(t.path().join(name), name).unwrap();
        }
        let mut w = Walker::new([t.path()], WalkOptions::default()).unwrap();
        assert_eq!(w.next_entry().unwrap().unwrap().kind, EntryKind::Dir);
        assert_eq!(
            w.next_entry().unwrap().unwrap().path,
            rel(&t.path().join(&names[0]))
        );
        for name in &names[1..] {
            fs::remove_file(t.path().join(name)).unwrap();
        }
        let got: Vec<(PathBuf, Vec<u8>)> =
            collect(&mut w).into_iter().map(|e| (e.0, e.2)).collect();
        let want: Vec<(PathBuf, Vec<u8>)> = names[1..=READ_AHEAD_FILES]
            .iter()
            .map(|n| (rel(&t.path().join(n)), n.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(w.warnings().len(), 1, "{:?}", w.warnings());
        assert_eq!(
            w.warnings()[0].path,
            rel(&t.path().join(&names[READ_AHEAD_FILES + 1]))
        );
    }

    #[test]
    fn files_unchanged_since_the_parent_are_not_read_ahead() {
        // An incremental backup reuses unchanged files unread: the walker must not ask the
        // kernel to read them. Files changed since (ctime newer) still are read ahead.
        let t = tempfile::tempdir().unwrap();
        for i in 0..4 {
            fs::write(t.path().join(format!("f{i}")), "data").unwrap();
        }
        let walk = |since: Option<i64>| {
            let mut w = Walker::new([t.path()], WalkOptions::default()).unwrap();
            if let Some(secs) = since {
                w.read_ahead_since(Timestamp { secs, nanos: 0 });
            }
            let got = collect(&mut w);
            assert_eq!(got.len(), 5);
            assert!(got[1..].iter().all(|e| e.2 == b"data"));
            w.advised
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // f0 is visited first (not ahead); f1..f3 are opened ahead.
        assert_eq!(walk(None), 3, "a first backup reads ahead");
        assert_eq!(walk(Some(now - 3600)), 3, "changed since the parent");
        assert_eq!(walk(Some(now + 3600)), 0, "unchanged since the parent");
    }

    #[test]
    fn files_opened_ahead_are_closed_while_a_subdirectory_is_walked() {
        let t = tempfile::tempdir().unwrap();
        for name in ["a", "b", "sub/x", "sub/y", "z"] {
            let p = t.path().join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, name).unwrap();
        }
        let mut w = Walker::new([t.path()], WalkOptions::default()).unwrap();
        let mut seen = Vec::new();
        while let Some(mut e) = w.next_entry().unwrap() {
            let mut data = Vec::new();
            if let Some(r) = e.data.as_mut() {
                r.read_to_end(&mut data).unwrap();
            }
            let path = e.path.clone();
            seen.push((path.clone(), data));
            if path == rel(&t.path().join("a")) {
                // The listing's other files, past the subdirectory too.
                assert_eq!(
                    w.stack.last().unwrap().ahead.len(),
                    2,
                    "b and z opened ahead"
                );
            }
            if path == rel(&t.path().join("sub/x")) {
                // Descriptors are held for the top directory only: z's was closed.
                assert!(w.stack[0].ahead.is_empty());
                assert_eq!(w.stack[1].ahead.len(), 1);
            }
        }
        let want: Vec<(PathBuf, Vec<u8>)> = ["", "a", "b", "sub", "sub/x", "sub/y", "z"]
            .iter()
            .map(|n| {
                let data = if n.is_empty() || *n == "sub" { "" } else { n };
                (rel(&t.path().join(n)), data.as_bytes().to_vec())
            })
            .collect();
        let want: Vec<(PathBuf, Vec<u8>)> = want
            .into_iter()
            .map(|(p, d)| (p.components().collect(), d))
            .collect();
        assert_eq!(seen, want);
        assert!(w.warnings().is_empty(), "{:?}", w.warnings());
    }

    #[test]
    fn file_vanishing_after_listing_is_skipped_with_warning() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("gone"), "x").unwrap();
        fs::write(t.path().join("stays"), "y").unwrap();
        let mut w = Walker::new([t.path()], WalkOptions::default()).unwrap();
        assert_eq!(w.next_entry().unwrap().unwrap().kind, EntryKind::Dir);
        fs::remove_file(t.path().join("gone")).unwrap();
        let got: Vec<PathBuf> = collect(&mut w).into_iter().map(|e| e.0).collect();
        assert_eq!(got, vec![rel(&t.path().join("stays"))]);
        assert_eq!(w.warnings().len(), 1);
        assert_eq!(w.warnings()[0].path, rel(&t.path().join("gone")));
    }
}
