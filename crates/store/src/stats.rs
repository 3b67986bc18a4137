//! What a store reports about itself for monitoring: file sizes, pool use, group-commit batch
//! sizes, commit latency, WAL checkpoints, and account and session counts. Numbers only: never
//! a row's content.
//!
//! [`Histogram`] is the one histogram of the workspace (the server's request durations use it
//! too): fixed buckets, atomics, no lock and no allocation on [`Histogram::observe`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) for latencies: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds for group-commit batch sizes (jobs per transaction; at most 512).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// A Prometheus histogram: per-bucket counts (the last bucket is `+Inf`), a sum and a count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    /// The sum in millionths (a microsecond for durations): one `fetch_add`, no CAS loop.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        // Saturating float-to-int cast: a negative value adds nothing.
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut running = 0u64;
        for b in self.buckets.iter() {
            running += b.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram at one instant: cumulative bucket counts (the last one is `+Inf`, the count).
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    pub cumulative: Vec<u64>,
    pub sum: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

/// Connections of a backend's pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUse {
    pub in_use: u64,
    pub idle: u64,
    /// The most the pool opens at once (SQLite: concurrent scans allowed).
    pub max: u64,
}

/// A store's view of itself, read at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreStats {
    /// The backend's name (`sqlite`, `postgres`), a label.
    pub backend: &'static str,
    /// The database's size on disk (SQLite: the file; PostgreSQL: `pg_database_size`).
    pub database_bytes: Option<u64>,
    /// SQLite's write-ahead log file.
    pub wal_bytes: Option<u64>,
    pub pool: PoolUse,
    /// Jobs (requests' writes) per committed transaction.
    pub batch_size: Option<HistogramSnapshot>,
    /// Seconds from a batch's first job to its commit being durable.
    pub commit_seconds: Option<HistogramSnapshot>,
    /// Seconds since the last WAL checkpoint that succeeded (SQLite).
    pub wal_checkpoint_age_seconds: Option<f64>,
}

/// Accounts and sessions, counted at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityCounts {
    pub locked_accounts: u64,
    pub active_sessions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0, 3.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, [2, 3, 5]);
        assert_eq!(s.count(), 5);
        assert!((s.sum - 9.0).abs() < 1e-9);
    }
}
