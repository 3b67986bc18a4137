//! The records service's side of patient compartments: which compartment a resource about to be
//! written is sealed under, what the policies see of a compartment's members, compartment search
//! and `$everything`.

use carevault_fhir::search::Query;
use carevault_fhir::{ResourceId, ResourceType};
use serde_json::Value;

use super::search::{decode_cursor, encode_cursor};
use super::{Caller, Records, SearchPage, Version};
use crate::authz::ResourceAttrs;
use crate::compartment::{Compartment, Member};
use crate::error::{Error, Result};
use crate::names::OrganizationId;

/// What `$everything` asks for.
#[derive(Clone, Debug)]
pub struct EverythingQuery {
    /// Only these types (`_type`), or all.
    pub types: Option<Vec<ResourceType>>,
    /// Only resources last updated at or after this time (`_since`), microseconds.
    pub since_us: Option<i64>,
    pub count: u32,
    /// The paging cursor of the previous page.
    pub page: Option<String>,
}

/// One page of `$everything`.
pub struct EverythingPage {
    pub entries: Vec<Version>,
    pub next: Option<String>,
}

impl Records {
    /// Compartment search (`GET /fhir/Patient/{id}/{type}`): the search, among the resources of
    /// the patient's compartment only (those sealed under a key that names the patient).
    pub async fn search_compartment(
        &self,
        caller: Caller<'_>,
        patient: &ResourceId,
        rtype: ResourceType,
        query: &Query,
    ) -> Result<SearchPage> {
        let compartment = Compartment::patient(patient);
        caller.audit.add_patient(&compartment);
        let within: Vec<String> = if rtype == ResourceType::PATIENT {
            vec![patient.as_str().to_owned()]
        } else {
            self.compartment_members(&compartment)
                .await?
                .into_iter()
                .filter(|(t, _)| *t == rtype)
                .map(|(_, id)| id.as_str().to_owned())
                .collect()
        };
        self.search_within(caller, rtype, query, Some(within)).await
    }

    /// The current resources of a patient's compartment (the Patient among them, if stored):
    /// those whose current version is sealed under a key naming the patient, sorted.
    async fn compartment_members(
        &self,
        compartment: &Compartment,
    ) -> Result<Vec<(ResourceType, ResourceId)>> {
        let keys = self.store.data_keys_naming(compartment.as_str()).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut members: Vec<(ResourceType, ResourceId)> = self
            .store
            .current_under_keys(keys)
            .await?
            .into_iter()
            .filter_map(|(t, id)| {
                Some((ResourceType::parse(&t).ok()?, ResourceId::parse(&id).ok()?))
            })
            .collect();
        members.sort_unstable_by(|(ta, a), (tb, b)| {
            (ta.as_str(), a.as_str()).cmp(&(tb.as_str(), b.as_str()))
        });
        Ok(members)
    }

    /// `Patient/{id}/$everything`: every current resource of the patient's compartment that the
    /// caller may read, by type then id, `count` at a time after the cursor `page`; optionally
    /// only of some types, and only those changed since a time. 404 unless the caller may read
    /// the Patient itself.
    pub async fn everything(
        &self,
        caller: Caller<'_>,
        patient: &ResourceId,
        query: &EverythingQuery,
    ) -> Result<EverythingPage> {
        let compartment = Compartment::patient(patient);
        caller
            .audit
            .set_resource("Patient", Some(patient.as_str()), None);
        caller.audit.add_patient(&compartment);
        if self
            .readable_current(caller, ResourceType::PATIENT, patient)
            .await?
            .is_none()
        {
            return Err(Error::NotFound);
        }
        self.note_deidentified(caller);
        let page = self.opened_cursor(caller, query.page.as_deref())?;
        let after = page.as_deref().map(decode_cursor).transpose()?;
        let after =
            after.map(|(keys, id)| (keys.into_iter().next().flatten().unwrap_or_default(), id));
        let mut entries = Vec::new();
        let mut next = None;
        for (t, id) in self.compartment_members(&compartment).await? {
            if query
                .types
                .as_ref()
                .is_some_and(|types| !types.contains(&t))
            {
                continue;
            }
            if let Some((after_t, after_id)) = &after
                && (t.as_str(), id.as_str()) <= (after_t.as_str(), after_id.as_str())
            {
                continue;
            }
            let Some(v) = self.readable_current(caller, t, &id).await? else {
                continue;
            };
            if query
                .since_us
                .is_some_and(|since| v.last_updated_us < since)
            {
                continue;
            }
            if entries.len() == query.count as usize {
                next = entries.last().map(|last: &Version| {
                    encode_cursor(&[Some(last.rtype.to_string())], last.id.as_str())
                });
                break;
            }
            entries.push(v);
        }
        for v in &entries {
            caller.audit.add_patient(&v.compartment);
        }
        Ok(EverythingPage {
            entries: self.released_all(caller, entries)?,
            next: self.sealed_cursor(caller, next)?,
        })
    }

    /// The compartment a resource about to be written is sealed under (see
    /// [`crate::compartment`]): its patients from the CompartmentDefinition; for a Binary, the
    /// compartment of its `securityContext`, else its creator's organization; else shared.
    pub(super) async fn compartment_of_new(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        body: &Value,
    ) -> Result<Compartment> {
        if let Some(name) =
            crate::filing::compartment_named(&*self.store, &self.keyring, rtype, id, body).await?
        {
            return Ok(name);
        }
        if rtype != ResourceType::BINARY {
            return Ok(Compartment::environment());
        }
        // No (resolvable) securityContext: the creator's organization only.
        match &caller.principal.organization {
            Some(org) => Ok(Compartment::organization(org)),
            None => Err(Error::Unprocessable(vec![carevault_fhir::Issue {
                location: "Binary.securityContext".into(),
                message: "is required from a creator without an organization".into(),
            }])),
        }
    }

    /// What the policies see of a resource in `compartment`: one set of attributes per patient
    /// (every one must be allowed), one for an organization's own Binary, one for shared data.
    pub(super) async fn compartment_attrs(
        &self,
        caller: Caller<'_>,
        rtype: ResourceType,
        id: &ResourceId,
        compartment: &Compartment,
        security: Vec<String>,
        patient_organization: Option<Option<OrganizationId>>,
    ) -> Result<Vec<ResourceAttrs>> {
        let one = |compartment: Option<Compartment>, organization: Option<OrganizationId>| {
            ResourceAttrs {
                rtype,
                id: id.as_str().to_owned(),
                compartment,
                organization,
                security: security.clone(),
            }
        };
        let mut out = Vec::with_capacity(1);
        for member in compartment.members() {
            out.push(match member {
                Member::Patient(p) => {
                    let patient = compartment.part(p);
                    let organization = match &patient_organization {
                        Some(org) => org.clone(),
                        None => self.organization_of(caller, Some(&patient)).await?,
                    };
                    one(Some(patient), organization)
                }
                Member::Organization(org) => {
                    one(Some(compartment.clone()), OrganizationId::stored(Some(org)))
                }
            });
        }
        if out.is_empty() {
            out.push(one(None, None));
        }
        Ok(out)
    }
}
