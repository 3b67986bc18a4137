//! An independent RFC 6238 TOTP (HMAC-SHA-1, 6 digits, 30 s), and the [`Authenticator`] that
//! hands out its codes the way an authenticator app would.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

pub fn hotp(secret: &[u8], counter: u64) -> String {
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = (u32::from(digest[offset]) & 0x7f) << 24
        | u32::from(digest[offset + 1]) << 16
        | u32::from(digest[offset + 2]) << 8
        | u32::from(digest[offset + 3]);
    format!("{:06}", binary % 1_000_000)
}

pub fn code_at(secret: &[u8], unix_secs: u64) -> String {
    hotp(secret, unix_secs / 30)
}

pub fn decode_base32(s: &str) -> Vec<u8> {
    data_encoding::BASE32_NOPAD
        .decode(s.trim_end_matches('=').as_bytes())
        .unwrap_or_default()
}

// A client of the real server reads the wall clock, as a phone's authenticator does.
#[allow(clippy::disallowed_methods)]
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An authenticator for one account: hands out codes for steps never used before, waiting for
/// the next 30-second step when the ±1-step window is used up (the server refuses replays).
pub struct Authenticator {
    pub secret: Vec<u8>,
    last_step: Option<u64>,
}

impl Authenticator {
    pub fn new(secret_b32: &str) -> Self {
        Self {
            secret: decode_base32(secret_b32),
            last_step: None,
        }
    }

    /// One that never hands out step `last_step` or an earlier one: the account's codes were
    /// used up to there (by an earlier process), and the server refuses replays.
    pub fn after_step(secret_b32: &str, last_step: Option<u64>) -> Self {
        Self {
            secret: decode_base32(secret_b32),
            last_step,
        }
    }

    /// The last step handed out.
    pub fn last_step(&self) -> Option<u64> {
        self.last_step
    }

    pub fn fresh_code(&mut self) -> String {
        loop {
            let now = now_secs();
            // Avoid the edge of a step: the server might already be in the next one.
            if now % 30 >= 28 {
                std::thread::sleep(Duration::from_millis(2500));
                continue;
            }
            let current = now / 30;
            let step = match self.last_step {
                Some(last) => (last + 1).max(current.saturating_sub(1)),
                None => current.saturating_sub(1),
            };
            if step > current + 1 {
                std::thread::sleep(Duration::from_secs(30 - now % 30));
                continue;
            }
            self.last_step = Some(step);
            return hotp(&self.secret, step);
        }
    }
}

impl Authenticator {
    /// The code of the current step (never one handed out before). Unlike [`Self::fresh_code`]
    /// (the oldest step the server still takes), it stays inside the server's window for at
    /// least 30 seconds: a test can replay it a moment later and see it refused as used.
    pub fn current_code(&mut self) -> String {
        loop {
            let now = now_secs();
            let current = now / 30;
            if now % 30 >= 28 || self.last_step.is_some_and(|last| last >= current) {
                std::thread::sleep(Duration::from_millis(2500));
                continue;
            }
            self.last_step = Some(current);
            return hotp(&self.secret, current);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        let secret = b"12345678901234567890";
        // RFC 6238 appendix B gives 8 digits; the last 6 are the 6-digit codes.
        for (t, code8) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(code_at(secret, t), code8[2..], "t={t}");
        }
    }

    #[test]
    fn rfc4226_hotp_vectors() {
        let expected = ["755224", "287082", "359152", "969429", "338314"];
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(hotp(b"12345678901234567890", i as u64), *want);
        }
    }
}
