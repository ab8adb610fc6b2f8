//! The blob sink: compresses and encrypts new blobs on the blocking pool, assembles packs in
//! memory (one open pack per blob type) and uploads them concurrently, then records them in
//! index files. Nothing touches local disk.
//!
//! An index file (up to 50,000 blobs: several MiB of JSON to encode, compress and encrypt)
//! is written by a task of its own, one at a time, so that the sink goes on taking blobs
//! meanwhile; every one is written before the sink returns.
//!
//! Blobs arrive in batches (many small blobs in one send, a big one alone), and a batch is
//! encoded in one blocking task: a task per 30-byte blob would cost more in thread wake-ups
//! than the encoding itself.
//!
//! Memory is bounded by construction: the input channel holds a few batches (each a few
//! hundred KiB of small blobs, or one big blob), at most `workers` batches are being encoded, at most `max_uploads` packs are in flight, and the sink stops
//! taking input while uploads are saturated, which back-pressures the reader. Counts alone
//! would allow 8 MiB per blob, so data blobs also hold a share of a byte budget
//! ([`SinkOptions::blob_bytes`]) from being cut until their pack is uploaded.
//!
//! The sink also remembers where this run's tree blobs went (about 30 bytes per directory, in
//! a [`BlobIndex`]), and answers a [`TreeFinder`]: the archiver reads a saved tree back to
//! resolve a tar hard link into a directory whose listing it no longer holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use snapback_repo::budget::{self, Share};
use snapback_repo::buffers::BufferPool;
use snapback_repo::pack::{PackBuilder, PackedBlob};
use snapback_repo::{
    crypto, BlobIndex, BlobLocation, BlobType, FileType, Id, IndexWriter, Key, Repository,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::{Error, Result};

/// Blobs in one pack at most. A pack of tiny blobs (small files) would otherwise hold some
/// 150,000 of them before reaching [`SinkOptions::pack_size`], and each costs about 100 bytes
/// of bookkeeping (its header entry, location and budget share) while its pack is open or
/// uploading: with three packs in flight, 45 MiB. Restic reads packs of any size.
const MAX_PACK_BLOBS: usize = 32 * 1024;

/// A new blob for the sink.
#[derive(Debug)]
pub struct BlobJob {
    /// SHA-256 of `data`.
    pub id: Id,
    /// Data or tree.
    pub ty: BlobType,
    /// Plaintext.
    pub data: Vec<u8>,
    /// The blob's share of the backup's byte budget (data blobs), held until its pack is
    /// uploaded.
    pub share: Option<Share>,
    /// `Some(n)`: `data` is zstd-compressed already, from `n` plaintext bytes (a wide
    /// directory's tree, merged straight into its compressed form); `id` is the plaintext's.
    pub compressed_from: Option<u32>,
}

/// Sink tuning.
#[derive(Debug, Clone, Copy)]
pub struct SinkOptions {
    /// A pack is closed once its blobs reach this many bytes.
    pub pack_size: usize,
    /// Packs uploading at once.
    pub max_uploads: usize,
    /// Blobs encoding at once.
    pub workers: usize,
    /// Bytes of data blobs in memory at once, from being cut to the end of their pack's
    /// upload (raised to what one full pack plus one largest chunk need, so the pipeline
    /// always moves).
    pub blob_bytes: usize,
    /// zstd level, or `None` for no compression (always `None` in format version 1).
    pub zstd_level: Option<i32>,
    /// Write an index file at least this often while packs are being uploaded.
    pub index_interval: Duration,
    /// Write an index file once this many uploaded packs wait for one (or an eighth of the
    /// packs uploaded so far, when that is more: a long backup writes few index files). Packs
    /// not yet in an index file are re-uploaded by the next backup after a crash, so this
    /// bounds what a killed backup loses.
    pub index_packs: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            pack_size: 8 * 1024 * 1024,
            max_uploads: 2,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            blob_bytes: 24 << 20,
            zstd_level: Some(snapback_repo::repository::DEFAULT_ZSTD_LEVEL),
            index_interval: Duration::from_secs(60),
            index_packs: 8,
        }
    }
}

/// What the sink stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Data blobs stored.
    pub data_blobs: u64,
    /// Tree blobs stored.
    pub tree_blobs: u64,
    /// Plaintext bytes of the stored blobs.
    pub plain_bytes: u64,
    /// Bytes uploaded in packs.
    pub packed_bytes: u64,
    /// Packs uploaded.
    pub packs: u64,
    /// Index files written.
    pub index_files: u64,
}

struct Encoded {
    id: Id,
    ty: BlobType,
    plain_len: usize,
    sealed: Vec<u8>,
    uncompressed_length: Option<u32>,
    share: Option<Share>,
}

impl SinkOptions {
    /// The byte budget for data blobs: `blob_bytes`, but at least a full pack plus the largest
    /// chunk. Shares are held until a pack is uploaded, so the open pack (never closed below
    /// `pack_size`) must leave room for one more chunk, or the reader would wait forever.
    pub fn budget_bytes(&self) -> usize {
        self.blob_bytes
            .max(self.pack_size + snapback_chunker::MAX_SIZE)
    }
}

/// Starts the sink on the current runtime; returns the sender for new blobs and the task that
/// finishes (flushing everything) once the sender is dropped.
pub fn start(
    repo: Repository,
    opts: SinkOptions,
    buffers: Arc<BufferPool>,
) -> (
    mpsc::Sender<Vec<BlobJob>>,
    tokio::task::JoinHandle<Result<SinkStats>>,
) {
    let (tx, _, task) = start_with_finder(repo, opts, buffers);
    (tx, task)
}

/// [`start`], plus a [`TreeFinder`] for the tree blobs sent to this sink.
pub fn start_with_finder(
    repo: Repository,
    opts: SinkOptions,
    buffers: Arc<BufferPool>,
) -> (
    mpsc::Sender<Vec<BlobJob>>,
    TreeFinder,
    tokio::task::JoinHandle<Result<SinkStats>>,
) {
    let (tx, rx) = mpsc::channel(opts.workers.max(1));
    let (find_tx, find_rx) = mpsc::channel(1);
    let task = tokio::spawn(run(repo, rx, find_rx, opts, buffers));
    (tx, TreeFinder(find_tx), task)
}

/// A question to the sink: where is this tree blob (answered once its pack is uploaded)?
type TreeRequest = (Id, oneshot::Sender<BlobLocation>);

/// Asks the sink where a tree blob of this run is stored.
#[derive(Debug, Clone)]
pub struct TreeFinder(mpsc::Sender<TreeRequest>);

impl TreeFinder {
    /// Where tree blob `id` is stored, waiting until its pack is uploaded (the sink closes the
    /// open tree pack for it). `id` must have been sent to this sink: one that never comes is
    /// waited for until the sink stops.
    pub async fn locate(&self, id: Id) -> Result<BlobLocation> {
        let stopped = || Error::Pipeline("the upload stage stopped".into());
        let (tx, rx) = oneshot::channel();
        self.0.send((id, tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}

type UploadOutcome =
    std::result::Result<Result<(Id, Vec<PackedBlob>, usize)>, tokio::task::JoinError>;

struct State {
    repo: Repository,
    opts: SinkOptions,
    open: [PackBuilder; 2],
    /// Budget shares of the blobs in the open packs, released once their pack is uploaded.
    shares: [Vec<Share>; 2],
    uploads: JoinSet<Result<(Id, Vec<PackedBlob>, usize)>>,
    index: IndexWriter,
    last_index: Instant,
    /// The index file being written, if any.
    index_write: Option<tokio::task::JoinHandle<Result<()>>>,
    stats: SinkStats,
    /// Where blob buffers go once done with.
    buffers: Arc<BufferPool>,
    /// Tree blobs of this run in uploaded packs (one record per directory).
    trees: BlobIndex,
    /// [`TreeFinder`] questions waiting for their blob's pack to be uploaded.
    wanted: Vec<TreeRequest>,
}

async fn run(
    repo: Repository,
    mut rx: mpsc::Receiver<Vec<BlobJob>>,
    mut find_rx: mpsc::Receiver<TreeRequest>,
    mut opts: SinkOptions,
    buffers: Arc<BufferPool>,
) -> Result<SinkStats> {
    if !repo.compression() {
        opts.zstd_level = None;
    }
    let mut st = State {
        open: [PackBuilder::new(), PackBuilder::new()],
        shares: [Vec::new(), Vec::new()],
        uploads: JoinSet::new(),
        index: IndexWriter::default(),
        last_index: Instant::now(),
        index_write: None,
        stats: SinkStats::default(),
        buffers,
        trees: BlobIndex::default(),
        wanted: Vec::new(),
        repo,
        opts,
    };
    let result = st.pump(&mut rx, &mut find_rx).await;
    // Even when failing, record what reached the repository, so a retry reuses it.
    let flushed = st
        .drain_uploads()
        .await
        .and(st.flush_index().await)
        .and(st.index_written().await);
    match (result, flushed) {
        (Ok(()), Ok(())) => Ok(st.stats),
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
    }
}

impl State {
    async fn pump(
        &mut self,
        rx: &mut mpsc::Receiver<Vec<BlobJob>>,
        find_rx: &mut mpsc::Receiver<TreeRequest>,
    ) -> Result<()> {
        let key = self.repo.key().clone();
        let mut encoding: JoinSet<Vec<Encoded>> = JoinSet::new();
        let mut input_open = true;
        let mut finder_open = true;
        loop {
            let can_take = input_open
                && encoding.len() < self.opts.workers
                && self.uploads.len() < self.opts.max_uploads;
            tokio::select! {
                job = rx.recv(), if can_take => match job {
                    Some(jobs) => {
                        let key = key.clone();
                        let level = self.opts.zstd_level;
                        let buffers = self.buffers.clone();
                        encoding.spawn_blocking(move || {
                            jobs.into_iter()
                                .map(|job| encode(&key, job, level, &buffers))
                                .collect()
                        });
                    }
                    None => input_open = false,
                },
                Some(done) = encoding.join_next(), if !encoding.is_empty() => {
                    let batch = done.map_err(|e| Error::Pipeline(format!("encoder: {e}")))?;
                    for enc in batch {
                        self.add(enc).await?;
                    }
                }
                up = self.uploads.join_next(), if !self.uploads.is_empty() => {
                    self.uploaded(up).await?;
                }
                req = find_rx.recv(), if finder_open => match req {
                    Some((id, reply)) => self.want(id, reply).await?,
                    None => finder_open = false,
                },
                else => break,
            }
            if !input_open && encoding.is_empty() {
                break;
            }
        }
        for ty in [BlobType::Data, BlobType::Tree] {
            self.close_pack(ty).await?;
        }
        Ok(())
    }

    async fn add(&mut self, mut enc: Encoded) -> Result<()> {
        let slot = slot(enc.ty);
        // A recycled buffer can be bigger than its blob; the pack holds it until uploaded, so
        // give the excess back first (for a mapping that is an in-place mremap, no copy).
        enc.sealed.shrink_to_fit();
        if let Some(mut share) = enc.share.take() {
            // Compressed blobs hold less from here on: the pack closes by sealed bytes, so its
            // shares must count those, or it could hold the whole budget before it is full.
            budget::shrink(&mut share, enc.sealed.len() as u64);
            self.shares[slot].push(share);
        }
        self.open[slot]
            .add_sealed(
                enc.id,
                enc.ty,
                Bytes::from(enc.sealed),
                enc.uncompressed_length,
            )
            .map_err(|e| Error::Pipeline(e.to_string()))?;
        match enc.ty {
            BlobType::Data => self.stats.data_blobs += 1,
            BlobType::Tree => self.stats.tree_blobs += 1,
        }
        self.stats.plain_bytes += enc.plain_len as u64;
        // A tree the archiver waits for is uploaded now, not when its pack is full.
        let wanted = enc.ty == BlobType::Tree && self.wanted.iter().any(|(id, _)| *id == enc.id);
        if wanted
            || self.open[slot].len() >= self.opts.pack_size
            || self.open[slot].blob_count() >= MAX_PACK_BLOBS
            || self.open[slot].header_full()
        {
            self.close_pack(enc.ty).await?;
        }
        Ok(())
    }

    /// Answers where tree `id` is once its pack is uploaded. Not uploaded yet, it is in the
    /// open tree pack (closed now), in an upload, or still on its way in (then [`Self::add`]
    /// closes its pack).
    async fn want(&mut self, id: Id, reply: oneshot::Sender<BlobLocation>) -> Result<()> {
        if let Some(loc) = self.trees.get(&id) {
            // The archiver may have gone meanwhile; nothing to answer then.
            let _ = reply.send(loc);
            return Ok(());
        }
        self.wanted.push((id, reply));
        self.close_pack(BlobType::Tree).await
    }

    async fn close_pack(&mut self, ty: BlobType) -> Result<()> {
        let slot = slot(ty);
        if self.open[slot].is_empty() {
            return Ok(());
        }
        let builder = std::mem::take(&mut self.open[slot]);
        let shares = std::mem::take(&mut self.shares[slot]);
        while self.uploads.len() >= self.opts.max_uploads {
            let up = self.uploads.join_next().await;
            self.uploaded(up).await?;
        }
        let key: Arc<Key> = self.repo.key().clone();
        let repo = self.repo.clone();
        let buffers = self.buffers.clone();
        self.uploads.spawn(async move {
            // Hashing the whole pack is CPU work: off the async threads.
            let pack = tokio::task::spawn_blocking(move || builder.finish_parts(&key))
                .await
                .map_err(|e| Error::Pipeline(format!("pack: {e}")))?
                .map_err(|e| Error::Pipeline(e.to_string()))?;
            let len = pack.len;
            let kept = pack.parts.clone();
            repo.backend()
                .write_parts(FileType::Pack, &pack.id, pack.parts)
                .await
                .map_err(snapback_repo::Error::from)?;
            // The blobs' buffers go back to the pool once the backend let go of them: their
            // pages are mapped, so the archiver reuses them without faulting new ones in.
            for part in kept {
                if let Ok(buf) = part.try_into_mut() {
                    buffers.give_back(Vec::from(buf));
                }
            }
            drop(shares);
            tracing::debug!(pack = %pack.id.short(), bytes = len, blobs = pack.blobs.len(), "uploaded pack");
            Ok((pack.id, pack.blobs, len))
        });
        Ok(())
    }

    async fn uploaded(&mut self, up: Option<UploadOutcome>) -> Result<()> {
        let Some(up) = up else { return Ok(()) };
        let (pack, blobs, len) = up.map_err(|e| Error::Pipeline(format!("upload task: {e}")))??;
        self.stats.packs += 1;
        self.stats.packed_bytes += len as u64;
        self.index.add(pack, &blobs);
        let trees: Vec<PackedBlob> = blobs
            .iter()
            .filter(|b| b.ty == BlobType::Tree)
            .copied()
            .collect();
        if !trees.is_empty() {
            self.trees.add_pack(pack, &trees);
            for (id, reply) in std::mem::take(&mut self.wanted) {
                match self.trees.get(&id) {
                    Some(loc) => {
                        let _ = reply.send(loc);
                    }
                    None => self.wanted.push((id, reply)),
                }
            }
        }
        let packs_due = self
            .opts
            .index_packs
            .max(1)
            .max(usize::try_from(self.stats.packs / 8).unwrap_or(usize::MAX));
        if self.index.is_full()
            || self.index.pending_packs() >= packs_due
            || self.last_index.elapsed() >= self.opts.index_interval
        {
            self.flush_index().await?;
        }
        Ok(())
    }

    async fn drain_uploads(&mut self) -> Result<()> {
        let mut first_err = None;
        while let Some(up) = self.uploads.join_next().await {
            if let Err(e) = self.uploaded(Some(up)).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Starts writing the pending index entries as one file, once the previous file is
    /// written (so at most two files' entries are held).
    async fn flush_index(&mut self) -> Result<()> {
        self.last_index = Instant::now();
        let Some(file) = self.index.take() else {
            return Ok(());
        };
        self.index_written().await?;
        let repo = self.repo.clone();
        self.index_write = Some(tokio::spawn(async move {
            let sealer = repo.clone();
            let (id, sealed) = tokio::task::spawn_blocking(move || {
                let plain = serde_json::to_vec(&file)
                    .map_err(|e| Error::Pipeline(format!("encoding an index file: {e}")))?;
                Ok::<_, Error>(sealer.seal_unpacked(FileType::Index, &plain)?)
            })
            .await
            .map_err(|e| Error::Pipeline(format!("index encoder: {e}")))??;
            repo.save_sealed(FileType::Index, &id, sealed).await?;
            tracing::debug!(index = %id.short(), "wrote index file");
            Ok(())
        }));
        self.stats.index_files += 1;
        Ok(())
    }

    /// Waits for the index file being written, if any.
    async fn index_written(&mut self) -> Result<()> {
        match self.index_write.take() {
            Some(task) => task
                .await
                .map_err(|e| Error::Pipeline(format!("index writer: {e}")))?,
            None => Ok(()),
        }
    }
}

fn slot(ty: BlobType) -> usize {
    match ty {
        BlobType::Data => 0,
        BlobType::Tree => 1,
    }
}

fn encode(key: &Key, job: BlobJob, level: Option<i32>, buffers: &BufferPool) -> Encoded {
    let mut payload = job.data;
    let (plain_len, mut uncompressed_length) = match job.compressed_from {
        Some(n) => (n as usize, Some(n)),
        None => (payload.len(), None),
    };
    // Keep the compressed form only when it is smaller (restic reads both forms).
    if let (None, Some(z)) = (
        job.compressed_from,
        level.and_then(|l| compress(&payload, l, buffers)),
    ) {
        buffers.give_back(std::mem::replace(&mut payload, z));
        uncompressed_length = u32::try_from(plain_len).ok();
    }
    key.seal_in_place(&mut payload);
    Encoded {
        id: job.id,
        ty: job.ty,
        plain_len,
        sealed: payload,
        uncompressed_length,
        share: job.share,
    }
}

/// Blobs at least this long are sampled before being compressed whole.
const SAMPLE_FROM: usize = 128 * 1024;
/// Bytes taken from each of the sample's evenly spaced windows.
const SAMPLE_WINDOW: usize = 16 * 1024;
/// Windows in a sample.
const SAMPLE_WINDOWS: usize = 4;
/// zstd level of the sample's trial compression (the fastest regular level).
const SAMPLE_LEVEL: i32 = 1;

/// zstd contexts by level and [`size_class`].
type Contexts = Vec<((i32, u32), zstd::bulk::Compressor<'static>)>;

/// Idle zstd contexts, shared by the encoder threads. Reusing a context saves its setup and
/// page faults per blob; a shared pool (not one per thread) keeps their number, and memory, at
/// the number of blobs encoding at once, however many threads the blocking pool has used.
///
/// Contexts are kept apart by the size class of what they compress: zstd sizes a context's tables
/// to the input, and a context that served a big blob and then many small ones frees and
/// remaps its workspace (it shrinks one found three times too big for 128 uses in a row), so
/// one pool for a mix of 30-byte files and 300 KiB trees refaulted megabytes of tables over
/// and over (a third of all page faults of a stream of small files). Output does not depend
/// on the context's history, only on level and input.
static IDLE_CONTEXTS: std::sync::Mutex<Contexts> = std::sync::Mutex::new(Vec::new());

/// The size class of a `len`-byte input: up to 16 KiB (small files, a file's tail: zstd's
/// smallest tier of table sizes) or more. Two classes only: every class holds idle contexts of
/// its own (up to a few MiB for the biggest), and a class per tier cost more peak RSS than its
/// refaults saved; tiny blobs among big ones were the churn.
fn size_class(len: usize) -> u32 {
    u32::from(len > SMALL_CONTEXT_INPUT)
}

/// Inputs up to this size are compressed with contexts of their own ([`size_class`]).
const SMALL_CONTEXT_INPUT: usize = 16 * 1024;

/// A zstd context at `level` for a `len`-byte input, from the pool or new.
fn take_context(level: i32, len: usize) -> Option<zstd::bulk::Compressor<'static>> {
    let key = (level, size_class(len));
    let mut idle = IDLE_CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    match idle.iter().position(|(k, _)| *k == key) {
        Some(at) => Some(idle.swap_remove(at).1),
        None => {
            drop(idle);
            zstd::bulk::Compressor::new(level).ok()
        }
    }
}

/// Frees the idle zstd contexts (a few MiB): a long-running process calls this between
/// backups, so that it holds no compression state while it waits.
pub fn release_idle_contexts() {
    let idle = std::mem::take(&mut *IDLE_CONTEXTS.lock().unwrap_or_else(|e| e.into_inner()));
    drop(idle);
}

fn return_context(level: i32, len: usize, ctx: zstd::bulk::Compressor<'static>) {
    let mut idle = IDLE_CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    idle.push(((level, size_class(len)), ctx));
}

/// Compresses `data` at `level` into a buffer from `buffers` when that makes it smaller; the
/// result has room to be sealed in place. Large blobs whose sample does not shrink (already
/// compressed or encrypted content) are not compressed at all, which saves zstd's full pass
/// over them.
fn compress(data: &[u8], level: i32, buffers: &BufferPool) -> Option<Vec<u8>> {
    if data.len() >= SAMPLE_FROM && !sample_shrinks(data) {
        return None;
    }
    let out = buffers.take(zstd::zstd_safe::compress_bound(data.len()) + crypto::OVERHEAD);
    match zstd_into(data, level, out) {
        Ok(z) if z.len() < data.len() => Some(z),
        Ok(out) | Err(out) => {
            buffers.give_back(out);
            None
        }
    }
}

/// Whether zstd's fastest level shrinks evenly spaced windows of `data` by at least 2 %.
fn sample_shrinks(data: &[u8]) -> bool {
    let stride = (data.len() - SAMPLE_WINDOW) / (SAMPLE_WINDOWS - 1);
    let mut sample = Vec::with_capacity(SAMPLE_WINDOW * SAMPLE_WINDOWS);
    for w in 0..SAMPLE_WINDOWS {
        sample.extend_from_slice(&data[w * stride..w * stride + SAMPLE_WINDOW]);
    }
    let out = Vec::with_capacity(zstd::zstd_safe::compress_bound(sample.len()));
    // Without a result (no context, a zstd error), compress the whole blob as before.
    zstd_into(&sample, SAMPLE_LEVEL, out).map_or(true, |z| z.len() * 50 < sample.len() * 49)
}

/// `data` compressed at `level` with a pooled context into `out`, which must have room for
/// zstd's bound; `out` comes back as the error when there is no context or zstd fails.
fn zstd_into(data: &[u8], level: i32, mut out: Vec<u8>) -> std::result::Result<Vec<u8>, Vec<u8>> {
    let Some(mut ctx) = take_context(level, data.len()) else {
        return Err(out);
    };
    let result = ctx.compress_to_buffer(data, &mut out);
    return_context(level, data.len(), ctx);
    match result {
        Ok(_) => Ok(out),
        Err(_) => Err(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapback_repo::test_util::local_repo;

    #[test]
    fn small_and_big_inputs_use_contexts_of_their_own() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(SMALL_CONTEXT_INPUT), 0);
        assert_eq!(size_class(SMALL_CONTEXT_INPUT + 1), 1);
        assert_eq!(size_class(8 << 20), 1);
        // Whichever context compressed before, the output is the same.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 97) as u8).collect();
        let small = b"tiny file, tiny file, tiny file".to_vec();
        let alone = zstd_into(&small, 3, Vec::with_capacity(1024)).unwrap();
        let _ = zstd_into(&big, 3, Vec::with_capacity(400_000)).unwrap();
        assert_eq!(
            zstd_into(&small, 3, Vec::with_capacity(1024)).unwrap(),
            alone
        );
    }

    /// Incompressible bytes: a ciphertext of zeros.
    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut sealed = Key::random().encrypt(&vec![0; len]);
        sealed.truncate(len);
        sealed
    }

    fn decode(key: &Key, enc: &Encoded) -> Vec<u8> {
        let plain = key.decrypt(&enc.sealed).unwrap();
        match enc.uncompressed_length {
            Some(n) => zstd::bulk::decompress(&plain, n as usize).unwrap(),
            None => plain,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploaded_blobs_buffers_come_back_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let repo = local_repo(dir.path()).await.unwrap();
        let pool = Arc::new(BufferPool::new(8 << 20));
        // A pack is closed at 1 MiB: the first three blobs fill one, the last one closes
        // the second at the end. Random blobs are stored raw, in the very buffers sent.
        let sink_opts = SinkOptions {
            pack_size: 1 << 20,
            ..SinkOptions::default()
        };
        let (tx, task) = start(repo, sink_opts, pool.clone());
        let mut sent = 0;
        for _ in 0..4 {
            let mut data = pool.take(400_000 + crypto::OVERHEAD);
            data.extend_from_slice(&pseudo_random(400_000));
            sent += data.capacity();
            let job = BlobJob {
                id: Id::hash(&data),
                ty: BlobType::Data,
                data,
                share: None,
                compressed_from: None,
            };
            tx.send(vec![job]).await.unwrap();
        }
        drop(tx);
        let stats = task.await.unwrap().unwrap();
        assert_eq!((stats.data_blobs, stats.packs), (4, 2));
        // Nothing was compressed or dropped as a duplicate: all that is idle came back from
        // the uploads.
        assert_eq!(pool.idle_bytes(), sent);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tree_finder_answers_for_trees_in_the_open_pack_in_flight_and_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let repo = local_repo(dir.path()).await.unwrap();
        let pool = Arc::new(BufferPool::new(8 << 20));
        let sink_opts = SinkOptions {
            pack_size: 1 << 20,
            ..SinkOptions::default()
        };
        let (tx, finder, task) = start_with_finder(repo.clone(), sink_opts, pool);
        let tree = |n: usize, len: usize| {
            let mut t = format!("{{\"nodes\":[],\"n\":{n},\"pad\":\"").into_bytes();
            t.extend(pseudo_random(len).iter().map(|b| b'a' + b % 26));
            t.extend_from_slice(b"\"}\n");
            t
        };
        let send = |data: Vec<u8>| {
            let tx = tx.clone();
            async move {
                let id = Id::hash(&data);
                tx.send(vec![BlobJob {
                    id,
                    ty: BlobType::Tree,
                    data: data.clone(),
                    share: None,
                    compressed_from: None,
                }])
                .await
                .unwrap();
                (id, data)
            }
        };
        // Three big trees fill and upload packs; a small one stays in the open pack.
        let mut sent = Vec::new();
        for n in 0..3 {
            sent.push(send(tree(n, 800_000)).await);
        }
        let small = send(tree(3, 100)).await;
        // The small one first: it is in the open pack (or still on its way), so the sink
        // closes the pack for it instead of waiting for more trees.
        for (id, data) in std::iter::once(&small).chain(&sent) {
            // Without the early close this would wait for ever.
            let loc = tokio::time::timeout(Duration::from_secs(30), finder.locate(*id))
                .await
                .expect("the sink answers without more input")
                .unwrap();
            assert_eq!(loc.ty, BlobType::Tree);
            assert_eq!(&repo.load_blob(id, &loc).await.unwrap()[..], &data[..]);
        }
        // Asked again: answered from the run's tree index.
        let loc = finder.locate(small.0).await.unwrap();
        assert_eq!(
            &repo.load_blob(&small.0, &loc).await.unwrap()[..],
            &small.1[..]
        );
        drop((tx, finder));
        let stats = task.await.unwrap().unwrap();
        // The big trees filled packs of their own; the small one was closed early.
        assert_eq!(stats.tree_blobs, 4);
        assert!(stats.packs >= 2, "{stats:?}");
    }

    #[test]
    fn compressible_blobs_are_compressed_and_random_ones_stored_raw() {
        let key = Key::random();
        let text: Vec<u8> = b"snapback stores restic repositories; "
            .iter()
            .cycle()
            .take(1 << 20)
            .copied()
            .collect();
        let random = pseudo_random(1 << 20);
        // Random data with a compressible tail: the windows see both, the whole shrinks.
        let mut mixed = pseudo_random(1 << 19);
        mixed.extend_from_slice(&text[..1 << 19]);
        let pool = BufferPool::new(4 << 20);
        for (data, compressed) in [(text, true), (random, false), (mixed, true)] {
            let id = Id::hash(&data);
            let enc = encode(
                &key,
                BlobJob {
                    id,
                    ty: BlobType::Data,
                    data: data.clone(),
                    share: None,
                    compressed_from: None,
                },
                Some(3),
                &pool,
            );
            assert_eq!(enc.uncompressed_length.is_some(), compressed);
            if compressed {
                assert!(enc.sealed.len() < data.len());
                // The plaintext's buffer went back to the pool (the compressed one may have
                // come from it).
                assert!(pool.idle_bytes() >= data.len());
            } else {
                assert_eq!(enc.sealed.len(), data.len() + crypto::OVERHEAD);
            }
            assert_eq!(decode(&key, &enc), data);
        }
        // Small blobs are not sampled; without a level nothing is compressed.
        let small = b"{\"nodes\":[]}\n".repeat(100);
        for level in [Some(3), None] {
            let job = BlobJob {
                id: Id::hash(&small),
                ty: BlobType::Tree,
                data: small.clone(),
                share: None,
                compressed_from: None,
            };
            let enc = encode(&key, job, level, &pool);
            assert_eq!(enc.uncompressed_length.is_some(), level.is_some());
            assert_eq!(decode(&key, &enc), small);
        }
    }
}
