//! [`patient_compartment`]: which patient a resource belongs to.

use serde_json::Value;

use crate::{ResourceId, ResourceType};

/// The patient compartment a resource belongs to, as the id of the `Patient`.
///
/// * A `Patient` is in its own compartment: returns `id` (the resource's own id).
/// * Any other resource whose `subject.reference` or, failing that, `patient.reference` is a
///   reference to a Patient belongs to that patient. Accepted reference forms are
///   `Patient/<id>` and an absolute URL ending in `/Patient/<id>`
///   (`https://example.org/fhir/Patient/<id>`), each optionally followed by `/_history/<version>`.
///   `<id>` must be a valid [`ResourceId`].
/// * Otherwise `None`: resources outside any patient compartment (Practitioner, Organization,
///   ...), and also references to a Group or Device, contained (`#p1`) or placeholder
///   (`urn:uuid:...`) references, conditional references (`Patient?identifier=...`),
///   array-valued `subject`s (Account, Contract) and malformed references.
///
/// No R4 resource type has both `subject` and `patient`; a resource that has both fails
/// validation, so validate first. The base URL of an absolute reference is not checked: a
/// caller that must refuse references to other servers should check it.
#[must_use]
pub fn patient_compartment(
    rt: ResourceType,
    id: &ResourceId,
    resource: &Value,
) -> Option<ResourceId> {
    if rt == ResourceType::PATIENT {
        return Some(id.clone());
    }
    let reference_of = |element: &str| {
        resource
            .get(element)
            .and_then(|r| r.get("reference"))
            .and_then(Value::as_str)
    };
    match reference_of("subject") {
        Some(reference) => patient_id_of(reference),
        None => reference_of("patient").and_then(patient_id_of),
    }
}

/// The Patient id in a reference, if it is a reference to a Patient (see
/// [`patient_compartment`]).
fn patient_id_of(reference: &str) -> Option<ResourceId> {
    let reference = strip_history(reference)?;
    let id = match reference.strip_prefix("Patient/") {
        Some(id) => id,
        None => {
            if !is_absolute_url(reference) {
                return None;
            }
            let start = reference.rfind("/Patient/")? + "/Patient/".len();
            &reference[start..]
        }
    };
    ResourceId::parse(id).ok()
}

/// `reference` without a trailing `/_history/<version>`; `None` if the suffix is malformed.
fn strip_history(reference: &str) -> Option<&str> {
    const HISTORY: &str = "/_history/";
    match reference.rfind(HISTORY) {
        Some(start) => {
            let version = &reference[start + HISTORY.len()..];
            crate::types::is_valid_id(version).then(|| &reference[..start])
        }
        None => Some(reference),
    }
}

/// Whether `s` starts with `scheme://` (RFC 3986 scheme: a letter, then letters, digits, `+`,
/// `-`, `.`).
fn is_absolute_url(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once("://") else {
        return false;
    };
    let mut bytes = scheme.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn id(s: &str) -> ResourceId {
        ResourceId::parse(s).expect("valid id")
    }

    fn rt(s: &str) -> ResourceType {
        ResourceType::parse(s).expect("R4 type")
    }

    fn observation_with_subject(reference: &str) -> Value {
        json!({ "resourceType": "Observation", "subject": { "reference": reference } })
    }

    #[test]
    fn patient_is_in_its_own_compartment() {
        let patient = json!({ "resourceType": "Patient", "id": "p1" });
        assert_eq!(
            patient_compartment(ResourceType::PATIENT, &id("p1"), &patient),
            Some(id("p1"))
        );
    }

    #[test]
    fn subject_reference_forms() {
        let cases = [
            ("Patient/123", Some("123")),
            ("Patient/a-b.c", Some("a-b.c")),
            ("Patient/123/_history/4", Some("123")),
            ("https://example.org/fhir/Patient/123", Some("123")),
            ("http://example.org/Patient/123/_history/2", Some("123")),
            ("https://example.org/fhir/R4/Patient/123", Some("123")),
            ("Group/123", None),
            ("Device/123", None),
            ("patient/123", None),
            ("Patient/", None),
            ("Patient", None),
            ("Patient/12 3", None),
            ("Patient/123/extra", None),
            ("Patient/123/_history/", None),
            ("Patient/123/_history/x/y", None),
            ("Patient?identifier=http://x|1", None),
            ("#p1", None),
            ("urn:uuid:8c5f2b1e-3d4a-4f6b-9c7d-1e2f3a4b5c6d", None),
            ("example.org/Patient/123", None),
            ("https://example.org/fhir/Group/1", None),
            ("https://example.org/Patient/123/Group/1", None),
            ("", None),
        ];
        for (reference, expected) in cases {
            let resource = observation_with_subject(reference);
            assert_eq!(
                patient_compartment(rt("Observation"), &id("o1"), &resource),
                expected.map(id),
                "{reference}"
            );
        }
        let too_long = format!("Patient/{}", "a".repeat(65));
        let resource = observation_with_subject(&too_long);
        assert_eq!(
            patient_compartment(rt("Observation"), &id("o1"), &resource),
            None
        );
    }

    #[test]
    fn patient_element() {
        let allergy = json!({
            "resourceType": "AllergyIntolerance",
            "patient": { "reference": "Patient/p7" }
        });
        assert_eq!(
            patient_compartment(ResourceType::ALLERGY_INTOLERANCE, &id("a1"), &allergy),
            Some(id("p7"))
        );
    }

    #[test]
    fn resources_outside_patient_compartments() {
        let practitioner =
            json!({ "resourceType": "Practitioner", "name": [{ "family": "House" }] });
        assert_eq!(
            patient_compartment(ResourceType::PRACTITIONER, &id("d1"), &practitioner),
            None
        );
        let organization = json!({ "resourceType": "Organization", "name": "Clinic" });
        assert_eq!(
            patient_compartment(ResourceType::ORGANIZATION, &id("o1"), &organization),
            None
        );
        let odd = [
            json!({ "resourceType": "Observation", "subject": "Patient/1" }),
            json!({ "resourceType": "Observation", "subject": { "reference": 1 } }),
            json!({ "resourceType": "Observation", "subject": { "display": "Patient/1" } }),
            json!({ "resourceType": "Account", "subject": [{ "reference": "Patient/1" }] }),
            json!([]),
            json!(null),
        ];
        for resource in odd {
            assert_eq!(
                patient_compartment(rt("Observation"), &id("x"), &resource),
                None,
                "{resource}"
            );
        }
    }

    #[test]
    fn subject_takes_precedence_over_patient() {
        let resource = json!({
            "subject": { "reference": "Patient/s" },
            "patient": { "reference": "Patient/p" }
        });
        assert_eq!(
            patient_compartment(rt("Observation"), &id("x"), &resource),
            Some(id("s"))
        );
        // A non-patient subject does not fall back to `patient`.
        let resource = json!({
            "subject": { "reference": "Group/g" },
            "patient": { "reference": "Patient/p" }
        });
        assert_eq!(
            patient_compartment(rt("Observation"), &id("x"), &resource),
            None
        );
    }
}
