//! Parameter definitions: the search parameters of each resource type, where their values are
//! and what FHIR datatype they have.

use crate::ResourceType;

/// The type of a search parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    /// Codes, identifiers, contact points.
    Token,
    /// References to other resources.
    Reference,
    /// Names and other text.
    String,
    /// Dates, date-times, instants, Periods, Timings.
    Date,
    /// Quantities (number and unit).
    Quantity,
}

/// A search parameter of a resource type.
#[derive(Debug)]
pub struct ParamDef {
    /// The parameter's name, e.g. `birthdate`.
    pub name: &'static str,
    /// Its type.
    pub ptype: ParamType,
    pub(super) paths: &'static [Path],
    pub(super) targets: &'static [&'static str],
}

/// Where a parameter's values are and what FHIR datatype they have.
#[derive(Debug)]
pub(super) struct Path {
    pub(super) segs: &'static [&'static str],
    pub(super) kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A primitive `code`, `id`, `string` or `boolean` (token with an implicit system).
    Code,
    Coding,
    Concept,
    Identifier,
    /// `ContactPoint` with `system = email`.
    Email,
    /// `ContactPoint` with `system = phone`.
    Phone,
    Reference,
    HumanName,
    Str,
    /// `date`, `dateTime` or `instant`.
    Date,
    Period,
    Timing,
    Quantity,
}

macro_rules! path {
    ($kind:ident $(, $seg:literal)+) => {
        Path { segs: &[$($seg),+], kind: Kind::$kind }
    };
}

macro_rules! pdef {
    ($name:literal, $ptype:ident, [$($path:expr),+ $(,)?]) => {
        ParamDef { name: $name, ptype: ParamType::$ptype, paths: &[$($path),+], targets: &[] }
    };
    ($name:literal, $ptype:ident, [$($path:expr),+ $(,)?], $targets:expr) => {
        ParamDef { name: $name, ptype: ParamType::$ptype, paths: &[$($path),+], targets: $targets }
    };
}

/// The `patient` parameter: the reference at `$seg`, to a Patient.
macro_rules! patient {
    ($seg:literal) => {
        pdef!("patient", Reference, [path!(Reference, $seg)], TO_PATIENT)
    };
}

const TO_PATIENT: &[&str] = &["Patient"];
const OBSERVATION_SUBJECT: &[&str] = &["Group", "Device", "Patient", "Location"];

static COMMON: [ParamDef; 2] = [
    pdef!("_id", Token, [path!(Code, "id")]),
    pdef!("_lastUpdated", Date, [path!(Date, "meta", "lastUpdated")]),
];

static PATIENT_PARAMS: [ParamDef; 8] = [
    pdef!("identifier", Token, [path!(Identifier, "identifier")]),
    pdef!("name", String, [path!(HumanName, "name")]),
    pdef!("family", String, [path!(Str, "name", "family")]),
    pdef!("given", String, [path!(Str, "name", "given")]),
    pdef!("birthdate", Date, [path!(Date, "birthDate")]),
    pdef!("gender", Token, [path!(Code, "gender")]),
    pdef!("email", Token, [path!(Email, "telecom")]),
    pdef!("phone", Token, [path!(Phone, "telecom")]),
];

static OBSERVATION_PARAMS: [ParamDef; 7] = [
    pdef!(
        "subject",
        Reference,
        [path!(Reference, "subject")],
        OBSERVATION_SUBJECT
    ),
    patient!("subject"),
    pdef!("code", Token, [path!(Concept, "code")]),
    pdef!("category", Token, [path!(Concept, "category")]),
    pdef!(
        "date",
        Date,
        [
            path!(Date, "effectiveDateTime"),
            path!(Period, "effectivePeriod"),
            path!(Timing, "effectiveTiming"),
            path!(Date, "effectiveInstant"),
        ]
    ),
    pdef!("status", Token, [path!(Code, "status")]),
    pdef!(
        "value-quantity",
        Quantity,
        [path!(Quantity, "valueQuantity")]
    ),
];

static CONDITION_PARAMS: [ParamDef; 4] = [
    patient!("subject"),
    pdef!("code", Token, [path!(Concept, "code")]),
    pdef!("clinical-status", Token, [path!(Concept, "clinicalStatus")]),
    pdef!(
        "onset-date",
        Date,
        [path!(Date, "onsetDateTime"), path!(Period, "onsetPeriod")]
    ),
];

static ENCOUNTER_PARAMS: [ParamDef; 4] = [
    patient!("subject"),
    pdef!("date", Date, [path!(Period, "period")]),
    pdef!("status", Token, [path!(Code, "status")]),
    pdef!("class", Token, [path!(Coding, "class")]),
];

static MEDICATION_REQUEST_PARAMS: [ParamDef; 4] = [
    patient!("subject"),
    pdef!("status", Token, [path!(Code, "status")]),
    pdef!("code", Token, [path!(Concept, "medicationCodeableConcept")]),
    pdef!("authoredon", Date, [path!(Date, "authoredOn")]),
];

static ALLERGY_INTOLERANCE_PARAMS: [ParamDef; 2] = [
    patient!("patient"),
    pdef!(
        "code",
        Token,
        [
            path!(Concept, "code"),
            path!(Concept, "reaction", "substance")
        ]
    ),
];

static PROCEDURE_PARAMS: [ParamDef; 3] = [
    patient!("subject"),
    pdef!("code", Token, [path!(Concept, "code")]),
    pdef!(
        "date",
        Date,
        [
            path!(Date, "performedDateTime"),
            path!(Period, "performedPeriod")
        ]
    ),
];

static IMMUNIZATION_PARAMS: [ParamDef; 3] = [
    patient!("patient"),
    pdef!("vaccine-code", Token, [path!(Concept, "vaccineCode")]),
    pdef!("date", Date, [path!(Date, "occurrenceDateTime")]),
];

static DIAGNOSTIC_REPORT_PARAMS: [ParamDef; 4] = [
    patient!("subject"),
    pdef!("code", Token, [path!(Concept, "code")]),
    pdef!(
        "date",
        Date,
        [
            path!(Date, "effectiveDateTime"),
            path!(Period, "effectivePeriod")
        ]
    ),
    pdef!("category", Token, [path!(Concept, "category")]),
];

static DOCUMENT_REFERENCE_PARAMS: [ParamDef; 3] = [
    patient!("subject"),
    pdef!("type", Token, [path!(Concept, "type")]),
    pdef!("date", Date, [path!(Date, "date")]),
];

static PRACTITIONER_PARAMS: [ParamDef; 2] = [
    pdef!("identifier", Token, [path!(Identifier, "identifier")]),
    pdef!("name", String, [path!(HumanName, "name")]),
];

static ORGANIZATION_PARAMS: [ParamDef; 2] = [
    pdef!("identifier", Token, [path!(Identifier, "identifier")]),
    pdef!("name", String, [path!(Str, "name"), path!(Str, "alias")]),
];

/// The type-specific parameters (without `_id` and `_lastUpdated`).
fn type_params(rtype: ResourceType) -> &'static [ParamDef] {
    match rtype.as_str() {
        "Patient" => &PATIENT_PARAMS,
        "Observation" => &OBSERVATION_PARAMS,
        "Condition" => &CONDITION_PARAMS,
        "Encounter" => &ENCOUNTER_PARAMS,
        "MedicationRequest" => &MEDICATION_REQUEST_PARAMS,
        "AllergyIntolerance" => &ALLERGY_INTOLERANCE_PARAMS,
        "Procedure" => &PROCEDURE_PARAMS,
        "Immunization" => &IMMUNIZATION_PARAMS,
        "DiagnosticReport" => &DIAGNOSTIC_REPORT_PARAMS,
        "DocumentReference" => &DOCUMENT_REFERENCE_PARAMS,
        "Practitioner" => &PRACTITIONER_PARAMS,
        "Organization" => &ORGANIZATION_PARAMS,
        _ => &[],
    }
}

/// The search parameter `name` of `rtype` (`_id` and `_lastUpdated` exist for every type).
#[must_use]
pub fn param(rtype: ResourceType, name: &str) -> Option<&'static ParamDef> {
    COMMON
        .iter()
        .chain(type_params(rtype))
        .find(|def| def.name == name)
}

/// All search parameters of `rtype`, `_id` and `_lastUpdated` first.
#[must_use]
pub fn params(rtype: ResourceType) -> Vec<&'static ParamDef> {
    COMMON.iter().chain(type_params(rtype)).collect()
}

/// Whether `def` is one of `rtype`'s parameters (the same static definition).
pub(super) fn belongs(rtype: ResourceType, def: &ParamDef) -> bool {
    COMMON
        .iter()
        .chain(type_params(rtype))
        .any(|own| std::ptr::eq(own, def))
}

impl ParamDef {
    /// The resource types a reference parameter may point to (empty for other types).
    pub fn targets(&self) -> impl Iterator<Item = ResourceType> + '_ {
        self.targets
            .iter()
            .filter_map(|name| ResourceType::parse(name).ok())
    }

    pub(super) fn targets_type(&self, rtype: ResourceType) -> bool {
        self.targets.contains(&rtype.as_str())
    }

    /// Whether some path holds tokens whose system is implicit (codes, contact points).
    pub(super) fn has_implicit_tokens(&self) -> bool {
        self.paths
            .iter()
            .any(|p| matches!(p.kind, Kind::Code | Kind::Email | Kind::Phone))
    }

    /// Whether some path holds Codings, CodeableConcepts or Identifiers (which have text).
    pub(super) fn has_coded_tokens(&self) -> bool {
        self.paths
            .iter()
            .any(|p| matches!(p.kind, Kind::Coding | Kind::Concept | Kind::Identifier))
    }

    /// The contact-point kind whose normalization applies to this parameter's codes.
    pub(super) fn contact_kind(&self) -> Option<Kind> {
        self.paths
            .iter()
            .map(|p| p.kind)
            .find(|k| matches!(k, Kind::Email | Kind::Phone))
    }
}

pub(super) fn is_id(def: &ParamDef) -> bool {
    std::ptr::eq(def, &COMMON[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_id_and_last_updated() {
        for rtype in ResourceType::all() {
            let names: Vec<_> = params(rtype).iter().map(|d| d.name).collect();
            assert_eq!(&names[..2], &["_id", "_lastUpdated"]);
            assert!(param(rtype, "_id").is_some());
        }
        let names: Vec<_> = params(ResourceType::PATIENT)
            .iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(
            names,
            [
                "_id",
                "_lastUpdated",
                "identifier",
                "name",
                "family",
                "given",
                "birthdate",
                "gender",
                "email",
                "phone"
            ]
        );
        assert_eq!(
            param(ResourceType::OBSERVATION, "value-quantity").map(|d| d.ptype),
            Some(ParamType::Quantity)
        );
        assert!(param(ResourceType::OBSERVATION, "birthdate").is_none());
        assert!(param(ResourceType::PATIENT, "Name").is_none());
    }

    #[test]
    fn parameter_names_are_unique_and_reference_targets_are_types() {
        for rtype in ResourceType::all() {
            let defs = params(rtype);
            for (i, def) in defs.iter().enumerate() {
                assert!(defs[..i].iter().all(|d| d.name != def.name), "{}", def.name);
                assert_eq!(def.targets().count(), def.targets.len());
                assert_eq!(
                    def.ptype == ParamType::Reference,
                    !def.targets.is_empty(),
                    "{}",
                    def.name
                );
            }
        }
        let subject = param(ResourceType::OBSERVATION, "subject").expect("subject");
        let targets: Vec<_> = subject.targets().map(ResourceType::as_str).collect();
        assert_eq!(targets, ["Group", "Device", "Patient", "Location"]);
    }
}
