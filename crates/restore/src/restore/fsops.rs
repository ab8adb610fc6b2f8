//! Filesystem operations of a restore that never follow a symlink.
//!
//! Trees are untrusted (every holder of the repository key can write any tree), and the target
//! may hold links from before. So nothing is reached through a path the kernel resolves from
//! the start: each node is created relative to its parent directory's descriptor (opened with
//! `O_DIRECTORY|O_NOFOLLOW`), a final component that is a link is replaced, never followed,
//! and metadata goes through a descriptor of the object itself (files, directories) or
//! through `*at` calls that do not follow the final link (symlinks, fifos, devices).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use chrono::{DateTime, FixedOffset};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use snapback_repo::file::tree::{go_mode, zero_time};
use snapback_repo::file::{Node, NodeType};

/// Mode of a directory created for a node until its metadata is applied (after its contents).
const PRIVATE_DIR: u32 = 0o700;

fn io_err(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Opens the directory `name` in `parent`, never through a link.
pub(super) fn open_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// Makes (or reuses) the directory `name` in `parent` and opens it. A non-directory in the
/// way, a symlink included, is removed first. A new directory has `mode` (owner-only for one
/// whose metadata comes later).
pub(super) fn make_dir(parent: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<OwnedFd> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)) {
        Ok(()) => {}
        Err(Errno::EXIST) => match open_dir(parent, name) {
            Ok(fd) => return Ok(fd),
            // A link or a file: replaced like restic replaces what is in the way.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(io_err)?;
                rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)).map_err(io_err)?;
            }
            Err(e) => return Err(e),
        },
        Err(e) => return Err(io_err(e)),
    }
    open_dir(parent, name)
}

/// A directory made for a node: owner-only until [`apply_fd_metadata`].
pub(super) fn make_node_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    make_dir(parent, name, PRIVATE_DIR)
}

/// A parent of an included node that is not restored itself: mode as `mkdir -p` gives.
pub(super) fn make_plain_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    make_dir(parent, name, 0o777)
}

/// Opens the directory at `components` below `root` without following any link, even one
/// planted since (openat2 with `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS` where the kernel has it,
/// else one `O_NOFOLLOW` step per component).
pub(super) fn open_dir_beneath(
    root: BorrowedFd<'_>,
    components: &[OsString],
) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // Names from checked nodes; the step-by-step way below relies on it.
    if components
        .iter()
        .any(|c| c.is_empty() || c == "." || c == ".." || c.as_bytes().contains(&b'/'))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a path beneath the target",
        ));
    }
    if components.is_empty() {
        return rustix::fs::openat(root, ".", flags, Mode::empty()).map_err(io_err);
    }
    let mut rel = Vec::new();
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            rel.push(b'/');
        }
        rel.extend_from_slice(c.as_bytes());
    }
    let rel = OsString::from_vec(rel);
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(root, &rel, flags, Mode::empty(), resolve) {
        Ok(fd) => return Ok(fd),
        // No openat2 (before Linux 5.6, or filtered by a seccomp profile): step by step.
        Err(Errno::NOSYS | Errno::PERM | Errno::INVAL) => {}
        Err(e) => return Err(io_err(e)),
    }
    let mut dir = open_dir(root, components[0].as_os_str())?;
    for c in &components[1..] {
        dir = open_dir(dir.as_fd(), c)?;
    }
    Ok(dir)
}

/// Removes a non-directory at `name` so that it is replaced, not followed or written into.
fn remove_non_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Err(
            io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way"),
        ),
        Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(io_err),
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err(e)),
    }
}

/// Runs `create` (which fails with `EEXIST` when something is at `name`); when something is,
/// removes it (unless it is a directory) and runs `create` once more.
fn create_replacing<T>(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    mut create: impl FnMut() -> rustix::io::Result<T>,
) -> io::Result<T> {
    match create() {
        Err(Errno::EXIST) => {
            remove_non_dir(parent, name)?;
            create().map_err(io_err)
        }
        r => r.map_err(io_err),
    }
}

/// Creates the regular file `name` in `parent` (replacing a non-directory there, never
/// following a link) for writing, owner-only until its metadata is applied.
pub(super) fn create_file(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = create_replacing(parent, name, || {
        rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(0o600))
    })?;
    Ok(File::from(fd))
}

/// Creates the symlink `name` → `target` in `parent`.
pub(super) fn make_symlink(parent: BorrowedFd<'_>, name: &OsStr, target: &OsStr) -> io::Result<()> {
    create_replacing(parent, name, || rustix::fs::symlinkat(target, parent, name))
}

/// Creates a fifo or a device node (`kind`) `name` in `parent`, owner-only.
pub(super) fn make_special(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    kind: FileType,
    device: u64,
) -> io::Result<()> {
    create_replacing(parent, name, || {
        rustix::fs::mknodat(parent, name, kind, Mode::from_raw_mode(0o600), device)
    })
}

/// Where a file this restore created lives, to hard-link later members of its group to it.
/// Kept per open link group, so compact: one allocation for the whole path.
#[derive(Debug, Clone)]
pub(super) struct LinkSource {
    /// Its path below the target: its directories' names and its own, joined by `/` (each a
    /// plain name, checked before the file was made, so the split is unambiguous).
    path: Box<[u8]>,
    /// Its device and inode, checked before linking so that only that file is shared.
    dev: u64,
    /// See `dev`.
    ino: u64,
}

impl LinkSource {
    /// The source for `file`, created as `name` in the directory whose components below the
    /// target are `dir`.
    pub fn of<'a>(
        file: &File,
        dir: impl IntoIterator<Item = &'a OsStr>,
        name: &OsStr,
    ) -> io::Result<LinkSource> {
        let st = rustix::fs::fstat(file).map_err(io_err)?;
        let mut path = Vec::new();
        for c in dir {
            path.extend_from_slice(c.as_bytes());
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        Ok(LinkSource {
            path: path.into_boxed_slice(),
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// Its directory's components and its name.
    fn split(&self) -> (Vec<OsString>, &OsStr) {
        let mut parts: Vec<&[u8]> = self.path.split(|b| *b == b'/').collect();
        let name = OsStr::from_bytes(parts.pop().unwrap_or_default());
        let dir = parts
            .into_iter()
            .map(|c| OsStr::from_bytes(c).to_owned())
            .collect();
        (dir, name)
    }
}

/// Makes `name` in `parent` a hard link to `source` (replacing a non-directory there), if
/// `source` is still the regular file this restore created.
pub(super) fn hard_link(
    root: BorrowedFd<'_>,
    source: &LinkSource,
    parent: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    let (components, source_name) = source.split();
    let dir = open_dir_beneath(root, &components)?;
    let st = rustix::fs::statat(&dir, source_name, AtFlags::SYMLINK_NOFOLLOW).map_err(io_err)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_dev != source.dev
        || st.st_ino != source.ino
    {
        return Err(io::Error::other(
            "the first file of its hard-link group was replaced",
        ));
    }
    // No AT_SYMLINK_FOLLOW: the link is to that name's own inode, whatever it is by now.
    create_replacing(parent, name, || {
        rustix::fs::linkat(&dir, source_name, parent, name, AtFlags::empty())
    })
}

/// Removes `name` from `parent` (a file whose content could not be written).
pub(super) fn remove_file(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(io_err)
}

fn timespec(t: &DateTime<FixedOffset>) -> Timespec {
    Timespec {
        tv_sec: t.timestamp(),
        tv_nsec: t.timestamp_subsec_nanos().min(999_999_999).into(),
    }
}

fn timestamps(node: &Node) -> Timestamps {
    let atime = if node.atime == zero_time() {
        &node.mtime
    } else {
        &node.atime
    };
    Timestamps {
        last_access: timespec(atime),
        last_modification: timespec(&node.mtime),
    }
}

/// Records a failed chown unless it is the expected refusal to a non-root user (like cp -a
/// and restic, only root must be able to give files away).
fn owner_warning(result: rustix::io::Result<()>, node: &Node, is_root: bool) -> Option<String> {
    match result {
        Ok(()) => None,
        Err(Errno::PERM) if !is_root => None,
        Err(e) => Some(format!(
            "cannot set owner {}:{}: {}",
            node.uid,
            node.gid,
            io_err(e)
        )),
    }
}

/// Owner, mode, xattrs and times of a file or directory this restore created, through its
/// descriptor. chown first: it clears setuid/setgid, which only the fchmod after it sets.
/// Returns what could not be applied.
pub(super) fn apply_fd_metadata(fd: BorrowedFd<'_>, node: &Node, is_root: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    let owner = rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(node.uid)),
        Some(Gid::from_raw(node.gid)),
    );
    warnings.extend(owner_warning(owner, node, is_root));
    let perm = go_mode::to_unix_perm(node.mode);
    if let Err(e) = rustix::fs::fchmod(fd, Mode::from_raw_mode(perm)) {
        warnings.push(format!("cannot set mode {perm:o}: {}", io_err(e)));
    }
    for x in &node.extended_attributes {
        if let Err(e) = rustix::fs::fsetxattr(fd, x.name.as_str(), &x.value, XattrFlags::empty()) {
            warnings.push(xattr_warning(&x.name, e));
        }
    }
    if let Err(e) = rustix::fs::futimens(fd, &timestamps(node)) {
        warnings.push(format!("cannot set times: {}", io_err(e)));
    }
    warnings
}

fn xattr_warning(name: &str, e: Errno) -> String {
    if name.contains('\0') {
        return format!("extended attribute {name:?}: NUL in name");
    }
    format!("cannot set extended attribute {name}: {}", io_err(e))
}

/// `/proc/self/fd/<fd>` (a magic link to exactly that open object) joined with `name`.
fn proc_path(fd: BorrowedFd<'_>, name: Option<&OsStr>) -> OsString {
    let mut p = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
    if let Some(name) = name {
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
    }
    OsString::from_vec(p)
}

/// Owner, mode (not for a symlink: Linux has no mode on links), xattrs and times of the
/// symlink, fifo or device `name` in `parent`, never following it.
pub(super) fn apply_at_metadata(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    node: &Node,
    is_root: bool,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let owner = rustix::fs::chownat(
        parent,
        name,
        Some(Uid::from_raw(node.uid)),
        Some(Gid::from_raw(node.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    );
    warnings.extend(owner_warning(owner, node, is_root));
    if node.node_type != NodeType::Symlink {
        let perm = go_mode::to_unix_perm(node.mode);
        if let Err(e) = chmod_special(parent, name, perm) {
            warnings.push(format!("cannot set mode {perm:o}: {e}"));
        }
    }
    if !node.extended_attributes.is_empty() {
        // The directory through its magic link, the final name not followed (lsetxattr).
        let path = proc_path(parent, Some(name));
        for x in &node.extended_attributes {
            if let Err(e) =
                rustix::fs::lsetxattr(&path, x.name.as_str(), &x.value, XattrFlags::empty())
            {
                warnings.push(xattr_warning(&x.name, e));
            }
        }
    }
    if let Err(e) =
        rustix::fs::utimensat(parent, name, &timestamps(node), AtFlags::SYMLINK_NOFOLLOW)
    {
        warnings.push(format!("cannot set times: {}", io_err(e)));
    }
    warnings
}

/// chmod of a fifo or device without opening it (opening a device can act on it) and without
/// following a link: an `O_PATH` descriptor, checked not to be a link, changed through its
/// `/proc/self/fd` magic link.
fn chmod_special(parent: BorrowedFd<'_>, name: &OsStr, perm: u32) -> io::Result<()> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)?;
    let st = rustix::fs::fstat(&fd).map_err(io_err)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {}
        other => {
            return Err(io::Error::other(format!(
                "not a special file but {other:?}"
            )))
        }
    }
    rustix::fs::chmodat(
        rustix::fs::CWD,
        proc_path(fd.as_fd(), None),
        Mode::from_raw_mode(perm),
        AtFlags::empty(),
    )
    .map_err(io_err)
}

/// Whether the process runs as root (then a failed chown is worth a warning).
pub(super) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Raises the soft limit of open files to the hard limit, as the Go runtime does for every
/// program (restic included): a restore keeps the files of a batch open until their content
/// is written. Returns the soft limit in effect.
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), max) = (lim.current, lim.maximum) {
        let want = max.unwrap_or(u64::MAX).min(1 << 20);
        if want > cur {
            lim.current = Some(want);
            if setrlimit(Resource::Nofile, lim).is_ok() {
                return want;
            }
            return cur;
        }
        return cur;
    }
    u64::MAX
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir_fd(p: &std::path::Path) -> OwnedFd {
        rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn links_in_the_way_are_replaced_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (target, outside) = (tmp.path().join("t"), tmp.path().join("o"));
        std::fs::create_dir_all(&target).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"v").unwrap();
        let victim_mode = std::fs::metadata(outside.join("victim")).unwrap().mode();
        for name in ["f", "d", "l", "p"] {
            let to = if name == "d" {
                outside.clone()
            } else {
                outside.join("victim")
            };
            std::os::unix::fs::symlink(to, target.join(name)).unwrap();
        }
        let root = dir_fd(&target);
        let file = create_file(root.as_fd(), OsStr::new("f")).unwrap();
        rustix::fs::fchmod(&file, Mode::from_raw_mode(0o4755)).unwrap();
        let d = make_node_dir(root.as_fd(), OsStr::new("d")).unwrap();
        create_file(d.as_fd(), OsStr::new("child")).unwrap();
        make_symlink(root.as_fd(), OsStr::new("l"), OsStr::new("elsewhere")).unwrap();
        make_special(root.as_fd(), OsStr::new("p"), FileType::Fifo, 0).unwrap();
        let mut node = Node::new("p", NodeType::Fifo);
        node.mode = go_mode::from_unix(NodeType::Fifo, 0o640);
        assert!(apply_at_metadata(root.as_fd(), OsStr::new("p"), &node, true).is_empty());

        assert!(std::fs::symlink_metadata(target.join("f"))
            .unwrap()
            .is_file());
        assert!(std::fs::symlink_metadata(target.join("d"))
            .unwrap()
            .is_dir());
        assert_eq!(
            std::fs::read_link(target.join("l")).unwrap(),
            OsStr::new("elsewhere")
        );
        let p = std::fs::symlink_metadata(target.join("p")).unwrap();
        assert_eq!(p.mode() & 0o7777, 0o640);
        let victim = std::fs::metadata(outside.join("victim")).unwrap();
        assert_eq!(victim.mode(), victim_mode);
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"v");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn a_directory_in_the_way_of_a_file_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("x")).unwrap();
        let root = dir_fd(tmp.path());
        let e = create_file(root.as_fd(), OsStr::new("x")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn paths_beneath_the_target_never_cross_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("t/a/b")).unwrap();
        std::fs::create_dir_all(tmp.path().join("o")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("o"), tmp.path().join("t/a/l")).unwrap();
        let root = dir_fd(&tmp.path().join("t"));
        let comps = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        open_dir_beneath(root.as_fd(), &comps(&["a", "b"])).unwrap();
        open_dir_beneath(root.as_fd(), &[]).unwrap();
        assert!(open_dir_beneath(root.as_fd(), &comps(&["a", "l"])).is_err());
        assert!(open_dir_beneath(root.as_fd(), &comps(&[".."])).is_err());
        assert!(open_dir_beneath(root.as_fd(), &comps(&["a", "..", ".."])).is_err());
    }

    #[test]
    fn a_hard_link_only_shares_the_file_this_restore_made() {
        let tmp = tempfile::tempdir().unwrap();
        let root = dir_fd(tmp.path());
        let file = create_file(root.as_fd(), OsStr::new("first")).unwrap();
        let source = LinkSource::of(&file, [], OsStr::new("first")).unwrap();
        hard_link(root.as_fd(), &source, root.as_fd(), OsStr::new("second")).unwrap();
        let (a, b) = (
            std::fs::metadata(tmp.path().join("first")).unwrap(),
            std::fs::metadata(tmp.path().join("second")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        // Replaced by a link since: refused.
        std::fs::remove_file(tmp.path().join("first")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("first")).unwrap();
        assert!(hard_link(root.as_fd(), &source, root.as_fd(), OsStr::new("third")).is_err());
        assert!(std::fs::symlink_metadata(tmp.path().join("third")).is_err());
    }
}
