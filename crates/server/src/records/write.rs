//! Writes: create, update and delete, each validated, authorized, stamped, sealed and appended
//! with its audit event, and transaction Bundles committed all at once.

use carevault_fhir::{ResourceId, ResourceType};
use carevault_store::{NewResourceVersion, ResourceRow, StoreError, WriteOp};
use serde_json::Value;

use super::access::managing_organization;
use super::{Caller, Records, Tx, TxCommit, Version};
use crate::authz::FhirAction;
use crate::clock::fhir_instant;
use crate::compartment::Compartment;
use crate::error::{Error, Result};
use crate::keyring::NewDataKeys;

/// How often an update without `If-Match` retries after losing a race.
pub(super) const UPDATE_RETRIES: usize = 8;

impl Records {
    /// Create with an id the server chose beforehand (a transaction assigns ids first so that
    /// entries can refer to each other).
    pub async fn create_with_id(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        body: Value,
    ) -> Result<Version> {
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), None);
        let body = self.prepare(rtype, body, Some(id))?;
        let compartment = self
            .authorize_write(caller, FhirAction::Create, rtype, id, &body)
            .await?;
        self.append(caller, rtype, id, body, compartment, None, 1)
            .await
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
        let compartment = self
            .authorize_write(caller, FhirAction::Create, rtype, &id, &body)
            .await?;
        self.append(caller, rtype, &id, body, compartment, None, 1)
            .await
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
            let compartment = self
                .authorize_write(caller, action, rtype, id, &body)
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
                .append(
                    caller,
                    rtype,
                    id,
                    body.clone(),
                    compartment,
                    current_version,
                    next,
                )
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
            let own = NewDataKeys::default();
            let keys = caller.tx.map_or(&own, |tx| &tx.keys);
            let (dek_id, sealed) = self
                .keyring
                .seal_in(keys, &current.compartment, &self.aad(rtype, id, next), b"")
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
            let unindex = WriteOp::ReplaceSearchIndex {
                rtype: rtype.as_str().to_owned(),
                id: id.as_str().to_owned(),
                tokens: Vec::new(),
                only_if_current: None,
            };
            match self.commit(caller, keys, vec![op, unindex], 204).await {
                Ok(()) => return Ok(Some(next)),
                Err(StoreError::Conflict) => continue,
                // Its compartment's data key was rotated after we sealed: seal again.
                Err(StoreError::StaleKey) => {
                    self.keyring.forget_compartment(&current.compartment);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(
            "the resource is being updated concurrently; try again".into(),
        ))
    }

    /// Commit a write with its audit event and the data keys it made (`keys`) now, or hand the
    /// write and its event to the caller's transaction (whose keys `keys` then are).
    async fn commit(
        &self,
        caller: Caller<'_>,
        keys: &NewDataKeys,
        ops: Vec<WriteOp>,
        status: u16,
    ) -> std::result::Result<(), StoreError> {
        match caller.tx {
            Some(tx) => {
                tx.push(ops, caller.audit, status);
                Ok(())
            }
            None => {
                let committed = caller
                    .audit
                    .commit_with(&*self.store, keys.before(ops), status)
                    .await;
                self.keyring.settle(keys, &committed);
                committed
            }
        }
    }

    /// Commit everything a transaction collected, atomically; then its entries' events are
    /// written and its new patients' organizations known.
    pub async fn commit_tx(&self, tx: Tx) -> Result<TxCommit> {
        let ops = tx.keys.before(std::mem::take(
            &mut *tx.ops.lock().unwrap_or_else(|p| p.into_inner()),
        ));
        let sealed_under: Vec<u64> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::PutResource(v) => Some(v.row.dek_id),
                _ => None,
            })
            .collect();
        let written = self.store.write(ops).await;
        self.keyring.settle(&tx.keys, &written);
        match written {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(Error::Conflict(
                    "a resource in the transaction changed concurrently; nothing was written"
                        .into(),
                ));
            }
            // A data key was rotated (`key rotate-data`) between sealing and committing.
            Err(StoreError::StaleKey) => {
                self.keyring.forget_data_keys(&sealed_under);
                return Ok(TxCommit::DataKeyRotated);
            }
            Err(other) => return Err(other.into()),
        }
        for scope in tx.scopes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            scope.mark_written();
        }
        for (c, org) in tx
            .organizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            self.authz.remember_organization(&c, org);
        }
        Ok(TxCommit::Committed)
    }

    /// Validate a client's resource and stamp what the server owns (id on create, `meta`
    /// version and time are set in `append`).
    pub(super) fn prepare(
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

    /// Append a version, sealed under `compartment` (what [`Self::authorize_write`] decided).
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        mut body: Value,
        compartment: Compartment,
        expected_current: Option<u32>,
        version: u32,
    ) -> Result<Version> {
        let now = self.clock.now_us();
        stamp_meta(&mut body, version, now);
        let json =
            serde_json::to_vec(&body).map_err(|e| Error::Internal(format!("serialize: {e}")))?;
        // A Patient's managing organization decides who may see its compartment.
        let (patient, organization) = if rtype == ResourceType::PATIENT {
            (
                Some(compartment.clone()),
                Some(managing_organization(&body)),
            )
        } else {
            (None, None)
        };
        let tokens = self.index.entries(rtype, &body);
        caller
            .audit
            .set_resource(rtype.as_str(), Some(id.as_str()), Some(version));
        caller.audit.add_patient(&compartment);
        let status = if expected_current.is_none() { 201 } else { 200 };
        let own = NewDataKeys::default();
        let keys = caller.tx.map_or(&own, |tx| &tx.keys);
        let mut attempt = 0;
        loop {
            let (dek_id, sealed) = self
                .keyring
                .seal_in(keys, &compartment, &self.aad(rtype, id, version), &json)
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
            ops.push(WriteOp::ReplaceSearchIndex {
                rtype: rtype.as_str().to_owned(),
                id: id.as_str().to_owned(),
                tokens: tokens.clone(),
                only_if_current: None,
            });
            if let (Some(org), Some(c)) = (&organization, &patient) {
                ops.push(WriteOp::SetCompartmentOrganization {
                    compartment: c.to_string(),
                    organization: org.as_ref().map(ToString::to_string),
                });
            }
            match self.commit(caller, keys, ops, status).await {
                Ok(()) => break,
                // The compartment's data key was rotated after we sealed, or a concurrent write
                // gave the compartment its first key before ours: seal again under the live key.
                Err(StoreError::StaleKey) if attempt < 3 => {
                    attempt += 1;
                    self.keyring.forget_compartment(&compartment);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let (Some(org), Some(c)) = (organization, &patient) {
            match caller.tx {
                Some(tx) => {
                    tx.organizations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(c.clone(), org);
                }
                None => self.authz.remember_organization(c, org),
            }
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
