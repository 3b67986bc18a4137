//! In-memory throttles for the authentication endpoints.
//!
//! - [`LoginThrottle`]: a progressive delay after failed logins, per (account, client address)
//!   and, for addresses the account has never logged in from, per account. A login takes a
//!   failure slot *before* its password is verified ([`LoginThrottle::reserve`]), so however
//!   many attempts arrive at once, no more are evaluated than the free attempts allow. Tracked
//!   for unknown usernames too, so it reveals nothing about which accounts exist.
//! - [`KnownAddresses`]: the client addresses each account has logged in from successfully.
//!   They are spared the account-wide delay and may pass the account lock with the right
//!   password and second factor; everyone else waits and stays locked out.
//! - [`IpRateLimit`]: a token bucket per client address over every `/auth/*` endpoint.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Above this many tracked keys, expired entries are swept.
const SWEEP_ABOVE: usize = 50_000;

/// The address a client is known by: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6
/// /64 (one host's privacy addresses rotate inside its /64, and a /64 is what one subscriber
/// gets). The login throttle, the known addresses, the per-address rate limits and the
/// connection cap per address all count clients by it.
pub fn client_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

pub struct LoginThrottle {
    after: u32,
    base_us: i64,
    max_us: i64,
    failures: Mutex<HashMap<String, Failures>>,
}

#[derive(Clone, Copy, Default)]
struct Failures {
    /// Failed attempts this key was charged with since its last success.
    count: u32,
    /// Attempts admitted and not yet settled: each may still become a failure.
    in_flight: u32,
    blocked_until_us: i64,
}

impl Failures {
    /// May one more attempt start now? Every attempt in flight counts as a failure already,
    /// so concurrent attempts never get further than one after another would.
    fn admits(&self, after: u32, now_us: i64) -> Result<(), i64> {
        if self.blocked_until_us > now_us {
            return Err(self.blocked_until_us - now_us);
        }
        if self.in_flight > 0 && self.count.saturating_add(self.in_flight) >= after {
            // The wait depends on how the attempts in flight end; a second is a fair guess.
            return Err(1_000_000);
        }
        Ok(())
    }
}

/// The keys an attempt is charged to: the (account, address) pair, and the account itself
/// unless the address is a known one.
fn throttle_keys(account: &str, client_ip: Option<IpAddr>, known: bool) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    if let Some(ip) = client_ip {
        keys.push(format!("{account}\0{}", client_prefix(ip)));
    }
    if !known || client_ip.is_none() {
        keys.push(account.to_owned());
    }
    keys
}

fn retry_secs(wait_us: i64) -> u64 {
    u64::try_from((wait_us + 999_999).div_euclid(1_000_000))
        .unwrap_or(1)
        .max(1)
}

/// A failure slot taken by [`LoginThrottle::reserve`]. Settle it with
/// [`Attempt::failed`] or [`Attempt::succeeded`]; dropped unsettled (the request ended
/// without an answer on the password, e.g. a database error), it is given back uncounted.
#[must_use = "an attempt holds a failure slot until it is settled"]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    keys: Vec<String>,
    settled: bool,
}

impl Attempt<'_> {
    /// The attempt failed: charge it to every key it was admitted under.
    pub fn failed(mut self, now_us: i64) {
        self.settled = true;
        self.throttle.settle(&self.keys, Some(now_us));
    }

    /// The attempt succeeded: its keys start afresh.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.throttle.settle(&self.keys, None);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.throttle.release(&self.keys);
        }
    }
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

    /// Check and take a failure slot in one step, for a login to `account` (lower-cased) from
    /// `client_ip`, which is one of the account's `known` addresses or not. `Err(seconds)`
    /// while one of its keys must wait.
    pub fn reserve(
        &self,
        account: &str,
        client_ip: Option<IpAddr>,
        known: bool,
        now_us: i64,
    ) -> Result<Attempt<'_>, u64> {
        let keys = throttle_keys(account, client_ip, known);
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait_us = 0;
        for key in &keys {
            if let Some(f) = map.get(key)
                && let Err(w) = f.admits(self.after, now_us)
            {
                wait_us = wait_us.max(w);
            }
        }
        if wait_us > 0 {
            return Err(retry_secs(wait_us));
        }
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, f| f.blocked_until_us > now_us || f.in_flight > 0);
        }
        for key in &keys {
            let f = map.entry(key.clone()).or_default();
            f.in_flight = f.in_flight.saturating_add(1);
        }
        Ok(Attempt {
            throttle: self,
            keys,
            settled: false,
        })
    }

    /// End attempts in flight under `keys`: a failure at `failed_at_us`, or a success.
    fn settle(&self, keys: &[String], failed_at_us: Option<i64>) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            let f = map.entry(key.clone()).or_default();
            f.in_flight = f.in_flight.saturating_sub(1);
            match failed_at_us {
                Some(now_us) => {
                    f.count = f.count.saturating_add(1);
                    if f.count >= self.after {
                        let doublings = (f.count - self.after).min(30);
                        let delay = self
                            .base_us
                            .saturating_mul(1i64 << doublings)
                            .min(self.max_us);
                        f.blocked_until_us = f.blocked_until_us.max(now_us.saturating_add(delay));
                    }
                }
                None => {
                    f.count = 0;
                    f.blocked_until_us = 0;
                }
            }
            if f.count == 0 && f.in_flight == 0 {
                map.remove(key);
            }
        }
    }

    /// Forget every failure of `account`, from every address (an admin unlocked or reset it).
    pub fn reset(&self, account: &str) {
        let account = account.to_ascii_lowercase();
        let prefix = format!("{account}\0");
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| *key != account && !key.starts_with(&prefix));
    }

    fn release(&self, keys: &[String]) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if let Some(f) = map.get_mut(key) {
                f.in_flight = f.in_flight.saturating_sub(1);
                if f.count == 0 && f.in_flight == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

/// Successful logins are remembered this long per (account, address).
const KNOWN_FOR_US: i64 = 90 * 24 * 3600 * 1_000_000;
/// At most this many (account, address) pairs are remembered; the oldest go first.
const MAX_KNOWN: usize = 100_000;

/// The addresses each account has logged in from (password and second factor) on this node,
/// kept in memory only, as keyed digests: HMAC-SHA-256 under a key drawn at start-up, of the
/// account name, and of the account name with the address ([`client_prefix`]), with the time
/// of the last success.
pub struct KnownAddresses {
    key: [u8; 32],
    seen: Mutex<HashMap<KnownKey, i64>>,
}

/// The digests of an account, and of the account with one address.
type KnownKey = ([u8; 32], [u8; 32]);

impl KnownAddresses {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn account_digest(&self, account: &str) -> [u8; 32] {
        carevault_crypto::hmac_sha256(&self.key, account.as_bytes())
    }

    fn digest(&self, account: &str, ip: IpAddr) -> KnownKey {
        let pair = format!("{account}\0{}", client_prefix(ip));
        (
            self.account_digest(account),
            carevault_crypto::hmac_sha256(&self.key, pair.as_bytes()),
        )
    }

    pub fn is_known(&self, account: &str, client_ip: Option<IpAddr>, now_us: i64) -> bool {
        let Some(ip) = client_ip else {
            return false;
        };
        let digest = self.digest(account, ip);
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&digest)
            .is_some_and(|at| now_us.saturating_sub(*at) < KNOWN_FOR_US)
    }

    pub fn remember(&self, account: &str, client_ip: Option<IpAddr>, now_us: i64) {
        let Some(ip) = client_ip else {
            return;
        };
        let digest = self.digest(account, ip);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_KNOWN && !seen.contains_key(&digest) {
            seen.retain(|_, at| now_us.saturating_sub(*at) < KNOWN_FOR_US);
            if seen.len() >= MAX_KNOWN
                && let Some(oldest) = seen.iter().min_by_key(|(_, at)| **at).map(|(d, _)| *d)
            {
                seen.remove(&oldest);
            }
        }
        seen.insert(digest, now_us);
    }

    /// Forget every address of `account` (its credentials were reset).
    pub fn forget(&self, account: &str) {
        let account = self.account_digest(&account.to_ascii_lowercase());
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(a, _), _| *a != account);
    }
}

/// A token bucket per client address ([`client_prefix`]: an IPv6 client cannot step around it
/// by rotating through its /64): `per_minute` requests a minute, bursts up to the same number.
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
        let (tokens, last) = map
            .entry(client_prefix(ip))
            .or_insert((self.per_minute, now_us));
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
    use std::sync::{Arc, Barrier};

    use super::*;

    const NOW: i64 = 1_000_000_000;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn fail(t: &LoginThrottle, account: &str, from: Option<IpAddr>, known: bool, now: i64) {
        t.reserve(account, from, known, now).unwrap().failed(now);
    }

    #[test]
    fn delay_grows_after_threshold_and_resets() {
        let t = LoginThrottle::new(3, 1000, 4000);
        for _ in 0..2 {
            fail(&t, "alice", None, false, NOW);
        }
        let attempt = t.reserve("alice", None, false, NOW).unwrap();
        attempt.failed(NOW);
        assert_eq!(t.reserve("alice", None, false, NOW).err(), Some(1));
        let later = NOW + 1_000_001;
        fail(&t, "alice", None, false, later);
        assert_eq!(t.reserve("alice", None, false, later).err(), Some(2));
        let much_later = later + 10_000_000;
        for i in 0..10 {
            fail(&t, "alice", None, false, much_later + i * 10_000_000);
        }
        let end = much_later + 90_000_000;
        assert_eq!(
            t.reserve("alice", None, false, end).err(),
            Some(4),
            "capped at max"
        );
        assert!(t.reserve("bob", None, false, NOW).is_ok());
        t.reserve("alice", None, false, end + 4_000_000)
            .unwrap()
            .succeeded();
        assert!(t.reserve("alice", None, false, end + 4_000_000).is_ok());
    }

    #[test]
    fn concurrent_attempts_never_exceed_the_free_attempts() {
        let t = Arc::new(LoginThrottle::new(5, 60_000, 60_000));
        let threads = 64;
        let barrier = Arc::new(Barrier::new(threads));
        let admitted: usize = (0..threads)
            .map(|i| {
                let (t, barrier) = (t.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // Half from one address, half each from its own: both are capped.
                    let from = if i % 2 == 0 {
                        ip("198.51.100.7")
                    } else {
                        ip(&format!("203.0.113.{i}"))
                    };
                    barrier.wait();
                    let Ok(attempt) = t.reserve("alice", from, false, NOW) else {
                        return 0;
                    };
                    // The password check takes a while; others arrive meanwhile.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    attempt.failed(NOW);
                    1
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 5, "exactly the free attempts are evaluated");
        assert_eq!(
            t.reserve("alice", ip("192.0.2.1"), false, NOW).err(),
            Some(60)
        );
    }

    #[test]
    fn a_slot_in_flight_counts_until_settled_and_a_dropped_one_is_given_back() {
        let t = LoginThrottle::new(2, 1000, 1000);
        let first = t.reserve("alice", None, false, NOW).unwrap();
        let second = t.reserve("alice", None, false, NOW).unwrap();
        assert!(
            t.reserve("alice", None, false, NOW).is_err(),
            "two in flight"
        );
        drop(first);
        let third = t.reserve("alice", None, false, NOW).unwrap();
        second.succeeded();
        third.failed(NOW);
        assert!(t.reserve("alice", None, false, NOW).is_ok());
    }

    #[test]
    fn a_known_address_is_spared_the_account_wide_delay_but_not_its_own() {
        let t = LoginThrottle::new(2, 60_000, 60_000);
        // An attacker from many addresses exhausts the account-wide budget...
        fail(&t, "alice", ip("203.0.113.1"), false, NOW);
        fail(&t, "alice", ip("203.0.113.2"), false, NOW);
        assert!(t.reserve("alice", ip("203.0.113.3"), false, NOW).is_err());
        assert!(t.reserve("alice", None, false, NOW).is_err());
        // ...the user from a known address is not held up...
        let own = ip("192.0.2.10");
        assert!(t.reserve("alice", own, true, NOW).is_ok());
        // ...and the known address has a budget of its own (IPv6 by its /64).
        let v6 = ip("2001:db8:1:2::10");
        fail(&t, "alice", v6, true, NOW);
        fail(&t, "alice", ip("2001:db8:1:2:ffff::1"), true, NOW);
        assert!(
            t.reserve("alice", ip("2001:db8:1:2::99"), true, NOW)
                .is_err()
        );
        assert!(
            t.reserve("alice", ip("2001:db8:1:3::10"), true, NOW)
                .is_ok()
        );
        // An admin's unlock or reset clears every count of the account, and only its own.
        fail(&t, "alice2", None, false, NOW);
        fail(&t, "alice2", None, false, NOW);
        t.reset("Alice");
        assert!(t.reserve("alice", ip("203.0.113.3"), false, NOW).is_ok());
        assert!(
            t.reserve("alice", ip("2001:db8:1:2::99"), true, NOW)
                .is_ok()
        );
        assert!(t.reserve("alice2", None, false, NOW).is_err());
    }

    #[test]
    fn known_addresses_are_per_account_and_expire() {
        let known = KnownAddresses::new([7; 32]);
        let from = ip("192.0.2.10");
        assert!(!known.is_known("alice", from, NOW));
        known.remember("alice", from, NOW);
        assert!(known.is_known("alice", from, NOW + 1));
        assert!(known.is_known("alice", ip("::ffff:192.0.2.10"), NOW + 1));
        assert!(!known.is_known("bob", from, NOW + 1));
        assert!(!known.is_known("alice", ip("192.0.2.11"), NOW + 1));
        assert!(!known.is_known("alice", None, NOW + 1));
        assert!(!known.is_known("alice", from, NOW + KNOWN_FOR_US));
        known.remember("bob", from, NOW);
        known.forget("Alice");
        assert!(!known.is_known("alice", from, NOW + 1));
        assert!(known.is_known("bob", from, NOW + 1));
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
        // An IPv6 client rotating through its /64 shares one bucket; another /64 has its own.
        let one: IpAddr = "2001:db8:0:1::a".parse().unwrap();
        assert!(limit.check(one, now).is_ok());
        assert!(limit.check("2001:db8:0:1::b".parse().unwrap(), now).is_ok());
        assert!(
            limit
                .check("2001:db8:0:1:ffff::c".parse().unwrap(), now)
                .is_err()
        );
        assert!(limit.check("2001:db8:0:2::a".parse().unwrap(), now).is_ok());
    }
}
