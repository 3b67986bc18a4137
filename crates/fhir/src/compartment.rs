//! The patient compartment, read from the official R4 Patient CompartmentDefinition.
//!
//! [`patient_compartments`] says which patients a resource belongs to. The rule is not typed by
//! hand: `compartmentdefinition-patient.json` (FHIR 4.0.1, vendored under `vendor/fhir/r4/`)
//! lists, for each resource type in the compartment, the search parameters whose references
//! place a resource in a patient's compartment (Appointment `actor`, Coverage `beneficiary`,
//! Communication `recipient`, ...), and `search-parameters.json` (the R4 SearchParameter
//! definitions, vendored beside it) gives each parameter's FHIRPath expression. Those
//! expressions use a small subset of FHIRPath, which [`ElementPath`] covers: a dotted path from
//! the resource, optionally filtered by `.where(resolve() is Patient)`, several joined by `|`.
//! Anything else in the definitions is refused when they load (a test walks every one).
//!
//! One addition: a resource of a type the definition leaves out (GuidanceResponse, ...) whose
//! `subject` or `patient` refers to a Patient belongs to that patient, as CareVault filed it before
//! the definition was read, so that no resource naming a patient as its subject is shared.
//!
//! One deliberate departure: a `Patient` is in its own compartment only. The definition also
//! places a Patient in the compartments of the patients it `link`s to; that would make reading
//! a patient's own record depend on another patient's organization, and a `link` adds no data
//! of the linked patient to the record.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

use crate::{ResourceId, ResourceType};

/// The most patients one resource may name through its compartment parameters. A resource
/// naming more is refused: each named patient is a compartment whose access rules apply to it.
pub const MAX_PATIENTS: usize = 1000;

/// The CompartmentDefinition, as embedded in the binary.
const COMPARTMENT_DEFINITION_JSON: &str =
    include_str!("../../../vendor/fhir/r4/compartmentdefinition-patient.json");
/// The R4 SearchParameter definitions, as embedded in the binary.
pub(crate) const SEARCH_PARAMETERS_JSON: &str =
    include_str!("../../../vendor/fhir/r4/search-parameters.json");

/// Why a resource's compartment could not be decided.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompartmentError {
    /// The resource names more than [`MAX_PATIENTS`] patients; `element` is the FHIRPath of the
    /// parameter that went over (no value from the resource).
    #[error("the resource names more than {MAX_PATIENTS} patients (at {element})")]
    TooManyPatients { element: String },
    /// The embedded CompartmentDefinition could not be read (an internal error).
    #[error("the Patient CompartmentDefinition is unavailable")]
    Definition,
}

/// One element path of a compartment parameter (`Appointment.participant.actor`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementPath {
    /// The FHIRPath as written in the definition, for messages.
    pub expression: String,
    /// Member names from the resource root.
    steps: Vec<String>,
}

impl ElementPath {
    /// Parse one `|`-separated part of a search parameter's expression that applies to `base`.
    fn parse(base: &str, part: &str) -> Result<Self, String> {
        let rest = part
            .strip_prefix(base)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| format!("{part}: not a path from {base}"))?;
        // The only filter the definitions use; a reference is in a patient's compartment only
        // when it is a reference to a Patient, which is what this module reads anyway.
        let rest = rest
            .strip_suffix(".where(resolve() is Patient)")
            .unwrap_or(rest);
        let steps: Vec<String> = rest.split('.').map(str::to_owned).collect();
        if steps
            .iter()
            .any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric()) || !s.is_ascii())
        {
            return Err(format!("{part}: unsupported FHIRPath"));
        }
        Ok(Self {
            expression: part.to_owned(),
            steps,
        })
    }

    /// The values at this path (arrays are flattened at every step).
    fn values<'v>(&self, resource: &'v Value) -> Vec<&'v Value> {
        let mut at = vec![resource];
        for step in &self.steps {
            let mut next = Vec::new();
            for v in at {
                match v.get(step) {
                    Some(Value::Array(items)) => next.extend(items.iter()),
                    Some(item) => next.push(item),
                    None => {}
                }
            }
            at = next;
        }
        at
    }

    /// The member names from the resource root, as written in the definition.
    #[must_use]
    pub fn steps(&self) -> &[String] {
        &self.steps
    }
}

/// A search parameter that places resources of one type in a patient's compartment.
#[derive(Clone, Debug)]
pub struct CompartmentParam {
    /// The search parameter's code (`actor`, `beneficiary`, ...).
    pub code: String,
    pub paths: Vec<ElementPath>,
}

/// The loaded CompartmentDefinition: for each resource type it lists, its parameters.
#[derive(Debug, Default)]
pub struct CompartmentDefinition {
    params: HashMap<ResourceType, Vec<CompartmentParam>>,
}

#[derive(Deserialize)]
struct DefinitionFile {
    resource: Vec<DefinitionResource>,
}

#[derive(Deserialize)]
struct DefinitionResource {
    code: String,
    #[serde(default)]
    param: Vec<String>,
}

#[derive(Deserialize)]
struct SearchParameterBundle {
    entry: Vec<SearchParameterEntry>,
}

#[derive(Deserialize)]
struct SearchParameterEntry {
    resource: SearchParameterResource,
}

#[derive(Deserialize)]
struct SearchParameterResource {
    code: String,
    #[serde(default)]
    base: Vec<String>,
    expression: Option<String>,
}

impl CompartmentDefinition {
    /// The definition embedded in the binary (parsed once).
    ///
    /// # Errors
    ///
    /// [`CompartmentError::Definition`] if the embedded files do not load (this crate's tests
    /// load them; a build that passed them cannot fail here). Callers must fail closed: with no
    /// definition, patient data would be filed as shared.
    pub fn r4() -> Result<&'static Self, CompartmentError> {
        static DEFINITION: OnceLock<Result<CompartmentDefinition, String>> = OnceLock::new();
        DEFINITION
            .get_or_init(|| Self::load(COMPARTMENT_DEFINITION_JSON, SEARCH_PARAMETERS_JSON))
            .as_ref()
            .map_err(|_| CompartmentError::Definition)
    }

    /// Read a CompartmentDefinition and the SearchParameter Bundle its parameters come from.
    pub fn load(definition: &str, search_parameters: &str) -> Result<Self, String> {
        let definition: DefinitionFile = serde_json::from_str(definition)
            .map_err(|e| format!("the CompartmentDefinition does not parse: {e}"))?;
        let bundle: SearchParameterBundle = serde_json::from_str(search_parameters)
            .map_err(|e| format!("the SearchParameter Bundle does not parse: {e}"))?;
        let mut expressions: HashMap<(&str, &str), &str> = HashMap::new();
        for e in &bundle.entry {
            if let Some(expression) = &e.resource.expression {
                for base in &e.resource.base {
                    expressions.insert((base.as_str(), e.resource.code.as_str()), expression);
                }
            }
        }
        let mut params = HashMap::new();
        for r in &definition.resource {
            if r.param.is_empty() {
                continue;
            }
            let rt = ResourceType::parse(&r.code)
                .map_err(|_| format!("{}: not an R4 resource type", r.code))?;
            let mut list = Vec::new();
            for code in &r.param {
                let expression = expressions
                    .get(&(r.code.as_str(), code.as_str()))
                    .ok_or_else(|| format!("{}.{code}: no SearchParameter", r.code))?;
                let paths = expression
                    .split('|')
                    .map(str::trim)
                    .filter(|part| part.starts_with(&format!("{}.", r.code)))
                    .map(|part| ElementPath::parse(&r.code, part))
                    .collect::<Result<Vec<_>, _>>()?;
                if paths.is_empty() {
                    return Err(format!("{}.{code}: no path from {}", r.code, r.code));
                }
                list.push(CompartmentParam {
                    code: code.clone(),
                    paths,
                });
            }
            params.insert(rt, list);
        }
        Ok(Self { params })
    }

    /// The parameters that place a `rt` in a patient's compartment; empty for types outside
    /// every patient compartment (Organization, Practitioner, Medication, ...).
    #[must_use]
    pub fn params(&self, rt: ResourceType) -> &[CompartmentParam] {
        self.params.get(&rt).map_or(&[], Vec::as_slice)
    }

    /// The resource types the definition places in patient compartments.
    pub fn types(&self) -> impl Iterator<Item = ResourceType> + '_ {
        self.params.keys().copied()
    }
}

/// The patients a resource belongs to, sorted and without repeats.
///
/// * A `Patient` is in its own compartment (returns its own `id`), and only there.
/// * A resource of a type the CompartmentDefinition lists belongs to every Patient that any of
///   its compartment parameters refers to. Accepted reference forms are `Patient/<id>` and an
///   absolute URL ending in `/Patient/<id>`, each optionally followed by `/_history/<version>`;
///   `<id>` must be a valid [`ResourceId`]. References to other types, contained (`#p1`),
///   placeholder (`urn:uuid:...`), conditional (`Patient?identifier=...`) and malformed
///   references place it nowhere (they are kept as written, but grant no access).
/// * Every other resource belongs to no patient: an empty list.
///
/// The base URL of an absolute reference is not checked.
///
/// # Errors
///
/// [`CompartmentError::TooManyPatients`] when more than [`MAX_PATIENTS`] distinct patients are
/// named; [`CompartmentError::Definition`] if the embedded definition does not load.
pub fn patient_compartments(
    rt: ResourceType,
    id: &ResourceId,
    resource: &Value,
) -> Result<Vec<ResourceId>, CompartmentError> {
    if rt == ResourceType::PATIENT {
        return Ok(vec![id.clone()]);
    }
    let params = CompartmentDefinition::r4()?.params(rt);
    let paths: Vec<&ElementPath> = if params.is_empty() {
        subject_paths().iter().collect()
    } else {
        params.iter().flat_map(|p| p.paths.iter()).collect()
    };
    let mut patients: Vec<ResourceId> = Vec::new();
    {
        for path in paths {
            for value in path.values(resource) {
                let Some(patient) = value
                    .get("reference")
                    .and_then(Value::as_str)
                    .and_then(patient_id_of)
                else {
                    continue;
                };
                if !patients.contains(&patient) {
                    if patients.len() == MAX_PATIENTS {
                        return Err(CompartmentError::TooManyPatients {
                            element: path.expression.clone(),
                        });
                    }
                    patients.push(patient);
                }
            }
        }
    }
    patients.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(patients)
}

/// `subject` and `patient`: the elements that place a resource of a type the definition leaves
/// out in a patient's compartment (see the module documentation).
fn subject_paths() -> &'static [ElementPath; 2] {
    static PATHS: OnceLock<[ElementPath; 2]> = OnceLock::new();
    PATHS.get_or_init(|| {
        ["subject", "patient"].map(|element| ElementPath {
            expression: element.to_owned(),
            steps: vec![element.to_owned()],
        })
    })
}

/// The first patient a resource belongs to (see [`patient_compartments`]), or None.
#[must_use]
pub fn patient_compartment(
    rt: ResourceType,
    id: &ResourceId,
    resource: &Value,
) -> Option<ResourceId> {
    patient_compartments(rt, id, resource)
        .ok()
        .and_then(|p| p.into_iter().next())
}

/// The Patient id in a reference, if it is a reference to a Patient (see
/// [`patient_compartments`]).
#[must_use]
pub fn patient_id_of(reference: &str) -> Option<ResourceId> {
    reference_to("Patient", reference)
}

/// The id in a reference to a resource of type `rtype` (`Type/<id>`, or an absolute URL ending
/// in `/Type/<id>`, optionally with `/_history/<version>`).
#[must_use]
pub fn reference_to(rtype: &str, reference: &str) -> Option<ResourceId> {
    let reference = strip_history(reference)?;
    let id = match reference
        .strip_prefix(rtype)
        .and_then(|r| r.strip_prefix('/'))
    {
        Some(id) => id,
        None => {
            if !is_absolute_url(reference) {
                return None;
            }
            let marker = format!("/{rtype}/");
            let start = reference.rfind(&marker)? + marker.len();
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

    fn first(rtype: &str, resource: &Value) -> Option<ResourceId> {
        patient_compartment(rt(rtype), &id("x"), resource)
    }

    /// A resource of `rt` whose `path` holds a reference to `reference` (an array at every step,
    /// which the evaluator flattens like a single value).
    pub(crate) fn with_reference_at(
        rt: ResourceType,
        path: &ElementPath,
        reference: &str,
    ) -> Value {
        let mut value = json!({ "reference": reference });
        for step in path.steps().iter().rev() {
            value = json!([{ step.clone(): value }]);
        }
        let mut resource = value.get(0).cloned().expect("a path has at least one step");
        resource["resourceType"] = json!(rt.as_str());
        resource
    }

    #[test]
    fn every_parameter_of_the_definition_is_understood() {
        let definition =
            CompartmentDefinition::load(COMPARTMENT_DEFINITION_JSON, SEARCH_PARAMETERS_JSON)
                .expect("the vendored definitions load");
        // FHIR 4.0.1 lists 67 resource types with at least one parameter (Patient among them, for
        // `link`), 102 parameters in all.
        assert_eq!(definition.types().count(), 67);
        let params: usize = definition.types().map(|t| definition.params(t).len()).sum();
        assert_eq!(params, 102);
        for (t, expected) in [
            ("Appointment", vec!["actor"]),
            (
                "Coverage",
                vec!["policy-holder", "subscriber", "beneficiary", "payor"],
            ),
            ("Communication", vec!["subject", "sender", "recipient"]),
            ("Group", vec!["member"]),
            ("Provenance", vec!["patient"]),
            ("Person", vec!["patient"]),
            ("Schedule", vec!["actor"]),
        ] {
            let mut codes: Vec<&str> = definition
                .params(rt(t))
                .iter()
                .map(|p| p.code.as_str())
                .collect();
            let mut expected = expected;
            codes.sort_unstable();
            expected.sort_unstable();
            assert_eq!(codes, expected, "{t}");
        }
        assert!(definition.params(ResourceType::ORGANIZATION).is_empty());
        assert!(definition.params(ResourceType::PRACTITIONER).is_empty());
        assert!(definition.params(rt("Medication")).is_empty());
    }

    #[test]
    fn a_reference_through_every_path_of_every_parameter_places_the_resource() {
        let definition = CompartmentDefinition::r4().expect("loads");
        let mut checked = 0;
        for t in definition.types() {
            if t == ResourceType::PATIENT {
                continue;
            }
            for param in definition.params(t) {
                for path in &param.paths {
                    let resource = with_reference_at(t, path, "Patient/p-1");
                    assert_eq!(
                        patient_compartments(t, &id("x"), &resource),
                        Ok(vec![id("p-1")]),
                        "{}",
                        path.expression
                    );
                    let other = with_reference_at(t, path, "Practitioner/p-1");
                    assert_eq!(
                        patient_compartments(t, &id("x"), &other),
                        Ok(vec![]),
                        "{}",
                        path.expression
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 100, "{checked}");
    }

    #[test]
    fn several_patients_sorted_and_once_each() {
        let appointment = json!({
            "resourceType": "Appointment",
            "participant": [
                { "actor": { "reference": "Patient/b" } },
                { "actor": { "reference": "Practitioner/d" } },
                { "actor": { "reference": "Patient/a" } },
                { "actor": { "reference": "https://x.example/fhir/Patient/b" } }
            ]
        });
        assert_eq!(
            patient_compartments(rt("Appointment"), &id("x"), &appointment),
            Ok(vec![id("a"), id("b")])
        );
        let communication = json!({
            "resourceType": "Communication",
            "sender": { "reference": "Patient/s" },
            "recipient": [{ "reference": "Patient/r" }, { "reference": "Group/g" }]
        });
        assert_eq!(
            patient_compartments(rt("Communication"), &id("x"), &communication),
            Ok(vec![id("r"), id("s")])
        );
    }

    #[test]
    fn too_many_patients_is_refused_naming_the_element() {
        let member: Vec<Value> = (0..=MAX_PATIENTS)
            .map(|i| json!({ "entity": { "reference": format!("Patient/p{i}") } }))
            .collect();
        let group = json!({ "resourceType": "Group", "member": member });
        assert_eq!(
            patient_compartments(rt("Group"), &id("g"), &group),
            Err(CompartmentError::TooManyPatients {
                element: "Group.member.entity".into()
            })
        );
        // The same patient many times is one patient.
        let member: Vec<Value> = (0..5000)
            .map(|_| json!({ "entity": { "reference": "Patient/p" } }))
            .collect();
        let group = json!({ "resourceType": "Group", "member": member });
        assert_eq!(
            patient_compartments(rt("Group"), &id("g"), &group),
            Ok(vec![id("p")])
        );
    }

    #[test]
    fn patient_is_in_its_own_compartment_only() {
        let patient = json!({
            "resourceType": "Patient", "id": "p1",
            "link": [{ "other": { "reference": "Patient/p2" }, "type": "seealso" }]
        });
        assert_eq!(
            patient_compartments(ResourceType::PATIENT, &id("p1"), &patient),
            Ok(vec![id("p1")])
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
                first("Observation", &resource),
                expected.map(id),
                "{reference}"
            );
        }
        let too_long = format!("Patient/{}", "a".repeat(65));
        assert_eq!(
            first("Observation", &observation_with_subject(&too_long)),
            None
        );
    }

    #[test]
    fn resources_outside_patient_compartments() {
        let practitioner =
            json!({ "resourceType": "Practitioner", "name": [{ "family": "House" }] });
        assert_eq!(first("Practitioner", &practitioner), None);
        let organization = json!({ "resourceType": "Organization", "name": "Clinic" });
        assert_eq!(first("Organization", &organization), None);
        // A Medication names no patient, whatever it refers to.
        let medication =
            json!({ "resourceType": "Medication", "manufacturer": { "reference": "Patient/1" } });
        assert_eq!(first("Medication", &medication), None);
        let odd = [
            json!({ "resourceType": "Observation", "subject": "Patient/1" }),
            json!({ "resourceType": "Observation", "subject": { "reference": 1 } }),
            json!({ "resourceType": "Observation", "subject": { "display": "Patient/1" } }),
            json!([]),
            json!(null),
        ];
        for resource in odd {
            assert_eq!(first("Observation", &resource), None, "{resource}");
        }
        // A type the definition leaves out is filed by its subject (or patient).
        let guidance =
            json!({ "resourceType": "GuidanceResponse", "subject": { "reference": "Patient/g" } });
        assert_eq!(first("GuidanceResponse", &guidance), Some(id("g")));
        // Account.subject is a list.
        let account =
            json!({ "resourceType": "Account", "subject": [{ "reference": "Patient/1" }] });
        assert_eq!(first("Account", &account), Some(id("1")));
    }

    #[test]
    fn unsupported_fhirpath_is_refused_at_load() {
        assert!(ElementPath::parse("Observation", "Observation.subject").is_ok());
        for bad in [
            "Observation.subject.where(resolve() is Group)",
            "(Observation.value as Reference)",
            "Observation..subject",
            "Encounter.subject",
        ] {
            assert!(ElementPath::parse("Observation", bad).is_err(), "{bad}");
        }
    }
}
