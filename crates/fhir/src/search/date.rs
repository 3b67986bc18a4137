//! Date parameters: every value is a UTC range; the calendar, date parsing, the year, month and
//! day keys of the blind index, and the R4 prefix semantics for ranges.

use std::collections::BTreeSet;

use serde_json::Value;

use super::extract::{member, selected};
use super::params::{Kind, ParamDef};
use super::syntax::Prefix;

/// Years before this one share the year key `y:-`.
pub const MIN_BUCKET_YEAR: i64 = 1800;
/// Years after this one share the year key `y:+`.
pub const MAX_BUCKET_YEAR: i64 = 2200;
/// A bounded date range touching at most this many days gets day keys.
pub const MAX_DAY_BUCKETS: i64 = 62;
/// A bounded date range touching at most this many months gets month keys.
pub const MAX_MONTH_BUCKETS: i64 = 24;
/// An `eq` date query touching at most this many days is looked up by day keys.
const EQ_DAY_CANDIDATES: i64 = 7;

const US_PER_SEC: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_SEC;
pub(super) const OPEN_LO: i64 = i64::MIN;
pub(super) const OPEN_HI: i64 = i64::MAX;

/// A half-open UTC range of microseconds since 1970; `lo == OPEN_LO` / `hi == OPEN_HI`: open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Range {
    pub(super) lo: i64,
    pub(super) hi: i64,
}

pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub(super) fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

fn digits_at(bytes: &[u8], at: usize, n: usize) -> Option<i64> {
    let slice = bytes.get(at..at.checked_add(n)?)?;
    slice.iter().try_fold(0i64, |acc, b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

impl Range {
    /// Whether the range is one whole calendar year (UTC), as a `YYYY` value parses.
    pub(crate) fn is_whole_year(&self) -> bool {
        if self.lo.rem_euclid(US_PER_DAY) != 0 {
            return false;
        }
        let (year, month, day) = civil_from_days(day_of(self.lo));
        month == 1 && day == 1 && self.hi == days_from_civil(year + 1, 1, 1) * US_PER_DAY
    }
}

fn day_range(first_day: i64, end_day: i64) -> Range {
    Range {
        lo: first_day * US_PER_DAY,
        hi: end_day * US_PER_DAY,
    }
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm[:ss[.f+]][Z|(+|-)hh:mm]` into the
/// UTC range its precision covers (no time zone: UTC).
pub(super) fn parse_date(s: &str) -> Option<Range> {
    let b = s.as_bytes();
    let year = digits_at(b, 0, 4)?;
    if year < 1 {
        return None;
    }
    if b.len() == 4 {
        return Some(day_range(
            days_from_civil(year, 1, 1),
            days_from_civil(year + 1, 1, 1),
        ));
    }
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = digits_at(b, 5, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if b.len() == 7 {
        let end = if month == 12 {
            days_from_civil(year + 1, 1, 1)
        } else {
            days_from_civil(year, month + 1, 1)
        };
        return Some(day_range(days_from_civil(year, month, 1), end));
    }
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let day = digits_at(b, 8, 2)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let day_number = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(day_range(day_number, day_number + 1));
    }
    if b.get(10) != Some(&b'T') {
        return None;
    }
    let hour = digits_at(b, 11, 2)?;
    let minute = digits_at(b, 14, 2)?;
    if b.get(13) != Some(&b':') || hour > 23 || minute > 59 {
        return None;
    }
    let mut pos = 16;
    let mut second = 0;
    let mut micros = 0;
    let mut width = 60 * US_PER_SEC;
    if b.get(pos) == Some(&b':') {
        second = digits_at(b, 17, 2)?;
        if second > 60 {
            return None;
        }
        pos = 19;
        width = US_PER_SEC;
        if b.get(pos) == Some(&b'.') {
            pos += 1;
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            let count = pos - start;
            if count == 0 {
                return None;
            }
            let used = count.min(6);
            let scale = 10i64.pow(u32::try_from(6 - used).ok()?);
            micros = digits_at(b, start, used)? * scale;
            width = scale;
        }
    }
    let offset = match b.get(pos..)? {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits_at(&[*h1, *h2], 0, 2)?;
            let minutes = digits_at(&[*m1, *m2], 0, 2)?;
            if hours > 14 || minutes > 59 {
                return None;
            }
            let offset = (hours * 3600 + minutes * 60) * US_PER_SEC;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let lo = day_number * US_PER_DAY + (hour * 3600 + minute * 60 + second) * US_PER_SEC + micros
        - offset;
    Some(Range { lo, hi: lo + width })
}

fn day_of(us: i64) -> i64 {
    us.div_euclid(US_PER_DAY)
}

fn year_of(us: i64) -> i64 {
    civil_from_days(day_of(us)).0
}

fn month_index_of(us: i64) -> i64 {
    let (year, month, _) = civil_from_days(day_of(us));
    year * 12 + month - 1
}

/// `y:` keys for the years `from..=to`, years beyond the horizon folded into `y:-` and `y:+`.
fn year_keys(from: i64, to: i64, out: &mut Vec<String>) {
    if from > to {
        return;
    }
    if from < MIN_BUCKET_YEAR {
        out.push("y:-".to_owned());
    }
    for year in from.max(MIN_BUCKET_YEAR)..=to.min(MAX_BUCKET_YEAR) {
        out.push(format!("y:{year:04}"));
    }
    if to > MAX_BUCKET_YEAR {
        out.push("y:+".to_owned());
    }
}

fn day_keys(first: i64, last: i64, out: &mut Vec<String>) {
    for day in day_of(first)..=day_of(last) {
        let (y, m, d) = civil_from_days(day);
        out.push(format!("d:{y:04}-{m:02}-{d:02}"));
    }
}

fn month_keys(first: i64, last: i64, out: &mut Vec<String>) {
    for index in month_index_of(first)..=month_index_of(last) {
        let (y, m) = (index.div_euclid(12), index.rem_euclid(12) + 1);
        out.push(format!("m:{y:04}-{m:02}"));
    }
}

/// The index keys of one date range (see the module documentation).
fn range_keys(range: Range, keys: &mut BTreeSet<String>) {
    let mut out = Vec::new();
    match (range.lo == OPEN_LO, range.hi == OPEN_HI) {
        (true, true) => {
            out.push("y:-".to_owned());
            out.push("y:+".to_owned());
        }
        (true, false) => {
            out.push("y:-".to_owned());
            let last = year_of(range.hi - 1);
            year_keys(last, last, &mut out);
        }
        (false, true) => {
            let first = year_of(range.lo);
            year_keys(first, first, &mut out);
            out.push("y:+".to_owned());
        }
        (false, false) => {
            let (first, last) = (range.lo, range.hi - 1);
            year_keys(year_of(first), year_of(last), &mut out);
            if month_index_of(last) - month_index_of(first) < MAX_MONTH_BUCKETS {
                month_keys(first, last, &mut out);
            }
            if day_of(last) - day_of(first) < MAX_DAY_BUCKETS {
                day_keys(first, last, &mut out);
            }
        }
    }
    keys.extend(out);
}

/// The index keys of a date parameter: those of each of its ranges.
pub(super) fn index_keys(def: &ParamDef, resource: &Value, keys: &mut BTreeSet<String>) {
    for range in ranges(def, resource) {
        range_keys(range, keys);
    }
}

/// Candidate keys of a date query (see [`candidate_keys`](super::candidate_keys)).
pub(super) fn candidate_keys(prefix: Prefix, s: Range) -> Option<Vec<String>> {
    let (first, last) = (s.lo, s.hi - 1);
    let mut out = Vec::new();
    match prefix {
        Prefix::Ne => return None,
        Prefix::Eq => {
            // A matching value lies inside the query range, so it touches no more days (or
            // months) than the range does, and has day (month) keys when the range is short.
            if day_of(last) - day_of(first) < EQ_DAY_CANDIDATES {
                day_keys(first, last, &mut out);
            } else if month_index_of(last) - month_index_of(first) < MAX_MONTH_BUCKETS {
                month_keys(first, last, &mut out);
            } else {
                year_keys(year_of(first), year_of(last), &mut out);
            }
        }
        Prefix::Ap => {
            // Overlap: a bounded value touches a year of the range; open values have y:-/y:+.
            year_keys(year_of(first), year_of(last), &mut out);
            for key in ["y:-", "y:+"] {
                if !out.iter().any(|k| k == key) {
                    out.push(key.to_owned());
                }
            }
        }
        // The value's last instant is at or after the end of the query range.
        Prefix::Gt | Prefix::Sa => year_keys(year_of(s.hi), i64::MAX, &mut out),
        Prefix::Ge => year_keys(year_of(first), i64::MAX, &mut out),
        // The value's first instant is before the start of the query range.
        Prefix::Lt | Prefix::Eb => year_keys(i64::MIN, year_of(first - 1), &mut out),
        Prefix::Le => year_keys(i64::MIN, year_of(last), &mut out),
    }
    Some(out)
}

/// The R4 prefix semantics for ranges: `s` is the query range, `t` the resource's.
pub(super) fn date_matches(prefix: Prefix, s: Range, t: Range) -> bool {
    let contains = s.lo <= t.lo && t.hi <= s.hi;
    match prefix {
        Prefix::Eq => contains,
        Prefix::Ne => !contains,
        Prefix::Gt => t.hi > s.hi,
        Prefix::Lt => t.lo < s.lo,
        Prefix::Ge => t.hi > s.hi || contains,
        Prefix::Le => t.lo < s.lo || contains,
        Prefix::Sa => t.lo >= s.hi,
        Prefix::Eb => t.hi <= s.lo,
        Prefix::Ap => t.lo < s.hi && t.hi > s.lo,
    }
}

/// `YYYY-MM-DDThh:mm:ss.ffffffZ`, clamped to years 0001..=9999.
pub(super) fn format_instant(us: i64) -> String {
    let min = days_from_civil(1, 1, 1) * US_PER_DAY;
    let max = days_from_civil(10_000, 1, 1) * US_PER_DAY - 1;
    let us = us.clamp(min, max);
    let (year, month, day) = civil_from_days(day_of(us));
    let within = us.rem_euclid(US_PER_DAY);
    let seconds = within / US_PER_SEC;
    let micros = within % US_PER_SEC;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// The date ranges of a date parameter. Values that do not parse are left out.
pub(super) fn ranges(def: &ParamDef, resource: &Value) -> Vec<Range> {
    let mut out = Vec::new();
    for path in &def.paths {
        for value in selected(resource, &path.segs) {
            let range = match path.kind {
                Kind::Date => value.as_str().and_then(parse_date),
                Kind::Period => period_range(value),
                Kind::Timing => timing_range(value),
                _ => None,
            };
            out.extend(range);
        }
    }
    out
}

/// `start..end` (open where absent). `None` if both are absent or one does not parse.
fn period_range(value: &Value) -> Option<Range> {
    let bound = |key: &str| -> Option<Option<Range>> {
        match value.get(key) {
            None => Some(None),
            Some(v) => v.as_str().and_then(parse_date).map(Some),
        }
    };
    let start = bound("start")?;
    let end = bound("end")?;
    match (start, end) {
        (None, None) => None,
        (Some(s), None) => Some(Range {
            lo: s.lo,
            hi: OPEN_HI,
        }),
        (None, Some(e)) => Some(Range {
            lo: OPEN_LO,
            hi: e.hi,
        }),
        (Some(s), Some(e)) => Some(Range {
            lo: s.lo.min(e.lo),
            hi: s.hi.max(e.hi),
        }),
    }
}

/// The outer limits of a Timing: its events and `repeat.boundsPeriod`.
fn timing_range(value: &Value) -> Option<Range> {
    let mut parts = Vec::new();
    for event in member(value, "event") {
        parts.push(event.as_str().and_then(parse_date)?);
    }
    if let Some(bounds) = value.get("repeat").and_then(|r| r.get("boundsPeriod")) {
        parts.push(period_range(bounds)?);
    }
    let lo = parts.iter().map(|r| r.lo).min()?;
    let hi = parts.iter().map(|r| r.hi).max()?;
    Some(Range { lo, hi })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_parsing() {
        let day = |y, m, d| days_from_civil(y, m, d) * US_PER_DAY;
        let t = day(2024, 3, 3) + 10 * 3600 * US_PER_SEC;
        for (text, lo, hi) in [
            ("1984", day(1984, 1, 1), day(1985, 1, 1)),
            ("1984-02", day(1984, 2, 1), day(1984, 3, 1)),
            ("1984-12", day(1984, 12, 1), day(1985, 1, 1)),
            ("1984-02-29", day(1984, 2, 29), day(1984, 3, 1)),
            ("2024-03-03T10:00", t, t + 60 * US_PER_SEC),
            ("2024-03-03T10:00:00Z", t, t + US_PER_SEC),
            ("2024-03-03T11:30:00+01:30", t, t + US_PER_SEC),
            ("2024-03-03T10:00:00.5Z", t + 500_000, t + 600_000),
            ("2024-03-03T10:00:00.123456789Z", t + 123_456, t + 123_457),
            ("1970-01-01", 0, US_PER_DAY),
        ] {
            assert_eq!(parse_date(text), Some(Range { lo, hi }), "{text:?}");
        }
        for bad in [
            "",
            "198",
            "19844",
            "0000",
            "1984-13",
            "1984-00",
            "1984-02-30",
            "1983-02-29",
            "1900-02-29",
            "1984-1-01",
            "1984/01",
            "1984-01-01T",
            "1984-01-01T24:00",
            "1984-01-01T10:60",
            "1984-01-01T10:00:61",
            "1984-01-01T10:00:00.",
            "1984-01-01T10:00:00+15:00",
            "1984-01-01T10:00:00+01",
            "1984-01-01Z",
            "1984-01-01T10:00:00ZZ",
            " 1984",
            "1984 ",
            "１９８４",
            "CANARY-9Q",
        ] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
        assert!(parse_date("2000-02-29").is_some());
        assert!(parse_date("1984-01-01T10:00:60Z").is_some());
    }

    #[test]
    fn calendar_round_trip() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
    }
}
