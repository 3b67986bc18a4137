//! RFC 6238 TOTP as authenticator apps expect it: HMAC-SHA-1, 6 digits, 30-second steps,
//! issuer `CareVault`; one step of clock skew either way.

use totp_rs::{Algorithm, Builder, Totp};

use crate::error::{Error, Result};

pub const ISSUER: &str = "CareVault";
pub const STEP_SECS: u64 = 30;
/// 160-bit secrets, the length authenticator apps expect.
pub const SECRET_LEN: usize = 20;

fn build(secret: &[u8], account: &str) -> Result<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECS)
        .with_secret(secret.to_vec())
        .with_issuer(Some(ISSUER))
        .with_account_name(account)
        .build()
        .map_err(|e| Error::Internal(format!("totp: {e}")))
}

pub fn generate_secret() -> Result<[u8; SECRET_LEN]> {
    Ok(carevault_crypto::random_bytes()?)
}

/// The base32 secret and the `otpauth://` URI for an authenticator app.
pub fn provisioning(secret: &[u8], account: &str) -> Result<(String, String)> {
    let totp = build(secret, account)?;
    let uri = totp
        .to_url()
        .map_err(|e| Error::Internal(format!("totp uri: {e}")))?;
    Ok((totp.secret().to_base32(), uri))
}

/// What a code is worth at a moment, given the last step the account used.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Valid for this step, later than the last one used.
    Fresh(i64),
    /// Valid in the window, but only for a step already used (e.g. by enrollment or a login a
    /// moment ago): the person has the right authenticator and must wait for its next code.
    Replayed,
    Invalid,
}

/// If `code` is valid at `now_secs` (±1 step) for a step later than `last_step`, the step it
/// matched. Codes from `last_step` or earlier are replays and are refused.
pub fn verify(
    secret: &[u8],
    account: &str,
    code: &str,
    now_secs: i64,
    last_step: i64,
) -> Result<Option<i64>> {
    Ok(match check(secret, account, code, now_secs, last_step)? {
        Checked::Fresh(step) => Some(step),
        Checked::Replayed | Checked::Invalid => None,
    })
}

/// [`verify`], telling a replayed code from a wrong one.
pub fn check(
    secret: &[u8],
    account: &str,
    code: &str,
    now_secs: i64,
    last_step: i64,
) -> Result<Checked> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Checked::Invalid);
    }
    let totp = build(secret, account)?;
    let now = u64::try_from(now_secs).unwrap_or(0);
    let current = now / STEP_SECS;
    // Check every step in the window (not just the first match) so that a replayed code for an
    // old step cannot shadow a fresh one.
    let mut checked = Checked::Invalid;
    for step in current.saturating_sub(1)..=current + 1 {
        let step_i = i64::try_from(step).unwrap_or(i64::MAX);
        if totp
            .check(code, step * STEP_SECS)
            .is_some_and(|c| c == step)
        {
            if step_i > last_step {
                checked = Checked::Fresh(step_i);
            } else if checked == Checked::Invalid {
                checked = Checked::Replayed;
            }
        }
    }
    Ok(checked)
}

/// The current step at `now_secs`.
pub fn step_at(now_secs: i64) -> i64 {
    now_secs.div_euclid(STEP_SECS as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 secret "12345678901234567890", truncated to 6 digits.
    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (t, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            let step = step_at(t);
            assert_eq!(
                verify(secret, "a", code, t, 0).unwrap(),
                Some(step),
                "t={t}"
            );
        }
    }

    #[test]
    fn replay_and_window() {
        let secret = b"12345678901234567890";
        let t = 1_111_111_109;
        let step = step_at(t);
        assert_eq!(
            verify(secret, "a", "081804", t, step).unwrap(),
            None,
            "same step is a replay"
        );
        assert_eq!(
            verify(secret, "a", "081804", t + 30, 0).unwrap(),
            Some(step),
            "one step late is fine"
        );
        assert_eq!(
            verify(secret, "a", "081804", t + 90, 0).unwrap(),
            None,
            "three steps late is not"
        );
        assert_eq!(
            check(secret, "a", "081804", t, step).unwrap(),
            Checked::Replayed,
            "a used code is told apart from a wrong one"
        );
        assert_eq!(
            check(secret, "a", "081805", t, step).unwrap(),
            Checked::Invalid
        );
        assert_eq!(
            check(secret, "a", "081804", t + 90, step).unwrap(),
            Checked::Invalid,
            "outside the window, a used code is just wrong"
        );
        assert_eq!(verify(secret, "a", "08180", t, 0).unwrap(), None);
        assert_eq!(verify(secret, "a", "abcdef", t, 0).unwrap(), None);
    }

    #[test]
    fn provisioning_uri() {
        let (b32, uri) = provisioning(&[7u8; 20], "alice").unwrap();
        assert_eq!(b32.len(), 32);
        assert!(uri.starts_with("otpauth://totp/CareVault:alice?"), "{uri}");
        assert!(uri.contains("issuer=CareVault"));
    }
}
