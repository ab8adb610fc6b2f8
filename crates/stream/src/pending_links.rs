//! [`PendingLinks`]: what a consumer remembers of files whose other hard links are still to
//! come, bounded.
//!
//! A file with several links is remembered at its first link so that the later ones need not
//! be read again. When the other links lie outside the backup (a hard-link farm, a mail store
//! that links messages between folders) they never come, so an unbounded memory would grow
//! with every such file. Past the bound the oldest entry is forgotten; forgetting only costs a
//! later link being read (or looked up) again, as restic always does.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Entries kept at most: a few MiB with paths and content ids, enough for the links of a
/// directory tree to meet within it.
pub const PENDING_LINKS_MAX: usize = 8192;

/// A map from a file's key to what later links need, oldest entries forgotten past a bound.
#[derive(Debug)]
pub struct PendingLinks<K, V> {
    map: HashMap<K, V>,
    /// Insertion order; keys already removed are skipped when evicting.
    order: VecDeque<K>,
    max: usize,
    /// Entries forgotten past the bound so far.
    forgotten: u64,
}

impl<K: Hash + Eq + Clone, V> PendingLinks<K, V> {
    /// An empty map keeping at most `max` entries.
    pub fn new(max: usize) -> Self {
        PendingLinks {
            map: HashMap::new(),
            order: VecDeque::new(),
            max,
            forgotten: 0,
        }
    }

    /// Remembers `value` for `key`, forgetting the oldest entries past the bound.
    pub fn insert(&mut self, key: K, value: V) {
        if self.max == 0 {
            return;
        }
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some(oldest) => {
                    if self.map.remove(&oldest).is_some() {
                        self.forgotten += 1;
                    }
                }
                None => break,
            }
        }
        // Removed keys leave stale order entries; drop them before they outnumber the live ones.
        if self.order.len() > 2 * self.max {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    /// The entry for `key`, if remembered.
    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.map.get_mut(key)
    }

    /// Forgets `key` (its last link came).
    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.map.remove(key)
    }

    /// Entries forgotten past the bound so far (removed ones do not count).
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Entries remembered now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entries_are_forgotten_past_the_bound() {
        let mut links = PendingLinks::new(3);
        for i in 0..10u32 {
            links.insert(i, i * 10);
        }
        assert_eq!(links.len(), 3);
        assert!(links.get_mut(&6).is_none());
        assert_eq!(links.get_mut(&9), Some(&mut 90));
        assert_eq!(links.get_mut(&7), Some(&mut 70));
        assert_eq!(links.forgotten(), 7);
    }

    #[test]
    fn removed_keys_do_not_make_the_order_grow() {
        let mut links = PendingLinks::new(4);
        for i in 0..100_000u32 {
            links.insert(i, ());
            links.remove(&i);
        }
        assert!(links.is_empty());
        assert_eq!(links.forgotten(), 0);
        assert!(links.order.len() <= 8, "order holds {}", links.order.len());
        links.insert(1, ());
        assert!(links.get_mut(&1).is_some());
    }
}
