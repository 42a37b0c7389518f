//! A map whose entries expire after a time without use, and whose least recently used entry can be evicted, at a
//! cost that does not grow with the traffic: the flow table and the learned-CID table of a UDP listener.
//!
//! Each entry knows when it was last used ([`LastSeen`], a clock in milliseconds that only goes forward; a flow's
//! is an atomic that its reply task updates too). A min-heap holds one `(stamp, generation, key)` per entry, where
//! the stamp is at most the entry's real last use. Popping the heap's top either finds an entry that really is
//! the least recently used (its stamp is current), or re-files it under its real time. Using an entry costs
//! nothing here; expiry and eviction are amortised O(log n). Entries replaced or removed leave stale heap items
//! (recognised by their generation); the heap is rebuilt when they outnumber the live entries, so its size stays
//! bounded by the map's.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

/// When an entry was last used, in milliseconds on the table's clock; never decreases.
pub trait LastSeen {
    fn last_seen(&self) -> u64;
}

struct Slot<V> {
    value: V,
    generation: u64,
}

/// See the module docs.
pub struct ExpiringMap<K, V> {
    map: HashMap<K, Slot<V>>,
    heap: BinaryHeap<Reverse<(u64, u64, K)>>,
    next_generation: u64,
}

impl<K, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        ExpiringMap { map: HashMap::new(), heap: BinaryHeap::new(), next_generation: 0 }
    }
}

impl<K: Hash + Eq + Ord + Clone, V: LastSeen> ExpiringMap<K, V> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(key).map(|s| &s.value)
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.map.get_mut(key).map(|s| &mut s.value)
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.heap.push(Reverse((value.last_seen(), generation, key.clone())));
        let old = self.map.insert(key, Slot { value, generation }).map(|s| s.value);
        self.compact();
        old
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let old = self.map.remove(key).map(|s| s.value);
        self.compact();
        old
    }

    /// The earliest time an entry may have been used last (a lower bound): when to look for expired entries.
    pub fn oldest_stamp(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((stamp, _, _))| *stamp)
    }

    /// Removes and returns one entry last used at or before `cutoff`, if there is one.
    pub fn pop_expired(&mut self, cutoff: u64) -> Option<(K, V)> {
        while let Some(Reverse((stamp, _, _))) = self.heap.peek() {
            if *stamp > cutoff {
                return None;
            }
            let Reverse((_, generation, key)) = self.heap.pop()?;
            let Some(slot) = self.map.get(&key).filter(|s| s.generation == generation) else { continue };
            let real = slot.value.last_seen();
            if real <= cutoff {
                let slot = self.map.remove(&key)?;
                return Some((key, slot.value));
            }
            self.heap.push(Reverse((real, generation, key)));
        }
        None
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_least_recent(&mut self) -> Option<(K, V)> {
        while let Some(Reverse((stamp, generation, key))) = self.heap.pop() {
            let Some(slot) = self.map.get(&key).filter(|s| s.generation == generation) else { continue };
            let real = slot.value.last_seen();
            if real <= stamp {
                let slot = self.map.remove(&key)?;
                return Some((key, slot.value));
            }
            self.heap.push(Reverse((real, generation, key)));
        }
        None
    }

    /// Every entry, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.map.iter_mut().map(|(k, s)| (k, &mut s.value))
    }

    /// Removes the entries `keep` says no to, returning them.
    pub fn extract_if(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) -> Vec<(K, V)> {
        let mut gone = Vec::new();
        for (k, s) in self.map.iter_mut() {
            if !keep(k, &mut s.value) {
                gone.push(k.clone());
            }
        }
        let out = gone.into_iter().filter_map(|k| self.map.remove(&k).map(|s| (k, s.value))).collect();
        self.compact();
        out
    }

    /// Rebuilds the heap from the live entries once stale items outnumber them.
    fn compact(&mut self) {
        if self.heap.len() <= 2 * self.map.len() + 64 {
            return;
        }
        self.heap = self
            .map
            .iter()
            .map(|(k, s)| Reverse((s.value.last_seen(), s.generation, k.clone())))
            .collect::<Vec<_>>()
            .into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Entry(Cell<u64>);
    impl LastSeen for Entry {
        fn last_seen(&self) -> u64 {
            self.0.get()
        }
    }

    fn at(t: u64) -> Entry {
        Entry(Cell::new(t))
    }

    #[test]
    fn expires_by_last_use_not_by_insertion() {
        let mut m = ExpiringMap::default();
        m.insert("a", at(0));
        m.insert("b", at(10));
        m.insert("c", at(20));
        m.get(&"a").unwrap().0.set(30); // used again
        assert_eq!(m.pop_expired(15).map(|(k, _)| k), Some("b"));
        assert_eq!(m.pop_expired(15).map(|(k, _)| k), None, "a was used at 30, c at 20");
        assert_eq!(m.oldest_stamp(), Some(20));
        assert_eq!(m.pop_expired(25).map(|(k, _)| k), Some("c"));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let mut m = ExpiringMap::default();
        for (k, t) in [("a", 1), ("b", 2), ("c", 3)] {
            m.insert(k, at(t));
        }
        m.get(&"a").unwrap().0.set(9);
        m.get(&"b").unwrap().0.set(8);
        assert_eq!(m.pop_least_recent().map(|(k, _)| k), Some("c"));
        assert_eq!(m.pop_least_recent().map(|(k, _)| k), Some("b"));
        assert_eq!(m.pop_least_recent().map(|(k, _)| k), Some("a"));
        assert!(m.pop_least_recent().is_none());
    }

    #[test]
    fn replaced_and_removed_entries_leave_no_trace() {
        let mut m = ExpiringMap::default();
        m.insert(1u32, at(0));
        m.insert(1u32, at(50)); // replaced: the item stamped 0 is stale
        assert!(m.pop_expired(10).is_none());
        m.insert(2u32, at(0));
        m.remove(&2);
        assert!(m.pop_expired(10).is_none());
        assert_eq!(m.pop_expired(60).map(|(k, v)| (k, v.last_seen())), Some((1, 50)));
        assert!(m.is_empty());
    }

    #[test]
    fn heap_stays_bounded_under_churn() {
        let mut m = ExpiringMap::default();
        for i in 0..100_000u64 {
            m.insert(i % 10, at(i));
            if i % 3 == 0 {
                m.remove(&(i % 10));
            }
        }
        assert!(m.heap.len() <= 2 * m.len() + 65, "{} items for {} entries", m.heap.len(), m.len());
        let gone = m.extract_if(|k, _| k % 2 == 0);
        assert!(gone.iter().all(|(k, _)| k % 2 == 1));
        assert!(m.iter_mut().all(|(k, _)| k % 2 == 0));
    }
}
