//! Automatic responses, off by default: an address that credential stuffing was detected from is
//! refused (429 with `Retry-After`) for `detection.block_stuffing_minutes`. Each block is an
//! audit event (`security.response`, details `rule`, `response`, `minutes`) written by the alert
//! queue. The list is bounded; when it is full the block that ends soonest makes room.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Addresses blocked at once, at most.
const MAX_BLOCKED: usize = 10_000;

#[derive(Default)]
pub struct Blocklist {
    /// Address -> blocked until (µs since the epoch).
    until: Mutex<HashMap<String, i64>>,
    /// Entries in `until`, read without the lock on every request.
    len: AtomicUsize,
}

impl Blocklist {
    /// Block `ip` until `until_us`; false if it already was (for at least as long).
    pub fn block(&self, ip: &str, until_us: i64, now_us: i64) -> bool {
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(ip).is_some_and(|&u| u >= until_us) {
            return false;
        }
        if map.len() >= MAX_BLOCKED && !map.contains_key(ip) {
            map.retain(|_, u| *u > now_us);
            if map.len() >= MAX_BLOCKED
                && let Some(soonest) = map.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone())
            {
                map.remove(&soonest);
            }
        }
        map.insert(ip.to_owned(), until_us);
        self.len.store(map.len(), Ordering::Relaxed);
        true
    }

    /// Seconds `ip` stays blocked, or None. Lock-free while nothing is blocked.
    pub fn blocked_for(&self, ip: &str, now_us: i64) -> Option<u64> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(ip) {
            Some(&until) if until > now_us => {
                Some(u64::try_from((until - now_us).div_euclid(1_000_000) + 1).unwrap_or(1))
            }
            Some(_) => {
                map.remove(ip);
                self.len.store(map.len(), Ordering::Relaxed);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_ends_on_time_and_the_list_stays_bounded() {
        let list = Blocklist::default();
        assert_eq!(list.blocked_for("203.0.113.7", 0), None);
        assert!(list.block("203.0.113.7", 60_000_000, 0));
        assert!(!list.block("203.0.113.7", 30_000_000, 0));
        assert_eq!(list.blocked_for("203.0.113.7", 0), Some(61));
        assert_eq!(list.blocked_for("203.0.113.8", 0), None);
        assert_eq!(list.blocked_for("203.0.113.7", 60_000_000), None);
        assert_eq!(list.len.load(Ordering::Relaxed), 0);

        for i in 0..MAX_BLOCKED + 5 {
            let until = 1_000_000 + i64::try_from(i).unwrap();
            list.block(&format!("10.0.{}.{}", i / 256, i % 256), until, 0);
        }
        assert_eq!(list.len.load(Ordering::Relaxed), MAX_BLOCKED);
        // The ones ending soonest made room; the newest are there.
        assert_eq!(list.blocked_for("10.0.0.0", 0), None);
        let last = MAX_BLOCKED + 4;
        assert!(
            list.blocked_for(&format!("10.0.{}.{}", last / 256, last % 256), 0)
                .is_some()
        );
    }
}
