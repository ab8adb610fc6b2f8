//! Range reads received as they arrive ([`RangeReader`]): from a response body, or straight
//! from a local file into the caller's buffer.

use bytes::Bytes;

use crate::backend::error::stream_error;
use crate::backend::BackendError;

/// A byte range of a stored file being received; see [`crate::Backend::read_range_stream`].
pub struct RangeReader {
    path: String,
    source: RangeSource,
    /// Bytes of the range not yet received.
    left: u64,
}

enum RangeSource {
    /// A local file, read where the range is up to.
    File { file: std::fs::File, pos: u64 },
    /// An empty range: nothing to receive.
    Empty,
    /// A response body, with what was received and not yet consumed.
    Stream {
        stream: Box<opendal::FuturesBytesStream>,
        pending: Bytes,
    },
}

impl RangeReader {
    /// `length` bytes of the local `file` (`path` in the repository) from `offset`.
    pub(crate) fn file(path: String, file: std::fs::File, offset: u64, length: u64) -> Self {
        RangeReader {
            path,
            source: RangeSource::File { file, pos: offset },
            left: length,
        }
    }

    /// An empty range of `path` (nothing is requested for it).
    pub(crate) fn empty(path: String) -> Self {
        RangeReader {
            path,
            source: RangeSource::Empty,
            left: 0,
        }
    }

    /// `length` bytes arriving on `stream` (`path` in the repository).
    pub(crate) fn stream(path: String, stream: opendal::FuturesBytesStream, length: u64) -> Self {
        RangeReader {
            path,
            source: RangeSource::Stream {
                stream: Box::new(stream),
                pending: Bytes::new(),
            },
            left: length,
        }
    }

    /// Appends the next `n` bytes of the range to `out`.
    pub async fn read_into(&mut self, n: usize, out: &mut Vec<u8>) -> Result<(), BackendError> {
        // Exact: callers size reused buffers by what they read; doubling would waste memory.
        out.reserve_exact(n);
        if let RangeSource::File { file, pos } = &mut self.source {
            if (n as u64) > self.left {
                return Err(self.short(n as u64));
            }
            let got = read_at_into(file, *pos, n, out).map_err(|source| BackendError::Read {
                path: self.path.clone(),
                source,
            })?;
            *pos += got as u64;
            self.left -= got as u64;
            return match n - got {
                0 => Ok(()),
                missing => Err(self.short(missing as u64)),
            };
        }
        let mut want = n;
        while want > 0 {
            let pending = self.fill(want as u64).await?;
            let take = want.min(pending.len());
            out.extend_from_slice(&pending.split_to(take));
            want -= take;
        }
        Ok(())
    }

    /// Skips the next `n` bytes of the range.
    pub async fn skip(&mut self, n: u64) -> Result<(), BackendError> {
        if let RangeSource::File { pos, .. } = &mut self.source {
            if n > self.left {
                return Err(self.short(n));
            }
            *pos += n;
            self.left -= n;
            return Ok(());
        }
        let mut want = n;
        while want > 0 {
            let pending = self.fill(want).await?;
            let take = want.min(pending.len() as u64);
            bytes::Buf::advance(pending, take as usize);
            want -= take;
        }
        Ok(())
    }

    fn short(&self, missing: u64) -> BackendError {
        BackendError::ShortRead {
            path: self.path.clone(),
            missing,
        }
    }

    /// The received bytes not yet consumed (never empty), with `want` bytes still to consume
    /// from a stream.
    async fn fill(&mut self, want: u64) -> Result<&mut Bytes, BackendError> {
        use futures::StreamExt;
        let path = &self.path;
        let short = || BackendError::ShortRead {
            path: path.clone(),
            missing: want,
        };
        let RangeSource::Stream { stream, pending } = &mut self.source else {
            return Err(short());
        };
        while pending.is_empty() {
            if self.left == 0 {
                // Asked for more than the range holds.
                return Err(short());
            }
            match stream.next().await {
                Some(Ok(b)) => {
                    // Never more than the range, whatever the server sends.
                    let keep = b
                        .len()
                        .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                    self.left -= keep as u64;
                    *pending = b.slice(..keep);
                }
                Some(Err(source)) => return Err(stream_error(path, want, source)),
                None => return Err(short()),
            }
        }
        Ok(pending)
    }
}

/// Appends up to `n` bytes read at `pos` of `file` to `out`; fewer only at the end of the
/// file. Returns how many.
pub(crate) fn read_at_into(
    file: &std::fs::File,
    pos: u64,
    n: usize,
    out: &mut Vec<u8>,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let start = out.len();
    // Zeroing costs a memset; reading into uninitialised memory would need unsafe code.
    out.resize(start + n, 0);
    let mut got = 0;
    while got < n {
        match file.read_at(&mut out[start + got..], pos + got as u64) {
            Ok(0) => break,
            Ok(r) => got += r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.truncate(start + got);
                return Err(e);
            }
        }
    }
    out.truncate(start + got);
    Ok(got)
}
