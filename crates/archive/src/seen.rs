//! The set of blob ids a backup run has already sent to the sink, in about 16 bytes per blob.
//!
//! A run of many small files sends millions of new blobs; a `HashSet<Id>` costs about 100 bytes
//! for each (32-byte key, spare capacity, and a transient doubling while it grows). Here a blob
//! is its id's first 16 bytes, as in the repository index
//! ([`snapback_repo::index`](snapback_repo::BlobIndex), whose module docs give the collision
//! argument: ids agreeing in 128 bits need about 2^64 blobs by accident).
//!
//! Layout: one sorted array of 128-bit prefixes, a table of 2^16 bucket starts indexed by the
//! prefix's first two bytes (SHA-256 ids spread evenly, so a lookup binary-searches a handful of
//! entries), and a small hash set of recent insertions. When that overlay reaches a 16th of the
//! array (at least [`OVERLAY_MIN`]), it is sorted and merged into the array in place, from the
//! back, after growing the array by exactly the overlay's length: O(1) amortised per blob, no
//! second array, so steady memory is 16 bytes per blob plus the overlay and the 256 KiB table.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use snapback_repo::Id;

/// Insertions kept in the overlay before a merge, at the least.
const OVERLAY_MIN: usize = 16 * 1024;
/// Bucket table size: one entry per value of the first two id bytes.
const BUCKETS: usize = 1 << 16;

/// Ids seen in this run; see the module docs.
#[derive(Debug, Default)]
pub struct Seen {
    /// Sorted, no duplicates.
    sorted: Vec<u128>,
    /// `starts[b]..starts[b + 1]`: the entries of `sorted` whose first two bytes are `b`.
    starts: Vec<u32>,
    /// Recent insertions, none of them in `sorted`.
    overlay: HashSet<u128, BuildHasherDefault<PrefixHasher>>,
}

impl Seen {
    /// An empty set (the bucket table is allocated at the first merge).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; true if it was not there yet.
    pub fn insert(&mut self, id: &Id) -> bool {
        let key = key(id);
        if self.in_sorted(key) || !self.overlay.insert(key) {
            return false;
        }
        if self.overlay.len() >= OVERLAY_MIN.max(self.sorted.len() / 16) {
            self.merge();
        }
        true
    }

    /// Whether `id` was added.
    pub fn contains(&self, id: &Id) -> bool {
        let key = key(id);
        self.overlay.contains(&key) || self.in_sorted(key)
    }

    /// Number of ids added.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.overlay.len()
    }

    /// Nothing added yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn in_sorted(&self, key: u128) -> bool {
        if self.sorted.is_empty() {
            return false;
        }
        let b = bucket(key);
        let (lo, hi) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        self.sorted[lo..hi].binary_search(&key).is_ok()
    }

    /// Moves the overlay into the sorted array.
    fn merge(&mut self) {
        let mut fresh: Vec<u128> = self.overlay.drain().collect();
        fresh.sort_unstable();
        let old = self.sorted.len();
        // Grow by exactly what is added (no doubling), then merge from the back so that no
        // element is overwritten before it has been moved.
        self.sorted.reserve_exact(fresh.len());
        self.sorted.resize(old + fresh.len(), 0);
        let (mut i, mut j, mut out) = (old, fresh.len(), old + fresh.len());
        while j > 0 {
            out -= 1;
            if i > 0 && self.sorted[i - 1] > fresh[j - 1] {
                self.sorted[out] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[out] = fresh[j - 1];
                j -= 1;
            }
        }
        self.overlay.shrink_to(OVERLAY_MIN);
        self.starts.resize(BUCKETS + 1, 0);
        let mut at = 0;
        for b in 0..BUCKETS {
            self.starts[b] = u32::try_from(at).unwrap_or(u32::MAX);
            while at < self.sorted.len() && bucket(self.sorted[at]) == b {
                at += 1;
            }
        }
        self.starts[BUCKETS] = u32::try_from(self.sorted.len()).unwrap_or(u32::MAX);
    }
}

/// An id's first 16 bytes, big-endian, so that integer order is byte order.
fn key(id: &Id) -> u128 {
    let mut p = [0u8; 16];
    p.copy_from_slice(&id.0[..16]);
    u128::from_be_bytes(p)
}

fn bucket(key: u128) -> usize {
    (key >> 112) as usize
}

/// Keys are SHA-256 prefixes, already uniform: the hash of one is its low 64 bits.
#[derive(Debug, Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; any other input is folded in, so this stays a hash.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_are_found_across_merges_and_duplicates_rejected() {
        let mut seen = Seen::new();
        let ids: Vec<Id> = (0u32..100_000)
            .map(|n| Id::hash(&n.to_le_bytes()))
            .collect();
        for (n, id) in ids.iter().enumerate() {
            assert!(seen.insert(id), "{n} is new");
            assert!(!seen.insert(id), "{n} again");
        }
        assert_eq!(seen.len(), ids.len());
        // Several merges happened, and every id is still there, in the array or the overlay.
        assert!(seen.sorted.len() >= 3 * OVERLAY_MIN);
        assert!(seen.sorted.windows(2).all(|w| w[0] < w[1]));
        for id in &ids {
            assert!(seen.contains(id));
            assert!(!seen.insert(id));
        }
        for n in 100_000u32..101_000 {
            assert!(!seen.contains(&Id::hash(&n.to_le_bytes())));
        }
    }

    #[test]
    fn memory_is_about_sixteen_bytes_per_id() {
        let mut seen = Seen::new();
        let n = 1_000_000u32;
        for i in 0..n {
            seen.insert(&Id::hash(&i.to_le_bytes()));
        }
        let bytes =
            seen.sorted.capacity() * 16 + seen.starts.capacity() * 4 + seen.overlay.capacity() * 17;
        assert!(
            bytes / n as usize <= 20,
            "{} bytes per id",
            bytes / n as usize
        );
    }
}
