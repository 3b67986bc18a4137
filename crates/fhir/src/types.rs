//! [`ResourceType`] and [`ResourceId`]: validated names and logical ids of FHIR resources.

use std::fmt;
use std::str::FromStr;

use crate::FhirError;

/// The 146 FHIR R4 (4.0.1) resource types, sorted by byte value so that they can be binary
/// searched and so that the derived `Ord` of [`ResourceType`] is alphabetical.
///
/// The vendored schema's `discriminator.mapping` lists these first, then Medplum-only types
/// (`Project`, `User`, `Bot`, `AccessPolicy`, ...), which are deliberately absent here.
const R4_RESOURCE_TYPES: [&str; 146] = [
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// One of the 146 FHIR R4 resource types (`Account` ... `VisionPrescription`).
///
/// Only values from the R4 list can be constructed ([`ResourceType::parse`],
/// [`ResourceType::all`] and the associated constants), so holding one proves the name is valid.
/// Ordering is alphabetical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

impl ResourceType {
    /// `AllergyIntolerance`.
    pub const ALLERGY_INTOLERANCE: Self = Self("AllergyIntolerance");
    /// `Binary`.
    pub const BINARY: Self = Self("Binary");
    /// `Bundle`.
    pub const BUNDLE: Self = Self("Bundle");
    /// `Condition`.
    pub const CONDITION: Self = Self("Condition");
    /// `DiagnosticReport`.
    pub const DIAGNOSTIC_REPORT: Self = Self("DiagnosticReport");
    /// `DocumentReference`.
    pub const DOCUMENT_REFERENCE: Self = Self("DocumentReference");
    /// `Encounter`.
    pub const ENCOUNTER: Self = Self("Encounter");
    /// `Immunization`.
    pub const IMMUNIZATION: Self = Self("Immunization");
    /// `MedicationRequest`.
    pub const MEDICATION_REQUEST: Self = Self("MedicationRequest");
    /// `Observation`.
    pub const OBSERVATION: Self = Self("Observation");
    /// `OperationOutcome`.
    pub const OPERATION_OUTCOME: Self = Self("OperationOutcome");
    /// `Organization`.
    pub const ORGANIZATION: Self = Self("Organization");
    /// `Parameters`.
    pub const PARAMETERS: Self = Self("Parameters");
    /// `Patient`.
    pub const PATIENT: Self = Self("Patient");
    /// `Practitioner`.
    pub const PRACTITIONER: Self = Self("Practitioner");
    /// `Procedure`.
    pub const PROCEDURE: Self = Self("Procedure");

    /// Parses an exact, case-sensitive R4 resource type name.
    ///
    /// # Errors
    ///
    /// [`FhirError::UnknownResourceType`] for anything else, including Medplum-only types such
    /// as `Project` or `User`. The error does not echo the input.
    pub fn parse(s: &str) -> Result<Self, FhirError> {
        R4_RESOURCE_TYPES
            .binary_search(&s)
            .ok()
            .and_then(|index| R4_RESOURCE_TYPES.get(index))
            .map(|name| Self(name))
            .ok_or(FhirError::UnknownResourceType)
    }

    /// The type's name, e.g. `"Patient"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// All 146 R4 resource types, in alphabetical order.
    pub fn all() -> impl Iterator<Item = ResourceType> {
        R4_RESOURCE_TYPES.iter().map(|name| Self(name))
    }

    /// Position of this type in [`ResourceType::all`] (0..146), used to index per-type tables.
    ///
    /// Always `Some`: every constructor takes its name from the list (a test checks the
    /// associated constants).
    pub(crate) fn index(self) -> Option<usize> {
        R4_RESOURCE_TYPES.binary_search(&self.0).ok()
    }
}

/// The [`ResourceType`] for `Patient` (same as [`ResourceType::PATIENT`]).
pub const PATIENT: ResourceType = ResourceType::PATIENT;

/// Number of R4 resource types.
pub(crate) const RESOURCE_TYPE_COUNT: usize = R4_RESOURCE_TYPES.len();

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl FromStr for ResourceType {
    type Err = FhirError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for ResourceType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

/// Longest FHIR logical id.
const MAX_ID_LEN: usize = 64;

/// A FHIR logical id: `[A-Za-z0-9\-\.]{1,64}` (ASCII only).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    /// Parses a logical id.
    ///
    /// # Errors
    ///
    /// [`FhirError::InvalidId`] if `s` is empty, longer than 64 bytes or contains anything but
    /// ASCII letters, digits, `-` and `.`. The error does not echo the input.
    pub fn parse(s: &str) -> Result<Self, FhirError> {
        if is_valid_id(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(FhirError::InvalidId)
        }
    }

    /// The id as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` matches `[A-Za-z0-9\-\.]{1,64}`.
pub(crate) fn is_valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ResourceId {
    type Err = FhirError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for ResourceId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_unique_and_has_146_entries() {
        assert_eq!(R4_RESOURCE_TYPES.len(), 146);
        assert!(R4_RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ResourceType::all().count(), 146);
        let all: Vec<_> = ResourceType::all().collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
        assert_eq!(all.first().map(|t| t.as_str()), Some("Account"));
        assert_eq!(all.last().map(|t| t.as_str()), Some("VisionPrescription"));
    }

    #[test]
    fn index_matches_position() {
        for (position, rt) in ResourceType::all().enumerate() {
            assert_eq!(rt.index(), Some(position));
        }
    }

    #[test]
    fn associated_constants_are_in_the_list() {
        for rt in [
            ResourceType::ALLERGY_INTOLERANCE,
            ResourceType::BINARY,
            ResourceType::BUNDLE,
            ResourceType::CONDITION,
            ResourceType::DIAGNOSTIC_REPORT,
            ResourceType::DOCUMENT_REFERENCE,
            ResourceType::ENCOUNTER,
            ResourceType::IMMUNIZATION,
            ResourceType::MEDICATION_REQUEST,
            ResourceType::OBSERVATION,
            ResourceType::OPERATION_OUTCOME,
            ResourceType::ORGANIZATION,
            ResourceType::PARAMETERS,
            ResourceType::PATIENT,
            ResourceType::PRACTITIONER,
            ResourceType::PROCEDURE,
            PATIENT,
        ] {
            assert_eq!(ResourceType::parse(rt.as_str()), Ok(rt));
        }
    }

    #[test]
    fn parse_valid_names() {
        for name in [
            "Account",
            "Patient",
            "Observation",
            "Bundle",
            "VisionPrescription",
        ] {
            let rt = ResourceType::parse(name).expect("an R4 type");
            assert_eq!(rt.as_str(), name);
            assert_eq!(rt.to_string(), name);
            assert_eq!(name.parse::<ResourceType>(), Ok(rt));
        }
        assert_eq!(ResourceType::parse("Patient"), Ok(PATIENT));
    }

    #[test]
    fn parse_refuses_unknown_names() {
        for name in [
            "",
            "patient",
            "PATIENT",
            "Patient ",
            " Patient",
            "Patients",
            "Resource",
            "DomainResource",
            "BackboneElement",
            "HumanName",
            "ResourceList",
            "Pat\u{0}ient",
            "Pätient",
        ] {
            assert_eq!(
                ResourceType::parse(name),
                Err(FhirError::UnknownResourceType)
            );
        }
    }

    #[test]
    fn parse_refuses_medplum_only_types() {
        for name in [
            "Project",
            "ProjectMembership",
            "ClientApplication",
            "User",
            "Login",
            "Bot",
            "AccessPolicy",
            "UserConfiguration",
            "BulkDataExport",
            "AsyncJob",
            "Agent",
            "ViewDefinition",
        ] {
            assert_eq!(
                ResourceType::parse(name),
                Err(FhirError::UnknownResourceType)
            );
        }
    }

    #[test]
    fn unknown_type_error_does_not_echo_input() {
        let err = ResourceType::parse("CANARY-7f3a-SMITH").expect_err("not a type");
        assert!(!err.to_string().contains("CANARY"));
        assert!(!format!("{err:?}").contains("CANARY"));
    }

    #[test]
    fn serializes_as_plain_strings() {
        let json = serde_json::to_string(&PATIENT).expect("serializable");
        assert_eq!(json, "\"Patient\"");
        let id = ResourceId::parse("abc-1.2").expect("valid id");
        assert_eq!(
            serde_json::to_string(&id).expect("serializable"),
            "\"abc-1.2\""
        );
    }

    #[test]
    fn id_accepts_valid_ids() {
        let max = "a".repeat(64);
        for s in [
            "a",
            "1",
            "-",
            ".",
            "A-z.09",
            "123e4567-e89b-12d3-a456-426614174000",
            &max,
        ] {
            let id = ResourceId::parse(s).expect("valid id");
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
            assert_eq!(s.parse::<ResourceId>(), Ok(id));
        }
    }

    #[test]
    fn id_refuses_invalid_ids() {
        let too_long = "a".repeat(65);
        for s in [
            "",
            &too_long,
            "a b",
            "a/b",
            "a_b",
            "a+b",
            "a%20b",
            "Patient/1",
            "../x",
            "a\n",
            "a\u{0}",
            "é",
            "caf\u{00e9}",
            "\u{0661}",  // ARABIC-INDIC DIGIT ONE: Unicode digit, not ASCII
            "\u{ff21}",  // FULLWIDTH LATIN CAPITAL LETTER A
            "a\u{200b}", // zero-width space
        ] {
            assert_eq!(ResourceId::parse(s), Err(FhirError::InvalidId), "{s:?}");
        }
    }

    #[test]
    fn id_length_is_counted_in_bytes_not_chars() {
        // 32 two-byte characters: 32 chars but 64 bytes, and not ASCII anyway.
        assert!(ResourceId::parse(&"é".repeat(32)).is_err());
    }

    #[test]
    fn invalid_id_error_does_not_echo_input() {
        let err = ResourceId::parse("CANARY 7f3a SMITH").expect_err("invalid");
        assert!(!err.to_string().contains("CANARY"));
        assert!(!format!("{err:?}").contains("CANARY"));
    }
}
