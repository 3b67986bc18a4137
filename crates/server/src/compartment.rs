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
//! | `secrets`, `secret:<name>` | credential secrets, and the keyring's named secrets | the server alone |
//!
//! A resource naming several patients has its own data key for that set of patients (one key per
//! distinct set, created on first use). Shredding any one of them deletes every key whose set
//! names that patient, and with them every version sealed under those keys: such a resource is
//! unreadable for good as soon as any one of its patients is shredded, backups included (the
//! key is gone from the database, and restoring an older database re-applies the shred).

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use carevault_fhir::ResourceId;

use crate::names::OrganizationId;

/// Resources outside every patient compartment (Organization, Practitioner, ...).
pub const ENVIRONMENT: &str = "environment";
/// Credential secrets (TOTP seeds).
const SECRETS: &str = "secrets";
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

/// The name of a set of patients (sorted, without repeats), or None for no patient.
fn of_patients(patients: &[ResourceId]) -> Option<String> {
    let mut names = patients.iter().map(of_patient);
    let first = names.next()?;
    Some(names.fold(first, |mut all, next| {
        all.push(' ');
        all.push_str(&next);
        all
    }))
}

/// A compartment's name (the table above), as the keyring, the records, authorization and the
/// audit trail pass it: built by the constructors below or read back from the data key that
/// names it, never assembled by hand. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Compartment(Arc<str>);

impl Compartment {
    /// `Patient/<id>`.
    #[must_use]
    pub fn patient(id: &ResourceId) -> Self {
        Self(Arc::from(of_patient(id)))
    }

    /// The compartment of a set of patients (sorted, without repeats), or None for no patient.
    #[must_use]
    pub fn patients(ids: &[ResourceId]) -> Option<Self> {
        of_patients(ids).map(|name| Self(Arc::from(name)))
    }

    /// `Organization/<id>`: an organization's own Binaries.
    #[must_use]
    pub fn organization(organization: &OrganizationId) -> Self {
        Self(Arc::from(format!("{ORGANIZATION_PREFIX}{organization}")))
    }

    /// Some patient's compartment, named by none: what a question about a whole type ("may
    /// this principal read Observations at all?") puts where a resource's compartment goes.
    #[must_use]
    pub fn some_patient() -> Self {
        Self(Arc::from(""))
    }

    /// Resources outside every patient compartment.
    #[must_use]
    pub fn environment() -> Self {
        Self(Arc::from(ENVIRONMENT))
    }

    /// Credential secrets (TOTP seeds): never a patient's.
    #[must_use]
    pub fn secrets() -> Self {
        Self(Arc::from(SECRETS))
    }

    /// The key of one named secret (audit signing, audit HMAC, search-index keys).
    #[must_use]
    pub fn secret(name: &str) -> Self {
        Self(Arc::from(format!("secret:{name}")))
    }

    /// A name as a data key row holds it: the keyring wrote it from one of the constructors.
    #[must_use]
    pub fn stored(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its members: its patients, or its organization; none for the environment and the
    /// keyring's own secrets.
    pub fn members(&self) -> impl Iterator<Item = Member<'_>> {
        members(&self.0)
    }

    /// Its `Patient/<id>` members.
    pub fn patient_members(&self) -> impl Iterator<Item = &str> {
        patients(&self.0)
    }

    /// Its patients, each as their own compartment (`Patient/<id>`): what authorization decides
    /// and break-glass grants cover, one patient at a time.
    pub fn patient_compartments(&self) -> impl Iterator<Item = Compartment> + '_ {
        self.patient_members().map(|member| self.part(member))
    }

    /// One member of this name as a compartment of its own (itself when it is the only one).
    #[must_use]
    pub fn part(&self, member: &str) -> Compartment {
        if *self.0 == *member {
            self.clone()
        } else {
            Self(Arc::from(member))
        }
    }

    /// Whether it names the patient compartment `patient`.
    #[must_use]
    pub fn names_patient(&self, patient: &Compartment) -> bool {
        names_patient(&self.0, &patient.0)
    }

    #[must_use]
    pub fn is_environment(&self) -> bool {
        &*self.0 == ENVIRONMENT
    }
}

impl fmt::Display for Compartment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Compartment {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Compartment {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Maps keyed by compartment can be asked with a name read elsewhere (a grant's patient).
impl Borrow<str> for Compartment {
    fn borrow(&self) -> &str {
        &self.0
    }
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
    fn a_compartment_is_built_by_its_constructors_and_parts_keep_the_whole_when_alone() {
        let two = Compartment::patients(&ids(&["a", "b"])).expect("two patients");
        assert_eq!(two.as_str(), "Patient/a Patient/b");
        let parts: Vec<Compartment> = two.patient_compartments().collect();
        assert_eq!(
            parts,
            [
                Compartment::patient(&ids(&["a"])[0]),
                Compartment::patient(&ids(&["b"])[0])
            ]
        );
        assert!(two.names_patient(&parts[1]));
        let one = Compartment::patient(&ids(&["a"])[0]);
        let alone: Vec<Compartment> = one.patient_compartments().collect();
        assert!(
            Arc::ptr_eq(&alone[0].0, &one.0),
            "a single patient is its own part, not a copy"
        );
        assert!(Compartment::environment().is_environment());
        assert_eq!(Compartment::environment().patient_compartments().count(), 0);
        assert_eq!(
            Compartment::secret("audit-hmac").as_str(),
            "secret:audit-hmac"
        );
        assert_eq!(Compartment::secrets().members().count(), 0);
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
            members(Compartment::organization(&OrganizationId::parse("org-a").unwrap()).as_str())
                .collect::<Vec<_>>(),
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
            patients(Compartment::organization(&OrganizationId::parse("o").unwrap()).as_str())
                .count(),
            0
        );
    }
}
