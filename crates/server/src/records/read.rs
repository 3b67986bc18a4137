//! Reads: the current version, one version, and a resource's or a type's history.

use carevault_fhir::{ResourceId, ResourceType};
use carevault_store::HistoryQuery;

use super::{Caller, Current, HistoryItem, Records, Version};
use crate::authz::FhirAction;
use crate::error::{Error, Result};

impl Records {
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
        Ok(Current::Present(self.released(caller, v)?))
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
        self.released(caller, v)
    }

    /// Versions newest first: of one resource, of one type, or of every type (`rtype` None). A
    /// type's or the system's history holds only what the caller may read; an instance's
    /// history is refused (404/403) if they may not.
    pub async fn history(
        &self,
        caller: Caller<'_>,
        rtype: Option<ResourceType>,
        id: Option<&ResourceId>,
        since_us: Option<i64>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<HistoryItem>> {
        // The whole system's history (`rtype` None) holds the types the caller may read the
        // history of; one type's is refused outright when the caller may not.
        if let Some(rtype) = rtype {
            caller
                .audit
                .set_resource(rtype.as_str(), id.map(ResourceId::as_str), None);
            if !self
                .authz
                .fhir_type(caller.principal, FhirAction::History, rtype)
            {
                return Err(Error::Forbidden);
            }
        }
        let mut out = Vec::new();
        let mut cursor = before_seq;
        // Filtering can drop rows: keep reading until the page is full or the history ends.
        loop {
            let entries = self
                .store
                .history(HistoryQuery {
                    rtype: rtype.map(|t| t.as_str().to_owned()),
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
                let row_type = ResourceType::parse(&entry.row.rtype)
                    .map_err(|_| Error::Integrity("stored resource type is invalid".into()))?;
                if rtype.is_none()
                    && !self
                        .authz
                        .fhir_type(caller.principal, FhirAction::History, row_type)
                {
                    continue;
                }
                let version = self.open_row(row_type, &id, entry.row).await?;
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
                    version: self.released(caller, version)?,
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
}
