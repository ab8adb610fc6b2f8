//! The entry model shared by every source (filesystem walker, tar reader) and every sink
//! (tar writer, repository archiver).
//!
//! A source yields entries one at a time; a regular file's content is a reader that borrows the
//! source until the next entry is requested (a "lending iterator"), so no source ever buffers a
//! whole file and a tar stream can be consumed strictly sequentially.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

/// What kind of filesystem object an entry describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; its content follows as the entry's reader (exactly `Metadata::size` bytes).
    File,
    /// A directory. Its children follow it in the stream (sources that can, emit them grouped).
    Dir,
    /// A symbolic link pointing at `target` (stored verbatim, never resolved).
    Symlink {
        /// The link's target as stored in the link.
        target: PathBuf,
    },
    /// A hard link to an earlier entry of the same stream, named by that entry's `path`.
    HardLink {
        /// Path (relative, as in [`Entry::path`]) of the entry that carries the content.
        target: PathBuf,
    },
    /// A named pipe (metadata only).
    Fifo,
    /// A character device (metadata only).
    CharDevice {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
    /// A block device (metadata only).
    BlockDevice {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
    /// A unix socket (metadata only).
    Socket,
}

/// A point in time as seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z (may be negative).
    pub secs: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    pub nanos: u32,
}

/// An extended attribute (name and raw value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    /// Attribute name, e.g. `user.comment`.
    pub name: OsString,
    /// Raw attribute value.
    pub value: Vec<u8>,
}

/// Metadata carried by every entry. Fields a source cannot know are zero / `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Permission bits plus setuid/setgid/sticky (`st_mode & 0o7777`), without the file type.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Owner user name, when known.
    pub user: Option<String>,
    /// Owner group name, when known.
    pub group: Option<String>,
    /// Last modification time.
    pub mtime: Timestamp,
    /// Last access time, when known.
    pub atime: Option<Timestamp>,
    /// Last status change time, when known.
    pub ctime: Option<Timestamp>,
    /// Content size in bytes (regular files; 0 otherwise).
    pub size: u64,
    /// Inode number (0 when unknown, e.g. from a tar stream).
    pub inode: u64,
    /// Device id of the filesystem holding the entry (`st_dev`; 0 when unknown).
    pub dev: u64,
    /// Number of hard links (`st_nlink`; 0 when unknown).
    pub nlink: u64,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<Xattr>,
}

/// One entry of an entry stream.
pub struct Entry<'a> {
    /// Relative path inside the stream, without a leading `/` or `./` (e.g. `data/db/base/1`).
    /// For a walked directory this is the absolute path with the leading `/` removed, the same
    /// member name GNU tar would use.
    pub path: PathBuf,
    /// What the entry is.
    pub kind: EntryKind,
    /// Its metadata.
    pub meta: Metadata,
    /// Content of a regular file: yields exactly `meta.size` bytes (a source pads or truncates a
    /// file that changed while read and records a warning). `None` for every other kind.
    pub data: Option<&'a mut dyn Read>,
}

impl std::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("meta", &self.meta)
            .field("has_data", &self.data.is_some())
            .finish()
    }
}

/// A problem with one entry that did not stop the stream (the outcome becomes "partial").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The entry's path.
    pub path: PathBuf,
    /// What happened, for the user.
    pub message: String,
}

/// A source of entries: the filesystem walker or the tar reader.
pub trait EntrySource {
    /// Returns the next entry, or `None` at the end of the stream. The entry's reader borrows the
    /// source, so it must be dropped (read or not) before the next call; unread content is skipped.
    fn next_entry(&mut self) -> Result<Option<Entry<'_>>, crate::Error>;

    /// Warnings collected so far (unreadable or changing files, skipped mounts are not warnings).
    fn warnings(&self) -> &[Warning];

    /// Whether a later entry may refer to a directory this source has already left: a tar
    /// stream may return to a directory or hard-link a member without a link count, while a
    /// filesystem walk finishes each directory once and counts links. Consumers keep finished
    /// listings only for sources that may.
    fn may_revisit(&self) -> bool {
        true
    }

    /// Tells the source that its consumer reuses the content of files unchanged since `since`
    /// (a backup with a parent snapshot taken then) without reading them: a source that reads
    /// ahead then reads ahead only files changed since, so that an incremental backup of a
    /// cold volume does not pull every unchanged file from disk. A stream ignores it.
    fn read_ahead_since(&mut self, _since: Timestamp) {}
}
