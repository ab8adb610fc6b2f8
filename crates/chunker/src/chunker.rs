//! The rolling-hash chunker.

use std::sync::Arc;

use crate::Pol;

/// No chunk is shorter than this (except a file's last).
pub const MIN_SIZE: usize = 512 * 1024;
/// No chunk is longer than this.
pub const MAX_SIZE: usize = 8 * 1024 * 1024;
const WINDOW: usize = 64;
/// A cut where the low 20 bits of the fingerprint are zero: 1 MiB chunks on average.
const SPLIT_MASK: u64 = (1 << 20) - 1;

/// Lookup tables for one polynomial: built once per repository, shared by every file's chunker.
#[derive(Debug, Clone)]
pub struct Tables {
    /// `out[b]`: fingerprint of `b` followed by 63 zero bytes, XORed in to slide `b` out.
    out: [u64; 256],
    /// `reduce[t]`: reduction of the 8 bits `t` that overflow past the polynomial's degree.
    reduce: [u64; 256],
    shift: u32,
}

impl Tables {
    /// Builds the tables for `pol` (an irreducible polynomial of degree 53 in practice).
    pub fn new(pol: Pol) -> Self {
        let deg = pol.deg().max(8) as u32;
        let append = |h: u64, b: u8| Pol((h << 8) | u64::from(b)).modulo(pol).0;
        let mut out = [0u64; 256];
        let mut reduce = [0u64; 256];
        for b in 0..256usize {
            let mut h = append(0, b as u8);
            for _ in 0..WINDOW - 1 {
                h = append(h, 0);
            }
            out[b] = h;
            let top = (b as u64) << deg;
            reduce[b] = Pol(top).modulo(pol).0 | top;
        }
        Tables {
            out,
            reduce,
            shift: deg - 8,
        }
    }
}

/// Finds chunk boundaries in one file's byte stream. Push the file's bytes in any slicing;
/// the cuts do not depend on it.
#[derive(Debug, Clone)]
pub struct Chunker {
    tables: Arc<Tables>,
    window: [u8; WINDOW],
    wpos: usize,
    digest: u64,
    /// Bytes in the current chunk so far.
    count: usize,
    /// Bytes still to pass unhashed at the start of a chunk (they cannot end it).
    skip: usize,
}

impl Chunker {
    /// A chunker at the start of a file.
    pub fn new(tables: Arc<Tables>) -> Self {
        let mut c = Chunker {
            tables,
            window: [0; WINDOW],
            wpos: 0,
            digest: 0,
            count: 0,
            skip: 0,
        };
        c.reset();
        c
    }

    fn reset(&mut self) {
        self.window = [0; WINDOW];
        self.wpos = 0;
        self.digest = 0;
        self.count = 0;
        // restic seeds the window with a single 1 byte; it has slid out again by the time the
        // first cut is possible, but it keeps the fingerprints identical.
        self.slide(1);
        self.skip = MIN_SIZE - WINDOW;
    }

    #[inline(always)]
    fn slide(&mut self, b: u8) {
        let out = self.window[self.wpos];
        self.window[self.wpos] = b;
        self.wpos = (self.wpos + 1) % WINDOW;
        let d = self.digest ^ self.tables.out[out as usize];
        let top = (d >> self.tables.shift) as usize & 0xff;
        self.digest = ((d << 8) | u64::from(b)) ^ self.tables.reduce[top];
    }

    /// Scans `buf`, the next bytes of the file. Returns `Some(n)` when the current chunk ends
    /// after `buf[..n]` (the chunker then starts a new chunk at `buf[n]`; call again with
    /// `&buf[n..]`), or `None` when all of `buf` belongs to the current chunk.
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
        // Hot loop on locals: table lookups only, no bounds checks on the window.
        let tables = &*self.tables;
        let (out, reduce, shift) = (&tables.out, &tables.reduce, tables.shift);
        let mut digest = self.digest;
        let mut wpos = self.wpos;
        let mut count = self.count;
        let window = &mut self.window;
        while i < buf.len() {
            let b = buf[i];
            i += 1;
            let old = window[wpos % WINDOW];
            window[wpos % WINDOW] = b;
            wpos = (wpos + 1) % WINDOW;
            let d = digest ^ out[old as usize];
            digest = ((d << 8) | u64::from(b)) ^ reduce[(d >> shift) as usize & 0xff];
            count += 1;
            if count >= MIN_SIZE && (digest & SPLIT_MASK == 0 || count >= MAX_SIZE) {
                self.reset();
                return Some(i);
            }
        }
        self.digest = digest;
        self.wpos = wpos;
        self.count = count;
        None
    }
}

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

    fn tables() -> Arc<Tables> {
        Arc::new(Tables::new(Pol(0x3DA3358B4DC173)))
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
    fn cuts_do_not_depend_on_how_the_input_is_sliced() {
        let d = data(12 * 1024 * 1024, 7);
        let whole = chunk_lengths(tables(), &d);
        for step in [1usize << 10, 4093, 1 << 16, 700_001] {
            let mut c = Chunker::new(tables());
            let mut lens = Vec::new();
            let mut cur = 0;
            for piece in d.chunks(step) {
                let mut rest = piece;
                while let Some(n) = c.next_cut(rest) {
                    lens.push(cur + n);
                    cur = 0;
                    rest = &rest[n..];
                }
                cur += rest.len();
            }
            if cur > 0 {
                lens.push(cur);
            }
            assert_eq!(lens, whole, "step {step}");
        }
    }

    #[test]
    fn small_inputs_are_one_chunk() {
        assert_eq!(chunk_lengths(tables(), &data(1000, 1)), vec![1000]);
        assert!(chunk_lengths(tables(), &[]).is_empty());
    }
}
