//! The rolling-hash chunker.
//!
//! The fingerprint of a 64-byte window `b_0 .. b_63` is the polynomial
//! `b_0 x^(8*63) + ... + b_63 mod P` (each byte read as a polynomial of degree < 8). Sliding
//! one byte means: cancel the outgoing byte's contribution (one table lookup, `Tables::out`),
//! multiply by x^8 and add the incoming byte, then reduce the 8 bits that rose above deg(P)
//! (a second lookup, `Tables::reduce`).

use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::Pol;

/// No chunk is shorter than this (except a file's last).
pub const MIN_SIZE: usize = 512 * 1024;
/// No chunk is longer than this.
pub const MAX_SIZE: usize = 8 * 1024 * 1024;
/// Bytes in the rolling hash's window.
pub const WINDOW_SIZE: usize = 64;
/// A chunk ends where the fingerprint's bits under this mask are zero: 1 MiB on average past
/// [`MIN_SIZE`].
pub const SPLIT_MASK: u64 = (1 << 20) - 1;

/// Lookup tables for one polynomial: built once per repository, shared (through an `Arc`) by
/// every file's [`Chunker`].
#[derive(Debug, Clone)]
pub struct Tables {
    pol: Pol,
    /// `out[b]`: fingerprint of `b` followed by 63 zero bytes. XORing it into a fingerprint
    /// whose window starts with `b` turns that byte into 0, i.e. slides it out.
    out: [u64; 256],
    /// `reduce[t]`: `t * x^deg mod P`, plus `t * x^deg` itself so that one XOR both clears the
    /// 8 overflow bits `t` and adds their remainder.
    reduce: [u64; 256],
    /// deg(P) - 8: where the 8 bits that will overflow sit before the shift by 8.
    shift: u32,
}

impl Tables {
    /// Builds the tables for `pol`: restic's polynomials are irreducible of degree 53. Any
    /// other value gives tables without panicking, but chunks no restic would produce (degrees
    /// outside 8..=56 make no sense for this scheme).
    pub fn new(pol: Pol) -> Self {
        let deg = pol.deg().clamp(8, 63) as u32;
        let append = |h: u64, b: u8| Pol((h << 8) | u64::from(b)).modulo(pol).0;
        let mut out = [0u64; 256];
        let mut reduce = [0u64; 256];
        for b in 0..=255u8 {
            let mut h = append(0, b);
            for _ in 0..WINDOW_SIZE - 1 {
                h = append(h, 0);
            }
            out[usize::from(b)] = h;
            let top = u64::from(b) << deg;
            reduce[usize::from(b)] = Pol(top).modulo(pol).0 | top;
        }
        Tables {
            pol,
            out,
            reduce,
            shift: deg - 8,
        }
    }

    /// The tables for `pol` from a process-wide cache, built on first use: every repository
    /// opened with the same polynomial shares one copy (2 × 2 KiB). Entries live as long as
    /// some caller holds them.
    pub fn shared(pol: Pol) -> Arc<Tables> {
        static CACHE: Mutex<Vec<(Pol, Weak<Tables>)>> = Mutex::new(Vec::new());
        // A panic elsewhere while holding the lock cannot leave the list inconsistent.
        let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|(_, w)| w.strong_count() > 0);
        if let Some(t) = cache
            .iter()
            .find(|(p, _)| *p == pol)
            .and_then(|(_, w)| w.upgrade())
        {
            return t;
        }
        let t = Arc::new(Tables::new(pol));
        cache.push((pol, Arc::downgrade(&t)));
        t
    }

    /// The polynomial these tables were built for.
    pub fn pol(&self) -> Pol {
        self.pol
    }

    /// Appends to `out` the positions `p` from `from` on where a chunk may end: the
    /// fingerprint of the 64 bytes `data[p - 63..=p]` has its [`SPLIT_MASK`] bits zero.
    /// Stops once about `limit` are found (long runs of zeros make every position one) and
    /// returns where it stopped: `out` then holds every candidate in `from..` that value, in
    /// order. Positions before 64 are not reported.
    ///
    /// Past the first [`MIN_SIZE`] - 1 bytes of a chunk the chunker's digest is exactly this
    /// fingerprint (the seed byte has slid out), so whether `p` ends a chunk is a function of
    /// those 64 bytes alone: a region can be scanned without knowing where its chunks start,
    /// and in pieces. This scans four pieces at once: one rolling hash is a chain of
    /// dependent table lookups, so a single chain leaves the core idle between them; four
    /// interleaved chains run ~2-3× the bytes per second of one.
    pub fn cut_candidates(
        &self,
        data: &[u8],
        from: usize,
        limit: usize,
        out: &mut Vec<usize>,
    ) -> usize {
        let from = from.max(WINDOW_SIZE);
        if from >= data.len() {
            return data.len().max(from);
        }
        let lane = (data.len() - from) / LANES;
        if lane < LANE_MIN {
            let mut lane = Lane::new(self, data, from);
            lane.scan(self, data, limit);
            out.append(&mut lane.candidates);
            return lane.stop.unwrap_or(data.len());
        }
        let quota = (limit / LANES).max(1);
        let mut lanes: [Lane; LANES] =
            std::array::from_fn(|k| Lane::new(self, data, from + k * lane));
        // Lane k covers `from + k * lane ..` the next lane's start; the last one also the rest.
        let (n0, o0) = lanes[0].bytes(data, lane);
        let (n1, o1) = lanes[1].bytes(data, lane);
        let (n2, o2) = lanes[2].bytes(data, lane);
        let (n3, o3) = lanes[3].bytes(data, lane);
        let [mut d0, mut d1, mut d2, mut d3] = lanes.each_ref().map(|l| l.digest);
        for i in 0..lane {
            d0 = self.step(d0, o0[i], n0[i]);
            d1 = self.step(d1, o1[i], n1[i]);
            d2 = self.step(d2, o2[i], n2[i]);
            d3 = self.step(d3, o3[i], n3[i]);
            if (d0 & SPLIT_MASK == 0)
                | (d1 & SPLIT_MASK == 0)
                | (d2 & SPLIT_MASK == 0)
                | (d3 & SPLIT_MASK == 0)
            {
                for (l, d) in lanes.iter_mut().zip([d0, d1, d2, d3]) {
                    if d & SPLIT_MASK == 0 {
                        l.found(l.start + i, quota);
                    }
                }
            }
        }
        lanes[LANES - 1].digest = d3;
        let last = &mut lanes[LANES - 1];
        if last.stop.is_none() {
            last.pos = last.start + lane;
            last.scan(self, data, quota);
        }
        // Everything up to the first lane that stopped early is complete.
        for l in lanes.iter_mut() {
            out.append(&mut l.candidates);
            if let Some(stop) = l.stop {
                return stop;
            }
        }
        data.len()
    }

    /// One step of the rolling hash: slide `old` out of the window and `new` in.
    #[inline(always)]
    fn step(&self, digest: u64, old: u8, new: u8) -> u64 {
        let d = digest ^ self.out[usize::from(old)];
        ((d << 8) | u64::from(new)) ^ self.reduce[(d >> self.shift) as usize & 0xff]
    }
}

/// Interleaved rolling hashes in [`Tables::cut_candidates`].
const LANES: usize = 4;
/// Below this many bytes per lane one chain scans everything.
const LANE_MIN: usize = 4096;

/// One chain of [`Tables::cut_candidates`]: a rolling hash over a piece of the data.
struct Lane {
    /// First position of the piece.
    start: usize,
    /// Next position to hash (only for the serial [`Lane::scan`]).
    pos: usize,
    /// Fingerprint of the 64 bytes before `pos`.
    digest: u64,
    candidates: Vec<usize>,
    /// Set when the quota ran out: the position of the first candidate not recorded.
    stop: Option<usize>,
}

impl Lane {
    /// A chain starting at `start` (at least 64), primed with the 64 bytes before it.
    fn new(t: &Tables, data: &[u8], start: usize) -> Self {
        // Rolled into an empty window (all zero bytes, whose fingerprint is 0), the first 64
        // bytes need nothing slid out.
        let digest = data[start - WINDOW_SIZE..start]
            .iter()
            .fold(0, |d, &b| t.step(d, 0, b));
        Lane {
            start,
            pos: start,
            digest,
            candidates: Vec::new(),
            stop: None,
        }
    }

    /// The `len` bytes from `start` and the bytes 64 before each: equal lengths, so the
    /// interleaved loop indexes them without bounds checks.
    fn bytes<'a>(&self, data: &'a [u8], len: usize) -> (&'a [u8], &'a [u8]) {
        let old = self.start - WINDOW_SIZE;
        (&data[self.start..self.start + len], &data[old..old + len])
    }

    /// Records a candidate unless the quota is used up.
    #[cold]
    fn found(&mut self, p: usize, quota: usize) {
        if self.stop.is_none() {
            if self.candidates.len() < quota {
                self.candidates.push(p);
            } else {
                self.stop = Some(p);
            }
        }
    }

    /// Hashes on serially from `pos` to the end of `data`.
    fn scan(&mut self, t: &Tables, data: &[u8], quota: usize) {
        let mut digest = self.digest;
        let new = &data[self.pos..];
        let old = &data[self.pos - WINDOW_SIZE..data.len() - WINDOW_SIZE];
        for (j, (&b, &o)) in new.iter().zip(old).enumerate() {
            digest = t.step(digest, o, b);
            if digest & SPLIT_MASK == 0 {
                self.found(self.pos + j, quota);
                if self.stop.is_some() {
                    break;
                }
            }
        }
        self.digest = digest;
    }
}

/// Finds chunk boundaries in one file's byte stream (restic restarts the chunker at every
/// file). Push the file's bytes with [`Chunker::next_cut`] in any slicing: the cuts do not
/// depend on it, and the caller keeps ownership of its buffers.
#[derive(Debug, Clone)]
pub struct Chunker {
    tables: Arc<Tables>,
    /// The last 64 hashed bytes; `window[wpos]` is the oldest.
    window: [u8; WINDOW_SIZE],
    wpos: usize,
    digest: u64,
    /// Bytes in the current chunk so far.
    count: usize,
    /// Bytes still to pass unhashed at the start of a chunk (no cut can fall in them).
    skip: usize,
}

impl Chunker {
    /// A chunker at the start of a file.
    pub fn new(tables: Arc<Tables>) -> Self {
        let mut c = Chunker {
            tables,
            window: [0; WINDOW_SIZE],
            wpos: 0,
            digest: 0,
            count: 0,
            skip: 0,
        };
        c.reset();
        c
    }

    /// Starts over at the beginning of a new chunk, e.g. to reuse this chunker for the next
    /// file. Bytes pushed since the last cut are forgotten.
    pub fn reset(&mut self) {
        self.window = [0; WINDOW_SIZE];
        self.digest = 0;
        self.count = 0;
        // restic starts every chunk by sliding a single 1 byte into the empty window. It slides
        // out again exactly when the first cut becomes possible, but it is part of the
        // fingerprints until then, so we do the same.
        self.wpos = 0;
        let d = self.tables.step(0, 0, 1);
        self.window[0] = 1;
        self.wpos = 1;
        self.digest = d;
        // The first MIN_SIZE - 64 bytes cannot end a chunk and are not hashed at all; the
        // window then fills with the 64 bytes before the first possible cut.
        self.skip = MIN_SIZE - WINDOW_SIZE;
    }

    /// Bytes pushed into the current chunk so far.
    pub fn chunk_len(&self) -> usize {
        self.count
    }

    /// The tables this chunker hashes with.
    pub fn tables(&self) -> &Arc<Tables> {
        &self.tables
    }

    /// Scans `buf`, the next bytes of the file. Returns `Some(n)` when the current chunk ends
    /// after `buf[..n]` (the chunker then starts a new chunk at `buf[n]`; call again with
    /// `&buf[n..]`), or `None` when all of `buf` belongs to the current chunk. The file's last
    /// chunk is whatever was pushed after the last cut (none if nothing was).
    pub fn next_cut(&mut self, buf: &[u8]) -> Option<usize> {
        let mut i = 0;
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            self.count += n;
            i = n;
            if self.skip > 0 {
                return None;
            }
        }
        // At most this many more bytes fit in the chunk; the last of them ends it regardless.
        let room = MAX_SIZE - self.count;
        let scan = &buf[i..buf.len().min(i + room)];
        // Bytes that leave the chunk shorter than MIN_SIZE are hashed but cannot end it: no
        // test for them. (The byte that makes it MIN_SIZE long is the first one tested.)
        let pre = (MIN_SIZE - 1).saturating_sub(self.count).min(scan.len());
        self.roll::<false>(&scan[..pre]);
        let cut = match self.roll::<true>(&scan[pre..]) {
            Some(k) => Some(i + pre + k + 1),
            None if scan.len() == room => Some(i + room),
            None => None,
        };
        match cut {
            Some(_) => self.reset(),
            None => self.count += scan.len(),
        }
        cut
    }

    /// Pushes all of `buf` and appends to `cuts` where each chunk ends (offsets into `buf`,
    /// ascending): the same cuts as calling [`Chunker::next_cut`] until it returns `None`,
    /// about twice as fast on large buffers.
    ///
    /// Instead of rolling one hash through the chunk, it finds the
    /// [cut candidates](Tables::cut_candidates) of the buffer (four interleaved hashes) and
    /// picks the cuts from them: the first candidate that makes a chunk at least
    /// [`MIN_SIZE`] long ends it, unless [`MAX_SIZE`] comes first. That hashes the bytes a
    /// chunk's start would skip too, but still wins ~2× on one core.
    pub fn cuts(&mut self, buf: &[u8], cuts: &mut Vec<usize>) {
        if buf.len() < FAST_MIN {
            return self.cuts_serial(buf, 0, cuts);
        }
        // The first 64 bytes serially, so that every later window lies within `buf`.
        self.cuts_serial(&buf[..WINDOW_SIZE], 0, cuts);
        // The open chunk started `count` bytes before `pos`.
        let mut pos = WINDOW_SIZE;
        let mut count = self.count;
        let first_eligible = pos + (MIN_SIZE - 1).saturating_sub(count);
        let mut candidates = Vec::new();
        let scanned = self
            .tables
            .cut_candidates(buf, first_eligible, CANDIDATE_LIMIT, &mut candidates)
            .min(buf.len());
        let mut next = candidates.iter().copied().peekable();
        loop {
            let eligible = pos + (MIN_SIZE - 1).saturating_sub(count);
            let max_end = pos + (MAX_SIZE - count);
            while next.next_if(|&p| p < eligible).is_some() {}
            let end = match next.peek() {
                Some(&p) if p < max_end => p + 1,
                _ if max_end <= scanned => max_end,
                _ => break,
            };
            cuts.push(end);
            pos = end;
            count = 0;
        }
        // Every cut is at or before `scanned`, which is at least 64: the open chunk's last
        // bytes are in `buf` (`resume` only reads as many as the chunk has).
        self.resume(
            count + (scanned - pos),
            &buf[scanned - WINDOW_SIZE..scanned],
        );
        if scanned < buf.len() {
            // The candidates ran out early (a long run of zeros): the rest runs serially,
            // which skips such runs cheaply.
            self.cuts_serial(&buf[scanned..], scanned, cuts);
        }
    }

    /// [`Chunker::cuts`] by repeated [`Chunker::next_cut`]; cuts are offset by `base`.
    fn cuts_serial(&mut self, buf: &[u8], base: usize, cuts: &mut Vec<usize>) {
        let mut pos = 0;
        while let Some(n) = self.next_cut(&buf[pos..]) {
            pos += n;
            cuts.push(base + pos);
        }
    }

    /// Puts the chunker where sequential pushing would have left it: `count` bytes into the
    /// current chunk, whose last bytes end `tail` (it must hold the last `min(64, hashed)`
    /// of them, where hashed = count - (MIN_SIZE - 64)).
    fn resume(&mut self, count: usize, tail: &[u8]) {
        self.reset();
        let unhashed = MIN_SIZE - WINDOW_SIZE;
        if count <= unhashed {
            self.skip = unhashed - count;
        } else {
            self.skip = 0;
            // Rolling the last 64 bytes from the seeded start slides the seed byte out, as
            // the full sequence would have; fewer than 64 leave it in, also as it would.
            let hashed = (count - unhashed).min(WINDOW_SIZE);
            self.roll::<false>(&tail[tail.len() - hashed..]);
        }
        self.count = count;
    }

    /// Hashes `data` into the window; with `CUT`, stops at the first byte whose fingerprint
    /// ends a chunk and returns its index (the state is then stale: the caller resets).
    #[inline(always)]
    fn roll<const CUT: bool>(&mut self, data: &[u8]) -> Option<usize> {
        let t = &*self.tables;
        let mut digest = self.digest;
        // The first 64 bytes slide out what the window holds from earlier calls...
        let head = data.len().min(WINDOW_SIZE);
        let mut wpos = self.wpos;
        for (j, &b) in data[..head].iter().enumerate() {
            let old = self.window[wpos];
            self.window[wpos] = b;
            wpos = (wpos + 1) % WINDOW_SIZE;
            digest = t.step(digest, old, b);
            if CUT && digest & SPLIT_MASK == 0 {
                return Some(j);
            }
        }
        // ...after that the outgoing byte is simply 64 bytes back in `data`: no window
        // bookkeeping in the hot loop, and zip keeps it free of bounds checks.
        for (j, (&b, &old)) in data[head..].iter().zip(data).enumerate() {
            digest = t.step(digest, old, b);
            if CUT && digest & SPLIT_MASK == 0 {
                return Some(head + j);
            }
        }
        if data.len() >= WINDOW_SIZE {
            self.window
                .copy_from_slice(&data[data.len() - WINDOW_SIZE..]);
            wpos = 0;
        }
        self.wpos = wpos;
        self.digest = digest;
        None
    }
}

/// Below this many bytes [`Chunker::cuts`] rolls one hash, as [`Chunker::next_cut`] does.
const FAST_MIN: usize = 64 * 1024;

/// Candidates [`Chunker::cuts`] collects before it goes on serially: random data has about
/// one per MiB, a run of zeros one per byte.
const CANDIDATE_LIMIT: usize = 1024;

/// Cuts a whole in-memory buffer (tests and small inputs): the lengths of its chunks.
pub fn chunk_lengths(tables: Arc<Tables>, data: &[u8]) -> Vec<usize> {
    let mut c = Chunker::new(tables);
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(n) = c.next_cut(rest) {
        out.push(n);
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        out.push(rest.len());
    }
    out
}

/// Size of [`ChunkIter`]'s read buffer unless chosen otherwise (restic reads 512 KiB at a time).
pub const DEFAULT_READ_SIZE: usize = 512 * 1024;

/// Reads one file and yields its chunks, with one reused read buffer: memory stays bounded by
/// the read buffer plus the chunk being built (at most [`MAX_SIZE`]).
///
/// As an [`Iterator`] it yields each chunk as a new `Vec<u8>`; [`ChunkIter::read_chunk`] fills
/// a caller's `Vec` instead, so a caller can recycle chunk buffers too. After an I/O error the
/// file's position in the chunking is lost: the iterator ends.
#[derive(Debug)]
pub struct ChunkIter<R> {
    reader: R,
    chunker: Chunker,
    buf: Box<[u8]>,
    /// `buf[pos..len]` is read but not yet handed out.
    pos: usize,
    len: usize,
    /// The reader reported end of file, or failed.
    done: bool,
}

impl<R: Read> ChunkIter<R> {
    /// Chunks `reader`'s bytes with `tables`' polynomial, reading [`DEFAULT_READ_SIZE`] bytes
    /// at a time.
    pub fn new(reader: R, tables: Arc<Tables>) -> Self {
        Self::with_read_size(reader, tables, DEFAULT_READ_SIZE)
    }

    /// Like [`ChunkIter::new`], reading up to `read_size` bytes at a time (at least 1).
    pub fn with_read_size(reader: R, tables: Arc<Tables>, read_size: usize) -> Self {
        ChunkIter {
            reader,
            chunker: Chunker::new(tables),
            buf: vec![0; read_size.max(1)].into_boxed_slice(),
            pos: 0,
            len: 0,
            done: false,
        }
    }

    /// Replaces `out`'s contents with the next chunk. Returns `Ok(false)` (and `out` empty)
    /// after the last chunk; an empty file has no chunks.
    pub fn read_chunk(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        loop {
            if self.pos == self.len {
                if self.done {
                    return Ok(!out.is_empty());
                }
                let n = loop {
                    match self.reader.read(&mut self.buf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            self.done = true;
                            out.clear();
                            return Err(e);
                        }
                    }
                };
                if n == 0 {
                    self.done = true;
                    // The bytes since the last cut are the file's last chunk.
                    return Ok(!out.is_empty());
                }
                self.pos = 0;
                self.len = n;
            }
            let data = &self.buf[self.pos..self.len];
            match self.chunker.next_cut(data) {
                Some(n) => {
                    out.extend_from_slice(&data[..n]);
                    self.pos += n;
                    return Ok(true);
                }
                None => {
                    out.extend_from_slice(data);
                    self.pos = self.len;
                }
            }
        }
    }

    /// The reader, e.g. to reuse it after the last chunk.
    pub fn into_inner(self) -> R {
        self.reader
    }
}

impl<R: Read> Iterator for ChunkIter<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done && self.pos == self.len {
            return None;
        }
        let mut chunk = Vec::with_capacity(MIN_SIZE);
        match self.read_chunk(&mut chunk) {
            Ok(true) => Some(Ok(chunk)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

impl<R: Read> std::iter::FusedIterator for ChunkIter<R> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    const POL: Pol = Pol(0x3DA3358B4DC173);

    fn tables() -> Arc<Tables> {
        Arc::new(Tables::new(POL))
    }

    /// The fingerprint by its definition: the window's bytes as one polynomial, mod P.
    fn fingerprint(window: &[u8]) -> u64 {
        window
            .iter()
            .fold(Pol(0), |h, &b| Pol((h.0 << 8) | u64::from(b)).modulo(POL))
            .0
    }

    #[test]
    fn rolling_digest_equals_the_fingerprint_of_the_window() {
        let d = data(MIN_SIZE + 5000, 3);
        let mut c = Chunker::new(tables());
        // Push in odd pieces so that the window wraps mid-call and across calls.
        let mut pushed = 0;
        for piece in d[..MIN_SIZE - WINDOW_SIZE].chunks(100_000) {
            assert_eq!(c.next_cut(piece), None);
            pushed += piece.len();
        }
        for piece in [1usize, 7, 63, 64, 65, 200, 3] {
            // Straight into the rolling hash, past the cut test, to look at every state.
            let piece = &d[pushed..pushed + piece];
            c.roll::<false>(piece);
            pushed += piece.len();
            let start = pushed
                .saturating_sub(WINDOW_SIZE)
                .max(MIN_SIZE - WINDOW_SIZE);
            // Until 64 bytes are hashed, the seed byte 1 is still at the front of the window.
            let mut window = vec![1u8];
            window.extend_from_slice(&d[start..pushed]);
            let window = &window[window.len().saturating_sub(WINDOW_SIZE)..];
            assert_eq!(c.digest, fingerprint(window), "after {pushed} bytes");
        }
    }

    #[test]
    fn shared_tables_are_built_once_per_polynomial() {
        let a = Tables::shared(POL);
        let b = Tables::shared(POL);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.pol(), POL);
        let other = Tables::shared(Pol(0x2F0C6E2C3C57D9));
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(a.out, Tables::new(POL).out);
        assert_eq!(a.reduce, Tables::new(POL).reduce);
    }

    #[test]
    fn chunks_respect_min_and_max_and_cover_the_input() {
        let d = data(24 * 1024 * 1024, 42);
        let lens = chunk_lengths(tables(), &d);
        assert!(lens.len() > 5, "{lens:?}");
        assert_eq!(lens.iter().sum::<usize>(), d.len());
        for l in &lens[..lens.len() - 1] {
            assert!((MIN_SIZE..=MAX_SIZE).contains(l), "{l}");
        }
    }

    #[test]
    fn zeros_are_cut_as_soon_as_allowed() {
        // The fingerprint of 64 zero bytes is 0, which matches the split mask.
        let d = vec![0u8; 3 * MIN_SIZE + 10];
        let lens = chunk_lengths(tables(), &d);
        assert_eq!(lens, vec![MIN_SIZE, MIN_SIZE, MIN_SIZE, 10]);
    }

    #[test]
    fn periodic_data_is_cut_at_max_size() {
        // A 7-byte period gives only 7 distinct fingerprints, none of them a cut for this
        // polynomial: every chunk runs to MAX_SIZE.
        let d: Vec<u8> = b"abcdefg".iter().copied().cycle().take(17 << 20).collect();
        let lens = chunk_lengths(tables(), &d);
        assert_eq!(lens, vec![MAX_SIZE, MAX_SIZE, (17 << 20) - 2 * MAX_SIZE]);
    }

    #[test]
    fn chunking_is_deterministic_and_depends_on_the_polynomial() {
        let d = data(16 << 20, 11);
        let a = chunk_lengths(tables(), &d);
        assert_eq!(a, chunk_lengths(tables(), &d));
        let other = Arc::new(Tables::new(Pol(0x2F0C6E2C3C57D9))); // some other polynomial
        assert_ne!(a, chunk_lengths(other, &d));
        // A reset chunker behaves as a new one.
        let mut c = Chunker::new(tables());
        c.next_cut(&d[..1000]);
        c.reset();
        assert_eq!(c.chunk_len(), 0);
        assert_eq!(c.next_cut(&d), Some(a[0]));
    }

    fn lengths_in_pieces(d: &[u8], step: usize) -> Vec<usize> {
        let mut c = Chunker::new(tables());
        let mut lens = Vec::new();
        for piece in d.chunks(step) {
            let mut rest = piece;
            loop {
                let before = c.chunk_len();
                let Some(n) = c.next_cut(rest) else { break };
                lens.push(before + n);
                rest = &rest[n..];
            }
        }
        if c.chunk_len() > 0 {
            lens.push(c.chunk_len());
        }
        lens
    }

    #[test]
    fn cuts_do_not_depend_on_how_the_input_is_sliced() {
        let d = data(12 * 1024 * 1024, 7);
        let whole = chunk_lengths(tables(), &d);
        for step in [1usize << 10, 4093, 1 << 16, 700_001, 9 << 20] {
            assert_eq!(lengths_in_pieces(&d, step), whole, "step {step}");
        }
        // Byte by byte over a shorter input (slow unoptimised).
        let d = data(3 * 1024 * 1024, 8);
        assert_eq!(lengths_in_pieces(&d, 1), chunk_lengths(tables(), &d));
    }

    /// Chunk lengths from [`Chunker::cuts`] fed `d` in pieces of `step` bytes.
    fn lengths_fast(d: &[u8], step: usize) -> Vec<usize> {
        let mut c = Chunker::new(tables());
        let mut lens = Vec::new();
        let mut cuts = Vec::new();
        for piece in d.chunks(step) {
            let before = c.chunk_len();
            cuts.clear();
            c.cuts(piece, &mut cuts);
            let mut last = 0;
            for (k, &end) in cuts.iter().enumerate() {
                lens.push(if k == 0 { before + end } else { end - last });
                last = end;
            }
        }
        if c.chunk_len() > 0 {
            lens.push(c.chunk_len());
        }
        lens
    }

    /// Random data with a run of zeros (cut as early as allowed) and a stretch of periodic
    /// bytes (no candidates at all, cut at MAX_SIZE) in the middle.
    fn mixed(seed: u64) -> Vec<u8> {
        let mut d = data(5 << 20, seed);
        d.extend(std::iter::repeat_n(0u8, 3 << 20));
        d.extend(b"abcdefg".iter().copied().cycle().take(19 << 20));
        d.extend(data(9 << 20, seed + 1));
        d
    }

    #[test]
    fn fast_cuts_equal_serial_cuts() {
        for (name, d) in [
            ("random", data(40 << 20, 21)),
            ("mixed", mixed(22)),
            ("zeros", vec![0u8; 6 << 20]),
        ] {
            let whole = chunk_lengths(tables(), &d);
            assert!(whole.len() > 4, "{name}: too few chunks to mean anything");
            for step in [
                FAST_MIN - 1,
                FAST_MIN,
                65_537,
                600_001,
                1_500_001,
                4 << 20,
                9 << 20,
                d.len(),
            ] {
                assert_eq!(lengths_fast(&d, step), whole, "{name}, step {step}");
            }
        }
    }

    #[test]
    fn fast_cuts_equal_serial_cuts_on_random_mixtures() {
        // Random data, zero runs, short periods and planted zero windows, in random order and
        // lengths, pushed in random sizes: the two ways of cutting must agree every time.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..12 {
            let mut d = Vec::new();
            while d.len() < 10 << 20 {
                let len = (next() % (3 << 20)) as usize + 1;
                match next() % 4 {
                    0 => d.extend(data(len, next())),
                    1 => d.extend(std::iter::repeat_n(0u8, len)),
                    2 => {
                        let period = data((next() % 100) as usize + 1, next());
                        d.extend(period.iter().copied().cycle().take(len));
                    }
                    _ => {
                        let mut r = data(len.max(200), next());
                        for _ in 0..8 {
                            let at = (next() as usize) % (r.len() - 64);
                            r[at..at + 64].fill(0);
                        }
                        d.extend(r);
                    }
                }
            }
            let step = (next() % (9 << 20)) as usize + 1000;
            assert_eq!(
                lengths_fast(&d, step),
                chunk_lengths(tables(), &d),
                "round {round}, step {step}"
            );
        }
    }

    #[test]
    fn fast_cuts_resume_mid_chunk_at_every_phase() {
        // Pieces ending inside a chunk's unhashed start, within its first 64 hashed bytes, and
        // past them: the next piece must continue exactly where serial pushing would.
        let d = data(24 << 20, 23);
        let whole = chunk_lengths(tables(), &d);
        let first = whole[0];
        for end in [
            first + 10,
            first + 1000,
            first + MIN_SIZE - WINDOW_SIZE,
            first + MIN_SIZE - WINDOW_SIZE + 1,
            first + MIN_SIZE - 10,
            first + MIN_SIZE + 5000,
        ] {
            let mut c = Chunker::new(tables());
            let mut cuts = Vec::new();
            c.cuts(&d[..end], &mut cuts);
            assert_eq!(cuts, vec![first], "piece ending at {end}");
            let mut rest = Vec::new();
            c.cuts(&d[end..], &mut rest);
            let mut lens = vec![first];
            let mut last = first;
            for &cut in &rest {
                lens.push(end + cut - last);
                last = end + cut;
            }
            lens.push(d.len() - last);
            assert_eq!(lens, whole, "piece ending at {end}");
        }
    }

    /// Every candidate by one plain rolling hash (the step `rolling_digest_...` checks).
    fn candidates_serially(t: &Tables, d: &[u8], from: usize) -> Vec<usize> {
        let mut digest = 0;
        let mut found = Vec::new();
        for p in from - WINDOW_SIZE..d.len() {
            let old = if p >= from { d[p - WINDOW_SIZE] } else { 0 };
            digest = t.step(digest, old, d[p]);
            if p >= from && digest & SPLIT_MASK == 0 {
                found.push(p);
            }
        }
        found
    }

    #[test]
    fn interleaved_candidates_equal_one_rolling_hash() {
        // 64 zero bytes are a window whose fingerprint is 0: plant such windows around the
        // lanes' boundaries (and elsewhere) so that there are candidates to get wrong.
        let t = tables();
        let mut d = data(3 << 20, 25);
        let from = 1000;
        let lane = (d.len() - from) / LANES;
        for k in 0..LANES {
            for off in [-130i64, -64, -63, -1, 0, 1, 63, 64, 2000] {
                let at = (from + k * lane) as i64 + off;
                d[at as usize..at as usize + 64].fill(0);
            }
        }
        let end = d.len() - 64;
        d[end..].fill(0);
        let want = candidates_serially(&t, &d, from);
        assert!(want.len() > 4 * 9, "{} candidates", want.len());
        let mut got = Vec::new();
        assert_eq!(t.cut_candidates(&d, from, usize::MAX, &mut got), d.len());
        assert_eq!(got, want);
        // Short inputs take the single-chain path.
        let short = &d[..from + 3 * LANE_MIN];
        let mut got = Vec::new();
        assert_eq!(
            t.cut_candidates(short, from, usize::MAX, &mut got),
            short.len()
        );
        assert_eq!(got, candidates_serially(&t, short, from));
    }

    #[test]
    fn candidates_have_a_zero_fingerprint_and_include_every_content_cut() {
        let d = data(12 << 20, 24);
        let t = tables();
        let mut found = Vec::new();
        assert_eq!(t.cut_candidates(&d, 100, usize::MAX, &mut found), d.len());
        assert!(found.len() > 4);
        for &p in &found {
            assert_eq!(fingerprint(&d[p - 63..=p]) & SPLIT_MASK, 0, "candidate {p}");
        }
        let mut end = 0;
        for len in chunk_lengths(t.clone(), &d) {
            end += len;
            if len < MAX_SIZE && end < d.len() {
                assert!(
                    found.contains(&(end - 1)),
                    "cut at {end} is not a candidate"
                );
            }
        }
        // Scanning from a later start reports the same positions from there on.
        let mut later = Vec::new();
        assert_eq!(
            t.cut_candidates(&d, found[2], usize::MAX, &mut later),
            d.len()
        );
        assert_eq!(later, found[2..]);
    }

    #[test]
    fn candidates_stop_at_the_limit_with_all_before_reported() {
        let t = tables();
        // One chain (short input): stops at the first candidate past the limit.
        let zeros = vec![0u8; 10_000];
        let mut all = Vec::new();
        assert_eq!(t.cut_candidates(&zeros, 64, 500, &mut all), 564);
        assert_eq!(all, (64..564).collect::<Vec<_>>());
        // Four chains: the first to run out of its quarter of the limit sets the end.
        let zeros = vec![0u8; 1 << 20];
        let mut all = Vec::new();
        assert_eq!(t.cut_candidates(&zeros, 64, 400, &mut all), 164);
        assert_eq!(all, (64..164).collect::<Vec<_>>());
        // Zeros only in the third lane: the first two lanes' candidates are complete.
        let mut d = data(1 << 20, 26);
        let lane = (d.len() - 64) / LANES;
        d[64 + 2 * lane + 100..64 + 2 * lane + 5000].fill(0);
        let want = candidates_serially(&t, &d, 64);
        let mut got = Vec::new();
        let stop = t.cut_candidates(&d, 64, 400, &mut got);
        let first_zero_candidate = 64 + 2 * lane + 100 + 63;
        assert_eq!(stop, first_zero_candidate + 100);
        assert_eq!(
            got,
            want.iter()
                .copied()
                .filter(|&p| p < stop)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn small_inputs_are_one_chunk() {
        assert_eq!(chunk_lengths(tables(), &data(1000, 1)), vec![1000]);
        assert_eq!(chunk_lengths(tables(), &data(MIN_SIZE, 1)), vec![MIN_SIZE]);
        assert!(chunk_lengths(tables(), &[]).is_empty());
    }

    /// Hands out at most `max` bytes per read, and fails with `Interrupted` every third call.
    struct Trickle<'a> {
        data: &'a [u8],
        max: usize,
        calls: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 3 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.max).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn chunk_iter_yields_the_same_chunks_as_next_cut() {
        let mut d = data(14 << 20, 5);
        d[3 << 20..5 << 20].fill(0);
        let expected = chunk_lengths(tables(), &d);
        // One byte per read is slow unoptimised: a shorter file for that case.
        let cases = [
            (DEFAULT_READ_SIZE, usize::MAX, &d[..]),
            (100_000, 33_333, &d[..]),
            (1, 1, &d[..MIN_SIZE * 3 + 100]),
        ];
        for (read_size, max, d) in cases {
            let reader = Trickle {
                data: d,
                max,
                calls: 0,
            };
            let it = ChunkIter::with_read_size(reader, tables(), read_size);
            let chunks: Vec<Vec<u8>> = it.collect::<io::Result<_>>().unwrap();
            let lens: Vec<usize> = chunks.iter().map(Vec::len).collect();
            assert_eq!(lens, chunk_lengths(tables(), d), "read size {read_size}");
            assert_eq!(chunks.concat(), d);
        }
        // read_chunk with one recycled Vec.
        let mut it = ChunkIter::new(&d[..], tables());
        let mut chunk = Vec::new();
        let mut lens = Vec::new();
        while it.read_chunk(&mut chunk).unwrap() {
            lens.push(chunk.len());
        }
        assert_eq!(lens, expected);
        assert!(chunk.is_empty());
        assert!(!it.read_chunk(&mut chunk).unwrap());
        assert_eq!(ChunkIter::new(&[][..], tables()).count(), 0);
    }

    #[test]
    fn chunk_iter_reports_a_read_error_and_ends() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                self.0 -= 1;
                buf.fill(7);
                Ok(buf.len())
            }
        }
        let mut it = ChunkIter::with_read_size(Failing(3), tables(), 1000);
        assert_eq!(it.next().unwrap().unwrap_err().to_string(), "disk on fire");
        assert!(it.next().is_none());
    }
}
