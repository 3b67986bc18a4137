//! Bulk `$export` (HL7 FHIR Bulk Data Access IG v2): the asynchronous pattern's core. A kick-off
//! is checked (parameters, the caller's right to each type, the count limit) and recorded in the
//! store, then runs in the background: each type is read a window at a time through the
//! records service's bulk read (the same blind-index candidates, exact matching and Cedar
//! decisions as a search, so a file holds only what its principal may read) and written to a
//! sealed file ([`files`]). Status, files and cancellation answer only the principal who
//! started the job (anyone else: 404). Finished jobs and their files are deleted after
//! `export.expiry_secs`. A job interrupted by a restart begins again when the server starts
//! (its user's current rights are read afresh), or fails if its principal cannot be resolved
//! (an API key). A job is complete only once its audit event, naming every patient it holds,
//! is written; until then no file of it is served.

mod files;
mod options;
mod run;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use carevault_fhir::{ResourceId, ResourceType};
use carevault_store::{ExportJobRow, Store, WriteOp};
use serde::{Deserialize, Serialize};

use crate::audit::Audit;
use crate::clock::SharedClock;
use crate::compartment::Compartment;
use crate::config::ExportLimits;
use crate::error::{Error, Result};
use crate::identity::{Identity, Principal};
use crate::keyring::Keyring;
use crate::names::NodeId;
use crate::records::{Caller, Current, Records};

pub use files::OutputReader;
pub use options::{DEIDENTIFY_SAFE_HARBOR, ExportOptions, Level, OUTPUT_FORMATS, parameter_pairs};

/// Exports that run at once on one node; more wait their turn.
const CONCURRENT_JOBS: usize = 2;
/// Candidates opened, checked and written per window (one sealed frame).
const WINDOW: usize = 500;
/// Seconds a client is asked to wait between status polls.
pub const RETRY_AFTER_SECS: u64 = 2;

/// The bulk export service.
pub struct Exports {
    records: Arc<Records>,
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    audit: Arc<Audit>,
    clock: SharedClock,
    limits: ExportLimits,
    /// `<data_dir>/exports`: one directory per job.
    dir: PathBuf,
    node: NodeId,
    running: Mutex<HashMap<String, Arc<Running>>>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// A job running on this node.
#[derive(Default)]
struct Running {
    /// Held while the job's record is written; `true` once cancelled.
    cancelled: tokio::sync::Mutex<bool>,
    written: AtomicU64,
    current: Mutex<Option<ResourceType>>,
}

/// The job's record, sealed in the store (it names the request, whose `_typeFilter` may carry
/// search values, and a group's members).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobBody {
    node: String,
    request: String,
    level: Level,
    types: Vec<String>,
    since_us: Option<i64>,
    type_filters: Vec<(String, String)>,
    /// A group export's member patients (ids), read at kick-off.
    members: Option<Vec<String>>,
    /// The export's own pseudonym secret (hex): present exactly when the export is
    /// de-identified; at rest only inside the sealed job record.
    deid_secret: Option<String>,
    /// De-identified with each patient's dates shifted rather than cut to the year.
    #[serde(default)]
    shift_dates: bool,
    transaction_time_us: i64,
    state: JobState,
    outputs: Vec<Output>,
    finished_us: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum JobState {
    Running,
    Complete,
    /// `status`: how the failure is told (413: a limit; otherwise 500).
    Failed {
        status: u16,
        message: String,
    },
}

/// One output file of a finished export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The resource type it holds.
    pub rtype: String,
    /// Its name in the job (`Patient.ndjson`).
    pub file: String,
    /// Resources in it.
    pub count: u64,
    /// SHA-256 (hex) of its NDJSON, as downloaded.
    pub sha256: String,
    frames: u64,
}

/// What a status poll answers.
#[derive(Debug)]
pub enum JobStatus {
    /// Still running: a progress line (counts and type names only).
    InProgress { progress: String },
    /// Done: what the completion manifest lists.
    Complete(Completed),
}

#[derive(Debug)]
pub struct Completed {
    pub transaction_time_us: i64,
    pub request: String,
    pub outputs: Vec<Output>,
    /// Where the data comes from, signed (the manifest's `extension`).
    pub provenance: Provenance,
}

/// What a manifest says of its origin, and the signature that binds it to the files: the tier
/// of the environment it came from, whether it was de-identified, and an Ed25519 signature by
/// that environment's audit signing key over [`manifest_statement`].
#[derive(Clone, Debug)]
pub struct Provenance {
    pub tier: String,
    pub deidentified: bool,
    /// De-identified with dates shifted per patient (Expert Determination, not Safe Harbor).
    pub dates_shifted: bool,
    /// The environment's audit public key (hex), as `init` printed it.
    pub public_key: String,
    pub signature: String,
}

/// One output file as the signature covers it.
pub struct SignedOutput<'a> {
    pub rtype: &'a str,
    /// The file's name (the last segment of its URL).
    pub file: &'a str,
    pub count: u64,
    pub sha256: &'a str,
}

/// The text a manifest's signature covers: the origin's tier, whether it was de-identified
/// (and, when so, with shifted dates), the transaction time and every output file (type, name,
/// count, SHA-256), in order.
pub fn manifest_statement(
    tier: &str,
    deidentified: bool,
    dates_shifted: bool,
    transaction_time: &str,
    outputs: &[SignedOutput<'_>],
) -> String {
    let mut s = format!("carevault-export-manifest-v1\ntier={tier}\ndeidentified={deidentified}\n");
    if dates_shifted {
        s.push_str("dates=shifted\n");
    }
    s.push_str(&format!("transactionTime={transaction_time}\n"));
    for o in outputs {
        s.push_str(&format!(
            "output={}\t{}\t{}\t{}\n",
            o.rtype, o.file, o.count, o.sha256
        ));
    }
    s
}

/// Whether `signature` (hex) is `public_key`'s (hex) Ed25519 signature of `statement`.
pub fn verify_manifest(statement: &str, public_key: &str, signature: &str) -> bool {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let (Ok(key), Ok(sig)) = (hex::decode(public_key), hex::decode(signature)) else {
        return false;
    };
    let (Ok(key), Ok(sig)) = (<[u8; 32]>::try_from(key), <[u8; 64]>::try_from(sig)) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else {
        return false;
    };
    key.verify(statement.as_bytes(), &Signature::from_bytes(&sig))
        .is_ok()
}

impl Exports {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        records: Arc<Records>,
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        audit: Arc<Audit>,
        clock: SharedClock,
        limits: ExportLimits,
        data_dir: &std::path::Path,
        node: &NodeId,
    ) -> Self {
        Self {
            records,
            store,
            keyring,
            audit,
            clock,
            limits,
            dir: data_dir.join("exports"),
            node: node.clone(),
            running: Mutex::new(HashMap::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_JOBS)),
        }
    }

    /// Kick-off: check, record and start an export; returns its job id. 403 when the caller
    /// may not read a type asked for (or any type at all); 413 when it would exceed
    /// `export.max_resources`; 404 for a group the caller cannot read.
    pub async fn start(
        self: &Arc<Self>,
        caller: Caller<'_>,
        options: ExportOptions,
    ) -> Result<String> {
        // A principal who reads de-identified data (a developer) exports it de-identified too,
        // asked or not. Each export has its own pseudonym secret, so two exports cannot be
        // linked through their pseudonyms, unless the caller names a link label.
        let deidentify = options.deidentify || caller.principal.sees_deidentified();
        if options.shift_dates && caller.principal.sees_deidentified() {
            // Shifted dates are an expert's call, not Safe Harbor: not for developers.
            return Err(Error::ForbiddenBecause(
                "your exports are Safe Harbor de-identified: shifted-dates is not offered".into(),
            ));
        }
        let deid_secret = match (deidentify, &options.link) {
            (false, Some(_)) => {
                return Err(Error::BadRequest(
                    "_deidentifyLink applies to de-identified exports: add _deidentify=safe-harbor"
                        .into(),
                ));
            }
            (false, None) => None,
            (true, link) => {
                let method = if options.shift_dates {
                    options::DEIDENTIFY_SHIFTED_DATES
                } else {
                    options::DEIDENTIFY_SAFE_HARBOR
                };
                crate::records::mark_deidentified_as(caller.audit, method);
                let secret = match link {
                    Some(label) => {
                        caller
                            .audit
                            .add_detail("deidentified_link", "yes".to_owned());
                        self.records
                            .export_link_secret(&caller.principal.id, label)?
                    }
                    None => carevault_crypto::random_bytes::<32>().map_err(|_| {
                        Error::Internal("no randomness for the export's secret".into())
                    })?,
                };
                Some(hex::encode(secret))
            }
        };
        let types = self.types_for(caller.principal, &options)?;
        let members = match &options.level {
            Level::Group { id } => Some(self.group_members(caller, id).await?),
            _ => None,
        };
        let mut candidates = 0usize;
        for rtype in &types {
            let query = options.query_for(*rtype)?;
            let bulk = self.records.bulk_read(caller, *rtype, query).await?;
            candidates += bulk.candidates();
        }
        if candidates as u64 > self.limits.max_resources {
            return Err(Error::TooLarge(format!(
                "this export would hold more than {} resources (export.max_resources): \
                 narrow it with _type, _since or _typeFilter",
                self.limits.max_resources
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        caller.audit.add_detail("export_job", id.clone());
        let body = JobBody {
            node: self.node.to_string(),
            request: options.request.clone(),
            level: options.level.clone(),
            types: types.iter().map(|t| t.as_str().to_owned()).collect(),
            since_us: options.since_us,
            type_filters: options
                .type_filters
                .iter()
                .map(|(t, q)| (t.as_str().to_owned(), q.clone()))
                .collect(),
            members,
            deid_secret,
            shift_dates: deidentify && options.shift_dates,
            transaction_time_us: self.clock.now_us(),
            state: JobState::Running,
            outputs: Vec::new(),
            finished_us: None,
        };
        let row = self
            .sealed_row(&id, &caller.principal.id, body.transaction_time_us, &body)
            .await?;
        self.store.write(vec![WriteOp::PutExportJob(row)]).await?;
        self.spawn(id.clone(), caller.principal.clone(), body);
        Ok(id)
    }

    /// The types an export reads: those asked for (403 unless the caller may search each), or
    /// every type the caller may search (403 when none).
    fn types_for(
        &self,
        principal: &Principal,
        options: &ExportOptions,
    ) -> Result<Vec<ResourceType>> {
        match &options.types {
            Some(types) => {
                if types
                    .iter()
                    .any(|t| !self.records.may_search_type(principal, *t))
                {
                    return Err(Error::Forbidden);
                }
                Ok(types.clone())
            }
            None => {
                let all: Vec<ResourceType> = ResourceType::all()
                    .filter(|t| self.records.may_search_type(principal, *t))
                    .collect();
                if all.is_empty() {
                    return Err(Error::Forbidden);
                }
                Ok(all)
            }
        }
    }

    /// A group's member patients (`Group.member.entity` references to a Patient): 404 unless
    /// the caller may read the Group.
    async fn group_members(&self, caller: Caller<'_>, id: &str) -> Result<Vec<String>> {
        let id = ResourceId::parse(id).map_err(|_| Error::NotFound)?;
        let group = match self
            .records
            .read(
                caller,
                ResourceType::parse("Group").map_err(|_| Error::NotFound)?,
                &id,
            )
            .await?
        {
            Current::Present(v) => v,
            Current::Deleted { .. } => return Err(Error::NotFound),
        };
        let json: serde_json::Value = serde_json::from_slice(&group.json)
            .map_err(|_| Error::Integrity("stored JSON does not parse".into()))?;
        let mut members: Vec<String> = json["member"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["entity"]["reference"].as_str())
            .filter_map(|r| r.strip_prefix(crate::compartment::PATIENT_PREFIX))
            .filter(|id| ResourceId::parse(id).is_ok())
            .map(str::to_owned)
            .collect();
        members.sort_unstable();
        members.dedup();
        Ok(members)
    }

    /// A status poll: 404 unless the job exists, is not expired and `principal` started it; a
    /// failed job answers its failure.
    pub async fn status(&self, principal: &Principal, id: &str) -> Result<JobStatus> {
        let (_, body) = self.owned_job(principal, id).await?;
        match body.state {
            JobState::Running => Ok(JobStatus::InProgress {
                progress: self.progress(id),
            }),
            JobState::Complete => {
                let tier = self.audit.tier().as_str().to_owned();
                let statement = manifest_statement(
                    &tier,
                    body.deid_secret.is_some(),
                    body.shift_dates,
                    &crate::clock::fhir_instant(body.transaction_time_us),
                    &body
                        .outputs
                        .iter()
                        .map(|o| SignedOutput {
                            rtype: &o.rtype,
                            file: &o.file,
                            count: o.count,
                            sha256: &o.sha256,
                        })
                        .collect::<Vec<_>>(),
                );
                Ok(JobStatus::Complete(Completed {
                    transaction_time_us: body.transaction_time_us,
                    request: body.request,
                    provenance: Provenance {
                        tier,
                        deidentified: body.deid_secret.is_some(),
                        dates_shifted: body.shift_dates,
                        public_key: self.audit.public_key(),
                        signature: self.audit.sign(statement.as_bytes()),
                    },
                    outputs: body.outputs,
                }))
            }
            JobState::Failed {
                status: 413,
                message,
            } => Err(Error::TooLarge(message)),
            JobState::Failed { message, .. } => Err(Error::Internal(message)),
        }
    }

    fn progress(&self, id: &str) -> String {
        let running = self.lock_running().get(id).cloned();
        match running {
            Some(r) => {
                let current = *r.current.lock().unwrap_or_else(|p| p.into_inner());
                let written = r.written.load(Ordering::Relaxed);
                match current {
                    Some(t) => format!("{written} resources written; exporting {t}"),
                    None => format!("{written} resources written"),
                }
            }
            None => "waiting to run".to_owned(),
        }
    }

    /// Cancel a running job or delete a finished one's files (`DELETE` on the status URL): 404
    /// unless `principal` started it.
    pub async fn cancel(&self, principal: &Principal, id: &str) -> Result<()> {
        self.owned_job(principal, id).await?;
        let running = self.lock_running().get(id).cloned();
        // Held while the files and record go: the job cannot record itself complete meanwhile.
        let mut guard = None;
        if let Some(r) = &running {
            let mut cancelled = r.cancelled.lock().await;
            *cancelled = true;
            guard = Some(cancelled);
        }
        let forgotten = self.forget(id).await;
        drop(guard);
        forgotten
    }

    /// One output file of a complete job, opened for download: 404 unless `principal` started
    /// the job and the file is one of its outputs.
    pub async fn open_output(
        &self,
        principal: &Principal,
        id: &str,
        file: &str,
    ) -> Result<OutputReader> {
        let (_, body) = self.owned_job(principal, id).await?;
        if body.state != JobState::Complete {
            return Err(Error::NotFound);
        }
        let output = body
            .outputs
            .iter()
            .find(|o| o.file == file)
            .ok_or(Error::NotFound)?;
        OutputReader::open(
            self.keyring.clone(),
            &self.dir.join(id),
            id,
            &output.file,
            output.frames,
        )
        .await
    }

    /// The job `id` if `principal` started it and it has not expired (else 404, the same for a
    /// job that does not exist).
    async fn owned_job(&self, principal: &Principal, id: &str) -> Result<(ExportJobRow, JobBody)> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Error::NotFound);
        }
        let row = self.store.export_job(id).await?.ok_or(Error::NotFound)?;
        if row.principal_id != principal.id {
            return Err(Error::NotFound);
        }
        let body = self.open_body(&row).await?;
        if self.expired(&body) {
            return Err(Error::NotFound);
        }
        Ok((row, body))
    }

    fn expired(&self, body: &JobBody) -> bool {
        body.finished_us.is_some_and(|at| {
            self.clock.now_us()
                >= at.saturating_add(self.limits.expiry_secs.saturating_mul(1_000_000))
        })
    }

    /// Delete a job's files and record.
    async fn forget(&self, id: &str) -> Result<()> {
        remove_dir(&self.dir.join(id)).await;
        self.store
            .write(vec![WriteOp::DeleteExportJob { id: id.to_owned() }])
            .await?;
        Ok(())
    }

    /// At start: jobs of this node that a restart interrupted begin again with their
    /// principal's current rights (a user's, or an API key's), or fail when that principal is
    /// gone (a disabled user, a revoked or expired key); expired jobs go.
    pub async fn resume(self: &Arc<Self>, identity: &Identity) -> Result<()> {
        for row in self.store.export_jobs().await? {
            let Ok(body) = self.open_body(&row).await else {
                tracing::warn!(
                    event = "export_job_unreadable",
                    "an export job's record does not open; it is deleted"
                );
                self.forget(&row.id).await?;
                continue;
            };
            if body.state != JobState::Running || self.node != *body.node {
                continue;
            }
            let principal = match identity.user_by_id(&row.principal_id).await? {
                Some(user) => Some(user),
                None => identity.api_key_principal(&row.principal_id).await?,
            };
            match principal {
                Some(principal) => {
                    tracing::info!(
                        event = "export_job_restarted",
                        "an export interrupted by a restart begins again"
                    );
                    self.spawn(row.id.clone(), principal, body);
                }
                None => {
                    let mut body = body;
                    body.state = JobState::Failed {
                        status: 500,
                        message: "the export was interrupted by a restart: start it again".into(),
                    };
                    body.finished_us = Some(self.clock.now_us());
                    remove_dir(&self.dir.join(&row.id)).await;
                    let row = self
                        .sealed_row(&row.id, &row.principal_id, row.created_us, &body)
                        .await?;
                    self.store.write(vec![WriteOp::PutExportJob(row)]).await?;
                }
            }
        }
        self.sweep().await
    }

    /// Delete expired jobs and their files.
    pub async fn sweep(&self) -> Result<()> {
        for row in self.store.export_jobs().await? {
            let Ok(body) = self.open_body(&row).await else {
                continue;
            };
            if self.expired(&body) {
                self.forget(&row.id).await?;
            }
        }
        Ok(())
    }

    /// Sweep expired jobs once a minute.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let exports = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = exports.sweep().await {
                    tracing::warn!(event = "export_sweep_failed", error = %e);
                }
            }
        })
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Running>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn body_aad(&self, id: &str) -> Vec<u8> {
        format!("carevault-export-job\0{}\0{id}", self.keyring.env_id()).into_bytes()
    }

    async fn sealed_row(
        &self,
        id: &str,
        principal_id: &str,
        created_us: i64,
        body: &JobBody,
    ) -> Result<ExportJobRow> {
        let json =
            serde_json::to_vec(body).map_err(|e| Error::Internal(format!("export job: {e}")))?;
        let (_, sealed) = self
            .keyring
            .seal(&Compartment::environment(), &self.body_aad(id), &json)
            .await?;
        Ok(ExportJobRow {
            id: id.to_owned(),
            principal_id: principal_id.to_owned(),
            created_us,
            body: data_encoding::BASE64.encode(&sealed),
        })
    }

    async fn open_body(&self, row: &ExportJobRow) -> Result<JobBody> {
        let sealed = data_encoding::BASE64
            .decode(row.body.as_bytes())
            .map_err(|_| Error::Integrity("export job record".into()))?;
        let json = self.keyring.open(&self.body_aad(&row.id), &sealed).await?;
        serde_json::from_slice(&json).map_err(|_| Error::Integrity("export job record".into()))
    }
}

async fn remove_dir(dir: &std::path::Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(event = "export_dir_not_removed", error = %e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_signature_covers_tier_deidentification_and_every_file() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let public = carevault_audit::public_key_hex(&key.verifying_key());
        let outputs = [SignedOutput {
            rtype: "Patient",
            file: "Patient.ndjson",
            count: 3,
            sha256: "ab",
        }];
        let statement = |tier, deid, count| {
            manifest_statement(
                tier,
                deid,
                false,
                "2026-01-01T00:00:00.000000Z",
                &[SignedOutput {
                    count,
                    ..outputs[0]
                }],
            )
        };
        let sign = |s: &str| {
            use ed25519_dalek::Signer;
            hex::encode(key.sign(s.as_bytes()).to_bytes())
        };
        let signature = sign(&statement("production", false, 3));
        assert!(verify_manifest(
            &statement("production", false, 3),
            &public,
            &signature
        ));
        for changed in [
            statement("development", false, 3),
            statement("production", true, 3),
            statement("production", false, 4),
            manifest_statement(
                "production",
                false,
                true,
                "2026-01-01T00:00:00.000000Z",
                &outputs,
            ),
        ] {
            assert!(!verify_manifest(&changed, &public, &signature));
        }
        let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
        let other = carevault_audit::public_key_hex(&other.verifying_key());
        assert!(!verify_manifest(
            &statement("production", false, 3),
            &other,
            &signature
        ));
        assert!(!verify_manifest(
            &statement("production", false, 3),
            "zz",
            "zz"
        ));
    }
}
