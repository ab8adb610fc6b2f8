//! Between the archiver and the sink: hashes blobs (their SHA-256 is their id), drops those the
//! repository or this run already has, and hands new ones to the sink.
//!
//! Data blobs are hashed on the blocking pool, so the archiver thread only reads and chunks:
//! chunking is sequential per file, hashing is not. A bounded number of blobs is in flight
//! here (each holds its permit until the sink took it), so back-pressure still reaches the
//! reader. A blob's id is reported as soon as it is hashed, before the sink takes the blob:
//! the archiver finishing a file waits for hashing only, not for room in the sink, so it
//! does not drain the pipeline at every file's end.
//!
//! Small blobs (below [`INLINE_BELOW`]: most files of a real tree, and every file's tail) are
//! not worth a hand-off: hashing 30 bytes costs far less than the thread wake-ups of a trip
//! through the blocking pool. They are hashed right here on the archiver thread, and new ones
//! are collected into a batch that crosses to the sink in one channel send (and is encoded
//! there in one blocking task). A batch is sent
//! before the archiver could wait for anything (budget, hashing permits, the end): the shares
//! it holds must reach the sink, or the open pack might never fill and free them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use snapback_repo::budget::{ByteBudget, Share};
use snapback_repo::buffers::BufferPool;
use snapback_repo::{BlobIndex, BlobType, Id};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::progress::Progress;
use crate::seen::Seen;
use crate::sink::BlobJob;
use crate::{Error, Result};

/// Data blobs being hashed or waiting for the sink at once.
const IN_FLIGHT: usize = 3;

/// Blobs shorter than this are hashed on the archiver thread ([`Dedup::submit_small`]).
pub const INLINE_BELOW: usize = 64 * 1024;

/// A batch is sent to the sink once its blobs hold this many bytes...
const BATCH_BYTES: usize = 256 * 1024;
/// ...or this many blobs.
const BATCH_BLOBS: usize = 256;

/// A blob's id and the bytes it added (0 when known): known already, or once it is hashed.
pub enum Pending {
    /// Hashed on the archiver thread.
    Ready(Id, u64),
    /// Handed over for hashing.
    Later(oneshot::Receiver<(Id, u64)>),
}

/// A chunk copied out of the read window, with its share of the byte budget.
pub struct Chunk {
    data: Vec<u8>,
    share: Share,
}

/// Hashes, deduplicates and forwards blobs; see the module docs.
pub struct Dedup {
    handle: Handle,
    index: Arc<BlobIndex>,
    known: Arc<Mutex<Seen>>,
    tx: mpsc::Sender<Vec<BlobJob>>,
    permits: Arc<Semaphore>,
    progress: Arc<Progress>,
    pool: Arc<BufferPool>,
    /// Bounds the bytes of data blobs from here to the end of their pack's upload.
    budget: ByteBudget,
    /// Background hand-overs not yet seen to finish: their errors (the sink stopped) must
    /// reach the archiver, and [`Dedup::finish`] waits for all of them.
    tasks: Vec<JoinHandle<Result<()>>>,
    /// New blobs not yet sent to the sink, and their plaintext bytes.
    batch: Vec<BlobJob>,
    batch_bytes: usize,
}

impl Dedup {
    /// Forwards new blobs to `tx`; `index` holds what the repository has. `handle` runs the
    /// hashing; the caller must be on a blocking thread (it waits for permits and results).
    pub fn new(
        handle: Handle,
        index: Arc<BlobIndex>,
        tx: mpsc::Sender<Vec<BlobJob>>,
        progress: Arc<Progress>,
        pool: Arc<BufferPool>,
        budget: ByteBudget,
    ) -> Self {
        Dedup {
            handle,
            index,
            known: Arc::new(Mutex::new(Seen::new())),
            tx,
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
            progress,
            pool,
            budget,
            tasks: Vec::new(),
            batch: Vec::new(),
            batch_bytes: 0,
        }
    }

    /// A copy of a chunk in a buffer of its own, with room to be sealed in place; duplicates'
    /// buffers are reused. Waits until the chunk fits in the byte budget.
    pub fn chunk_buffer(&mut self, chunk: &[u8]) -> Result<Chunk> {
        let share = self.take_budget(chunk.len())?;
        Ok(Chunk {
            data: self.pool.copy_of(chunk, snapback_repo::crypto::OVERHEAD),
            share,
        })
    }

    /// A share of the byte budget for `len` bytes: at once when it is free (no trip through
    /// the runtime), else after sending the batch (whose shares must not wait with us).
    fn take_budget(&mut self, len: usize) -> Result<Share> {
        if let Some(share) = self.budget.try_take(len as u64) {
            return Ok(share);
        }
        self.send_batch()?;
        self.handle
            .block_on(self.budget.take(len as u64))
            .map_err(|_| Error::Pipeline("blob budget closed".into()))
    }

    /// Hashes `data` on this thread and queues it for the sink if new; returns its id and the
    /// bytes it added.
    pub fn submit(&mut self, ty: BlobType, data: Vec<u8>) -> Result<(Id, u64)> {
        let (id, data) = identify(&self.index, &self.known, &self.pool, data);
        match data {
            Some(data) => {
                let len = data.len() as u64;
                self.queue(BlobJob {
                    id,
                    ty,
                    data,
                    share: None,
                    compressed_from: None,
                })?;
                Ok((id, len))
            }
            None => Ok((id, 0)),
        }
    }

    /// Queues a blob whose id was computed as it was produced (see [`BlobJob::compressed_from`]
    /// for `data`), if new; returns the plaintext bytes it added.
    pub fn submit_hashed(
        &mut self,
        ty: BlobType,
        id: Id,
        data: Vec<u8>,
        compressed_from: Option<u32>,
    ) -> Result<u64> {
        let new = !self.index.contains(&id)
            && self
                .known
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(&id);
        if !new {
            return Ok(0);
        }
        let plain = compressed_from.map_or(data.len() as u64, u64::from);
        self.queue(BlobJob {
            id,
            ty,
            data,
            share: None,
            compressed_from,
        })?;
        Ok(plain)
    }

    /// Hashes a data blob on this thread, where it is: only a new blob is copied out (with its
    /// budget share) and queued for the sink. For small blobs (see [`INLINE_BELOW`]) and a
    /// file's last chunk, whose id the archiver waits for at once anyway.
    pub fn submit_small(&mut self, chunk: &[u8]) -> Result<Pending> {
        let id = Id::hash(chunk);
        if self.index.contains(&id)
            || !self
                .known
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(&id)
        {
            return Ok(Pending::Ready(id, 0));
        }
        let share = self.take_budget(chunk.len())?;
        self.queue(BlobJob {
            id,
            ty: BlobType::Data,
            data: self.pool.copy_of(chunk, snapback_repo::crypto::OVERHEAD),
            share: Some(share),
            compressed_from: None,
        })?;
        Ok(Pending::Ready(id, chunk.len() as u64))
    }

    /// Adds a new blob to the batch, sending the batch once it is full.
    fn queue(&mut self, job: BlobJob) -> Result<()> {
        self.batch_bytes += job.data.len();
        self.batch.push(job);
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_BLOBS {
            self.send_batch()?;
        }
        Ok(())
    }

    /// Sends the blobs queued so far to the sink, so that the sink can answer for them (a
    /// [`TreeFinder`](crate::sink::TreeFinder) question about a tree still in the batch would
    /// otherwise wait forever).
    pub fn flush(&mut self) -> Result<()> {
        self.send_batch()
    }

    /// Sends the batch to the sink (waiting for room there).
    fn send_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let bytes = std::mem::take(&mut self.batch_bytes);
        self.tx
            .blocking_send(batch)
            .map_err(|_| Error::Pipeline("the upload stage stopped".into()))?;
        self.progress
            .bytes_new
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Hands a data blob over to be hashed and forwarded in the background; waits while
    /// [`IN_FLIGHT`] blobs are already under way.
    pub fn submit_later(&mut self, chunk: Chunk) -> Result<Pending> {
        self.reap(false)?;
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // About to wait: the batch goes first (see the module docs).
                self.send_batch()?;
                self.handle
                    .block_on(self.permits.clone().acquire_owned())
                    .map_err(|_| Error::Pipeline("blob hashing stopped".into()))?
            }
        };
        let (index, known, tx, progress, pool) = (
            self.index.clone(),
            self.known.clone(),
            self.tx.clone(),
            self.progress.clone(),
            self.pool.clone(),
        );
        let (id_tx, id_rx) = oneshot::channel();
        self.tasks.push(self.handle.spawn_blocking(move || {
            let Chunk { data, share } = chunk;
            // A duplicate's share is given back here, with its buffer.
            let (id, data) = identify(&index, &known, &pool, data);
            let added = data.as_ref().map_or(0, |d| d.len() as u64);
            // The archiver may already have failed and gone; the blob is still forwarded.
            let _ = id_tx.send((id, added));
            let forwarded = match data {
                Some(data) => forward(
                    &tx,
                    &progress,
                    BlobJob {
                        id,
                        ty: BlobType::Data,
                        data,
                        share: Some(share),
                        compressed_from: None,
                    },
                ),
                None => Ok(()),
            };
            drop(permit);
            forwarded
        }));
        Ok(Pending::Later(id_rx))
    }

    /// Waits for pending blobs' hashes, in order: their ids and the bytes they added.
    pub fn resolve(&mut self, pending: Vec<Pending>) -> Result<(Vec<Id>, u64)> {
        let mut ids = Vec::with_capacity(pending.len());
        let mut added = 0;
        for p in pending {
            let (id, new) = match p {
                Pending::Ready(id, new) => (id, new),
                Pending::Later(rx) => {
                    // Hashing does not depend on the batch, but a waiting archiver holds it
                    // back from the sink: send it now rather than after the wait.
                    self.send_batch()?;
                    self.handle
                        .block_on(rx)
                        .map_err(|_| Error::Pipeline("blob hashing failed".into()))?
                }
            };
            ids.push(id);
            added += new;
        }
        Ok((ids, added))
    }

    /// Waits until every blob handed over has reached the sink (or reports why one did not):
    /// only then may the snapshot refer to them.
    pub fn finish(&mut self) -> Result<()> {
        self.send_batch()?;
        self.reap(true)
    }

    /// Collects finished hand-overs (all of them, waiting, with `all`), failing on the first
    /// error.
    fn reap(&mut self, all: bool) -> Result<()> {
        let mut i = 0;
        while i < self.tasks.len() {
            if all || self.tasks[i].is_finished() {
                let task = self.tasks.swap_remove(i);
                self.handle
                    .block_on(task)
                    .map_err(|e| Error::Pipeline(format!("blob hashing: {e}")))??;
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

/// Hashes `data`; returns its id, and the buffer only if the blob is new to the repository
/// and this run (a duplicate's buffer goes back to the pool).
fn identify(
    index: &BlobIndex,
    known: &Mutex<Seen>,
    pool: &BufferPool,
    data: Vec<u8>,
) -> (Id, Option<Vec<u8>>) {
    let id = Id::hash(&data);
    let new = !index.contains(&id)
        && known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(&id);
    if new {
        (id, Some(data))
    } else {
        pool.give_back(data);
        (id, None)
    }
}

/// Hands a new blob to the sink (as a batch of one), waiting for room there.
fn forward(tx: &mpsc::Sender<Vec<BlobJob>>, progress: &Progress, job: BlobJob) -> Result<()> {
    let len = job.data.len() as u64;
    tx.blocking_send(vec![job])
        .map_err(|_| Error::Pipeline("the upload stage stopped".into()))?;
    progress.bytes_new.fetch_add(len, Ordering::Relaxed);
    Ok(())
}
