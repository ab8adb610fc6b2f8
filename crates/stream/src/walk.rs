//! The filesystem walker: an [`EntrySource`] over one or more root paths.
//!
//! Entries come lazily in a stable order: each directory before its children, children sorted
//! by name (byte order). Only one directory listing per level and one open file are held, so
//! memory does not grow with file sizes.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::names::NameCache;
use crate::skip::{pseudo_mounts, SkipReason, SkipRules};
use crate::{Entry, EntryKind, EntrySource, Error, Metadata, Timestamp, Warning, Xattr};

/// The mountinfo read when [`WalkOptions::mountinfo`] is not set.
const SYSTEM_MOUNTINFO: &str = "/proc/self/mountinfo";

/// How a [`Walker`] chooses what to leave out.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    /// Do not descend into directories on another filesystem than their root (the mount point
    /// directory itself is still emitted, as GNU tar does).
    pub one_file_system: bool,
    /// Exclude globs, matched like restic's `--exclude`: a pattern starting with `/` against the
    /// absolute path, any other pattern against the base name and every path suffix.
    pub excludes: Vec<String>,
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
            default_skips: true,
            mountinfo: None,
            mountinfo_content: None,
        }
    }
}

pub use crate::skip::{DEFAULT_SKIPS, PSEUDO_FILESYSTEMS};

/// Reads an exclude file: one pattern per line; blank lines and lines starting with `#` are
/// ignored, surrounding whitespace is trimmed.
pub fn read_exclude_file(path: &Path) -> Result<Vec<String>, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| Error::io(path, e))?;
        let line = line.trim();
        if !line.is_empty() && !line.starts_with('#') {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

/// One directory being listed.
struct Frame {
    dir: PathBuf,
    names: Vec<OsString>,
    next: usize,
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
    /// First path seen for each (dev, inode) with nlink > 1.
    links: HashMap<(u64, u64), PathBuf>,
    names: NameCache,
    warnings: Vec<Warning>,
    file: Option<FileReader>,
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
        )?;
        Ok(Walker {
            roots: roots.into(),
            stack: Vec::new(),
            root_dev: 0,
            one_file_system: options.one_file_system,
            rules,
            links: HashMap::new(),
            names: NameCache::default(),
            warnings: Vec::new(),
            file: None,
        })
    }

    fn warn(&mut self, path: &Path, message: String) {
        tracing::debug!(path = %path.display(), "{message}");
        self.warnings.push(Warning {
            path: path.to_path_buf(),
            message,
        });
    }

    /// The next absolute path to visit and whether it is a root.
    fn next_path(&mut self) -> Option<(PathBuf, bool)> {
        while let Some(top) = self.stack.last_mut() {
            if let Some(name) = top.names.get(top.next) {
                top.next += 1;
                return Some((top.dir.join(name), false));
            }
            self.stack.pop();
        }
        self.roots.pop_front().map(|r| (r, true))
    }

    /// Stats and classifies one path; `Ok(None)` means "skipped, go on".
    fn visit(&mut self, abs: &Path, is_root: bool) -> Result<Option<Prepared>, Error> {
        let rel = abs.strip_prefix("/").unwrap_or(abs).to_path_buf();
        if !is_root {
            if self.rules.is_excluded(abs) {
                tracing::debug!(path = %abs.display(), "excluded");
                return Ok(None);
            }
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
        let st = match fs::symlink_metadata(abs) {
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
                if let Some(target) = self.links.get(&(st.dev(), st.ino())) {
                    let target = target.clone();
                    let mut meta = self.metadata(abs, &rel, &st);
                    meta.size = 0;
                    return Ok(Some(Prepared {
                        rel,
                        kind: EntryKind::HardLink { target },
                        meta,
                    }));
                }
            }
            match self.open_file(abs, &rel, is_root)? {
                Some((file, st)) => {
                    if st.nlink() > 1 {
                        self.links.insert((st.dev(), st.ino()), rel.clone());
                    }
                    self.file = Some(FileReader::new(file, rel.clone(), st.len()));
                    (EntryKind::File, st)
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
        let mut meta = self.metadata(abs, &rel, &st);
        if kind != EntryKind::File {
            meta.size = 0;
        }
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
        let listing = fs::read_dir(abs).and_then(|rd| {
            rd.map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        });
        match listing {
            Ok(mut names) => {
                names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                self.stack.push(Frame {
                    dir: abs.to_path_buf(),
                    names,
                    next: 0,
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

    fn metadata(&mut self, abs: &Path, rel: &Path, st: &fs::Metadata) -> Metadata {
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
            xattrs: self.xattrs(abs, rel),
        }
    }

    /// Extended attributes sorted by name; filesystems without xattr support yield none.
    fn xattrs(&mut self, abs: &Path, rel: &Path) -> Vec<Xattr> {
        let names = match xattr::list(abs) {
            Ok(names) => names,
            Err(e) if is_unsupported(&e) => return Vec::new(),
            Err(e) => {
                self.warn(rel, format!("cannot list extended attributes: {e}"));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for name in names {
            match xattr::get(abs, &name) {
                Ok(Some(value)) => out.push(Xattr { name, value }),
                Ok(None) => {} // removed since listed
                Err(e) if is_unsupported(&e) => {}
                Err(e) => self.warn(
                    rel,
                    format!("cannot read extended attribute {name:?}: {e}"),
                ),
            }
        }
        out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        out
    }
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
            let Some((abs, is_root)) = self.next_path() else {
                return Ok(None);
            };
            let Some(p) = self.visit(&abs, is_root)? else {
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
        let want = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        while !self.padding {
            match self.file.read(&mut buf[..want]) {
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
