//! The in-memory blob index: where every blob of the repository is stored.
//!
//! Compact, because a backup of a few files into a large repository holds the whole index:
//! about 30 bytes per blob (plus 32 bytes per pack and a fixed 256 KiB table), against about
//! 190 bytes for the hash map it replaces and about 350 for restic.
//!
//! Every blob is one fixed 30-byte [`Record`] in a single array, sorted by blob id. A table of
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
//! Loading decodes each index file straight into records as it arrives (no parsed
//! `IndexFile` in between, one decrypted file at a time), then orders everything once with an
//! in-place bucket distribution and small per-bucket sorts: no second array.

use std::collections::HashMap;

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
/// Blob type bit in a record's pack field; the other 31 bits are the pack's slot.
const TREE_BIT: u32 = 1 << 31;
/// Pack slot meaning "this blob's location is in the exceptions table".
const EXCEPTION_SLOT: u32 = TREE_BIT - 1;
/// Uncompressed length meaning "not compressed".
const NOT_COMPRESSED: u32 = u32::MAX;
/// Index files read from the backend at once; they are opened and decoded one at a time.
const CONCURRENT_READS: usize = 8;
/// Blobs added by [`BlobIndex::add_pack`] are merged into the sorted array when there are this
/// many, or a 32nd of the index if that is more (so merging costs O(1) per blob, amortised).
const OVERLAY_MIN: usize = 8192;

/// One blob in 30 bytes; byte arrays so that the struct has no padding (alignment 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Record {
    /// Id bytes `BUCKET_BYTES..PREFIX`.
    key: [u8; PREFIX - BUCKET_BYTES],
    /// Pack slot (little-endian u32) with [`TREE_BIT`].
    pack: [u8; 4],
    offset: [u8; 4],
    length: [u8; 4],
    /// Uncompressed length or [`NOT_COMPRESSED`].
    raw: [u8; 4],
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
    /// The record for `e` when it fits, or `None` (a pack slot beyond 31 bits, or an
    /// uncompressed length equal to the sentinel).
    fn pack(p: &Prefix, e: &Entry) -> Option<Record> {
        let slot = u32::try_from(e.pack).ok().filter(|&s| s < EXCEPTION_SLOT)?;
        let raw = match e.uncompressed_length {
            Some(NOT_COMPRESSED) => return None,
            Some(u) => u,
            None => NOT_COMPRESSED,
        };
        Some(Record {
            raw: raw.to_le_bytes(),
            ..Record::with_slot(p, slot, e)
        })
    }

    fn with_slot(p: &Prefix, slot: u32, e: &Entry) -> Record {
        let mut key = [0u8; PREFIX - BUCKET_BYTES];
        key.copy_from_slice(&p[BUCKET_BYTES..]);
        let ty = match e.ty {
            BlobType::Data => 0,
            BlobType::Tree => TREE_BIT,
        };
        Record {
            key,
            pack: (slot | ty).to_le_bytes(),
            offset: e.offset.to_le_bytes(),
            length: e.length.to_le_bytes(),
            raw: NOT_COMPRESSED.to_le_bytes(),
        }
    }

    fn pack_field(&self) -> u32 {
        u32::from_le_bytes(self.pack)
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
        let raw = u32::from_le_bytes(self.raw);
        Entry {
            pack: self.slot() as usize,
            ty: self.ty(),
            offset: u32::from_le_bytes(self.offset),
            length: u32::from_le_bytes(self.length),
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
        let mut builder = Builder::default();
        let mut reads = futures::stream::iter(files)
            .map(|f| async move {
                let data = repo.backend().read(FileType::Index, &f.id).await?;
                Ok::<_, Error>((f.id, data))
            })
            .buffer_unordered(CONCURRENT_READS);
        while let Some((id, data)) = reads.try_next().await? {
            let plain = repo.open_unpacked(FileType::Index, &id, data)?;
            builder.add_file(&plain).map_err(|e| {
                Error::format(FileType::Index.path(&id), format!("invalid JSON: {e}"))
            })?;
        }
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
}

impl Builder {
    /// Decodes one index file's JSON into records.
    fn add_file(&mut self, json: &[u8]) -> serde_json::Result<()> {
        let mut de = serde_json::Deserializer::from_slice(json);
        FileSeed(self).deserialize(&mut de)?;
        de.end()
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

/// Decodes an index file (`{"supersedes": [...], "packs": [...]}`) into a [`Builder`].
struct FileSeed<'a>(&'a mut Builder);

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an index file")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let mut packs = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "packs" {
                map.next_value_seed(PacksSeed(&mut *self.0))?;
                packs = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !packs {
            return Err(serde::de::Error::missing_field("packs"));
        }
        Ok(())
    }
}

/// The `packs` list of an index file.
struct PacksSeed<'a>(&'a mut Builder);

impl<'de> DeserializeSeed<'de> for PacksSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PacksSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of packs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq.next_element_seed(PackSeed(&mut *self.0))?.is_some() {}
        Ok(())
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
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "id" => id = Some(map.next_value::<Id>()?),
                "blobs" => {
                    map.next_value_seed(BlobsSeed(&mut *builder, slot))?;
                    blobs = true;
                }
                _ => {
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
        if self.pending.packs.is_empty() {
            return Ok(None);
        }
        let file = std::mem::take(&mut self.pending);
        self.blobs = 0;
        repo.save_json(FileType::Index, &file).await.map(Some)
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

    fn random_file(rng: &mut impl Rng, packs: usize, per_pack: usize) -> IndexFile {
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
                            let raw = rng.gen_ratio(1, 2).then(|| rng.gen());
                            blob(Id(rng.gen()), ty, i as u32 * 1000, raw)
                        })
                        .collect(),
                })
                .collect(),
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
        for f in &files {
            for p in &f.packs {
                for b in &p.blobs {
                    expect(&index, p.id, b);
                }
            }
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
        let ids: Vec<Id> = (0u8..6).map(|i| Id::hash(&[i])).collect();
        let blobs = vec![
            blob(ids[0], BlobType::Data, 0, None),
            blob(ids[1], BlobType::Tree, 10, None),
            blob(ids[2], BlobType::Data, 20, Some(0)),
            blob(ids[3], BlobType::Tree, 30, Some(u32::MAX - 1)),
            // Equal to the "not compressed" sentinel: kept exactly, in the exceptions table.
            blob(ids[4], BlobType::Tree, 40, Some(u32::MAX)),
            blob(ids[5], BlobType::Data, u32::MAX, Some(u32::MAX)),
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
        assert_eq!(index.exceptions.len(), 2);
        let trees: Vec<BlobLocation> = index.locations(BlobType::Tree).collect();
        assert_eq!(trees.len(), 3);
        assert!(trees.iter().all(|l| l.ty == BlobType::Tree));
        assert_eq!(index.locations(BlobType::Data).count(), 3);
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
                let loc = index.get(&b.id).unwrap();
                assert_eq!(
                    (
                        loc.pack,
                        loc.ty,
                        loc.offset,
                        loc.length,
                        loc.uncompressed_length
                    ),
                    (*pack, b.ty, b.offset, b.length, b.uncompressed_length)
                );
            }
        }
        for p in &loaded.packs {
            for b in &p.blobs {
                expect(&index, p.id, b);
            }
        }
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

    /// Issue 13: at most 32 bytes per blob, here with 16 blobs per pack (restic's 16 MiB packs
    /// of ~1 MiB chunks), counted from the capacities the index holds.
    #[test]
    fn the_index_holds_at_most_32_bytes_per_blob() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let files: Vec<IndexFile> = (0..4).map(|_| random_file(&mut rng, 3125, 16)).collect();
        let index = from_files(&files);
        let n = index.len();
        assert_eq!(n, 200_000);
        let table = (BUCKETS + 1) * std::mem::size_of::<u32>();
        let bytes = index.heap_bytes();
        assert!(
            bytes <= 32 * n + table,
            "{bytes} bytes for {n} blobs: {:.2} per blob beyond the bucket table",
            (bytes - table) as f64 / n as f64
        );
        assert_eq!(std::mem::size_of::<Record>(), 30);
    }
}
