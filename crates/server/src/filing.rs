//! Filing: which compartment a resource's JSON places it in (see [`crate::compartment`]), for
//! the records service when it writes and for the upgrade that re-files stored versions.

use carevault_fhir::{ResourceId, ResourceType};
use carevault_store::Store;
use serde_json::Value;

use crate::compartment::Compartment;
use crate::error::{Error, Result};
use crate::keyring::Keyring;

/// The compartment that the resource's own content names: its patients (from the
/// CompartmentDefinition), or for a Binary the compartment of the stored resource its
/// `securityContext` refers to. None when it names neither (shared data, or a Binary whose
/// creator decides).
pub(crate) async fn compartment_named(
    store: &dyn Store,
    keyring: &Keyring,
    rtype: ResourceType,
    id: &ResourceId,
    body: &Value,
) -> Result<Option<Compartment>> {
    let patients = carevault_fhir::patient_compartments(rtype, id, body).map_err(|e| match e {
        carevault_fhir::CompartmentError::TooManyPatients { element } => {
            Error::Unprocessable(vec![carevault_fhir::Issue {
                location: element,
                message: format!(
                    "names more than {} patients; split the resource",
                    carevault_fhir::MAX_PATIENTS
                ),
            }])
        }
        other => Error::Internal(other.to_string()),
    })?;
    if let Some(name) = Compartment::patients(&patients) {
        return Ok(Some(name));
    }
    if rtype != ResourceType::BINARY {
        return Ok(None);
    }
    match body
        .pointer("/securityContext/reference")
        .and_then(Value::as_str)
    {
        Some(reference) => security_context_compartment(store, keyring, reference).await,
        None => Ok(None),
    }
}

/// The compartment of the resource a Binary's `securityContext` refers to: the patient's for a
/// Patient, else that of the stored resource's current version. None when the reference
/// resolves to nothing stored here (it then grants nothing).
async fn security_context_compartment(
    store: &dyn Store,
    keyring: &Keyring,
    reference: &str,
) -> Result<Option<Compartment>> {
    if let Some(patient) = carevault_fhir::patient_id_of(reference) {
        return Ok(Some(Compartment::patient(&patient)));
    }
    let Some((rtype, target)) = type_and_id(reference) else {
        return Ok(None);
    };
    let Some(row) = store
        .resource_current(rtype.as_str(), target.as_str())
        .await?
    else {
        return Ok(None);
    };
    if row.deleted {
        return Ok(None);
    }
    match keyring.compartment_of_sealed(&row.body).await {
        Ok(name) => Ok(Some(name)),
        Err(Error::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The type and id of a literal reference (`Type/id`, or an absolute URL ending in it, either
/// optionally with `/_history/<version>`).
fn type_and_id(reference: &str) -> Option<(ResourceType, ResourceId)> {
    let absolute = reference.contains("://");
    let path = reference
        .split_once("://")
        .map_or(reference, |(_, rest)| rest);
    let path = path.split("/_history/").next()?;
    let (rest, _) = path.rsplit_once('/')?;
    let rtype = rest.rsplit_once('/').map_or(rest, |(_, t)| t);
    // A relative reference is exactly `Type/id`.
    if !absolute && rest != rtype {
        return None;
    }
    let rtype = ResourceType::parse(rtype).ok()?;
    carevault_fhir::reference_to(rtype.as_str(), reference).map(|id| (rtype, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_references() {
        let ok = |r: &str| type_and_id(r).map(|(t, id)| format!("{t}/{id}"));
        assert_eq!(
            ok("DocumentReference/d1").as_deref(),
            Some("DocumentReference/d1")
        );
        assert_eq!(
            ok("https://x.example/fhir/DocumentReference/d1").as_deref(),
            Some("DocumentReference/d1")
        );
        assert_eq!(ok("Nope/d1"), None);
        assert_eq!(ok("DocumentReference/"), None);
        assert_eq!(ok("a/DocumentReference/d1"), None);
        assert_eq!(ok("#contained"), None);
        assert_eq!(
            ok("DocumentReference/d1/_history/3").as_deref(),
            Some("DocumentReference/d1")
        );
        assert_eq!(ok("urn:uuid:1"), None);
    }
}
