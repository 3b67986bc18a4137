//! Bounded counters over fixed windows: per key (a hash of a principal or an address), a count
//! and, where a rule counts distinct things (patients, accounts), up to `limit + 1` distinct
//! item hashes. At most `capacity` keys are held: expired ones are swept when the map is full,
//! and a new key that still finds no room is not tracked (counted in `untracked`).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The maps' keys are already keyed SipHash values (the key is random per process, so a client
/// cannot aim at one bucket): hashing them again would only cost time on every request.
#[derive(Default)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by values of a keyed hash.
pub type PreHashedMap<V> = HashMap<u64, V, BuildHasherDefault<PreHashed>>;

#[derive(Default)]
struct Slot {
    start_us: i64,
    count: u64,
    distinct: Vec<u64>,
    /// The window in which this key last crossed its threshold (it crosses once per window).
    fired: bool,
}

pub struct Windows {
    window_us: i64,
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
    slots: Mutex<PreHashedMap<Slot>>,
    untracked: AtomicU64,
}

impl Windows {
    pub fn new(window_us: i64, capacity: usize) -> Self {
        Self {
            window_us: window_us.max(1),
            capacity: capacity.max(1),
            hasher: Default::default(),
            slots: Mutex::new(PreHashedMap::default()),
            untracked: AtomicU64::new(0),
        }
    }

    pub fn hash(&self, value: impl Hash) -> u64 {
        self.hasher.hash_one(value)
    }

    /// Count one event for `key` at `now_us`; `Some(count)` the first time in a window the
    /// count reaches `threshold`.
    pub fn count(&self, key: u64, now_us: i64, threshold: u64) -> Option<u64> {
        self.update(key, now_us, threshold, |slot| {
            slot.count += 1;
            slot.count
        })
    }

    /// Count one `item` for `key`; `Some(distinct)` the first time in a window the number of
    /// distinct items reaches `threshold`. At most `threshold` item hashes are kept.
    pub fn distinct(&self, key: u64, item: u64, now_us: i64, threshold: u64) -> Option<u64> {
        self.distinct_all(key, &[item], now_us, threshold)
    }

    /// [`Windows::distinct`] for several items of one request, under one lock.
    pub fn distinct_all(
        &self,
        key: u64,
        items: &[u64],
        now_us: i64,
        threshold: u64,
    ) -> Option<u64> {
        let cap = usize::try_from(threshold).unwrap_or(usize::MAX);
        self.update(key, now_us, threshold, |slot| {
            for item in items {
                if slot.distinct.len() >= cap {
                    break;
                }
                if !slot.distinct.contains(item) {
                    slot.distinct.push(*item);
                }
            }
            slot.distinct.len() as u64
        })
    }

    /// Keys tracked now (for tests of the bound).
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    fn update(
        &self,
        key: u64,
        now_us: i64,
        threshold: u64,
        f: impl FnOnce(&mut Slot) -> u64,
    ) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if !slots.contains_key(&key) && slots.len() >= self.capacity {
            let window = self.window_us;
            slots.retain(|_, s| now_us - s.start_us < window);
            if slots.len() >= self.capacity {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let slot = slots.entry(key).or_default();
        if now_us - slot.start_us >= self.window_us || slot.count == 0 && slot.distinct.is_empty() {
            *slot = Slot {
                start_us: now_us,
                ..Slot::default()
            };
        }
        let n = f(slot);
        if n < threshold || slot.fired {
            return None;
        }
        slot.fired = true;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_per_window_at_the_threshold() {
        let w = Windows::new(1_000, 16);
        let k = w.hash("alice");
        assert_eq!(w.count(k, 0, 3), None);
        assert_eq!(w.count(k, 1, 3), None);
        assert_eq!(w.count(k, 2, 3), Some(3));
        assert_eq!(w.count(k, 3, 3), None, "once per window");
        // A new window starts afresh.
        assert_eq!(w.count(k, 1_000, 3), None);
        assert_eq!(w.count(k, 1_001, 3), None);
        assert_eq!(w.count(k, 1_002, 3), Some(3));
    }

    #[test]
    fn distinct_items_only_count_once_and_are_bounded() {
        let w = Windows::new(1_000, 16);
        let k = w.hash("bob");
        for _ in 0..10 {
            assert_eq!(w.distinct(k, 7, 0, 3), None);
        }
        assert_eq!(w.distinct(k, 8, 0, 3), None);
        assert_eq!(w.distinct(k, 9, 0, 3), Some(3));
        for item in 10..10_000 {
            assert_eq!(w.distinct(k, item, 0, 3), None);
        }
        let slots = w.slots.lock().unwrap();
        assert_eq!(slots[&k].distinct.len(), 3, "at most threshold hashes kept");
    }

    #[test]
    fn memory_is_bounded_by_capacity() {
        let w = Windows::new(1_000, 100);
        for i in 0..100_000u64 {
            w.count(i, 0, 1_000);
        }
        assert_eq!(w.len(), 100);
        assert_eq!(w.untracked(), 99_900);
        // Once the window has passed, expired keys make room.
        w.count(1_000_000, 5_000, 1_000);
        assert_eq!(w.len(), 1);
    }
}
