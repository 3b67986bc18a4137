//! The server's own posture run: every `posture.interval_hours` (the first one
//! `posture.first_run_secs` after start, a minute by default), the local and database checks run in the server process; the counts by status and
//! the time of the last run are metrics (`carevault_posture_checks{status}`,
//! `carevault_posture_last_run_timestamp_seconds`), and a run with failures is logged and
//! handed to [`raise_alert`], the one place the alert API (being built) will be called from.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Report, Status};
use crate::audit::Audit;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::detection::{AlertInput, Alerts, Rule};
use crate::environment::Environment;

/// The last run's counts, for the metrics.
#[derive(Default)]
pub struct PostureRuns {
    last: Mutex<Option<Summary>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Summary {
    at_secs: i64,
    counts: [usize; 3],
}

impl PostureRuns {
    /// Remember `report`'s counts.
    pub fn record(&self, report: &Report, now_us: i64) {
        let counts = Status::ALL.map(|s| report.count(s));
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Summary {
            at_secs: now_us.div_euclid(1_000_000),
            counts,
        });
    }

    /// Prometheus text: nothing before the first run. Labels from the fixed set of statuses.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let Some(last) = *self.last.lock().unwrap_or_else(|p| p.into_inner()) else {
            return String::new();
        };
        let mut out = String::from(
            "# HELP carevault_posture_checks Posture checks of the last run, by status.\n\
             # TYPE carevault_posture_checks gauge\n",
        );
        for (status, n) in Status::ALL.iter().zip(last.counts) {
            let _ = writeln!(
                out,
                "carevault_posture_checks{{status=\"{}\"}} {n}",
                status.as_str()
            );
        }
        let _ = write!(
            out,
            "# HELP carevault_posture_last_run_timestamp_seconds When the last posture run ended.\n\
             # TYPE carevault_posture_last_run_timestamp_seconds gauge\n\
             carevault_posture_last_run_timestamp_seconds {}\n",
            last.at_secs
        );
        out
    }
}

/// One run of the checks the server can make of itself (all but `server.reachable`).
pub async fn run_once(config: &Config, env: &Environment, audit: &Audit, now_us: i64) -> Report {
    let mut findings = super::local::run(config, None, now_us);
    findings.extend(super::data::run(config, env, audit, None, now_us).await);
    Report::new(config.posture.tier.as_str(), now_us, findings)
}

/// Start the periodic run (None when `posture.interval_hours` is 0).
pub fn spawn(
    runs: Arc<PostureRuns>,
    config: Config,
    env: Environment,
    audit: Arc<Audit>,
    alerts: Arc<Alerts>,
    clock: SharedClock,
) -> Option<tokio::task::JoinHandle<()>> {
    let hours = config.posture.interval_hours;
    if hours == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(config.posture.first_run_secs)).await;
        let mut every = tokio::time::interval(Duration::from_secs(hours * 3600));
        loop {
            every.tick().await;
            let report = run_once(&config, &env, &audit, clock.now_us()).await;
            runs.record(&report, clock.now_us());
            let failed: Vec<&str> = report
                .findings
                .iter()
                .filter(|f| f.status == Status::Fail)
                .map(|f| f.id)
                .collect();
            tracing::info!(
                event = "posture_run",
                pass = report.count(Status::Pass),
                warn = report.count(Status::Warn),
                fail = failed.len()
            );
            if !failed.is_empty() {
                raise_alert(&alerts, &failed);
            }
        }
    }))
}

/// A posture run with failed checks raises one alert (`operational.posture-failed`, counting
/// them; de-duplicated like every alert), and `integrity.failure` too when the audit trail failed
/// verification, and logs the check ids (never paths' contents, names
/// or secrets).
pub fn raise_alert(alerts: &Alerts, failed_checks: &[&str]) {
    // A trail that no longer verifies is an integrity incident, not only a posture finding.
    if failed_checks.contains(&super::AUDIT_CHAIN.id) {
        alerts.raise(AlertInput::new(
            Rule::IntegrityFailure,
            "system",
            "local",
            1,
        ));
    }
    let count = u64::try_from(failed_checks.len()).unwrap_or(u64::MAX);
    alerts.raise(AlertInput::new(
        Rule::PostureFailed,
        "system",
        "local",
        count,
    ));
    tracing::warn!(
        event = "posture_checks_failed",
        checks = %failed_checks.join(","),
        "the periodic posture run found failed checks; run `carevault doctor` for the fixes"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_appear_after_the_first_run_with_fixed_labels() {
        let runs = PostureRuns::default();
        assert_eq!(runs.metrics_text(), "");
        let report = Report::new(
            "development",
            0,
            vec![
                super::super::CONFIG_VALID.pass("ok"),
                super::super::AUDIT_CHAIN.fail("broken", "investigate"),
            ],
        );
        runs.record(&report, 5_000_000);
        let text = runs.metrics_text();
        assert!(
            text.contains("carevault_posture_checks{status=\"pass\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("carevault_posture_checks{status=\"warn\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("carevault_posture_checks{status=\"fail\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("carevault_posture_last_run_timestamp_seconds 5\n"),
            "{text}"
        );
    }
}
