//! Alerts: raised by the detection rules (and by any other part of the server through
//! [`Alerts::raise`]), de-duplicated per rule and principal within a window, counted in
//! `carevault_alerts_total{rule,severity}`, and made durable as events of the audit trail
//! (action `security.alert`), written by a background task from a bounded queue so that raising
//! never waits for the store.
//!
//! Durable by being audit events: the trail is already written on both backends, survives
//! restarts, is hash-chained (an alert cannot be removed without breaking the chain) and is what
//! the auditor reads. An acknowledgement is the audit event of the `POST /alerts/{id}/ack`
//! request (action `alerts.ack`, detail `alert_id`). An alert carries a rule id, a severity, the
//! principal, the source address, counts and a keyed digest of the matched value: never the
//! value itself.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use carevault_audit::{AuditAction, EventRecord, StoredEvent};
use carevault_store::{AuditQuery, Store};
use tokio::sync::mpsc;

use super::rules::{Rule, Severity};
use super::window::Windows;
use crate::audit::{Audit, AuditScope};
use crate::clock::SharedClock;

/// Alerts waiting to be written; beyond it new ones are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 1024;
/// (rule, principal) pairs remembered for de-duplication.
const DEDUP_CAPACITY: usize = 10_000;

/// The task that writes queued alerts to the audit trail.
pub struct AlertWriter {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<tokio::sync::Notify>,
}

impl AlertWriter {
    /// Write what is queued, then stop; gives up after `within` (a store that does not answer).
    pub async fn finish(self, within: std::time::Duration) {
        self.stop.notify_one();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(within, self.task).await.is_err() {
            abort.abort();
            tracing::error!(
                event = "alert_write_failed",
                "alerts still queued at shutdown were not written to the audit trail"
            );
        }
    }

    /// Stop at once (tests).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// What a raiser says about an alert.
#[derive(Clone, Debug)]
pub struct AlertInput {
    pub rule: Rule,
    pub severity: Severity,
    /// The principal's id (`anonymous` before authentication).
    pub principal: String,
    pub source_ip: String,
    /// How many events made the rule fire (attempts, patients, answers).
    pub count: u64,
    /// A keyed digest ([`Audit::digest`]) of the matched value, never the value.
    pub digest: Option<String>,
}

impl AlertInput {
    /// An alert of `rule` at its default severity.
    pub fn new(rule: Rule, principal: &str, source_ip: &str, count: u64) -> Self {
        Self {
            rule,
            severity: rule.severity(),
            principal: principal.to_owned(),
            source_ip: source_ip.to_owned(),
            count,
            digest: None,
        }
    }
}

/// An alert as read back from the trail.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Alert {
    pub id: String,
    pub rule: String,
    pub severity: String,
    pub principal: String,
    pub source_ip: String,
    pub count: u64,
    pub digest: Option<String>,
    pub time_us: i64,
    pub node: String,
    pub seq: u64,
    /// The principal who acknowledged it, if anyone did.
    pub acknowledged_by: Option<String>,
}

pub struct Alerts {
    audit: Arc<Audit>,
    clock: SharedClock,
    dedup: Windows,
    raised: Vec<AtomicU64>,
    suppressed: Vec<AtomicU64>,
    dropped: AtomicU64,
    queue: mpsc::Sender<EventRecord>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<EventRecord>>>,
    /// Set at start when `detection.webhook_url` is.
    webhook: std::sync::OnceLock<super::webhook::Webhook>,
    /// Set at start when `detection.syslog_address` is.
    syslog: std::sync::OnceLock<super::syslog::Syslog>,
}

impl Alerts {
    pub fn new(audit: Arc<Audit>, clock: SharedClock, dedup_secs: u64) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let per_rule = || (0..Rule::ALL.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            audit,
            clock,
            dedup: Windows::new(
                i64::try_from(dedup_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
                DEDUP_CAPACITY,
            ),
            raised: (0..Rule::ALL.len() * Severity::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            suppressed: per_rule(),
            dropped: AtomicU64::new(0),
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
            webhook: std::sync::OnceLock::new(),
            syslog: std::sync::OnceLock::new(),
        }
    }

    /// Deliver every alert raised from now on to this syslog collector too (once, at start).
    pub fn set_syslog(&self, syslog: super::syslog::Syslog) {
        let _ = self.syslog.set(syslog);
    }

    /// Deliver every alert raised from now on to this webhook too (once, at start).
    pub fn set_webhook(&self, webhook: super::webhook::Webhook) {
        let _ = self.webhook.set(webhook);
    }

    /// A keyed digest of a matched value, for [`AlertInput::digest`].
    pub fn digest(&self, value: &str) -> String {
        self.audit.digest(value)
    }

    /// Raise an alert: `false` when it repeats one of the same rule and principal (and address,
    /// for `anonymous`) within the de-duplication window (counted, not raised again) or the queue is full. Never waits.
    pub fn raise(&self, input: AlertInput) -> bool {
        // Before authentication every caller is `anonymous`: its alerts are told apart by
        // address, so one attacker's alert does not hide another's.
        let key = if input.principal == "anonymous" {
            self.dedup
                .hash((input.rule.id(), "anonymous", input.source_ip.as_str()))
        } else {
            self.dedup
                .hash((input.rule.id(), input.principal.as_str(), ""))
        };
        if self.dedup.count(key, self.clock.now_us(), 1).is_none() {
            if let Some(n) = self.suppressed.get(input.rule.index()) {
                n.fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
        let severity_index = Severity::ALL
            .iter()
            .position(|s| *s == input.severity)
            .unwrap_or(0);
        if let Some(n) = self
            .raised
            .get(input.rule.index() * Severity::ALL.len() + severity_index)
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let id = uuid::Uuid::new_v4().to_string();
        tracing::warn!(
            event = "security_alert",
            alert_id = %id,
            rule = input.rule.id(),
            severity = input.severity.as_str(),
            principal = %input.principal,
            source_ip = %input.source_ip,
            count = input.count,
            "security alert"
        );
        if let Some(webhook) = self.webhook.get() {
            webhook.offer(webhook_body(&id, &input, self.clock.now_us()));
        }
        if let Some(syslog) = self.syslog.get() {
            syslog.offer(
                &id,
                &input,
                &crate::clock::fhir_instant(self.clock.now_us()),
            );
        }
        let mut detail = vec![
            ("alert_id".to_owned(), id.clone()),
            ("rule".to_owned(), input.rule.id().to_owned()),
            ("severity".to_owned(), input.severity.as_str().to_owned()),
            ("count".to_owned(), input.count.to_string()),
        ];
        if let Some(d) = input.digest {
            detail.push(("digest".to_owned(), d));
        }
        let record = EventRecord {
            request_id: id,
            principal: input.principal,
            auth_method: "none".into(),
            client_ip: input.source_ip,
            action: AuditAction::SecurityAlert.as_str().to_owned(),
            method: "ALERT".into(),
            route: "detection".into(),
            detail,
            ..EventRecord::default()
        };
        if self.queue.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Record an automatic response in the audit trail (through the alert queue, never waiting).
    pub fn record_response(&self, rule: Rule, response: &str, client_ip: &str, minutes: u64) {
        let record = EventRecord {
            request_id: uuid::Uuid::new_v4().to_string(),
            principal: "system".into(),
            auth_method: "none".into(),
            client_ip: client_ip.to_owned(),
            action: AuditAction::SecurityResponse.as_str().to_owned(),
            method: "RESPONSE".into(),
            route: "detection".into(),
            detail: vec![
                ("rule".to_owned(), rule.id().to_owned()),
                ("response".to_owned(), response.to_owned()),
                ("minutes".to_owned(), minutes.to_string()),
            ],
            ..EventRecord::default()
        };
        if self.queue.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Write queued alerts to the audit trail until [`AlertWriter::finish`]. Call once.
    pub fn spawn_writer(self: &Arc<Self>) -> Option<AlertWriter> {
        let mut receiver = self
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let audit = self.audit.clone();
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let write = |record| {
                let scope = AuditScope::new(audit.clone(), record);
                async move {
                    // The trail retries nothing itself; a failed write is logged and the
                    // alert stays in the log line `raise` wrote and the metric.
                    if let Err(e) = scope.finish(200).await {
                        tracing::error!(event = "alert_write_failed", detail = %e, "alert not written to the audit trail");
                    }
                }
            };
            loop {
                tokio::select! {
                    record = receiver.recv() => match record {
                        Some(record) => write(record).await,
                        None => return,
                    },
                    () = stopped.notified() => break,
                }
            }
            // Stopping: what was raised before the stop still reaches the trail.
            while let Ok(record) = receiver.try_recv() {
                write(record).await;
            }
        });
        Some(AlertWriter { task, stop })
    }

    /// Alerts, newest first, with their acknowledgements.
    pub async fn list(&self, store: &dyn Store, limit: u32) -> crate::Result<Vec<Alert>> {
        let events = store
            .audit_search(AuditQuery {
                action: Some(AuditAction::SecurityAlert.as_str().to_owned()),
                limit,
                ..AuditQuery::default()
            })
            .await?;
        let acks = store
            .audit_search(AuditQuery {
                action: Some(AuditAction::AlertAck.as_str().to_owned()),
                outcome: Some("success".to_owned()),
                limit: 10_000,
                ..AuditQuery::default()
            })
            .await?;
        let acked: Vec<(String, String)> = acks
            .iter()
            .filter_map(|e| {
                let r: EventRecord = serde_json::from_slice(&e.body).ok()?;
                let id = detail(&r, "alert_id")?.to_owned();
                Some((id, r.principal))
            })
            .collect();
        Ok(events
            .iter()
            .filter_map(|e| {
                let mut alert = Alert::from_event(e)?;
                alert.acknowledged_by = acked
                    .iter()
                    .find(|(id, _)| *id == alert.id)
                    .map(|(_, who)| who.clone());
                Some(alert)
            })
            .collect())
    }

    /// One alert by id.
    pub async fn find(&self, store: &dyn Store, id: &str) -> crate::Result<Option<Alert>> {
        Ok(self
            .list(store, 10_000)
            .await?
            .into_iter()
            .find(|a| a.id == id))
    }

    /// `carevault_alerts_total{rule,severity}`, `carevault_alerts_suppressed_total{rule}`,
    /// `carevault_alerts_dropped_total`: labels from the fixed rule and severity sets only.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        crate::metrics::family(
            &mut out,
            "carevault_alerts_total",
            "counter",
            "Security alerts raised (after de-duplication), by rule and severity.",
        );
        for (ri, rule) in Rule::ALL.iter().enumerate() {
            for (si, severity) in Severity::ALL.iter().enumerate() {
                let n = self
                    .raised
                    .get(ri * Severity::ALL.len() + si)
                    .map_or(0, |n| n.load(Ordering::Relaxed));
                if n > 0 || *severity == rule.severity() {
                    let _ = writeln!(
                        out,
                        "carevault_alerts_total{{rule=\"{}\",severity=\"{}\"}} {n}",
                        rule.id(),
                        severity.as_str()
                    );
                }
            }
        }
        crate::metrics::family(
            &mut out,
            "carevault_alerts_suppressed_total",
            "counter",
            "Detections not raised again because the same rule and principal alerted within the de-duplication window.",
        );
        for (ri, rule) in Rule::ALL.iter().enumerate() {
            let n = self
                .suppressed
                .get(ri)
                .map_or(0, |n| n.load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "carevault_alerts_suppressed_total{{rule=\"{}\"}} {n}",
                rule.id()
            );
        }
        crate::metrics::single(
            &mut out,
            "carevault_alerts_dropped_total",
            "counter",
            "Alerts dropped because the queue to the audit trail was full.",
            self.dropped.load(Ordering::Relaxed),
        );
        if self.webhook.get().is_some() || self.syslog.get().is_some() {
            super::webhook::deliveries_family(&mut out);
        }
        if let Some(webhook) = self.webhook.get() {
            webhook.stats.metrics_text("webhook", &mut out);
        }
        if let Some(syslog) = self.syslog.get() {
            syslog.stats.metrics_text("syslog", &mut out);
        }
        out
    }
}

/// What the webhook receives: the alert's fields, never a payload (the digest stands for it).
fn webhook_body(id: &str, input: &AlertInput, now_us: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "rule": input.rule.id(),
        "severity": input.severity.as_str(),
        "principal": input.principal,
        "source_ip": input.source_ip,
        "count": input.count,
        "digest": input.digest,
        "time": crate::clock::fhir_instant(now_us),
    }))
    .unwrap_or_default()
}

fn detail<'a>(r: &'a EventRecord, key: &str) -> Option<&'a str> {
    r.detail
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Alert {
    fn from_event(e: &StoredEvent) -> Option<Self> {
        let r: EventRecord = serde_json::from_slice(&e.body).ok()?;
        Some(Self {
            id: detail(&r, "alert_id")?.to_owned(),
            rule: detail(&r, "rule")?.to_owned(),
            severity: detail(&r, "severity")?.to_owned(),
            count: detail(&r, "count")?.parse().ok()?,
            digest: detail(&r, "digest").map(str::to_owned),
            principal: r.principal,
            source_ip: r.client_ip,
            time_us: e.time_us,
            node: e.node.clone(),
            seq: e.seq,
            acknowledged_by: None,
        })
    }
}
