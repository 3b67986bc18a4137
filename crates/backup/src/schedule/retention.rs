//! Which scheduled backups a keep rule (`28 daily + 12 monthly`) keeps: for each term, walking
//! from the newest backup back, the first (newest) backup of each period not yet seen, until N
//! periods have one (the rule borg and restic call "keep-daily" etc.). The newest backup is
//! always kept.

use std::collections::BTreeSet;

use carevault_server::config::{Keep, Period};

/// The times (microseconds since the epoch, UTC) of `times_us` that `keep` keeps.
pub fn retained(keep: &Keep, times_us: &[i64]) -> BTreeSet<i64> {
    let mut newest_first: Vec<i64> = times_us.to_vec();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    newest_first.dedup();
    let mut kept: BTreeSet<i64> = newest_first.first().copied().into_iter().collect();
    for &(n, period) in &keep.terms {
        let mut last_period = None;
        let mut periods = 0;
        for &t in &newest_first {
            if periods >= n {
                break;
            }
            let p = period_of(period, t);
            if last_period != Some(p) {
                kept.insert(t);
                periods += 1;
                last_period = Some(p);
            }
        }
    }
    kept
}

/// A number naming the period (hour, day, ISO week, month, year) `us` falls in, in UTC.
fn period_of(period: Period, us: i64) -> i64 {
    let t = time::OffsetDateTime::from_unix_timestamp(us.div_euclid(1_000_000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let day = i64::from(t.date().to_julian_day());
    match period {
        Period::Last => us,
        Period::Hourly => day * 24 + i64::from(t.hour()),
        Period::Daily => day,
        Period::Weekly => {
            let (year, week, _) = t.date().to_iso_week_date();
            i64::from(year) * 100 + i64::from(week)
        }
        Period::Monthly => i64::from(t.year()) * 12 + i64::from(u8::from(t.month())),
        Period::Yearly => i64::from(t.year()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600 * 1_000_000;
    const DAY: i64 = 24 * HOUR;
    /// 2026-01-01T00:00:00Z.
    const START: i64 = 1_767_225_600 * 1_000_000;

    fn keep(rule: &str) -> Keep {
        Keep::parse(rule).unwrap()
    }

    #[test]
    fn the_newest_backup_of_each_recent_day_and_month_is_kept() {
        // A backup every 6 hours for a year (1,460 backups).
        let times: Vec<i64> = (0..365 * 4).map(|i| START + i * 6 * HOUR).collect();
        let kept = retained(&keep("28 daily + 12 monthly"), &times);
        let newest = *times.last().unwrap();
        assert!(kept.contains(&newest));
        // 28 days, each by its last backup (18:00), and the last backup of each of the 12
        // months (their last days' 18:00; December's is the newest, already a daily).
        let daily: BTreeSet<i64> = (0..28).map(|d| newest - d * DAY).collect();
        assert!(daily.is_subset(&kept));
        assert_eq!(kept.len(), 28 + 11, "{kept:?}");
        let last_of_june = START + (181 - 1) * DAY + 18 * HOUR; // 2026-06-30T18:00Z
        assert!(kept.contains(&last_of_june));
        assert!(!kept.contains(&(last_of_june - 6 * HOUR)));
    }

    #[test]
    fn missing_days_are_skipped_not_counted() {
        // Backups on days 0, 1 and 10 only: "2 daily" keeps days 10 and 1.
        let times = [START, START + DAY, START + 10 * DAY];
        let kept = retained(&keep("2 daily"), &times);
        assert_eq!(kept, BTreeSet::from([START + DAY, START + 10 * DAY]));
    }

    #[test]
    fn last_counts_backups_and_weekly_uses_iso_weeks() {
        let times: Vec<i64> = (0..10).map(|i| START + i * HOUR).collect();
        assert_eq!(retained(&keep("3 last"), &times).len(), 3);
        // 2026-01-04 is a Sunday, 2026-01-05 a Monday: two ISO weeks.
        let sunday = START + 3 * DAY;
        let monday = START + 4 * DAY;
        let kept = retained(&keep("5 weekly"), &[START, sunday, monday]);
        assert_eq!(kept, BTreeSet::from([sunday, monday]));
        assert!(retained(&keep("1 yearly"), &[]).is_empty());
    }
}
