//! Local files written without filling the page cache: a local repository's files (whole or
//! not at all), and a restore's content.
//!
//! A backup writes each pack once and reads it back rarely, so the pages a buffered write
//! fills are of no use, and in a VM they are costly: fresh page-cache pages are cold memory
//! the host must map in (BENCHMARKS.md has the measurement). `RWF_DONTCACHE` writes through
//! the page cache and drops the pages once on disk (Linux 6.14+; older kernels and file
//! systems without it get a plain buffered write). A sidecar writing backups next to a
//! database also leaves the database's cache alone.

use std::fs::File;
use std::io::{self, IoSlice};
use std::path::Path;

use bytes::Bytes;
use rustix::io::{Errno, ReadWriteFlags};

/// `RWF_DONTCACHE`: not yet named by rustix.
const DONTCACHE: ReadWriteFlags = ReadWriteFlags::from_bits_retain(0x80);
/// Slices per `pwritev2` call: the kernel's `IOV_MAX`.
const MAX_SLICES: usize = 1024;

/// Writes `parts` back to back as `root/rel`: into `<rel>-tmp-<random>` first (a name no
/// listing takes for an id, as restic does), synced, then renamed into place, so a process
/// killed mid-write never leaves a truncated file. Creates missing parent directories.
pub(crate) fn write_atomically(root: &Path, rel: &str, parts: &[Bytes]) -> io::Result<()> {
    let target = root.join(rel);
    let tmp = root.join(format!("{rel}-tmp-{:016x}", rand::random::<u64>()));
    let file = match create(&tmp) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = tmp.parent() {
                std::fs::create_dir_all(dir)?;
            }
            create(&tmp)
        }
        other => other,
    }?;
    let written = write_all(&file, parts)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &target));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn create(path: &Path) -> io::Result<File> {
    File::options().write(true).create_new(true).open(path)
}

/// Writes all of `parts` from the start of `file`, uncached where the kernel can.
fn write_all(file: &File, parts: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    write_slices_at(file, &mut slices, 0)
}

/// Writes all of `data` at `offset` of `file`, uncached where the kernel can (see the module
/// docs): for content written once and not read back soon, such as a restore's files.
pub fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    write_slices_at(file, &mut [IoSlice::new(data)], offset)
}

fn write_slices_at(file: &File, slices: &mut [IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    let mut rest = slices;
    let mut flags = DONTCACHE;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MAX_SLICES)];
        match rustix::io::pwritev2(file, batch, offset, flags) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                offset += n as u64;
                IoSlice::advance_slices(&mut rest, n);
            }
            Err(Errno::INTR) => {}
            // A kernel or file system without uncached writes: write buffered.
            Err(Errno::OPNOTSUPP) if !flags.is_empty() => flags = ReadWriteFlags::empty(),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_land_back_to_back_under_the_final_name_only() {
        let dir = tempfile::tempdir().unwrap();
        // More parts than one call takes, some empty, in a directory that does not exist yet.
        let parts: Vec<Bytes> = (0..2500u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; (i % 7) as usize]))
            .collect();
        write_atomically(dir.path(), "data/ab/abcdef", &parts).unwrap();
        let want: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(
            std::fs::read(dir.path().join("data/ab/abcdef")).unwrap(),
            want
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("data/ab"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["abcdef"], "a temporary file was left behind");
        // Rewriting an existing file (same id, same content) replaces it.
        write_atomically(dir.path(), "data/ab/abcdef", &[Bytes::from_static(b"new")]).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("data/ab/abcdef")).unwrap(),
            b"new"
        );
        // At an offset, into an existing file, past its end.
        let file = File::options()
            .write(true)
            .open(dir.path().join("data/ab/abcdef"))
            .unwrap();
        write_all_at(&file, b"XY", 1).unwrap();
        write_all_at(&file, b"end", 6).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("data/ab/abcdef")).unwrap(),
            b"nXY\0\0\0end"
        );
    }

    #[test]
    fn a_file_system_without_uncached_writes_gets_buffered_ones() {
        // tmpfs has no RWF_DONTCACHE: the first write is refused and written again buffered.
        let dir = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
        let parts = [Bytes::from(vec![7u8; 100_000]), Bytes::from_static(b"tail")];
        write_atomically(dir.path(), "index/0123", &parts).unwrap();
        let got = std::fs::read(dir.path().join("index/0123")).unwrap();
        assert_eq!(got.len(), 100_004);
        assert!(got.starts_with(&[7u8; 100_000]) && got.ends_with(b"tail"));
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails after the data was written.
        std::fs::create_dir_all(dir.path().join("data/cd/cdef/inner")).unwrap();
        let err =
            write_atomically(dir.path(), "data/cd/cdef", &[Bytes::from_static(b"x")]).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("data/cd"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cdef"]);
    }
}
