//! Time is a parameter: session expiry, TOTP windows, throttling and enrollment expiry all read
//! it from a [`Clock`], so tests can control it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_us(&self) -> i64;

    fn now_secs(&self) -> i64 {
        self.now_us().div_euclid(1_000_000)
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    // The one place CareVault reads wall-clock time (clippy.toml disallows it elsewhere).
    #[allow(clippy::disallowed_methods)]
    fn now_us(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests).
#[derive(Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at_secs(secs: i64) -> Self {
        Self(AtomicI64::new(secs * 1_000_000))
    }

    pub fn advance_secs(&self, secs: i64) {
        self.0.fetch_add(secs * 1_000_000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// `2026-11-27T08:22:32.123456Z`, the FHIR `instant` form.
pub fn fhir_instant(us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.format(&format).unwrap_or_default()
}

/// `Fri, 27 Nov 2026 08:22:32 GMT`, the HTTP-date form (RFC 9110).
pub fn http_date(us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(us.div_euclid(1_000_000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&format).unwrap_or_default()
}

/// Parse an HTTP-date (`If-Modified-Since`) in its one current form, [`http_date`]'s, into
/// microseconds; None for anything else (RFC 9110 says to ignore a date that does not parse).
pub fn parse_http_date(s: &str) -> Option<i64> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let t = time::PrimitiveDateTime::parse(s.trim(), &format).ok()?;
    t.assume_utc().unix_timestamp().checked_mul(1_000_000)
}

/// Parse a FHIR `instant`/`dateTime` with a time zone into microseconds (for `_since`).
pub fn parse_instant(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            fhir_instant(1_795_767_752_123_456),
            "2026-11-27T08:22:32.123456Z"
        );
        assert_eq!(
            http_date(1_795_767_752_123_456),
            "Fri, 27 Nov 2026 08:22:32 GMT"
        );
        assert_eq!(
            parse_instant("2026-11-27T08:22:32.123456Z"),
            Some(1_795_767_752_123_456)
        );
        assert_eq!(parse_instant("yesterday"), None);
        assert_eq!(
            parse_http_date("Fri, 27 Nov 2026 08:22:32 GMT"),
            Some(1_795_767_752_000_000)
        );
        assert_eq!(parse_http_date("Friday, 27-Nov-26 08:22:32 GMT"), None);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_secs(100);
        assert_eq!(c.now_secs(), 100);
        c.advance_secs(5);
        assert_eq!(c.now_secs(), 105);
    }
}
