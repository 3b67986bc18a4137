//! Numbers: exact decimals, their parsing and comparison, and the R4 number semantics (the
//! implicit precision of a query number).

use std::cmp::Ordering;

use super::syntax::Prefix;

/// A decimal `m × 10^e`. Compare with [`dec_cmp`] (equal values can have different `m`/`e`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Dec {
    m: i128,
    e: i32,
}

/// At most this many significant digits in a query number.
const MAX_QUERY_DIGITS: usize = 30;
/// At most this many significant digits in a resource value (after dropping trailing zeros).
const MAX_VALUE_DIGITS: usize = 36;
const MAX_EXPONENT: i64 = 1000;

pub(super) struct RawNumber {
    negative: bool,
    /// The digits as written, without leading zeros (empty: zero).
    digits: String,
    /// The power of ten of the last digit.
    exp: i64,
}

/// Parses `-?digits(.digits)?([eE][+-]?digits)?`.
pub(super) fn parse_number(s: &str) -> Option<RawNumber> {
    let b = s.as_bytes();
    let mut pos = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        pos = 1;
    }
    let digit_run = |pos: &mut usize| {
        let start = *pos;
        while b.get(*pos).is_some_and(u8::is_ascii_digit) {
            *pos += 1;
        }
        start
    };
    let int_start = digit_run(&mut pos);
    if pos == int_start {
        return None;
    }
    let mut digits = s.get(int_start..pos)?.to_owned();
    let mut fraction = 0i64;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = digit_run(&mut pos);
        if pos == start {
            return None;
        }
        digits.push_str(s.get(start..pos)?);
        fraction = i64::try_from(pos - start).ok()?;
    }
    let mut exp = 0i64;
    if matches!(b.get(pos), Some(b'e' | b'E')) {
        pos += 1;
        let exp_negative = b.get(pos) == Some(&b'-');
        if matches!(b.get(pos), Some(b'+' | b'-')) {
            pos += 1;
        }
        let start = digit_run(&mut pos);
        if pos == start || pos - start > 6 {
            return None;
        }
        exp = s.get(start..pos)?.parse().ok()?;
        if exp_negative {
            exp = -exp;
        }
    }
    if pos != b.len() {
        return None;
    }
    Some(RawNumber {
        negative,
        digits: digits.trim_start_matches('0').to_owned(),
        exp: exp - fraction,
    })
}

impl RawNumber {
    fn to_dec(&self, digits: &str, exp: i64, max_digits: usize) -> Option<Dec> {
        if digits.len() > max_digits || exp.abs() > MAX_EXPONENT {
            return None;
        }
        let magnitude: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        Some(Dec {
            m: if self.negative { -magnitude } else { magnitude },
            e: i32::try_from(exp).ok()?,
        })
    }

    /// As written, keeping trailing zeros (they give the precision).
    pub(super) fn query_dec(&self) -> Option<Dec> {
        self.to_dec(&self.digits, self.exp, MAX_QUERY_DIGITS)
    }

    /// The exact value, trailing zeros dropped.
    pub(super) fn exact_dec(&self) -> Option<Dec> {
        let trimmed = self.digits.trim_end_matches('0');
        let dropped = i64::try_from(self.digits.len() - trimmed.len()).ok()?;
        let exp = if trimmed.is_empty() {
            0
        } else {
            self.exp + dropped
        };
        self.to_dec(trimmed, exp, MAX_VALUE_DIGITS)
    }
}

fn ndigits(x: u128) -> i64 {
    x.checked_ilog10().map_or(0, |d| i64::from(d) + 1)
}

fn scale_up(x: u128, k: i32) -> Option<u128> {
    10u128.checked_pow(u32::try_from(k).ok()?)?.checked_mul(x)
}

fn dec_cmp(a: Dec, b: Dec) -> Ordering {
    let (sa, sb) = (a.m.signum(), b.m.signum());
    if sa != sb || sa == 0 {
        return sa.cmp(&sb);
    }
    let (ua, ub) = (a.m.unsigned_abs(), b.m.unsigned_abs());
    let mag_a = ndigits(ua) + i64::from(a.e);
    let mag_b = ndigits(ub) + i64::from(b.e);
    let magnitude = if mag_a == mag_b {
        // Same order of magnitude: aligned, each has at most max(digits) <= 36 digits, which
        // fits in u128, so the fallback is unreachable.
        let e = a.e.min(b.e);
        match (scale_up(ua, a.e - e), scale_up(ub, b.e - e)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => Ordering::Equal,
        }
    } else {
        mag_a.cmp(&mag_b)
    };
    if sa > 0 {
        magnitude
    } else {
        magnitude.reverse()
    }
}

/// The R4 number semantics; `n` is the query number (its digits give the precision).
pub(super) fn number_matches(prefix: Prefix, n: Dec, v: Dec) -> bool {
    let (lo, hi) = implicit_range(n);
    let at_least = |a: Dec, b: Dec| dec_cmp(a, b) != Ordering::Less;
    let within = at_least(v, lo) && dec_cmp(v, hi) == Ordering::Less;
    match prefix {
        Prefix::Eq => within,
        Prefix::Ne => !within,
        Prefix::Gt => dec_cmp(v, n) == Ordering::Greater,
        Prefix::Lt => dec_cmp(v, n) == Ordering::Less,
        Prefix::Ge => at_least(v, n),
        Prefix::Le => at_least(n, v),
        Prefix::Sa => at_least(v, hi),
        Prefix::Eb => dec_cmp(v, lo) == Ordering::Less,
        Prefix::Ap => {
            let (near_lo, near_hi) = approximate_range(n);
            within || (at_least(v, near_lo) && at_least(near_hi, v))
        }
    }
}

/// The R4 semantics of a prefix against a range of values (R4 3.1.1.4.6.1, as for a Period):
/// `n`'s implicit range must contain the whole target range for `eq`; `gt`/`lt` (`ge`/`le`) ask
/// for some of the target above (below) `n`; `sa`/`eb` for all of it after (before) the implicit
/// range; `ap` for an overlap with `n` ± 10%. An absent bound is unbounded on that side.
pub(super) fn range_matches(prefix: Prefix, n: Dec, low: Option<Dec>, high: Option<Dec>) -> bool {
    let (lo, hi) = implicit_range(n);
    let at_least = |a: Dec, b: Dec| dec_cmp(a, b) != Ordering::Less;
    let contained = low.is_some_and(|l| at_least(l, lo))
        && high.is_some_and(|h| dec_cmp(h, hi) == Ordering::Less);
    match prefix {
        Prefix::Eq => contained,
        Prefix::Ne => !contained,
        Prefix::Gt => high.is_none_or(|h| dec_cmp(h, n) == Ordering::Greater),
        Prefix::Ge => high.is_none_or(|h| at_least(h, n)),
        Prefix::Lt => low.is_none_or(|l| dec_cmp(l, n) == Ordering::Less),
        Prefix::Le => low.is_none_or(|l| at_least(n, l)),
        Prefix::Sa => low.is_some_and(|l| at_least(l, hi)),
        Prefix::Eb => high.is_some_and(|h| dec_cmp(h, lo) == Ordering::Less),
        Prefix::Ap => {
            let (near_lo, near_hi) = approximate_range(n);
            low.is_none_or(|l| at_least(near_hi, l)) && high.is_none_or(|h| at_least(h, near_lo))
        }
    }
}

/// `[n - half a unit of its last digit, n + half)`: the implicit range of a query number.
fn implicit_range(n: Dec) -> (Dec, Dec) {
    let lo = Dec {
        m: n.m.saturating_mul(10).saturating_sub(5),
        e: n.e - 1,
    };
    let hi = Dec {
        m: n.m.saturating_mul(10).saturating_add(5),
        e: n.e - 1,
    };
    (lo, hi)
}

/// `[n - 10%, n + 10%]`, for `ap`.
fn approximate_range(n: Dec) -> (Dec, Dec) {
    let tenth = n.m.saturating_abs();
    let near_lo = Dec {
        m: n.m.saturating_mul(10).saturating_sub(tenth),
        e: n.e - 1,
    };
    let near_hi = Dec {
        m: n.m.saturating_mul(10).saturating_add(tenth),
        e: n.e - 1,
    };
    (near_lo, near_hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_parsing_and_comparison() {
        let dec = |s: &str| parse_number(s).and_then(|n| n.exact_dec()).expect("number");
        let q = |s: &str| parse_number(s).and_then(|n| n.query_dec()).expect("number");
        assert_eq!(dec_cmp(dec("5.40"), dec("5.4")), Ordering::Equal);
        assert_eq!(dec_cmp(dec("100"), dec("1e2")), Ordering::Equal);
        assert_eq!(dec_cmp(dec("0.001"), dec("1E-3")), Ordering::Equal);
        assert_eq!(dec_cmp(dec("-0"), dec("0.000")), Ordering::Equal);
        assert_eq!(dec_cmp(dec("5.449"), dec("5.45")), Ordering::Less);
        assert_eq!(dec_cmp(dec("-5.449"), dec("-5.45")), Ordering::Greater);
        assert_eq!(dec_cmp(dec("99"), dec("100")), Ordering::Less);
        assert_eq!(dec_cmp(dec("-1"), dec("0")), Ordering::Less);
        assert_eq!(dec_cmp(dec("1e300"), dec("1e-300")), Ordering::Greater);
        assert_eq!(
            dec_cmp(
                dec("123456789012345678901234567890123456"),
                dec("123456789012345678901234567890123457")
            ),
            Ordering::Less
        );
        assert_eq!((q("100").m, q("100").e), (100, 0));
        assert_eq!((q("5.40").m, q("5.40").e), (540, -2));
        assert_eq!((q("1e2").m, q("1e2").e), (1, 2));
        assert_eq!((q("-0.05").m, q("-0.05").e), (-5, -2));
        for bad in [
            "",
            "-",
            ".5",
            "5.",
            "5..4",
            "1e",
            "1e+",
            "0x10",
            "5,4",
            "1e1234567",
            " 5",
            "5 ",
            "+5",
            "NaN",
            "inf",
        ] {
            assert!(
                parse_number(bad).and_then(|n| n.query_dec()).is_none(),
                "{bad:?}"
            );
        }
        assert!(
            parse_number(&"9".repeat(31))
                .and_then(|n| n.query_dec())
                .is_none()
        );
        assert!(
            parse_number(&"9".repeat(30))
                .and_then(|n| n.query_dec())
                .is_some()
        );
    }
}
