//! The tar sink: writes any [`EntrySource`] as a POSIX (PAX) tar stream that GNU tar reads.
//!
//! Headers are ustar; whatever ustar cannot hold (long names and link names, sizes of 8 GiB and
//! more, sub-second times, large ids, long user names, xattrs) goes into a PAX extended header
//! written just before the member. The output depends only on the entries, never on the
//! current time or process, so an unchanged tree gives a byte-identical stream.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::{EntryType, Header};

use crate::pax::{format_time, push_record};
use crate::{Entry, EntryKind, EntrySource, Error, Timestamp, Warning};

/// Tar block size.
const BLOCK: u64 = 512;
/// Largest value of a 12-byte octal field (size, mtime): 8^11 - 1.
const MAX_OCTAL_12: u64 = (1 << 33) - 1;
/// Largest value of an 8-byte octal field (uid, gid): 8^7 - 1.
const MAX_OCTAL_8: u64 = (1 << 21) - 1;
/// Copy buffer for file content; large enough to keep syscalls off the profile.
const COPY_BUF: usize = 256 * 1024;

/// Choices for the tar output.
#[derive(Debug, Clone, Default)]
pub struct TarOptions {
    /// Also record atime and ctime as PAX records. Off by default: reading the tree updates
    /// atimes, so with them two backups of an unchanged tree would differ.
    pub atime_ctime: bool,
}

/// What a finished tar stream holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Members written (not counting PAX extended headers).
    pub entries: u64,
    /// File content bytes written.
    pub bytes: u64,
    /// The source's warnings plus the writer's own (entries tar cannot represent).
    pub warnings: Vec<Warning>,
}

impl Summary {
    /// True when something was left out or altered: the outcome is "partial".
    pub fn is_partial(&self) -> bool {
        !self.warnings.is_empty()
    }
}

/// Writes every entry of `source` to `out` as a tar stream with default [`TarOptions`] and
/// returns what was written. `out` should be buffered; it is flushed at the end.
pub fn write_tar<W: Write>(source: &mut dyn EntrySource, out: W) -> Result<Summary, Error> {
    write_tar_with(source, out, &TarOptions::default())
}

/// [`write_tar`] with explicit options.
pub fn write_tar_with<W: Write>(
    source: &mut dyn EntrySource,
    out: W,
    options: &TarOptions,
) -> Result<Summary, Error> {
    let mut builder = tar::Builder::new(out);
    let mut buf = vec![0u8; COPY_BUF];
    let mut summary = Summary::default();
    let mut own_warnings = Vec::new();
    while let Some(mut entry) = source.next_entry()? {
        let Some((header, pax)) = build_header(&entry, options, &mut own_warnings) else {
            continue;
        };
        if !pax.is_empty() {
            let pax_header = pax_header(&entry, pax.len() as u64);
            builder
                .append(&pax_header, pax.as_slice())
                .map_err(Error::WriteTar)?;
        }
        if entry.kind == EntryKind::File {
            // A file without a reader (a source bug) still gets its size in zeros, keeping the
            // archive valid; copy_exact records the warning.
            let mut empty = io::empty();
            let data: &mut dyn Read = match entry.data.take() {
                Some(data) => data,
                None => &mut empty,
            };
            let out = builder.get_mut();
            out.write_all(header.as_bytes()).map_err(Error::WriteTar)?;
            let size = entry.meta.size;
            copy_exact(data, out, size, &mut buf, &entry.path, &mut own_warnings)?;
            write_zeros(out, padding(size))?;
            summary.bytes += size;
        } else {
            builder
                .append(&header, io::empty())
                .map_err(Error::WriteTar)?;
        }
        summary.entries += 1;
    }
    let mut out = builder.into_inner().map_err(Error::WriteTar)?;
    out.flush().map_err(Error::WriteTar)?;
    summary.warnings = source.warnings().to_vec();
    summary.warnings.extend(own_warnings);
    Ok(summary)
}

/// Copies exactly `size` bytes; a short source (a bug in the source) is zero-padded so the
/// archive stays valid.
fn copy_exact(
    data: &mut dyn Read,
    out: &mut dyn Write,
    size: u64,
    buf: &mut [u8],
    path: &Path,
    warnings: &mut Vec<Warning>,
) -> Result<(), Error> {
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let got = match data.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::ReadTar(e)),
        };
        if got == 0 {
            warnings.push(Warning {
                path: path.to_path_buf(),
                message: format!("content ended {left} bytes early; padded with zeros"),
            });
            return write_zeros(out, left);
        }
        out.write_all(&buf[..got]).map_err(Error::WriteTar)?;
        left -= got as u64;
    }
    Ok(())
}

fn write_zeros(out: &mut dyn Write, mut n: u64) -> Result<(), Error> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..k]).map_err(Error::WriteTar)?;
        n -= k as u64;
    }
    Ok(())
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// Copies `bytes` into a NUL-padded header field, truncating if needed.
fn put(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
    field[n..].fill(0);
}

/// Splits a member name into ustar `prefix` and `name` (at a `/`), if it fits.
fn ustar_split(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    // The prefix takes as much as it can (<= 155 bytes), the rest must fit in 100.
    let limit = name.len().min(156);
    let slash = name[..limit].iter().rposition(|&b| b == b'/')?;
    let (prefix, rest) = (&name[..slash], &name[slash + 1..]);
    (!prefix.is_empty() && !rest.is_empty() && rest.len() <= 100).then_some((prefix, rest))
}

/// Builds the ustar header of `entry` and the PAX records it needs (empty if none).
/// `None` for entries tar cannot hold (sockets), which GNU tar skips too.
fn build_header(
    entry: &Entry<'_>,
    options: &TarOptions,
    warnings: &mut Vec<Warning>,
) -> Option<(Header, Vec<u8>)> {
    let meta = &entry.meta;
    let mut pax = Vec::new();
    let mut header = Header::new_ustar();
    let (ty, link) = match &entry.kind {
        EntryKind::File => (EntryType::Regular, None),
        EntryKind::Dir => (EntryType::Directory, None),
        EntryKind::Symlink { target } => (EntryType::Symlink, Some(target.as_os_str())),
        EntryKind::HardLink { target } => (EntryType::Link, Some(target.as_os_str())),
        EntryKind::Fifo => (EntryType::Fifo, None),
        EntryKind::CharDevice { .. } => (EntryType::Char, None),
        EntryKind::BlockDevice { .. } => (EntryType::Block, None),
        EntryKind::Socket => {
            tracing::info!(path = %entry.path.display(), "socket ignored (tar cannot hold it)");
            return None;
        }
    };
    header.set_entry_type(ty);

    let mut name = entry.path.as_os_str().as_bytes().to_vec();
    if entry.kind == EntryKind::Dir && !name.ends_with(b"/") {
        name.push(b'/');
    }
    let binary_names =
        std::str::from_utf8(&name).is_err() || link.is_some_and(|l| l.to_str().is_none());
    if binary_names {
        // PAX text is UTF-8 unless declared otherwise; GNU tar understands this record.
        push_record(&mut pax, "hdrcharset", b"BINARY");
    }
    if let Some(ustar) = header.as_ustar_mut() {
        match ustar_split(&name) {
            Some((prefix, rest)) => {
                put(&mut ustar.prefix, prefix);
                put(&mut ustar.name, rest);
            }
            None => {
                push_record(&mut pax, "path", &name);
                put(&mut ustar.name, &name);
            }
        }
    }
    if let Some(link) = link {
        let bytes = link.as_bytes();
        if bytes.len() > 100 {
            push_record(&mut pax, "linkpath", bytes);
        }
        put(&mut header.as_old_mut().linkname, bytes);
    }

    header.set_mode(meta.mode & 0o7777);
    set_id(&mut header, &mut pax, "uid", meta.uid);
    set_id(&mut header, &mut pax, "gid", meta.gid);
    set_name(&mut header, &mut pax, "uname", meta.user.as_deref());
    set_name(&mut header, &mut pax, "gname", meta.group.as_deref());

    let size = if entry.kind == EntryKind::File {
        meta.size
    } else {
        0
    };
    header.set_size(size);
    if size > MAX_OCTAL_12 {
        push_record(&mut pax, "size", size.to_string().as_bytes());
    }

    let mt = meta.mtime;
    match u64::try_from(mt.secs) {
        Ok(s) if s <= MAX_OCTAL_12 => header.set_mtime(s),
        _ => header.set_mtime(0),
    }
    if mt.nanos != 0 || u64::try_from(mt.secs).map_or(true, |s| s > MAX_OCTAL_12) {
        push_record(&mut pax, "mtime", format_time(mt).as_bytes());
    }
    if options.atime_ctime {
        for (key, t) in [("atime", meta.atime), ("ctime", meta.ctime)] {
            if let Some(t) = t {
                push_record(&mut pax, key, format_time(t).as_bytes());
            }
        }
    }

    if let EntryKind::CharDevice { rdev } | EntryKind::BlockDevice { rdev } = entry.kind {
        let (major, minor) = split_rdev(rdev);
        // Both fit: ustar device fields are 8 bytes of octal (21 bits); larger ones are
        // truncated by the tar crate's encoder, matching what GNU tar can store.
        let _ = header.set_device_major(major);
        let _ = header.set_device_minor(minor);
    }

    for x in &meta.xattrs {
        match x.name.to_str() {
            Some(name) => push_record(&mut pax, &format!("SCHILY.xattr.{name}"), &x.value),
            None => warnings.push(Warning {
                path: entry.path.clone(),
                message: format!(
                    "extended attribute {:?} has a non-UTF-8 name; not stored",
                    x.name
                ),
            }),
        }
    }
    header.set_cksum();
    Some((header, pax))
}

fn set_id(header: &mut Header, pax: &mut Vec<u8>, key: &str, id: u32) {
    let id = u64::from(id);
    if id > MAX_OCTAL_8 {
        push_record(pax, key, id.to_string().as_bytes());
    }
    if key == "uid" {
        header.set_uid(id.min(MAX_OCTAL_8));
    } else {
        header.set_gid(id.min(MAX_OCTAL_8));
    }
}

fn set_name(header: &mut Header, pax: &mut Vec<u8>, key: &str, name: Option<&str>) {
    let Some(name) = name else { return };
    let fits = if key == "uname" {
        header.set_username(name)
    } else {
        header.set_groupname(name)
    };
    if fits.is_err() {
        push_record(pax, key, name.as_bytes());
    }
}

/// Linux `dev_t` encoding (glibc `gnu_dev_major` / `gnu_dev_minor`).
fn split_rdev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
    (major as u32, minor as u32)
}

/// The `x` header announcing `len` bytes of PAX records for `entry`. Its name is derived from
/// the entry (like GNU tar's `%d/PaxHeaders/%f`, minus the process id) to stay deterministic.
fn pax_header(entry: &Entry<'_>, len: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::XHeader);
    let base = entry
        .path
        .file_name()
        .unwrap_or_else(|| OsStr::new("entry"))
        .as_bytes();
    let mut name = b"PaxHeaders/".to_vec();
    name.extend_from_slice(base);
    if let Some(ustar) = h.as_ustar_mut() {
        put(&mut ustar.name, &name);
    }
    h.set_mode(0o644);
    h.set_size(len);
    h.set_mtime(clamp_secs(entry.meta.mtime));
    h.set_cksum();
    h
}

fn clamp_secs(t: Timestamp) -> u64 {
    u64::try_from(t.secs).unwrap_or(0).min(MAX_OCTAL_12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ustar_split_uses_prefix_only_when_name_is_too_long() {
        assert_eq!(ustar_split(b"a/b"), Some((&b""[..], &b"a/b"[..])));
        let long = [vec![b'd'; 120], b"/".to_vec(), vec![b'f'; 90]].concat();
        let (p, n) = ustar_split(&long).unwrap();
        assert_eq!((p.len(), n.len()), (120, 90));
        // A single component longer than 100 bytes cannot be split.
        assert_eq!(ustar_split(&[b'x'; 101]), None);
        // Prefix would need more than 155 bytes.
        let deep = [vec![b'd'; 200], b"/f".to_vec()].concat();
        assert_eq!(ustar_split(&deep), None);
    }

    fn records(pax: &[u8]) -> Vec<(String, Vec<u8>)> {
        crate::pax::parse_records(pax).unwrap()
    }

    #[test]
    fn fields_ustar_cannot_hold_go_into_pax_records() {
        let entry = Entry {
            path: "data/huge.img".into(),
            kind: EntryKind::File,
            meta: crate::Metadata {
                mode: 0o640,
                uid: 3_000_000,
                gid: 7,
                user: Some("u".repeat(40)),
                group: Some("staff".into()),
                mtime: Timestamp { secs: -5, nanos: 0 },
                size: 9 << 30,
                ..Default::default()
            },
            data: None,
        };
        let (header, pax) = build_header(&entry, &TarOptions::default(), &mut Vec::new()).unwrap();
        let recs = records(&pax);
        let get = |k: &str| {
            recs.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("size"), Some(b"9663676416".to_vec()));
        assert_eq!(get("uid"), Some(b"3000000".to_vec()));
        assert_eq!(get("uname"), Some("u".repeat(40).into_bytes()));
        assert_eq!(get("mtime"), Some(b"-5".to_vec()));
        assert_eq!(get("gid"), None, "a small gid fits the header");
        assert_eq!(get("gname"), None);
        // The header itself still holds the size (GNU base-256) and a valid checksum.
        assert_eq!(header.entry_size().unwrap(), 9 << 30);
        assert!(crate::looks_like_tar(header.as_bytes()));
    }

    #[test]
    fn plain_entry_needs_no_pax_header() {
        let entry = Entry {
            path: "etc/config".into(),
            kind: EntryKind::File,
            meta: crate::Metadata {
                mode: 0o644,
                mtime: Timestamp {
                    secs: 1_700_000_000,
                    nanos: 0,
                },
                size: 3,
                ..Default::default()
            },
            data: None,
        };
        let (_, pax) = build_header(&entry, &TarOptions::default(), &mut Vec::new()).unwrap();
        assert!(pax.is_empty());
        let with_times = TarOptions { atime_ctime: true };
        let mut e2 = entry;
        e2.meta.ctime = Some(Timestamp { secs: 5, nanos: 1 });
        let (_, pax) = build_header(&e2, &with_times, &mut Vec::new()).unwrap();
        assert_eq!(
            records(&pax),
            vec![("ctime".to_string(), b"5.000000001".to_vec())]
        );
    }

    /// A source yielding fixed entries without content readers.
    struct Fixed(Vec<(&'static str, EntryKind, u64)>);

    impl EntrySource for Fixed {
        fn next_entry(&mut self) -> Result<Option<Entry<'_>>, Error> {
            if self.0.is_empty() {
                return Ok(None);
            }
            let (path, kind, size) = self.0.remove(0);
            let meta = crate::Metadata {
                size,
                ..Default::default()
            };
            Ok(Some(Entry {
                path: path.into(),
                kind,
                meta,
                data: None,
            }))
        }
        fn warnings(&self) -> &[Warning] {
            &[]
        }
    }

    #[test]
    fn file_without_reader_is_zero_filled_and_socket_is_left_out() {
        let mut src = Fixed(vec![
            ("sock", EntryKind::Socket, 0),
            ("f", EntryKind::File, 700),
        ]);
        let mut out = Vec::new();
        let summary = write_tar(&mut src, &mut out).unwrap();
        assert_eq!(summary.entries, 1);
        assert_eq!(summary.warnings.len(), 1);
        assert_eq!(summary.warnings[0].path, std::path::PathBuf::from("f"));
        // header + 700 bytes padded to 1024 + end marker
        assert_eq!(out.len(), 512 + 1024 + 1024);
        assert!(out[512..].iter().all(|&b| b == 0));
    }

    #[test]
    fn rdev_splits_like_glibc() {
        // makedev(8, 1) and makedev(259, 65536)
        assert_eq!(split_rdev(0x801), (8, 1));
        let (major, minor) = (259u64, 65536u64);
        let dev = ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12);
        assert_eq!(split_rdev(dev), (259, 65536));
    }
}
