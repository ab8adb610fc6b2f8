//! The in-memory blob index: where every blob of the repository is stored.
//!
//! Compact, because a backup of a few files into a large repository holds the whole index:
//! 27 bytes per blob (plus 32 bytes per pack and a fixed 256 KiB table), against about
//! 190 bytes for the hash map it replaces and about 350 for restic.
//!
//! Every blob is one fixed 27-byte [`Record`] in a single array, sorted by blob id. A table of
//! 2^16 bucket starts, indexed by the first two bytes of the id, narrows a lookup to a few
//! records (ids are SHA-256 hashes, so buckets fill evenly), which a binary search finishes.
//! Since the bucket implies those two bytes, a record keeps only the next 14: 128 bits of id.
//!
//! **Ids that agree in their first 128 bits are the same blob to this index.** By accident
//! that needs about 2^64 blobs; on purpose, 2^64 SHA-256 evaluations to make two colliding
//! blobs of one's own. The threat model is unchanged: whoever can write index files can
//! already point a full id at other data, and either way a blob's content is checked against
//! its full id when it is read ([`Repository::load_blob`]), so a wrong blob is an error, not
//! silently wrong data. (A backup that skipped a blob as known would be reported by `check`.)
//!
//! A record's lengths have 24 bits and its pack slot 23: a blob that does not fit (a tree
//! blob of 16 MiB or more, a pack beyond the 8 millionth) is kept whole in a small
//! exceptions table instead.
//!
//! Loading decodes two index files at once (one per core), each on a blocking thread,
//! decompressed and parsed in 64 KiB chunks straight into records (no parsed `IndexFile`, no
//! whole JSON text), then orders everything once with an in-place bucket distribution and
//! small per-bucket sorts: no second array. The load's peak is the records plus about
//! 15 MB (two sealed index files with their decompression windows, and the records' buckets
//! until they are ordered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::{StreamExt, TryStreamExt};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::backend::FileType;
use crate::file::{IndexBlob, IndexFile, IndexPack};
use crate::pack::{BlobLocation, BlobType, PackedBlob};
use crate::repository::Repository;
use crate::{Error, Id, Result};

/// Id bytes that tell blobs apart here (see the module docs).
const PREFIX: usize = 16;
/// Leading id bytes that select a bucket, and so are not stored in the records.
const BUCKET_BYTES: usize = 2;
const BUCKETS: usize = 1 << (8 * BUCKET_BYTES);
/// Blob type bit in a record's 24-bit pack field; the other 23 bits are the pack's slot.
/// 8 million packs is 128 TiB in restic's default packs; the blobs of packs beyond that
/// still work, from the exceptions table (at about three times the memory).
const TREE_BIT: u32 = 1 << 23;
/// Pack slot meaning "this blob's location is in the exceptions table".
const EXCEPTION_SLOT: u32 = TREE_BIT - 1;
/// Lengths a record holds: 24 bits, enough for any data blob (the chunker cuts at most
/// 8 MiB); a larger blob (a tree of a huge directory) goes to the exceptions table.
const LENGTH_LIMIT: u32 = 1 << 24;
/// Uncompressed length meaning "not compressed" (so an uncompressed length of exactly this
/// value goes to the exceptions table too).
const NOT_COMPRESSED: u32 = LENGTH_LIMIT - 1;
/// Index files read and decoded at once, each on a blocking thread: one per core of the
/// machines this runs on. Each holds its file sealed (~2.6 MB for 50,000 blobs) while it is
/// decoded, so this bounds the load's working memory; decoding, not reading, takes the time.
const CONCURRENT_FILES: usize = 2;
/// Records a file's decoder collects before it adds them to the shared builder (at the end
/// of a pack), so that the decoders seldom wait for each other.
const BATCH: usize = 4096;
/// Decompressed JSON read at a time (the parse buffer also holds the pack being read).
const READ_BUFFER: usize = 64 * 1024;
/// Blobs added by [`BlobIndex::add_pack`] are merged into the sorted array when there are this
/// many, or a 32nd of the index if that is more (so merging costs O(1) per blob, amortised).
const OVERLAY_MIN: usize = 8192;

/// One blob in 27 bytes; byte arrays so that the struct has no padding (alignment 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Record {
    /// Id bytes `BUCKET_BYTES..PREFIX`.
    key: [u8; PREFIX - BUCKET_BYTES],
    /// Pack slot (little-endian, 24 bits) with [`TREE_BIT`].
    pack: [u8; 3],
    offset: [u8; 4],
    /// Little-endian, below [`LENGTH_LIMIT`].
    length: [u8; 3],
    /// Uncompressed length (little-endian, below [`NOT_COMPRESSED`]) or [`NOT_COMPRESSED`].
    raw: [u8; 3],
}

/// The low 24 bits of `v`, little-endian.
fn u24(v: u32) -> [u8; 3] {
    let [a, b, c, _] = v.to_le_bytes();
    [a, b, c]
}

fn from_u24([a, b, c]: [u8; 3]) -> u32 {
    u32::from_le_bytes([a, b, c, 0])
}

/// A blob's full location, for the rare blob that does not fit a [`Record`].
#[derive(Debug, Clone, Copy)]
struct Entry {
    pack: usize,
    ty: BlobType,
    offset: u32,
    length: u32,
    uncompressed_length: Option<u32>,
}

type Prefix = [u8; PREFIX];

fn prefix(id: &Id) -> Prefix {
    let mut p = [0u8; PREFIX];
    p.copy_from_slice(&id.0[..PREFIX]);
    p
}

fn bucket_of(p: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([p[0], p[1]]))
}

impl Record {
    /// The record for `e` when it fits, or `None` (a pack slot beyond 23 bits, a length of
    /// 16 MiB or more, or an uncompressed length of at least the sentinel).
    fn pack(p: &Prefix, e: &Entry) -> Option<Record> {
        let slot = u32::try_from(e.pack).ok().filter(|&s| s < EXCEPTION_SLOT)?;
        if e.length >= LENGTH_LIMIT {
            return None;
        }
        let raw = match e.uncompressed_length {
            Some(u) if u >= NOT_COMPRESSED => return None,
            Some(u) => u,
            None => NOT_COMPRESSED,
        };
        Some(Record {
            length: u24(e.length),
            raw: u24(raw),
            ..Record::with_slot(p, slot, e)
        })
    }

    /// A record naming `slot`, with the id and type of `e` (lengths left out: an exception's
    /// are in the table).
    fn with_slot(p: &Prefix, slot: u32, e: &Entry) -> Record {
        let mut key = [0u8; PREFIX - BUCKET_BYTES];
        key.copy_from_slice(&p[BUCKET_BYTES..]);
        let ty = match e.ty {
            BlobType::Data => 0,
            BlobType::Tree => TREE_BIT,
        };
        Record {
            key,
            pack: u24(slot | ty),
            offset: e.offset.to_le_bytes(),
            length: [0; 3],
            raw: u24(NOT_COMPRESSED),
        }
    }

    fn pack_field(&self) -> u32 {
        from_u24(self.pack)
    }

    fn slot(&self) -> u32 {
        self.pack_field() & !TREE_BIT
    }

    fn ty(&self) -> BlobType {
        if self.pack_field() & TREE_BIT != 0 {
            BlobType::Tree
        } else {
            BlobType::Data
        }
    }

    fn entry(&self) -> Entry {
        let raw = from_u24(self.raw);
        Entry {
            pack: self.slot() as usize,
            ty: self.ty(),
            offset: u32::from_le_bytes(self.offset),
            length: from_u24(self.length),
            uncompressed_length: (raw != NOT_COMPRESSED).then_some(raw),
        }
    }
}

/// All blobs of the repository (as far as its index files tell) plus packs added in this run.
///
/// When several index files list the same blob, the copy in the pack seen first is kept.
#[derive(Debug, Default)]
pub struct BlobIndex {
    /// Pack ids by slot; a record names its pack by slot.
    packs: Vec<Id>,
    /// Sorted by (bucket, key); no two with the same key in a bucket.
    records: Vec<Record>,
    /// `starts[b]..starts[b + 1]` are bucket `b`'s records; empty while `records` is.
    starts: Vec<u32>,
    /// Blobs whose records carry [`EXCEPTION_SLOT`]; normally empty.
    exceptions: HashMap<Prefix, Entry>,
    /// Blobs added in this run, not yet merged into `records`.
    overlay: HashMap<Prefix, Record>,
}

impl BlobIndex {
    /// Loads every index file of `repo`: read concurrently, each decoded into the compact form
    /// as it arrives.
    pub async fn load(repo: &Repository) -> Result<Self> {
        let files = repo.backend().list(FileType::Index).await?;
        let shared = Arc::new(Mutex::new(Builder::default()));
        let mut loads = futures::stream::iter(files)
            .map(|f| {
                let (repo, shared) = (repo.clone(), shared.clone());
                async move {
                    let data = repo.backend().read(FileType::Index, &f.id).await?;
                    let path = FileType::Index.path(&f.id);
                    tokio::task::spawn_blocking(move || load_file(&repo, &f.id, data, shared))
                        .await
                        .map_err(|e| Error::format(path, e))?
                }
            })
            .buffer_unordered(CONCURRENT_FILES);
        while loads.try_next().await?.is_some() {}
        drop(loads);
        let builder = Arc::try_unwrap(shared)
            .map_err(|_| Error::format("index", "index loader still running"))?
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(builder.finish())
    }

    fn new_slot(&mut self, id: Id) -> usize {
        self.packs.push(id);
        self.packs.len() - 1
    }

    /// Records the blobs of a pack uploaded in this run (blobs already known keep their
    /// first location).
    pub fn add_pack(&mut self, pack: Id, blobs: &[PackedBlob]) {
        let slot = self.new_slot(pack);
        for b in blobs {
            if self.contains(&b.id) {
                continue;
            }
            let p = prefix(&b.id);
            let e = Entry {
                pack: slot,
                ty: b.ty,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            };
            let record = Record::pack(&p, &e).unwrap_or_else(|| {
                self.exceptions.insert(p, e);
                Record::with_slot(&p, EXCEPTION_SLOT, &e)
            });
            self.overlay.insert(p, record);
        }
        if self.overlay.len() >= OVERLAY_MIN.max(self.records.len() / 32) {
            self.merge_overlay();
        }
    }

    /// Moves the overlay into the sorted array.
    fn merge_overlay(&mut self) {
        let mut records = std::mem::take(&mut self.records);
        let mut buckets = Vec::with_capacity(records.len() + self.overlay.len());
        for b in 0..self.starts.len().saturating_sub(1) {
            let n = self.starts[b + 1] - self.starts[b];
            buckets.extend(std::iter::repeat_n(b as u16, n as usize));
        }
        records.reserve_exact(self.overlay.len());
        for (p, r) in self.overlay.drain() {
            buckets.push(bucket_of(&p) as u16);
            records.push(r);
        }
        self.overlay.shrink_to_fit();
        (self.records, self.starts) = order(records, buckets);
    }

    fn record(&self, id: &Id) -> Option<&Record> {
        if let Some(r) = self.sorted_record(id) {
            return Some(r);
        }
        if self.overlay.is_empty() {
            return None;
        }
        self.overlay.get(&prefix(id))
    }

    fn sorted_record(&self, id: &Id) -> Option<&Record> {
        let b = bucket_of(&id.0);
        let (start, end) = (*self.starts.get(b)?, *self.starts.get(b + 1)?);
        let bucket = self.records.get(start as usize..end as usize)?;
        let key = &id.0[BUCKET_BYTES..PREFIX];
        find(bucket, key).map(|i| &bucket[i])
    }

    fn location(&self, p: &Prefix, r: &Record) -> Option<BlobLocation> {
        let e = if r.slot() == EXCEPTION_SLOT {
            *self.exceptions.get(p)?
        } else {
            r.entry()
        };
        Some(BlobLocation {
            pack: *self.packs.get(e.pack)?,
            ty: e.ty,
            offset: e.offset,
            length: e.length,
            uncompressed_length: e.uncompressed_length,
        })
    }

    /// Where blob `id` is stored.
    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.location(&prefix(id), self.record(id)?)
    }

    /// Whether blob `id` is stored.
    pub fn contains(&self, id: &Id) -> bool {
        self.record(id).is_some()
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.records.len() + self.overlay.len()
    }

    /// No blobs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The location of every blob of type `ty`, in no particular order. (The index does not
    /// keep full blob ids, so it cannot list them.)
    pub fn locations(&self, ty: BlobType) -> impl Iterator<Item = BlobLocation> + '_ {
        let sorted = (0..self.starts.len().saturating_sub(1)).flat_map(move |b| {
            let (start, end) = (self.starts[b] as usize, self.starts[b + 1] as usize);
            self.records[start..end].iter().map(move |r| {
                let mut p = [0u8; PREFIX];
                p[..BUCKET_BYTES].copy_from_slice(&(b as u16).to_be_bytes());
                p[BUCKET_BYTES..].copy_from_slice(&r.key);
                (p, *r)
            })
        });
        sorted
            .chain(self.overlay.iter().map(|(p, r)| (*p, *r)))
            .filter(move |(_, r)| r.ty() == ty || r.slot() == EXCEPTION_SLOT)
            .filter_map(move |(p, r)| self.location(&p, &r))
            .filter(move |l| l.ty == ty)
    }

    /// Bytes of heap memory the index holds, from its containers' capacities (hash tables
    /// counted with one control byte per slot).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.packs.capacity() * size_of::<Id>()
            + self.records.capacity() * size_of::<Record>()
            + self.starts.capacity() * size_of::<u32>()
            + self.exceptions.capacity() * (size_of::<(Prefix, Entry)>() + 1)
            + self.overlay.capacity() * (size_of::<(Prefix, Record)>() + 1)
    }
}

/// Decodes one sealed index file into `shared`, in batches. Decompressed as it is parsed:
/// the JSON (~8 MB for 50,000 blobs) is never whole.
fn load_file(
    repo: &Repository,
    id: &Id,
    data: bytes::Bytes,
    shared: Arc<Mutex<Builder>>,
) -> Result<()> {
    let reader = repo.open_unpacked_reader(FileType::Index, id, data)?;
    let mut batch = Builder {
        shared: Some(shared),
        ..Builder::default()
    };
    batch.add_reader(reader).map_err(|e| {
        let what = if e.is_io() {
            "cannot decompress"
        } else {
            "invalid JSON"
        };
        Error::format(FileType::Index.path(id), format!("{what}: {e}"))
    })?;
    batch.flush();
    Ok(())
}

/// A JSON syntax error found by [`Chunked`].
fn syntax(what: &str) -> serde_json::Error {
    serde::de::Error::custom(format!("invalid index JSON: {what}"))
}

/// JSON read in chunks, walked by the caller a token or a whole value at a time.
struct Chunked<R> {
    reader: R,
    buf: Vec<u8>,
    /// Next unread byte of `buf`.
    pos: usize,
    /// The reader is exhausted.
    eof: bool,
}

impl<R: std::io::Read> Chunked<R> {
    fn new(reader: R) -> Self {
        Chunked {
            reader,
            buf: Vec::with_capacity(READ_BUFFER),
            pos: 0,
            eof: false,
        }
    }

    /// Reads more (at least one more byte unless at the end); false at the end.
    fn fill(&mut self) -> serde_json::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        // Drop what was read; keep the unread tail.
        self.buf.drain(..self.pos);
        self.pos = 0;
        // A chunk more, or twice the tail when a value is larger than a chunk.
        let want = READ_BUFFER.max(self.buf.len());
        let n = crate::file::read_more(&mut self.reader, &mut self.buf, want)
            .map_err(serde_json::Error::io)?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    /// The next byte that is not white space, not consumed; `None` at the end.
    fn peek(&mut self) -> serde_json::Result<Option<u8>> {
        loop {
            while let Some(&b) = self.buf.get(self.pos) {
                if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                    return Ok(Some(b));
                }
                self.pos += 1;
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    fn expect(&mut self, want: u8) -> serde_json::Result<()> {
        match self.peek()? {
            Some(b) if b == want => {
                self.pos += 1;
                Ok(())
            }
            Some(b) => Err(syntax(&format!(
                "expected '{}', found '{}'",
                want as char,
                b.escape_ascii()
            ))),
            None => Err(syntax(&format!(
                "expected '{}', found the end",
                want as char
            ))),
        }
    }

    /// After a list's (or object's) element: true after a `,`, false after `close`.
    fn list_continues(&mut self, close: u8) -> serde_json::Result<bool> {
        match self.peek()? {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b) if b == close => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(syntax(&format!("expected ',' or '{}'", close as char))),
        }
    }

    /// Reads until the next value is whole in the buffer, parses exactly it with `parse`
    /// from the slice, and consumes it.
    fn value<T>(
        &mut self,
        parse: impl FnOnce(
            &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
        ) -> serde_json::Result<T>,
    ) -> serde_json::Result<T> {
        if self.peek()?.is_none() {
            return Err(syntax("expected a value, found the end"));
        }
        let mut scanned = ValueEnd::default();
        let end = loop {
            if let Some(end) = scanned.find(&self.buf[self.pos..]) {
                break self.pos + end;
            }
            if !self.fill()? {
                // A scalar may end with the input; anything else is cut short.
                match scanned.at_end() {
                    Some(end) => break self.pos + end,
                    None => return Err(syntax("the index ends inside a value")),
                }
            }
        };
        let mut de = serde_json::Deserializer::from_slice(&self.buf[self.pos..end]);
        let value = parse(&mut de)?;
        de.end()?;
        self.pos = end;
        Ok(value)
    }
}

/// Finds where a JSON value ends, resumable over a growing buffer: strings (with escapes)
/// and nesting are followed; brackets need not match (the parser of the slice checks that).
#[derive(Debug, Default)]
struct ValueEnd {
    /// Bytes already scanned (the value's start is 0).
    at: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The value is a number or literal (ends before a delimiter or with the input).
    scalar: bool,
}

impl ValueEnd {
    /// The value's length if it ends within `buf` (which holds at least the bytes seen before).
    fn find(&mut self, buf: &[u8]) -> Option<usize> {
        if self.at == 0 {
            let first = *buf.first()?;
            self.scalar = !matches!(first, b'"' | b'{' | b'[');
        }
        while let Some(&b) = buf.get(self.at) {
            self.at += 1;
            if self.scalar {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                    self.at -= 1;
                    return Some(self.at);
                }
            } else if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.depth == 0 {
                        return Some(self.at);
                    }
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth = self.depth.saturating_sub(1);
                        if self.depth == 0 {
                            return Some(self.at);
                        }
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// The value's length when the input ends right after what was scanned: only a scalar.
    fn at_end(&self) -> Option<usize> {
        (self.scalar && self.at > 0).then_some(self.at)
    }
}

/// Finds `key` in one bucket's sorted records. Ids are hashes, so a record's place in its
/// bucket is close to proportional to its key: start there and step, which usually touches
/// one cache line where a binary search touches four. A bucket that is not evenly filled
/// (index files written to be slow) falls back to the binary search after a few steps.
fn find(bucket: &[Record], key: &[u8]) -> Option<usize> {
    const STEPS: usize = 4;
    let n = bucket.len();
    if n == 0 {
        return None;
    }
    let guess = (usize::from(u16::from_be_bytes([key[0], key[1]])) * n) >> 16;
    let mut i = guess;
    for _ in 0..STEPS {
        match bucket[i].key[..].cmp(key) {
            std::cmp::Ordering::Equal => return Some(i),
            std::cmp::Ordering::Less if i + 1 < n && bucket[i + 1].key[..] <= *key => i += 1,
            std::cmp::Ordering::Greater if i > 0 && bucket[i - 1].key[..] >= *key => i -= 1,
            // Between two neighbours (or past an end): not there.
            std::cmp::Ordering::Less | std::cmp::Ordering::Greater => return None,
        }
    }
    bucket.binary_search_by(|r| r.key[..].cmp(key)).ok()
}

/// Collects records while index files are decoded; [`Builder::finish`] orders them.
#[derive(Debug, Default)]
struct Builder {
    packs: Vec<Id>,
    records: Vec<Record>,
    /// Each record's bucket (the id bytes the record omits), until the records are ordered.
    buckets: Vec<u16>,
    exceptions: HashMap<Prefix, Entry>,
    /// Where a file's decoder moves its batch (slots renumbered) at the end of a pack, if
    /// this builder is one.
    shared: Option<Arc<Mutex<Builder>>>,
}

impl Builder {
    /// Moves this batch into the shared builder, if any (between packs: every slot is taken
    /// and named).
    fn flush(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let mut to = shared.lock().unwrap_or_else(PoisonError::into_inner);
        to.append(self);
    }

    /// Moves every pack, record and exception of `from` here; its slots follow ours.
    fn append(&mut self, from: &mut Builder) {
        let base = self.packs.len();
        self.packs.append(&mut from.packs);
        self.records.reserve(from.records.len());
        for (r, b) in from.records.drain(..).zip(from.buckets.drain(..)) {
            let slot = r.slot();
            let record = if slot == EXCEPTION_SLOT {
                r
            } else {
                let new = base + slot as usize;
                let mut e = r.entry();
                e.pack = new;
                let mut p = [0u8; PREFIX];
                p[..BUCKET_BYTES].copy_from_slice(&b.to_be_bytes());
                p[BUCKET_BYTES..].copy_from_slice(&r.key);
                Record::pack(&p, &e).unwrap_or_else(|| {
                    // Beyond 2^23 packs: as `push` does.
                    self.exceptions.entry(p).or_insert(e);
                    Record::with_slot(&p, EXCEPTION_SLOT, &e)
                })
            };
            self.records.push(record);
            self.buckets.push(b);
        }
        for (p, mut e) in from.exceptions.drain() {
            e.pack += base;
            self.exceptions.entry(p).or_insert(e);
        }
    }

    /// Decodes one index file's JSON into records.
    #[cfg(test)]
    fn add_file(&mut self, json: &[u8]) -> serde_json::Result<()> {
        self.add_reader(json)
    }

    /// Decodes one index file's JSON, read from `r`, into records.
    ///
    /// serde_json's reader interface goes a byte at a time (a third of the load's time), so
    /// the JSON is read in chunks instead: the top-level object is walked here, and each
    /// element of its `packs` list, once whole in the buffer, is parsed from the slice. The
    /// buffer holds a chunk and the pack being read, never the whole file.
    fn add_reader(&mut self, r: impl std::io::Read) -> serde_json::Result<()> {
        let mut json = Chunked::new(r);
        json.expect(b'{')?;
        let mut packs = false;
        if json.peek()? != Some(b'}') {
            loop {
                let key: Key = json.value(|de| serde::Deserialize::deserialize(de))?;
                json.expect(b':')?;
                if key == Key::Packs {
                    packs = true;
                    json.expect(b'[')?;
                    if json.peek()? != Some(b']') {
                        loop {
                            json.value(|de| PackSeed(&mut *self).deserialize(de))?;
                            if self.shared.is_some() && self.records.len() >= BATCH {
                                self.flush();
                            }
                            if !json.list_continues(b']')? {
                                break;
                            }
                        }
                    } else {
                        json.expect(b']')?;
                    }
                } else {
                    json.value(|de| <IgnoredAny as serde::Deserialize>::deserialize(de).map(drop))?;
                }
                if !json.list_continues(b'}')? {
                    break;
                }
            }
        } else {
            json.expect(b'}')?;
        }
        if json.peek()?.is_some() {
            return Err(syntax("trailing characters after the index"));
        }
        if !packs {
            return Err(serde::de::Error::missing_field("packs"));
        }
        Ok(())
    }

    fn push(&mut self, slot: usize, b: &IndexBlob) {
        let p = prefix(&b.id);
        let e = Entry {
            pack: slot,
            ty: b.ty,
            offset: b.offset,
            length: b.length,
            uncompressed_length: b.uncompressed_length,
        };
        let record = Record::pack(&p, &e).unwrap_or_else(|| {
            // The first seen is kept, as for records.
            self.exceptions.entry(p).or_insert(e);
            Record::with_slot(&p, EXCEPTION_SLOT, &e)
        });
        self.records.push(record);
        self.buckets.push(bucket_of(&p) as u16);
    }

    fn finish(self) -> BlobIndex {
        let (records, starts) = order(self.records, self.buckets);
        let mut packs = self.packs;
        packs.shrink_to_fit();
        BlobIndex {
            packs,
            records,
            starts,
            exceptions: self.exceptions,
            overlay: HashMap::new(),
        }
    }
}

/// Sorts `records` by (bucket, key) in place, dropping duplicate keys (the lowest pack slot,
/// i.e. the first seen, stays), and returns them with their bucket starts. `buckets[i]` is
/// record `i`'s bucket. Uses no second record array: a counting pass, an in-place
/// distribution into buckets (each swap puts one record in its bucket for good), then a sort
/// of each small bucket.
fn order(mut records: Vec<Record>, mut buckets: Vec<u16>) -> (Vec<Record>, Vec<u32>) {
    if records.is_empty() {
        return (Vec::new(), Vec::new());
    }
    // More than u32::MAX records would need over 120 GiB; keep the table's u32 honest anyway.
    let total = u32::try_from(records.len()).unwrap_or(u32::MAX);
    records.truncate(total as usize);
    buckets.truncate(total as usize);
    let mut starts = vec![0u32; BUCKETS + 1];
    for &b in &buckets {
        starts[usize::from(b) + 1] += 1;
    }
    for b in 0..BUCKETS {
        starts[b + 1] += starts[b];
    }
    let mut next: Vec<u32> = starts[..BUCKETS].to_vec();
    for b in 0..BUCKETS {
        let end = starts[b + 1];
        while next[b] < end {
            let i = next[b] as usize;
            let home = usize::from(buckets[i]);
            if home == b {
                next[b] += 1;
            } else {
                let j = next[home] as usize;
                records.swap(i, j);
                buckets.swap(i, j);
                next[home] += 1;
            }
        }
    }
    drop(next);
    drop(buckets);
    let mut write = 0usize;
    for b in 0..BUCKETS {
        let (start, end) = (starts[b] as usize, starts[b + 1] as usize);
        let bucket = &mut records[start..end];
        bucket.sort_unstable_by(|x, y| x.key.cmp(&y.key).then(x.slot().cmp(&y.slot())));
        starts[b] = write as u32;
        let mut last: Option<[u8; PREFIX - BUCKET_BYTES]> = None;
        for i in start..end {
            let r = records[i];
            if last == Some(r.key) {
                continue;
            }
            last = Some(r.key);
            records[write] = r;
            write += 1;
        }
    }
    starts[BUCKETS] = write as u32;
    records.truncate(write);
    records.shrink_to_fit();
    (records, starts)
}

/// A key of an index file's objects that the decoder looks at, recognised where the parser
/// holds it (no `String` per key when reading from a stream).
#[derive(Debug, PartialEq, Eq)]
enum Key {
    Packs,
    Id,
    Blobs,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Key, D::Error> {
        d.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Key, E> {
        Ok(match s {
            "packs" => Key::Packs,
            "id" => Key::Id,
            "blobs" => Key::Blobs,
            _ => Key::Other,
        })
    }
}

/// One pack of an index file: `{"id": ..., "blobs": [...]}`, in either order.
struct PackSeed<'a>(&'a mut Builder);

impl<'de> DeserializeSeed<'de> for PackSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PackSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a pack")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        // The slot is taken first, so that blobs listed before the pack id can name it.
        let builder = self.0;
        let slot = builder.packs.len();
        builder.packs.push(Id::default());
        let (mut id, mut blobs) = (None, false);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Id => id = Some(map.next_value::<Id>()?),
                Key::Blobs => {
                    map.next_value_seed(BlobsSeed(&mut *builder, slot))?;
                    blobs = true;
                }
                Key::Packs | Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let id = id.ok_or_else(|| serde::de::Error::missing_field("id"))?;
        if !blobs {
            return Err(serde::de::Error::missing_field("blobs"));
        }
        builder.packs[slot] = id;
        Ok(())
    }
}

/// The `blobs` list of one pack, with the pack's slot.
struct BlobsSeed<'a>(&'a mut Builder, usize);

impl<'de> DeserializeSeed<'de> for BlobsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BlobsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of blobs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(blob) = seq.next_element::<IndexBlob>()? {
            self.0.push(self.1, &blob);
        }
        Ok(())
    }
}

/// Index entries for packs written in this run, flushed to `index/` files as they grow.
#[derive(Debug, Default)]
pub struct IndexWriter {
    pending: IndexFile,
    blobs: usize,
}

impl IndexWriter {
    /// restic starts a new index file at about this many blobs.
    pub const FLUSH_BLOBS: usize = 50_000;

    /// Adds a finished, uploaded pack.
    pub fn add(&mut self, pack: Id, blobs: &[PackedBlob]) {
        self.blobs += blobs.len();
        self.pending.packs.push(IndexPack {
            id: pack,
            blobs: blobs.iter().map(|b| IndexBlob::from(*b)).collect(),
        });
    }

    /// Whether an index file is due.
    pub fn is_full(&self) -> bool {
        self.blobs >= Self::FLUSH_BLOBS
    }

    /// Packs waiting to be written into an index file.
    pub fn pending_packs(&self) -> usize {
        self.pending.packs.len()
    }

    /// Writes the pending entries as one index file (nothing when empty).
    pub async fn flush(&mut self, repo: &Repository) -> Result<Option<Id>> {
        match self.take() {
            Some(file) => repo.save_json(FileType::Index, &file).await.map(Some),
            None => Ok(None),
        }
    }

    /// The pending entries as one index file, for the caller to write (`None` when empty).
    pub fn take(&mut self) -> Option<IndexFile> {
        if self.pending.packs.is_empty() {
            return None;
        }
        self.blobs = 0;
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn blob(id: Id, ty: BlobType, offset: u32, uncompressed_length: Option<u32>) -> IndexBlob {
        IndexBlob {
            id,
            ty,
            offset,
            length: offset / 2 + 40,
            uncompressed_length,
        }
    }

    /// An index built from index files' JSON, as `load` builds it.
    fn from_files(files: &[IndexFile]) -> BlobIndex {
        let mut b = Builder::default();
        for f in files {
            b.add_file(&serde_json::to_vec(f).unwrap()).unwrap();
        }
        b.finish()
    }

    /// Random packs; about one blob in 100 has lengths too large for a record.
    fn random_file(rng: &mut impl Rng, packs: usize, per_pack: usize) -> IndexFile {
        random_file_with(rng, packs, per_pack, 50)
    }

    /// Random packs; one blob in `huge` (if not 0) has lengths too large for a record.
    fn random_file_with(rng: &mut impl Rng, packs: usize, per_pack: usize, huge: u32) -> IndexFile {
        IndexFile {
            supersedes: Vec::new(),
            packs: (0..packs)
                .map(|_| IndexPack {
                    id: Id(rng.gen()),
                    blobs: (0..per_pack)
                        .map(|i| {
                            let ty = if rng.gen_ratio(1, 5) {
                                BlobType::Tree
                            } else {
                                BlobType::Data
                            };
                            let big = huge != 0 && rng.gen_ratio(1, huge);
                            let raw = rng.gen_ratio(1, 2).then(|| {
                                if big {
                                    rng.gen_range(NOT_COMPRESSED..=u32::MAX)
                                } else {
                                    rng.gen_range(0..NOT_COMPRESSED)
                                }
                            });
                            let mut b = blob(Id(rng.gen()), ty, i as u32 * 1000, raw);
                            if big && rng.gen() {
                                b.length = rng.gen_range(LENGTH_LIMIT..=u32::MAX);
                            }
                            b
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Every blob of `packs` is found in `index` where the packs say it is.
    fn expect_packs(index: &BlobIndex, packs: &[IndexPack]) {
        for p in packs {
            for b in &p.blobs {
                expect(index, p.id, b);
            }
        }
    }

    fn expect(index: &BlobIndex, pack: Id, b: &IndexBlob) {
        let loc = index.get(&b.id).expect("blob in the index");
        assert_eq!(
            loc,
            BlobLocation {
                pack,
                ty: b.ty,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            }
        );
        assert!(index.contains(&b.id));
    }

    #[test]
    fn every_blob_is_found_with_its_location_and_random_ids_are_not() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let files: Vec<IndexFile> = (0..3).map(|_| random_file(&mut rng, 40, 100)).collect();
        let index = from_files(&files);
        assert_eq!(index.len(), 3 * 40 * 100);
        assert!(
            !index.exceptions.is_empty(),
            "some lengths too large for a record"
        );
        for f in &files {
            expect_packs(&index, &f.packs);
        }
        for _ in 0..10_000 {
            let id = Id(rng.gen());
            assert!(!index.contains(&id));
            assert_eq!(index.get(&id), None);
        }
        // Misses next to hits: same bucket, key one off.
        let mut near = files[0].packs[0].blobs[0].id;
        near.0[PREFIX - 1] ^= 1;
        assert!(!index.contains(&near));
        let empty = BlobIndex::default();
        assert!(empty.is_empty() && !empty.contains(&near) && empty.get(&near).is_none());
    }

    /// As `load` builds it: each file decoded into a batch of its own, moved into the shared
    /// builder every few packs (slots renumbered, exceptions too).
    #[test]
    fn batches_moved_into_a_shared_builder_keep_every_location() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let files: Vec<IndexFile> = (0..3).map(|_| random_file(&mut rng, 100, 100)).collect();
        let shared = Arc::new(Mutex::new(Builder::default()));
        for f in &files {
            let mut batch = Builder {
                shared: Some(shared.clone()),
                ..Builder::default()
            };
            batch.add_file(&serde_json::to_vec(f).unwrap()).unwrap();
            assert!(batch.packs.len() < f.packs.len(), "flushed within the file");
            batch.flush();
            assert!(batch.records.is_empty() && batch.packs.is_empty());
        }
        let index = Arc::try_unwrap(shared)
            .unwrap()
            .into_inner()
            .unwrap()
            .finish();
        assert_eq!(index.len(), 3 * 100 * 100);
        assert!(!index.exceptions.is_empty());
        for f in &files {
            expect_packs(&index, &f.packs);
        }
    }

    /// Packs beyond the slots a record can name (2^23 - 1): their blobs are found all the
    /// same, from the exceptions table, whether decoded straight into the builder or in a
    /// batch renumbered into it. (The pack ids before them are zeroed memory never touched.)
    #[test]
    fn blobs_of_packs_beyond_the_record_slots_are_found() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let file = random_file_with(&mut rng, 3, 10, 0);
        // 268 MB of zeroed pack ids, mapped but never written: calloc'd, not filled.
        let filler = || {
            let n = EXCEPTION_SLOT as usize - 1;
            let layout = std::alloc::Layout::array::<Id>(n).unwrap();
            // SAFETY: `Id` is 32 plain bytes, so all zeros is a valid `Id`; the memory comes
            // from the global allocator with the layout `Vec<Id>` frees it with.
            unsafe {
                let ptr = std::alloc::alloc_zeroed(layout).cast::<Id>();
                assert!(!ptr.is_null());
                Vec::from_raw_parts(ptr, n, n)
            }
        };
        let mut direct = Builder {
            packs: filler(),
            ..Builder::default()
        };
        direct
            .add_file(&serde_json::to_vec(&file).unwrap())
            .unwrap();
        let shared = Arc::new(Mutex::new(Builder {
            packs: filler(),
            ..Builder::default()
        }));
        let mut batch = Builder {
            shared: Some(shared.clone()),
            ..Builder::default()
        };
        batch.add_file(&serde_json::to_vec(&file).unwrap()).unwrap();
        batch.flush();
        drop(batch);
        let batched = Arc::try_unwrap(shared).unwrap().into_inner().unwrap();
        for builder in [direct, batched] {
            let index = builder.finish();
            // The first pack still fits a record; the other two do not.
            assert_eq!(index.exceptions.len(), 20);
            expect_packs(&index, &file.packs);
        }
    }

    /// Ids made to crowd one bucket and defeat the proportional first guess (only someone
    /// writing index files could make them): still all found, by the binary-search fallback.
    #[test]
    fn a_crowded_uneven_bucket_is_still_searched_right() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let ids: Vec<Id> = (0..500)
            .map(|_| {
                let mut id = Id(rng.gen());
                id.0[..4].copy_from_slice(&[7, 7, 0, 0]);
                id
            })
            .collect();
        let pack = Id::hash(b"pack");
        let blobs: Vec<IndexBlob> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| blob(*id, BlobType::Data, i as u32, None))
            .collect();
        let index = from_files(&[IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: pack,
                blobs: blobs.clone(),
            }],
        }]);
        for b in &blobs {
            expect(&index, pack, b);
        }
        for _ in 0..1000 {
            let mut id = Id(rng.gen());
            id.0[..4].copy_from_slice(&[7, 7, 0, rng.gen_range(0..2)]);
            assert!(!index.contains(&id));
        }
    }

    #[test]
    fn types_and_uncompressed_lengths_round_trip_including_the_sentinel_value() {
        let ids: Vec<Id> = (0u8..8).map(|i| Id::hash(&[i])).collect();
        let blobs = vec![
            blob(ids[0], BlobType::Data, 0, None),
            blob(ids[1], BlobType::Tree, 10, None),
            blob(ids[2], BlobType::Data, 20, Some(0)),
            blob(ids[3], BlobType::Tree, 30, Some(NOT_COMPRESSED - 1)),
            // Equal to the "not compressed" sentinel: kept exactly, in the exceptions table.
            blob(ids[4], BlobType::Tree, 40, Some(NOT_COMPRESSED)),
            blob(ids[5], BlobType::Data, u32::MAX, Some(u32::MAX)),
            IndexBlob {
                length: LENGTH_LIMIT - 1,
                ..blob(ids[6], BlobType::Data, 50, None)
            },
            IndexBlob {
                length: LENGTH_LIMIT,
                ..blob(ids[7], BlobType::Tree, 60, None)
            },
        ];
        let pack = Id::hash(b"pack");
        let index = from_files(&[IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: pack,
                blobs: blobs.clone(),
            }],
        }]);
        for b in &blobs {
            expect(&index, pack, b);
        }
        // ids[4] (the sentinel), ids[5] (length 2^31) and ids[7] (length 2^24).
        assert_eq!(index.exceptions.len(), 3);
        let trees: Vec<BlobLocation> = index.locations(BlobType::Tree).collect();
        assert_eq!(trees.len(), 4);
        assert!(trees.iter().all(|l| l.ty == BlobType::Tree));
        assert_eq!(index.locations(BlobType::Data).count(), 4);
        assert_eq!(
            index.get(&ids[0]).unwrap().plain_length(),
            u64::from(blobs[0].length) - crate::crypto::OVERHEAD as u64
        );
    }

    #[test]
    fn a_blob_listed_twice_keeps_its_first_location() {
        let id = Id::hash(b"twice");
        let (first, second) = (Id::hash(b"pack 1"), Id::hash(b"pack 2"));
        let file = |pack, offset| IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: pack,
                blobs: vec![blob(id, BlobType::Data, offset, None)],
            }],
        };
        let index = from_files(&[file(first, 100), file(second, 200), file(first, 300)]);
        assert_eq!(index.len(), 1);
        let loc = index.get(&id).unwrap();
        assert_eq!((loc.pack, loc.offset), (first, 100));

        // The same through add_pack: the loaded location stays.
        let mut index = index;
        index.add_pack(
            second,
            &[PackedBlob {
                id,
                ty: BlobType::Data,
                offset: 7,
                length: 8,
                uncompressed_length: None,
            }],
        );
        assert_eq!(index.len(), 1);
        assert_eq!(index.get(&id).unwrap().offset, 100);
    }

    /// The documented limit: only 128 bits of an id are kept, so two ids that differ only
    /// after their 16th byte are one blob here (the first one listed).
    #[test]
    fn ids_equal_in_their_first_16_bytes_are_the_same_blob() {
        let a = Id::hash(b"a");
        let mut b = a;
        b.0[PREFIX] ^= 0xff;
        b.0[31] ^= 0x01;
        let mut c = a;
        c.0[PREFIX - 1] ^= 0x01;
        let pack = Id::hash(b"pack");
        let index = from_files(&[IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: pack,
                blobs: vec![
                    blob(a, BlobType::Data, 0, None),
                    blob(b, BlobType::Data, 500, None),
                ],
            }],
        }]);
        assert_eq!(index.len(), 1);
        assert!(index.contains(&b));
        assert_eq!(index.get(&b).unwrap().offset, 0);
        // A difference within the first 16 bytes is a different blob.
        assert!(!index.contains(&c));
    }

    #[test]
    fn blobs_added_in_a_run_are_found_before_and_after_they_are_merged() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let loaded = random_file(&mut rng, 50, 100);
        let mut index = from_files(std::slice::from_ref(&loaded));
        let mut added: Vec<(Id, Vec<PackedBlob>)> = Vec::new();
        while added.iter().map(|(_, b)| b.len()).sum::<usize>() < 3 * OVERLAY_MIN {
            let pack = Id(rng.gen());
            let blobs: Vec<PackedBlob> = (0..97)
                .map(|i| PackedBlob {
                    id: Id(rng.gen()),
                    ty: if i % 7 == 0 {
                        BlobType::Tree
                    } else {
                        BlobType::Data
                    },
                    offset: i * 10,
                    length: i + 40,
                    uncompressed_length: (i % 2 == 0).then_some(i * 3),
                })
                .collect();
            index.add_pack(pack, &blobs);
            added.push((pack, blobs));
            // Just added: in the overlay or, after a merge, in the sorted array.
            let (pack, blobs) = added.last().unwrap();
            assert_eq!(index.get(&blobs[3].id).unwrap().pack, *pack);
        }
        assert!(index.overlay.len() < OVERLAY_MIN, "merged at least once");
        assert!(!index.overlay.is_empty(), "some still in the overlay");
        let total: usize = added.iter().map(|(_, b)| b.len()).sum();
        assert_eq!(index.len(), 50 * 100 + total);
        for (pack, blobs) in &added {
            for b in blobs {
                assert_eq!(
                    index.get(&b.id).unwrap(),
                    BlobLocation {
                        pack: *pack,
                        ty: b.ty,
                        offset: b.offset,
                        length: b.length,
                        uncompressed_length: b.uncompressed_length
                    }
                );
            }
        }
        expect_packs(&index, &loaded.packs);
        assert!(!index.contains(&Id(rng.gen())));
        let counted =
            index.locations(BlobType::Data).count() + index.locations(BlobType::Tree).count();
        assert_eq!(counted, index.len());
    }

    #[test]
    fn index_json_is_decoded_whatever_the_key_order_and_bad_json_is_refused() {
        let id = Id::hash(b"x");
        let pack = Id::hash(b"p");
        let json = format!(
            r#"{{"packs":[{{"blobs":[{{"offset":5,"length":60,"type":"tree","id":"{id}"}}],"id":"{pack}","extra":[1,{{}}]}}],"supersedes":[]}}"#
        );
        let mut b = Builder::default();
        b.add_file(json.as_bytes()).unwrap();
        let index = b.finish();
        let loc = index.get(&id).unwrap();
        assert_eq!(
            (loc.pack, loc.ty, loc.offset, loc.length),
            (pack, BlobType::Tree, 5, 60)
        );

        for bad in [
            r#"{"supersedes":[]}"#.to_string(),
            r#"{"packs":[{"blobs":[]}]}"#.to_string(),
            format!(r#"{{"packs":[{{"id":"{pack}"}}]}}"#),
            format!(r#"{{"packs":[{{"id":"{pack}","blobs":[{{"id":"{id}"}}]}}]}}"#),
            r#"{"packs":[]} trailing"#.to_string(),
            r#"[1,2]"#.to_string(),
        ] {
            assert!(
                Builder::default().add_file(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    /// A reader that hands out one byte per read: every value crosses chunk ends.
    struct ByteAtATime<'a>(&'a [u8]);

    impl std::io::Read for ByteAtATime<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(out)) => {
                    *out = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// The chunked walk over the JSON: values split anywhere, strings holding quotes and
    /// brackets, other keys with any values (a number last), white space anywhere; and
    /// what is not one valid index object is refused, as serde_json refuses it.
    #[test]
    fn index_json_read_in_chunks_of_any_size_is_decoded_exactly() {
        let id = Id::hash(b"x");
        let pack = Id::hash(b"p");
        let json = format!(
            " {{ \"supersedes\" : [ \"a\\\"]}}{{\" ] , \"x\\\\\" : {{\"[\":[1,{{}}]}} ,\n\"packs\":[ {{\"blobs\":[{{\"offset\":5,\"length\":60,\"type\":\"tree\",\"id\":\"{id}\",\"uncompressed_length\":70}}],\"id\":\"{pack}\",\"note\":\"}}]\"}} , {{\"id\":\"{pack}\",\"blobs\":[]}} ] ,\"n\":-1.5e3 }}\t\n"
        );
        serde_json::from_str::<serde_json::Value>(&json).expect("valid JSON");
        let mut b = Builder::default();
        b.add_reader(ByteAtATime(json.as_bytes())).unwrap();
        let index = b.finish();
        assert_eq!(
            index.get(&id).unwrap(),
            BlobLocation {
                pack,
                ty: BlobType::Tree,
                offset: 5,
                length: 60,
                uncompressed_length: Some(70)
            }
        );
        assert_eq!(index.len(), 1);
        for bad in [
            "".to_string(),
            "{".to_string(),
            r#"{"packs":[]"#.to_string(),
            r#"{"packs":[],}"#.to_string(),
            r#"{"packs":[,]}"#.to_string(),
            r#"{"packs" []}"#.to_string(),
            r#"{"packs":[]}}"#.to_string(),
            r#"{"packs":[] "n":1}"#.to_string(),
            r#"{"packs":[],"n":1"#.to_string(),
            r#"{"packs":[],"n":tru}"#.to_string(),
            r#"{"packs":[],"n":"abc}"#.to_string(),
            r#"{"packs":[],"n":[1,2}"#.to_string(),
            r#"{"packs":{}}"#.to_string(),
            format!(r#"{{"packs":[{{"id":"{pack}","blobs":[]}}]]}}"#),
        ] {
            assert!(
                Builder::default()
                    .add_reader(ByteAtATime(bad.as_bytes()))
                    .is_err(),
                "{bad}"
            );
            assert!(
                Builder::default().add_file(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    /// Issue 13: at most 32 bytes per blob for the whole backup's growth, so the index itself
    /// holds 29 (a 27-byte record and 2 bytes of pack id at 16 blobs per pack, restic's 16 MiB
    /// packs of ~1 MiB chunks), counted from the capacities the index holds.
    #[test]
    fn the_index_holds_at_most_29_bytes_per_blob() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let files: Vec<IndexFile> = (0..4)
            .map(|_| random_file_with(&mut rng, 3125, 16, 0))
            .collect();
        let index = from_files(&files);
        let n = index.len();
        assert_eq!(n, 200_000);
        let table = (BUCKETS + 1) * std::mem::size_of::<u32>();
        let bytes = index.heap_bytes();
        assert!(
            bytes <= 29 * n + table,
            "{bytes} bytes for {n} blobs: {:.2} per blob beyond the bucket table",
            (bytes - table) as f64 / n as f64
        );
        assert_eq!(std::mem::size_of::<Record>(), 27);
    }
}
