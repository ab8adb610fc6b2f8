//! Between the archiver and the sink: hashes blobs (their SHA-256 is their id), drops those the
//! repository or this run already has, and hands new ones to the sink.
//!
//! Data blobs are hashed on the blocking pool, so the archiver thread only reads and chunks:
//! chunking is sequential per file, hashing is not. A bounded number of blobs is in flight
//! here (each holds its permit until the sink took it), so back-pressure still reaches the
//! reader.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use snapback_repo::{BlobIndex, BlobType, Id};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::archiver::Progress;
use crate::buffers::BufferPool;
use crate::sink::BlobJob;
use crate::{Error, Result};

/// Data blobs being hashed or waiting for the sink at once.
const IN_FLIGHT: usize = 3;

/// A blob handed over for hashing: resolves to its id and the bytes it added (0 when known).
pub struct Pending(JoinHandle<Result<(Id, u64)>>);

/// Hashes, deduplicates and forwards blobs; see the module docs.
pub struct Dedup {
    handle: Handle,
    index: Arc<BlobIndex>,
    known: Arc<Mutex<HashSet<Id>>>,
    tx: mpsc::Sender<BlobJob>,
    permits: Arc<Semaphore>,
    progress: Arc<Progress>,
    pool: Arc<BufferPool>,
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
    ) -> Self {
        Dedup {
            handle,
            index,
            known: Arc::new(Mutex::new(HashSet::new())),
            tx,
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
            progress,
            pool,
        }
    }

    /// A copy of a chunk in a buffer of its own, with room to be sealed in place; duplicates'
    /// buffers are reused.
    pub fn chunk_buffer(&self, chunk: &[u8]) -> Vec<u8> {
        self.pool.copy_of(chunk, snapback_repo::crypto::OVERHEAD)
    }

    /// Hashes and forwards `data` on this thread; returns its id and the bytes it added.
    pub fn submit(&self, ty: BlobType, data: Vec<u8>) -> Result<(Id, u64)> {
        store(
            &self.index,
            &self.known,
            &self.tx,
            &self.progress,
            &self.pool,
            ty,
            data,
        )
    }

    /// Hands a data blob over to be hashed and forwarded in the background; waits while
    /// [`IN_FLIGHT`] blobs are already under way.
    pub fn submit_later(&self, data: Vec<u8>) -> Result<Pending> {
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
        Ok(Pending(self.handle.spawn_blocking(move || {
            let stored = store(&index, &known, &tx, &progress, &pool, BlobType::Data, data);
            drop(permit);
            stored
        })))
    }

    /// Waits for pending blobs, in order: their ids and the bytes they added.
    pub fn resolve(&self, pending: Vec<Pending>) -> Result<(Vec<Id>, u64)> {
        let mut ids = Vec::with_capacity(pending.len());
        let mut added = 0;
        for Pending(task) in pending {
            let (id, new) = self
                .handle
                .block_on(task)
                .map_err(|e| Error::Pipeline(format!("blob hashing: {e}")))??;
            ids.push(id);
            added += new;
        }
        Ok((ids, added))
    }
}

fn store(
    index: &BlobIndex,
    known: &Mutex<HashSet<Id>>,
    tx: &mpsc::Sender<BlobJob>,
    progress: &Progress,
    pool: &BufferPool,
    ty: BlobType,
    data: Vec<u8>,
) -> Result<(Id, u64)> {
    let id = Id::hash(&data);
    let new = !index.contains(&id)
        && known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id);
    if !new {
        pool.give_back(data);
        return Ok((id, 0));
    }
    let len = data.len() as u64;
    tx.blocking_send(BlobJob { id, ty, data })
        .map_err(|_| Error::Pipeline("the upload stage stopped".into()))?;
    progress.bytes_new.fetch_add(len, Ordering::Relaxed);
    Ok((id, len))
}
