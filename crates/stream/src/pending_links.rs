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

/// A map from a file's key to what later links need and how many of them are still to come,
/// forgotten at the last one, oldest entries forgotten past a bound.
#[derive(Debug)]
pub struct PendingLinks<K, V> {
    map: HashMap<K, (V, u64)>,
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

    /// Remembers `value` for the `links_to_come` later links of `key` (none: nothing to
    /// remember), forgetting the oldest entries past the bound.
    pub fn insert(&mut self, key: K, value: V, links_to_come: u64) {
        if self.max == 0 || links_to_come == 0 {
            return;
        }
        if self
            .map
            .insert(key.clone(), (value, links_to_come))
            .is_none()
        {
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

    /// One more link of `key` came: `use_value` gets what was remembered for it, and the
    /// entry is forgotten if this was its last link. `None` (and `use_value` not called) when
    /// nothing is remembered for `key`.
    pub fn next_link<Q, R>(&mut self, key: &Q, use_value: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (value, to_come) = self.map.get_mut(key)?;
        let out = use_value(value);
        *to_come -= 1;
        if *to_come == 0 {
            self.map.remove(key);
        }
        Some(out)
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
            links.insert(i, i * 10, 5);
        }
        assert_eq!(links.len(), 3);
        assert_eq!(links.next_link(&6, |v| *v), None);
        assert_eq!(links.next_link(&9, |v| *v), Some(90));
        assert_eq!(links.next_link(&7, |v| *v), Some(70));
        assert_eq!(links.forgotten(), 7);
    }

    #[test]
    fn an_entry_is_forgotten_at_its_last_link() {
        let mut links = PendingLinks::new(8);
        links.insert("a", 1, 2);
        links.insert("none to come", 2, 0);
        assert_eq!(links.len(), 1);
        assert_eq!(links.next_link("a", |v| *v), Some(1));
        assert_eq!(links.next_link("a", |v| *v), Some(1));
        assert_eq!(links.next_link("a", |v| *v), None);
        assert!(links.is_empty());
        assert_eq!(links.forgotten(), 0);
    }

    #[test]
    fn removed_keys_do_not_make_the_order_grow() {
        let mut links = PendingLinks::new(4);
        for i in 0..100_000u32 {
            links.insert(i, (), 1);
            links.next_link(&i, |_| ());
        }
        assert!(links.is_empty());
        assert_eq!(links.forgotten(), 0);
        assert!(links.order.len() <= 8, "order holds {}", links.order.len());
        links.insert(1, (), 1);
        assert_eq!(links.next_link(&1, |_| "found"), Some("found"));
    }
}
