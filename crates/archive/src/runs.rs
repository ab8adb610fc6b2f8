//! Sorted, compressed runs of a wide directory's children, and their merge into its tree blob.
//!
//! A directory of a million entries is a tree blob of some 250 MB of JSON: held as it grows,
//! it was most of a backup's memory (issue 13: 308 MiB peak). [`Children`](crate::children)
//! keeps a few MiB of children as they come; past that, it sorts them into a [`Run`]:
//! records compressed in small blocks, about a sixth of their size (what remains is mostly the
//! content ids, which do not compress). At close, [`merge`] reads all runs in name order, a
//! block at a time, dropping each block once read, and writes the tree blob straight into its
//! SHA-256 and zstd, so the blob is never whole as plaintext: the merge holds the runs not yet
//! read plus the compressed blob written so far, about the compressed size of the directory
//! once, not its JSON several times.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::BuildHasher;
use std::io::Write;

use snapback_repo::file::tree::{TREE_HEAD, TREE_TAIL};
use snapback_repo::id::IdHasher;
use snapback_repo::Id;

use crate::error::{Error, Result};

/// Plaintext bytes of records per compressed block: what a run's cursor decodes at once.
const BLOCK_BYTES: usize = 32 * 1024;
/// zstd level of the blocks: they live for one directory, speed matters more than size.
const BLOCK_LEVEL: i32 = 1;
/// Bloom filter bits per name (k = 6: about 2% false positives).
const BLOOM_BITS_PER_NAME: usize = 10;
const BLOOM_HASHES: u64 = 6;

fn codec(e: std::io::Error) -> Error {
    Error::Pipeline(format!("directory listing run: {e}"))
}

/// Compressed blocks are stored back to back in segments of about this many bytes. Each is one
/// allocation above the binary's mmap threshold (256 KiB, `src/main.rs`): freed during the
/// merge, it goes back to the OS at once, making room for the blob being written. Blocks of
/// their own (a few KiB each) would stay in the allocator's heap, and the merge would hold the
/// runs and the whole compressed blob at once.
const SEGMENT_BYTES: usize = 512 * 1024;

/// Compressed blocks back to back, with where each one is.
struct Segment {
    bytes: Vec<u8>,
    /// Each block's end in `bytes` (it starts where the one before ends) and plaintext length.
    blocks: Vec<(u32, u32)>,
}

impl Segment {
    fn new() -> Self {
        Segment {
            // Untouched capacity costs no memory; a full-size allocation is always mapped.
            bytes: Vec::with_capacity(SEGMENT_BYTES + 64 * 1024),
            blocks: Vec::new(),
        }
    }
}

/// Children sorted by name, each name once, as compressed blocks of records
/// (`u32` LE name length, name, `u32` LE JSON length, node JSON).
pub struct Run {
    /// Segments of compressed blocks, in name order.
    segments: VecDeque<Segment>,
    /// Which names may be in the run: a lookup of a name decodes only runs that may hold it.
    bloom: Bloom,
    /// Plaintext bytes of the node JSON (the run's share of the tree blob).
    json_bytes: usize,
    /// Compressed bytes held.
    held: usize,
    /// Records.
    count: usize,
}

impl Run {
    /// A run of `records` (name, node JSON), which must be sorted by name without repeats.
    pub fn new<'a>(records: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>) -> Result<Run> {
        let count = records.len();
        let mut bloom = Bloom::new(count);
        let mut compressor = zstd::bulk::Compressor::new(BLOCK_LEVEL).map_err(codec)?;
        let mut segments = VecDeque::new();
        let mut seg = Segment::new();
        let (mut json_bytes, mut held) = (0, 0);
        let mut plain = Vec::with_capacity(BLOCK_BYTES + 4096);
        let mut flush = |plain: &mut Vec<u8>, seg: &mut Segment| {
            let packed = compressor.compress(plain).map_err(codec)?;
            held += packed.len();
            seg.bytes.extend_from_slice(&packed);
            seg.blocks
                .push((len32(seg.bytes.len())?, len32(plain.len())?));
            plain.clear();
            Ok::<_, Error>(())
        };
        for (name, json) in records {
            bloom.insert(name);
            json_bytes += json.len();
            plain.extend_from_slice(&len32(name.len())?.to_le_bytes());
            plain.extend_from_slice(name);
            plain.extend_from_slice(&len32(json.len())?.to_le_bytes());
            plain.extend_from_slice(json);
            if plain.len() >= BLOCK_BYTES {
                flush(&mut plain, &mut seg)?;
                if seg.bytes.len() >= SEGMENT_BYTES {
                    segments.push_back(std::mem::replace(&mut seg, Segment::new()));
                }
            }
        }
        if !plain.is_empty() {
            flush(&mut plain, &mut seg)?;
        }
        if !seg.blocks.is_empty() {
            segments.push_back(seg);
        }
        Ok(Run {
            segments,
            bloom,
            json_bytes,
            held,
            count,
        })
    }

    /// Children in the run.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Plaintext bytes of the run's node JSON.
    pub fn json_bytes(&self) -> usize {
        self.json_bytes
    }

    /// Bytes the run holds in memory.
    pub fn held_bytes(&self) -> usize {
        self.held + self.bloom.bits.len() * 8 + self.segments.len() * size_of::<Segment>()
    }

    /// The node JSON of `name`, if the run holds it.
    pub fn find(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        if !self.bloom.may_hold(name) {
            return Ok(None);
        }
        let mut d = decompressor()?;
        let mut cursor = Cursor::new(Reading::Borrowed(&self.segments, 0));
        while cursor.advance(&mut d)? {
            match cursor.name().cmp(name) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return Ok(Some(cursor.json().to_vec())),
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(None)
    }
}

type Decompressor = zstd::bulk::Decompressor<'static>;

fn decompressor() -> Result<Decompressor> {
    Decompressor::new().map_err(codec)
}

fn len32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Stream("a directory entry over 4 GiB".into()))
}

/// The segments a cursor reads: a run's own (a lookup) or taken from it (the merge, which
/// drops each segment once read).
enum Reading<'a> {
    Borrowed(&'a VecDeque<Segment>, usize),
    Owned(VecDeque<Segment>),
}

/// Reads a run's records in order, decoding one block at a time.
struct Cursor<'a> {
    segments: Reading<'a>,
    /// The next block in the first segment.
    block: usize,
    plain: Vec<u8>,
    /// The current record's name and JSON in `plain`, and where the next one starts.
    name: (usize, usize),
    json: (usize, usize),
    next: usize,
}

impl<'a> Cursor<'a> {
    fn new(segments: Reading<'a>) -> Self {
        Cursor {
            segments,
            block: 0,
            plain: Vec::new(),
            name: (0, 0),
            json: (0, 0),
            next: 0,
        }
    }

    /// Decodes the next block into `plain` with `d` (one for all cursors of a merge: a zstd
    /// context is some 100 KiB); false at the end.
    fn next_block(&mut self, d: &mut Decompressor) -> Result<bool> {
        let seg = loop {
            let seg = match &mut self.segments {
                Reading::Borrowed(segs, i) => segs.get(*i),
                Reading::Owned(segs) => segs.front(),
            };
            let Some(seg) = seg else {
                return Ok(false);
            };
            if self.block < seg.blocks.len() {
                break seg;
            }
            self.block = 0;
            match &mut self.segments {
                Reading::Borrowed(_, i) => *i += 1,
                Reading::Owned(segs) => drop(segs.pop_front()),
            }
        };
        let start = match self.block {
            0 => 0,
            b => seg.blocks[b - 1].0 as usize,
        };
        let (end, len) = seg.blocks[self.block];
        self.plain.clear();
        self.plain.reserve(len as usize);
        d.decompress_to_buffer(&seg.bytes[start..end as usize], &mut self.plain)
            .map_err(codec)?;
        self.block += 1;
        self.next = 0;
        Ok(true)
    }

    /// Moves to the next record; false at the end.
    fn advance(&mut self, d: &mut Decompressor) -> Result<bool> {
        while self.next >= self.plain.len() {
            if !self.next_block(d)? {
                return Ok(false);
            }
        }
        let field = |at: usize| -> Result<(usize, usize)> {
            let bad = || Error::Pipeline("directory listing run: truncated record".into());
            let head = self.plain.get(at..at + 4).ok_or_else(bad)?;
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let end = at + 4 + len;
            if end > self.plain.len() {
                return Err(bad());
            }
            Ok((at + 4, end))
        };
        self.name = field(self.next)?;
        self.json = field(self.name.1)?;
        self.next = self.json.1;
        Ok(true)
    }

    fn name(&self) -> &[u8] {
        &self.plain[self.name.0..self.name.1]
    }

    fn json(&self) -> &[u8] {
        &self.plain[self.json.0..self.json.1]
    }
}

/// A tree blob written by [`merge`].
pub struct MergedTree {
    /// SHA-256 of the plaintext.
    pub id: Id,
    /// Plaintext length.
    pub plain_len: usize,
    /// The blob: zstd-compressed when a level was given, else the plaintext.
    pub bytes: Vec<u8>,
    /// Whether `bytes` is compressed.
    pub compressed: bool,
}

/// Where the merged tree blob goes: its hash and its (compressed) bytes.
struct TreeOut {
    hasher: IdHasher,
    len: usize,
    out: Out,
}

enum Out {
    Plain(Vec<u8>),
    Zstd(Box<zstd::stream::write::Encoder<'static, Vec<u8>>>),
}

impl TreeOut {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.len += data.len();
        match &mut self.out {
            Out::Plain(v) => v.extend_from_slice(data),
            Out::Zstd(z) => z.write_all(data).map_err(codec)?,
        }
        Ok(())
    }
}

/// The tree blob of `runs` (oldest first): every name in order, and of a name given in several
/// runs the newest run's node. `level`: zstd level, or `None` for a plaintext blob.
pub fn merge(runs: Vec<Run>, level: Option<i32>) -> Result<MergedTree> {
    let json: usize = runs.iter().map(Run::json_bytes).sum();
    let out = match level {
        Some(l) => Out::Zstd(Box::new(
            zstd::stream::write::Encoder::new(Vec::new(), l).map_err(codec)?,
        )),
        None => Out::Plain(Vec::with_capacity(json + runs.len() + 16)),
    };
    let mut out = TreeOut {
        hasher: IdHasher::new(),
        len: 0,
        out,
    };
    out.write(TREE_HEAD)?;
    let mut cursors: Vec<Cursor> = runs
        .into_iter()
        .map(|r| Cursor::new(Reading::Owned(r.segments)))
        .collect();
    let mut d = decompressor()?;
    // Smallest name first; of equal names the oldest run first, so the newest pops last.
    let mut heap = BinaryHeap::with_capacity(cursors.len());
    for (i, c) in cursors.iter_mut().enumerate() {
        if c.advance(&mut d)? {
            heap.push(Reverse((c.name().to_vec(), i)));
        }
    }
    let mut first = true;
    while let Some(Reverse((name, mut newest))) = heap.pop() {
        let mut spent = vec![newest];
        while let Some(Reverse((n, i))) = heap.peek() {
            if *n != name {
                break;
            }
            newest = newest.max(*i);
            spent.push(*i);
            heap.pop();
        }
        if !first {
            out.write(b",")?;
        }
        first = false;
        out.write(cursors[newest].json())?;
        for i in spent {
            let c = &mut cursors[i];
            if c.advance(&mut d)? {
                heap.push(Reverse((c.name().to_vec(), i)));
            }
        }
    }
    out.write(TREE_TAIL)?;
    let TreeOut { hasher, len, out } = out;
    let (mut bytes, compressed) = match out {
        Out::Plain(v) => (v, false),
        Out::Zstd(z) => (z.finish().map_err(codec)?, true),
    };
    // Room to be sealed in place, without a copy of the whole blob.
    bytes.reserve_exact(snapback_repo::crypto::OVERHEAD);
    Ok(MergedTree {
        id: hasher.finish(),
        plain_len: len,
        bytes,
        compressed,
    })
}

/// A Bloom filter of names, keyed per run (a stream cannot choose names that collide).
struct Bloom {
    bits: Vec<u64>,
    hasher: RandomState,
}

impl Bloom {
    fn new(names: usize) -> Self {
        let words = (names * BLOOM_BITS_PER_NAME).div_ceil(64).max(1);
        Bloom {
            bits: vec![0; words],
            hasher: RandomState::new(),
        }
    }

    fn positions(&self, name: &[u8]) -> impl Iterator<Item = usize> {
        let h = self.hasher.hash_one(name);
        let (a, b) = (h & 0xffff_ffff, (h >> 32) | 1);
        let m = self.bits.len() as u64 * 64;
        (0..BLOOM_HASHES).map(move |k| (a.wrapping_add(k.wrapping_mul(b)) % m) as usize)
    }

    fn insert(&mut self, name: &[u8]) {
        for p in self.positions(name).collect::<Vec<_>>() {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    fn may_hold(&self, name: &[u8]) -> bool {
        self.positions(name)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(names: &[&str], tag: &str) -> Run {
        let recs: Vec<(Vec<u8>, Vec<u8>)> = names
            .iter()
            .map(|n| {
                (
                    n.as_bytes().to_vec(),
                    format!("{{\"name\":\"{n}\",\"t\":\"{tag}\"}}").into_bytes(),
                )
            })
            .collect();
        Run::new(recs.iter().map(|(n, j)| (n.as_slice(), j.as_slice()))).unwrap()
    }

    fn plain(m: &MergedTree) -> Vec<u8> {
        if m.compressed {
            zstd::stream::decode_all(m.bytes.as_slice()).unwrap()
        } else {
            m.bytes.clone()
        }
    }

    #[test]
    fn runs_merge_in_name_order_and_the_newest_run_wins() {
        let runs = [run(&["a", "c", "e"], "old"), run(&["b", "c", "f"], "new")];
        for level in [None, Some(3)] {
            let runs = vec![run(&["a", "c", "e"], "old"), run(&["b", "c", "f"], "new")];
            let m = merge(runs, level).unwrap();
            let want = concat!(
                "{\"nodes\":[",
                "{\"name\":\"a\",\"t\":\"old\"},{\"name\":\"b\",\"t\":\"new\"},",
                "{\"name\":\"c\",\"t\":\"new\"},{\"name\":\"e\",\"t\":\"old\"},",
                "{\"name\":\"f\",\"t\":\"new\"}]}\n"
            );
            assert_eq!(String::from_utf8(plain(&m)).unwrap(), want);
            assert_eq!(m.plain_len, want.len());
            assert_eq!(m.id, Id::hash(want.as_bytes()));
            assert_eq!(m.compressed, level.is_some());
        }
        assert_eq!(
            runs[1].find(b"c").unwrap().unwrap(),
            br#"{"name":"c","t":"new"}"#
        );
        assert!(runs[1].find(b"a").unwrap().is_none());
    }

    #[test]
    fn many_blocks_merge_and_shrink_to_their_compressed_size() {
        // Three interleaved runs of 20,000 names each: many blocks per run.
        let names: Vec<Vec<String>> = (0..3)
            .map(|r| (0..20_000).map(|i| format!("n{:06}", i * 3 + r)).collect())
            .collect();
        let runs: Vec<Run> = names
            .iter()
            .map(|ns| run(&ns.iter().map(String::as_str).collect::<Vec<_>>(), "x"))
            .collect();
        let json: usize = runs.iter().map(Run::json_bytes).sum();
        let held: usize = runs.iter().map(Run::held_bytes).sum();
        assert!(runs
            .iter()
            .all(|r| r.segments.iter().map(|s| s.blocks.len()).sum::<usize>() > 10));
        assert!(held * 4 < json, "held {held} of {json}");
        assert_eq!(
            runs[2].find(b"n030002").unwrap().unwrap(),
            br#"{"name":"n030002","t":"x"}"#
        );
        assert!(runs[2].find(b"n030001").unwrap().is_none());
        let m = merge(runs, Some(3)).unwrap();
        let text = String::from_utf8(plain(&m)).unwrap();
        let body = text
            .strip_prefix("{\"nodes\":[")
            .and_then(|t| t.strip_suffix("]}\n"))
            .unwrap();
        let got: Vec<&str> = body.split("},{").collect();
        assert_eq!(got.len(), 60_000);
        for (i, g) in got.iter().enumerate() {
            assert!(g.contains(&format!("\"n{i:06}\"")), "{i}: {g}");
        }
    }

    #[test]
    fn an_empty_merge_is_an_empty_tree() {
        let m = merge(Vec::new(), Some(3)).unwrap();
        assert_eq!(plain(&m), b"{\"nodes\":[]}\n");
    }
}
