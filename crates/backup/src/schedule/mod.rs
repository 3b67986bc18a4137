//! Scheduled backups, taken by `carevault serve` itself in a background task (requests never
//! wait for it): every `backup.schedule` into `backup.dir` as `carevault-YYYYMMDDTHHMMSSZ.age`,
//! then pruned by `backup.keep`.
//!
//! When is one due? On SQLite (one node), when the newest backup in the directory is a period
//! old (so a restart does not take an extra one). On PostgreSQL, several nodes share the
//! environment: each asks the database to claim the period (a compare-and-set on one row), and
//! only the node that wins takes the backup.
//!
//! A backup is written to a hidden `.carevault-....partial` file and renamed when complete, so a
//! crash or a full disk leaves no file that looks like a backup; such leftovers are removed
//! when the schedule starts and never count as backups.
//!
//! After a backup: off-site copies (`crate::offsite`). Between backups, when
//! `backup.verify_schedule` is set: a verification of the newest backup (`verify`). One task
//! does all three in turn, so they never compete for the disk or the status file.

mod retention;
mod status;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carevault_server::SharedClock;
use carevault_server::config::{BackupSchedule, Config, Database};
use carevault_server::detection::{AlertInput, Alerts, Rule};
use carevault_server::metrics::BackupStats;
use carevault_store::PostgresStore;

pub use retention::retained;
pub use status::{Failure, OffsiteStatus, STATUS_FILE, Status, Success, Verification, read_status};

use crate::offsite::{Attempt, Offsite};
use crate::{BackupError, Encryption, Result, io};

const PREFIX: &str = "carevault-";
const SUFFIX: &str = ".age";
/// The longest sleep between two looks at the schedule (the clock may be set).
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// The wait before trying again after the schedule itself failed (a database unreachable).
const RETRY: Duration = Duration::from_secs(30);

/// The file name of a backup taken at `us` (UTC, to the second).
pub fn backup_name(us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(us.div_euclid(1_000_000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    format!("{PREFIX}{}{SUFFIX}", t.format(&format).unwrap_or_default())
}

/// When the backup named `name` was taken (microseconds), if it is a scheduled backup's name.
pub fn parse_backup_name(name: &str) -> Option<i64> {
    let stamp = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = time::PrimitiveDateTime::parse(stamp, &format).ok()?;
    t.assume_utc().unix_timestamp().checked_mul(1_000_000)
}

/// The scheduled backups in `dir`, oldest first: (time taken, path).
pub fn list_backups(dir: &Path) -> Result<Vec<(i64, PathBuf)>> {
    let what = format!("cannot read the backup directory {}", dir.display());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(what.clone()))? {
        let entry = entry.map_err(io(what.clone()))?;
        if let Some(t) = parse_backup_name(&entry.file_name().to_string_lossy()) {
            out.push((t, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Delete the scheduled backups of `dir` that `schedule.keep` does not keep; the paths deleted.
pub fn prune(dir: &Path, keep: &carevault_server::config::Keep) -> Result<Vec<PathBuf>> {
    let backups = list_backups(dir)?;
    let times: Vec<i64> = backups.iter().map(|(t, _)| *t).collect();
    let kept = retained(keep, &times);
    let mut deleted = Vec::new();
    for (t, path) in backups {
        if !kept.contains(&t) {
            std::fs::remove_file(&path).map_err(io(format!("cannot delete {}", path.display())))?;
            deleted.push(path);
        }
    }
    Ok(deleted)
}

/// Remove what a crash mid-backup left in `dir` (`.carevault-*.partial`); how many.
pub(crate) fn remove_partials(dir: &Path) -> Result<usize> {
    let what = format!("cannot read the backup directory {}", dir.display());
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(io(what.clone()))? {
        let entry = entry.map_err(io(what.clone()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!(".{PREFIX}")) && name.ends_with(".partial") {
            std::fs::remove_file(entry.path())
                .map_err(io(format!("cannot delete {}", entry.path().display())))?;
            n += 1;
        }
    }
    Ok(n)
}

/// The running schedule's task; stopped when dropped.
pub struct ScheduleTask(tokio::task::JoinHandle<()>);

impl Drop for ScheduleTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Check `config`'s `[backup]` keys in full (the recipients, the passphrase file, the
/// directory), prepare the directory and start the schedule; None when no schedule is set. An
/// error names the key at fault.
pub async fn start(
    config: &Config,
    clock: SharedClock,
    stats: Arc<BackupStats>,
    alerts: Arc<Alerts>,
) -> Result<Option<ScheduleTask>> {
    let Some(plan) = config.backup.clone() else {
        return Ok(None);
    };
    stats.set_schedule(plan.every);
    let key = if plan.recipients.is_empty() {
        "backup.passphrase_file"
    } else {
        "backup.recipients"
    };
    let enc = Encryption::from_args(&plan.recipients, None, plan.passphrase_file.as_deref())
        .map_err(|e| BackupError::Usage(format!("configuration error in `{key}`: {e}")))?;
    let offsite = Offsite::open(&plan.offsite, |name| std::env::var(name).ok())?;
    prepare_dir(&plan.dir)?;
    let removed = remove_partials(&plan.dir)?;
    if removed > 0 {
        tracing::warn!(
            event = "backup_partials_removed",
            files = removed,
            "removed backups left incomplete by an interruption"
        );
    }
    if let Some(last) = read_status(&plan.dir).last_success {
        stats.restore_success(
            last.at_us,
            Duration::from_secs_f64(last.duration_secs.max(0.0)),
            last.size,
        );
    }
    let claims = match &config.database {
        Database::Postgres(pg) => {
            let mut options = pg.options();
            options.pool_size = 1;
            Some(PostgresStore::connect_existing(&options).await?)
        }
        _ => None,
    };
    let scheduler = Scheduler {
        config: config.clone(),
        plan,
        enc: Arc::new(enc),
        offsite: Arc::new(offsite),
        clock,
        claims,
        stats,
        alerts,
    };
    Ok(Some(ScheduleTask(tokio::spawn(scheduler.run()))))
}

/// Create `dir` (mode 0700) if absent; it must be a writable directory.
fn prepare_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let named = |e: std::io::Error| {
        BackupError::Usage(format!(
            "configuration error in `backup.dir`: cannot use {}: {}",
            dir.display(),
            e.kind()
        ))
    };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(named)?;
    }
    // Writable: a probe file, removed at once.
    tempfile::Builder::new()
        .prefix(&format!(".{PREFIX}probe."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(named)?;
    Ok(())
}

struct Scheduler {
    config: Config,
    plan: BackupSchedule,
    enc: Arc<Encryption>,
    offsite: Arc<Offsite>,
    clock: SharedClock,
    /// PostgreSQL: where the nodes claim each period.
    claims: Option<PostgresStore>,
    stats: Arc<BackupStats>,
    alerts: Arc<Alerts>,
}

impl Scheduler {
    async fn run(self) {
        let mut first = true;
        loop {
            let due = self.due().await;
            if first {
                first = false;
                let next_in_secs = match &due {
                    Ok(Some(wait)) => wait.as_secs(),
                    _ => 0,
                };
                tracing::info!(
                    event = "backup_schedule_started",
                    every_secs = self.plan.every.as_secs(),
                    next_in_secs,
                    shared = self.claims.is_some(),
                    "scheduled backups on"
                );
            }
            let mut wait = match due {
                Ok(None) => {
                    self.take().await;
                    continue;
                }
                Ok(Some(wait)) => wait,
                Err(e) => {
                    tracing::warn!(event = "backup_schedule_failed", error = %e, "cannot tell whether a backup is due");
                    self.failed(self.clock.now_us(), &e);
                    RETRY
                }
            };
            match self.verify_due() {
                Some(w) if w.is_zero() => {
                    self.verify_newest().await;
                    continue;
                }
                Some(w) => wait = wait.min(w),
                None => {}
            }
            tokio::time::sleep(wait.min(MAX_SLEEP)).await;
        }
    }

    /// None when a backup is due now (and, on PostgreSQL, this node claimed it), else how long
    /// until the next look.
    async fn due(&self) -> Result<Option<Duration>> {
        let now = self.clock.now_us();
        let every_us = i64::try_from(self.plan.every.as_micros()).unwrap_or(i64::MAX);
        if let Some(store) = &self.claims {
            return Ok(if store.claim_backup_slot(now, every_us).await? {
                None
            } else {
                Some((self.plan.every / 4).min(MAX_SLEEP))
            });
        }
        let newest = list_backups(&self.plan.dir)?.last().map(|(t, _)| *t);
        let due_at = newest.map_or(now, |t| t.saturating_add(every_us));
        Ok((due_at > now).then(|| {
            Duration::from_micros(u64::try_from(due_at - now).unwrap_or(0))
                .max(Duration::from_secs(1))
        }))
    }

    /// Take one backup and prune; failures are logged and alerted, never fatal.
    async fn take(&self) {
        let started = Instant::now();
        let at_us = self.clock.now_us();
        let out = self.plan.dir.join(backup_name(at_us));
        match crate::create(&self.config, &out, &self.enc, self.clock.clone()).await {
            Ok(report) => {
                tracing::info!(
                    event = "backup_created",
                    file = %out.display(),
                    bytes = report.size,
                    seconds = started.elapsed().as_secs_f64(),
                    "scheduled backup written"
                );
                self.stats
                    .record_success(at_us, started.elapsed(), report.size);
                self.note(|s| {
                    s.last_success = Some(Success {
                        at_us,
                        file: backup_name(at_us),
                        size: report.size,
                        duration_secs: started.elapsed().as_secs_f64(),
                        sha256: Some(report.sha256.clone()),
                    });
                });
                match prune(&self.plan.dir, &self.plan.keep) {
                    Ok(deleted) if !deleted.is_empty() => {
                        tracing::info!(event = "backups_pruned", files = deleted.len());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(event = "backup_prune_failed", error = %e);
                        self.failed(at_us, &e);
                    }
                }
                self.copy_offsite(&out, at_us, report.size).await;
            }
            Err(e) => {
                tracing::error!(event = "backup_failed", error = %e, "scheduled backup failed");
                self.failed(at_us, &e);
                // Not again at once: on SQLite the newest backup is still old.
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

impl Scheduler {
    /// Copy the backup `file` (written at `at_us`, `size` bytes) to every off-site target, in
    /// the blocking pool; each attempt is logged and counted, a target whose every attempt
    /// failed is recorded and alerted. The local file stays in any case.
    async fn copy_offsite(&self, file: &Path, at_us: i64, size: u64) {
        use carevault_server::metrics::OffsiteOutcome;
        if self.offsite.is_empty() {
            return;
        }
        let (offsite, keep, path) = (
            self.offsite.clone(),
            self.plan.keep.clone(),
            file.to_path_buf(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Attempt>();
        let copying = tokio::task::spawn_blocking(move || {
            offsite.copy(&path, &keep, |a| {
                let _ = tx.send(a);
            });
        });
        let name = backup_name(at_us);
        while let Some(a) = rx.recv().await {
            match &a.result {
                Ok(()) => {
                    tracing::info!(event = "backup_offsite_copied", to = a.target, attempt = a.attempt, file = %name);
                    self.stats.record_offsite(a.target, OffsiteOutcome::Copied);
                    self.note(|s| {
                        s.offsite.entry(a.target.to_owned()).or_default().last_copy =
                            Some(Success {
                                at_us,
                                file: name.clone(),
                                size,
                                duration_secs: a.elapsed.as_secs_f64(),
                                sha256: None,
                            });
                    });
                }
                Err(e) if a.attempt < crate::offsite::ATTEMPTS => {
                    tracing::warn!(event = "backup_offsite_retry", to = a.target, attempt = a.attempt, error = %e);
                    self.stats.record_offsite(a.target, OffsiteOutcome::Retried);
                }
                Err(e) => {
                    tracing::error!(event = "backup_offsite_failed", to = a.target, attempts = a.attempt, error = %e, "off-site copy failed; the local backup is kept");
                    self.stats.record_offsite(a.target, OffsiteOutcome::Failed);
                    self.note(|s| {
                        let t = s.offsite.entry(a.target.to_owned()).or_default();
                        t.failures += 1;
                        t.last_failure = Some(Failure {
                            at_us,
                            error: e.to_string(),
                        });
                    });
                    self.alerts
                        .raise(AlertInput::new(Rule::OffsiteFailed, "system", "local", 1));
                }
            }
        }
        let _ = copying.await;
    }

    /// None when scheduled verification is off or there is nothing to verify; else how long
    /// until the newest backup is due for verification (zero: now).
    fn verify_due(&self) -> Option<Duration> {
        let every = self.plan.verify_every?;
        list_backups(&self.plan.dir).ok()?.last()?;
        let now = self.clock.now_us();
        let every_us = i64::try_from(every.as_micros()).unwrap_or(i64::MAX);
        let due_at = read_status(&self.plan.dir)
            .last_verify
            .map_or(now, |v| v.at_us.saturating_add(every_us));
        Some(Duration::from_micros(
            u64::try_from(due_at.saturating_sub(now)).unwrap_or(0),
        ))
    }

    /// Verify the newest backup of the directory as far as this server can
    /// ([`verify::verify_file`]); record, count, and alert a failure.
    async fn verify_newest(&self) {
        let Some((_, file)) = list_backups(&self.plan.dir)
            .ok()
            .and_then(|b| b.last().cloned())
        else {
            return;
        };
        let at_us = self.clock.now_us();
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sha256 = read_status(&self.plan.dir)
            .last_success
            .filter(|l| l.file == name)
            .and_then(|l| l.sha256);
        let level = verify::level(&self.config, &self.enc);
        let result = verify::verify_file(
            &self.config,
            &self.enc,
            &file,
            sha256.as_deref(),
            self.clock.clone(),
        )
        .await;
        match &result {
            Ok(_) => {
                tracing::info!(event = "backup_verified", file = %name, level = level.as_str());
                self.stats.record_verify_success(at_us);
            }
            Err(e) => {
                tracing::error!(event = "backup_verify_failed", file = %name, level = level.as_str(), error = %e, "scheduled verification of the newest backup failed");
                self.stats.record_verify_failure(at_us);
                self.alerts.raise(AlertInput::new(
                    Rule::BackupVerifyFailed,
                    "system",
                    "local",
                    1,
                ));
            }
        }
        self.note(|s| {
            s.last_verify = Some(Verification {
                at_us,
                file: name,
                level: level.as_str().to_owned(),
                passed: result.is_ok(),
                error: result.as_ref().err().map(ToString::to_string),
            });
        });
    }

    /// Count, record and alert a failure.
    fn failed(&self, at_us: i64, error: &BackupError) {
        self.stats.record_failure();
        self.note(|s| {
            s.failures += 1;
            s.last_failure = Some(Failure {
                at_us,
                error: error.to_string(),
            });
        });
        backup_failed(&self.alerts, error);
    }

    /// Update the status file beside the backups (a failure to is logged, not fatal).
    fn note(&self, change: impl FnOnce(&mut Status)) {
        let mut status = read_status(&self.plan.dir);
        change(&mut status);
        if let Err(e) = status::write_status(&self.plan.dir, &status) {
            tracing::warn!(event = "backup_status_write_failed", error = %e);
        }
    }
}

/// What `carevault backup status` shows (also its `--output json`), from the configuration,
/// the status file and the backups in the directory.
pub fn status_report(
    config: &Config,
    clock: &dyn carevault_server::Clock,
) -> Result<serde_json::Value> {
    use carevault_server::clock::fhir_instant;
    let Some(plan) = &config.backup else {
        return Err(BackupError::Usage(
            "scheduled backups are off: set backup.schedule and backup.dir (see docs/backups.md)"
                .into(),
        ));
    };
    let status = read_status(&plan.dir);
    let backups = list_backups(&plan.dir).unwrap_or_default();
    let every_us = i64::try_from(plan.every.as_micros()).unwrap_or(i64::MAX);
    let newest = backups.last().map(|(t, _)| *t);
    let next = newest.map_or(clock.now_us(), |t| {
        t.saturating_add(every_us).max(clock.now_us())
    });
    Ok(serde_json::json!({
        "schedule": humanize(plan.every),
        "dir": plan.dir.display().to_string(),
        "keep": keep_text(&plan.keep),
        "last_success": status.last_success.as_ref().map(|l| serde_json::json!({
            "at": fhir_instant(l.at_us),
            "file": l.file,
            "size": l.size,
            "duration_secs": l.duration_secs,
        })),
        "last_failure": status.last_failure.as_ref().map(|f| serde_json::json!({
            "at": fhir_instant(f.at_us),
            "error": f.error,
        })),
        "failures": status.failures,
        "next_run": fhir_instant(next),
        "backups": backups.len(),
        "newest": backups.last().and_then(|(_, p)| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
        "verify_schedule": plan.verify_every.map(humanize),
        "last_verify": status.last_verify.as_ref().map(|v| serde_json::json!({
            "at": fhir_instant(v.at_us),
            "file": v.file,
            "level": v.level,
            "passed": v.passed,
            "error": v.error,
        })),
        "offsite": plan.offsite.iter().map(|t| {
            let s = status.offsite.get(t.label()).cloned().unwrap_or_default();
            serde_json::json!({
                "target": t.label(),
                "last_copy": s.last_copy.as_ref().map(|c| serde_json::json!({
                    "at": fhir_instant(c.at_us),
                    "file": c.file,
                })),
                "last_failure": s.last_failure.as_ref().map(|f| serde_json::json!({
                    "at": fhir_instant(f.at_us),
                    "error": f.error,
                })),
                "failures": s.failures,
            })
        }).collect::<Vec<_>>(),
    }))
}

fn humanize(every: Duration) -> String {
    let s = every.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{}m", s / 60)
    }
}

fn keep_text(keep: &carevault_server::config::Keep) -> String {
    use carevault_server::config::Period;
    keep.terms
        .iter()
        .map(|(n, p)| {
            let p = match p {
                Period::Last => "last",
                Period::Hourly => "hourly",
                Period::Daily => "daily",
                Period::Weekly => "weekly",
                Period::Monthly => "monthly",
                Period::Yearly => "yearly",
            };
            format!("{n} {p}")
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// A scheduled backup's failure beyond the log: an `operational.backup-failed` alert (in the
/// audit trail, `GET /alerts`, `carevault_alerts_total`), de-duplicated like every alert. The
/// error's text stays in the log and the status file; the alert carries no text.
fn backup_failed(alerts: &Alerts, error: &BackupError) {
    let _ = error;
    alerts.raise(AlertInput::new(Rule::BackupFailed, "system", "local", 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_partials_are_not_backups() {
        let us = 1_796_503_200 * 1_000_000; // 2026-12-05T20:40:00Z
        let name = backup_name(us + 123);
        assert_eq!(name, "carevault-20261205T204000Z.age");
        assert_eq!(parse_backup_name(&name), Some(us));
        for other in [
            ".carevault-20261205T204000Z.age.x1y2.partial",
            "carevault-20261205T204000Z.age.partial",
            "carevault-latest.age",
            "notes.txt",
        ] {
            assert_eq!(parse_backup_name(other), None, "{other}");
        }
    }

    #[test]
    fn start_leaves_no_partial_and_prune_keeps_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir
            .path()
            .join(".carevault-20261205T204000Z.age.abc.partial");
        std::fs::write(&partial, b"half a backup").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"kept").unwrap();
        prepare_dir(dir.path()).unwrap();
        assert_eq!(remove_partials(dir.path()).unwrap(), 1);
        assert!(!partial.exists());
        let day = 86_400 * 1_000_000;
        let start = 1_796_500_800 * 1_000_000;
        for d in 0..5 {
            std::fs::write(dir.path().join(backup_name(start + d * day)), b"x").unwrap();
        }
        let keep = carevault_server::config::Keep::parse("2 daily").unwrap();
        let deleted = prune(dir.path(), &keep).unwrap();
        assert_eq!(deleted.len(), 3);
        let left: Vec<i64> = list_backups(dir.path())
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(left, vec![start + 3 * day, start + 4 * day]);
        assert!(dir.path().join("notes.txt").exists());
    }
}
