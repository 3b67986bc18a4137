//! Attack detection on the server's own traffic, in process, on every request, and the alerts
//! it raises.
//!
//! The HTTP layer calls [`Detection::inspect_request`] with the raw path and query before
//! anything is digested for the audit trail, [`Detection::inspect_body`] on each JSON body it
//! parses, and [`Detection::observe`] once the response is known (principal, status, patients
//! touched). Rules and their thresholds: `docs/monitoring.md`. Every counter is bounded
//! ([`window::Windows`]); alerts are de-duplicated per rule and principal ([`Alerts`]).
//!
//! Other parts of the server raise alerts of their own through [`Alerts::raise`]:
//!
//! ```no_run
//! # fn demo(detection: &carevault_server::detection::Detection) {
//! use carevault_server::detection::{AlertInput, Rule};
//! detection.alerts.raise(AlertInput::new(Rule::BackupFailed, "system", "local", 1));
//! # }
//! ```

mod alerts;
mod hours;
pub mod injection;
pub mod response;
mod rules;
pub mod syslog;
pub mod webhook;
pub mod window;

use std::hash::BuildHasher;
use std::sync::Arc;

pub use alerts::{Alert, AlertInput, AlertWriter, Alerts, QUEUE_CAPACITY};
use carevault_audit::AuditAction;
pub use rules::{Rule, Severity};
use window::Windows;

use crate::audit::Audit;
use crate::clock::SharedClock;
use crate::config::DetectionConfig;

/// Keys (principals, addresses) each rule tracks at most.
const TRACKED_KEYS: usize = 50_000;

/// A probe found in a request, waiting for the principal to be known.
#[derive(Clone, Debug)]
pub struct Finding {
    pub rule: Rule,
    /// Keyed digest of the value that matched.
    pub digest: String,
}

/// What the HTTP layer knows once a request is answered.
pub struct RequestFacts<'a> {
    pub principal: &'a str,
    pub client_ip: &'a str,
    pub action: AuditAction,
    pub status: u16,
    /// Patient compartments the request touched (`Patient/123`).
    pub patients: &'a [String],
    /// The keyed digest of the username a login attempt named.
    pub account_digest: Option<&'a str>,
    /// The principal a refused login or API key named (`target_principal` in the audit event).
    pub target_principal: Option<&'a str>,
    /// A failed login had the right password and a wrong second factor.
    pub second_factor_failed: bool,
    /// An API key was refused because the request came from outside its `allowed_cidrs`.
    pub key_outside_cidrs: bool,
    /// An API key bound to a client certificate came without it (or with another).
    pub key_without_its_certificate: bool,
    /// The answer was an integrity failure (a ciphertext that failed to open).
    pub integrity_failure: bool,
}

pub struct Detection {
    config: DetectionConfig,
    clock: SharedClock,
    /// One keyed hash for every rule's keys and items, so a request's principal is hashed once.
    keys: std::collections::hash_map::RandomState,
    pub alerts: Arc<Alerts>,
    failed_logins: Windows,
    stuffing: Windows,
    enrollments: Windows,
    patients: Windows,
    searches: Windows,
    not_found: Windows,
    totp_failures: Windows,
    hours: hours::HourBaselines,
    /// `detection.unusual_hours_learning_days` in µs, computed once.
    hours_learning_us: i64,
    /// API keys to revoke after bulk access (`detection.revoke_key_on_bulk`), taken by
    /// [`Detection::take_revocations`].
    revocations: response::Revocations,
    /// Addresses refused after credential stuffing (`detection.block_stuffing_minutes`).
    blocked: response::Blocklist,
}

impl Detection {
    pub fn new(config: DetectionConfig, audit: Arc<Audit>, clock: SharedClock) -> Self {
        let window =
            i64::try_from(config.window_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let windows = || Windows::new(window, TRACKED_KEYS);
        let hours_learning_us = i64::try_from(
            config
                .unusual_hours_learning_days
                .saturating_mul(86_400_000_000),
        )
        .unwrap_or(i64::MAX);
        Self {
            alerts: Arc::new(Alerts::new(audit, clock.clone(), config.dedup_secs)),
            config,
            clock,
            keys: Default::default(),
            failed_logins: windows(),
            stuffing: windows(),
            enrollments: windows(),
            patients: windows(),
            searches: windows(),
            not_found: windows(),
            totp_failures: windows(),
            hours: hours::HourBaselines::new(TRACKED_KEYS),
            hours_learning_us,
            revocations: response::Revocations::default(),
            blocked: response::Blocklist::default(),
        }
    }

    /// Seconds a request from `client_ip` is still refused for, after an automatic block.
    pub fn blocked_for(&self, client_ip: &str) -> Option<u64> {
        if self.config.block_stuffing_minutes == 0 {
            return None;
        }
        self.blocked.blocked_for(client_ip, self.clock.now_us())
    }

    /// The automatic response to credential stuffing, when configured: block the address.
    fn respond_to_stuffing(&self, client_ip: &str, now_us: i64) {
        let minutes = self.config.block_stuffing_minutes;
        if minutes == 0 {
            return;
        }
        let until = now_us
            .saturating_add(i64::try_from(minutes.saturating_mul(60_000_000)).unwrap_or(i64::MAX));
        if self.blocked.block(client_ip, until, now_us) {
            tracing::warn!(
                event = "security_response",
                rule = Rule::CredentialStuffing.id(),
                response = "block-address",
                client_ip,
                minutes
            );
            self.alerts.record_response(
                Rule::CredentialStuffing,
                "block-address",
                client_ip,
                minutes,
            );
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Injection probes in the path and the query's names and values (percent-decoded).
    pub fn inspect_request(&self, path: &str, query: Option<&str>) -> Option<Finding> {
        if !self.config.enabled {
            return None;
        }
        // A path is mostly `/`, letters and digits: scanned only when it has something else.
        let unusual = |b: &u8| {
            matches!(
                b,
                b'.' | b'%' | b'\'' | b'"' | b'<' | b';' | b'(' | b'\\' | b':' | b'@' | b'#'
            )
        };
        if path.as_bytes().iter().any(unusual)
            && let Some(probe) = injection::scan(path.as_bytes())
        {
            return Some(self.finding(probe, path));
        }
        let query = query?;
        if !injection::has_trigger(query.as_bytes()) {
            return None;
        }
        // The raw query has a trigger byte: look at each decoded name and value.
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            for part in [name, value] {
                if let Some(probe) = injection::scan(part.as_bytes()) {
                    return Some(self.finding(probe, &part));
                }
            }
        }
        None
    }

    /// Injection probes in a JSON body.
    pub fn inspect_body(&self, body: &[u8]) -> Option<Finding> {
        if !self.config.enabled {
            return None;
        }
        let probe = injection::scan(body)?;
        Some(Finding {
            rule: rule_of(probe),
            digest: self
                .alerts
                .digest(&String::from_utf8_lossy(body.get(..4096).unwrap_or(body))),
        })
    }

    fn finding(&self, probe: injection::Probe, value: &str) -> Finding {
        Finding {
            rule: rule_of(probe),
            digest: self.alerts.digest(value),
        }
    }

    /// Count what a request did, raise the alerts it crosses, and the alert of a probe found
    /// in it. Cheap when nothing applies: a counter map is locked only for the requests its
    /// rule counts.
    pub fn observe(&self, facts: &RequestFacts<'_>, finding: Option<Finding>) {
        if !self.config.enabled {
            return;
        }
        let now = self.clock.now_us();
        let c = &self.config;
        let principal = self.key(facts.principal);
        let raise_for = |rule: Rule, principal: &str, count: u64| {
            self.alerts
                .raise(AlertInput::new(rule, principal, facts.client_ip, count));
        };
        let raise = |rule: Rule, count: u64| raise_for(rule, facts.principal, count);
        if let Some(f) = finding {
            let mut input = AlertInput::new(f.rule, facts.principal, facts.client_ip, 1);
            input.digest = Some(f.digest);
            self.alerts.raise(input);
        }
        let failed = (400..500).contains(&facts.status);
        match facts.action {
            AuditAction::Login if failed => {
                let ip = self.key(facts.client_ip);
                // Alerts about one account name it (when it exists), so that the
                // de-duplication per principal keeps two accounts' alerts apart.
                let target = facts.target_principal.unwrap_or(facts.principal);
                if let Some(account) = facts.account_digest {
                    let key = self.key(account);
                    if let Some(n) = self
                        .failed_logins
                        .count(key, now, c.failed_logins_per_account)
                    {
                        raise_for(Rule::FailedLogins, target, n);
                    }
                    if facts.second_factor_failed
                        && let Some(n) =
                            self.totp_failures
                                .count(key, now, c.failed_totp_per_account)
                    {
                        raise_for(Rule::TotpGuessing, target, n);
                    }
                    let item = key;
                    if let Some(n) =
                        self.stuffing
                            .distinct(ip, item, now, c.stuffing_accounts_per_ip)
                    {
                        raise(Rule::CredentialStuffing, n);
                        self.respond_to_stuffing(facts.client_ip, now);
                    }
                }
            }
            AuditAction::EnrollStart | AuditAction::EnrollFinish if failed => {
                let key = self.key(facts.client_ip);
                if let Some(n) = self
                    .enrollments
                    .count(key, now, c.failed_enrollments_per_ip)
                {
                    raise(Rule::EnrollmentGuessing, n);
                }
            }
            AuditAction::BreakGlass if facts.status < 300 => raise(Rule::BreakGlass, 1),
            AuditAction::KekDestroy if facts.status < 300 => raise(Rule::KeyDestroyed, 1),
            AuditAction::SearchType
            | AuditAction::SearchSystem
            | AuditAction::SearchTypePost
            | AuditAction::SearchCompartment
            | AuditAction::Everything => {
                let key = principal;
                if let Some(n) = self.searches.count(key, now, c.searches_per_window) {
                    raise(Rule::SearchStorm, n);
                }
            }
            _ => {}
        }
        if matches!(facts.status, 403 | 404) {
            let who = if facts.principal == "anonymous" {
                facts.client_ip
            } else {
                facts.principal
            };
            let key = self.key(who);
            if let Some(n) = self.not_found.count(key, now, c.not_found_per_window) {
                raise(Rule::Enumeration, n);
            }
        }
        if !facts.patients.is_empty() && reads(facts.action) {
            let items: Vec<u64> = facts.patients.iter().map(|p| self.key(p)).collect();
            if let Some(n) =
                self.patients
                    .distinct_all(principal, &items, now, c.distinct_patients_per_window)
            {
                raise(Rule::BulkPatients, n);
                if c.revoke_key_on_bulk {
                    self.revocations.request(facts.principal);
                }
            }
        }
        if facts.integrity_failure {
            raise(Rule::IntegrityFailure, 1);
        }
        if facts.key_outside_cidrs
            && let Some(key) = facts.target_principal
        {
            raise_for(Rule::KeyOutsideCidrs, key, 1);
        }
        if facts.key_without_its_certificate
            && let Some(key) = facts.target_principal
        {
            raise_for(Rule::KeyWithoutItsCertificate, key, 1);
        }
        if c.unusual_hours_min_requests > 0
            && !matches!(facts.principal, "anonymous" | "system" | "local")
            && let Some(n) = self.hours.observe_key(
                principal,
                now,
                c.unusual_hours_min_requests,
                self.hours_learning_us,
            )
        {
            raise(Rule::UnusualHours, n);
        }
    }

    fn key(&self, value: &str) -> u64 {
        self.keys.hash_one(value)
    }

    /// The API keys bulk access should revoke, once: the server's responder task takes them
    /// (see [`response::revoke_api_key`]).
    pub fn take_revocations(&self) -> Option<tokio::sync::mpsc::Receiver<crate::ApiKeyName>> {
        self.revocations.take()
    }
}

/// Interactions that read patients' records (writes touch patients too, but are not bulk reads).
fn reads(action: AuditAction) -> bool {
    matches!(
        action,
        AuditAction::Read
            | AuditAction::Vread
            | AuditAction::SearchType
            | AuditAction::SearchSystem
            | AuditAction::SearchTypePost
            | AuditAction::SearchCompartment
            | AuditAction::Everything
            | AuditAction::HistorySystem
            | AuditAction::HistoryType
            | AuditAction::HistoryInstance
            | AuditAction::Batch
            | AuditAction::Transaction
    )
}

fn rule_of(probe: injection::Probe) -> Rule {
    match probe {
        injection::Probe::Sql => Rule::SqlInjection,
        injection::Probe::Script => Rule::ScriptInjection,
        injection::Probe::PathTraversal => Rule::PathTraversal,
        injection::Probe::Ssrf => Rule::Ssrf,
    }
}

#[cfg(test)]
mod tests;
