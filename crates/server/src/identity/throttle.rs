//! In-memory throttles for the authentication endpoints: a per-account progressive delay after
//! failed logins (tracked for unknown usernames too, so it reveals nothing about which accounts
//! exist) and a per-client-IP token bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Above this many tracked keys, expired entries are swept.
const SWEEP_ABOVE: usize = 50_000;

pub struct LoginThrottle {
    after: u32,
    base_us: i64,
    max_us: i64,
    failures: Mutex<HashMap<String, Failures>>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until_us: i64,
}

impl LoginThrottle {
    pub fn new(after: u32, base_ms: u64, max_ms: u64) -> Self {
        Self {
            after,
            base_us: i64::try_from(base_ms)
                .unwrap_or(i64::MAX / 2_000)
                .saturating_mul(1000),
            max_us: i64::try_from(max_ms)
                .unwrap_or(i64::MAX / 2_000)
                .saturating_mul(1000),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds)` while `key` must wait before trying again.
    pub fn check(&self, key: &str, now_us: i64) -> Result<(), u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(f) if f.blocked_until_us > now_us => {
                let wait_us = f.blocked_until_us - now_us;
                Err(u64::try_from((wait_us + 999_999).div_euclid(1_000_000))
                    .unwrap_or(1)
                    .max(1))
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, key: &str, now_us: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, f| f.blocked_until_us > now_us);
        }
        let entry = map.entry(key.to_owned()).or_insert(Failures {
            count: 0,
            blocked_until_us: 0,
        });
        entry.count = entry.count.saturating_add(1);
        if entry.count >= self.after {
            let doublings = (entry.count - self.after).min(30);
            let delay = self
                .base_us
                .saturating_mul(1i64 << doublings)
                .min(self.max_us);
            entry.blocked_until_us = now_us.saturating_add(delay);
        }
    }

    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// A token bucket per client IP: `per_minute` requests a minute, bursts up to the same number.
pub struct IpRateLimit {
    per_minute: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, i64)>>,
}

impl IpRateLimit {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds)` when `ip` has used up its budget.
    pub fn check(&self, ip: IpAddr, now_us: i64) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > SWEEP_ABOVE {
            let full_after_us = 60_000_000;
            map.retain(|_, (_, last)| now_us - *last < full_after_us);
        }
        let (tokens, last) = map.entry(ip).or_insert((self.per_minute, now_us));
        let elapsed_min = (now_us - *last).max(0) as f64 / 60_000_000.0;
        *tokens = (*tokens + elapsed_min * self.per_minute).min(self.per_minute);
        *last = now_us;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait_secs = ((1.0 - *tokens) / self.per_minute * 60.0).ceil();
            Err(wait_secs.max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_after_threshold_and_resets() {
        let t = LoginThrottle::new(3, 1000, 4000);
        let now = 1_000_000_000;
        for _ in 0..2 {
            t.record_failure("alice", now);
        }
        assert!(t.check("alice", now).is_ok());
        t.record_failure("alice", now);
        assert_eq!(t.check("alice", now), Err(1));
        assert!(t.check("alice", now + 1_000_001).is_ok());
        t.record_failure("alice", now + 1_000_001);
        assert_eq!(t.check("alice", now + 1_000_001), Err(2));
        for _ in 0..10 {
            t.record_failure("alice", now + 1_000_001);
        }
        assert_eq!(t.check("alice", now + 1_000_001), Err(4), "capped at max");
        assert!(t.check("bob", now).is_ok());
        t.reset("alice");
        assert!(t.check("alice", now).is_ok());
    }

    #[test]
    fn ip_bucket_refills() {
        let limit = IpRateLimit::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = 0;
        assert!(limit.check(ip, now).is_ok());
        assert!(limit.check(ip, now).is_ok());
        assert!(limit.check(ip, now).is_err());
        assert!(limit.check(ip, now + 30_000_000).is_ok());
        assert!(limit.check("127.0.0.2".parse().unwrap(), now).is_ok());
    }
}
