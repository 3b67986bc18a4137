//! The interactions that decide their target by reading first: conditional create, update and
//! delete (R4 3.1.0.4.3, 3.1.0.7.1, 3.1.0.8.1), which select a resource by search criteria;
//! `patch` (3.1.0.6), which changes the current version; and `$validate`, which writes nothing.
//! Each reads through the same authorization as a search or a read, so a resource the caller
//! may not see is never selected, and nothing says that one exists.

use carevault_fhir::patch::Patch;
use carevault_fhir::search::{self, Total};
use carevault_fhir::{ResourceId, ResourceType};
use serde_json::Value;

use super::write::UPDATE_RETRIES;
use super::{Caller, Current, Records, Version};
use crate::authz::FhirAction;
use crate::error::{Error, Result};

/// How many resources a conditional interaction's criteria select, among those the caller may
/// read.
#[derive(Debug)]
pub enum Selected {
    None,
    One(Version),
    Several,
}

impl Records {
    /// The resource of `rtype` that `criteria` (search parameters) select for a conditional
    /// interaction.
    pub async fn select(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        criteria: &[(String, String)],
    ) -> Result<Selected> {
        let criteria: Vec<(String, String)> = criteria
            .iter()
            .filter(|(k, _)| k != "_format")
            .cloned()
            .collect();
        let mut query = search::parse_query(rtype, &criteria, false)
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        if query.condition_count() == 0 {
            return Err(Error::BadRequest(
                "a conditional interaction needs search parameters that select the resource".into(),
            ));
        }
        // Only whether none, one or several match is asked: two are enough to tell.
        query.count = 2;
        query.page = None;
        query.sort.clear();
        query.include.clear();
        query.revinclude.clear();
        query.summary_count = false;
        query.total = Total::None;
        query.elements = None;
        query.summary = None;
        let mut page = self.search(caller, rtype, &query).await?;
        Ok(match page.matches.len() {
            0 => Selected::None,
            1 => Selected::One(page.matches.remove(0)),
            _ => Selected::Several,
        })
    }

    /// Conditional create (`If-None-Exist`): the resource the criteria select if there is one
    /// (nothing is written), else a new resource. Returns the version and whether it is new.
    pub async fn create_unless_exists(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        criteria: &[(String, String)],
        body: Value,
    ) -> Result<(Version, bool)> {
        match self.select(caller, rtype, criteria).await? {
            Selected::None => Ok((self.create(caller, rtype, body).await?, true)),
            Selected::One(existing) => {
                caller.audit.set_resource(
                    rtype.as_str(),
                    Some(existing.id.as_str()),
                    Some(existing.version),
                );
                Ok((existing, false))
            }
            Selected::Several => Err(several_match()),
        }
    }

    /// Conditional update (`PUT [type]?criteria`): updates the one resource the criteria
    /// select; with none, creates one (with the body's id if it has one, as an update does).
    /// Returns the version and whether it created the resource.
    pub async fn update_selected(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        criteria: &[(String, String)],
        body: Value,
        if_match: Option<u32>,
    ) -> Result<(Version, bool)> {
        let body_id = match body.get("id") {
            None => None,
            Some(id) => Some(
                id.as_str()
                    .and_then(|id| ResourceId::parse(id).ok())
                    .ok_or_else(|| Error::BadRequest("the id in the body is not valid".into()))?,
            ),
        };
        match self.select(caller, rtype, criteria).await? {
            Selected::One(existing) => {
                if body_id.as_ref().is_some_and(|id| *id != existing.id) {
                    return Err(Error::BadRequest(
                        "the id in the body is not the id of the resource the criteria select"
                            .into(),
                    ));
                }
                let mut body = body;
                if let Some(obj) = body.as_object_mut() {
                    obj.insert("id".into(), Value::String(existing.id.as_str().to_owned()));
                }
                self.update(caller, rtype, &existing.id, body, if_match)
                    .await
            }
            Selected::None => match body_id {
                Some(id) => self.update(caller, rtype, &id, body, if_match).await,
                None => Ok((self.create(caller, rtype, body).await?, true)),
            },
            Selected::Several => Err(several_match()),
        }
    }

    /// Conditional delete (`DELETE [type]?criteria`, single match only, as the
    /// CapabilityStatement says): deletes the one resource the criteria select. Returns its
    /// deleted version, or None when nothing was selected or it was already deleted.
    pub async fn delete_selected(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        criteria: &[(String, String)],
    ) -> Result<Option<u32>> {
        match self.select(caller, rtype, criteria).await? {
            Selected::None => Ok(None),
            Selected::One(existing) => self.delete(caller, rtype, &existing.id).await,
            Selected::Several => Err(several_match()),
        }
    }

    /// Apply a patch (JSON Patch or FHIRPath Patch) to the current version and store the result
    /// as the next version.
    /// `if_match` is the version the client patched; without it a patch that loses a race with
    /// another write is applied again to the newer version. `max_bytes` bounds the patched
    /// resource.
    pub async fn patch(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        patch: &Patch,
        if_match: Option<u32>,
        max_bytes: usize,
    ) -> Result<Version> {
        // Without `If-Match`, a patch that lost a race is read and applied again, as often as an
        // update retries.
        for _ in 0..UPDATE_RETRIES {
            let current = match self.read(caller, rtype, id).await? {
                Current::Present(v) => v,
                Current::Deleted { .. } => return Err(Error::Gone),
            };
            if let Some(expected) = if_match
                && expected != current.version
            {
                return Err(Error::PreconditionFailed(
                    "the resource has changed since the version given in If-Match".into(),
                ));
            }
            let mut doc: Value = serde_json::from_slice(&current.json)
                .map_err(|_| Error::Integrity("stored JSON does not parse".into()))?;
            patch
                .apply(&mut doc, max_bytes)
                .map_err(|e| Error::BadRequest(e.to_string()))?;
            match self
                .update(caller, rtype, id, doc, Some(current.version))
                .await
            {
                Ok((v, _)) => return Ok(v),
                Err(Error::PreconditionFailed(_)) if if_match.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(
            "the resource is being updated concurrently; try again".into(),
        ))
    }

    /// `$validate`: whether `body` would be accepted as a `rtype` (schema and FHIR rules), without
    /// storing anything. Asks the same permission as a create of the type.
    pub fn validate(&self, caller: Caller<'_>, rtype: ResourceType, body: Value) -> Result<()> {
        caller.audit.set_resource(rtype.as_str(), None, None);
        if !self
            .authz
            .fhir_type(caller.principal, FhirAction::Create, rtype)
        {
            return Err(Error::Forbidden);
        }
        self.prepare(rtype, body, None).map(|_| ())
    }
}

fn several_match() -> Error {
    Error::PreconditionFailed(
        "the search criteria select more than one resource; make them more specific".into(),
    )
}
