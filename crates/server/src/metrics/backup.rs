//! Scheduled backups' figures (`carevault_backup_*`): written by the schedule in the serve
//! process, rendered by `/metrics`. Cheap atomics; 0 means "never".

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::{family, single};

/// Off-site target kinds (a metric label: `target`).
pub const OFFSITE_TARGETS: [&str; 2] = ["dir", "s3"];

/// What became of one off-site copy attempt (a metric label: `outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsiteOutcome {
    /// The copy is complete on the target.
    Copied,
    /// An attempt failed and another follows.
    Retried,
    /// Every attempt failed: the backup is only local.
    Failed,
}

impl OffsiteOutcome {
    const ALL: [Self; 3] = [Self::Copied, Self::Retried, Self::Failed];

    const fn as_str(self) -> &'static str {
        match self {
            Self::Copied => "copied",
            Self::Retried => "retried",
            Self::Failed => "failed",
        }
    }
}

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
    /// Off-site copies by [`OFFSITE_TARGETS`] and [`OffsiteOutcome`].
    offsite: [[AtomicU64; 3]; 2],
    /// Scheduled verifications: passed, failed.
    verifications: [AtomicU64; 2],
    last_verify_failure_us: AtomicI64,
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
        self.verifications[0].fetch_add(1, Ordering::Relaxed);
        self.last_verify_success_us
            .fetch_max(at_us, Ordering::Relaxed);
    }

    /// One off-site copy attempt's outcome on a target of kind `target` (`dir` or `s3`; any
    /// other name is not counted).
    pub fn record_offsite(&self, target: &str, outcome: OffsiteOutcome) {
        let Some(t) = OFFSITE_TARGETS.iter().position(|n| *n == target) else {
            return;
        };
        let o = OffsiteOutcome::ALL
            .iter()
            .position(|x| *x == outcome)
            .unwrap_or(0);
        self.offsite[t][o].fetch_add(1, Ordering::Relaxed);
    }

    /// A scheduled verification that failed at `at_us`.
    pub fn record_verify_failure(&self, at_us: i64) {
        self.verifications[1].fetch_add(1, Ordering::Relaxed);
        self.last_verify_failure_us
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
        single(
            &mut out,
            "carevault_backup_last_verify_failure_timestamp_seconds",
            "gauge",
            "When a scheduled verification of a backup last failed on this node (Unix seconds; 0: never).",
            secs(self.last_verify_failure_us.load(Ordering::Relaxed)),
        );
        self.labelled_text(&mut out);
        out
    }

    fn labelled_text(&self, out: &mut String) {
        use std::fmt::Write;
        family(
            out,
            "carevault_backup_verifications_total",
            "counter",
            "Scheduled verifications of the newest backup since the server started, by outcome.",
        );
        for (i, outcome) in ["passed", "failed"].iter().enumerate() {
            let n = self.verifications[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "carevault_backup_verifications_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        family(
            out,
            "carevault_backup_offsite_total",
            "counter",
            "Off-site copy attempts of scheduled backups since the server started, by target kind and outcome (copied, retried, failed: every attempt failed).",
        );
        for (t, target) in OFFSITE_TARGETS.iter().enumerate() {
            for (o, outcome) in OffsiteOutcome::ALL.iter().enumerate() {
                let n = self.offsite[t][o].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "carevault_backup_offsite_total{{target=\"{target}\",outcome=\"{}\"}} {n}",
                    outcome.as_str()
                );
            }
        }
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
        s.record_offsite("s3", OffsiteOutcome::Retried);
        s.record_offsite("s3", OffsiteOutcome::Failed);
        s.record_offsite("elsewhere", OffsiteOutcome::Failed);
        s.record_verify_failure(1_796_503_300_000_000);
        let text = s.text();
        for line in [
            "carevault_backup_last_success_timestamp_seconds 1796503200\n",
            "carevault_backup_duration_seconds 2.5\n",
            "carevault_backup_size_bytes 4096\n",
            "carevault_backup_failures_total 1\n",
            "carevault_backup_schedule_seconds 0\n",
            "carevault_backup_last_verify_success_timestamp_seconds 0\n",
            "carevault_backup_last_verify_failure_timestamp_seconds 1796503300\n",
            "carevault_backup_verifications_total{outcome=\"failed\"} 1\n",
            "carevault_backup_offsite_total{target=\"s3\",outcome=\"retried\"} 1\n",
            "carevault_backup_offsite_total{target=\"s3\",outcome=\"failed\"} 1\n",
            "carevault_backup_offsite_total{target=\"dir\",outcome=\"failed\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
