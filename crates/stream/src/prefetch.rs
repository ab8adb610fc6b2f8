//! [`Prefetch`]: runs a source on a thread of its own, so that reading and parsing overlap
//! with whatever the consumer does with the entries.
//!
//! Meant for a tar stream, whose content must be read anyway: the reader thread parses headers
//! and copies content while the archiver hashes, chunks and builds trees. Not for the walker,
//! whose consumer skips the content of unchanged files (a prefetching thread would read it).
//!
//! Nothing crosses per member: entries travel in batches (up to [`BATCH_ENTRIES`] entries and
//! about [`BATCH_BYTES`] bytes of content), small files' content inline in the batch. A file
//! longer than [`INLINE_MAX`] ends its batch and the rest of its content follows in pieces of
//! [`PIECE`] bytes. The channel holds at most [`IN_FLIGHT`] messages, so memory is bounded (a
//! few hundred KiB per message) whatever the stream holds, and the consumer's pace reaches the
//! input. Buffers go back to the reader thread for reuse, so nothing is allocated per piece.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

use crate::{Entry, EntryKind, EntrySource, Error, Metadata, Warning};

/// Entries per batch at most.
pub const BATCH_ENTRIES: usize = 256;
/// A batch is sent once its inline content holds this many bytes.
pub const BATCH_BYTES: usize = 192 * 1024;
/// Content up to this size travels inline in a batch; the rest of a longer file in pieces.
pub const INLINE_MAX: usize = 64 * 1024;
/// Bytes per piece of a long file's content.
pub const PIECE: usize = 192 * 1024;
/// Messages (batches or pieces) queued between the threads at most.
pub const IN_FLIGHT: usize = 4;

/// An entry without its borrow: where its content is.
struct Item {
    path: PathBuf,
    kind: EntryKind,
    meta: Metadata,
    /// `None` when the source gave no reader (anything but a regular file).
    content: Option<Content>,
}

/// A file's content: `data[start..end]` of its batch, then (when `more`) pieces.
struct Content {
    start: usize,
    end: usize,
    /// The read failed after `end`; no pieces follow.
    error: Option<io::Error>,
    /// Pieces follow the batch, up to [`Msg::ContentEnd`] or [`Msg::PieceError`].
    more: bool,
}

struct Batch {
    items: Vec<Item>,
    data: Vec<u8>,
    /// Warnings the source recorded since the previous batch.
    warnings: Vec<Warning>,
}

enum Msg {
    Batch(Batch),
    Piece(Vec<u8>),
    PieceError(io::Error),
    ContentEnd,
    /// The source failed; nothing follows.
    Failed(Error),
    /// The source ended; nothing follows.
    End,
}

/// An [`EntrySource`] that runs another on a thread of its own; see the module docs.
///
/// Dropping it early stops the thread at its next hand-over (it is not waited for: it may be
/// blocked reading its input).
pub struct Prefetch {
    feed: Feed,
    items: std::vec::IntoIter<Item>,
    warnings: Vec<Warning>,
    done: bool,
}

impl Prefetch {
    /// Starts a thread that reads `source` ahead. Fails only when the thread cannot be started.
    pub fn new<S: EntrySource + Send + 'static>(source: S) -> io::Result<Self> {
        let (tx, rx) = sync_channel(IN_FLIGHT);
        let (back, spare) = channel();
        std::thread::Builder::new()
            .name("entry-prefetch".into())
            .spawn(move || produce(source, &tx, &spare))?;
        Ok(Prefetch {
            feed: Feed {
                rx,
                back,
                data: Vec::new(),
                pos: 0,
                end: 0,
                error: None,
                more: false,
                piece: Vec::new(),
                piece_pos: 0,
            },
            items: Vec::new().into_iter(),
            warnings: Vec::new(),
            done: false,
        })
    }
}

impl EntrySource for Prefetch {
    fn next_entry(&mut self) -> Result<Option<Entry<'_>>, Error> {
        // Whatever the consumer left unread of the previous file.
        self.feed.skip_rest()?;
        let item = loop {
            if self.done {
                return Ok(None);
            }
            if let Some(item) = self.items.next() {
                break item;
            }
            match self.feed.rx.recv() {
                Ok(Msg::Batch(batch)) => {
                    let old = std::mem::replace(&mut self.feed.data, batch.data);
                    self.feed.give_back(old);
                    self.items = batch.items.into_iter();
                    self.warnings.extend(batch.warnings);
                }
                Ok(Msg::Failed(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Ok(Msg::End) => self.done = true,
                Ok(_) => {
                    self.done = true;
                    return Err(Error::ReadTar(io::Error::other(
                        "entry prefetch: content where an entry was expected",
                    )));
                }
                Err(_) => {
                    self.done = true;
                    return Err(Error::ReadTar(io::Error::other(
                        "the entry reader thread stopped unexpectedly",
                    )));
                }
            }
        };
        let data = match item.content {
            Some(c) => {
                self.feed.pos = c.start;
                self.feed.end = c.end;
                self.feed.error = c.error;
                self.feed.more = c.more;
                Some(&mut self.feed as &mut dyn Read)
            }
            None => None,
        };
        Ok(Some(Entry {
            path: item.path,
            kind: item.kind,
            meta: item.meta,
            data,
        }))
    }

    fn warnings(&self) -> &[Warning] {
        &self.warnings
    }
}

/// The consumer's end of the channel, and the reader of the current file's content.
struct Feed {
    rx: Receiver<Msg>,
    /// Spent buffers, back to the reader thread.
    back: Sender<Vec<u8>>,
    /// Content of the current batch.
    data: Vec<u8>,
    /// The current file's inline content is `data[pos..end]`.
    pos: usize,
    end: usize,
    error: Option<io::Error>,
    /// Pieces of the current file still to come.
    more: bool,
    piece: Vec<u8>,
    piece_pos: usize,
}

impl Feed {
    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() > 0 {
            buf.clear();
            // The reader thread may be gone; then the buffer is just freed.
            let _ = self.back.send(buf);
        }
    }

    /// Receives the next piece of the current file; `false` at its end.
    fn next_piece(&mut self) -> io::Result<bool> {
        self.more = false;
        match self.rx.recv() {
            Ok(Msg::Piece(p)) => {
                let old = std::mem::replace(&mut self.piece, p);
                self.give_back(old);
                self.piece_pos = 0;
                self.more = true;
                Ok(true)
            }
            Ok(Msg::ContentEnd) => Ok(false),
            Ok(Msg::PieceError(e)) => Err(e),
            Ok(_) => Err(io::Error::other(
                "entry prefetch: an entry where content was expected",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the entry reader thread stopped inside a file",
            )),
        }
    }

    /// Drops the rest of the current file's content.
    fn skip_rest(&mut self) -> Result<(), Error> {
        self.pos = self.end;
        self.error = None;
        self.piece_pos = self.piece.len();
        while self.more {
            self.next_piece().map_err(Error::ReadTar)?;
            self.piece_pos = self.piece.len();
        }
        Ok(())
    }
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos < self.end {
            let n = buf.len().min(self.end - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        loop {
            if self.piece_pos < self.piece.len() {
                let n = buf.len().min(self.piece.len() - self.piece_pos);
                buf[..n].copy_from_slice(&self.piece[self.piece_pos..self.piece_pos + n]);
                self.piece_pos += n;
                return Ok(n);
            }
            if !self.more || !self.next_piece()? {
                return Ok(0);
            }
        }
    }
}

/// A cleared buffer: a spent one back from the consumer, or a new one.
fn buffer(spare: &Receiver<Vec<u8>>) -> Vec<u8> {
    spare.try_recv().unwrap_or_default()
}

/// The reader thread: reads `source` to its end (or error) into `tx`. Returns early when the
/// consumer is gone.
fn produce<S: EntrySource>(mut source: S, tx: &SyncSender<Msg>, spare: &Receiver<Vec<u8>>) {
    let mut warned = 0;
    let mut batch = Batch {
        items: Vec::with_capacity(BATCH_ENTRIES),
        data: buffer(spare),
        warnings: Vec::new(),
    };
    // Sends `batch` (if it holds anything) and starts a new one; `false` when the consumer is
    // gone.
    let flush = |batch: &mut Batch| -> bool {
        if batch.items.is_empty() && batch.warnings.is_empty() {
            return true;
        }
        let full = std::mem::replace(
            batch,
            Batch {
                items: Vec::with_capacity(BATCH_ENTRIES),
                data: buffer(spare),
                warnings: Vec::new(),
            },
        );
        tx.send(Msg::Batch(full)).is_ok()
    };
    loop {
        let w = source.warnings();
        if w.len() > warned {
            batch.warnings.extend_from_slice(&w[warned..]);
            warned = w.len();
        }
        let entry = match source.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                let w = source.warnings();
                batch.warnings.extend_from_slice(&w[warned.min(w.len())..]);
                if flush(&mut batch) {
                    let _ = tx.send(Msg::End);
                }
                return;
            }
            Err(e) => {
                if flush(&mut batch) {
                    let _ = tx.send(Msg::Failed(e));
                }
                return;
            }
        };
        let Entry {
            path,
            kind,
            meta,
            data,
        } = entry;
        let Some(reader) = data else {
            batch.items.push(Item {
                path,
                kind,
                meta,
                content: None,
            });
            if batch.items.len() >= BATCH_ENTRIES && !flush(&mut batch) {
                return;
            }
            continue;
        };
        let start = batch.data.len();
        let (error, more) = match reader.take(INLINE_MAX as u64).read_to_end(&mut batch.data) {
            Ok(n) => (None, n == INLINE_MAX),
            Err(e) => (Some(e), false),
        };
        let end = batch.data.len();
        batch.items.push(Item {
            path,
            kind,
            meta,
            content: Some(Content {
                start,
                end,
                error,
                more,
            }),
        });
        if more {
            // The batch must reach the consumer before the pieces that follow it.
            if !flush(&mut batch) || !send_pieces(reader, tx, spare) {
                return;
            }
        } else if (batch.items.len() >= BATCH_ENTRIES || batch.data.len() >= BATCH_BYTES)
            && !flush(&mut batch)
        {
            return;
        }
    }
}

/// Sends the rest of a file's content in pieces, then its end (or its read error); `false`
/// when the consumer is gone.
fn send_pieces(reader: &mut dyn Read, tx: &SyncSender<Msg>, spare: &Receiver<Vec<u8>>) -> bool {
    loop {
        let mut piece = buffer(spare);
        piece.reserve_exact(PIECE);
        match reader.take(PIECE as u64).read_to_end(&mut piece) {
            Ok(0) => return tx.send(Msg::ContentEnd).is_ok(),
            Ok(n) => {
                if tx.send(Msg::Piece(piece)).is_err() {
                    return false;
                }
                if n < PIECE {
                    return tx.send(Msg::ContentEnd).is_ok();
                }
            }
            Err(e) => return tx.send(Msg::PieceError(e)).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TarSource;

    /// A header with every numeric field set.
    fn header(ty: tar::EntryType, size: usize) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    /// A tar stream of `files` (name, size) with distinct content, plus a directory and a
    /// symlink.
    fn stream(files: &[(&str, usize)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Directory, 0);
        h.set_path("d/").unwrap();
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
        for (i, (name, size)) in files.iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|j| (j * 7 + i * 13) as u8).collect();
            let mut h = header(tar::EntryType::Regular, *size);
            h.set_path(name).unwrap();
            h.set_cksum();
            b.append(&h, data.as_slice()).unwrap();
        }
        let mut h = header(tar::EntryType::Symlink, 0);
        h.set_path("d/link").unwrap();
        h.set_link_name("target").unwrap();
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    /// Every entry's path, kind and content (read when `read`, else skipped).
    fn drain(
        src: &mut dyn EntrySource,
        read: impl Fn(usize) -> bool,
    ) -> Vec<(PathBuf, EntryKind, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(e) = src.next_entry().unwrap() {
            let mut content = Vec::new();
            if let Some(r) = e.data {
                if read(i) {
                    // Odd read sizes cross the inline/piece boundaries at odd places.
                    let mut buf = [0u8; 7919];
                    loop {
                        let n = r.read(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        content.extend_from_slice(&buf[..n]);
                    }
                }
            }
            out.push((e.path, e.kind, content));
            i += 1;
        }
        out
    }

    #[test]
    fn yields_what_the_source_yields_in_order_with_content() {
        let mut files = Vec::new();
        let names: Vec<String> = (0..700).map(|i| format!("d/f{i:04}")).collect();
        for (i, n) in names.iter().enumerate() {
            // Mostly small files; some exactly at the inline limit, some long ones.
            let size = match i % 97 {
                0 => INLINE_MAX,
                1 => INLINE_MAX + 1,
                2 => 3 * PIECE + 5,
                3 => PIECE - INLINE_MAX,
                _ => i % 300,
            };
            files.push((n.as_str(), size));
        }
        let tar = stream(&files);
        for skip_every in [0usize, 2, 3] {
            let read = |i: usize| skip_every == 0 || i % skip_every != 0;
            let direct = drain(&mut TarSource::new(io::Cursor::new(tar.clone())), read);
            let mut pre = Prefetch::new(TarSource::new(io::Cursor::new(tar.clone()))).unwrap();
            let fetched = drain(&mut pre, read);
            assert_eq!(direct.len(), 702);
            assert_eq!(fetched.len(), direct.len());
            for (a, b) in direct.iter().zip(&fetched) {
                assert_eq!(a.0, b.0);
                assert_eq!(a.1, b.1);
                assert!(a.2 == b.2, "content of {} differs", a.0.display());
            }
            assert!(pre.next_entry().unwrap().is_none());
        }
    }

    #[test]
    fn a_truncated_stream_is_an_error_after_the_entries_before_it() {
        let mut tar = stream(&[("d/a", 10), ("d/b", 3 * PIECE)]);
        // Cut inside b's content.
        tar.truncate(512 * 4 + PIECE);
        let mut pre = Prefetch::new(TarSource::new(io::Cursor::new(tar))).unwrap();
        assert_eq!(pre.next_entry().unwrap().unwrap().path, PathBuf::from("d"));
        assert_eq!(
            pre.next_entry().unwrap().unwrap().path,
            PathBuf::from("d/a")
        );
        let e = pre.next_entry().unwrap().unwrap();
        let mut sink = Vec::new();
        let err = e.data.unwrap().read_to_end(&mut sink).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[test]
    fn warnings_of_the_source_come_through() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 0);
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
        let tar = b.into_inner().unwrap();
        let mut pre = Prefetch::new(TarSource::new(io::Cursor::new(tar))).unwrap();
        assert!(pre.next_entry().unwrap().is_none());
        assert_eq!(pre.warnings().len(), 1, "{:?}", pre.warnings());
    }
}
