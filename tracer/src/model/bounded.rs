//! A map with a hard cap that forgets its oldest entries first, in O(1) amortised per insert:
//! entries remember when they were (re)inserted, an insertion-order queue holds (key, stamp)
//! pairs, and stale pairs (the entry was removed or re-inserted since) are skipped lazily when
//! they reach the front, or dropped in one pass once they outnumber the live ones.
//!
//! For tables keyed by things any local user can create (NAT bindings, flow ends): no event
//! does work proportional to the table's size, and what the cap pushes out is counted.
use std::{collections::VecDeque, hash::Hash};

use foldhash::HashMap;

pub struct BoundedMap<K, V> {
    map: HashMap<K, (V, u64)>,
    /// (key, stamp) in insertion order; a pair is live while the entry's stamp matches.
    order: VecDeque<(K, u64)>,
    next_stamp: u64,
    cap: usize,
    evicted: u64,
    /// Queue pairs looked at (popped, skipped or compacted): the work done, for tests that
    /// check it stays linear in the number of operations.
    steps: u64,
}

impl<K: Copy + Eq + Hash, V> BoundedMap<K, V> {
    pub fn new(cap: usize) -> Self {
        BoundedMap {
            map: HashMap::default(),
            order: VecDeque::new(),
            next_stamp: 0,
            cap: cap.max(1),
            evicted: 0,
            steps: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Entries pushed out by the cap since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Queue pairs handled so far (work counter, see the type's docs).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key).map(|(v, _)| v)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|(v, _)| v)
    }

    /// Inserts or replaces (a replaced entry counts as new: it goes to the back of the
    /// queue). Returns the entry the cap pushed out, if one was.
    pub fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let mut pushed_out = None;
        if let Some(slot) = self.map.get_mut(&key) {
            *slot = (value, stamp);
        } else {
            if self.map.len() >= self.cap {
                pushed_out = self.pop_oldest();
                if pushed_out.is_some() {
                    self.evicted += 1;
                }
            }
            self.map.insert(key, (value, stamp));
        }
        self.order.push_back((key, stamp));
        self.compact_if_stale();
        pushed_out
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        // Its queue pair goes stale; it is skipped or compacted away later.
        self.map.remove(key).map(|(v, _)| v)
    }

    /// Removes the oldest entry (not counted as an eviction).
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        while let Some((key, stamp)) = self.order.pop_front() {
            self.steps += 1;
            if self.map.get(&key).is_some_and(|(_, s)| *s == stamp) {
                let (value, _) = self.map.remove(&key).expect("just looked");
                return Some((key, value));
            }
        }
        None
    }

    /// Removes entries from the oldest on while `expired` says so (a TTL sweep: the queue is
    /// in insertion order, so it stops at the first entry still fresh).
    pub fn pop_while(&mut self, mut expired: impl FnMut(&V) -> bool) -> usize {
        let mut removed = 0;
        while let Some((key, stamp)) = self.order.front().copied() {
            let live = self.map.get(&key).filter(|(_, s)| *s == stamp);
            match live {
                Some((value, _)) if !expired(value) => break,
                Some(_) => {
                    self.map.remove(&key);
                    removed += 1;
                }
                None => {}
            }
            self.order.pop_front();
            self.steps += 1;
        }
        removed
    }

    /// Drops stale queue pairs in one pass once they are the majority: each pass is paid for
    /// by the operations that made the pairs stale.
    fn compact_if_stale(&mut self) {
        if self.order.len() <= 2 * self.map.len() + 64 {
            return;
        }
        let map = &self.map;
        self.steps += self.order.len() as u64;
        self.order
            .retain(|(key, stamp)| map.get(key).is_some_and(|(_, s)| s == stamp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_goes_first_and_is_counted() {
        let mut m = BoundedMap::new(3);
        for k in 0..3u32 {
            assert!(m.insert(k, k * 10).is_none());
        }
        // Re-inserting 0 makes it the newest: 1 is now the oldest.
        m.insert(0, 1);
        assert_eq!(m.insert(3, 30), Some((1, 10)));
        assert_eq!(m.evicted(), 1);
        assert_eq!(m.len(), 3);
        m.remove(&2);
        assert!(m.insert(4, 40).is_none(), "room after a removal");
        assert_eq!(m.pop_oldest(), Some((0, 1)));
    }

    #[test]
    fn ttl_sweep_stops_at_the_first_fresh_entry() {
        let mut m = BoundedMap::new(10);
        for k in 0..6u64 {
            m.insert(k, k);
        }
        m.remove(&1);
        assert_eq!(m.pop_while(|ts| *ts < 4), 3, "0, 2, 3 (1 was already gone)");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn queue_stays_proportional_to_the_map() {
        let mut m = BoundedMap::new(100);
        for round in 0..10_000u64 {
            m.insert(round % 7, round);
            m.remove(&((round + 3) % 7));
        }
        assert!(m.order.len() <= 2 * m.len() + 65, "{}", m.order.len());
        assert!(m.steps() < 4 * 10_000);
    }
}
