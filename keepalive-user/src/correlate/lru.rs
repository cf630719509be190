//! A map bounded by entry count that forgets its least recently used entries, so that no
//! amount of traffic can grow the correlator's tables without limit.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

/// Entries with their last-use sequence number; `order` indexes them by that number, so the
/// oldest entry is `order`'s first. Iteration for output only ever goes through `order`, which
/// keeps results deterministic whatever the hasher does.
#[derive(Debug)]
pub(super) struct Lru<K, V> {
    entries: HashMap<K, (V, u64)>,
    order: BTreeMap<u64, K>,
    next: u64,
    cap: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty map holding at most `cap` entries (at least one).
    pub(super) fn new(cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            cap: cap.max(1),
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
        self.entries.get(key).map(|(value, _)| value)
    }

    /// The value, marked as used most recently.
    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let seq = self.bump();
        let (value, old) = self.entries.get_mut(key)?;
        self.order.remove(old);
        *old = seq;
        self.order.insert(seq, key.clone());
        Some(value)
    }

    /// The value without marking it used.
    pub(super) fn peek_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(value, _)| value)
    }

    /// Inserts or replaces `key` as the most recently used entry; returns the entry evicted
    /// to make room, if any.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        let evicted = if self.entries.contains_key(&key) {
            None
        } else {
            self.make_room()
        };
        let seq = self.bump();
        if let Some((_, old)) = self.entries.insert(key.clone(), (value, seq)) {
            self.order.remove(&old);
        }
        self.order.insert(seq, key);
        evicted
    }

    /// The value for `key`, created with `make` when missing (evicting the oldest entry if
    /// the map is full), marked as used most recently.
    pub(super) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.entries.contains_key(&key) {
            self.make_room();
        }
        let seq = self.bump();
        let slot = self
            .entries
            .entry(key.clone())
            .or_insert_with(|| (make(), seq));
        self.order.remove(&slot.1);
        slot.1 = seq;
        self.order.insert(seq, key);
        &mut slot.0
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let (value, seq) = self.entries.remove(key)?;
        self.order.remove(&seq);
        Some(value)
    }

    /// The least recently used entry.
    pub(super) fn oldest(&self) -> Option<(&K, &V)> {
        let (_, key) = self.order.first_key_value()?;
        self.entries.get_key_value(key).map(|(k, (v, _))| (k, v))
    }

    fn make_room(&mut self) -> Option<(K, V)> {
        if self.entries.len() < self.cap {
            return None;
        }
        let (_, key) = self.order.pop_first()?;
        let (value, _) = self.entries.remove(&key)?;
        self.evicted += 1;
        Some((key, value))
    }

    fn bump(&mut self) -> u64 {
        self.next += 1;
        self.next
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
        lru.get_mut(&1);
        assert_eq!(lru.insert(3, "c"), Some((2, "b")));
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.evicted(), 1);
        assert_eq!(lru.oldest(), Some((&1, &"a")));
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
