//! The local fast path: a local repository's files are read and written directly, past
//! opendal (whose local reads go through fresh 2 MiB buffers and a second copy in tokio's file
//! reader, and whose writes fill the page cache). Listing, stats and deletes still go through
//! opendal's fs service ([`crate::backend::services`]).

use std::path::Path;

use bytes::Bytes;

use crate::backend::range::RangeReader;
use crate::backend::BackendError;
use crate::local_write;

/// Writes `path` atomically ([`local_write`]) on the local filesystem under `root`, from the parts as they are.
pub(crate) async fn write(root: &Path, path: &str, parts: Vec<Bytes>) -> Result<(), BackendError> {
    let (root, rel) = (root.to_path_buf(), path.to_string());
    tokio::task::spawn_blocking(move || local_write::write_atomically(&root, &rel, &parts))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| BackendError::Write {
            path: path.to_string(),
            source,
        })
}

/// Reads file `path` under `root` whole, or fails with [`BackendError::TooLarge`] when it holds
/// more than `limit` bytes (reading no more than one byte past the limit).
pub(crate) fn read_limited(root: &Path, path: &str, limit: u64) -> Result<Bytes, BackendError> {
    let full = root.join(path);
    let read = || -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let file = std::fs::File::open(&full)?;
        let mut out = Vec::new();
        file.take(limit + 1).read_to_end(&mut out)?;
        Ok((out.len() as u64 <= limit).then_some(out))
    };
    match read() {
        Ok(Some(data)) => Ok(Bytes::from(data)),
        Ok(None) => Err(BackendError::TooLarge {
            path: path.to_string(),
            limit,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BackendError::NotFound {
            path: path.to_string(),
        }),
        Err(source) => Err(BackendError::Read {
            path: path.to_string(),
            source,
        }),
    }
}

/// Opens `length` bytes at `offset` of file `path` under `root`, read straight into the
/// caller's buffers.
pub(crate) fn open_range(
    root: &Path,
    path: String,
    offset: u64,
    length: u64,
) -> Result<RangeReader, BackendError> {
    let file = std::fs::File::open(root.join(&path)).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BackendError::NotFound { path: path.clone() }
        } else {
            BackendError::Read {
                path: path.clone(),
                source,
            }
        }
    })?;
    Ok(RangeReader::file(path, file, offset, length))
}
