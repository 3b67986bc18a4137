//! The records service: FHIR resources in, sealed versions out. Validates, authorizes (Cedar,
//! through [`Authz`]), assigns ids and versions, stamps `meta`, seals under the compartment's
//! data key, and appends with optimistic concurrency, the audit event committing with the data.
//! Knows nothing of HTTP.

use std::sync::Arc;

use carevault_fhir::{ResourceId, ResourceType, Validator};
use carevault_store::{HistoryQuery, NewResourceVersion, ResourceRow, Store, StoreError, WriteOp};
use serde_json::Value;

use crate::audit::AuditScope;
use crate::authz::{Authz, FhirAction, ResourceAttrs};
use crate::clock::{SharedClock, fhir_instant};
use crate::error::{Error, Result};
use crate::identity::{Principal, PrincipalKind, Role};
use crate::keyring::{ENVIRONMENT_COMPARTMENT, Keyring};

/// How often an update without `If-Match` retries after losing a race.
const UPDATE_RETRIES: usize = 8;

/// Who asks, and the audit event of their request.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub principal: &'a Principal,
    pub audit: &'a AuditScope,
}

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

impl Version {
    fn patient_compartment(&self) -> Option<String> {
        self.compartment
            .starts_with("Patient/")
            .then(|| self.compartment.to_string())
    }
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
    authz: Arc<Authz>,
    clock: SharedClock,
}

impl Records {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        validator: Arc<Validator>,
        authz: Arc<Authz>,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            keyring,
            validator,
            authz,
            clock,
        }
    }

    /// Create with a server-assigned id (any id in the body is replaced, as FHIR says).
    pub async fn create(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        body: Value,
    ) -> Result<Version> {
        let id = ResourceId::parse(&uuid::Uuid::new_v4().to_string())
            .map_err(|_| Error::Internal("generated id is not a valid FHIR id".into()))?;
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), None);
        let body = self.prepare(rtype, body, Some(&id))?;
        self.authorize_write(caller, FhirAction::Create, rtype, &id, &body)
            .await?;
        self.append(caller, rtype, &id, body, None, 1).await
    }

    /// Update (or create with a client-assigned id). `if_match` is the version the client
    /// last saw; without it the update applies to whatever version is current.
    /// Returns the new version and whether it created the resource.
    pub async fn update(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        body: Value,
        if_match: Option<u32>,
    ) -> Result<(Version, bool)> {
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), None);
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
            let current_version = match current {
                Some(row) => {
                    // May the caller change what is there now? (Otherwise it is not theirs to see.)
                    let existing = self.open_row(rtype, id, row).await?;
                    self.authorize_existing(caller, FhirAction::Update, &existing)
                        .await?;
                    Some(existing.version)
                }
                None => None,
            };
            let action = if current_version.is_some() {
                FhirAction::Update
            } else {
                FhirAction::Create
            };
            self.authorize_write(caller, action, rtype, id, &body)
                .await?;
            if let Some(expected) = if_match
                && current_version != Some(expected)
            {
                return Err(Error::PreconditionFailed(
                    "the resource has changed since the version given in If-Match".into(),
                ));
            }
            let next = current_version.map_or(1, |v| v + 1);
            match self
                .append(caller, rtype, id, body.clone(), current_version, next)
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
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<u32>> {
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), None);
        for _ in 0..UPDATE_RETRIES {
            let row = self
                .store
                .resource_current(rtype.as_str(), id.as_str())
                .await?
                .ok_or(Error::NotFound)?;
            let current = self.open_row(rtype, id, row).await?;
            self.authorize_existing(caller, FhirAction::Delete, &current)
                .await?;
            if current.deleted {
                return Ok(None);
            }
            let next = current.version + 1;
            let now = self.clock.now_us();
            // The marker is sealed too (empty plaintext), under the same compartment's key as
            // the version it ends, so it is bound to its row and attributed to its patient.
            let (dek_id, sealed) = self
                .keyring
                .seal(&current.compartment, &self.aad(rtype, id, next), b"")
                .await?;
            caller
                .audit
                .set_resource(rtype.as_str(), Some(id.as_str()), Some(next));
            caller.audit.add_patient(&current.compartment);
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
            match caller.audit.commit_with(&*self.store, vec![op], 204).await {
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
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
    ) -> Result<Current> {
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), None);
        let row = self
            .store
            .resource_current(rtype.as_str(), id.as_str())
            .await?
            .ok_or(Error::NotFound)?;
        let v = self.open_row(rtype, id, row).await?;
        self.authorize_existing(caller, FhirAction::Read, &v)
            .await?;
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), Some(v.version));
        caller.audit.add_patient(&v.compartment);
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
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        version: u32,
    ) -> Result<Version> {
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), Some(version));
        let row = self
            .store
            .resource_version(rtype.as_str(), id.as_str(), version)
            .await?
            .ok_or(Error::NotFound)?;
        let v = self.open_row(rtype, id, row).await?;
        self.authorize_existing(caller, FhirAction::Vread, &v)
            .await?;
        caller.audit.add_patient(&v.compartment);
        if v.deleted {
            return Err(Error::Gone);
        }
        Ok(v)
    }

    /// Versions newest first: of one resource, or of one type. A type's history holds only
    /// what the caller may read; an instance's history is refused (404/403) if they may not.
    pub async fn history(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: Option<&ResourceId>,
        since_us: Option<i64>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<HistoryItem>> {
        caller
            .audit
            .set_resource(rtype.as_str(), id.map(ResourceId::as_str), None);
        if !self
            .authz
            .fhir_type(caller.principal, FhirAction::History, rtype)
        {
            return Err(Error::Forbidden);
        }
        let mut out = Vec::new();
        let mut cursor = before_seq;
        // Filtering can drop rows: keep reading until the page is full or the history ends.
        loop {
            let entries = self
                .store
                .history(HistoryQuery {
                    rtype: Some(rtype.as_str().to_owned()),
                    id: id.map(|i| i.as_str().to_owned()),
                    since_us,
                    before_seq: cursor,
                    limit,
                })
                .await?;
            let exhausted = entries.len() < limit as usize;
            for entry in entries {
                cursor = Some(entry.seq);
                let id = ResourceId::parse(&entry.row.id)
                    .map_err(|_| Error::Integrity("stored id is invalid".into()))?;
                let version = self.open_row(rtype, &id, entry.row).await?;
                // Rows the caller may not read are left out, not an error.
                match self
                    .authorize_existing(caller, FhirAction::History, &version)
                    .await
                {
                    Ok(()) => {}
                    Err(Error::NotFound | Error::Forbidden) => continue,
                    Err(e) => return Err(e),
                }
                caller.audit.add_patient(&version.compartment);
                out.push(HistoryItem {
                    seq: entry.seq,
                    version,
                });
                if out.len() == limit as usize {
                    return Ok(out);
                }
            }
            if exhausted {
                return Ok(out);
            }
        }
    }

    /// The organization managing a patient compartment.
    async fn organization_of(&self, compartment: Option<&str>) -> Result<Option<String>> {
        match compartment {
            Some(c) => self.authz.compartment_organization(c).await,
            None => Ok(None),
        }
    }

    /// Authorize `action` on a stored version. A denial of something the caller could do in
    /// their own organization answers 404, so foreign patients' records cannot be probed.
    async fn authorize_existing(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        v: &Version,
    ) -> Result<()> {
        let compartment = v.patient_compartment();
        let attrs = ResourceAttrs {
            rtype: v.rtype,
            id: v.id.as_str().to_owned(),
            organization: self.organization_of(compartment.as_deref()).await?,
            compartment,
            security: security_labels(&v.json),
        };
        self.authorize(caller, action, &attrs, true).await
    }

    /// Authorize writing `body` (its compartment and labels as they will be).
    async fn authorize_write(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        rtype: ResourceType,
        id: &ResourceId,
        body: &Value,
    ) -> Result<()> {
        let compartment = patient_compartment(rtype, id, body);
        let organization = if rtype == ResourceType::PATIENT {
            managing_organization(body)
        } else {
            self.organization_of(compartment.as_deref()).await?
        };
        let attrs = ResourceAttrs {
            rtype,
            id: id.as_str().to_owned(),
            compartment,
            organization,
            security: body
                .pointer("/meta/security")
                .and_then(Value::as_array)
                .map(|labels| {
                    labels
                        .iter()
                        .filter_map(|l| l["code"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        };
        self.authorize(caller, action, &attrs, false).await
    }

    async fn authorize(
        &self,
        caller: Caller<'_>,
        action: FhirAction,
        attrs: &ResourceAttrs,
        existing: bool,
    ) -> Result<()> {
        let decision = self.authz.fhir(caller.principal, action, attrs, false);
        caller.audit.set_policies(&decision.policies);
        if decision.allowed {
            return Ok(());
        }
        // Break-glass: a clinician's active grant opens reads beyond their organizations.
        if action.is_read()
            && let Some(compartment) = &attrs.compartment
            && matches!(caller.principal.kind, PrincipalKind::User)
            && caller.principal.has_role(Role::Clinician)
            && let Some(reason) = self
                .break_glass_covering(caller.principal, compartment)
                .await?
        {
            let decision = self.authz.fhir(caller.principal, action, attrs, true);
            caller.audit.set_policies(&decision.policies);
            if decision.allowed {
                caller.audit.set_break_glass(&reason);
                tracing::warn!(
                    event = "security_alert",
                    kind = "break_glass_access",
                    principal = %caller.principal.id,
                    request_id = %caller.audit.request_id(),
                    "break-glass access used"
                );
                return Ok(());
            }
        }
        if existing && self.authz.fhir_type(caller.principal, action, attrs.rtype) {
            Err(Error::NotFound)
        } else {
            Err(Error::Forbidden)
        }
    }

    async fn break_glass_covering(
        &self,
        principal: &Principal,
        compartment: &str,
    ) -> Result<Option<String>> {
        let grants = self
            .store
            .break_glass_grants(&principal.id, self.clock.now_secs())
            .await?;
        Ok(grants
            .into_iter()
            .find(|g| g.patient.as_deref().is_none_or(|p| p == compartment))
            .map(|g| g.reason))
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
        caller: Caller<'_>,
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
        let patient = patient_compartment(rtype, id, &body);
        let compartment: Arc<str> =
            Arc::from(patient.as_deref().unwrap_or(ENVIRONMENT_COMPARTMENT));
        let (dek_id, sealed) = self
            .keyring
            .seal(&compartment, &self.aad(rtype, id, version), &json)
            .await?;
        let mut ops = vec![WriteOp::PutResource(NewResourceVersion {
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
        })];
        // A Patient's managing organization decides who may see its compartment.
        let organization = (rtype == ResourceType::PATIENT).then(|| managing_organization(&body));
        if let (Some(org), Some(c)) = (&organization, &patient) {
            ops.push(WriteOp::SetCompartmentOrganization {
                compartment: c.clone(),
                organization: org.clone(),
            });
        }
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), Some(version));
        caller.audit.add_patient(&compartment);
        let status = if expected_current.is_none() { 201 } else { 200 };
        caller.audit.commit_with(&*self.store, ops, status).await?;
        if let (Some(org), Some(c)) = (organization, &patient) {
            self.authz.remember_organization(c, org);
        }
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

fn patient_compartment(rtype: ResourceType, id: &ResourceId, body: &Value) -> Option<String> {
    carevault_fhir::patient_compartment(rtype, id, body).map(|p| format!("Patient/{}", p.as_str()))
}

/// `Organization/<id>` from a Patient's `managingOrganization`, as the bare id.
fn managing_organization(patient: &Value) -> Option<String> {
    let reference = patient
        .pointer("/managingOrganization/reference")?
        .as_str()?;
    let id = reference.rsplit_once("Organization/").map(|(_, id)| id)?;
    ResourceId::parse(id).ok().map(|id| id.as_str().to_owned())
}

/// The `meta.security` codes of a stored resource (only `meta` is decoded).
fn security_labels(json: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Coding {
        code: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        security: Vec<Coding>,
    }
    #[derive(serde::Deserialize)]
    struct Head {
        meta: Option<Meta>,
    }
    if json.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice::<Head>(json)
        .ok()
        .and_then(|h| h.meta)
        .map(|m| m.security.into_iter().filter_map(|c| c.code).collect())
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managing_organization_and_labels() {
        let p = serde_json::json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/org-a"}});
        assert_eq!(managing_organization(&p).as_deref(), Some("org-a"));
        let abs = serde_json::json!({"managingOrganization": {"reference": "https://x.example/fhir/Organization/org-b"}});
        assert_eq!(managing_organization(&abs).as_deref(), Some("org-b"));
        assert_eq!(managing_organization(&serde_json::json!({})), None);
        let json = br#"{"resourceType":"Patient","meta":{"security":[{"system":"s","code":"R"},{"code":"HTEST"}]},"name":[]}"#;
        assert_eq!(security_labels(json), ["R", "HTEST"]);
        assert!(security_labels(b"").is_empty());
    }
}
