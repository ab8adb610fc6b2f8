//! The tar source: an [`EntrySource`] over any GNU, PAX or ustar tar stream.
//!
//! Headers are parsed one block at a time from a plain [`Read`] (no seeking), so a stream from
//! stdin is consumed strictly sequentially and a member's content is lent out as a reader.
//! A stream that ends early or holds a corrupt header is an [`Error`], never a silent end.
//!
//! After the end-of-archive marker, zero blocks (a blocking factor's padding) are skipped.
//! Another archive appended after the marker (`cat a.tar b.tar`) is read on, as GNU tar's
//! `--ignore-zeros` does, with a logged warning; any other data there is a [`Warning`] (the
//! backup ends partial, exit 3), never dropped without a word.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use tar::{EntryType, Header};

use crate::pax::{parse_records, parse_time};
use crate::{Entry, EntryKind, EntrySource, Error, Metadata, Timestamp, Warning, Xattr};

const BLOCK: usize = 512;
/// PAX extended headers (one member's, or one global header) larger than this are refused:
/// real ones hold a few names and times, and each is held in memory whole.
const MAX_EXTENDED: u64 = 1 << 20;
/// GNU long names and link targets longer than this are refused (Linux paths end at 4 KiB).
const MAX_LONG_NAME: u64 = 64 << 10;
/// Global PAX records in force at once (they apply to every later member, so are held for
/// the whole stream): more distinct keys than this, or more bytes than [`MAX_EXTENDED`], are
/// refused.
const MAX_GLOBAL_RECORDS: usize = 1024;
/// Read buffer in front of the input; file content larger than it bypasses it.
const READ_BUF: usize = 256 * 1024;

/// True when `first_block` is a valid tar header: at least 512 bytes, a non-empty name and a
/// correct header checksum (ustar, GNU and v7 headers all carry one). An all-zero block (an
/// empty archive) is not recognised, as it cannot be told apart from zero-filled input.
pub fn looks_like_tar(first_block: &[u8]) -> bool {
    let Some(block) = first_block.get(..BLOCK) else {
        return false;
    };
    block[0] != 0 && checksum_ok(block)
}

/// Whether the header's stored checksum matches its content (unsigned, or the signed sum some
/// old tars wrote). Runs once per member, so it parses the octal field in place and sums the
/// block in one pass the compiler vectorises (no allocation, no per-byte branch).
fn checksum_ok(block: &[u8]) -> bool {
    let Some(block) = block.get(..BLOCK) else {
        return false;
    };
    let field = &block[148..156];
    let text = &field[..field.iter().position(|&b| b == 0).unwrap_or(field.len())];
    let text = text.trim_ascii();
    if text.is_empty() || text.len() > 11 || !text.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return false;
    }
    let stored = text
        .iter()
        .fold(0u32, |acc, &b| (acc << 3) | u32::from(b - b'0'));
    let unsigned: u32 = block.iter().map(|&b| u32::from(b)).sum::<u32>()
        - field.iter().map(|&b| u32::from(b)).sum::<u32>()
        + 8 * u32::from(b' ');
    let signed: i32 = block.iter().map(|&b| i32::from(b as i8)).sum::<i32>()
        - field.iter().map(|&b| i32::from(b as i8)).sum::<i32>()
        + 8 * i32::from(b' ');
    stored == unsigned || i64::from(stored) == i64::from(signed)
}

/// The input plus the bytes left in the current member.
struct Body<R: Read> {
    inner: BufReader<R>,
    /// Bytes consumed from the input so far.
    pos: u64,
    /// Content bytes of the current member not yet read.
    remaining: u64,
}

impl<R: Read> Body<R> {
    /// Reads a full block; `Ok(false)` on a clean end of input before its first byte.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, Error> {
        match self.fill_block(block)? {
            0 => Ok(false),
            BLOCK => Ok(true),
            _ => Err(Error::Truncated {
                offset: self.pos,
                what: "header block".into(),
            }),
        }
    }

    /// Reads up to a block, short only at the end of input; returns how many bytes it read.
    fn fill_block(&mut self, block: &mut [u8; BLOCK]) -> Result<usize, Error> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::ReadTar(e)),
            }
        }
        self.pos += filled as u64;
        Ok(filled)
    }

    /// Discards `n` bytes of input.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), Error> {
        let copied =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(Error::ReadTar)?;
        self.pos += copied;
        if copied < n {
            return Err(Error::Truncated {
                offset: self.pos,
                what: what.to_string(),
            });
        }
        Ok(())
    }

    /// Reads the `size` bytes of a metadata member (extended header, long name) and its padding.
    /// `what` names it in the error when it is over `limit` bytes.
    fn read_small(
        &mut self,
        size: u64,
        offset: u64,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        if size > limit {
            return Err(Error::Malformed {
                offset,
                reason: format!("{what} of {size} bytes (at most {limit} are accepted)"),
            });
        }
        let mut data = Vec::new();
        let got = (&mut self.inner)
            .take(size)
            .read_to_end(&mut data)
            .map_err(Error::ReadTar)?;
        self.pos += got as u64;
        if (got as u64) < size {
            return Err(Error::Truncated {
                offset: self.pos,
                what: "extended header".into(),
            });
        }
        self.skip(pad(size), "block padding")?;
        Ok(data)
    }
}

impl<R: Read> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("tar stream truncated at byte {} inside a member", self.pos),
            ));
        }
        self.pos += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Yields the members of a tar stream as [`Entry`]s.
///
/// Member names are normalised to relative paths (leading `/` and `./` removed); a member whose
/// name or hard link target contains `..` is skipped with a [`Warning`]. The `./` member of
/// `tar -C dir .` (the archive root) has no name left and is skipped. GNU sparse members are
/// [`Error::Unsupported`].
///
/// ```no_run
/// use snapback_stream::{EntrySource, TarSource};
/// let mut source = TarSource::new(std::io::stdin().lock());
/// while let Some(entry) = source.next_entry()? {
///     println!("{}", entry.path.display());
/// }
/// # Ok::<(), snapback_stream::Error>(())
/// ```
pub struct TarSource<R: Read> {
    body: Body<R>,
    /// Padding after the current member's content.
    pad: u64,
    /// Records of `g` (global) extended headers, applying to all later members.
    global: BTreeMap<String, Vec<u8>>,
    warnings: Vec<Warning>,
    done: bool,
}

impl<R: Read> TarSource<R> {
    /// Reads a tar stream from `reader` (buffered internally). To re-feed a block already read
    /// for [`looks_like_tar`], chain it in front: `io::Cursor::new(block).chain(stdin)`.
    pub fn new(reader: R) -> Self {
        TarSource {
            body: Body {
                inner: BufReader::with_capacity(READ_BUF, reader),
                pos: 0,
                remaining: 0,
            },
            pad: 0,
            global: BTreeMap::new(),
            warnings: Vec::new(),
            done: false,
        }
    }

    /// Bytes of the input consumed so far.
    pub fn position(&self) -> u64 {
        self.body.pos
    }

    fn warn(&mut self, path: PathBuf, message: String) {
        tracing::warn!(path = %path.display(), "{message}");
        self.warnings.push(Warning { path, message });
    }

    /// Consumes the input after the end-of-archive marker, so a producer writing into a pipe
    /// does not fail with EPIPE; returns how many bytes there were.
    fn drain(&mut self) -> u64 {
        match io::copy(&mut self.body.inner, &mut io::sink()) {
            Ok(n) => {
                self.body.pos += n;
                n
            }
            Err(e) => {
                tracing::debug!("ignoring error after end of tar stream: {e}");
                0
            }
        }
    }

    /// Reads past an end-of-archive marker (a zero block at `marker`) up to the next data.
    /// Returns the header block of an archive appended after it, or `None` at the end of the
    /// input (zero padding only, or data that is no tar, which is then a [`Warning`]).
    fn after_end(&mut self, marker: u64, block: &mut [u8; BLOCK]) -> Result<bool, Error> {
        loop {
            let offset = self.body.pos;
            let filled = self.body.fill_block(block)?;
            if filled == 0 {
                return Ok(false);
            }
            if filled == BLOCK && block.iter().all(|&b| b == 0) {
                continue;
            }
            if filled == BLOCK && looks_like_tar(block) {
                tracing::warn!(
                    offset,
                    "another tar archive follows the end-of-archive marker at byte {marker}; \
                     reading it too (as tar --ignore-zeros)"
                );
                // A new archive: the previous one's global pax records do not carry over.
                self.global.clear();
                return Ok(true);
            }
            let extra = filled as u64 + self.drain();
            self.warn(
                PathBuf::from("<tar stream>"),
                format!(
                    "{extra} bytes of data that is not a tar archive follow the \
                     end-of-archive marker at byte {marker} (from byte {offset}); ignored"
                ),
            );
            return Ok(false);
        }
    }

    /// Reads headers up to the next real member and returns it (without borrowing content).
    fn next_member(&mut self) -> Result<Option<Member>, Error> {
        let mut local: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut block = [0u8; BLOCK];
        loop {
            let offset = self.body.pos;
            if !self.body.read_block(&mut block)? {
                return Err(Error::Truncated {
                    offset,
                    what: "end-of-archive marker".into(),
                });
            }
            if block.iter().all(|&b| b == 0) {
                if !local.is_empty() || long_name.is_some() || long_link.is_some() {
                    return Err(Error::Malformed {
                        offset,
                        reason: "extended header not followed by a member".into(),
                    });
                }
                if !self.after_end(offset, &mut block)? {
                    self.done = true;
                    return Ok(None);
                }
            }
            let offset = self.body.pos - BLOCK as u64;
            if !checksum_ok(&block) {
                return Err(Error::Malformed {
                    offset,
                    reason: "header checksum mismatch".into(),
                });
            }
            let header = Header::from_byte_slice(&block);
            let size = header.entry_size().map_err(|e| Error::Malformed {
                offset,
                reason: e.to_string(),
            })?;
            match header.entry_type() {
                EntryType::XHeader | EntryType::XGlobalHeader => {
                    let data =
                        self.body
                            .read_small(size, offset, MAX_EXTENDED, "PAX extended header")?;
                    let records = parse_records(&data)
                        .map_err(|reason| Error::Malformed { offset, reason })?;
                    if header.entry_type() == EntryType::XGlobalHeader {
                        self.global.extend(records);
                        let bytes: usize = self.global.iter().map(|(k, v)| k.len() + v.len()).sum();
                        if self.global.len() > MAX_GLOBAL_RECORDS || bytes as u64 > MAX_EXTENDED {
                            return Err(Error::Malformed {
                                offset,
                                reason: format!(
                                    "{} global PAX records of {bytes} bytes in force (at most \
                                     {MAX_GLOBAL_RECORDS} records and {MAX_EXTENDED} bytes are \
                                     accepted)",
                                    self.global.len()
                                ),
                            });
                        }
                    } else {
                        local.extend(records);
                        // Several local headers before one member add up.
                        let bytes: usize = local.iter().map(|(k, v)| k.len() + v.len()).sum();
                        if bytes as u64 > MAX_EXTENDED {
                            return Err(Error::Malformed {
                                offset,
                                reason: format!(
                                    "PAX extended headers of {bytes} bytes for one member (at \
                                     most {MAX_EXTENDED} are accepted)"
                                ),
                            });
                        }
                    }
                    continue;
                }
                EntryType::GNULongName => {
                    long_name = Some(trim_nul(self.body.read_small(
                        size,
                        offset,
                        MAX_LONG_NAME,
                        "GNU long name",
                    )?));
                    continue;
                }
                EntryType::GNULongLink => {
                    long_link = Some(trim_nul(self.body.read_small(
                        size,
                        offset,
                        MAX_LONG_NAME,
                        "GNU long link name",
                    )?));
                    continue;
                }
                EntryType::GNUSparse => {
                    return Err(Error::Unsupported {
                        path: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
                        reason: "GNU sparse member".into(),
                    })
                }
                _ => {}
            }
            let mut pax = self.global.clone();
            for (k, v) in local {
                // An empty value deletes the key (POSIX pax semantics).
                if v.is_empty() {
                    pax.remove(&k);
                } else {
                    pax.insert(k, v);
                }
            }
            return member(header, size, pax, long_name, long_link, offset).map(Some);
        }
    }
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// A parsed member header: everything but the content.
struct Member {
    raw_path: Vec<u8>,
    kind: Result<EntryKind, String>,
    meta: Metadata,
    /// Content bytes following the header.
    data_len: u64,
}

fn pax_str(pax: &BTreeMap<String, Vec<u8>>, key: &str) -> Option<String> {
    pax.get(key)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn pax_num(pax: &BTreeMap<String, Vec<u8>>, key: &str, offset: u64) -> Result<Option<u64>, Error> {
    match pax_str(pax, key) {
        None => Ok(None),
        Some(s) => s.trim().parse().map(Some).map_err(|_| Error::Malformed {
            offset,
            reason: format!("pax {key} {s:?} is not a number"),
        }),
    }
}

fn member(
    header: &Header,
    size: u64,
    pax: BTreeMap<String, Vec<u8>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    offset: u64,
) -> Result<Member, Error> {
    let malformed = |reason: String| Error::Malformed { offset, reason };
    let raw_path = pax
        .get("path")
        .cloned()
        .or(long_name)
        .unwrap_or_else(|| header.path_bytes().into_owned());
    if pax.keys().any(|k| k.starts_with("GNU.sparse.")) {
        return Err(Error::Unsupported {
            path: String::from_utf8_lossy(&raw_path).into_owned(),
            reason: "PAX sparse member".into(),
        });
    }
    let link = pax
        .get("linkpath")
        .cloned()
        .or(long_link)
        .or_else(|| header.link_name_bytes().map(|c| c.into_owned()))
        .unwrap_or_default();
    let size = pax_num(&pax, "size", offset)?.unwrap_or(size);
    let ty = header.entry_type();
    let device = |h: &Header| -> Result<u64, Error> {
        let major = h.device_major().map_err(|e| malformed(e.to_string()))?;
        let minor = h.device_minor().map_err(|e| malformed(e.to_string()))?;
        Ok(makedev(major.unwrap_or(0), minor.unwrap_or(0)))
    };
    let kind = match ty {
        EntryType::Regular | EntryType::Continuous if raw_path.ends_with(b"/") => {
            Ok(EntryKind::Dir) // v7 archives mark directories by the trailing slash only
        }
        EntryType::Regular | EntryType::Continuous => Ok(EntryKind::File),
        EntryType::Directory => Ok(EntryKind::Dir),
        // GNU incremental dump directory: a directory whose content lists its names.
        other if other.as_byte() == b'D' => Ok(EntryKind::Dir),
        EntryType::Symlink => Ok(EntryKind::Symlink {
            target: PathBuf::from(OsStr::from_bytes(&link)),
        }),
        EntryType::Link => match normalise(&link) {
            Ok(target) if target.as_os_str().is_empty() => Err("hard link without target".into()),
            Ok(target) => Ok(EntryKind::HardLink { target }),
            Err(reason) => Err(format!("hard link target {reason}")),
        },
        EntryType::Fifo => Ok(EntryKind::Fifo),
        EntryType::Char => Ok(EntryKind::CharDevice {
            rdev: device(header)?,
        }),
        EntryType::Block => Ok(EntryKind::BlockDevice {
            rdev: device(header)?,
        }),
        other => Err(format!(
            "unsupported member type {:?}",
            other.as_byte() as char
        )),
    };
    // POSIX: devices and fifos never carry content blocks, whatever their size field says.
    let data_len = match ty {
        EntryType::Char | EntryType::Block | EntryType::Fifo => 0,
        _ => size,
    };
    let id = |key: &str, field: io::Result<u64>| -> Result<u32, Error> {
        let v = match pax_num(&pax, key, offset)? {
            Some(v) => v,
            None => field.map_err(|e| malformed(e.to_string()))?,
        };
        u32::try_from(v).map_err(|_| malformed(format!("{key} {v} out of range")))
    };
    let name = |key: &str, field: Option<&[u8]>| {
        pax_str(&pax, key)
            .or_else(|| field.map(|b| String::from_utf8_lossy(b).into_owned()))
            .filter(|s| !s.is_empty())
    };
    let time = |key: &str| -> Result<Option<Timestamp>, Error> {
        match pax_str(&pax, key) {
            None => Ok(None),
            Some(s) => parse_time(&s)
                .map(Some)
                .ok_or_else(|| malformed(format!("pax {key} {s:?} is not a time"))),
        }
    };
    let mtime = match time("mtime")? {
        Some(t) => t,
        None => Timestamp {
            secs: header
                .mtime()
                .map_err(|e| malformed(e.to_string()))
                .and_then(|s| i64::try_from(s).map_err(|e| malformed(e.to_string())))?,
            nanos: 0,
        },
    };
    // GNU tar fills atime and ctime only when asked to (`--atime-preserve`, incremental
    // dumps). An empty field is skipped before parsing: the tar crate reports it as an error
    // whose message it formats with the member's name, a cost paid for every member.
    let gnu_time = |field: fn(&tar::GnuHeader) -> &[u8; 12],
                    parse: fn(&tar::GnuHeader) -> io::Result<u64>| {
        header
            .as_gnu()
            .filter(|g| field(g).iter().any(|&b| b != 0 && b != b' '))
            .and_then(|g| parse(g).ok())
            .filter(|&s| s != 0)
            .and_then(|s| i64::try_from(s).ok())
            .map(|secs| Timestamp { secs, nanos: 0 })
    };
    let mut xattrs: Vec<Xattr> = pax
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("SCHILY.xattr.").map(|n| Xattr {
                name: OsString::from(n),
                value: v.clone(),
            })
        })
        .collect();
    xattrs.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let meta = Metadata {
        mode: header.mode().map_err(|e| malformed(e.to_string()))? & 0o7777,
        uid: id("uid", header.uid())?,
        gid: id("gid", header.gid())?,
        user: name("uname", header.username_bytes()),
        group: name("gname", header.groupname_bytes()),
        mtime,
        atime: time("atime")?.or_else(|| gnu_time(|g| &g.atime, tar::GnuHeader::atime)),
        ctime: time("ctime")?.or_else(|| gnu_time(|g| &g.ctime, tar::GnuHeader::ctime)),
        size: if matches!(kind, Ok(EntryKind::File)) {
            size
        } else {
            0
        },
        inode: 0,
        dev: 0,
        nlink: 0,
        xattrs,
    };
    Ok(Member {
        raw_path,
        kind,
        meta,
        data_len,
    })
}

/// glibc `makedev`.
fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

/// Turns a member name into a clean relative path: no leading `/`, no `.` components, no
/// trailing `/`. Names with a `..` component are refused.
pub(crate) fn normalise(name: &[u8]) -> Result<PathBuf, String> {
    let mut out: Vec<u8> = Vec::with_capacity(name.len());
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(format!(
                    "{:?} contains a `..` component",
                    String::from_utf8_lossy(name)
                ))
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    Ok(PathBuf::from(OsStr::from_bytes(&out)))
}

impl<R: Read> EntrySource for TarSource<R> {
    fn next_entry(&mut self) -> Result<Option<Entry<'_>>, Error> {
        loop {
            if self.done {
                return Ok(None);
            }
            // Whatever the consumer left unread of the previous member.
            let rest = self.body.remaining + self.pad;
            self.body.remaining = 0;
            self.pad = 0;
            self.body.skip(rest, "member content")?;

            let Some(m) = self.next_member()? else {
                return Ok(None);
            };
            self.body.remaining = m.data_len;
            self.pad = pad(m.data_len);
            let path = match normalise(&m.raw_path) {
                Ok(p) if p.as_os_str().is_empty() => {
                    tracing::debug!("skipping the archive root member");
                    continue;
                }
                Ok(p) => p,
                Err(reason) => {
                    let shown = PathBuf::from(OsStr::from_bytes(&m.raw_path));
                    self.warn(shown, format!("member name {reason}; skipped"));
                    continue;
                }
            };
            let kind = match m.kind {
                Ok(kind) => kind,
                Err(reason) => {
                    self.warn(path, format!("{reason}; skipped"));
                    continue;
                }
            };
            let data = match kind {
                EntryKind::File => Some(&mut self.body as &mut dyn Read),
                _ => None,
            };
            return Ok(Some(Entry {
                path,
                kind,
                meta: m.meta,
                data,
            }));
        }
    }

    fn warnings(&self) -> &[Warning] {
        &self.warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_strips_root_and_dot_and_refuses_parent() {
        assert_eq!(normalise(b"/data/x").unwrap(), PathBuf::from("data/x"));
        assert_eq!(normalise(b"./a/./b/").unwrap(), PathBuf::from("a/b"));
        assert_eq!(normalise(b"./").unwrap(), PathBuf::from(""));
        assert!(normalise(b"a/../../etc/passwd").is_err());
    }

    #[test]
    fn makedev_matches_glibc_encoding() {
        assert_eq!(makedev(8, 1), 0x801);
        assert_eq!(makedev(1, 3), 0x103);
    }

    #[test]
    fn looks_like_tar_checks_the_header_checksum() {
        let mut h = Header::new_gnu();
        h.set_path("hello.txt").unwrap();
        h.set_size(0);
        h.set_cksum();
        assert!(looks_like_tar(h.as_bytes()));
        let mut broken = *h.as_bytes();
        broken[0] = b'j';
        assert!(
            !looks_like_tar(&broken),
            "a changed byte must break the checksum"
        );
        assert!(!looks_like_tar(&[0u8; 512]));
        assert!(!looks_like_tar(&h.as_bytes()[..100]));
        assert!(!looks_like_tar(&[b'a'; 512]));
    }

    #[test]
    fn checksum_accepts_the_signed_sum_and_refuses_bad_fields() {
        let mut h = Header::new_gnu();
        h.set_path("caf\u{e9}").unwrap(); // bytes over 0x7f: signed and unsigned sums differ
        h.set_size(0);
        h.set_cksum();
        assert!(checksum_ok(h.as_bytes()));
        let mut block = *h.as_bytes();
        let signed: i64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        let field = format!("{signed:06o}\0 ");
        block[148..156].copy_from_slice(field.as_bytes());
        assert!(
            checksum_ok(&block),
            "the signed sum of old tars is accepted"
        );
        block[148..156].copy_from_slice(b"0000009\0");
        assert!(!checksum_ok(&block), "a digit that is not octal");
        block[148..156].copy_from_slice(b"       \0");
        assert!(!checksum_ok(&block), "an empty field");
    }

    /// One metadata member (`ty`) of `data`, then a file, as a tar stream.
    fn with_meta_member(ty: EntryType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut h = Header::new_gnu();
        h.set_path("././@LongLink").unwrap();
        h.set_entry_type(ty);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len() + pad(data.len() as u64) as usize, 0);
        let mut f = empty_file_header();
        f.set_cksum();
        out.extend_from_slice(f.as_bytes());
        out.resize(out.len() + 1024, 0);
        out
    }

    /// A GNU header of an empty regular file `f` (checksum not yet set).
    fn empty_file_header() -> Header {
        let mut h = Header::new_gnu();
        h.set_path("f").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn first_error(stream: Vec<u8>) -> String {
        let mut src = TarSource::new(io::Cursor::new(stream));
        loop {
            match src.next_entry() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("stream accepted"),
                Err(e) => return e.to_string(),
            }
        }
    }

    /// A GNU file member with the given raw atime and ctime fields, then the end.
    fn gnu_member_times(atime: [u8; 12], ctime: [u8; 12]) -> Vec<u8> {
        let mut h = empty_file_header();
        let g = h.as_gnu_mut().unwrap();
        g.atime = atime;
        g.ctime = ctime;
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.resize(out.len() + 1024, 0);
        out
    }

    fn first_times(stream: Vec<u8>) -> (Option<Timestamp>, Option<Timestamp>) {
        let mut src = TarSource::new(io::Cursor::new(stream));
        let entry = src.next_entry().unwrap().unwrap();
        (entry.meta.atime, entry.meta.ctime)
    }

    #[test]
    fn gnu_atime_and_ctime_are_read_when_filled_and_absent_when_empty() {
        let octal = |v: &[u8]| {
            let mut f = [0u8; 12];
            f[..v.len()].copy_from_slice(v);
            f
        };
        let at = |secs| Some(Timestamp { secs, nanos: 0 });
        assert_eq!(
            first_times(gnu_member_times(
                octal(b"00000000017"),
                octal(b"00000000144")
            )),
            (at(0o17), at(0o144))
        );
        // Empty (NUL or blank, as GNU tar writes them by default) and zero fields are no time.
        assert_eq!(
            first_times(gnu_member_times([0; 12], octal(b"           "))),
            (None, None)
        );
        assert_eq!(
            first_times(gnu_member_times(
                octal(b"00000000000"),
                octal(b"00000000001")
            )),
            (None, at(1))
        );
        // Garbage is no time either, not an error: these fields are a GNU extension.
        assert_eq!(
            first_times(gnu_member_times(octal(b"zz"), [0; 12])),
            (None, None)
        );
    }

    #[test]
    fn oversized_long_names_and_pax_headers_are_refused() {
        let long = vec![b'a'; (MAX_LONG_NAME + 1) as usize];
        let err = first_error(with_meta_member(EntryType::GNULongName, &long));
        assert!(err.contains("GNU long name"), "{err}");
        let err = first_error(with_meta_member(EntryType::GNULongLink, &long));
        assert!(err.contains("GNU long link name"), "{err}");

        let record = |key: &str, value: &str| {
            let body = format!("{key}={value}\n");
            // The length prefix counts itself.
            let mut n = body.len() + 2;
            while format!("{n} {body}").len() != n {
                n += 1;
            }
            format!("{n} {body}")
        };
        let big = record("comment", &"x".repeat(MAX_EXTENDED as usize));
        let big = big.as_bytes();
        let err = first_error(with_meta_member(EntryType::XHeader, big));
        assert!(err.contains("PAX extended header"), "{err}");

        // Many global headers, each small, adding up to too many records.
        let mut stream = Vec::new();
        for i in 0..=MAX_GLOBAL_RECORDS {
            let rec = record(&format!("k{i}"), "v");
            let mut one = with_meta_member(EntryType::XGlobalHeader, rec.as_bytes());
            one.truncate(one.len() - 1024 - BLOCK); // keep the global header only
            stream.extend_from_slice(&one);
        }
        stream.extend_from_slice(&with_meta_member(EntryType::XHeader, b"")[..]);
        let err = first_error(stream);
        assert!(err.contains("global PAX records"), "{err}");

        // Under the limits, the same shapes are read.
        let ok = vec![b'a'; 200];
        let mut src = TarSource::new(io::Cursor::new(with_meta_member(
            EntryType::GNULongName,
            &ok,
        )));
        let e = src.next_entry().unwrap().unwrap();
        assert_eq!(e.path.as_os_str().len(), 200);
    }
}
