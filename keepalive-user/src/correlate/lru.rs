//! A map bounded by entry count that forgets its least recently used entries, so that no
//! amount of traffic can grow the correlator's tables without limit. A linked hash map
//! (`lru`): every operation, eviction included, is O(1). Keys are chosen by the kernel (socket
//! cookies) or by the network (addresses), so they are hashed with foldhash, fast and seeded
//! per process.

use std::{hash::Hash, num::NonZeroUsize};

use foldhash::fast::RandomState;
use lru::LruCache;

/// The map, and how many entries it dropped to stay within its cap.
pub(super) struct Lru<K, V> {
    entries: LruCache<K, V, RandomState>,
    evicted: u64,
}

impl<K: Hash + Eq, V> std::fmt::Debug for Lru<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lru")
            .field("len", &self.entries.len())
            .field("cap", &self.entries.cap())
            .field("evicted", &self.evicted)
            .finish()
    }
}

impl<K: Hash + Eq, V> Lru<K, V> {
    /// An empty map holding at most `cap` entries (at least one).
    pub(super) fn new(cap: usize) -> Self {
        Self {
            entries: LruCache::with_hasher(
                NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN),
                RandomState::default(),
            ),
            evicted: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries dropped to stay within the cap, since creation.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The value without marking it used.
    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.entries.peek(key)
    }

    /// The value, marked as used most recently.
    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key)
    }

    /// The value without marking it used.
    pub(super) fn peek_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.peek_mut(key)
    }

    /// Inserts or replaces `key` as the most recently used entry; returns the entry evicted
    /// to make room, if any.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        let full = self.entries.len() == self.entries.cap().get() && !self.entries.contains(&key);
        let evicted = self.entries.push(key, value).filter(|_| full);
        self.evicted += u64::from(evicted.is_some());
        evicted
    }

    /// The value for `key`, created with `make` when missing (evicting the oldest entry if
    /// the map is full), marked as used most recently.
    pub(super) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.entries.contains(&key) && self.entries.len() == self.entries.cap().get() {
            self.entries.pop_lru();
            self.evicted += 1;
        }
        self.entries.get_or_insert_mut(key, make)
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.pop(key)
    }

    /// Every entry, the least recently used first, without marking any used.
    pub(super) fn iter_oldest_first(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().rev()
    }

    /// The least recently used entry.
    pub(super) fn oldest(&self) -> Option<(&K, &V)> {
        self.entries.peek_lru()
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut lru = Lru::new(2);
        assert!(lru.insert(1, "a").is_none());
        assert!(lru.insert(2, "b").is_none());
        lru.get_or_insert_with(1, || "unused");
        assert_eq!(lru.insert(3, "c"), Some((2, "b")));
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.evicted(), 1);
        assert_eq!(lru.oldest(), Some((&1, &"a")));
        let order: Vec<_> = lru.iter_oldest_first().map(|(&k, _)| k).collect();
        assert_eq!(order, [1, 3]);
    }

    #[test]
    fn peek_and_get_do_not_reorder() {
        let mut lru = Lru::new(2);
        lru.insert(1, 10);
        lru.insert(2, 20);
        if let Some(value) = lru.peek_mut(&1) {
            *value += 1;
        }
        assert_eq!(lru.get(&1), Some(&11));
        assert_eq!(lru.oldest(), Some((&1, &11)));
    }

    #[test]
    fn get_or_insert_with_respects_the_cap() {
        let mut lru = Lru::new(3);
        for key in 0..10 {
            *lru.get_or_insert_with(key, || 0) += 1;
        }
        *lru.get_or_insert_with(9, || 0) += 1;
        assert_eq!(lru.len(), 3);
        assert_eq!(lru.get(&9), Some(&2));
        assert_eq!(lru.get(&0), None);
        assert_eq!(lru.remove(&8), Some(1));
        assert_eq!(lru.len(), 2);
    }
}
