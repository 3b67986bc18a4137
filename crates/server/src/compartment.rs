//! Compartment names: what a sealed resource version belongs to.
//!
//! Every resource version is sealed under the data key of one compartment, and the key's
//! compartment name is the one authoritative statement of whose data it is: authorization, audit
//! and crypto-shredding all read it from the key that opens the version, never from the
//! (client-written) JSON.
//!
//! | name | holds | who may read |
//! | --- | --- | --- |
//! | `Patient/<id>` | a resource of one patient | whoever may see that patient |
//! | `Patient/<a> Patient/<b> ...` | a resource naming several patients (sorted, one space between) | whoever may see every one of them |
//! | `Organization/<id>` | a Binary without a `securityContext` | its creator's organization |
//! | [`ENVIRONMENT`] | a resource outside every patient compartment | every clinician, as shared data |
//!
//! A resource naming several patients has its own data key for that set of patients (one key per
//! distinct set, created on first use). Shredding any one of them deletes every key whose set
//! names that patient, and with them every version sealed under those keys: such a resource is
//! unreadable for good as soon as any one of its patients is shredded, backups included (the
//! key is gone from the database, and restoring an older database re-applies the shred).

use carevault_fhir::ResourceId;

use crate::names::OrganizationId;

/// Resources outside every patient compartment (Organization, Practitioner, ...).
pub const ENVIRONMENT: &str = "environment";
/// How a patient's compartment, and a reference to a patient, begins.
pub const PATIENT_PREFIX: &str = "Patient/";
const ORGANIZATION_PREFIX: &str = "Organization/";

/// The compartment of one patient, `Patient/<id>` (also how a reference names them).
#[must_use]
pub fn of_patient(id: impl std::fmt::Display) -> String {
    format!("{PATIENT_PREFIX}{id}")
}

/// The id of a patient given as `Patient/<id>` or as a bare id (not checked).
#[must_use]
pub fn patient_id(reference_or_id: &str) -> &str {
    reference_or_id
        .strip_prefix(PATIENT_PREFIX)
        .unwrap_or(reference_or_id)
}

/// A patient given as `Patient/<id>` or as a bare id, parsed; None when the id is not a valid
/// FHIR id (callers answer without echoing it).
#[must_use]
pub fn parse_patient(reference_or_id: &str) -> Option<ResourceId> {
    ResourceId::parse(patient_id(reference_or_id)).ok()
}

/// The compartment of a set of patients (sorted, without repeats), or None for no patient.
#[must_use]
pub fn of_patients(patients: &[ResourceId]) -> Option<String> {
    let mut names = patients.iter().map(of_patient);
    let first = names.next()?;
    Some(names.fold(first, |mut all, next| {
        all.push(' ');
        all.push_str(&next);
        all
    }))
}

/// The compartment of an organization's own resources (a Binary without `securityContext`).
#[must_use]
pub fn of_organization(organization: &OrganizationId) -> String {
    format!("{ORGANIZATION_PREFIX}{organization}")
}

/// One member of a compartment name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member<'a> {
    /// `Patient/<id>`, whole.
    Patient(&'a str),
    /// The organization's id (without `Organization/`).
    Organization(&'a str),
}

/// The members of a compartment name: its patients, or its organization; none for the
/// environment and the keyring's own secrets.
pub fn members(name: &str) -> impl Iterator<Item = Member<'_>> {
    name.split(' ').filter_map(|part| {
        if part.starts_with(PATIENT_PREFIX) {
            Some(Member::Patient(part))
        } else {
            part.strip_prefix(ORGANIZATION_PREFIX)
                .map(Member::Organization)
        }
    })
}

/// The `Patient/<id>` members of a compartment name.
pub fn patients(name: &str) -> impl Iterator<Item = &str> {
    members(name).filter_map(|m| match m {
        Member::Patient(p) => Some(p),
        Member::Organization(_) => None,
    })
}

/// Whether a compartment name names the patient compartment `patient` (`Patient/<id>`).
#[must_use]
pub fn names_patient(name: &str, patient: &str) -> bool {
    patients(name).any(|p| p == patient)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<ResourceId> {
        list.iter()
            .map(|s| ResourceId::parse(s).expect("valid id"))
            .collect()
    }

    #[test]
    fn names_and_members() {
        assert_eq!(of_patients(&[]), None);
        assert_eq!(of_patients(&ids(&["a"])).as_deref(), Some("Patient/a"));
        let two = of_patients(&ids(&["a", "b.c"])).expect("two patients");
        assert_eq!(two, "Patient/a Patient/b.c");
        assert_eq!(
            members(&two).collect::<Vec<_>>(),
            [Member::Patient("Patient/a"), Member::Patient("Patient/b.c")]
        );
        assert!(names_patient(&two, "Patient/b.c"));
        assert!(!names_patient(&two, "Patient/b"));
        assert_eq!(
            members(&of_organization(&OrganizationId::parse("org-a").unwrap())).collect::<Vec<_>>(),
            [Member::Organization("org-a")]
        );
        assert_eq!(members(ENVIRONMENT).count(), 0);
        assert_eq!(of_patient("a"), "Patient/a");
        assert_eq!(patient_id("Patient/a"), "a");
        assert_eq!(patient_id("a"), "a");
        assert_eq!(parse_patient("Patient/b.c"), Some(ids(&["b.c"])[0].clone()));
        assert_eq!(parse_patient("Patient/"), None);
        assert_eq!(parse_patient("Patient/a b"), None);
        assert_eq!(members("secrets").count(), 0);
        assert_eq!(members("secret:audit-signing").count(), 0);
        assert_eq!(
            patients(&of_organization(&OrganizationId::parse("o").unwrap())).count(),
            0
        );
    }
}
