//! `[detection]`: whether attack detection runs, and every rule's threshold.

use super::ConfigError;
use super::file::DetectionSection;
use super::limits::bounded;
use crate::detection::syslog::SyslogTarget;
use crate::detection::webhook::WebhookTarget;

/// The detection rules' windows and thresholds (see `docs/monitoring.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectionConfig {
    pub enabled: bool,
    /// The window every counting rule counts in.
    pub window_secs: u64,
    /// An alert of the same rule and principal is not raised again within this time.
    pub dedup_secs: u64,
    pub failed_logins_per_account: u64,
    pub stuffing_accounts_per_ip: u64,
    pub failed_enrollments_per_ip: u64,
    pub distinct_patients_per_window: u64,
    pub searches_per_window: u64,
    pub not_found_per_window: u64,
    /// Where alerts are delivered besides the trail; None: nowhere.
    pub webhook: Option<WebhookTarget>,
    /// The syslog collector alerts are delivered to; None: none.
    pub syslog: Option<SyslogTarget>,
    /// Minutes an address is refused after credential stuffing from it; 0: no automatic block.
    pub block_stuffing_minutes: u64,
    /// Logins with the right password and a wrong second factor for one account in a window.
    pub failed_totp_per_account: u64,
    /// Requests a principal must have made before its hours of activity count as learned;
    /// 0: the unusual-hours rule is off.
    pub unusual_hours_min_requests: u64,
    /// Days a principal's activity is watched before an unusual hour can alert.
    pub unusual_hours_learning_days: u64,
    /// Revoke an API key that `bulk.distinct-patients` fired for (an automatic response).
    pub revoke_key_on_bulk: bool,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        // The defaults of an empty section always validate.
        Self::from_section(&DetectionSection::default())
            .unwrap_or_else(|e| unreachable!("default detection configuration is invalid: {e}"))
    }
}

impl DetectionConfig {
    pub(super) fn from_section(s: &DetectionSection) -> Result<Self, ConfigError> {
        Ok(Self {
            enabled: s.enabled.unwrap_or(true),
            window_secs: bounded("detection.window_secs", s.window_secs, 300, 1, 86_400)?,
            dedup_secs: bounded("detection.dedup_secs", s.dedup_secs, 900, 1, 604_800)?,
            failed_logins_per_account: bounded(
                "detection.failed_logins_per_account",
                s.failed_logins_per_account,
                10,
                2,
                1_000_000,
            )?,
            stuffing_accounts_per_ip: bounded(
                "detection.stuffing_accounts_per_ip",
                s.stuffing_accounts_per_ip,
                10,
                2,
                1_000_000,
            )?,
            failed_enrollments_per_ip: bounded(
                "detection.failed_enrollments_per_ip",
                s.failed_enrollments_per_ip,
                10,
                2,
                1_000_000,
            )?,
            distinct_patients_per_window: bounded(
                "detection.distinct_patients_per_window",
                s.distinct_patients_per_window,
                200,
                2,
                100_000,
            )?,
            searches_per_window: bounded(
                "detection.searches_per_window",
                s.searches_per_window,
                3_000,
                2,
                10_000_000,
            )?,
            not_found_per_window: bounded(
                "detection.not_found_per_window",
                s.not_found_per_window,
                50,
                2,
                10_000_000,
            )?,
            webhook: WebhookTarget::from_keys(
                s.webhook_url.as_deref(),
                s.webhook_secret_file.as_deref(),
                s.webhook_ca_file.as_deref(),
            )?,
            block_stuffing_minutes: bounded(
                "detection.block_stuffing_minutes",
                s.block_stuffing_minutes,
                0,
                0,
                1440,
            )?,
            failed_totp_per_account: bounded(
                "detection.failed_totp_per_account",
                s.failed_totp_per_account,
                3,
                2,
                1_000_000,
            )?,
            unusual_hours_min_requests: bounded(
                "detection.unusual_hours_min_requests",
                s.unusual_hours_min_requests,
                500,
                0,
                1_000_000_000,
            )?,
            unusual_hours_learning_days: bounded(
                "detection.unusual_hours_learning_days",
                s.unusual_hours_learning_days,
                14,
                1,
                365,
            )?,
            revoke_key_on_bulk: s.revoke_key_on_bulk.unwrap_or(false),
            syslog: SyslogTarget::from_keys(
                s.syslog_address.as_deref(),
                s.syslog_ca_file.as_deref(),
            )?,
        })
    }
}
