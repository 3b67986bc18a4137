//! The records service: FHIR resources in, sealed versions out. Validates, assigns ids and
//! versions, stamps `meta`, seals under the compartment's data key, and appends with optimistic
//! concurrency. Knows nothing of HTTP.

use std::sync::Arc;

use carevault_fhir::{ResourceId, ResourceType, Validator};
use carevault_store::{HistoryQuery, NewResourceVersion, ResourceRow, Store, StoreError, WriteOp};
use serde_json::Value;

use crate::audit::AuditScope;
use crate::clock::{SharedClock, fhir_instant};
use crate::error::{Error, Result};
use crate::keyring::{ENVIRONMENT_COMPARTMENT, Keyring};

/// How often an update without `If-Match` retries after losing a race.
const UPDATE_RETRIES: usize = 8;

/// One resource version as the API serves it: plaintext JSON, or a deletion marker.
#[derive(Clone, Debug)]
pub struct Version {
    pub rtype: ResourceType,
    pub id: ResourceId,
    pub version: u32,
    pub last_updated_us: i64,
    pub deleted: bool,
    /// The resource's JSON (empty for a deletion).
    pub json: Vec<u8>,
    /// The compartment whose key sealed it: `Patient/<id>` or the environment's.
    pub compartment: Arc<str>,
}

/// An entry of a history listing, with its paging cursor.
#[derive(Clone, Debug)]
pub struct HistoryItem {
    pub seq: i64,
    pub version: Version,
}

/// The outcome of a read: present, or deleted at some version.
pub enum Current {
    Present(Version),
    Deleted { version: u32, last_updated_us: i64 },
}

pub struct Records {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    validator: Arc<Validator>,
    clock: SharedClock,
}

impl Records {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        validator: Arc<Validator>,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            keyring,
            validator,
            clock,
        }
    }

    /// Create with a server-assigned id (any id in the body is replaced, as FHIR says).
    pub async fn create(
        &self,
        audit: &AuditScope,
        rtype: ResourceType,
        body: Value,
    ) -> Result<Version> {
        let id = ResourceId::parse(&uuid::Uuid::new_v4().to_string())
            .map_err(|_| Error::Internal("generated id is not a valid FHIR id".into()))?;
        let body = self.prepare(rtype, body, Some(&id))?;
        self.append(audit, rtype, &id, body, None, 1).await
    }

    /// Update (or create with a client-assigned id). `if_match` is the version the client
    /// last saw; without it the update applies to whatever version is current.
    /// Returns the new version and whether it created the resource.
    pub async fn update(
        &self,
        audit: &AuditScope,
        rtype: ResourceType,
        id: &ResourceId,
        body: Value,
        if_match: Option<u32>,
    ) -> Result<(Version, bool)> {
        match body.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id.as_str() => {}
            Some(_) => {
                return Err(Error::BadRequest(
                    "the id in the body does not match the id in the URL".into(),
                ));
            }
            None => {
                return Err(Error::BadRequest(
                    "the resource must carry the id given in the URL".into(),
                ));
            }
        }
        let body = self.prepare(rtype, body, None)?;
        for _ in 0..UPDATE_RETRIES {
            let current = self
                .store
                .resource_current(rtype.as_str(), id.as_str())
                .await?;
            let current_version = current.as_ref().map(|r| r.version);
            if let Some(expected) = if_match
                && current_version != Some(expected)
            {
                return Err(Error::PreconditionFailed(
                    "the resource has changed since the version given in If-Match".into(),
                ));
            }
            let next = current_version.map_or(1, |v| v + 1);
            match self
                .append(audit, rtype, id, body.clone(), current_version, next)
                .await
            {
                Ok(v) => return Ok((v, current_version.is_none())),
                Err(Error::Conflict(_)) if if_match.is_none() => continue,
                Err(Error::Conflict(_)) => {
                    return Err(Error::PreconditionFailed(
                        "the resource has changed since the version given in If-Match".into(),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(
            "the resource is being updated concurrently; try again".into(),
        ))
    }

    /// Delete: appends a deletion marker. Returns the deleted version, or None if the resource
    /// was already deleted.
    pub async fn delete(
        &self,
        audit: &AuditScope,
        rtype: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<u32>> {
        audit.set_resource(rtype.as_str(), Some(id.as_str()), None);
        for _ in 0..UPDATE_RETRIES {
            let current = self
                .store
                .resource_current(rtype.as_str(), id.as_str())
                .await?
                .ok_or(Error::NotFound)?;
            if current.deleted {
                return Ok(None);
            }
            let next = current.version + 1;
            let now = self.clock.now_us();
            // The marker is sealed too (empty plaintext), under the same compartment's key as
            // the version it ends, so it is bound to its row and attributed to its patient.
            let (_, compartment) = self
                .keyring
                .open_with_compartment(&self.aad(rtype, id, current.version), &current.body)
                .await?;
            let (dek_id, sealed) = self
                .keyring
                .seal(&compartment, &self.aad(rtype, id, next), b"")
                .await?;
            audit.set_resource(rtype.as_str(), Some(id.as_str()), Some(next));
            audit.add_patient(&compartment);
            let op = WriteOp::PutResource(NewResourceVersion {
                row: ResourceRow {
                    rtype: rtype.as_str().to_owned(),
                    id: id.as_str().to_owned(),
                    version: next,
                    last_updated_us: now,
                    deleted: true,
                    dek_id,
                    body: sealed,
                },
                expected_current: Some(current.version),
            });
            match audit.commit_with(&*self.store, vec![op], 204).await {
                Ok(()) => return Ok(Some(next)),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(
            "the resource is being updated concurrently; try again".into(),
        ))
    }

    pub async fn read(
        &self,
        audit: &AuditScope,
        rtype: ResourceType,
        id: &ResourceId,
    ) -> Result<Current> {
        audit.set_resource(rtype.as_str(), Some(id.as_str()), None);
        let row = self
            .store
            .resource_current(rtype.as_str(), id.as_str())
            .await?
            .ok_or(Error::NotFound)?;
        let v = self.open_row(rtype, id, row).await?;
        audit.set_resource(rtype.as_str(), Some(id.as_str()), Some(v.version));
        audit.add_patient(&v.compartment);
        if v.deleted {
            return Ok(Current::Deleted {
                version: v.version,
                last_updated_us: v.last_updated_us,
            });
        }
        Ok(Current::Present(v))
    }

    pub async fn vread(
        &self,
        audit: &AuditScope,
        rtype: ResourceType,
        id: &ResourceId,
        version: u32,
    ) -> Result<Version> {
        audit.set_resource(rtype.as_str(), Some(id.as_str()), Some(version));
        let row = self
            .store
            .resource_version(rtype.as_str(), id.as_str(), version)
            .await?
            .ok_or(Error::NotFound)?;
        let v = self.open_row(rtype, id, row).await?;
        audit.add_patient(&v.compartment);
        if v.deleted {
            return Err(Error::Gone);
        }
        Ok(v)
    }

    /// Versions newest first: of one resource, or of one type.
    pub async fn history(
        &self,
        audit: &AuditScope,
        rtype: ResourceType,
        id: Option<&ResourceId>,
        since_us: Option<i64>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<HistoryItem>> {
        audit.set_resource(rtype.as_str(), id.map(ResourceId::as_str), None);
        let entries = self
            .store
            .history(HistoryQuery {
                rtype: Some(rtype.as_str().to_owned()),
                id: id.map(|i| i.as_str().to_owned()),
                since_us,
                before_seq,
                limit,
            })
            .await?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let id = ResourceId::parse(&entry.row.id)
                .map_err(|_| Error::Integrity("stored id is invalid".into()))?;
            let version = self.open_row(rtype, &id, entry.row).await?;
            audit.add_patient(&version.compartment);
            out.push(HistoryItem {
                seq: entry.seq,
                version,
            });
        }
        Ok(out)
    }

    /// Validate a client's resource and stamp what the server owns (id on create, `meta`
    /// version and time are set in `append`).
    fn prepare(
        &self,
        rtype: ResourceType,
        mut body: Value,
        assign_id: Option<&ResourceId>,
    ) -> Result<Value> {
        let Some(obj) = body.as_object_mut() else {
            return Err(Error::BadRequest(
                "the body must be a JSON object (a FHIR resource)".into(),
            ));
        };
        match obj.get("resourceType") {
            Some(Value::String(t)) if t == rtype.as_str() => {}
            Some(_) => {
                return Err(Error::BadRequest(
                    "resourceType in the body does not match the resource type in the URL".into(),
                ));
            }
            None => return Err(Error::BadRequest("the resource has no resourceType".into())),
        }
        if let Some(id) = assign_id {
            obj.insert("id".into(), Value::String(id.as_str().to_owned()));
        }
        // Placeholders so the schema sees the final shape; `append` sets the real values.
        stamp_meta(&mut body, 1, 0);
        self.validator
            .validate(rtype, &body)
            .map_err(Error::Unprocessable)?;
        Ok(body)
    }

    async fn append(
        &self,
        audit: &AuditScope,
        rtype: ResourceType,
        id: &ResourceId,
        mut body: Value,
        expected_current: Option<u32>,
        version: u32,
    ) -> Result<Version> {
        let now = self.clock.now_us();
        stamp_meta(&mut body, version, now);
        let json =
            serde_json::to_vec(&body).map_err(|e| Error::Internal(format!("serialize: {e}")))?;
        let compartment: Arc<str> = Arc::from(compartment_of(rtype, id, &body));
        let (dek_id, sealed) = self
            .keyring
            .seal(&compartment, &self.aad(rtype, id, version), &json)
            .await?;
        let op = WriteOp::PutResource(NewResourceVersion {
            row: ResourceRow {
                rtype: rtype.as_str().to_owned(),
                id: id.as_str().to_owned(),
                version,
                last_updated_us: now,
                deleted: false,
                dek_id,
                body: sealed,
            },
            expected_current,
        });
        audit.set_resource(rtype.as_str(), Some(id.as_str()), Some(version));
        audit.add_patient(&compartment);
        let status = if expected_current.is_none() { 201 } else { 200 };
        audit.commit_with(&*self.store, vec![op], status).await?;
        Ok(Version {
            rtype,
            id: id.clone(),
            version,
            last_updated_us: now,
            deleted: false,
            json,
            compartment,
        })
    }

    async fn open_row(
        &self,
        rtype: ResourceType,
        id: &ResourceId,
        row: ResourceRow,
    ) -> Result<Version> {
        let (json, compartment) = self
            .keyring
            .open_with_compartment(&self.aad(rtype, id, row.version), &row.body)
            .await?;
        Ok(Version {
            rtype,
            id: id.clone(),
            version: row.version,
            last_updated_us: row.last_updated_us,
            deleted: row.deleted,
            json: if row.deleted { Vec::new() } else { json },
            compartment,
        })
    }

    /// Associated data binding a version to its environment, type, id and version number.
    fn aad(&self, rtype: ResourceType, id: &ResourceId, version: u32) -> Vec<u8> {
        format!(
            "carevault-resource\0{}\0{}\0{}\0{}",
            self.keyring.env_id(),
            rtype.as_str(),
            id.as_str(),
            version
        )
        .into_bytes()
    }
}

fn compartment_of(rtype: ResourceType, id: &ResourceId, body: &Value) -> String {
    match carevault_fhir::patient_compartment(rtype, id, body) {
        Some(patient) => format!("Patient/{}", patient.as_str()),
        None => ENVIRONMENT_COMPARTMENT.to_owned(),
    }
}

fn stamp_meta(body: &mut Value, version: u32, now_us: i64) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !meta.is_object() {
        // Leave a wrong-typed meta for the validator to refuse.
        return;
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert("lastUpdated".into(), Value::String(fhir_instant(now_us)));
    }
}
