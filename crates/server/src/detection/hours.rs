//! The unusual-hours rule's baseline: per principal, how many of its requests fell in each hour
//! of the day. The hours are UTC: a baseline is compared only with itself, so the time zone does
//! not matter. A principal's baseline counts as learned once it has been watched for the learning
//! period and made enough requests; from then on a request in an hour that, with its two
//! neighbours, held under 0.5% of the principal's requests is unusual.
//!
//! Bounded like the counting rules: at most `capacity` principals (those not seen for the
//! learning period make room first). Old habits fade: when a principal's count reaches
//! [`HALVE_AT`], every hour's count is halved. The baseline lives in memory, so after a restart
//! it is learned again before it alerts (a restart can cost alerts, never cause false ones).

use std::sync::Mutex;

use super::window::PreHashedMap;

const HOUR_US: i64 = 3_600_000_000;
/// Requests at which a baseline's counts are halved.
const HALVE_AT: u64 = 1 << 20;
/// An hour (with its neighbours) holding fewer than 1/UNUSUAL_SHARE of the requests is unusual.
const UNUSUAL_SHARE: u64 = 200;

struct Baseline {
    first_us: i64,
    last_us: i64,
    total: u64,
    hours: [u32; 24],
}

pub struct HourBaselines {
    capacity: usize,
    #[cfg(test)]
    hasher: std::collections::hash_map::RandomState,
    baselines: Mutex<PreHashedMap<Baseline>>,
}

impl HourBaselines {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            #[cfg(test)]
            hasher: Default::default(),
            baselines: Mutex::new(PreHashedMap::default()),
        }
    }

    /// `observe_key` with the principal hashed here (for tests).
    #[cfg(test)]
    pub fn observe(
        &self,
        principal: &str,
        now_us: i64,
        min_requests: u64,
        learning_us: i64,
    ) -> Option<u64> {
        let key = std::hash::BuildHasher::hash_one(&self.hasher, principal);
        self.observe_key(key, now_us, min_requests, learning_us)
    }

    /// Count a request of the principal whose keyed hash is `key` at `now_us` (the map does
    /// not hash its keys again). `Some(requests)` when the principal's baseline is learned
    /// (watched `learning_us`, at least `min_requests` requests) and this hour with its
    /// neighbours held only `requests` of them, under 0.5%.
    pub fn observe_key(
        &self,
        key: u64,
        now_us: i64,
        min_requests: u64,
        learning_us: i64,
    ) -> Option<u64> {
        let hour = usize::try_from(now_us.div_euclid(HOUR_US).rem_euclid(24)).unwrap_or(0);
        let mut baselines = self.baselines.lock().unwrap_or_else(|p| p.into_inner());
        if !baselines.contains_key(&key) && baselines.len() >= self.capacity {
            baselines.retain(|_, b| now_us - b.last_us < learning_us);
            if baselines.len() >= self.capacity {
                return None;
            }
        }
        let b = baselines.entry(key).or_insert(Baseline {
            first_us: now_us,
            last_us: now_us,
            total: 0,
            hours: [0; 24],
        });
        let learned = b.total >= min_requests && now_us - b.first_us >= learning_us;
        let around = [(hour + 23) % 24, hour, (hour + 1) % 24]
            .iter()
            .map(|h| u64::from(b.hours[*h]))
            .sum::<u64>();
        let unusual = learned && around.saturating_mul(UNUSUAL_SHARE) < b.total;
        b.hours[hour] = b.hours[hour].saturating_add(1);
        b.total += 1;
        b.last_us = now_us;
        if b.total >= HALVE_AT {
            for h in &mut b.hours {
                *h /= 2;
            }
            b.total = b.hours.iter().map(|h| u64::from(*h)).sum();
        }
        unusual.then_some(around)
    }

    /// Principals with a baseline now (for tests of the bound).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.baselines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_US: i64 = 24 * HOUR_US;

    /// A clinician working 08:00-17:00 for `days` days, `per_hour` requests an hour.
    fn office_hours(b: &HourBaselines, who: &str, days: i64, per_hour: i64) -> Option<u64> {
        let mut any = None;
        for day in 0..days {
            for hour in 8..17 {
                for i in 0..per_hour {
                    let t = day * DAY_US + hour * HOUR_US + i * (HOUR_US / per_hour);
                    any = any.or(b.observe(who, t, 500, 14 * DAY_US));
                }
            }
        }
        any
    }

    #[test]
    fn a_learned_principal_alerts_at_night_and_not_in_office_hours() {
        let b = HourBaselines::new(16);
        assert_eq!(
            office_hours(&b, "dr-a", 15, 10),
            None,
            "usual hours never alert"
        );
        let day = 15 * DAY_US;
        assert_eq!(
            b.observe("dr-a", day + 10 * HOUR_US, 500, 14 * DAY_US),
            None
        );
        // 07:30 is next to a working hour: not unusual.
        assert_eq!(
            b.observe("dr-a", day + 7 * HOUR_US + HOUR_US / 2, 500, 14 * DAY_US),
            None
        );
        // 03:00 has never been seen.
        assert_eq!(
            b.observe("dr-a", day + 3 * HOUR_US, 500, 14 * DAY_US),
            Some(0)
        );
    }

    #[test]
    fn nothing_alerts_while_learning() {
        let b = HourBaselines::new(16);
        // Many requests but only 5 days watched: still learning.
        assert_eq!(office_hours(&b, "dr-b", 5, 100), None);
        assert_eq!(
            b.observe("dr-b", 5 * DAY_US + 3 * HOUR_US, 500, 14 * DAY_US),
            None
        );
        // Watched long enough but too few requests: still learning.
        let c = HourBaselines::new(16);
        assert_eq!(c.observe("svc", 0, 500, 14 * DAY_US), None);
        assert_eq!(c.observe("svc", 20 * DAY_US, 500, 14 * DAY_US), None);
    }

    #[test]
    fn principals_are_bounded_and_old_ones_make_room() {
        let b = HourBaselines::new(3);
        for who in ["a", "b", "c", "d"] {
            b.observe(who, 0, 500, DAY_US);
        }
        assert_eq!(
            b.len(),
            3,
            "the fourth is not tracked while the others are recent"
        );
        b.observe("e", 2 * DAY_US, 500, DAY_US);
        assert_eq!(
            b.len(),
            1,
            "principals idle for the learning period made room"
        );
    }

    #[test]
    fn counts_are_halved_so_habits_can_change() {
        let b = HourBaselines::new(2);
        for i in 0..HALVE_AT as i64 {
            b.observe("batch", 20 * DAY_US + 2 * HOUR_US + i % 1000, 1, 1);
        }
        let map = b.baselines.lock().unwrap();
        let baseline = map.values().next().unwrap();
        assert_eq!(baseline.total, HALVE_AT / 2);
        assert_eq!(u64::from(baseline.hours[2]), HALVE_AT / 2);
    }
}
