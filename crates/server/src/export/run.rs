//! Running one export in the background: each type read a window at a time (the records
//! service's bulk read: candidates, exact matching, Cedar), kept when it belongs to the export's
//! level and `_since`, written as one sealed NDJSON frame per window. The job is recorded
//! complete only after its audit event (naming every patient it holds) is durable; a failure,
//! a cancellation or a crash leaves no file served.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use carevault_audit::EventRecord;
use carevault_fhir::ResourceType;
use carevault_fhir::deid::DateHandling;
use carevault_store::WriteOp;

use super::files::SealedWriter;
use super::{Exports, JobBody, JobState, Level, Output, Running, WINDOW, remove_dir};
use crate::audit::{AuditAction, AuditScope};
use crate::compartment::Compartment;
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::records::{Caller, Version};

/// The most days a shifted-dates export moves a patient's dates, earlier or later: under a year,
/// so a shifted date never lands on its own day and month.
const SHIFT_MAX_DAYS: u16 = 364;

/// What a finished run wrote.
struct Written {
    outputs: Vec<Output>,
    /// The compartments of what it wrote (their patients go in the audit event).
    compartments: HashSet<Compartment>,
}

impl Exports {
    /// Run job `id` in the background (after a free slot).
    pub(super) fn spawn(self: &Arc<Self>, id: String, principal: Principal, body: JobBody) {
        let running = Arc::new(Running::default());
        self.lock_running().insert(id.clone(), running.clone());
        let exports = self.clone();
        tokio::spawn(async move {
            let Ok(_slot) = exports.slots.clone().acquire_owned().await else {
                return;
            };
            exports.run(&id, &principal, body, &running).await;
            exports.lock_running().remove(&id);
        });
    }

    async fn run(&self, id: &str, principal: &Principal, mut body: JobBody, running: &Running) {
        let dir = self.dir.join(id);
        // A job that a restart interrupted begins again from nothing.
        remove_dir(&dir).await;
        let scope = AuditScope::new(
            self.audit.clone(),
            EventRecord {
                request_id: uuid::Uuid::new_v4().to_string(),
                principal: principal.id.clone(),
                roles: principal
                    .role_names()
                    .iter()
                    .map(|r| (*r).to_owned())
                    .collect(),
                auth_method: principal.auth_method().to_owned(),
                client_ip: "background".into(),
                action: AuditAction::ExportComplete.as_str().to_owned(),
                method: "JOB".into(),
                route: "/export/{job}".into(),
                detail: vec![("export_job".to_owned(), id.to_owned())],
                ..EventRecord::default()
            },
        );
        let written = match tokio::fs::create_dir_all(&dir).await {
            Ok(()) => {
                self.write_outputs(id, principal, &body, running, &scope)
                    .await
            }
            Err(e) => Err(Error::Unavailable(format!(
                "export directory: {}",
                e.kind()
            ))),
        };
        let cancelled = running.cancelled.lock().await;
        if *cancelled {
            remove_dir(&dir).await;
            return;
        }
        let finished = match written {
            Ok(written) => {
                scope.add_patients(written.compartments.iter());
                match scope.finish(200).await {
                    Ok(()) => {
                        body.outputs = written.outputs;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        body.finished_us = Some(self.clock.now_us());
        body.state = match finished {
            Ok(()) => JobState::Complete,
            Err(e) => {
                remove_dir(&dir).await;
                let described = e.describe();
                tracing::warn!(event = "export_failed", status = described.status, error = %e);
                scope.set_action(AuditAction::ExportFailed);
                if let Err(audit) = scope.finish(described.status).await {
                    tracing::error!(event = "audit_write_failed", error = %audit);
                }
                match e {
                    Error::TooLarge(message) => JobState::Failed {
                        status: 413,
                        message,
                    },
                    _ => JobState::Failed {
                        status: 500,
                        message: "the export failed: start it again".into(),
                    },
                }
            }
        };
        let recorded = match self
            .sealed_row(id, &principal.id, body.transaction_time_us, &body)
            .await
        {
            Ok(row) => self
                .store
                .write(vec![WriteOp::PutExportJob(row)])
                .await
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::error!(event = "export_job_not_recorded", error = %e);
        }
        drop(cancelled);
    }

    /// Read and write every type of the job; one sealed file per type that has resources.
    async fn write_outputs(
        &self,
        id: &str,
        principal: &Principal,
        body: &JobBody,
        running: &Running,
        scope: &AuditScope,
    ) -> Result<Written> {
        let caller = Caller::new(principal, scope);
        let options = body.options()?;
        let members: Option<HashSet<&str>> = body
            .members
            .as_ref()
            .map(|m| m.iter().map(String::as_str).collect());
        let deid = match &body.deid_secret {
            Some(hex_secret) => {
                let secret: [u8; 32] = hex::decode(hex_secret)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| Error::Integrity("export secret is malformed".into()))?;
                let dates = if body.shift_dates {
                    DateHandling::Shift {
                        max_days: SHIFT_MAX_DAYS,
                    }
                } else {
                    DateHandling::YearOnly
                };
                Some(self.records.deidentifier_under(&secret, dates)?)
            }
            None => None,
        };
        let dir = self.dir.join(id);
        let mut written = Written {
            outputs: Vec::new(),
            compartments: HashSet::new(),
        };
        let mut bytes = 0u64;
        for rtype in &options.types.clone().unwrap_or_default() {
            *running.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(*rtype);
            let mut bulk = self
                .records
                .bulk_read(caller, *rtype, options.query_for(*rtype)?)
                .await?;
            let file = format!("{rtype}.ndjson");
            let mut out: Option<SealedWriter> = None;
            let mut count = 0u64;
            while let Some(window) = self.records.bulk_next(caller, &mut bulk, WINDOW).await? {
                if *running.cancelled.lock().await {
                    return Err(Error::NotFound);
                }
                let mut ndjson = Vec::new();
                for v in window {
                    if !keep(&v, &body.level, members.as_ref(), body.since_us) {
                        continue;
                    }
                    match &deid {
                        Some(d) => ndjson_line(&mut ndjson, &deidentified(d, &v.json)?)?,
                        None => ndjson_line(&mut ndjson, &v.json)?,
                    }
                    written.compartments.insert(v.compartment.clone());
                    count += 1;
                }
                if ndjson.is_empty() {
                    continue;
                }
                bytes += ndjson.len() as u64;
                if bytes > self.limits.max_bytes {
                    return Err(Error::TooLarge(format!(
                        "the export grew past {} bytes (export.max_bytes): narrow it with \
                         _type, _since or _typeFilter",
                        self.limits.max_bytes
                    )));
                }
                let writer = match &mut out {
                    Some(w) => w,
                    None => out
                        .insert(SealedWriter::create(self.keyring.clone(), &dir, id, &file).await?),
                };
                writer.write_frame(&ndjson).await?;
                running.written.fetch_add(
                    ndjson.iter().filter(|b| **b == b'\n').count() as u64,
                    Ordering::Relaxed,
                );
            }
            if let Some(writer) = out {
                let (frames, sha256) = writer.finish().await?;
                written.outputs.push(Output {
                    rtype: rtype.as_str().to_owned(),
                    file,
                    count,
                    sha256,
                    frames,
                });
            }
        }
        Ok(written)
    }
}

/// Whether a resource the caller may read belongs in the export: changed at or after `_since`,
/// and at the Patient and Group levels, in a patient's compartment (a group member's).
fn keep(
    v: &Version,
    level: &Level,
    members: Option<&HashSet<&str>>,
    since_us: Option<i64>,
) -> bool {
    if since_us.is_some_and(|since| v.last_updated_us < since) {
        return false;
    }
    let mut patients = v
        .compartment
        .patient_members()
        .map(crate::compartment::patient_id);
    match (level, members) {
        (Level::System, _) => true,
        (Level::Group { .. }, Some(members)) => patients.any(|p| members.contains(p)),
        (Level::Group { .. }, None) => false,
        (Level::Patient, _) => patients.next().is_some(),
    }
}

/// Append one resource as one NDJSON line (stored JSON is compact; a line break inside it is
/// re-serialized away).
/// A stored resource's JSON de-identified (one line: serde_json writes no newline).
fn deidentified(deid: &carevault_fhir::deid::Deidentifier, json: &[u8]) -> Result<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|_| Error::Integrity("stored JSON does not parse".into()))?;
    let out = deid
        .deidentify(&value)
        .map_err(|e| Error::Internal(format!("de-identification: {e}")))?;
    serde_json::to_vec(&out).map_err(|e| Error::Internal(format!("export line: {e}")))
}

fn ndjson_line(out: &mut Vec<u8>, json: &[u8]) -> Result<()> {
    if memchr::memchr(b'\n', json).is_some() {
        let value: serde_json::Value = serde_json::from_slice(json)
            .map_err(|_| Error::Integrity("stored JSON does not parse".into()))?;
        serde_json::to_writer(&mut *out, &value)
            .map_err(|e| Error::Internal(format!("export line: {e}")))?;
    } else {
        out.extend_from_slice(json);
    }
    out.push(b'\n');
    Ok(())
}

impl JobBody {
    /// The options the job was started with (types resolved at kick-off).
    fn options(&self) -> Result<super::ExportOptions> {
        let parse = |t: &str| {
            ResourceType::parse(t).map_err(|_| Error::Integrity("export job record".into()))
        };
        Ok(super::ExportOptions {
            level: self.level.clone(),
            types: Some(self.types.iter().map(|t| parse(t)).collect::<Result<_>>()?),
            since_us: self.since_us,
            type_filters: self
                .type_filters
                .iter()
                .map(|(t, q)| Ok((parse(t)?, q.clone())))
                .collect::<Result<_>>()?,
            deidentify: self.deid_secret.is_some(),
            shift_dates: self.shift_dates,
            link: None,
            request: self.request.clone(),
        })
    }
}
