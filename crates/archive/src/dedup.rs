//! Between the archiver and the sink: hashes blobs (their SHA-256 is their id), drops those the
//! repository or this run already has, and hands new ones to the sink.
//!
//! Data blobs are hashed on the blocking pool, so the archiver thread only reads and chunks:
//! chunking is sequential per file, hashing is not. A bounded number of blobs is in flight
//! here (each holds its permit until the sink took it), so back-pressure still reaches the
//! reader. A blob's id is reported as soon as it is hashed, before the sink takes the blob:
//! the archiver finishing a file waits for hashing only, not for room in the sink, so it
//! does not drain the pipeline at every file's end.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use snapback_repo::{BlobIndex, BlobType, Id};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::archiver::Progress;
use crate::budget::{ByteBudget, Share};
use crate::buffers::BufferPool;
use crate::seen::Seen;
use crate::sink::BlobJob;
use crate::{Error, Result};

/// Data blobs being hashed or waiting for the sink at once.
const IN_FLIGHT: usize = 3;

/// A blob handed over for hashing: resolves to its id and the bytes it added (0 when known).
pub struct Pending(oneshot::Receiver<(Id, u64)>);

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
    tx: mpsc::Sender<BlobJob>,
    permits: Arc<Semaphore>,
    progress: Arc<Progress>,
    pool: Arc<BufferPool>,
    /// Bounds the bytes of data blobs from here to the end of their pack's upload.
    budget: ByteBudget,
    /// Background hand-overs not yet seen to finish: their errors (the sink stopped) must
    /// reach the archiver, and [`Dedup::finish`] waits for all of them.
    tasks: Vec<JoinHandle<Result<()>>>,
}

impl Dedup {
    /// Forwards new blobs to `tx`; `index` holds what the repository has. `handle` runs the
    /// hashing; the caller must be on a blocking thread (it waits for permits and results).
    pub fn new(
        handle: Handle,
        index: Arc<BlobIndex>,
        tx: mpsc::Sender<BlobJob>,
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
        }
    }

    /// A copy of a chunk in a buffer of its own, with room to be sealed in place; duplicates'
    /// buffers are reused. Waits until the chunk fits in the byte budget.
    pub fn chunk_buffer(&self, chunk: &[u8]) -> Result<Chunk> {
        let share = self
            .handle
            .block_on(self.budget.take(chunk.len() as u64))
            .map_err(|_| Error::Pipeline("blob budget closed".into()))?;
        Ok(Chunk {
            data: self.pool.copy_of(chunk, snapback_repo::crypto::OVERHEAD),
            share,
        })
    }

    /// Hashes and forwards `data` on this thread; returns its id and the bytes it added.
    pub fn submit(&self, ty: BlobType, data: Vec<u8>) -> Result<(Id, u64)> {
        let (id, data) = identify(&self.index, &self.known, &self.pool, data);
        match data {
            Some(data) => {
                let len = data.len() as u64;
                let job = BlobJob {
                    id,
                    ty,
                    data,
                    share: None,
                };
                forward(&self.tx, &self.progress, job)?;
                Ok((id, len))
            }
            None => Ok((id, 0)),
        }
    }

    /// Hands a data blob over to be hashed and forwarded in the background; waits while
    /// [`IN_FLIGHT`] blobs are already under way.
    pub fn submit_later(&mut self, chunk: Chunk) -> Result<Pending> {
        self.reap(false)?;
        let permit = self
            .handle
            .block_on(self.permits.clone().acquire_owned())
            .map_err(|_| Error::Pipeline("blob hashing stopped".into()))?;
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
                    },
                ),
                None => Ok(()),
            };
            drop(permit);
            forwarded
        }));
        Ok(Pending(id_rx))
    }

    /// Waits for pending blobs' hashes, in order: their ids and the bytes they added.
    pub fn resolve(&self, pending: Vec<Pending>) -> Result<(Vec<Id>, u64)> {
        let mut ids = Vec::with_capacity(pending.len());
        let mut added = 0;
        for Pending(rx) in pending {
            let (id, new) = self
                .handle
                .block_on(rx)
                .map_err(|_| Error::Pipeline("blob hashing failed".into()))?;
            ids.push(id);
            added += new;
        }
        Ok((ids, added))
    }

    /// Waits until every blob handed over has reached the sink (or reports why one did not):
    /// only then may the snapshot refer to them.
    pub fn finish(&mut self) -> Result<()> {
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

/// Hands a new blob to the sink, waiting for room there.
fn forward(tx: &mpsc::Sender<BlobJob>, progress: &Progress, job: BlobJob) -> Result<()> {
    let len = job.data.len() as u64;
    tx.blocking_send(job)
        .map_err(|_| Error::Pipeline("the upload stage stopped".into()))?;
    progress.bytes_new.fetch_add(len, Ordering::Relaxed);
    Ok(())
}
