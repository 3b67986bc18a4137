//! The audit service: one event per request (and per CLI action), appended to this node's hash
//! chain in the same transaction as the data change it records, durable before the response
//! is sent; periodic Ed25519-signed checkpoints; keyed digests for values that could be PHI.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use carevault_audit::AuditAction;
use carevault_audit::{Checkpoint, EventRecord, public_key_hex};
use carevault_store::{NewAuditEvent, Store, WriteOp};
use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::clock::SharedClock;
use crate::compartment::Compartment;
use crate::error::{Error, Result};
use crate::keyring::Keyring;
use crate::names::NodeId;

/// A checkpoint is written after this many unsigned events...
pub const CHECKPOINT_EVERY_EVENTS: u64 = 1_000;
/// ...or once the oldest unsigned event is this old, whichever comes first.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

pub struct Audit {
    store: Arc<dyn Store>,
    node: NodeId,
    signing: SigningKey,
    hmac_key: Zeroizing<[u8; 32]>,
    clock: SharedClock,
    /// One checkpoint at a time from this process.
    checkpointing: tokio::sync::Mutex<()>,
    health: Mutex<CheckpointHealth>,
    /// Whether the latest event written on its own (not with a data change) failed.
    last_write_failed: AtomicBool,
    /// Events this process made durable, since start.
    events_written: AtomicU64,
    /// The environment's tier, stamped on every event.
    tier: crate::config::Tier,
}

/// How signing keeps up: for the metrics, the log, and readiness.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckpointHealth {
    /// When this node's chain was first seen with unsigned events since the last checkpoint
    /// (checked twice a second, so the oldest unsigned event is at most half a second older).
    pub unsigned_since: Option<Instant>,
    /// Checkpoints that could not be written, since start.
    pub failures: u64,
    /// When the current run of failures began (`None` while checkpoints are written).
    pub failing_since: Option<Instant>,
    /// When the current run of failures was last logged.
    logged_at: Option<Instant>,
}

impl CheckpointHealth {
    /// Age of the oldest unsigned event this node has written (zero when all are signed).
    pub fn oldest_unsigned_age(&self) -> Duration {
        self.unsigned_since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

impl Audit {
    pub async fn open(
        store: Arc<dyn Store>,
        keyring: &Keyring,
        node: &NodeId,
        clock: SharedClock,
    ) -> Result<Self> {
        let seed = keyring.secret("audit-signing").await?;
        let hmac_key = keyring.secret("audit-hmac").await?;
        let tier = crate::environment::stored_tier(&*store).await?;
        Ok(Self {
            store,
            node: node.clone(),
            signing: SigningKey::from_bytes(&seed),
            hmac_key,
            clock,
            checkpointing: tokio::sync::Mutex::new(()),
            health: Mutex::new(CheckpointHealth::default()),
            last_write_failed: AtomicBool::new(false),
            events_written: AtomicU64::new(0),
            tier,
        })
    }

    /// The environment's tier (as stored at init).
    pub fn tier(&self) -> crate::config::Tier {
        self.tier
    }

    /// Sign `message` with the environment's audit signing key (Ed25519; the key `public_key`
    /// names): what a bulk export's manifest carries so an importer can check where it came
    /// from.
    pub fn sign(&self, message: &[u8]) -> String {
        use ed25519_dalek::Signer;
        hex::encode(self.signing.sign(message).to_bytes())
    }

    pub fn node(&self) -> &str {
        self.node.as_str()
    }

    /// The key that verifies this environment's checkpoints, as hex.
    pub fn public_key(&self) -> String {
        public_key_hex(&self.signing.verifying_key())
    }

    /// Keyed HMAC-SHA-256 of a value that may be PHI (search values, attempted usernames), so
    /// an investigator with the keyring can ask "who searched for X?" while the trail holds no X.
    pub fn digest(&self, value: &str) -> String {
        hex::encode(carevault_crypto::hmac_sha256(
            self.hmac_key.as_ref(),
            value.as_bytes(),
        ))
    }

    /// The store operation that appends `record` (status and outcome already set).
    pub fn op(&self, record: &EventRecord) -> WriteOp {
        let mut record = record.clone();
        record.environment_tier = Some(self.tier.as_str().to_owned());
        WriteOp::AppendAudit(NewAuditEvent {
            node: self.node.to_string(),
            time_us: self.clock.now_us(),
            principal: record.principal.clone(),
            action: record.action.clone(),
            outcome: record.outcome.clone(),
            patients: record.patients.clone(),
            body: record.canonical(),
        })
    }

    /// Write a checkpoint if one is due (or whenever there are unsigned events, if `force`).
    pub async fn checkpoint(
        &self,
        force: bool,
        last_at: Option<Instant>,
    ) -> Result<Option<Checkpoint>> {
        let _one = self.checkpointing.lock().await;
        let (head, last) = self.store.audit_head(self.node.as_str()).await?;
        let Some((head_seq, head_hash)) = head else {
            return Ok(None);
        };
        let signed = last.as_ref().map_or(0, |c| c.last_seq);
        let unsigned = head_seq.saturating_sub(signed);
        {
            let mut health = self.health();
            if unsigned == 0 {
                health.unsigned_since = None;
            } else if health.unsigned_since.is_none() {
                health.unsigned_since = Some(Instant::now());
            }
        }
        let old_enough = last_at.is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY);
        if unsigned == 0 || !(force || unsigned >= CHECKPOINT_EVERY_EVENTS || old_enough) {
            return Ok(None);
        }
        let cp = Checkpoint::sign(
            &self.signing,
            self.node.as_str(),
            signed + 1,
            head_seq,
            head_hash,
            self.clock.now_us(),
            last.map(|c| c.signature),
        );
        self.store
            .write(vec![WriteOp::InsertCheckpoint(cp.clone())])
            .await?;
        self.health().unsigned_since = None;
        Ok(Some(cp))
    }

    fn health(&self) -> std::sync::MutexGuard<'_, CheckpointHealth> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the trail took the latest event written on its own (readiness: a node whose
    /// trail refuses events answers every request 503).
    pub fn is_writable(&self) -> bool {
        !self.last_write_failed.load(Ordering::Relaxed)
    }

    /// How checkpoints keep up with the trail.
    pub fn checkpoint_health(&self) -> CheckpointHealth {
        *self.health()
    }

    /// The Prometheus lines for checkpoint health.
    pub fn metrics_text(&self) -> String {
        let health = self.checkpoint_health();
        let mut out = String::new();
        crate::metrics::family(
            &mut out,
            "carevault_environment_info",
            "gauge",
            "The environment's tier (fixed at init), as a label; always 1.",
        );
        out.push_str(&format!(
            "carevault_environment_info{{tier=\"{}\"}} 1\n",
            self.tier.as_str()
        ));
        crate::metrics::single(
            &mut out,
            "carevault_audit_oldest_unsigned_event_age_seconds",
            "gauge",
            "Age of this node's oldest audit event not yet covered by a signed checkpoint.",
            format!("{:.1}", health.oldest_unsigned_age().as_secs_f64()),
        );
        crate::metrics::single(
            &mut out,
            "carevault_audit_checkpoint_failures_total",
            "counter",
            "Audit checkpoints that could not be written.",
            health.failures,
        );
        crate::metrics::single(
            &mut out,
            "carevault_audit_events_written_total",
            "counter",
            "Audit events this process made durable.",
            self.events_written.load(Ordering::Relaxed),
        );
        out
    }

    /// Logs a failed checkpoint: at once when a run of failures begins, then at most once a
    /// minute while it lasts, with the cause and how far signing has fallen behind.
    fn checkpoint_failed(&self, e: &Error) {
        let now = Instant::now();
        let mut health = self.health();
        health.failures += 1;
        let since = *health.failing_since.get_or_insert(now);
        if health
            .logged_at
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        health.logged_at = Some(now);
        let oldest_unsigned_secs = health.oldest_unsigned_age().as_secs();
        drop(health);
        tracing::error!(
            event = "audit_checkpoint_failed",
            error = %e,
            oldest_unsigned_secs,
            failing_for_secs = now.duration_since(since).as_secs(),
            "audit checkpoints cannot be written: new events are chained but unsigned until one is"
        );
    }

    fn checkpoint_succeeded(&self) {
        let mut health = self.health();
        health.logged_at = None;
        if let Some(since) = health.failing_since.take() {
            tracing::warn!(
                event = "audit_checkpoint_recovered",
                failed_for_secs = since.elapsed().as_secs(),
                "audit checkpoints are written again"
            );
        }
    }

    /// Checkpoint in the background: checks twice a second, signs every 1,000 events or 10 s.
    pub fn spawn_checkpointer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let audit = self.clone();
        tokio::spawn(async move {
            let mut last_at = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                match audit.checkpoint(false, Some(last_at)).await {
                    Ok(Some(cp)) => {
                        last_at = Instant::now();
                        audit.checkpoint_succeeded();
                        tracing::debug!(event = "audit_checkpoint", last_seq = cp.last_seq);
                    }
                    Ok(None) => {}
                    Err(e) => audit.checkpoint_failed(&e),
                }
            }
        })
    }
}

/// The audit event of one request (or one CLI action), filled in as the request proceeds and
/// written exactly once: together with the request's data change, or by the HTTP layer when
/// the response is ready.
#[derive(Clone)]
pub struct AuditScope {
    inner: Arc<ScopeInner>,
}

struct ScopeInner {
    audit: Arc<Audit>,
    record: Mutex<EventRecord>,
    written: AtomicBool,
}

impl AuditScope {
    pub fn new(audit: Arc<Audit>, record: EventRecord) -> Self {
        Self {
            inner: Arc::new(ScopeInner {
                audit,
                record: Mutex::new(record),
                written: AtomicBool::new(false),
            }),
        }
    }

    /// For an action taken on the server machine with the CLI.
    pub fn local(audit: Arc<Audit>, action: AuditAction) -> Self {
        Self::new(
            audit,
            EventRecord {
                request_id: uuid::Uuid::new_v4().to_string(),
                principal: "local".into(),
                auth_method: "local".into(),
                client_ip: "local".into(),
                action: action.as_str().to_owned(),
                method: "CLI".into(),
                ..EventRecord::default()
            },
        )
    }

    /// The event of one entry of a Bundle: same request, principal and origin; its own action,
    /// resource and outcome.
    pub fn child(&self, action: AuditAction, method: &str, entry: usize) -> Self {
        let base = self.with(|r| r.clone());
        Self::new(
            self.inner.audit.clone(),
            EventRecord {
                request_id: base.request_id,
                principal: base.principal,
                roles: base.roles,
                auth_method: base.auth_method,
                client_ip: base.client_ip,
                action: action.as_str().to_owned(),
                method: method.to_owned(),
                route: format!("{} entry[{entry}]", base.route),
                detail: vec![("bundle_entry".to_owned(), entry.to_string())],
                ..EventRecord::default()
            },
        )
    }

    fn with<R>(&self, f: impl FnOnce(&mut EventRecord) -> R) -> R {
        let mut record = self.inner.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut record)
    }

    /// Read the event as filled in so far (detection looks at the principal and patients).
    pub fn read<R>(&self, f: impl FnOnce(&EventRecord) -> R) -> R {
        self.with(|r| f(r))
    }

    pub fn set_principal(&self, id: &str, roles: &[&str], auth_method: &str) {
        self.with(|r| {
            r.principal = id.to_owned();
            r.roles = roles.iter().map(|s| (*s).to_owned()).collect();
            r.auth_method = auth_method.to_owned();
        });
    }

    pub fn set_action(&self, action: AuditAction) {
        self.with(|r| r.action = action.as_str().to_owned());
    }

    pub fn set_resource(&self, rtype: &str, id: Option<&str>, version: Option<u32>) {
        self.with(|r| {
            r.resource_type = Some(rtype.to_owned());
            r.resource_id = id.map(str::to_owned);
            r.resource_version = version;
        });
    }

    /// Record a compartment touched; only patient compartments count.
    /// Record the patients of a compartment (every patient of a resource naming several;
    /// nothing for shared data).
    pub fn add_patient(&self, compartment: &Compartment) {
        if compartment.patient_members().next().is_none() {
            return;
        }
        self.with(|r| {
            for patient in compartment.patient_members() {
                if !r.patients.iter().any(|p| p == patient) {
                    r.patients.push(patient.to_owned());
                }
            }
            r.patient_count = r.patients.len() as u32;
        });
    }

    /// Record the patients of many compartments at once (a bulk export's), each once.
    pub fn add_patients<'c>(&self, compartments: impl IntoIterator<Item = &'c Compartment>) {
        self.with(|r| {
            let mut known: std::collections::HashSet<String> = r.patients.iter().cloned().collect();
            for compartment in compartments {
                for patient in compartment.patient_members() {
                    if known.insert(patient.to_owned()) {
                        r.patients.push(patient.to_owned());
                    }
                }
            }
            r.patient_count = r.patients.len() as u32;
        });
    }

    pub fn request_id(&self) -> String {
        self.with(|r| r.request_id.clone())
    }

    pub fn set_policies(&self, policies: &[String]) {
        self.with(|r| {
            for p in policies {
                if !r.policy_ids.contains(p) {
                    r.policy_ids.push(p.clone());
                }
            }
        });
    }

    pub fn set_break_glass(&self, reason: &str) {
        self.with(|r| r.break_glass_reason = Some(reason.to_owned()));
    }

    /// Record a search parameter given outside the URL (a form body), as digests.
    pub fn add_query(&self, name: &str, value: &str) {
        let entry = (
            self.inner.audit.digest(name),
            self.inner.audit.digest(value),
        );
        self.with(|r| r.query.push(entry));
    }

    pub fn add_detail(&self, key: &str, value: String) {
        self.with(|r| r.detail.push((key.to_owned(), value)));
    }

    /// Add a value that may be PHI as its keyed digest.
    pub fn add_digest(&self, key: &str, value: &str) {
        let digest = self.inner.audit.digest(value);
        self.add_detail(key, digest);
    }

    /// The operation to commit with a write that will answer `status`. Call [`Self::mark_written`]
    /// once that write has committed.
    pub fn op(&self, status: u16) -> WriteOp {
        let record = self.with(|r| {
            r.status = status;
            r.outcome = EventRecord::outcome_for(status).to_owned();
            r.clone()
        });
        self.inner.audit.op(&record)
    }

    /// Commit `ops` together with this request's event (answering `status`): both or neither.
    pub async fn commit_with(
        &self,
        store: &dyn Store,
        mut ops: Vec<WriteOp>,
        status: u16,
    ) -> std::result::Result<(), carevault_store::StoreError> {
        ops.push(self.op(status));
        store.write(ops).await?;
        self.mark_written();
        Ok(())
    }

    pub fn mark_written(&self) {
        if !self.inner.written.swap(true, Ordering::SeqCst) {
            self.inner
                .audit
                .events_written
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn is_written(&self) -> bool {
        self.inner.written.load(Ordering::SeqCst)
    }

    /// Write the event (unless a write already carried it), durably. An error means the
    /// request must fail closed.
    pub async fn finish(&self, status: u16) -> Result<()> {
        if self.is_written() {
            return Ok(());
        }
        let op = self.op(status);
        let written = self.inner.audit.store.write(vec![op]).await;
        self.inner
            .audit
            .last_write_failed
            .store(written.is_err(), Ordering::Relaxed);
        written.map_err(Error::from)?;
        self.mark_written();
        Ok(())
    }
}
