//! Recycled blob buffers: a restore receives each blob into one; a backup copies every chunk
//! out of the read window into one (the sink seals it in place and packs it). The allocator
//! serves buffers of this size with their own mappings, so a fresh buffer per chunk costs a
//! page fault per 4 KiB. So buffers come back here when done with (a duplicate's from the
//! dedup stage, a compressed blob's plaintext from the encoder, every blob's once its pack is
//! uploaded) and are reused; a reused buffer is reshaped to the size asked for, which keeps
//! its mapped pages. A bigger pool saves more faults but raises the peak RSS; BENCHMARKS.md
//! has the measurements behind [`POOL_BYTES`].
//!
//! Memory: the pool keeps at most its byte limit of idle buffers.

use std::sync::Mutex;

/// Idle bytes a backup's pool keeps: the blobs of one uploaded pack, which come back at once.
pub const POOL_BYTES: usize = 8 << 20;

/// Buffers smaller than this are ordinary allocations (served from the heap, no faults per
/// use), neither pooled nor taken from the pool.
const POOLED_FROM: usize = 256 * 1024;

/// A bounded pool of idle chunk buffers; see the module docs.
#[derive(Debug)]
pub struct BufferPool {
    idle: Mutex<Idle>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufferPool {
    /// A pool keeping at most `max_bytes` of idle buffers.
    pub fn new(max_bytes: usize) -> Self {
        BufferPool {
            idle: Mutex::new(Idle::default()),
            max_bytes,
        }
    }

    /// A buffer holding a copy of `data` with at least `spare` bytes of room after it (see
    /// [`BufferPool::take`]).
    pub fn copy_of(&self, data: &[u8], spare: usize) -> Vec<u8> {
        let mut buf = self.take(data.len() + spare);
        buf.extend_from_slice(data);
        buf
    }

    /// An empty buffer with room for at least `need` bytes. An idle buffer is reshaped to fit
    /// rather than a new one mapped: the smallest that holds `need` (cut down when more than a
    /// quarter too big), else the biggest, grown. A reshaped mapping keeps its pages (mremap,
    /// no copy), so only the bytes it grows by cost page faults.
    pub fn take(&self, need: usize) -> Vec<u8> {
        if need < POOLED_FROM {
            return Vec::with_capacity(need);
        }
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let fits = idle
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= need)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            let best = fits.or_else(|| {
                idle.buffers
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, b)| b.capacity())
                    .map(|(i, _)| i)
            });
            best.map(|i| {
                let b = idle.buffers.remove(i);
                idle.bytes -= b.capacity();
                b
            })
        };
        let Some(mut buf) = reused else {
            return Vec::with_capacity(need);
        };
        buf.clear();
        if buf.capacity() < need {
            buf.reserve_exact(need);
        } else if buf.capacity() > need + need / 4 {
            // The excess would be held for as long as the blob lives (until its pack is
            // uploaded).
            buf.shrink_to(need);
        }
        buf
    }

    /// Takes `buf` back for reuse, freeing the oldest idle buffers when the pool would go
    /// over its limit (small buffers, and any bigger than the limit, are just freed).
    pub fn give_back(&self, buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap < POOLED_FROM {
            return;
        }
        if cap > self.max_bytes {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest idle buffers make room: a pool full of sizes nobody asks for any more
        // would turn every buffer given back away.
        let mut evict = 0;
        let mut freed = 0;
        while idle.bytes - freed + cap > self.max_bytes {
            freed += idle.buffers[evict].capacity();
            evict += 1;
        }
        let evicted: Vec<Vec<u8>> = idle.buffers.drain(..evict).collect();
        idle.bytes = idle.bytes - freed + cap;
        idle.buffers.push(buf);
        drop(idle);
        // Freed outside the lock.
        drop(evicted);
    }

    /// Bytes of idle buffers held.
    pub fn idle_bytes(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_for_a_chunk_that_fits() {
        let pool = BufferPool::new(4 << 20);
        let a = pool.copy_of(&[7u8; 300_000], 32);
        assert_eq!(&a[..], &[7u8; 300_000][..]);
        assert!(a.capacity() >= 300_032);
        let ptr = a.as_ptr();
        pool.give_back(a);
        assert_eq!(pool.idle_bytes(), 300_032);
        let b = pool.copy_of(&[9u8; 280_000], 32);
        assert_eq!(b.as_ptr(), ptr, "the idle buffer was not reused");
        assert_eq!(&b[..], &[9u8; 280_000][..]);
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn idle_buffers_are_reshaped_rather_than_new_ones_made() {
        let pool = BufferPool::new(8 << 20);
        // Too small for a bigger chunk: grown, not replaced by a new buffer.
        pool.give_back(pool.copy_of(&[1u8; 300_000], 0));
        let grown = pool.copy_of(&vec![2u8; 900_000], 32);
        assert_eq!(
            pool.idle_bytes(),
            0,
            "the idle buffer was left for a new one"
        );
        assert!(grown.capacity() >= 900_032);
        assert!(grown.iter().all(|&b| b == 2) && grown.len() == 900_000);
        // Much too big for a small chunk: cut down to it.
        pool.give_back(grown);
        let cut = pool.take(400_000);
        assert_eq!(pool.idle_bytes(), 0);
        assert!(cut.is_empty());
        assert!(
            (400_000..=500_000).contains(&cut.capacity()),
            "{}",
            cut.capacity()
        );
        // Of several, the smallest that fits is taken.
        pool.give_back(cut);
        let (big, mid) = (pool.take(2 << 20), pool.take(600_000));
        pool.give_back(big);
        pool.give_back(mid);
        let fit = pool.take(550_000);
        assert_eq!(fit.capacity(), 600_000);
        assert_eq!(pool.idle_bytes(), 2 << 20);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_limit() {
        let pool = BufferPool::new(3 * POOLED_FROM);
        let bufs: Vec<_> = (0..4)
            .map(|_| pool.copy_of(&vec![0u8; POOLED_FROM], 0))
            .collect();
        for b in bufs {
            pool.give_back(b);
        }
        assert_eq!(pool.idle_bytes(), 3 * POOLED_FROM);
        // Small buffers are neither kept nor handed out.
        pool.give_back(Vec::with_capacity(1000));
        assert_eq!(pool.idle_bytes(), 3 * POOLED_FROM);
        assert_eq!(pool.copy_of(b"tiny", 0).capacity(), 4);
    }

    #[test]
    fn a_full_pool_frees_its_oldest_buffers_for_one_given_back() {
        let pool = BufferPool::new(4 * POOLED_FROM);
        let small: Vec<_> = (0..4).map(|_| pool.take(POOLED_FROM)).collect();
        let first = small[0].as_ptr();
        for b in small {
            pool.give_back(b);
        }
        let big = pool.take(2 * POOLED_FROM);
        let big_ptr = big.as_ptr();
        pool.give_back(big);
        assert_eq!(pool.idle_bytes(), 4 * POOLED_FROM);
        // The two oldest small ones went; the big one is handed out again.
        let again = pool.take(2 * POOLED_FROM);
        assert_eq!(again.as_ptr(), big_ptr);
        let rest: Vec<_> = (0..2).map(|_| pool.take(POOLED_FROM)).collect();
        assert!(rest.iter().all(|b| b.as_ptr() != first));
        assert_eq!(pool.idle_bytes(), 0);
        // Bigger than the whole pool: not kept.
        pool.give_back(Vec::with_capacity(5 * POOLED_FROM));
        assert_eq!(pool.idle_bytes(), 0);
    }
}
