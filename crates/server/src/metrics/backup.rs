//! Scheduled backups' figures (`carevault_backup_*`): written by the schedule in the serve
//! process, rendered by `/metrics`. Cheap atomics; 0 means "never".

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::single;

#[derive(Default)]
pub struct BackupStats {
    last_success_us: AtomicI64,
    /// The last successful backup's duration, in milliseconds.
    duration_ms: AtomicU64,
    size_bytes: AtomicU64,
    failures: AtomicU64,
    last_verify_success_us: AtomicI64,
    /// `backup.schedule` in seconds; 0: scheduled backups are off.
    schedule_secs: AtomicU64,
}

impl BackupStats {
    pub fn set_schedule(&self, every: std::time::Duration) {
        self.schedule_secs.store(every.as_secs(), Ordering::Relaxed);
    }

    /// A backup written at `at_us`, taking `duration`, of `size` bytes.
    pub fn record_success(&self, at_us: i64, duration: std::time::Duration, size: u64) {
        self.last_success_us.store(at_us, Ordering::Relaxed);
        self.duration_ms.store(
            u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.size_bytes.store(size, Ordering::Relaxed);
    }

    /// What a previous run of the server knew (read back at start); older figures never
    /// replace newer ones.
    pub fn restore_success(&self, at_us: i64, duration: std::time::Duration, size: u64) {
        if at_us > self.last_success_us.load(Ordering::Relaxed) {
            self.record_success(at_us, duration, size);
        }
    }

    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_verify_success(&self, at_us: i64) {
        self.last_verify_success_us
            .fetch_max(at_us, Ordering::Relaxed);
    }

    pub fn last_success_us(&self) -> i64 {
        self.last_success_us.load(Ordering::Relaxed)
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let secs = |us: i64| us.div_euclid(1_000_000);
        single(
            &mut out,
            "carevault_backup_schedule_seconds",
            "gauge",
            "The period of scheduled backups (backup.schedule); 0 when they are off.",
            self.schedule_secs.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "carevault_backup_last_success_timestamp_seconds",
            "gauge",
            "When the newest scheduled backup of this node was written (Unix seconds; 0: none).",
            secs(self.last_success_us.load(Ordering::Relaxed)),
        );
        single(
            &mut out,
            "carevault_backup_duration_seconds",
            "gauge",
            "How long the newest scheduled backup took.",
            self.duration_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        );
        single(
            &mut out,
            "carevault_backup_size_bytes",
            "gauge",
            "The size of the newest scheduled backup file.",
            self.size_bytes.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "carevault_backup_failures_total",
            "counter",
            "Scheduled backups (or their pruning) that failed since the server started.",
            self.failures.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "carevault_backup_last_verify_success_timestamp_seconds",
            "gauge",
            "When a backup last passed verification on this node (Unix seconds; 0: never).",
            secs(self.last_verify_success_us.load(Ordering::Relaxed)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_backup_family() {
        let s = BackupStats::default();
        s.record_success(
            1_796_503_200_500_000,
            std::time::Duration::from_millis(2500),
            4096,
        );
        s.restore_success(1_000_000, std::time::Duration::from_secs(9), 9);
        s.record_failure();
        let text = s.text();
        for line in [
            "carevault_backup_last_success_timestamp_seconds 1796503200\n",
            "carevault_backup_duration_seconds 2.5\n",
            "carevault_backup_size_bytes 4096\n",
            "carevault_backup_failures_total 1\n",
            "carevault_backup_schedule_seconds 0\n",
            "carevault_backup_last_verify_success_timestamp_seconds 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
