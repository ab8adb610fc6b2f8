//! An input stream read on a thread of its own.
//!
//! A stream of many small tar members keeps the archiver's thread busy with headers, hashes
//! and tree nodes; the `read` calls on the pipe (the kernel's copy out of the pipe buffer, the
//! pipe lock shared with the producer) were a seventh of that thread's time. [`ReadAhead`]
//! moves them to a reader thread, which reads into blocks of up to [`BLOCK`] bytes and hands
//! each over as soon as its read returns (a producer that writes a little and pauses is not
//! kept waiting for a full block), through a bounded channel; the consumer copies out of the
//! block it holds.
//!
//! Memory: at most [`DEPTH`] blocks wait in the channel, plus the one being filled and the one
//! being read, whatever the stream's length. Blocks are recycled.
//!
//! The reader thread ends at the end of input, at a read error (which the consumer gets, in
//! order, after the bytes before it), or when the consumer is gone (at its next hand-over).

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};

/// Bytes per block handed over.
pub const BLOCK: usize = 128 * 1024;
/// Filled blocks that may wait for the consumer.
pub const DEPTH: usize = 4;

/// What the reader thread hands over.
enum Handed {
    /// A block whose first `len` bytes are input.
    Data(Vec<u8>, usize),
    /// The input ended cleanly.
    End,
    /// Reading failed; nothing follows.
    Failed(io::Error),
}

/// A reader whose input is read ahead on another thread; see the module docs.
pub struct ReadAhead {
    full: Receiver<Handed>,
    /// Consumed blocks going back to the reader thread.
    empty: SyncSender<Vec<u8>>,
    block: Vec<u8>,
    len: usize,
    pos: usize,
    /// Set once the end (or an error) was handed over: every later read repeats it.
    end: Option<Result<(), (io::ErrorKind, String)>>,
}

impl ReadAhead {
    /// Starts reading `inner` on a new thread.
    pub fn spawn(mut inner: Box<dyn Read + Send>) -> io::Result<Self> {
        let (full_tx, full) = sync_channel(DEPTH);
        let (empty, empty_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
        std::thread::Builder::new()
            .name("stream-read".into())
            .spawn(move || loop {
                let mut block = match empty_rx.try_recv() {
                    Ok(block) => block,
                    Err(TryRecvError::Empty) => vec![0; BLOCK],
                    // The consumer is gone.
                    Err(TryRecvError::Disconnected) => return,
                };
                let handed = match read_once(inner.as_mut(), &mut block) {
                    Ok(0) => Handed::End,
                    Ok(len) => Handed::Data(block, len),
                    Err(e) => Handed::Failed(e),
                };
                let last = !matches!(handed, Handed::Data(..));
                // Nothing to do if the consumer is gone.
                if full_tx.send(handed).is_err() || last {
                    return;
                }
            })?;
        Ok(ReadAhead {
            full,
            empty,
            block: Vec::new(),
            len: 0,
            pos: 0,
            end: None,
        })
    }

    /// Makes the next block current; false at the end of input.
    fn next_block(&mut self) -> io::Result<bool> {
        if let Some(end) = &self.end {
            return match end {
                Ok(()) => Ok(false),
                Err((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            };
        }
        let handed = self.full.recv().unwrap_or_else(|_| {
            // Only a panic ends the thread without saying why: the stream must not look
            // complete then.
            Handed::Failed(io::Error::other("the stream's reader thread stopped"))
        });
        match handed {
            Handed::Data(block, len) => {
                let old = std::mem::replace(&mut self.block, block);
                if !old.is_empty() {
                    // A full return channel only means the thread has spares already.
                    let _ = self.empty.try_send(old);
                }
                self.len = len;
                self.pos = 0;
                Ok(true)
            }
            Handed::End => {
                self.end = Some(Ok(()));
                Ok(false)
            }
            Handed::Failed(e) => {
                self.end = Some(Err((e.kind(), e.to_string())));
                Err(e)
            }
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.len && !self.next_block()? {
            return Ok(0);
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// One read into `block` (retried when interrupted): what a pipe holds now, up to its size.
fn read_once(inner: &mut dyn Read, block: &mut [u8]) -> io::Result<usize> {
    loop {
        match inner.read(block) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `data` in reads of at most `step` bytes, then `error` if any, else the end.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
        error: Option<io::ErrorKind>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return match self.error.take() {
                    Some(kind) => Err(io::Error::new(kind, "producer broke")),
                    None => Ok(0),
                };
            }
            let n = buf.len().min(self.step).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn yields_every_byte_in_order_across_many_blocks() {
        let data = pattern(BLOCK * (DEPTH + 3) + 12_345);
        let input = Trickle {
            data: data.clone(),
            at: 0,
            step: 10 * 1024 + 17,
            error: None,
        };
        let mut reader = ReadAhead::spawn(Box::new(input)).unwrap();
        // Odd-sized reads, small and large, as the tar reader and the chunker make them.
        let mut out = Vec::new();
        let mut buf = vec![0; 3 * BLOCK];
        for size in [512, 1, BLOCK + 3, 700, 2 * BLOCK].iter().cycle() {
            let n = reader.read(&mut buf[..*size]).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out.len(), data.len());
        assert!(out == data, "bytes differ");
        // The end stays the end.
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn an_error_comes_after_the_bytes_before_it_and_stays() {
        let data = pattern(BLOCK + 100);
        let input = Trickle {
            data: data.clone(),
            at: 0,
            step: 4096,
            error: Some(io::ErrorKind::BrokenPipe),
        };
        let mut reader = ReadAhead::spawn(Box::new(input)).unwrap();
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(
            out == data,
            "the bytes before the error were not all delivered"
        );
        // Never mistaken for a clean end afterwards.
        let again = reader.read(&mut [0; 16]).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::BrokenPipe);
    }

    /// Yields `first`, then blocks until told to go on (or fails after a while).
    struct Pausing {
        first: Option<Vec<u8>>,
        go_on: std::sync::mpsc::Receiver<()>,
    }

    impl Read for Pausing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some(first) = self.first.take() {
                buf[..first.len()].copy_from_slice(&first);
                return Ok(first.len());
            }
            match self.go_on.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok(()) => Ok(0),
                Err(_) => Err(io::Error::other("nobody read the first bytes")),
            }
        }
    }

    #[test]
    fn bytes_are_handed_over_without_waiting_for_a_full_block() {
        // A producer that writes the start of a stream and waits (as a backup's lock test
        // does): the start must reach the reader now, not when a block is full.
        let (go_on_tx, go_on) = std::sync::mpsc::channel();
        let input = Pausing {
            first: Some(b"the start".to_vec()),
            go_on,
        };
        let mut reader = ReadAhead::spawn(Box::new(input)).unwrap();
        let mut buf = [0; 64];
        let n = reader.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"the start");
        go_on_tx.send(()).unwrap();
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn an_empty_input_ends_at_once() {
        let mut reader = ReadAhead::spawn(Box::new(io::empty())).unwrap();
        assert_eq!(reader.read(&mut [0; 16]).unwrap(), 0);
    }
}
